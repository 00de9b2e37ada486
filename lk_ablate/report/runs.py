"""``lk_ablate report RUNS_DIR...``: the kernel-size ablation table (shaped like the paper's Table 7) and plots.

Reads every ``*.robustness.json`` under the given folders (or the given files) with
:func:`lk_ablate.base.results.read_results`, never W&B. One results file per run is used: the latest
(highest global step) of each run, a run being (model, kernel sizes, seed) when the file records its seed
(``settings.seed``) and its folder otherwise. Runs of one model and kernel size that differ in seed are repeats.

Outputs in ``--out``:
- ``report.md``: one row per (model, kernel size), a column per benchmark metric present (ImageNet, IN-A, IN-R,
  IN-C, IN-O, Fashion-MNIST, ... generically), each cell the mean over seeds with the sample standard deviation
  and a 95% interval from Student's t distribution with n-1 degrees of freedom
  (``scipy.stats.t.ppf(0.975, n-1) * sd / sqrt(n)``); a single run shows its binomial standard error
  ``sqrt(p (1 - p) / n)`` over the metric's n test images instead (accuracies only; a mean over corruption cells
  combines the cells' variances). Then top-1 per corruption, the analyses' scalar summaries, and the runs.
- ``report.csv``: the same table, machine readable (``<metric>``, ``_sd``, ``_ci95_lo``, ``_ci95_hi``,
  ``_se_binom``, ``_n`` columns); ``runs.csv``: every value of every run (long format).
- ``<benchmark>_<metric>.png``: the metric against kernel size, one line per architecture; per-corruption grids;
  ``analysis_<name>.png`` curves of the analyses.

With ``--wandb-project`` (or ``WANDB_PROJECT`` set) the same tables and plots are logged to a W&B run
(job_type ``report``).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import os
import statistics
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base.errors import ConfigError, DataError

__all__ = ["FAMILIES", "Metric", "Run", "Stat", "ablation_family", "aggregate", "benchmark_metrics", "build_report",
           "cli_main", "find_results", "kernel_label", "load_runs", "summarize"]

RESULTS_GLOB = "*.robustness.json"
# Variants that are another variant with other kernels: one ablation family, one line in the plots.
FAMILIES: dict[str, str] = {"replknet_3b": "replknet_31b"}
BENCH_ORDER = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_c", "imagenet_o")
BENCH_LABELS = {"imagenet_val": "ImageNet", "imagenet_a": "IN-A", "imagenet_r": "IN-R", "imagenet_c": "IN-C",
                "imagenet_o": "IN-O", "fashion_mnist": "Fashion-MNIST", "fashion_mnist_c": "Fashion-MNIST-C"}
METRIC_ORDER = ("top1", "top5", "clean_top1_subset", "mean_top1", "severity5_mean_top1", "severity5_mean_top1_15", "mce", "relative_mce",
                "aupr")
METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "mean_top1": "mean top-1",
                 "severity5_mean_top1": "sev-5 top-1 (19)", "severity5_mean_top1_15": "sev-5 top-1 (15)",
                 "mce": "mCE", "relative_mce": "rel. mCE", "aupr": "AUPR", "clean_top1_subset": "clean top-1 (subset)"}
COUNT_KEYS = {"n", "n_in", "n_out", "n_total"}
ANALYSIS_PREFIX = "analysis/"
Z95 = 1.959963984540054  # normal 97.5% quantile: the error bars of single runs (p +- 1.96 SE)


# --- names ------------------------------------------------------------------------------------------------
def kernel_label(kernel_size: int | Sequence[int] | None) -> str:
    """"31" for an int or equal stages, "31-29-27-13" for per-stage sizes, "default" for None."""
    if kernel_size is None:
        return "default"
    if isinstance(kernel_size, int):
        return str(kernel_size)
    sizes = [int(k) for k in kernel_size]
    return str(sizes[0]) if len(set(sizes)) == 1 else "-".join(map(str, sizes))


def ablation_family(model_name: str) -> str:
    """The architecture a variant ablates the kernels of (RepLKNet-3B is RepLKNet-31B with 3x3 kernels)."""
    return FAMILIES.get(model_name, model_name)


def _kernel_x(sizes: Sequence[int] | None) -> float:
    return float(max(sizes)) if sizes else float("nan")


def tagged(name: str, protocol: str | None) -> str:
    """A benchmark or analysis name as a report key: ``protocol: model`` (the default, and what entries without a
    protocol were scored under) untagged, any other ``name@protocol``, so entries scored under different
    protocols are separate columns and plots, never averaged together."""
    return name if protocol in (None, "model") else f"{name}@{protocol}"


def bench_label(bench: str) -> str:
    """``imagenet_a`` -> ``IN-A``; ``imagenet_a@paper`` -> ``IN-A [paper]``."""
    base, _, protocol = bench.partition("@")
    return BENCH_LABELS.get(base, base) + (f" [{protocol}]" if protocol else "")


def column_label(key: str) -> str:
    """``imagenet_a/top1`` -> ``IN-A top-1``; analysis scalars keep their own names."""
    if key.startswith(ANALYSIS_PREFIX):
        return key[len(ANALYSIS_PREFIX):]
    bench, _, metric = key.partition("/")
    return f"{bench_label(bench)} {METRIC_LABELS.get(metric, metric)}"


# --- reading ----------------------------------------------------------------------------------------------
@dataclass
class Metric:
    """One number of one run; ``se`` the binomial standard error (percentage points) where it is an accuracy."""

    value: float
    se: float | None = None
    n: int | None = None


class _ModelKernel:
    """``family`` and ``kernel`` labels of anything with ``model`` and ``kernel_sizes`` (a run, a table row)."""

    model: str
    kernel_sizes: tuple[int, ...] | None

    @property
    def family(self) -> str:
        return ablation_family(self.model)

    @property
    def kernel(self) -> str:
        return kernel_label(self.kernel_sizes)


@dataclass
class Run(_ModelKernel):
    path: Path
    model: str
    kernel_sizes: tuple[int, ...] | None
    seed: int | None
    epoch: int | None
    step: int | None
    weights: str
    metrics: dict[str, Metric]
    analyses: dict[str, Any]
    errors: list[dict[str, Any]]
    protocol: str = "model"  # the benchmarks' (settings.protocol); each analysis entry records its own

    @property
    def label(self) -> str:
        return f"{self.model} k{self.kernel}" + ("" if self.seed is None else f" s{self.seed}")


def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every results file under the given folders (recursively) or the given files themselves, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(f for f in p.rglob(RESULTS_GLOB) if f.is_file())
        elif p.is_file():
            found.add(p)
        else:
            raise DataError(f"runs folder or results file not found: {p}")
    if not found:
        raise DataError(f"no {RESULTS_GLOB} under {', '.join(map(str, paths))}: score checkpoints first "
                        "(`lk_ablate robustness`, the RobustnessEvaluation callback or `lk_ablate demo`)")
    return sorted(found)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cells(m: Mapping[str, Any]) -> dict[tuple[str, str], tuple[float, int | None]]:
    """(corruption, severity) -> (top-1 %, images) of a corruption benchmark (nested ``top1``), else {}."""
    top1 = m.get("top1")
    if not isinstance(top1, Mapping):
        return {}
    counts = m.get("n")
    out = {}
    for c, by_sev in top1.items():
        for s, v in (by_sev or {}).items():
            if not _number(v):
                continue
            if isinstance(counts, int):  # the same images in every cell (Fashion-MNIST-C)
                n = counts
            else:
                n = counts.get(c, {}).get(str(s)) if isinstance(counts, Mapping) else None
            out[(str(c), str(s))] = (float(v), int(n) if _number(n) else None)
    return out


def _se_of_mean(cells: Iterable[tuple[float, int | None]]) -> float | None:
    """Binomial SE (percentage points) of the mean of independent accuracies: sqrt(sum p(1-p)/n) / k."""
    cells = list(cells)
    if not cells or any(n is None or n <= 0 for _, n in cells):
        return None
    var = sum((p / 100) * (1 - p / 100) / n for p, n in cells)
    return 100.0 * math.sqrt(var) / len(cells)


def _is_accuracy(metric: str) -> bool:
    return "top1" in metric or "top5" in metric


def benchmark_metrics(bench: str, m: Mapping[str, Any]) -> dict[str, Metric]:
    """The numbers of one benchmark entry: ``bench/metric`` scalars (table columns), plus the details
    ``bench/corruption_top1/<c>`` and ``bench/top1/<c>/<s>`` of corruption benchmarks."""
    from .robustness.metrics import CORRUPTIONS

    cells = _cells(m)
    n_images = m.get("n") if isinstance(m.get("n"), int) else None
    out: dict[str, Metric] = {}
    for k, v in m.items():
        if not _number(v) or k in COUNT_KEYS or k.startswith("correct"):
            continue
        se = n = None
        if cells and k == "mean_top1":
            se = _se_of_mean(cells.values())
        elif cells and k == "severity5_mean_top1":
            se = _se_of_mean(v5 for (c, s), v5 in cells.items() if s == "5")
        elif cells and k == "severity5_mean_top1_15":
            se = _se_of_mean(v5 for (c, s), v5 in cells.items() if s == "5" and c in CORRUPTIONS)
        elif _is_accuracy(k) and n_images:
            n = n_images
            se = _se_of_mean([(float(v), n)])
        out[f"{bench}/{k}"] = Metric(float(v), se, n)
    per_corruption = m.get("corruption_top1")
    if isinstance(per_corruption, Mapping):
        for c, v in per_corruption.items():
            if _number(v):
                se = _se_of_mean(cell for (cc, _), cell in cells.items() if cc == c) if cells else None
                out[f"{bench}/corruption_top1/{c}"] = Metric(float(v), se)
    for (c, s), (v, n) in cells.items():
        out[f"{bench}/top1/{c}/{s}"] = Metric(v, _se_of_mean([(v, n)]) if n else None, n)
    return out


def _seed_of(data: Mapping[str, Any]) -> int | None:
    for section in (data.get("run"), data.get("settings")):
        if isinstance(section, Mapping) and _number(section.get("seed")):
            return int(section["seed"])
    return None


def load_run(path: Path, weights: str = "primary") -> Run | None:
    """One results file as a Run; None when it holds no scored weights of the requested kind."""
    from .base.results import read_results

    data = read_results(path)
    which = data["primary"] if weights == "primary" else weights
    benches = data["weights"].get(which)
    analyses = dict(data.get("analyses") or {})
    if benches is None and not analyses:
        return None
    metrics: dict[str, Metric] = {}
    protocol = (data.get("settings") or {}).get("protocol") or "model"
    for bench, m in (benches or {}).items():
        if isinstance(m, Mapping):
            metrics.update(benchmark_metrics(tagged(bench, protocol), m))
    if analyses:
        from .analysis.report import summary_rows

        for name, entry in analyses.items():
            p = entry.get("protocol") if isinstance(entry, Mapping) else None
            row = summary_rows([("run", {name: entry})])[0]
            for k, v in row.items():
                if k != "run" and _number(v):
                    key = tagged(name, p) + k[len(name):] if k.startswith(name) else tagged(k, p)
                    metrics[f"{ANALYSIS_PREFIX}{key}"] = Metric(float(v))
    ks = data["model"].get("kernel_sizes")
    ckpt = data.get("checkpoint") or {}
    return Run(path=path, model=data["model"]["name"], kernel_sizes=None if ks is None else tuple(int(k) for k in ks),
               seed=_seed_of(data), epoch=ckpt.get("epoch"), step=ckpt.get("global_step"), weights=which,
               metrics=metrics, analyses=analyses, errors=list(data.get("errors") or []), protocol=protocol)


def load_runs(paths: Iterable[str | os.PathLike], weights: str = "primary",
              strict: bool = False) -> tuple[list[Run], list[str]]:
    """The latest results file of every run under ``paths``, and notes on the files left out.

    A file that fails the results schema (types, ranges, finite values: ``validate_results``) is left out whole,
    never half-counted, with a note naming it and the problem; ``strict`` makes any such file an error that lists
    them all (one line each).
    """
    if weights not in ("primary", "raw", "ema"):
        raise ConfigError(f"--weights must be primary, raw or ema, got {weights!r}")
    notes: list[str] = []
    bad: list[str] = []
    latest: dict[tuple, Run] = {}
    for path in find_results(paths):
        try:
            run = load_run(path, weights)
        except DataError as e:
            bad.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        if run is None:
            notes.append(f"{path}: no {weights} weights scored; left out")
            continue
        key = (run.model, run.kernel_sizes, run.seed, run.protocol) if run.seed is not None \
            else ("folder", str(path.parent.resolve()), run.protocol)
        # newest step first; of equal steps prefer the uniquely named file over last.* (same weights)
        rank = (run.step if run.step is not None else -1, not path.stem.startswith("last"))
        old = latest.get(key)
        if old is None:
            latest[key] = run
            continue
        old_rank = (old.step if old.step is not None else -1, not old.path.stem.startswith("last"))
        keep, drop = (run, old) if rank > old_rank else (old, run)
        latest[key] = keep
        if keep.step != drop.step:
            notes.append(f"{drop.path}: superseded by the later {keep.path.name} (step {keep.step}) of the same run")
    if bad and strict:
        raise DataError(f"{len(bad)} bad results file(s) (--strict):\n  " + "\n  ".join(bad))
    if bad:
        warnings.warn(f"skipped {len(bad)} bad results file(s) (left out of every statistic; --strict makes this an "
                      "error):\n  " + "\n  ".join(bad), stacklevel=2)
    notes = [f"skipped, bad results file: {b}" for b in bad] + notes
    runs = sorted(latest.values(), key=lambda r: (r.family, _kernel_x(r.kernel_sizes), r.kernel_sizes or (), r.model,
                                                  -1 if r.seed is None else r.seed, str(r.path)))
    return runs, notes


# --- statistics -------------------------------------------------------------------------------------------
@dataclass
class Stat:
    """Mean over seeds; ``sd`` and the 95% t-interval need two runs, ``se_binom`` is given for single runs."""

    n: int
    mean: float
    sd: float | None = None
    ci95: tuple[float, float] | None = None
    se_binom: float | None = None
    values: list[float] = field(default_factory=list)

    @property
    def error_bar(self) -> float | None:
        """Half-width of the plotted 95% interval: t over seeds, or 1.96 binomial SE for a single run."""
        if self.ci95 is not None:
            return (self.ci95[1] - self.ci95[0]) / 2
        return None if self.se_binom is None else Z95 * self.se_binom


def summarize(metrics: Sequence[Metric]) -> Stat:
    """Mean, sample sd (ddof 1) and 95% Student-t interval over repeats; binomial SE when there is one run."""
    values = [m.value for m in metrics]
    n = len(values)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return Stat(1, mean, se_binom=metrics[0].se, values=values)
    from scipy.stats import t

    sd = statistics.stdev(values)
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Stat(n, mean, sd, (mean - half, mean + half), values=values)


@dataclass
class Row(_ModelKernel):
    """One (model, kernel size) of the table and the statistics of every metric over its runs."""

    model: str
    kernel_sizes: tuple[int, ...] | None
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def seeds(self) -> str:
        seeds = [("?" if r.seed is None else str(r.seed)) for r in self.runs]
        return ", ".join(seeds)


def aggregate(runs: Sequence[Run]) -> list[Row]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.model, r.kernel_sizes), []).append(r)
    rows = []
    for (model, ks), members in groups.items():
        keys = list(dict.fromkeys(k for r in members for k in r.metrics))
        stats = {k: summarize([r.metrics[k] for r in members if k in r.metrics]) for k in keys}
        rows.append(Row(model, ks, members, stats))
    return rows


def table_columns(rows: Sequence[Row]) -> list[str]:
    """``bench/metric`` columns present in any row (known benchmarks and metrics first), then analysis scalars."""
    keys = list(dict.fromkeys(k for row in rows for k in row.stats))
    main = [k for k in keys if k.count("/") == 1 and not k.startswith(ANALYSIS_PREFIX)]
    benches = list(dict.fromkeys(k.split("/")[0] for k in main))
    benches = [b for b in BENCH_ORDER if b in benches] + [b for b in benches if b not in BENCH_ORDER]

    def order(k: str) -> tuple:
        bench, metric = k.split("/")
        return benches.index(bench), (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)), \
            main.index(k)

    return sorted(main, key=order)


def analysis_columns(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row.stats if k.startswith(ANALYSIS_PREFIX)))


def corruption_benchmarks(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Benchmark -> its corruptions (first-seen order) for every benchmark with per-corruption top-1."""
    out: dict[str, list[str]] = {}
    for row in rows:
        for k in row.stats:
            parts = k.split("/")
            if len(parts) == 3 and parts[1] == "corruption_top1":
                out.setdefault(parts[0], [])
                if parts[2] not in out[parts[0]]:
                    out[parts[0]].append(parts[2])
    return out


