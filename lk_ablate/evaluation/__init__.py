"""Evaluation layer (below robustness/ and analysis/): the one model loader, its options and the eval protocols.

``load_for_eval`` builds the model(s) to score from an lk_ablate checkpoint, official weights + a registered
name, or a timm name; ``ModelOptions``/``DataOptions`` are the option groups every evaluation command shares;
``PROTOCOLS`` names what an evaluation feeds a model (``model``: its own eval config; ``paper``: the paper's
and the benchmark authors' scripts).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "loading": ("EvalModels", "load_for_eval", "weight_sets"),
    "options": ("PROTOCOLS", "DataOptions", "ModelOptions", "check_protocol"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    # Imported on first use: the command-line option groups (options.py) need no torch, the loader does.
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
