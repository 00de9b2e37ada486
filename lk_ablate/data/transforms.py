"""Per-sample train/eval transforms, built from a model's ModelConfig with timm's transform factory.

The train pipeline is the ConvNeXt recipe's: RandomResizedCrop(scale 0.08-1), flip, RandAugment
rand-m9-mstd0.5-inc1, color jitter 0.4, normalise, random erasing 0.25 (pixel mode). As in the official
ConvNeXt code (which calls the same timm factory), timm leaves color jitter off when RandAugment is on.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import ImageOps
from timm.data import create_transform

from ..models.registry import ModelConfig


@dataclass
class AugmentConfig:
    """The recipe's per-sample augmentations (data side). ``auto_augment`` None disables RandAugment."""

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1


def posterize(img, bits_to_keep: int, **_):
    """Posterize that returns a black image at 0 bits, as Pillow < 11 did.

    timm's PosterizeIncreasing reaches 0 bits at magnitude 10 (rand-m9-mstd0.5 draws it for about 0.15% of
    images); Pillow >= 11 raises there, which would crash a training epoch.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def patch_posterize(transform):
    """Give every timm RandAugment Posterize op of ``transform`` the 0-bit-safe ``posterize``."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = posterize
    return transform


def train_transform(cfg: ModelConfig, aug: AugmentConfig):
    return patch_posterize(create_transform(cfg.input_size, is_training=True, scale=aug.scale, hflip=aug.hflip,
                            color_jitter=aug.color_jitter, auto_augment=aug.auto_augment,
                            interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, re_prob=aug.re_prob,
                            re_mode=aug.re_mode, re_count=aug.re_count))


def eval_transform(cfg: ModelConfig):
    """Resize the shorter side (``crop_mode`` "squash": the whole image) to input/crop_pct, centre-crop the input
    size, normalise."""
    return create_transform(cfg.input_size, is_training=False, interpolation=cfg.interpolation, mean=cfg.mean,
                            std=cfg.std, crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode)
