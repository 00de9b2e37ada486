"""A timm-style registry of named model variants, each with a default data/eval config and its model facts
(ablation family, default kernel sizes), all read without building a model.

Importing anything from ``lk_ablate.models`` runs ``lk_ablate/models/__init__.py`` first, which imports the
variants' modules (``convnext``, ``replknet``): their ``@register_model`` decorators fill the registry."""
from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..base.errors import ConfigError
from .checkpoints import load_checkpoint
from .kernel_sizes import kernel_label, stage_kernel_sizes
from .model_config import CROP_MODES, IMAGENET_MEAN, IMAGENET_STD, ModelConfig

__all__ = ["CROP_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "ModelConfig", "create_model", "default_kernel_sizes",
           "get_model_config", "kernel_label", "list_models", "model_family", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, ModelConfig] = {}
_FAMILIES: dict[str, str] = {}
_KERNEL_SIZES: dict[str, tuple[int, ...]] = {}


def register_model(cfg: ModelConfig | None = None, *, family: str | None = None,
                   num_stages: int = 4) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a variant function under its own name with its default config.

    ``family``: the variant whose kernels this one ablates (RepLKNet-3B is RepLKNet-31B with 3x3 kernels: one
    ablation family, one line in the report's plots); None: its own. The default kernel sizes are the function's
    ``kernel_size`` default expanded to ``num_stages`` stages, so they are known without building the model.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        param = inspect.signature(fn).parameters.get("kernel_size")
        if param is None or param.default is inspect.Parameter.empty:
            raise RuntimeError(f"model function {name!r} needs a kernel_size argument with a default")
        _MODELS[name] = fn
        _CONFIGS[name] = cfg or ModelConfig()
        _FAMILIES[name] = family or name
        _KERNEL_SIZES[name] = stage_kernel_sizes(param.default, num_stages)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a glob pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_config(name: str) -> ModelConfig:
    """The default data/eval config of a registered variant."""
    _check_name(name)
    return _CONFIGS[name]


def default_kernel_sizes(name: str) -> tuple[int, ...]:
    """A registered variant's own per-stage kernel sizes (``kernel_size`` unset), read without building it."""
    _check_name(name)
    return _KERNEL_SIZES[name]


def model_family(name: str) -> str:
    """The ablation family of a model name: ``replknet_3b`` -> ``replknet_31b``; any other name (another
    registered variant, a timm model) is its own family."""
    return _FAMILIES.get(name, name)


def create_model(name: str, kernel_size: Any = None, num_classes: int | None = None, checkpoint_path: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered variant; ``kernel_size`` is an odd int or a per-stage list (None: the variant's own).

    ``checkpoint_path`` loads an lk_ablate, official or timm checkpoint strictly (see ``load_checkpoint``).
    The built model carries its config as ``model.model_config``.
    """
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
        load_checkpoint(model, checkpoint_path)
    return model


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
