"""Analyses against independent computations: the TAIG surrogate really carries the saved weights; occlusion
curves (salient, non-salient, random) equal accuracies worked out here from the attention and the formula of
each mask; band-limited noise equals a numpy DFT filter written from the definition, and the frequency curve's
drops (clean minus noisy accuracy) at a non-zero amplitude equal a recount with the same noise draws.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import lk_ablate
from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.attacks import load_surrogate
from lk_ablate.analysis.frequency import band_limited_noise
from lk_ablate.analysis.occlusion import cls_attention
from lk_ablate.models.registry import ModelConfig


# --- TAIG surrogate --------------------------------------------------------------------------------------------
def _assert_same_weights(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(saved)
    for k, v in saved.items():
        assert torch.equal(got[k], v), k


def test_taig_timm_surrogate_carries_the_checkpoint_weights(tmp_path):
    torch.manual_seed(11)
    sur = timm.create_model("test_vit", pretrained=False)
    with torch.no_grad():  # far from any fresh init, so a random-init surrogate cannot pass
        for p in sur.parameters():
            p.add_(torch.randn_like(p))
    saved = {k: v.clone() for k, v in sur.state_dict().items()}
    torch.save(saved, tmp_path / "sur.pth")
    model, cfg, label = load_surrogate(section_config("taig", {"surrogate_timm": "test_vit",
                                                             "surrogate_path": str(tmp_path / "sur.pth")}))
    assert label == "test_vit" and not model.training
    _assert_same_weights(model, saved)


def test_taig_registered_surrogate_carries_the_checkpoint_weights(tmp_path):
    torch.manual_seed(12)
    sur = lk_ablate.create_model("convnext_demo", kernel_size=5)
    with torch.no_grad():
        for p in sur.parameters():
            p.add_(torch.randn_like(p))
    saved = {k: v.clone() for k, v in sur.state_dict().items()}
    torch.save(saved, tmp_path / "sur.pth")
    model, cfg, _ = load_surrogate(section_config("taig", {"surrogate_timm": None, "surrogate_model": "convnext_demo",
                                                         "surrogate_kernel_size": 5,
                                                         "surrogate_path": str(tmp_path / "sur.pth")}))
    _assert_same_weights(model, saved)


# --- occlusion --------------------------------------------------------------------------------------------------
SIDE, PATCH = 64, 16  # a 4 x 4 grid of 16-px patches for the model and for the DINO ViT at 64 px
GRID = SIDE // PATCH


class BrightestPatch(nn.Module):
    """Class = the patch (of 16) with the largest mean input: dropping (blacking) that patch changes the answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x.mean(1, keepdim=True), PATCH).flatten(1)


