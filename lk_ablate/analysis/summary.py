"""Analyses across runs (e.g. the kernel-size ablation): one scalar table and one overlay plot per analysis.

Input: ``runs`` = [(label, analyses)] where ``analyses`` is the "analyses" section of a run's results JSON
({name: result}). ``lk_ablate report`` calls :func:`summary_rows` and :func:`plot_across_runs`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base.figures import new_figure, save_figure
from ..base.results import read_results
from .runner import ANALYSES

Runs = Sequence[tuple[str, Mapping[str, Any]]]


def load_analyses(results_path: str | Path) -> dict[str, Any]:
    """The "analyses" section of a results JSON ({} when the run has none)."""
    return dict(read_results(results_path).get("analyses") or {})


def summary_rows(runs: Runs) -> list[dict[str, Any]]:
    """One row per run: {"run": label, "<analysis>.<metric>": value, ...}."""
    rows = []
    for label, analyses in runs:
        row: dict[str, Any] = {"run": label}
        for name, result in analyses.items():
            if name in ANALYSES:
                row.update(result.get("summary_scalars") or ANALYSES[name].summary(result))
        rows.append(row)
    return rows


def _lines(ax: Any, runs: Runs, name: str, xy: Any, xlabel: str, ylabel: str) -> bool:
    drawn = False
    for label, analyses in runs:
        if name in analyses:
            xs, ys = xy(analyses[name])
            ax.plot(xs, ys, marker="o", ms=3, label=label)
            drawn = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize=7)
    return drawn


def _xy(points: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[Any], list[Any]]:
    return [p[x] for p in points], [p[y] for p in points]


def _pgd_slices(result: Mapping[str, Any]) -> tuple[Any, Any]:
    """(steps, eps) to slice a PGD sweep at: 5 steps (the paper's eps sweep) and eps 0.006 (its step sweep)."""
    steps = sorted({p["steps"] for p in result["points"]})
    eps = sorted({p["eps"] for p in result["points"]})
    return (5 if 5 in steps else steps[-1]), (0.006 if 0.006 in eps else eps[len(eps) // 2])


CURVES = {  # analysis -> (x label, y label, result -> (xs, ys))
    "fgsm": ("eps", "top-1 (%)", lambda r: _xy(r["points"], "eps", "accuracy")),
    "taig": ("eps", "success rate (%)", lambda r: _xy(r["points"], "eps", "success_rate")),
    "lesion": ("fraction of blocks removed", "mean top-1 (%)", lambda r: _xy(r["points"], "fraction", "mean")),
    "frequency": ("noise frequency (x pi)", "accuracy drop", lambda r: _xy(r["bands"], "center", "drop")),
    "kernel_distance": ("normalised depth", "mean kernel attention distance",
                        lambda r: _xy(r["layers"], "depth", "mean")),
    "feature_variance": ("normalised depth", "feature map variance", lambda r: _xy(r["layers"], "depth", "variance")),
    "erf": ("threshold t (fraction of the total contribution)", "high-contribution area (% of the image)",
            lambda r: ([p["threshold"] for p in r["thresholds"] if p["area_ratio"] is not None],
                       [100 * p["area_ratio"] for p in r["thresholds"] if p["area_ratio"] is not None])),
}


def plot_across_runs(runs: Runs, out_dir: str | Path) -> list[Path]:
    """One PNG per analysis that any run has, curves of all runs overlaid; returns the files written."""
    out_dir = Path(out_dir)
    present = [n for n in ANALYSES if any(n in a for _, a in runs)]
    written = []
    for name in present:
        if name == "occlusion":
            modes = sorted({m for _, a in runs if name in a for m in a[name]["curves"]})
            fig, axes = new_figure(len(modes))
            for ax, mode in zip(axes[0], modes):
                _lines(ax, runs, name, lambda r, m=mode: _xy(r["curves"].get(m, []), "level", "accuracy"),
                       f"{mode.replace('_', '-')} drop fraction", "top-1 (%)")
        elif name == "pgd":
            fig, axes = new_figure(2)

            def by_eps(r: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
                s_ref = _pgd_slices(r)[0]
                return _xy([p for p in r["points"] if p["steps"] == s_ref], "eps", "accuracy")

            def by_steps(r: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
                e_ref = _pgd_slices(r)[1]
                return _xy([p for p in r["points"] if p["eps"] == e_ref], "steps", "accuracy")

            _lines(axes[0][0], runs, name, by_eps, "eps (at 5 steps, else the most)", "top-1 (%)")
            _lines(axes[0][1], runs, name, by_steps, "PGD steps (at eps 0.006, else the middle eps)", "top-1 (%)")
        elif name == "shape_bias":  # model-vs-human's matrix plot: shape decisions per shape category
            fig, axes = new_figure(size=(5.0, 4.6))
            ax = axes[0][0]
            for i, (label, a) in enumerate((lab, a) for lab, a in runs if name in a):
                cats = a[name]["categories"]
                names = sorted(cats)
                ax.scatter([cats[c]["shape_bias"] if cats[c]["shape_bias"] is not None else float("nan")
                            for c in names], range(len(names)), s=14, color=f"C{i % 10}", label=label, zorder=3)
                if a[name]["shape_bias"] is not None:
                    ax.axvline(a[name]["shape_bias"], color=f"C{i % 10}", lw=1)
                ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xlim(0, 100)
            ax.set_xlabel("shape decisions (% of shape + texture decisions)")
            ax.legend(fontsize=7)
        elif name in CURVES:
            fig, axes = new_figure()
            xlabel, ylabel, xy = CURVES[name]
            _lines(axes[0][0], runs, name, xy, xlabel, ylabel)
        else:  # imagenet_p, imagenet9: one bar group per run
            fig, axes = new_figure()
            ax = axes[0][0]
            rows = summary_rows([(lab, {name: a[name]}) for lab, a in runs if name in a])
            keys = [k for k in rows[0] if k != "run"]
            width = 0.8 / max(len(rows), 1)
            for i, row in enumerate(rows):
                ax.bar([j + i * width for j in range(len(keys))], [row.get(k, 0.0) for k in keys], width,
                       label=row["run"])
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [k.split(".", 1)[1] for k in keys],
                          rotation=30, ha="right", fontsize=7)
            ax.legend(fontsize=7)
        written.append(save_figure(fig, out_dir / f"analysis_{name}.png"))
    return written
