"""Each option of the evaluation transform changes the tensor the model sees, as a reference written here says.

The reference is the eval transform's definition in plain Pillow and numpy: the shorter side resized to ``resize``
(the longer to int(resize x long / short); ``squash``: both sides to ``resize``) with the named Pillow filter, a
centre crop starting at round((side - crop) / 2), then (v / 255 - mean) / std in float32. Every option (resize,
crop, squash, interpolation, mean, std, no resize) is set away from a base spec: the tensor must change, and must
equal the reference. Through the model config (crop_pct -> resize = floor(input / crop_pct)) and both DataModules'
validation pipelines (their input_size, crop_pct, crop_mode, interpolation and mean/std overrides) the same.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lk_ablate.data import ImageFolderDataModule
from lk_ablate.data.transforms import EvalSpec
from lk_ablate.models.registry import ModelConfig

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
BASE = dict(crop=(48, 48), resize=56, squash=False, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225))


def reference(img: Image.Image, crop, resize, squash, interpolation, mean, std) -> torch.Tensor:
    w, h = img.size
    if resize is not None:
        if squash:
            size = (resize, resize)
        elif w <= h:
            size = (resize, int(resize * h / w))
        else:
            size = (int(resize * w / h), resize)
        img = img.resize(size, FILTERS[interpolation])
        ch, cw = crop
    else:  # no resize: only images larger than the crop are cut to it
        ch, cw = min(crop[0], h), min(crop[1], w)
    w, h = img.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    a = np.asarray(img.crop((left, top, left + cw, top + ch)), np.float32) / np.float32(255)
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("change", [
    dict(resize=64), dict(crop=(40, 48)), dict(squash=True), dict(interpolation="bilinear"),
    dict(interpolation="nearest"), dict(mean=(0.3, 0.5, 0.7)), dict(std=(0.2, 0.3, 0.4)), dict(resize=None),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_each_eval_option_changes_the_tensor_as_the_reference_says(change):
    """On a 70 x 90 and a 90 x 70 image, the per-sample transform and the uint8 geometry + batched normalisation
    (robustness/analyze's path) both equal the reference of the changed spec (bit for bit), which differs from
    the base spec's tensor."""
    spec, base = EvalSpec(**{**BASE, **change}), EvalSpec(**BASE)
    for img in (noise(70, 90), noise(90, 70, seed=1)):
        ref = reference(img, **{**BASE, **change})
        got = spec.transform()(img)
        assert torch.equal(got, ref)
        assert torch.equal(spec.normalize(spec.geometry()(img)[None])[0], ref)
        before = base.transform()(img)
        assert got.shape != before.shape or not torch.equal(got, before)


@pytest.mark.parametrize("crop_pct,resize", [(0.8, 60), (0.95, 50), (1.0, 48)])
def test_crop_pct_sets_the_resize_of_the_model_config(crop_pct, resize):
    """A model config with a 48 px input: crop_pct decides the resize, floor(48 / crop_pct) (timm's rule), worked
    out here: 60, 50, 48; the crop mode squash resizes both sides."""
    img = noise(70, 90)
    for mode, squash in (("center", False), ("squash", True)):
        cfg = ModelConfig(input_size=(3, 48, 48), crop_pct=crop_pct, interpolation="bilinear", crop_mode=mode,
                          mean=(0.5, 0.4, 0.3), std=(0.3, 0.2, 0.1))
        ref = reference(img, (48, 48), resize, squash, "bilinear", cfg.mean, cfg.std)
        assert torch.equal(EvalSpec.from_model_config(cfg).transform()(img), ref)


OVERRIDES = dict(input_size=48, crop_pct=0.8, interpolation="bilinear", mean=(0.3, 0.5, 0.7), std=(0.2, 0.3, 0.4))


def _tree(root, images):
    for split in ("train", "val"):
        for i, img in enumerate(images):
            d = root / split / f"c{i}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / "0.png")
    return root


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_imagefolder_validation_applies_the_data_overrides(crop_mode, tmp_path):
    """ImageFolderDataModule's validation samples with input_size 48, crop_pct 0.8, bilinear, mean/std and crop_mode
    overrides (the model's own config, convnext_tiny's, is 224 px, 0.875, bicubic, ImageNet mean/std, center) equal
    the reference at resize floor(48 / 0.8) = 60."""
    images = [noise(70, 90), noise(90, 70, seed=1)]
    dm = ImageFolderDataModule(str(_tree(tmp_path, images)), batch_size=2, num_workers=0, model_name="convnext_tiny",
                               crop_mode=crop_mode, **OVERRIDES)
    dm.setup("validate")
    for i, img in enumerate(images):
        x, y = dm.datasets["val"][(i, 0)]
        assert y == i
        ref = reference(img, (48, 48), 60, crop_mode == "squash", "bilinear", OVERRIDES["mean"], OVERRIDES["std"])
        assert torch.equal(x, ref)


@pytest.mark.ffcv
@pytest.mark.parametrize("crop_mode", ["center", pytest.param("squash", marks=pytest.mark.slow)])
def test_ffcv_validation_applies_the_data_overrides(crop_mode, tmp_path):
    """FFCVDataModule's validation with the same overrides: the centre box of 48 / floor(48 / 0.8) = 0.8 of the
    shorter side (squash: of each side), resized to 48 by area averaging (FFCV's OpenCV INTER_AREA, libffcv's
    resize_crop, within one grey level as the decoder is: tests/data/test_ffcv_resize.py), normalised with the
    overrides' mean/std (to float32 rounding)."""
    from ffcv.libffcv import resize_crop

    from lk_ablate.data import FFCVDataModule
    from lk_ablate.data.ffcv_writer import WriterConfig, write_ffcv

    images = [noise(70, 90), noise(90, 70, seed=1)]
    res = write_ffcv(_tree(tmp_path / "tree", images), tmp_path / "ffcv",
                     cfg=WriterConfig(write_mode="raw", num_workers=1, max_resolution=None))
    dm = FFCVDataModule(res["train"]["path"], res["val"]["path"], batch_size=2, num_workers=1,
                        model_name="convnext_tiny", crop_mode=crop_mode, **OVERRIDES)
    dm.setup("validate")
    (x, y), = list(dm.val_dataloader())
    mean, std = np.array(OVERRIDES["mean"]), np.array(OVERRIDES["std"])
    for sample, label in zip(x, y):
        src = np.asarray(images[int(label)])
        h, w = src.shape[:2]
        if crop_mode == "squash":
            ch, cw = int(0.8 * h), int(0.8 * w)
        else:
            ch = cw = int(0.8 * min(h, w))
        top, left = (h - ch) // 2, (w - cw) // 2
        ref = np.empty((48, 48, 3), np.uint8)
        resize_crop(np.ascontiguousarray(src), top, top + ch, left, left + cw, ref)
        got = (sample.double().permute(1, 2, 0).numpy() * std + mean) * 255
        assert np.abs(got - ref).max() <= 1.0 + 1e-3
        assert np.abs(got - np.rint(got)).max() < 1e-3  # the normalisation is (v / 255 - mean) / std exactly
    assert math.floor(48 / 0.8) == 60 and sorted(y.tolist()) == [0, 1]
    dm.teardown("validate")
