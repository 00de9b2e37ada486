"""What produced a result: the provenance every results JSON, checkpoint and W&B run config carries.

``collect(...)`` returns one plain dict (schema below). The parts that only the caller knows (device, precision,
the depthwise-conv implementation, eval transforms, the resolved config, the data) are passed in; the rest
(code version and git commit, library versions, threads, determinism settings) is read here. Nothing here
imports torch at module level: the bottom layer stays light, and ``collect`` runs in processes that have
imported torch already.

Schema (``provenance.schema`` 1)::

    {"schema": 1,
     "lk_ablate": {"version": str, "commit": str | null, "dirty": bool | null},   # null: not a git checkout
     "python": str, "packages": {name: version | null},
     "device": {"type": "cpu" | "cuda" | ..., "name": str, "machine": str, "cpu": str, "cpu_capability": str,
                "cuda": str | null, "cudnn": int | null},
     "precision": str | null, "threads": int,
     "determinism": {"deterministic_algorithms": bool, "cudnn_deterministic": bool, "cudnn_benchmark": bool,
                     "env": {NAME: value for the kernel-selection variables that are set}},
     "dwconv": {...} | null, "eval_transform": {benchmark: {...}} | null, "config_sha256": str | null,
     "data": {benchmark: fingerprint} | null}

A data **fingerprint** (``Fingerprint``) is ``{"num_images", "sha256", "num_classes"}`` (plus ``parts``, the same
per folder, for benchmarks read from several folders): the SHA-256 of ``"<relative path>\\t<size in bytes>\\n"``
for every image in the loader's order (classes sorted, files sorted within each class: for ``<class>/<file>``
layouts the sorted relative paths). It is built from the listing the loader makes anyway and the sizes of the
files it opens anyway, never from an extra pass over the files. Per-image results (``per_image`` in results
files) are stored in this order, so two runs with one fingerprint score the same images in the same order.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .jsonable import to_jsonable
from .version import __version__

__all__ = ["COMPARABLE_FIELDS", "KERNEL_ENV", "PACKAGES", "Fingerprint", "array_fingerprint", "code_version",
           "collect", "config_sha256", "cpu_name", "describe", "device_info", "determinism_info", "fingerprint",
           "package_versions", "provenance_differences"]

SCHEMA = 1
# Distributions whose versions change numbers: the framework stack, the image decoders and the corruptions.
PACKAGES = ("torch", "torchvision", "timm", "lightning", "ffcv", "numpy", "pillow", "torchmetrics",
            "imagecorruptions-imaug", "opencv-python")
# Environment variables that choose CPU/GPU kernels (and so the last bits of every number), recorded when set.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_NUM_THREADS",
              "OMP_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE", "OPENCV_CPU_DISABLE",
              "NUMBA_CPU_NAME", "CUBLAS_WORKSPACE_CONFIG", "LK_ABLATE_DWCONV_IMPL", "LK_ABLATE_DWCONV_RULES")
# Provenance fields whose difference between two runs does not make their numbers incomparable (the report lists
# them under Notes); a different data fingerprint or class count does (the report's row rule, report/runs.py).
COMPARABLE_FIELDS = ("lk_ablate", "python", "packages", "device", "precision", "threads", "determinism", "dwconv")
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- code ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """lk_ablate's version, and the git commit of the checkout it runs from with a dirty flag (tracked files
    changed); commit and dirty are null when it is not run from a git checkout (an installed wheel)."""
    out: dict[str, Any] = {"version": __version__, "commit": None, "dirty": None}
    if not (REPO_ROOT / ".git").exists():
        return out
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return out
    out.update(commit=commit or None, dirty=bool(status.strip()))
    return out


@functools.lru_cache(maxsize=8)
def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (importlib.metadata; nothing is imported), null for a distribution not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- machine ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: Any = None) -> dict[str, Any]:
    """The device a computation ran on: type and name (GPU name or CPU model), the CPU, the CPU kernels' ISA
    (``torch.backends.cpu.get_cpu_capability``), CUDA and cuDNN versions of the torch build. ``device`` None
    (the caller does not say): type null."""
    import torch

    dev = torch.device(device) if device is not None else None
    info: dict[str, Any] = {"type": dev.type if dev is not None else None, "name": cpu_name(), "machine": platform.machine(), "cpu": cpu_name(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(dev)
    return info


def determinism_info() -> dict[str, Any]:
    """Torch's determinism switches and the kernel-selection environment variables that are set."""
    import torch

    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}}


