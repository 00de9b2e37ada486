"""ERF (RepLKNet's erf/ scripts): analytic maps of linear box-convolution stacks, the area ratio against a direct
re-writing of ``get_rectangle``, the options that change values, image selection, stages, and the CLI.

The oracles are written here from the released code's text (DingXiaoH/RepLKNet-pytorch b76808a,
``erf/visualize_erf.py:31-40,94-110``, ``erf/analyze_erf.py:53-73``), never through lk_ablate's functions.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import lk_ablate
from lk_ablate.analysis import load_preset, run_analyses
from lk_ablate.analysis.common import read_analysis_arrays
from lk_ablate.analysis.erf import (area_ratios, contribution_maps, high_contribution_square, rescale_map,
                                    stage_output, threshold_key)
from lk_ablate.analysis.runner import section_config
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.base.results import read_results
from lk_ablate.cli import main
from lk_ablate.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

CFG = ModelConfig(input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class BoxStack(nn.Module):
    """L linear k x k box convolutions (all weights 1, no bias, zero padding), 3 -> 1 -> ... -> 1 channels; each
    convolution is a "stage", so the last stage's output is the whole stack."""

    def __init__(self, layers: int, k: int, first_weights: torch.Tensor | None = None, bias: float = 0.0) -> None:
        super().__init__()
        convs = [nn.Conv2d(3 if i == 0 else 1, 1, k, padding=k // 2, bias=bias != 0.0) for i in range(layers)]
        with torch.no_grad():
            for i, c in enumerate(convs):
                c.weight.fill_(1.0)
                if i == 0 and first_weights is not None:
                    c.weight.copy_(first_weights)
                if c.bias is not None:
                    c.bias.fill_(bias)
        self.stages = nn.Sequential(*convs)

    def forward(self, x):
        return self.stages(x).mean(dim=(2, 3))


def box_kernel_1d(layers: int, k: int) -> np.ndarray:
    """The L-fold convolution of a length-k box: the coefficients of (1 + z + ... + z^(k-1))^L."""
    b = np.ones(1)
    for _ in range(layers):
        b = np.convolve(b, np.ones(k))
    return b


@pytest.mark.parametrize("layers,k", [(1, 3), (3, 3), (2, 5), (4, 3)])
def test_erf_of_a_linear_box_stack_is_the_repeated_box_convolution(layers, k):
    """The contribution map of the centre output of L linear k x k box convolutions is, per input channel, the 2-D
    L-fold box convolution: support side L(k-1)+1 centred on the output pixel, values b[i] * b[j] (times 3 RGB
    channels), exactly; relu changes nothing (positive input, non-negative gradient)."""
    size = 32
    x = torch.rand(2, 3, size, size) + 0.1  # positive: the centre output is > 0, so relu passes its gradient
    maps = contribution_maps(BoxStack(layers, k), x)
    side = layers * (k - 1) + 1
    b = box_kernel_1d(layers, k)
    expected = np.zeros((size, size))
    c, r = size // 2, side // 2
    expected[c - r:c + r + 1, c - r:c + r + 1] = 3 * np.outer(b, b)
    assert len(b) == side
    for m in maps:
        assert np.array_equal(m.numpy().astype(np.float64), expected)
    rows, cols = np.nonzero(maps[0].numpy())
    assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side


@pytest.mark.slow
def test_erf_through_run_analyses_averages_stores_the_map_and_summarizes(tmp_path):
    """run_analyses: the average of the first num_images maps (here identical: the box kernel), its area ratios,
    the map written compressed beside the results file (and read back equal), the summary scalars."""
    layers, k, size = 3, 5, 32
    x = torch.rand(5, 3, size, size) + 0.1
    results = tmp_path / "run.robustness.json"
    init = {"model_name": "box", "kernel_sizes": [k], "num_params": 0, "model_config": {}}
    out = run_analyses(BoxStack(layers, k), {"erf": {"image_size": size, "num_images": 4, "chunk": 3}},
                       [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(3))], CFG, results_path=results,
                       out_dir=tmp_path, plot_prefix="run.", results_init=init)["erf"]
    b = box_kernel_1d(layers, k)
    expected = np.zeros((size, size), dtype=np.float32)
    expected[16 - 6:16 + 7, 16 - 6:16 + 7] = 3 * np.outer(b, b)
    assert out["images"] == 4 and out["images_read"] == 4 and out["skipped"] == []
    assert out["feature_size"] == [32, 32] and out["centre"] == [16, 16] and out["stage_name"] == "stages.2"
    assert np.array_equal(out["arrays"]["erf"], expected)
    stored = read_results(results)["analyses"]["erf"]
    assert stored["arrays_file"] == "run.robustness.erf.npz" and "arrays" not in stored
    assert np.array_equal(read_analysis_arrays(results, stored)["erf"], expected)
    assert (tmp_path / "run.erf.png").is_file()
    # the log-rescaled 13 x 13 support: t = 0.99 needs the whole support, side 13 = L(k-1)+1
    assert [p["side"] for p in out["thresholds"]][-1] == 13
    assert out["summary_scalars"]["erf.side_t99"] == 13.0
    assert out["summary_scalars"]["erf.area_t99"] == pytest.approx(100 * 13 * 13 / (32 * 32), rel=1e-12)
    assert threshold_key(0.2) == "t20" and threshold_key(0.995) == "t99.5"


# --- area ratio against a direct reference --------------------------------------------------------------------
def released_get_rectangle(data, thresh):
    """analyze_erf.py:53-61, re-written: numpy float32 sums, strict '>', i from 1 to h // 2 - 1."""
    h, w = data.shape
    all_sum = np.sum(data)
    for i in range(1, h // 2):
        selected_area = data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]
        if np.sum(selected_area) / all_sum > thresh:
            return i * 2 + 1, (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


def released_rescale(raw):
    """analyze_erf.py:68-69 on the float32 map visualize_erf.py saves."""
    data = np.log10(raw.astype(np.float32) + 1)
    return data / np.max(data)


def _random_maps():
    g = np.random.default_rng(0)
    maps = []
    for size in (64, 65, 96):
        yy, xx = np.mgrid[:size, :size] - size // 2
        for sigma in (2.0, 6.0, 20.0):
            maps.append((np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) * 50 + g.random((size, size)) * 0.5)
                        .astype(np.float32))
    return maps


def test_area_ratio_and_rescale_equal_the_released_functions_on_random_maps():
    thresholds = [0.2, 0.3, 0.5, 0.99, 0.05, 0.7]
    n_found = 0
    for raw in _random_maps():
        ref = released_rescale(raw)
        ours = rescale_map(raw)
        assert ours.dtype == np.float32 and np.array_equal(ours, ref)
        got = area_ratios(raw, thresholds)
        for t, entry in zip(thresholds, got):
            want = released_get_rectangle(ref, t)
            assert (entry["side"], entry["area_ratio"]) == ((None, None) if want is None else want)
            n_found += want is not None
    assert n_found > 40  # the maps give real squares, not just the None case


def test_area_ratio_is_none_when_no_centred_square_reaches_the_threshold():
    """Mass outside every centred square (row 0 of an even map is never inside: i stops at h // 2 - 1), or an
    all-zero map: no square qualifies, side and ratio are None, as get_rectangle returns None."""
    raw = np.zeros((64, 64), dtype=np.float32)
    raw[0, :] = 1000.0
    raw[32, 32] = 1.0
    data = released_rescale(raw)
    assert released_get_rectangle(data, 0.5) is None and high_contribution_square(data, 0.5) is None
    assert released_get_rectangle(data, 0.001) == high_contribution_square(data, 0.001) == (3, 9 / 64 ** 2)
    got = area_ratios(raw, [0.001, 0.5])
    assert got == [{"threshold": 0.001, "side": 3, "area_ratio": 9 / 64 ** 2},
                   {"threshold": 0.5, "side": None, "area_ratio": None}]
    assert area_ratios(np.zeros((16, 16)), [0.2])[0]["side"] is None
    summary = lk_ablate.analysis.get_analysis("erf").summary({"thresholds": got})
    assert summary == {"erf.area_t0.1": 100 * 9 / 64 ** 2, "erf.side_t0.1": 3.0, "erf.area_t50": None,
                       "erf.side_t50": None}


def test_log_rescale_changes_the_area_ratio():
    """A peaked map: A / max puts half the mass in a small square; log10(A + 1) flattens the peak, so the same
    threshold needs a larger square (each value from the released formulas written above)."""
    size = 64
    yy, xx = np.mgrid[:size, :size] - size // 2
    raw = (np.exp(-(xx ** 2 + yy ** 2) / (2 * 3.0 ** 2)) * 1e4 + 1.0).astype(np.float32)
    log_side = released_get_rectangle(released_rescale(raw), 0.5)
    lin = raw / np.max(raw)
    lin_side = released_get_rectangle(lin, 0.5)
    assert log_side[0] == area_ratios(raw, [0.5], "log")[0]["side"]
    assert lin_side[0] == area_ratios(raw, [0.5], "none")[0]["side"]
    assert (lin_side[0], log_side[0]) == (7, 25)


def test_relu_and_abs_of_the_gradient_give_their_own_values():
    """One 3x3 convolution with mixed-sign weights (and a bias keeping the centre output positive): the map at the
    centre's 3x3 neighbourhood is sum_c relu(w_c) for `relu` (the script) and sum_c |w_c| for `abs`."""
    w = torch.tensor([[[1.0, -2.0, 0.5], [-1.0, 3.0, -0.25], [2.0, -0.5, 1.5]]]).repeat(3, 1, 1)
    w = (w * torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1))[None]  # channel 2 flips every sign
    model = BoxStack(1, 3, first_weights=w, bias=100.0)
    x = torch.rand(1, 3, 16, 16)
    relu_map = contribution_maps(model, x, gradient="relu")[0, 7:10, 7:10]
    abs_map = contribution_maps(model, x, gradient="abs")[0, 7:10, 7:10]
    assert torch.equal(relu_map, w[0].clamp(min=0).sum(0))
    assert torch.equal(abs_map, w[0].abs().sum(0))
    assert relu_map[0, 0].item() == 1.5 and abs_map[0, 0].item() == 2.5


