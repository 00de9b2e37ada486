"""The report's files: ``report.md`` (the Table-7-shaped Markdown), ``report.csv`` and ``runs.csv``, and the PNGs
(each metric against kernel size, one line per ablation family; per-corruption grids; the analyses' curves).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..analysis.summary import plot_across_runs
from ..base.figures import new_figure, save_figure
from ..base.files import atomic_write_text
from .labels import bench_label, metric_label
from .receptive import has_own_section, receptive_sections
from .runs import (ANALYSIS_PREFIX, Row, Run, Stat, analysis_columns, corruption_benchmarks, kernel_x,
                   provenance_summary, table_columns, tagged)
from .stats import Paired

__all__ = ["bench_label", "column_label", "plot_analyses", "plot_metrics", "write_csv", "write_markdown",
           "write_runs_csv"]


# --- labels -----------------------------------------------------------------------------------------------
def column_label(key: str) -> str:
    """``imagenet_a/top1`` -> ``IN-A top-1``; analysis scalars keep their own names."""
    if key.startswith(ANALYSIS_PREFIX):
        return key[len(ANALYSIS_PREFIX):]
    bench, _, metric = key.partition("/")
    return metric_label(bench, metric)


# --- writing ----------------------------------------------------------------------------------------------
def _decimals(stats: Iterable[Stat]) -> int:
    values = [abs(s.mean) for s in stats]
    return 2 if not values or max(values) >= 1 else 4


def _cell(stat: Stat | None, d: int) -> str:
    """``mean ± sd [lo, hi]`` over seeds (``†``: the interval was clipped to the metric's range), a single run's
    ``value [lo, hi]`` (Wilson), or the bare value; every number with ``d`` decimals (one count per column)."""
    if stat is None:
        return "–"
    text = f"{stat.mean:.{d}f}"
    if stat.n >= 2:
        lo, hi = stat.ci95
        return f"{text} ± {stat.sd:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]" + ("†" if stat.clipped else "")
    if stat.ci95 is not None:
        lo, hi = stat.ci95
        return f"{text} [{lo:.{d}f}, {hi:.{d}f}]"
    return text


def _kernel(row: Row) -> str:
    return row.kernel + (f" ({row.group})" if row.group else "")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def write_markdown(path: Path, rows: Sequence[Row], runs: Sequence[Run], notes: Sequence[str], plots: Mapping[str, Path],
                   weights: str, sources: Sequence[str],
                   pairs: Sequence[tuple[Row, Row, str, Paired]] = (), bootstrap_samples: int = 10_000) -> Path:
    cols = table_columns(rows)
    lines = ["# Kernel-size ablation report", "",
             f"{len(runs)} run(s) from {', '.join(f'`{s}`' for s in sources)}; weights: {weights} "
             f"(auto = EMA where it was scored, else raw). Generated {_dt.datetime.now().isoformat(timespec='seconds')} "
             "by `lk_ablate report`.", ""]
    if cols:
        dec = {c: _decimals(r.stats[c] for r in rows if c in r.stats) for c in cols}
        lines += ["## Benchmarks by kernel size", ""]
        lines += _md_table(["model", "kernel", "seeds", *map(column_label, cols)],
                           [[r.model, _kernel(r), r.seeds, *(_cell(r.stats.get(c), dec[c]) for c in cols)]
                            for r in rows])
        lines += ["", "Accuracies, mCE and AUPR in %. A cell is `mean ± sd [95% interval]` over seeds (sample sd; "
                  "interval mean ± t(0.975, n-1)·sd/√n, Student's t from scipy.stats; `†`: the interval was clipped "
                  "to the metric's range, [0, 100] for accuracies and AUPR, ≥ 0 for mCE), or for a single run "
                  "`value [95% interval]`, the Wilson score interval of an accuracy over the benchmark's n images "
                  "(a mean over corruption cells uses the effective n = p(1-p)/Var, Var = Σ p(1-p)/n / k²). mCE, "
                  "relative mCE and AUPR of a single run carry no interval. `–`: not scored.", ""]
        for c in cols:
            if c in plots:
                lines.append(f"![{column_label(c)}]({plots[c].name})")
        lines.append("")
    for bench, corruptions in corruption_benchmarks(rows).items():
        keys = [f"{bench}/corruption_top1/{c}" for c in corruptions]
        d = _decimals(r.stats[k] for r in rows for k in keys if k in r.stats)
        lines += [f"## {bench_label(bench)}: top-1 per corruption (mean over severities, then seeds)", ""]
        lines += _md_table(["model", "kernel", *corruptions],
                           [[r.model, _kernel(r), *(f"{r.stats[k].mean:.{d}f}" if k in r.stats else "–" for k in keys)]
                            for r in rows if any(k in r.stats for k in keys)])
        lines.append("")
        if f"corruptions:{bench}" in plots:
            lines += [f"![{bench} per corruption]({plots[f'corruptions:{bench}'].name})", ""]
    acols = [c for c in analysis_columns(rows) if not has_own_section(c)]  # ERF, shape bias: own sections
    if acols:
        dec = {c: _decimals(r.stats[c] for r in rows if c in r.stats) for c in acols}
        lines += ["## Analyses (scalar summaries)", ""]
        lines += _md_table(["model", "kernel", "seeds", *map(column_label, acols)],
                           [[r.model, _kernel(r), r.seeds, *(_cell(r.stats.get(c), dec[c]) for c in acols)]
                            for r in rows])
        lines += ["", "Each analysis's own summary numbers (see docs/analyses.md); mean ± sd [95% t-interval] "
                  "over seeds where there are several.", ""]
        for key, p in plots.items():
            if key.startswith(ANALYSIS_PREFIX) and key in acols:
                lines.append(f"![{column_label(key)}]({p.name})")
            elif key.startswith("analysis:"):
                lines.append(f"![{p.stem.removeprefix('analysis_')} across runs]({p.name})")
        lines.append("")
    lines += receptive_sections(rows, plots)
    if pairs:
        lines += ["## Paired comparisons (the same images)", ""]
        lines += _md_table(["benchmark", "A", "B", "images", "top-1 A", "top-1 B", "B − A", "95% interval (paired "
                            "bootstrap)", "A only right / B only right", "McNemar p"],
                           [[bench_label(bench), a.label, b.label, f"{p.n:,}", f"{p.a:.2f}", f"{p.b:.2f}",
                             f"{p.diff:+.2f}", f"[{p.ci95[0]:+.2f}, {p.ci95[1]:+.2f}]",
                             "–" if p.discordant is None else f"{p.discordant[0]:,} / {p.discordant[1]:,}",
                             "–" if p.p_value is None else _p_value(p.p_value)]
                            for a, b, bench, p in pairs])
        lines += ["", "Two models scored on the same images (one data fingerprint), compared image by image: the "
                  "difference of their top-1 (mean over cells for corruption benchmarks) in percentage points, its "
                  f"95% paired bootstrap interval (images resampled with replacement within each cell, "
                  f"{bootstrap_samples:,} resamples, seed 0) and the exact McNemar p-value over the images exactly "
                  "one of the two gets right (two-sided binomial test at 1/2). Rows with several seeds compare "
                  "per-image correctness averaged over their seeds (bootstrap only: McNemar needs one outcome per "
                  "image). Far smaller differences are significant here than between two independent accuracies: "
                  "both models meet the same hard images.", ""]
    lines += ["## Runs", ""]
    lines += _md_table(["model", "kernel", "seed", "epoch", "step", "weights", "results file"],
                       [[r.model, r.kernel, "?" if r.seed is None else str(r.seed), str(r.epoch), str(r.step),
                         r.weights, f"`{r.path}`"] for r in runs])
    lines += ["", "## Provenance", ""]
    lines += _md_table(["produced by", "runs"], [[what, ", ".join(labels)] for what, labels in provenance_summary(runs)])
    lines += ["", "Commit (`-dirty`: with uncommitted changes), torch version, device and its CPU kernels, precision "
              "and torch threads of each results file (its `provenance` record also holds the other library "
              "versions, determinism settings, depthwise-conv implementation, eval transforms, config hash and "
              "data fingerprints).", ""]
    warnings = [f"{r.path.name}: {e.get('weights')} weights on {e.get('benchmark')} failed (rank {e.get('rank')}): "
                f"{str(e.get('error', '')).strip().splitlines()[-1] if e.get('error') else ''}"
                for r in runs for e in r.errors]
    if any(r.seed is None for r in runs):
        warnings.append("runs marked `?` record no seed (settings.seed); each results folder counts as one run")
    if warnings or notes:
        lines += ["## Notes", ""] + [f"- {w}" for w in [*warnings, *notes]]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    cols = table_columns(rows) + analysis_columns(rows)
    header = ["model", "family", "kernel", "group", "kernel_sizes", "n_runs", "seeds"]
    for c in cols:
        header += [c, f"{c}_sd", f"{c}_ci95_lo", f"{c}_ci95_hi", f"{c}_interval", f"{c}_se_binom", f"{c}_n"]
    lines: list[list[Any]] = [header]
    for r in rows:
        line: list[Any] = [r.model, r.family, r.kernel, r.group,
                           "" if r.kernel_sizes is None else " ".join(map(str, r.kernel_sizes)),
                           len(r.runs), " ".join("" if x.seed is None else str(x.seed) for x in r.runs)]
        for c in cols:
            s = r.stats.get(c)
            kind = "" if s is None or s.kind is None else s.kind + ("-clipped" if s.clipped else "")
            line += ["", "", "", "", "", "", 0] if s is None else \
                [s.mean, _blank(s.sd), _blank(s.ci95 and s.ci95[0]), _blank(s.ci95 and s.ci95[1]), kind,
                 _blank(s.se_binom), s.n]
        lines.append(line)
    return _write_csv_lines(path, lines)


def write_runs_csv(path: Path, runs: Sequence[Run]) -> Path:
    lines: list[list[Any]] = [["model", "kernel", "seed", "epoch", "global_step", "weights", "metric", "value", "n",
                               "se_binom", "results_file"]]
    for r in runs:
        for k, m in r.metrics.items():
            lines.append([r.model, r.kernel, _blank(r.seed), _blank(r.epoch), _blank(r.step), r.weights, k, m.value,
                          _blank(m.n), _blank(m.se), str(r.path)])
    return _write_csv_lines(path, lines)


def _write_csv_lines(path: Path, lines: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(lines)
    atomic_write_text(path, buf.getvalue())
    return path


def _blank(v: Any) -> Any:
    return "" if v is None else v


def _p_value(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


# --- plots ------------------------------------------------------------------------------------------------
def _plot_metric(ax: Any, rows: Sequence[Row], key: str, legend: bool = True) -> bool:
    families = list(dict.fromkeys(r.series for r in rows))
    drawn = False
    ticks: dict[float, list[str]] = {}
    for i, fam in enumerate(families):
        pts = sorted(((kernel_x(r.kernel_sizes), r) for r in rows if r.series == fam and key in r.stats),
                     key=lambda p: p[0])
        pts = [(x, r) for x, r in pts if math.isfinite(x)]
        if not pts:
            continue
        color = f"C{i % 10}"
        xs = [x for x, _ in pts]
        means = [r.stats[key].mean for _, r in pts]
        errs = [r.stats[key].error_bar or (0.0, 0.0) for _, r in pts]
        ax.errorbar(xs, means, yerr=[[e[0] for e in errs], [e[1] for e in errs]], color=color, marker="o", ms=4,
                    capsize=3, lw=1.5, label=fam)
        for x, r in pts:
            if r.stats[key].n > 1:
                ax.scatter([x] * r.stats[key].n, r.stats[key].values, color=color, s=9, alpha=0.45, zorder=3)
            ticks.setdefault(x, [])
            if r.kernel not in ticks[x]:
                ticks[x].append(r.kernel)
        drawn = True
    if drawn:
        ax.set_xticks(list(ticks), ["\n".join(v) for v in ticks.values()], fontsize=7)
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=7)
    return drawn


def plot_metrics(rows: Sequence[Row], out: Path) -> dict[str, Path]:
    """One PNG per table column (and per analysis scalar), and one grid per corruption benchmark."""
    written: dict[str, Path] = {}
    caption = "error bars: 95% t-interval over seeds (clipped to the range); single runs: 95% Wilson interval"
    for key in table_columns(rows) + [c for c in analysis_columns(rows) if not has_own_section(c)]:
        fig, axes = new_figure()
        ax = axes[0][0]
        if not _plot_metric(ax, rows, key):
            continue
        ax.set_title(column_label(key), fontsize=10)
        ax.set_xlabel("kernel size (largest stage)")
        ax.set_ylabel("%" if not key.startswith(ANALYSIS_PREFIX) else key.rsplit(".", 1)[-1])
        fig.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=6, color="0.4")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        name = key.replace(ANALYSIS_PREFIX, "analysis_").replace("/", "_").replace(".", "_") + ".png"
        written[key] = save_figure(fig, out / name, tight=False)
    for bench, corruptions in corruption_benchmarks(rows).items():
        ncols = min(5, len(corruptions))
        nrows = math.ceil(len(corruptions) / ncols)
        fig, axes = new_figure(ncols, nrows, size=(2.6, 2.2))
        for i, c in enumerate(corruptions):
            ax = axes[i // ncols][i % ncols]
            _plot_metric(ax, rows, f"{bench}/corruption_top1/{c}", legend=i == 0)
            ax.set_title(c, fontsize=8)
            ax.tick_params(labelsize=6)
        for j in range(len(corruptions), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        fig.suptitle(f"{bench_label(bench)}: top-1 (%) per corruption vs kernel size", fontsize=10)
        fig.text(0.99, 0.005, caption, ha="right", va="bottom", fontsize=6, color="0.4")
        fig.tight_layout(rect=(0, 0.02, 1, 1))
        written[f"corruptions:{bench}"] = save_figure(fig, out / f"{bench}_corruptions.png", tight=False)
    return written


def plot_analyses(runs: Sequence[Run], out: Path) -> dict[str, Path]:
    """The analyses' curves (lesion, occlusion, ...) of every run overlaid, from lk_ablate.analysis.summary."""
    written: dict[str, Path] = {}
    by_protocol: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for r in runs:  # curves of different protocols are never drawn together: one set of plots per protocol
        per: dict[str, dict[str, Any]] = {}
        for name, entry in r.analyses.items():
            per.setdefault((entry.get("protocol") if isinstance(entry, Mapping) else None) or "model", {})[name] = entry
        for p, analyses in per.items():
            by_protocol.setdefault(p, []).append((r.label, analyses))
    for p, runs_p in by_protocol.items():
        folder = out if p == "model" else out / f"protocol_{p}"
        written.update({tagged(f"analysis:{f.stem}", p): f for f in plot_across_runs(runs_p, folder)})
    return written


