"""A timm-style registry of named model variants, each with a default data/eval config."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..base.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, ModelConfig] = {}


def register_model(cfg: ModelConfig | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a variant function under its own name with its default config."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        _CONFIGS[name] = cfg or ModelConfig()
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a glob pattern, sorted."""
    import fnmatch

    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_config(name: str) -> ModelConfig:
    """The default data/eval config of a registered variant."""
    _ensure_loaded()
    _check_name(name)
    return _CONFIGS[name]


def create_model(name: str, kernel_size: Any = None, num_classes: int | None = None, checkpoint_path: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered variant; ``kernel_size`` is an odd int or a per-stage list (None: the variant's own).

    ``checkpoint_path`` loads an lk_ablate, official or timm checkpoint strictly (see ``load_checkpoint``).
    The built model carries its config as ``model.model_config``.
    """
    _ensure_loaded()
    _check_name(name)
    if kernel_size is not None:
        kwargs["kernel_size"] = kernel_size
    cfg = _CONFIGS[name]
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
        cfg = cfg.replace(num_classes=num_classes)
    model = _MODELS[name](**kwargs)
    model.model_config = cfg
    model.model_name = name
    if checkpoint_path:
        from .checkpoints import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register_model decorators.
    from . import convnext  # noqa: F401
    try:
        from . import replknet  # noqa: F401
    except ImportError as e:  # pragma: no cover - only while the module is missing
        if "replknet" not in str(e):
            raise
