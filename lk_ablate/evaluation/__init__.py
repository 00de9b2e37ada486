"""Evaluation layer (below robustness/ and analysis/): the one model loader, its options and the eval protocols.

``load_for_eval`` builds the model(s) to score from an lk_ablate checkpoint, official weights + a registered
name, or a timm name; ``ModelOptions``/``DataOptions``/``BenchmarkOptions`` are the option groups the evaluation
commands share; ``PROTOCOLS`` names what an evaluation feeds a model (``model``: its own eval config; ``paper``:
the paper's and the benchmark authors' scripts). Names are imported on first use (the options need no torch).
"""
from __future__ import annotations

from ..base.lazy import lazy_exports

__all__ = ["PROTOCOLS", "BenchmarkOptions", "DataOptions", "EvalModels", "ModelOptions", "check_protocol",
           "load_for_eval", "weight_sets"]
__getattr__, __dir__ = lazy_exports(__name__, {
    ".loading": ["EvalModels", "load_for_eval", "weight_sets"],
    ".options": ["PROTOCOLS", "BenchmarkOptions", "DataOptions", "ModelOptions", "check_protocol"]}, globals())