class SquareThenBoxes(BoxStack):
    """x**2, then box convolutions: the input gradient depends on the input, so a NaN pixel gives a NaN map."""

    def forward(self, x):
        return super().forward(x * x)


def test_first_usable_images_are_averaged_and_non_finite_ones_skipped():
    """The first num_images usable images in order: an image whose map is NaN is skipped (recorded by position),
    the next one is taken; too few usable images stop unless allow_fewer."""
    model = SquareThenBoxes(2, 3)
    x = torch.rand(5, 3, 16, 16) + 0.1
    x[1, 0, 7, 7] = float("nan")  # inside the 5x5 support of the centre output (8, 8)
    out = run_analyses(model, {"erf": {"image_size": 16, "num_images": 3}}, [(x, torch.zeros(5))], CFG)["erf"]
    assert out["images"] == 3 and out["images_read"] == 4 and out["skipped"] == [1]
    maps = contribution_maps(model, x[[0, 2, 3]]).double().mean(0).numpy()
    assert rel(out["arrays"]["erf"], maps) < 1e-6
    with pytest.raises(DataError, match=r"4 usable image\(s\) of the 6 asked for \(5 read, 1 with non-finite"):
        run_analyses(model, {"erf": {"image_size": 16, "num_images": 6}}, [(x, torch.zeros(5))], CFG)
    fewer = run_analyses(model, {"erf": {"image_size": 16, "num_images": 6, "allow_fewer": True}},
                         [(x, torch.zeros(5))], CFG)["erf"]
    assert fewer["images"] == 4
    with pytest.raises(ConfigError, match="erf.image_size is 32 but the images are 16x16"):
        run_analyses(model, {"erf": {"image_size": 32}}, [(x, torch.zeros(5))], CFG)


