"""Evaluation layer (below robustness/ and analysis/): the one model loader, its options and the eval protocols.

``load_for_eval`` builds the model(s) to score from an lk_ablate checkpoint, official weights + a registered
name, or a timm name; ``ModelOptions``/``DataOptions`` are the option groups every evaluation command shares;
``PROTOCOLS`` names what an evaluation feeds a model (``model``: its own eval config; ``paper``: the paper's
and the benchmark authors' scripts).
"""
from __future__ import annotations

from .loading import EvalModels, load_for_eval, weight_sets
from .options import PROTOCOLS, DataOptions, ModelOptions, check_protocol

__all__ = ["PROTOCOLS", "DataOptions", "EvalModels", "ModelOptions", "check_protocol", "load_for_eval",
           "weight_sets"]
