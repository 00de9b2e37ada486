"""Per-stage depthwise kernel sizes: validation (``stage_kernel_sizes``) and the one label (``kernel_label``)."""
from __future__ import annotations

from collections.abc import Sequence

from ..base.errors import ConfigError

KernelSpec = int | Sequence[int]


def stage_kernel_sizes(kernel_size: KernelSpec, num_stages: int = 4, name: str = "kernel_size") -> tuple[int, ...]:
    """Expand an odd int or a per-stage list into one odd kernel size per stage.

    Even sizes have no centre tap (the output would shift by half a pixel), so they are refused.
    """
    if isinstance(kernel_size, bool):
        raise ConfigError(f"{name} must be an odd int or a list of {num_stages} odd ints, got {kernel_size!r}")
    if isinstance(kernel_size, int):
        sizes = (kernel_size,) * num_stages
    elif isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        sizes = tuple(kernel_size)
        if len(sizes) != num_stages:
            raise ConfigError(
                f"{name} as a list needs one size per stage ({num_stages}), got {len(sizes)}: {list(sizes)}; "
                f"give {num_stages} odd ints such as {[7] * num_stages} or a single odd int"
            )
    else:
        raise ConfigError(f"{name} must be an odd int or a list of {num_stages} odd ints, got {kernel_size!r}")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"{name} entries must be ints, got {k!r} in {kernel_size!r}")
        if k < 1:
            raise ConfigError(f"{name} must be >= 1, got {k} in {kernel_size!r}; the study uses odd sizes 3..51")
        if k % 2 == 0:
            raise ConfigError(
                f"{name} must be odd (a centred 'same' convolution needs a centre tap), got {k} in {kernel_size!r}; "
                f"use {k - 1} or {k + 1}"
            )
    return sizes


def kernel_label(kernel_size: KernelSpec | None) -> str:
    """The one kernel-size label (run names, report rows, plot labels): "31" for an int or equal stages,
    "31-29-27-13" for per-stage sizes, "default" for None."""
    if kernel_size is None:
        return "default"
    if isinstance(kernel_size, int):
        return str(kernel_size)
    sizes = [int(k) for k in kernel_size]
    return str(sizes[0]) if len(set(sizes)) == 1 else "-".join(map(str, sizes))