# --- writing ----------------------------------------------------------------------------------------------
def _decimals(stats: Iterable[Stat]) -> int:
    values = [abs(s.mean) for s in stats]
    return 2 if not values or max(values) >= 1 else 4


def _cell(stat: Stat | None, d: int) -> str:
    if stat is None:
        return "–"
    text = f"{stat.mean:.{d}f}"
    if stat.n >= 2:
        lo, hi = stat.ci95
        return f"{text} ± {stat.sd:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"
    if stat.se_binom is not None:
        return f"{text} ± {stat.se_binom:.{d}f} (SE)"
    return text


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def write_markdown(path: Path, rows: Sequence[Row], runs: Sequence[Run], notes: Sequence[str], plots: Mapping[str, Path],
                   weights: str, sources: Sequence[str]) -> Path:
    cols = table_columns(rows)
    lines = ["# Kernel-size ablation report", "",
             f"{len(runs)} run(s) from {', '.join(f'`{s}`' for s in sources)}; weights: {weights} "
             f"(primary = EMA where it was scored). Generated {_dt.datetime.now().isoformat(timespec='seconds')} "
             "by `lk_ablate report`.", ""]
    if cols:
        dec = {c: _decimals(r.stats[c] for r in rows if c in r.stats) for c in cols}
        lines += ["## Benchmarks by kernel size", ""]
        lines += _md_table(["model", "kernel", "seeds", *map(column_label, cols)],
                           [[r.model, r.kernel, r.seeds, *(_cell(r.stats.get(c), dec[c]) for c in cols)] for r in rows])
        lines += ["", "Accuracies, mCE and AUPR in %. A cell is `mean ± sd [95% interval]` over seeds (sample sd; "
                  "interval mean ± t(0.975, n-1)·sd/√n, Student's t from scipy.stats), or for a single run "
                  "`value ± SE (SE)`, the binomial standard error √(p(1-p)/n) of an accuracy over the benchmark's n "
                  "images (a mean over corruption cells combines the cells: √(Σ p(1-p)/n)/k). mCE, relative mCE "
                  "and AUPR of a single run carry no error. `–`: not scored.", ""]
        for c in cols:
            if c in plots:
                lines.append(f"![{column_label(c)}]({plots[c].name})")
        lines.append("")
    for bench, corruptions in corruption_benchmarks(rows).items():
        keys = [f"{bench}/corruption_top1/{c}" for c in corruptions]
        d = _decimals(r.stats[k] for r in rows for k in keys if k in r.stats)
        lines += [f"## {bench_label(bench)}: top-1 per corruption (mean over severities, then seeds)", ""]
        lines += _md_table(["model", "kernel", *corruptions],
                           [[r.model, r.kernel, *(f"{r.stats[k].mean:.{d}f}" if k in r.stats else "–" for k in keys)]
                            for r in rows if any(k in r.stats for k in keys)])
        lines.append("")
        if f"corruptions:{bench}" in plots:
            lines += [f"![{bench} per corruption]({plots[f'corruptions:{bench}'].name})", ""]
    acols = analysis_columns(rows)
    if acols:
        dec = {c: _decimals(r.stats[c] for r in rows if c in r.stats) for c in acols}
        lines += ["## Analyses (scalar summaries)", ""]
        lines += _md_table(["model", "kernel", "seeds", *map(column_label, acols)],
                           [[r.model, r.kernel, r.seeds, *(_cell(r.stats.get(c), dec[c]) for c in acols)]
                            for r in rows])
        lines += ["", "Each analysis's own summary numbers (see docs/analyses.md); mean ± sd [95% t-interval] "
                  "over seeds where there are several.", ""]
        for key, p in plots.items():
            if key.startswith(ANALYSIS_PREFIX) and key in acols:
                lines.append(f"![{column_label(key)}]({p.name})")
            elif key.startswith("analysis:"):
                lines.append(f"![{p.stem.removeprefix('analysis_')} across runs]({p.name})")
        lines.append("")
    lines += ["## Runs", ""]
    lines += _md_table(["model", "kernel", "seed", "epoch", "step", "weights", "results file"],
                       [[r.model, r.kernel, "?" if r.seed is None else str(r.seed), str(r.epoch), str(r.step),
                         r.weights, f"`{r.path}`"] for r in runs])
    warnings = [f"{r.path.name}: {e.get('weights')} weights on {e.get('benchmark')} failed (rank {e.get('rank')}): "
                f"{str(e.get('error', '')).strip().splitlines()[-1] if e.get('error') else ''}"
                for r in runs for e in r.errors]
    if any(r.seed is None for r in runs):
        warnings.append("runs marked `?` record no seed (settings.seed); each results folder counts as one run")
    if warnings or notes:
        lines += ["", "## Notes", ""] + [f"- {w}" for w in [*warnings, *notes]]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    cols = table_columns(rows) + analysis_columns(rows)
    header = ["model", "family", "kernel", "kernel_sizes", "n_runs", "seeds"]
    for c in cols:
        header += [c, f"{c}_sd", f"{c}_ci95_lo", f"{c}_ci95_hi", f"{c}_se_binom", f"{c}_n"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line: list[Any] = [r.model, r.family, r.kernel, "" if r.kernel_sizes is None else " ".join(map(str, r.kernel_sizes)),
                               len(r.runs), " ".join("" if x.seed is None else str(x.seed) for x in r.runs)]
            for c in cols:
                s = r.stats.get(c)
                line += ["", "", "", "", "", 0] if s is None else \
                    [s.mean, _blank(s.sd), _blank(s.ci95 and s.ci95[0]), _blank(s.ci95 and s.ci95[1]),
                     _blank(s.se_binom), s.n]
            w.writerow(line)
    return path


def write_runs_csv(path: Path, runs: Sequence[Run]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "kernel", "seed", "epoch", "global_step", "weights", "metric", "value", "n", "se_binom",
                    "results_file"])
        for r in runs:
            for k, m in r.metrics.items():
                w.writerow([r.model, r.kernel, _blank(r.seed), _blank(r.epoch), _blank(r.step), r.weights, k, m.value,
                            _blank(m.n), _blank(m.se), str(r.path)])
    return path


