"""Lesion study and band-limited noise against exact, independently computed values."""
import pytest
import torch

import lk_ablate
from lk_ablate.analysis.runner import load_preset, section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.frequency import (FrequencyNoiseConfig, band_energy_fraction, band_limited_noise, band_mask,
                                          frequency_grid)
from lk_ablate.analysis.lesion import residual_units, units_removed
from lk_ablate.base.errors import ConfigError


def _demo(seed=0):
    torch.manual_seed(seed)
    model = lk_ablate.create_model("convnext_demo", kernel_size=3).eval()
    with torch.no_grad():  # layer scale 1e-6 would make every block nearly the identity: make them matter
        for b in model.blocks():
            b.gamma.fill_(1.0)
    return model


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


def test_removed_block_with_zero_layer_scale_is_an_exact_identity():
    model = _demo()
    x, _ = _data()
    blocks = model.blocks()
    with torch.no_grad():
        blocks[5].gamma.zero_()  # the block now adds exactly 0 to its input
        ref = model(x)
        with units_removed([(blocks[5],)]):
            out = model(x)
    assert torch.equal(out, ref)


def test_removing_a_block_equals_skipping_it_by_hand():
    model = _demo()
    x, _ = _data()
    with torch.no_grad():
        h = model.stem(x)
        for si, stage in enumerate(model.stages):
            h = stage.downsample(h)
            for bi, blk in enumerate(stage.blocks):
                if (si, bi) != (2, 1):
                    h = blk(h)
        manual = model.head(h)
        with units_removed([(model.stages[2].blocks[1],)]):
            lesioned = model(x)
        full = model(x)
    assert torch.equal(lesioned, manual)
    assert not torch.equal(full, manual)
    assert "forward" not in vars(model.stages[2].blocks[1])  # restored afterwards


def test_lesion_run_draws_and_fractions():
    model = _demo()
    x, y = _data()
    out = run_analyses(model, {"lesion": {"ns": [0, 1, 3], "samples": 4, "seed": 1}}, [(x, y)])["lesion"]
    assert out["total_units"] == 8 and out["candidates"] == list(range(8))
    pts = {p["n"]: p for p in out["points"]}
    assert len(pts[0]["accuracies"]) == 1 and len(pts[3]["accuracies"]) == 4
    assert pts[3]["fraction"] == 3 / 8
    assert all(len(r) == 3 and len(set(r)) == 3 for r in pts[3]["removed"])
    # each draw's accuracy is recomputed independently here
    for removed, acc in zip(pts[3]["removed"], pts[3]["accuracies"]):
        with units_removed([residual_units(model)[i] for i in removed]), torch.no_grad():
            assert acc == 100.0 * (model(x).argmax(1) == y).float().mean().item()
    assert pts[3]["min"] <= pts[3]["mean"] <= pts[3]["max"]


def test_lesion_candidates_and_errors():
    model = _demo()
    x, y = _data(4)
    out = run_analyses(model, {"lesion": {**load_preset("paper_lesion_replknet")["lesion"], "candidates": [2, 3],
                                          "ns": [2], "samples": 2}},
                       [(x, y)])["lesion"]
    assert out["points"][0]["removed"] == [[2, 3], [2, 3]]
    with pytest.raises(ConfigError, match="candidates"):
        run_analyses(model, {"lesion": {"candidates": [8]}}, [(x, y)])
    with pytest.raises(ConfigError, match="only 2"):
        run_analyses(model, {"lesion": {"candidates": [0, 1], "ns": [3]}}, [(x, y)])
    assert section_config("lesion", load_preset("paper_lesion_replknet")["lesion"]).candidates == tuple(range(4, 22))


def test_timm_resnet_units_skip_downsampling_blocks():
    import timm

    m = timm.create_model("resnet18").eval()
    units = residual_units(m)
    assert len(units) == 8 - 3  # layer2..4 start with a downsampling block
    with pytest.raises(ConfigError, match="change the feature shape"):
        from lk_ablate.analysis.lesion import check_removable

        check_removable(m, [(m.layer2[0],)], torch.randn(1, 3, 64, 64))


# --- frequency ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (28, 36), (224, 224)])
def test_bands_partition_the_spectrum(size):
    bands = FrequencyNoiseConfig().bands()
    assert bands[0] == (0.0, 0.1) and bands[-1] == (0.9, 1.0) and len(bands) == 10
    total = sum(band_mask(*size, lo, hi).int() for lo, hi in bands)
    assert torch.equal(total, torch.ones(size, dtype=torch.int))  # every DFT bin in exactly one band
    f = frequency_grid(*size)
    assert f[0, 0] == 0 and f.max() == 1.0


@pytest.mark.parametrize("scale", ["pre_filter", "rms"])
@pytest.mark.parametrize("size", [(32, 32), (64, 48)])
def test_band_noise_energy_lies_in_its_band(scale, size):
    g = torch.Generator().manual_seed(0)
    for lo, hi in FrequencyNoiseConfig(window=0.1).bands():
        n = band_limited_noise((2, 3, *size), lo, hi, 0.1, scale, g)
        assert band_energy_fraction(n, lo, hi) >= 0.99
        if scale == "rms":
            rms = n.flatten(1).pow(2).mean(1).sqrt()
            torch.testing.assert_close(rms, torch.full((2,), 0.1), rtol=1e-5, atol=0)


def test_band_noise_is_real_and_sign_noise_filtered():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    n = band_limited_noise((1, 1, 16, 16), 0.3, 0.4, 0.5, "pre_filter", g1)
    base = 0.5 * torch.randn((1, 1, 16, 16), generator=g2).sign()
    spec = torch.fft.fft2(base) * band_mask(16, 16, 0.3, 0.4)
    full = torch.fft.ifft2(spec)
    assert full.imag.abs().max() < 1e-6  # the mask is Hermitian-symmetric: the filtered noise is real
    torch.testing.assert_close(n, full.real)


def test_frequency_run_zero_amplitude_has_no_drop():
    model = _demo()
    x, y = _data(4)
    out = run_analyses(model, {"frequency": {"amplitude": 0.0, "window": 0.5}}, [(x, y)])["frequency"]
    assert [(b["low"], b["high"]) for b in out["bands"]] == [(0.0, 0.5), (0.5, 1.0)]
    assert all(b["drop"] == 0.0 for b in out["bands"])
    with pytest.raises(ConfigError, match="window"):
        section_config("frequency", {"window": 0})
