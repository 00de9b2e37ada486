"""The analyses on a (small) RepLKNet: (RepLKBlock, ConvFFN) units, its layers, its large kernels."""
import math

import pytest
import torch

from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.features import feature_modules
from lk_ablate.analysis.lesion import residual_units, units_removed
from lk_ablate.models.registry import ModelConfig
from lk_ablate.models.replknet import ConvFFN, RepLKBlock, RepLKNet

CFG = ModelConfig(input_size=(3, 32, 32), num_classes=10)


def _small(seed=0):
    torch.manual_seed(seed)
    m = RepLKNet(kernel_size=(7, 5, 5, 5), layers=(1, 1, 2, 1), channels=(8, 16, 16, 32), small_kernel=3,
                 num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the merged kernels differ from the raw ones
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m


def test_units_are_replk_ffn_pairs_and_removal_skips_both():
    m = _small()
    units = residual_units(m)
    assert len(units) == 5 and all(isinstance(a, RepLKBlock) and isinstance(b, ConvFFN) for a, b in units)
    x = torch.randn(2, 3, 32, 32)
    skip = set(units[3])  # the second pair of stage 2
    with torch.no_grad():
        h = x
        for s in m.stem:
            h = s(h)
        for i, stage in enumerate(m.stages):
            for blk in stage.blocks:
                if blk not in skip:
                    h = blk(h)
            if i < len(m.transitions):
                h = m.transitions[i](h)
        manual = m.forward_head(h)
        with units_removed([units[3]]):
            out = m(x)
    assert torch.equal(out, manual)
    res = run_analyses(m, {"lesion": {"ns": [1], "samples": 3}}, [(x, torch.tensor([0, 1]))], CFG)["lesion"]
    assert res["total_units"] == 5 and res["points"][0]["fraction"] == 1 / 5


def test_feature_layers_are_stem_units_blocks_and_transitions():
    m = _small()
    assert len(feature_modules(m)) == 4 + 2 * 5 + 2 * 3
    out = run_analyses(m, {"feature_variance": {"max_images": 2}}, [(torch.randn(2, 3, 32, 32), torch.zeros(2))],
                       CFG)["feature_variance"]
    names = [lay["name"] for lay in out["layers"]]
    assert names[:5] == ["stem.0", "stem.1", "stem.2", "stem.3", "stages.0.blocks.0"]
    assert names[6:8] == ["transitions.0.0", "transitions.0.1"] and len(names) == 20


def test_kernel_distance_reads_the_large_kernels_raw_or_merged():
    m = _small()
    raw = run_analyses(m, {"kernel_distance": {}}, None, CFG)["kernel_distance"]
    assert [lay["kernel_size"][0] for lay in raw["layers"]] == [7, 5, 5, 5, 5]
    assert all(lay["name"].endswith("large_kernel.lkb_origin.conv") for lay in raw["layers"])
    merged = run_analyses(m, {"kernel_distance": {"reparameterize": True}}, None, CFG)["kernel_distance"]
    assert [lay["name"].endswith("lkb_reparam") for lay in merged["layers"]] == [True] * 5
    # the merged kernel, built here: each branch's BN folded (w gamma / sqrt(var + eps)), the 3x3 small kernel added
    # at the centre of the 7x7; distance per channel = sum |w| d / sum |w|, d = |tap - centre| / |corner - centre|
    lk = m.stages[0].blocks[0].large_kernel

    def folded(unit):
        return unit.conv.weight[:, 0].double() * (unit.bn.weight / (unit.bn.running_var + unit.bn.eps).sqrt()
                                                  ).double()[:, None, None]

    w = folded(lk.lkb_origin)
    w[:, 2:5, 2:5] += folded(lk.small_conv)
    d = torch.tensor([[math.hypot(i - 3, j - 3) / math.hypot(3, 3) for j in range(7)] for i in range(7)],
                     dtype=torch.float64)
    expected = sorted(((w.abs() * d).sum((1, 2)) / w.abs().sum((1, 2))).tolist())
    assert merged["layers"][0]["sorted"] == pytest.approx(expected, rel=1e-5)
    assert merged["layers"][0]["sorted"] != pytest.approx(raw["layers"][0]["sorted"], rel=1e-3)
    assert m.form == "train"  # the analysed model itself is left as it was


def test_lesion_preset_of_the_paper_on_31b_units():
    from lk_ablate import create_model

    with torch.device("meta"):
        m = create_model("replknet_31b")
    units = residual_units(m)
    assert len(units) == 24
    stage3 = {id(b) for b in m.stages[2].blocks}
    # preset paper_lesion_replknet = units 4..21, exactly the 18 pairs of the third stage
    assert all(id(units[i][0]) in stage3 and id(units[i][1]) in stage3 for i in range(4, 22))
    assert not any(id(units[i][0]) in stage3 for i in (*range(4), 22, 23))