def _blank(v: Any) -> Any:
    return "" if v is None else v


# --- plots ------------------------------------------------------------------------------------------------
def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no display needed

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=120)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _plot_metric(ax: Any, rows: Sequence[Row], key: str, legend: bool = True) -> bool:
    families = list(dict.fromkeys(r.family for r in rows))
    drawn = False
    ticks: dict[float, list[str]] = {}
    for i, fam in enumerate(families):
        pts = sorted(((_kernel_x(r.kernel_sizes), r) for r in rows if r.family == fam and key in r.stats),
                     key=lambda p: p[0])
        pts = [(x, r) for x, r in pts if math.isfinite(x)]
        if not pts:
            continue
        color = f"C{i % 10}"
        xs = [x for x, _ in pts]
        means = [r.stats[key].mean for _, r in pts]
        errs = [r.stats[key].error_bar for _, r in pts]
        ax.errorbar(xs, means, yerr=[e if e is not None else 0.0 for e in errs], color=color, marker="o", ms=4,
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
    caption = "error bars: 95% t-interval over seeds; single runs: ±1.96 binomial SE"
    for key in table_columns(rows) + analysis_columns(rows):
        fig, axes = _figure()
        ax = axes[0][0]
        if not _plot_metric(ax, rows, key):
            continue
        ax.set_title(column_label(key), fontsize=10)
        ax.set_xlabel("kernel size (largest stage)")
        ax.set_ylabel("%" if not key.startswith(ANALYSIS_PREFIX) else key.rsplit(".", 1)[-1])
        fig.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=6, color="0.4")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        name = key.replace(ANALYSIS_PREFIX, "analysis_").replace("/", "_").replace(".", "_") + ".png"
        written[key] = out / name
        fig.savefig(written[key])
    for bench, corruptions in corruption_benchmarks(rows).items():
        ncols = min(5, len(corruptions))
        nrows = math.ceil(len(corruptions) / ncols)
        fig, axes = _figure(ncols, nrows, size=(2.6, 2.2))
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
        written[f"corruptions:{bench}"] = out / f"{bench}_corruptions.png"
        fig.savefig(written[f"corruptions:{bench}"])
    return written


