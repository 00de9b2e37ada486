"""One set of CPU kernels on every x86-64 machine with AVX2: what makes the demo's numbers bit-identical across machines.

PyTorch's CPU kernels are chosen at run time from the CPU's instruction set, by three libraries: ATen's own
vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's matrix
products, which also choose by CPU vendor (``MKL_CBWR``). Each choice changes the last bits of a training step,
and three epochs turn those bits into different predictions for single images (docs/reproducibility.md has the
measurements). ``PINNED_ENV`` fixes all three to what every x86-64 CPU with AVX2 runs identically:

- ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``: no AVX-512 kernels where the CPU has them;
- ``MKL_CBWR=COMPATIBLE``: MKL's one code path that Intel documents as giving the same results on Intel and
  non-Intel CPUs (its ``AVX2`` branch exists on Intel CPUs only; other CPUs fall back to ``AUTO``).

The variables are read when the libraries load, so they must be set before ``import torch``: ``pin(argv)`` sets
them and, when torch is already imported, re-executes the command with them set (``os.execv``; only for the
process's own command line, never inside a test or a library call). The console script does not import torch
before a command starts (``lk_ablate demo`` sets them in-process).
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PINNED_ENV", "REEXEC_MARK", "cpu_flags", "is_pinned", "pin", "pinnable"]

PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}
# Set in the re-executed process, so a second pass cannot loop (and the provenance can say how it was pinned).
REEXEC_MARK = "LK_ABLATE_PINNED_REEXEC"
# The module that reads the variables when it loads (ATen, oneDNN and MKL come with torch): once it is imported,
# only a new process gets the pinned kernels.
_LOADERS = ("torch",)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), empty where that file does not exist."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pinnable() -> tuple[bool, str]:
    """(whether this machine can run the pinned kernels, why not). ``ATEN_CPU_CAPABILITY=avx2`` is not checked
    against the CPU by torch: on a CPU without AVX2 it would crash with an illegal instruction."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return False, f"a {machine} CPU runs other kernels (no MKL, no AVX2)"
    missing = {"avx2", "fma"} - cpu_flags()
    if missing:
        return False, f"this CPU lacks {', '.join(sorted(missing))}"
    return True, ""


def is_pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())


def pin(argv: Sequence[str] | None) -> str:
    """Give this process the pinned kernels; returns a one-line status for the user.

    ``argv``: the process's own command line (``sys.orig_argv``-style, interpreter first) to re-execute when the
    libraries are already loaded, or None (a call from Python: never re-execute, say so instead).
    """
    ok, why = pinnable()
    if not ok:
        return f"CPU kernels not pinned: {why}; numbers may differ from an x86-64 run in single images"
    if is_pinned():
        return "CPU kernels pinned: " + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())
    loaded = [m for m in _LOADERS if m in sys.modules]
    if loaded and (argv is None or os.environ.get(REEXEC_MARK)):
        return (f"CPU kernels NOT pinned: {', '.join(loaded)} was imported before the demo started (run it as its "
                f"own command, `lk_ablate demo`); numbers may differ from the README's in single images")
    os.environ.update(PINNED_ENV)
    if not loaded:
        return "CPU kernels pinned: " + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())
    os.environ[REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], list(argv))
    raise AssertionError("unreachable")  # pragma: no cover
