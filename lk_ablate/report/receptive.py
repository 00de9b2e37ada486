"""The report's effective-receptive-field and shape-bias sections (docs/analyses.md, ``erf`` and ``shape_bias``).

- ERF heat maps of every run in one figure, ordered by kernel size, on one colour scale: each run's averaged map
  (the ``.npz`` beside its results file) rescaled as its analysis did (``log10(A + 1) / max``, so [0, 1]);
- the high-contribution area ratio per threshold as a table (mean over seeds) and against kernel size;
- shape bias (and shape / texture accuracy) as a table and against kernel size.

Entries scored under different protocols are kept apart (``@paper`` keys, a figure per protocol).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..analysis.common import read_analysis_arrays
from ..analysis.erf import draw_map
from ..base.figures import new_figure, save_figure
from ..base.metric_keys import SHAPE_BIAS_SCALARS
from .runs import ANALYSIS_PREFIX, Row, Run, kernel_x, tagged

__all__ = ["erf_columns", "has_own_section", "plot_receptive", "receptive_sections", "shape_columns"]

_AREA = re.compile(r"^analysis/erf(@[^.]+)?\.area_t(.+)$")
SHAPE_METRICS = SHAPE_BIAS_SCALARS  # base/metric_keys.py


def has_own_section(key: str) -> bool:
    """An analysis scalar these sections tabulate and plot themselves (left out of the generic analysis table and
    its one-plot-per-scalar; report.csv keeps it)."""
    head = key[len(ANALYSIS_PREFIX):].split(".", 1)[0].partition("@")[0] if key.startswith(ANALYSIS_PREFIX) else ""
    return head in ("erf", "shape_bias")


def _protocol(key: str) -> str:
    head = key[len(ANALYSIS_PREFIX):].split(".", 1)[0]
    return head.partition("@")[2] or "model"


def erf_columns(rows: Sequence[Row]) -> dict[str, list[tuple[str, str, str]]]:
    """protocol -> [(threshold label, area key, side key)] of the ERF scalars the rows hold, thresholds ascending."""
    found: dict[str, dict[str, tuple[str, str, str]]] = {}
    for row in rows:
        for k in row.stats:
            m = _AREA.match(k)
            if m:
                found.setdefault(_protocol(k), {})[m.group(2)] = (m.group(2), k, k.replace(".area_t", ".side_t"))
    return {p: sorted(v.values(), key=lambda c: float(c[0])) for p, v in found.items()}


def shape_columns(rows: Sequence[Row]) -> dict[str, list[str]]:
    """protocol -> the shape-bias scalar keys the rows hold (shape bias, shape accuracy, texture accuracy)."""
    out: dict[str, list[str]] = {}
    for p in ("model", "paper"):
        name = tagged("shape_bias", p)
        keys = [f"{ANALYSIS_PREFIX}{name}.{m}" for m in SHAPE_METRICS]
        if any(k in row.stats for row in rows for k in keys):
            out[p] = keys
    return out


def _suffix(protocol: str) -> str:
    return "" if protocol == "model" else f"_{protocol}"


def _title(protocol: str) -> str:
    return "" if protocol == "model" else f" [protocol {protocol}]"


def _order(r: Run) -> tuple:
    x = kernel_x(r.kernel_sizes)
    return (x if math.isfinite(x) else math.inf, r.family, r.model, -1 if r.seed is None else r.seed, str(r.path))


def plot_erf_maps(runs: Sequence[Run], out: Path) -> tuple[dict[str, Path], list[str]]:
    """One figure per protocol: the ERF heat map of every run with an ``erf`` entry, ordered by kernel size, one
    colour scale; and notes on runs whose map file is missing."""
    written: dict[str, Path] = {}
    notes: list[str] = []
    panels: dict[str, list[tuple[Run, Any, Mapping[str, Any]]]] = {}
    for r in sorted(runs, key=_order):
        entry = r.analyses.get("erf")
        if not isinstance(entry, Mapping):
            continue
        arrays = read_analysis_arrays(r.path, entry)
        if arrays is None or "erf" not in arrays:
            notes.append(f"{r.path}: its erf entry's map ({entry.get('arrays_file') or 'no arrays_file'}) is not "
                         "beside it; the heat map is left out")
            continue
        panels.setdefault(entry.get("protocol") or "model", []).append((r, arrays["erf"], entry))
    for p, items in panels.items():
        ncols = min(4, len(items))
        nrows = math.ceil(len(items) / ncols)
        fig, axes = new_figure(ncols, nrows, size=(2.6, 2.7))
        im = None
        for i, (r, erf, entry) in enumerate(items):
            cfg = entry.get("config") or {}
            im = draw_map(axes[i // ncols][i % ncols], erf, cfg.get("rescale", "log"),
                          f"{r.label}\n{entry.get('images')} images, {erf.shape[0]} px")
        for j in range(len(items), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        fig.suptitle(f"Effective receptive field, ordered by kernel size{_title(p)}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.86, 0.94))
        cax = fig.add_axes((0.88, 0.15, 0.015, 0.7))
        fig.colorbar(im, cax=cax).set_label("log10(contribution + 1) / max", fontsize=8)
        written[tagged("erf_maps", p)] = save_figure(fig, out / f"erf_maps{_suffix(p)}.png", tight=False)
    return written, notes


def _lines_vs_kernel(ax: Any, rows: Sequence[Row], series: Sequence[tuple[str, str]]) -> bool:
    """One line per (family, series); series = [(key, label)]. x: the largest stage kernel."""
    families = list(dict.fromkeys(r.family for r in rows))
    styles = ("-", "--", ":", "-.")
    drawn = False
    ticks: set[float] = set()
    for fi, fam in enumerate(families):
        for si, (key, label) in enumerate(series):
            pts = sorted((kernel_x(r.kernel_sizes), r.stats[key]) for r in rows
                         if r.family == fam and key in r.stats and math.isfinite(kernel_x(r.kernel_sizes)))
            if not pts:
                continue
            errs = [s.error_bar or 0.0 for _, s in pts]
            ticks.update(x for x, _ in pts)
            ax.errorbar([x for x, _ in pts], [s.mean for _, s in pts], yerr=errs, marker="o", ms=4, capsize=3,
                        color=f"C{si % 10}", ls=styles[fi % len(styles)],
                        label=label if len(families) == 1 else f"{fam} {label}")
            drawn = True
    if drawn:
        ax.set_xticks(sorted(ticks), [f"{x:g}" for x in sorted(ticks)])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_xlabel("kernel size (largest stage)")
    return drawn


def plot_receptive(runs: Sequence[Run], rows: Sequence[Row], out: Path) -> tuple[dict[str, Path], list[str]]:
    """The heat-map figures, the area ratio against kernel size and shape bias against kernel size; notes."""
    written, notes = plot_erf_maps(runs, out)
    for p, cols in erf_columns(rows).items():
        fig, axes = new_figure(size=(5.4, 3.8))
        ax = axes[0][0]
        if _lines_vs_kernel(ax, rows, [(area, f"t={float(t) / 100:g}") for t, area, _ in cols]):
            ax.set_yscale("log")
            ax.set_ylabel("high-contribution area (% of the image)")
            ax.set_title(f"ERF area ratio vs kernel size{_title(p)}", fontsize=10)
            written[tagged("erf_area", p)] = save_figure(fig, out / f"erf_area_ratio{_suffix(p)}.png")
    for p, keys in shape_columns(rows).items():
        fig, axes = new_figure(2, size=(4.6, 3.6))
        ok = _lines_vs_kernel(axes[0][0], rows, [(keys[0], "shape bias")])
        _lines_vs_kernel(axes[0][1], rows, [(keys[1], "shape accuracy"), (keys[2], "texture accuracy")])
        if ok:
            axes[0][0].set_ylabel("shape bias (%)")
            axes[0][1].set_ylabel("% of the cue-conflict stimuli")
            fig.suptitle(f"Shape bias vs kernel size{_title(p)}", fontsize=10)
            written[tagged("shape_bias_kernel", p)] = save_figure(fig, out / f"shape_bias{_suffix(p)}.png")
    return written, notes


def _cell(stat: Any, d: int) -> str:
    if stat is None:
        return "–"
    text = f"{stat.mean:.{d}f}"
    return text if stat.n < 2 else f"{text} ± {stat.sd:.{d}f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in body)]


def receptive_sections(rows: Sequence[Row], plots: Mapping[str, Path]) -> list[str]:
    """The Markdown of the two sections (empty when no run has either analysis)."""
    lines: list[str] = []
    for p, cols in erf_columns(rows).items():
        have = [r for r in rows if any(c[1] in r.stats for c in cols)]
        lines += [f"## Effective receptive field{_title(p)}", ""]
        if tagged("erf_maps", p) in plots:
            lines += [f"![ERF heat maps]({plots[tagged('erf_maps', p)].name})", ""]
        lines += _table(["model", "kernel", "seeds", *(f"t={float(t) / 100:g}: side px / area %" for t, _, _ in cols)],
                        [[r.model, r.kernel, r.seeds,
                          *(f"{_cell(r.stats.get(side), 0)} / {_cell(r.stats.get(area), 2)}" for _, area, side in cols)]
                         for r in have])
        lines += ["", "The smallest centred square holding more than t of the total contribution of the rescaled map "
                  "(RepLKNet's high-contribution area ratio): its side in pixels and its area in % of the image; "
                  "mean ± sd over seeds where there are several; `–`: no square reaches t.", ""]
        if tagged("erf_area", p) in plots:
            lines += [f"![ERF area ratio vs kernel size]({plots[tagged('erf_area', p)].name})", ""]
        if tagged("analysis:analysis_erf", p) in plots:  # summary.plot_across_runs: area against t, per run
            lines += [f"![ERF area ratio vs threshold]({plots[tagged('analysis:analysis_erf', p)].name})", ""]
    for p, keys in shape_columns(rows).items():
        have = [r for r in rows if any(k in r.stats for k in keys)]
        lines += [f"## Shape bias{_title(p)}", ""]
        lines += _table(["model", "kernel", "seeds", "shape bias %", "shape accuracy %", "texture accuracy %"],
                        [[r.model, r.kernel, r.seeds, *(_cell(r.stats.get(k), 2) for k in keys)] for r in have])
        lines += ["", "Cue-conflict stimuli (Geirhos et al. 2019), model-vs-human's 16-category decision: shape bias "
                  "= shape / (shape + texture) decisions on the images whose shape and texture differ; the "
                  "accuracies are those decisions as % of all stimuli.", ""]
        if tagged("shape_bias_kernel", p) in plots:
            lines += [f"![shape bias vs kernel size]({plots[tagged('shape_bias_kernel', p)].name})", ""]
        if tagged("analysis:analysis_shape_bias", p) in plots:  # per shape category, per run
            lines += [f"![shape bias per category]({plots[tagged('analysis:analysis_shape_bias', p)].name})", ""]
    return lines
