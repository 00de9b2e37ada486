"""Occlusion: patch masks worked by hand, DINO weights loaded from a file, attention checked against timm's own."""
import pytest
import timm
import torch
import torch.nn as nn

import lk_ablate
from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.common import from_pixels, to_pixels
from lk_ablate.analysis.occlusion import (cls_attention, dino_patch_attention, load_dino,
                                          random_patch_mask, saliency_keep_mask)
from lk_ablate.base.errors import ConfigError, DataError

ATTN = torch.tensor([[0.5, 0.1, 0.25, 0.15]])  # ascending: p1 0.1, p3 0.15, p2 0.25, p0 0.5; cumsum .1 .25 .5 1


@pytest.mark.parametrize("mode,level,keep", [
    ("salient", 0.5, [0, 1, 1, 1]),       # top patches holding 0.5 of the mass: p0
    ("salient", 0.6, [0, 1, 0, 1]),       # ... holding 0.6: p0 and p2 (cumsum above 0.4)
    ("salient", 1.0, [0, 0, 0, 0]),
    ("non_salient", 0.25, [1, 0, 1, 0]),  # bottom patches holding 0.25: p1 and p3
    ("non_salient", 0.2, [1, 0, 1, 1]),
    ("non_salient", 0.0, [1, 1, 1, 1]),
])
def test_saliency_masks_by_hand(mode, level, keep):
    assert saliency_keep_mask(ATTN, level, mode)[0].tolist() == keep
    assert saliency_keep_mask(3 * ATTN, level, mode)[0].tolist() == keep  # scores are renormalised


@pytest.mark.parametrize("level,dropped", [(0.1, 19), (0.3, 58), (0.7, 137), (0.9, 176)])
def test_random_mask_drops_floor_of_level_times_patches(level, dropped):
    # the released script drops k * 196 // 10 of the 14 x 14 patches at level k / 10
    m = random_patch_mask((14, 14), level, torch.Generator().manual_seed(0))
    assert m.shape == (14, 14) and int((m == 0).sum()) == dropped


def _save_dino(path, dino_style=False):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    sd = vit.state_dict()
    if dino_style:  # a DINO training checkpoint: teacher backbone + projection head
        sd = {"teacher": {**{"backbone." + k: v for k, v in sd.items()}, "head.mlp.0.weight": torch.zeros(2, 2)}}
    torch.save(sd, path)
    return vit


class Capture(nn.Module):
    def forward(self, a):
        self.a = a
        return a


@pytest.mark.slow
def test_dino_path_load_and_attention_matches_timm(tmp_path):
    ref = _save_dino(tmp_path / "plain.pth")
    _save_dino(tmp_path / "dino.pth", dino_style=True)
    a = load_dino(tmp_path / "plain.pth")
    b = load_dino(tmp_path / "dino.pth")
    for k, v in ref.state_dict().items():
        assert torch.equal(a.state_dict()[k], v) and torch.equal(b.state_dict()[k], v)
    x = torch.randn(2, 3, 224, 224)
    attn = cls_attention(a, x, head=1)
    # timm's unfused path applies attn_drop to the softmaxed attention: capture it there
    blk = ref.blocks[-1].attn
    blk.fused_attn, blk.attn_drop = False, Capture()
    with torch.no_grad():
        ref(x)
    expected = blk.attn_drop.a[:, :, 0, 1:]
    torch.testing.assert_close(attn, expected[:, 1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cls_attention(a, x, head=None), expected.mean(1), rtol=1e-5, atol=1e-7)
    assert attn.shape == (2, 196)
    with pytest.raises(DataError, match="not found"):
        load_dino(tmp_path / "missing.pth")


class Recorder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.model(x)


def test_occlusion_run_all_modes(tmp_path):
    _save_dino(tmp_path / "dino.pth")
    model = Recorder(lk_ablate.create_model("convnext_demo").eval())
    cfg = model.model.model_config
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([1, 2, 3])
    out = run_analyses(model, {"occlusion": {"levels": [0.5, 1.0], "dino_path": str(tmp_path / "dino.pth"),
                                             "dino_img_size": 64}}, [(x, y)], cfg)["occlusion"]
    assert set(out["curves"]) == {"random", "salient", "non_salient"}
    rnd = out["curves"]["random"]
    assert [p["dropped_fraction"] for p in rnd] == [0.5, 1.0]  # a 2 x 2 grid of 16 px patches: 2 and 4 dropped
    black = from_pixels(torch.zeros(1, 3, 1, 1), cfg)
    half = model.inputs[1]  # clean, then random at 0.5
    is_black = torch.isclose(half, black.expand_as(half), atol=1e-6).all(dim=1)
    assert is_black.float().mean().item() == 0.5
    assert all(p["dropped_fraction"] == 1.0 for p in (out["curves"]["salient"][1],))
    # non-salient at 0.5: the patches of the DINO grid (4 x 4 at 64 px, 8 px each on the 32 px input) holding the
    # least-attended half of the mass; the dropped fraction is their share of the grid
    dcfg = section_config("occlusion", {"dino_path": str(tmp_path / "dino.pth"), "dino_img_size": 64})
    attn, grid = dino_patch_attention(load_dino(tmp_path / "dino.pth", img_size=64), to_pixels(x, cfg), dcfg)
    keep = saliency_keep_mask(attn, 0.5, "non_salient")
    assert grid == (4, 4) and 0 < int((keep == 0).sum()) < 48
    assert out["curves"]["non_salient"][0]["dropped_fraction"] == pytest.approx(float((keep == 0).float().mean()),
                                                                                rel=1e-6)


def test_occlusion_config_errors():
    with pytest.raises(ConfigError, match="dino_path"):
        section_config("occlusion", {"modes": ["salient"]})
    with pytest.raises(ConfigError, match="modes"):
        section_config("occlusion", {"modes": ["center"]})
    with pytest.raises(ConfigError, match="levels"):
        section_config("occlusion", {"modes": ["random"], "levels": [1.5]})