@pytest.mark.slow
def test_chunk_does_not_change_the_map_and_stages_shrink_the_erf():
    torch.manual_seed(0)
    model = lk_ablate.create_model("convnext_demo", kernel_size=5).eval()
    x = torch.randn(4, 3, 64, 64)
    a = run_analyses(model, {"erf": {"image_size": 64, "num_images": 4, "chunk": 1}}, [(x, torch.zeros(4))],
                     model.model_config)["erf"]
    b = run_analyses(model, {"erf": {"image_size": 64, "num_images": 4, "chunk": 4}}, [(x, torch.zeros(4))],
                     model.model_config)["erf"]
    assert rel(a["arrays"]["erf"], b["arrays"]["erf"]) < 1e-5
    s1 = run_analyses(model, {"erf": {"image_size": 64, "num_images": 4, "stage": 1}}, [(x, torch.zeros(4))],
                      model.model_config)["erf"]
    assert s1["stage_name"] == "stages.1" and s1["feature_size"] == [8, 8] and a["feature_size"] == [2, 2]
    assert np.count_nonzero(s1["arrays"]["erf"]) < np.count_nonzero(a["arrays"]["erf"])
    with pytest.raises(ConfigError, match="erf.stage 4 out of range: the model has 4 stages"):
        run_analyses(model, {"erf": {"image_size": 64, "stage": 4}}, [(x, torch.zeros(4))], model.model_config)


@pytest.mark.slow
def test_stage_outputs_of_timm_families_and_vit_tokens():
    """timm ConvNeXt (stages), ResNet (layer1..4) and ViT (blocks; prefix tokens dropped, patch tokens on the grid)."""
    import timm

    x = torch.randn(1, 3, 64, 64)
    cnx = timm.create_model("convnext_atto", pretrained=False).eval()
    assert tuple(stage_output(cnx, x).shape) == (1, 320, 2, 2)
    torch.testing.assert_close(stage_output(cnx, x), cnx.forward_features(x))
    res = timm.create_model("resnet18", pretrained=False).eval()
    assert tuple(stage_output(res, x, 1).shape) == (1, 128, 8, 8)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True).eval()
    tokens = vit.blocks(vit._pos_embed(vit.patch_embed(x)))  # NHWC patch embed with dynamic_img_size
    out = stage_output(vit, x)
    assert tuple(out.shape) == (1, 192, 4, 4)
    torch.testing.assert_close(out, tokens[:, 1:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2))
    fixed = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    with pytest.raises(ConfigError, match="this ViT takes 224x224 px images only, not 64x64"):
        stage_output(fixed, x)


