"""lk_ablate: training and robustness ablations for large-kernel ConvNets."""
from __future__ import annotations

import importlib
from typing import Any

from .base.version import __version__

__all__ = ["ModelConfig", "create_model", "get_model_config", "list_models", "__version__"]
_MODELS = ("ModelConfig", "create_model", "get_model_config", "list_models")


def __getattr__(name: str) -> Any:
    # The model API is imported on first use: commands that build no model (``lk_ablate dashboard``, ``--help``)
    # do not pay for torch and timm.
    if name not in _MODELS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".models", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