def plot_analyses(runs: Sequence[Run], out: Path) -> dict[str, Path]:
    """The analyses' curves (lesion, occlusion, ...) of every run overlaid, from lk_ablate.analysis.report."""
    from .analysis.report import plot_across_runs

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


# --- W&B --------------------------------------------------------------------------------------------------
def log_to_wandb(rows: Sequence[Row], runs: Sequence[Run], plots: Mapping[str, Path], project: str,
                 entity: str | None = None, group: str | None = None, name: str | None = None,
                 save_dir: str | None = None) -> str:
    """Log the table (``report/table``), every run's values (``report/runs``) and the plots; returns the run id."""
    import wandb

    cols = table_columns(rows) + analysis_columns(rows)
    families = sorted({r.family for r in rows})
    run = wandb.init(project=project, entity=entity, job_type="report", name=name or "kernel-ablation-report",
                     group=group or (f"{families[0]}-kernel" if len(families) == 1 else "report"), dir=save_dir,
                     config={"families": families, "runs": [str(r.path) for r in runs]}, reinit="finish_previous")
    try:
        header = ["model", "kernel", "n_runs", "seeds"]
        for c in cols:
            header += [c, f"{c}_sd", f"{c}_ci95_lo", f"{c}_ci95_hi", f"{c}_se_binom"]
        data = []
        for r in rows:
            line: list[Any] = [r.model, r.kernel, len(r.runs), r.seeds]
            for c in cols:
                s = r.stats.get(c)
                line += [None] * 5 if s is None else [s.mean, s.sd, s.ci95 and s.ci95[0], s.ci95 and s.ci95[1],
                                                      s.se_binom]
            data.append(line)
        per_run = [[r.model, r.kernel, r.seed, r.weights, k, m.value, m.se]
                   for r in runs for k, m in r.metrics.items()]
        run.log({"report/table": wandb.Table(columns=header, data=data),
                 "report/runs": wandb.Table(columns=["model", "kernel", "seed", "weights", "metric", "value",
                                                     "se_binom"], data=per_run),
                 **{f"report/plots/{p.stem}": wandb.Image(str(p)) for p in plots.values()}})
        return run.id
    finally:
        run.finish()