# --- config and data ----------------------------------------------------------------------------------------
def config_sha256(config: Any) -> str:
    """SHA-256 of a resolved config as canonical JSON (sorted keys), so equal configs hash equally; dataclasses,
    paths, tensors and numpy values as ``to_jsonable`` writes them, anything else as its ``str``."""
    def plain(obj: Any) -> Any:
        try:
            return to_jsonable(obj)
        except TypeError:
            return str(obj)

    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":"), default=plain).encode()).hexdigest()


class Fingerprint:
    """A data fingerprint built incrementally, image by image, in the loader's order (see the module doc)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.num_images = 0

    def add(self, relative_path: str, size: int) -> None:
        self._hash.update(f"{relative_path}\t{int(size)}\n".encode())
        self.num_images += 1

    def result(self, num_classes: int | None = None) -> dict[str, Any]:
        return {"num_images": self.num_images, "sha256": self._hash.hexdigest(), "num_classes": num_classes}


def fingerprint(entries: Iterable[tuple[str, int]], num_classes: int | None = None,
                parts: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The fingerprint of (relative path, size) entries, in the given (the loader's) order."""
    fp = Fingerprint()
    for rel, size in entries:
        fp.add(rel, size)
    out = fp.result(num_classes)
    if parts:
        out["parts"] = {k: dict(v) for k, v in parts.items()}
    return out


def array_fingerprint(images: Any, labels: Any, num_classes: int | None = None) -> dict[str, Any]:
    """The fingerprint of an in-memory image set (the demo's Fashion-MNIST): SHA-256 of the labels' and the
    images' bytes (shape and dtype included), ``num_images`` its length."""
    import numpy as np

    h = hashlib.sha256()
    for a in (np.ascontiguousarray(labels), np.ascontiguousarray(images)):
        h.update(f"{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return {"num_images": int(len(labels)), "sha256": h.hexdigest(), "num_classes": num_classes}


# --- the record ---------------------------------------------------------------------------------------------
def collect(*, device: Any = None, precision: str | None = None, dwconv: Mapping[str, Any] | None = None,
            eval_transform: Mapping[str, Any] | None = None, config: Any = None,
            data: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The provenance record (module doc); ``config`` is hashed (``config_sha256``), not stored."""
    import torch

    return to_jsonable({
        "schema": SCHEMA,
        "lk_ablate": code_version(),
        "python": platform.python_version(),
        "packages": dict(package_versions()),
        "device": device_info(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "determinism": determinism_info(),
        "dwconv": dict(dwconv) if dwconv is not None else None,
        "eval_transform": dict(eval_transform) if eval_transform is not None else None,
        "config_sha256": config_sha256(config) if config is not None else None,
        "data": {k: dict(v) for k, v in data.items()} if data is not None else None,
    })


def describe(prov: Mapping[str, Any] | None) -> str:
    """One line: commit (dirty), torch version, device, precision, threads; "no provenance" for old files."""
    if not prov:
        return "no provenance"
    code = prov.get("lk_ablate") or {}
    commit = code.get("commit")
    commit = (commit[:10] + ("-dirty" if code.get("dirty") else "")) if commit else f"v{code.get('version')} (no git)"
    dev = prov.get("device") or {}
    torch_v = (prov.get("packages") or {}).get("torch")
    threads = prov.get("threads")
    return (f"lk_ablate {commit}, torch {torch_v}, {dev.get('type')} {dev.get('name')} "
            f"({dev.get('cpu_capability')}), {prov.get('precision')}, {threads} thread{'' if threads == 1 else 's'}")


def provenance_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                           fields: Iterable[str] = COMPARABLE_FIELDS) -> list[str]:
    """Dotted names of the leaves in ``fields`` where two provenance records differ ("" lists: none)."""
    if not a or not b:
        return []
    out: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{where}.{k}" if where else str(k))
        elif x != y:
            out.append(where)

    for f in fields:
        walk(a.get(f), b.get(f), f)
    return out
