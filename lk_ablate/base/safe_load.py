"""The one function that reads checkpoint and weights files: ``torch.load(weights_only=True)`` plus an allow-list.

A pickle can name any importable callable and call it while loading (``__reduce__``), so loading a downloaded
``.pth`` with ``weights_only=False`` runs whatever code its author put there. Every checkpoint lk_ablate reads
goes through :func:`load_torch_file`, which unpickles only tensors, plain containers and the few classes that
real checkpoints hold (listed in :data:`ALLOWED_GLOBALS`). A file that needs anything else is refused with one
line naming the file and the offending global; a user who knows the file opts in with ``--trust_checkpoint true``
(any lk_ablate command that reads checkpoints) or ``LK_ABLATE_TRUST_CHECKPOINTS=1``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

import torch

from .cli_options import TRUST_ENV
from .errors import DataError

__all__ = ["ALLOWED_GLOBALS", "TRUST_ENV", "UnsafeCheckpointError", "load_torch_file", "trust_checkpoints"]

TRUST_HINT = f"if you trust this file, add --trust_checkpoint true to the command (or set {TRUST_ENV}=1)"


class UnsafeCheckpointError(DataError):
    """The file needs a pickle global outside the allow-list: loading it could run arbitrary code."""


def _numpy_globals() -> list[Any]:
    """numpy scalars, dtypes and arrays (timm/official training checkpoints store metrics and args with them).

    Files written under numpy 1 name ``numpy.core.multiarray.*``; numpy 2 moved those to ``numpy._core``: both
    names are allowed for the same objects.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out: list[Any] = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(core.multiarray, name)
        out += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype, pickled by newer numpy
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return out


def _lightning_globals() -> list[Any]:
    """Objects older Lightning checkpoints hold (hyper-parameters as AttributeDict)."""
    out: list[Any] = []
    try:
        from lightning.fabric.utilities.data import AttributeDict

        out += [AttributeDict, (AttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
                (AttributeDict, "lightning.pytorch.utilities.parsing.AttributeDict")]
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    return out


# What real checkpoints need beyond tensors and plain containers (torch allows those by default):
# argparse.Namespace: the `args` of official ConvNeXt / RepLKNet / DINO training checkpoints;
# numpy: metrics and arrays in timm / official checkpoints; Lightning's AttributeDict in older hyper-parameters.
# lk_ablate's own checkpoints need none of them (tests/test_safety.py checks a real one).
ALLOWED_GLOBALS: list[Any] = [argparse.Namespace, *_numpy_globals(), *_lightning_globals()]


def trust_checkpoints() -> bool:
    """True when the user opted in to full unpickling (``--trust_checkpoint true`` sets the variable)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _offending_globals(path: str, error: BaseException) -> list[str]:
    """The globals outside the allow-list (torch lists them for zip files; the error names the first one)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1] for g in ALLOWED_GLOBALS}
    allowed |= {f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS if not isinstance(g, tuple)}
    names: list[str] = []
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
    except Exception:  # legacy (non-zip) format: only the error message says which
        pass
    if not names:
        names = re.findall(r"GLOBAL (\S+?)(?:\s|$)", str(error))[:1]
    return names


def load_torch_file(path: str | os.PathLike, *, mmap: bool = False, what: str = "checkpoint",
                    trust: bool | None = None) -> Any:
    """``torch.load(path)`` on CPU, unpickling only allow-listed objects unless the user trusts the file.

    Raises DataError (one line) for a missing, truncated or non-torch file, UnsafeCheckpointError for a file that
    needs a global outside :data:`ALLOWED_GLOBALS`. ``mmap`` reads the pickle, not the tensors (zip files only;
    older files are read whole). ``trust`` None follows ``LK_ABLATE_TRUST_CHECKPOINTS``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    trusted = trust_checkpoints() if trust is None else trust
    try:
        mmap = mmap and _is_zip(path)
        if trusted:
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trusted and ("Unsupported global" in str(e) or "unsupported GLOBAL" in str(e)):
            names = _offending_globals(path, e)
            raise UnsafeCheckpointError(
                f"refusing to load {what} {path}: it needs {', '.join(names) or 'a pickle global'}, which is not "
                f"on lk_ablate's allow-list and could run code when unpickled; {TRUST_HINT}") from None
        raise DataError(f"cannot read {what} {path}: {_first_line(e)}; is it a complete torch checkpoint "
                        "file?") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise DataError(f"cannot read {what} {path}: {_first_line(e)}; is it a complete torch checkpoint "
                        "file?") from None


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _first_line(e: BaseException) -> str:
    # torch's errors are paragraphs (the weights_only ones advise weights_only=False): keep the first sentence.
    text = str(e).strip()
    if isinstance(e, KeyError) or "Unsupported operand" in text:  # pickle's "invalid load key" is KeyError(101)
        return "not a torch file (unreadable pickle)"
    for marker in ("WeightsUnpickler error:", "Trying to load"):
        if marker in text:
            text = text[text.index(marker) + (len(marker) if marker.endswith(":") else 0):]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.split(". ")[0][:200]
    if len(line) < 8:
        return "not a torch file (unreadable pickle)"
    return line
