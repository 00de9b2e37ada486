"""The one conversion of Python/numpy/torch values to plain JSON types (results files, analysis results, configs)."""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["to_jsonable"]


def to_jsonable(obj: Any, *, nonfinite_to_none: bool = False) -> Any:
    """Dataclasses, mappings (keys -> str), tuples, tensors, numpy arrays and scalars, paths -> plain JSON types.

    Anything else is a TypeError (never silently stored as something a reader cannot parse). Non-finite floats
    stay (the results schema refuses them, naming the key) unless ``nonfinite_to_none`` (the analyses: a curve
    point that is undefined is stored as null).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, nonfinite_to_none=nonfinite_to_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nonfinite_to_none=nonfinite_to_none) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return None if nonfinite_to_none and not math.isfinite(obj) else float(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors (0-d: a number); no import needed
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        return to_jsonable(obj.tolist(), nonfinite_to_none=nonfinite_to_none)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a results file")
