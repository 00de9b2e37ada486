"""The one figure helper (analyses' plots, the report's plots): matplotlib without pyplot or a GUI backend.

matplotlib is imported inside the functions, so importing this module (and every layer above) does not pay for it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .files import atomic_write

__all__ = ["new_figure", "save_figure"]


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)) -> tuple[Any, Any]:
    """A matplotlib Figure (``size`` per panel, 120 dpi) and its ``nrows`` x ``ncols`` array of axes."""
    from matplotlib.figure import Figure  # lazy: only a plot pays for matplotlib

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=120)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: str | os.PathLike, tight: bool = True) -> Path:
    """Save ``fig`` (format from the suffix, png without one) through the one atomic writer, creating the folder;
    ``tight``: lay it out first (``tight_layout``). Returns the path."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower() or None))
    return path
