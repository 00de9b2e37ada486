"""``torch.compile`` for lk_ablate models, in place: parameters, module names and state-dict keys never change.

``torch.compile(model)`` returns a wrapper whose state dict has ``_orig_mod.`` in every key, so checkpoints would
depend on the compile setting. ``compile_model`` compiles the module's own call instead (``nn.Module.compile``),
so a checkpoint saved with ``compile: true`` loads into an eager model and back. A deep copy or a pickle of a
compiled module is an eager module (PyTorch drops the compiled call): compile copies (e.g. an EMA) themselves.

Every depthwise implementation, ``auto`` included, traces without graph breaks: ``LargeKernelDWConv`` resolves
its plan through ``layers.resolve_plan``, which dynamo evaluates once while tracing (a constant in the graph).
Shapes are compiled static (``dynamic=False``): the plan depends on the batch and map size, and a new shape
(e.g. a smaller last batch) is one more compile rather than a symbolic graph.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..base.errors import ConfigError

__all__ = ["COMPILE_MODES", "check_compile_options", "compile_model", "is_compiled"]

# torch.compile's modes; None (= "default") is inductor's default.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_options(mode: str | None, backend: str = "inductor") -> None:
    """One clear error for a mode or backend torch.compile does not know (before any model is built)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"model.compile_mode must be one of {', '.join(COMPILE_MODES)} (or null), got {mode!r}")
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"model.compile_backend {backend!r} is not a torch.compile backend; choose one of "
                          f"{', '.join(sorted(torch._dynamo.list_backends()))}")
    if mode not in (None, "default") and backend != "inductor":
        raise ConfigError(f"model.compile_mode {mode!r} is an inductor option; with compile_backend {backend!r} "
                          "leave compile_mode null")


def compile_model(model: nn.Module, mode: str | None = None, backend: str = "inductor") -> nn.Module:
    """Compile ``model``'s forward in place and return it (same object, same parameters and state-dict keys).

    ``mode``: torch.compile's mode (None = default, ``reduce-overhead``, ``max-autotune``, ...); ``backend``:
    ``inductor`` (default), or e.g. ``aot_eager`` to bisect a compiler problem. Compilation happens on the first
    call (and again for each new input shape or train/eval switch).
    """
    check_compile_options(mode, backend)
    options: dict[str, Any] = {"backend": backend, "dynamic": False}
    if mode not in (None, "default"):
        options["mode"] = mode
    model.compile(**options)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``compile_model`` (or ``nn.Module.compile``) compiled this module's call."""
    return getattr(model, "_compiled_call_impl", None) is not None