# --- entry points -----------------------------------------------------------------------------------------
def build_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, weights: str = "primary",
                 wandb_project: str | None = None, wandb_entity: str | None = None,
                 wandb_group: str | None = None, wandb_dir: str | None = None, strict: bool = False) -> dict[str, Any]:
    """Read the runs, write report.md / report.csv / runs.csv / PNGs into ``out``; returns what was written.
    ``strict``: a results file that fails validation is an error (by default it is skipped with a warning)."""
    runs, notes = load_runs(paths, weights, strict=strict)
    if not runs:
        raise DataError(f"no results file under {', '.join(map(str, paths))} holds {weights} weights")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    plots = plot_metrics(rows, out)
    plots.update(plot_analyses(runs, out))
    written = {"markdown": write_markdown(out / "report.md", rows, runs, notes, plots, weights, [str(p) for p in paths]),
               "csv": write_csv(out / "report.csv", rows), "runs_csv": write_runs_csv(out / "runs.csv", runs),
               "plots": list(plots.values()), "rows": rows, "runs": runs, "notes": notes}
    if wandb_project:
        written["wandb_run_id"] = log_to_wandb(rows, runs, plots, wandb_project, wandb_entity, wandb_group,
                                               save_dir=wandb_dir)
    return written


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lk_ablate report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="folders searched for *.robustness.json (or files)")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument("--weights", default="primary", choices=("primary", "raw", "ema"),
                   help="weight set of each run (primary: EMA where scored, else raw)")
    p.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT"),
                   help="also log the report to this W&B project (default: $WANDB_PROJECT; unset: no W&B)")
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-group", default=None, help="default: <family>-kernel")
    p.add_argument("--no-wandb", action="store_true", help="never log to W&B")
    p.add_argument("--strict", action="store_true",
                   help="stop on a results file with bad values (default: skip it, with a warning naming it)")
    args = p.parse_args(argv)
    with warnings.catch_warnings():  # skipped files are printed below, one "note:" line each
        warnings.filterwarnings("ignore", message=r"skipped \d+ bad results file")
        written = build_report(args.runs, args.out, args.weights, None if args.no_wandb else args.wandb_project,
                               args.wandb_entity, args.wandb_group, strict=args.strict)
    rows = written["rows"]
    print(f"{len(written['runs'])} run(s) in {len(rows)} (model, kernel) row(s) -> {written['markdown']}, "
          f"{written['csv']}, {len(written['plots'])} plot(s)")
    for note in written["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0
