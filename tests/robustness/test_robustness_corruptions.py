"""On-the-fly corruptions: equal to imagecorruptions at a fixed seed (tolerance: exact, every pixel), deterministic,
independent of worker count, cached on disk; and scoring models on the corrupted arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from lk_ablate import create_model
from lk_ablate.base.errors import ConfigError
from lk_ablate.models.registry import ModelConfig
from lk_ablate.robustness import corruptions as C
from lk_ablate.robustness.metrics import ALL_CORRUPTIONS, CORRUPTIONS

from helpers import LazyModule

imagecorruptions = LazyModule("imagecorruptions")  # it imports numba: by the test that uses it, not at collection


def _images(n, h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth-ish content (a gradient plus noise) so blurs and JPEG do something visible.
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return np.stack([np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8) for _ in range(n)])


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_equal_to_imagecorruptions_at_fixed_seed(corruption):
    for img, severities in ((_images(1)[0], (1, 2, 3, 4, 5)), (_images(1, 48, 64, seed=1)[0], (3,))):
        for s in severities:
            seed = C.image_seed(123, corruption, s, 7)
            ours = C.corrupt(img, corruption, s, seed)
            np.random.seed(seed)
            kw = {"seed": seed} if corruption in ("glass_blur", "impulse_noise") else {}
            ref = imagecorruptions.corrupt(img, severity=s, corruption_name=corruption, **kw)
            assert ours.dtype == np.uint8 and ours.shape == img.shape
            assert np.array_equal(ours, ref), f"{corruption} severity {s} differs from imagecorruptions"
            assert np.array_equal(C.corrupt(img, corruption, s, seed), ours), "not deterministic"


def test_seeds_differ_per_image_and_corruption():
    seeds = {C.image_seed(0, c, s, i) for c in ALL_CORRUPTIONS for s in (1, 5) for i in range(3)}
    assert len(seeds) == len(ALL_CORRUPTIONS) * 2 * 3
    assert C.image_seed(0, "fog", 1, 0) == C.image_seed(0, "fog", 1, 0) != C.image_seed(1, "fog", 1, 0)
    img = _images(1)[0]
    a = C.corrupt(img, "gaussian_noise", 3, C.image_seed(0, "gaussian_noise", 3, 0))
    b = C.corrupt(img, "gaussian_noise", 3, C.image_seed(1, "gaussian_noise", 3, 0))
    assert not np.array_equal(a, b)


def test_small_or_wrong_images_are_rejected():
    with pytest.raises(ConfigError, match="at least 32x32"):
        C.corrupt(np.zeros((28, 28, 3), np.uint8), "fog", 1, 0)
    with pytest.raises(ConfigError, match="uint8"):
        C.corrupt(np.zeros((32, 32, 3), np.float32), "fog", 1, 0)
    with pytest.raises(ConfigError, match="unknown corruption"):
        C.image_seed(0, "rain", 1, 0)


@pytest.mark.slow
def test_workers_and_cache(tmp_path, monkeypatch):
    imgs = _images(6)
    cs, ss = ("glass_blur", "frost", "shot_noise"), (1, 5)
    one = C.corrupt_images(imgs, cs, ss, seed=3, workers=1)
    two = C.corrupt_images(imgs, cs, ss, seed=3, workers=2, cache_dir=tmp_path)
    for c in cs:
        for s in ss:
            assert np.array_equal(one.arrays[c][s], two.arrays[c][s])
            # Each image equals its own single corruption: results do not depend on batching (with the same
            # OpenCV kernels: corrupt_images uses the baseline ones, which frost's resize tells apart).
            with C.machine_independent_opencv():
                alone = C.corrupt(imgs[4], c, s, C.image_seed(3, c, s, 4))
            assert np.array_equal(one.arrays[c][s][4], alone)
    folder = two.cache_dir
    assert folder.name.endswith("-seed3") and sorted(p.name for p in folder.glob("*.npy")) == sorted(
        f"{c}_s{s}.npy" for c in cs for s in ss)

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(C, "_corrupt_all", fail)
    again = C.corrupt_images(imgs, ["frost"], [5], seed=3, workers=1, cache_dir=tmp_path)  # a cached subset
    assert isinstance(again.arrays["frost"][5], np.memmap) and np.array_equal(again.arrays["frost"][5],
                                                                              one.arrays["frost"][5])
    with pytest.raises(AssertionError, match="recomputed"):  # another seed is another cache entry
        C.corrupt_images(imgs, ["frost"], [5], seed=4, workers=1, cache_dir=tmp_path)


class MeanBrightness(nn.Module):
    """Class 1 when the un-normalised mean pixel exceeds 0.5, else class 0."""

    def __init__(self):
        super().__init__()
        self.model_config = ModelConfig(input_size=(3, 32, 32), crop_pct=1.0, mean=(0.5, 0.5, 0.5),
                                        std=(0.25, 0.25, 0.25), interpolation="bilinear", num_classes=2)
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        m = (x * 0.25 + 0.5).mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), (m - 0.5) * self.w], dim=1)


def test_score_corruptions_counts_and_relative_errors():
    imgs = _images(10)
    labels = np.array([0, 1] * 5)
    corrupted = C.corrupt_images(imgs, ["brightness", "contrast"], [1, 5], seed=0, workers=1)
    res = C.score_corruptions(MeanBrightness(), corrupted, labels, clean_images=imgs, batch_size=4)
    for c in ("brightness", "contrast"):
        for s in (1, 5):
            pred = (corrupted.arrays[c][s].reshape(10, -1).mean(1) / 255.0 > 0.5).astype(int)
            assert res["top1"][c][s] == pytest.approx(100.0 * (pred == labels).mean())
    assert res["mean_top1"] == pytest.approx(np.mean([v for by in res["top1"].values() for v in by.values()]))
    assert res["clean_top1"] == pytest.approx(100.0 * ((imgs.reshape(10, -1).mean(1) / 255 > 0.5) == labels).mean())
    assert res["n"] == 10
    # mCE-style ratio, worked by hand: errors (20 + 40) / (50 + 50) = 0.6 -> 60; (10 + 10) / (40 + 60) -> 20.
    rel = C.relative_corruption_errors({"top1": {"fog": {1: 80.0, 2: 60.0}, "snow": {1: 90.0, 2: 90.0}}},
                                       {"top1": {"fog": {1: 50.0, 2: 50.0}, "snow": {1: 60.0, 2: 40.0}}})
    assert rel["ce"] == pytest.approx({"fog": 60.0, "snow": 20.0}) and rel["mce"] == pytest.approx(40.0)


def test_evaluate_corruptions_two_real_models(tmp_path):
    torch.manual_seed(0)
    models = {f"k{k}": create_model("convnext_demo", kernel_size=k).eval() for k in (3, 7)}
    imgs, labels = _images(12), np.arange(12) % 10
    out = C.evaluate_corruptions(models, imgs, labels, corruptions=["defocus_blur", "pixelate"], severities=[2],
                                 seed=1, cache_dir=tmp_path, workers=1, baseline="k3", batch_size=5)
    assert set(out) == {"k3", "k7"} and out["k3"]["relative"]["mce"] == pytest.approx(100.0)
    for r in out.values():
        assert set(r["top1"]) == {"defocus_blur", "pixelate"} and r["n"] == 12 and r["clean_top1"] is not None
        assert all(0.0 <= v <= 100.0 for by in r["top1"].values() for v in by.values())
    with pytest.raises(ConfigError, match="baseline"):
        C.evaluate_corruptions(models, imgs, labels, corruptions=["pixelate"], severities=[2], seed=1,
                               cache_dir=tmp_path, workers=1, baseline="k31")


def test_stratified_subset():
    labels = np.repeat(np.arange(10), 100)
    idx = C.stratified_subset(labels, 55, seed=0)
    assert len(idx) == 55 == len(set(idx.tolist())) and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(idx, C.stratified_subset(labels, 55, seed=0))
    assert not np.array_equal(idx, C.stratified_subset(labels, 55, seed=1))
    assert set(CORRUPTIONS) < set(ALL_CORRUPTIONS)
