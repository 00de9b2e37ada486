"""Per-sample train/eval transforms, built from a model's ModelConfig with timm's transform factory.

The train pipeline is the ConvNeXt recipe's: RandomResizedCrop(scale 0.08-1), flip, RandAugment
rand-m9-mstd0.5-inc1, color jitter 0.4, normalise, random erasing 0.25 (pixel mode). As in the official
ConvNeXt code (which calls the same timm factory), timm leaves color jitter off when RandAugment is on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..base.errors import ConfigError
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig


@dataclass
class AugmentConfig:
    """The recipe's per-sample augmentations (data side). ``auto_augment`` None disables RandAugment."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
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
    return patch_posterize(create_transform(cfg.input_size, is_training=True, scale=aug.scale, ratio=aug.ratio,
                                            hflip=aug.hflip, color_jitter=aug.color_jitter,
                                            auto_augment=aug.auto_augment, interpolation=cfg.interpolation,
                                            mean=cfg.mean, std=cfg.std, re_prob=aug.re_prob, re_mode=aug.re_mode,
                                            re_count=aug.re_count))


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class EvalSpec:
    """What one evaluation feeds a model: uint8 geometry (resize, centre crop), then normalisation.

    The two halves are separate so that workers can ship uint8 images (4x smaller than float32) and the
    normalisation can run on the scoring device; ``transform()`` chains them per sample and equals timm's
    eval transform (PIL resize, centre crop, ToTensor, Normalize) bit for bit.

    - ``resize``: the shorter side is resized to it (``squash``: both sides, ignoring the aspect ratio);
      None: no resize, and images larger than ``crop`` are centre-cropped to it (ImageNet-C's released 224 px
      images are then read as they are).
    - ``crop``: centre crop (height, width).
    """

    crop: tuple[int, int] = (224, 224)
    resize: int | None = 256
    squash: bool = False
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if len(self.crop) != 2 or min(self.crop) < 1 or (self.resize is not None and self.resize < 1):
            raise ConfigError(f"eval crop must be two sizes >= 1 and resize >= 1 or None, got crop {self.crop}, "
                              f"resize {self.resize}")
        if len(self.mean) != len(self.std) or not all(v > 0 for v in self.std):
            raise ConfigError(f"eval mean/std must have one value per channel and std > 0, got {self.mean} / "
                              f"{self.std}")

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, resize: bool = True) -> "EvalSpec":
        """The model's own eval config (timm's rule: resize to floor(input / crop_pct), centre crop)."""
        return cls(crop=tuple(cfg.input_size[-2:]), resize=cfg.resize_size if resize else None,
                   squash=cfg.crop_mode == "squash", interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)

    def replace(self, **changes: Any) -> "EvalSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    # -- the uint8 half (runs in data-loading workers) ------------------------------------------------------
    def geometry(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> uint8 CHW tensor, resized and centre-cropped."""
        return _Geometry(self)

    # -- the float half (runs wherever the batch is) ---------------------------------------------------------
    def normalize(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (..., C, H, W) on any device -> ``(x / 255 - mean) / std`` in ``dtype``.

        Computed in float32 with the same operations as ToTensor + Normalize (so bit-identical to them), then
        cast: a bf16 model sees the rounded float32 input.
        """
        if x.dtype != torch.uint8:
            raise TypeError(f"EvalSpec.normalize takes uint8 images, got {x.dtype}")
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        out = x.to(torch.float32).div(255).sub_(mean).div_(std)
        return out if dtype == torch.float32 else out.to(dtype)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> normalised float32 tensor (geometry then normalisation, per sample)."""
        return _Chain(self.geometry(), self.normalize)


class _Geometry:
    """Picklable (for DataLoader workers) resize + centre crop + PIL -> uint8 tensor."""

    def __init__(self, spec: EvalSpec) -> None:
        self.spec = spec
        self.interp = InterpolationMode(spec.interpolation)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        s = self.spec
        if s.resize is not None:
            size: int | list[int] = [s.resize, s.resize] if s.squash else s.resize
            img = TF.resize(img, size, interpolation=self.interp)
            img = TF.center_crop(img, list(s.crop))
        else:
            w, h = img.size
            if h > s.crop[0] or w > s.crop[1]:
                img = TF.center_crop(img, [min(h, s.crop[0]), min(w, s.crop[1])])
        return TF.pil_to_tensor(img)

    def __repr__(self) -> str:
        return f"EvalGeometry({self.spec})"


class _Chain:
    def __init__(self, *fns: Callable) -> None:
        self.fns = fns

    def __call__(self, x: Any) -> Any:
        for fn in self.fns:
            x = fn(x)
        return x


def eval_transform(cfg: ModelConfig | EvalSpec, resize: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """The one eval transform: PIL image -> normalised tensor, from a model's config or an explicit EvalSpec."""
    spec = cfg if isinstance(cfg, EvalSpec) else EvalSpec.from_model_config(cfg, resize=resize)
    return spec.transform()
