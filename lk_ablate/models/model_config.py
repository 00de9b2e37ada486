"""``ModelConfig``: how a variant expects its inputs (the default data/eval config each registry entry carries)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..base.errors import ConfigError
from ..base.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CROP_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "ModelConfig"]

CROP_MODES = ("center", "squash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """How a variant expects its inputs: data pipelines and evaluation read this, never constants.

    Eval transform (timm convention): resize the shorter side to ``floor(input_size / crop_pct)``,
    then centre-crop ``input_size`` (``crop_mode`` "center"); or, with ``crop_mode`` "squash", resize the whole
    image to a square of that side, ignoring its aspect ratio, then centre-crop (timm's "squash"; with crop_pct
    1.0 the official RepLKNet evaluation at >= 384 px, which warps without cropping).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    num_classes: int = 1000
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        if not self.crop_pct > 0.0:
            raise ConfigError(f"crop_pct must be > 0, got {self.crop_pct}")

    @property
    def image_size(self) -> int:
        return self.input_size[-1]

    @property
    def resize_size(self) -> int:
        # timm's rule (transforms_imagenet_eval): floor, not round; 320 / 0.875 -> 365.
        return int(math.floor(self.image_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