def _peaky_dino(path) -> nn.Module:
    """A ViT-S/16 whose last-block attention is far from uniform (scaled q/k), so saliency has no ties."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=SIDE)
    with torch.no_grad():
        vit.blocks[-1].attn.qkv.weight[:2 * vit.embed_dim].mul_(3.0)
        vit.pos_embed.mul_(3.0)
    torch.save(vit.state_dict(), path)
    return vit.eval()


def _keep(attn: np.ndarray, level: float, mode: str) -> np.ndarray:
    """Keep-mask (P,) written from the definition: order patches by attention; salient drops the most-attended
    patches that hold a fraction ``level`` of the mass (ascending cumulative mass > 1 - level), non-salient the
    least-attended ones holding ``level`` (ascending cumulative mass <= level)."""
    a = attn / attn.sum()
    order = np.argsort(a, kind="stable")
    cum = np.cumsum(a[order])
    keep = np.ones(a.size)
    for rank, patch in enumerate(order):
        if (mode == "salient" and cum[rank] > 1 - level) or (mode == "non_salient" and cum[rank] <= level):
            keep[patch] = 0.0
    return keep


def test_occlusion_curves_equal_an_independent_count(tmp_path):
    vit = _peaky_dino(tmp_path / "dino.pth")
    cfg = ModelConfig(input_size=(3, SIDE, SIDE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=16)
    g = torch.Generator().manual_seed(4)
    pixels = torch.rand(24, 3, SIDE, SIDE, generator=g)
    x = (pixels - 0.5) / 0.25
    model = BrightestPatch().eval()
    y = model(x).argmax(1)  # clean accuracy 100 %
    levels = [0.3, 0.6]
    out = run_analyses(model, {"occlusion": {"levels": levels, "modes": ["salient", "non_salient"],
                                             "dino_path": str(tmp_path / "dino.pth"), "dino_img_size": SIDE}},
                       [(x, y)], cfg)["occlusion"]
    # the DINO input: [0, 1] pixels normalised with ImageNet's mean/std (the config's defaults)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    attn = cls_attention(vit, (pixels - mean[:, None, None]) / std[:, None, None], head=1).double().numpy()
    shares = np.sort(attn / attn.sum(1, keepdims=True), axis=1)
    assert np.diff(shares, axis=1).min() > 1e-6  # no ties: the order of patches is unambiguous
    cum = np.cumsum(shares, axis=1)  # and no cumulative mass within 1e-4 of a threshold (float32 rounding)
    assert min(np.abs(cum - t).min() for lv in levels for t in (lv, 1 - lv)) > 1e-4
    assert out["clean_accuracy"] == 100.0
    curves = {}
    for mode in ("salient", "non_salient"):
        pts = []
        for level in levels:
            keeps = np.stack([_keep(a, level, mode) for a in attn])  # (24, 16)
            correct = sum(keeps[i, int(y[i])] for i in range(len(y)))  # right iff the brightest patch is kept
            dropped = float((1 - keeps).mean())
            pts.append((level, 100.0 * correct / len(y), dropped))
        curves[mode] = pts
        got = [(p["level"], p["accuracy"], p["dropped_fraction"]) for p in out["curves"][mode]]
        for (lv, acc, drop), (glv, gacc, gdrop) in zip(pts, got):
            assert (glv, gacc) == (lv, pytest.approx(acc, abs=1e-9)) and gdrop == pytest.approx(drop, rel=1e-6)  # a float32 mean
    # the two modes' accuracies differ (here 83.3 / 70.8 vs 33.3 / 16.7), so swapping their masks cannot pass
    assert all(abs(s[1] - n[1]) > 20 for s, n in zip(curves["salient"], curves["non_salient"]))


# --- frequency --------------------------------------------------------------------------------------------------
def _band_filter_numpy(base: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Keep the DFT bins whose frequency max(|2 min(ky, H-ky) / H|, |2 min(kx, W-kx) / W|) (units of pi) lies in
    [lo, hi) (the top band includes 1), from the definition with numpy."""
    h, w = base.shape[-2:]
    fy = np.array([2 * min(k, h - k) / h for k in range(h)])
    fx = np.array([2 * min(k, w - k) / w for k in range(w)])
    f = np.maximum(fy[:, None], fx[None, :])
    inside = (f >= lo - 1e-12) & ((f <= hi + 1e-12) if hi >= 1.0 else (f < hi - 1e-12))
    return np.fft.ifft2(np.fft.fft2(base) * inside).real


@pytest.mark.parametrize("size", [(16, 16), (12, 18)])
def test_band_noise_equals_a_numpy_filter(size):
    """amplitude x (sign noise filtered to the band), for each of the 4 bands of window 0.25 (Nyquist included)."""
    g, ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for lo, hi in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]:
        n = band_limited_noise((2, 3, *size), lo, hi, 0.7, "pre_filter", g)
        base = torch.randn((2, 3, *size), generator=ref).sign().double().numpy()
        expected = 0.7 * _band_filter_numpy(base, lo, hi)
        assert np.linalg.norm(n.double().numpy() - expected) / np.linalg.norm(expected) < 1e-6, (lo, hi)


def test_frequency_drops_equal_a_recount_with_the_same_noise():
    """Amplitude 2 on a linear model: the drop of each band is clean accuracy minus the accuracy recounted here with
    the same draws (one generator seeded with the config's seed, bands in order, one draw each)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = ModelConfig(input_size=(3, 16, 16), num_classes=10)
    out = run_analyses(model, {"frequency": {"amplitude": 2.0, "window": 0.25, "layout": "consecutive",
                                                "seed": 9}}, [(x, y)], cfg)["frequency"]
    ref = torch.Generator().manual_seed(9)
    expected = []
    for lo, hi in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]:
        base = torch.randn(tuple(x.shape), generator=ref).sign().double().numpy()
        noisy = x + torch.from_numpy(2.0 * _band_filter_numpy(base, lo, hi)).float()
        with torch.no_grad():
            acc = 100.0 * float((model(noisy).argmax(1) == y).sum()) / len(y)
        expected.append((lo, hi, 100.0 - acc))
    assert out["clean_accuracy"] == 100.0
    got = [(b["low"], b["high"], b["drop"]) for b in out["bands"]]
    assert got == [(lo, hi, pytest.approx(d, abs=1e-9)) for lo, hi, d in expected]
    assert sum(d for _, _, d in expected) > 20  # the noise does hurt: a flipped sign or zero noise cannot pass