def test_config_checks_and_the_paper_preset():
    paper = load_preset("paper")
    assert paper["erf"] == {"image_size": 1024, "num_images": 50, "stage": -1, "thresholds": [0.2, 0.3, 0.5, 0.99],
                            "gradient": "relu", "rescale": "log"}
    cfg = section_config("erf", paper["erf"])
    assert cfg.rescale_dtype == "float32" and cfg.chunk == 1 and cfg.allow_fewer is False
    for bad, match in [({"gradient": "square"}, "erf.gradient"), ({"rescale": "sqrt"}, "erf.rescale"),
                       ({"thresholds": [0.0]}, "erf.thresholds"), ({"num_images": 0}, "erf.num_images"),
                       ({"rescale_dtype": "float16"}, "erf.rescale_dtype")]:
        with pytest.raises(ConfigError, match=match):
            section_config("erf", bad)
    spec = lk_ablate.analysis.runner.eval_spec_for("erf", CFG, "paper", cfg)
    assert (spec.crop, spec.resize, spec.squash, spec.interpolation) == ((1024, 1024), 1024, True, "bicubic")
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    own = lk_ablate.analysis.runner.eval_spec_for("erf", CFG, "model", cfg)
    assert (own.interpolation, own.mean) == (CFG.interpolation, CFG.mean)


@pytest.mark.slow
def test_analyze_erf_cli_reads_the_first_images_in_imagefolder_order(tmp_path, capsys):
    """`lk_ablate analyze erf --preset paper`: the first num_images images of the val folder in ImageFolder order
    (both of class a, the first of 10 here), resized (bicubic, both sides) to image_size, ImageNet mean/std; the map
    equals the average of the two maps computed directly; results JSON + map beside it."""
    g = np.random.default_rng(0)
    for c, sizes in [("a", [(40, 30), (24, 36)])] + [(f"c{i}", [(32, 32)]) for i in range(9)]:  # 10 classes
        (tmp_path / "val" / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray((g.random((h, w, 3)) * 255).astype(np.uint8)).save(tmp_path / "val" / c / f"{i}.png")
    torch.manual_seed(0)
    model = lk_ablate.create_model("convnext_demo", kernel_size=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "convnext_demo", "kernel_size": 3, "num_classes": 10,
                                     "model_kwargs": {}}}, tmp_path / "k3.ckpt")
    rc = main(["analyze", "erf", "--ckpt_path", str(tmp_path / "k3.ckpt"), "--preset", "paper",
               "--data.imagenet_val", str(tmp_path / "val"), "--data.num_workers", "0", "--erf.image_size", "64",
               "--erf.num_images", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "erf: erf.area_t20" in printed
    entry = read_results(tmp_path / "k3.robustness.json")["analyses"]["erf"]
    assert entry["images"] == 2 and entry["protocol"] == "paper" and entry["config"]["image_size"] == 64
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x = torch.stack([tf(Image.open(tmp_path / "val" / "a" / f"{i}.png").convert("RGB")) for i in range(2)])
    want = contribution_maps(model.eval(), x).double().mean(0).numpy()
    got = read_analysis_arrays(tmp_path / "k3.robustness.json", entry)["erf"]
    assert rel(got, want) < 1e-6
    assert json.loads((tmp_path / "k3.robustness.json").read_text())["analyses"]["erf"]["arrays_file"] == \
        "k3.robustness.erf.npz"


def test_from_a_val_loader_only_the_images_used_are_read():
    """A sequential DataLoader (what ValSource gives) is read from its dataset chunk by chunk: 3 images decoded for
    num_images 3, not the loader's batch of 64 (1024 px images are 12 MiB each as float32)."""
    class Counting(torch.utils.data.Dataset):
        reads = 0

        def __len__(self):
            return 100

        def __getitem__(self, i):
            Counting.reads += 1
            return torch.rand(3, 16, 16) + 0.1, 0

    loader = torch.utils.data.DataLoader(Counting(), batch_size=64, shuffle=False)
    out = run_analyses(BoxStack(1, 3), {"erf": {"image_size": 16, "num_images": 3}}, loader, CFG)["erf"]
    assert out["images"] == 3 and Counting.reads == 3
