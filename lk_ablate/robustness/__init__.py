"""Robustness evaluation: ImageNet-A/R/C/O with the authors' masks and metrics, on-the-fly corruptions,
the RobustnessEvaluation callback and the scoring behind ``lk_ablate robustness`` (the results file's schema
lives in :mod:`lk_ablate.base.results`).

Names are imported on first use, so corruption worker processes do not pay for
Lightning's import.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "benchmarks": ("BENCHMARK_NAMES", "C_PRESETS", "build_benchmarks", "class_indices", "class_mask", "load_wnids"),
    "callback": ("RobustnessEvaluation",),
    "corruptions": ("corrupt", "corrupt_images", "evaluate_corruptions", "relative_corruption_errors",
                    "score_corruptions", "stratified_subset"),
    "evaluate": ("evaluate",),
    "metrics": ("ALEXNET_CLEAN_ERROR", "ALEXNET_ERRORS", "ALL_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS",
                "SEVERITIES"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
