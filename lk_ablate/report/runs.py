"""Runs and their statistics: every ``*.robustness.json`` under the given folders read (with
:func:`lk_ablate.base.results.read_results`) into one :class:`Run` per run (the latest results file of each), and
the comparable runs of one (model, kernel size) summarized into a table :class:`Row` (mean over seeds, sample sd,
95% Student-t interval clipped to the metric's range; a single run's 95% Wilson interval).

Which runs form one row (``aggregate``): the same model and kernel sizes, and comparable data: the same class count
(the model's) and, for every benchmark both scored, the same data fingerprint (number of images, hash of their
paths and sizes: ``provenance.data``). Runs that differ there go to separate rows, with a note naming the files and
the difference (``strict``: an error). Results files written before provenance existed are read as "no
provenance" and get rows of their own: never merged with runs that have it. Differences that leave the numbers
comparable (code commit, library versions, device, precision, threads, determinism settings) are listed as notes.
"""
from __future__ import annotations

import math
import os
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.summary import summary_rows
from ..base.errors import ConfigError, DataError
from ..base.provenance import describe, provenance_differences
from ..base.results import read_results, unpack_bits
from ..models.registry import kernel_label, model_family
from ..robustness.metrics import CORRUPTIONS
from .stats import Paired, clip_interval, paired_comparison, wilson_from_se

__all__ = ["ANALYSIS_PREFIX", "Metric", "Row", "Run", "Stat", "aggregate", "analysis_columns", "benchmark_metrics",
           "comparable", "corruption_benchmarks", "find_results", "kernel_x", "load_run", "load_runs",
           "metric_bounds", "pair_rows", "paired_rows", "provenance_notes", "provenance_summary", "summarize",
           "table_columns", "tagged"]

RESULTS_GLOB = "*.robustness.json"
BENCH_ORDER = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_c", "imagenet_o")
METRIC_ORDER = ("top1", "top5", "clean_top1_subset", "mean_top1", "severity5_mean_top1", "severity5_mean_top1_15", "mce",
                "relative_mce", "aupr")
COUNT_KEYS = {"n", "n_in", "n_out", "n_total"}
ANALYSIS_PREFIX = "analysis/"


# --- keys -------------------------------------------------------------------------------------------------
def kernel_x(sizes: Sequence[int] | None) -> float:
    """The x position of a kernel size in tables and plots: the largest stage kernel (nan for the default)."""
    return float(max(sizes)) if sizes else float("nan")


def tagged(name: str, protocol: str | None) -> str:
    """A benchmark or analysis name as a report key: ``protocol: model`` (the default, and what entries without a
    protocol were scored under) untagged, any other ``name@protocol``, so entries scored under different
    protocols are separate columns and plots, never averaged together."""
    return name if protocol in (None, "model") else f"{name}@{protocol}"


# --- reading ----------------------------------------------------------------------------------------------
@dataclass
class Metric:
    """One number of one run; ``se`` the binomial standard error (percentage points) where it is an accuracy."""

    value: float
    se: float | None = None
    n: int | None = None
    bounds: tuple[float | None, float | None] = (None, None)  # the metric's range: (0, 100) for accuracies


class _ModelKernel:
    """``family`` and ``kernel`` labels of anything with ``model`` and ``kernel_sizes`` (a run, a table row)."""

    model: str
    kernel_sizes: tuple[int, ...] | None

    @property
    def family(self) -> str:
        return model_family(self.model)

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
    partial: list[str] = field(default_factory=list)  # benchmarks left out: scored with images skipped
    scoring: dict[str, Any] = field(default_factory=dict)  # settings.scoring: decode, precision, on_bad_image
    checkpoint: str | None = None  # checkpoint.path: the weights scored (tells copies of one run's file apart)
    provenance: dict[str, Any] | None = None  # None: a file written before provenance existed
    num_classes: int | None = None  # the model's (model.config.num_classes)
    per_image: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # {bench key: {part: {n, top1}}}

    @property
    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """{benchmark key (protocol-tagged, as in ``metrics``): data fingerprint}."""
        data = (self.provenance or {}).get("data") or {}
        return {tagged(b, self.protocol): fp for b, fp in data.items() if isinstance(fp, Mapping)}

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
        if cells and k in ("mean_top1", "severity5_mean_top1", "severity5_mean_top1_15"):
            n = sum(c for _, c in cells.values() if c) or None
        out[f"{bench}/{k}"] = Metric(float(v), se, n, metric_bounds(k))
    per_corruption = m.get("corruption_top1")
    if isinstance(per_corruption, Mapping):
        for c, v in per_corruption.items():
            if _number(v):
                se = _se_of_mean(cell for (cc, _), cell in cells.items() if cc == c) if cells else None
                out[f"{bench}/corruption_top1/{c}"] = Metric(float(v), se, None, (0.0, 100.0))
    for (c, s), (v, n) in cells.items():
        out[f"{bench}/top1/{c}/{s}"] = Metric(v, _se_of_mean([(v, n)]) if n else None, n, (0.0, 100.0))
    return out


def metric_bounds(metric: str) -> tuple[float | None, float | None]:
    """The range of a metric's values: accuracies and AUPR in [0, 100]; mCE and relative mCE >= 0 (a model can
    err more than AlexNet, so no upper bound); anything else unbounded."""
    if _is_accuracy(metric) or metric == "aupr":
        return 0.0, 100.0
    if metric in ("mce", "relative_mce"):
        return 0.0, None
    return None, None


def _seed_of(data: Mapping[str, Any]) -> int | None:
    for section in (data.get("run"), data.get("settings")):
        if isinstance(section, Mapping) and _number(section.get("seed")):
            return int(section["seed"])
    return None


def load_run(path: Path, weights: str = "auto") -> Run | None:
    """One results file as a Run; None when it holds no scored weights of the requested kind."""
    data = read_results(path)
    which = data["primary"] if weights == "auto" else weights
    benches = data["weights"].get(which)
    analyses = dict(data.get("analyses") or {})
    if benches is None and not analyses:
        return None
    metrics: dict[str, Metric] = {}
    protocol = (data.get("settings") or {}).get("protocol") or "model"
    partial: list[str] = []
    for bench, m in (benches or {}).items():
        if isinstance(m, Mapping) and m.get("n_skipped"):
            # Scored without its unreadable images (on_bad_image: skip): not comparable with complete runs.
            partial.append(f"{bench} ({m['n_skipped']} unreadable images skipped)")
        elif isinstance(m, Mapping):
            metrics.update(benchmark_metrics(tagged(bench, protocol), m))
    if analyses:
        for name, entry in analyses.items():
            p = entry.get("protocol") if isinstance(entry, Mapping) else None
            row = summary_rows([("run", {name: entry})])[0]
            for k, v in row.items():
                if k != "run" and _number(v):
                    key = tagged(name, p) + k[len(name):] if k.startswith(name) else tagged(k, p)
                    metrics[f"{ANALYSIS_PREFIX}{key}"] = Metric(float(v))
    ks = data["model"].get("kernel_sizes")
    ckpt = data.get("checkpoint") or {}
    classes = (data["model"].get("config") or {}).get("num_classes")
    per_image = ((data.get("per_image") or {}).get(which) or {})
    return Run(path=path, model=data["model"]["name"], kernel_sizes=None if ks is None else tuple(int(k) for k in ks),
               seed=_seed_of(data), epoch=ckpt.get("epoch"), step=ckpt.get("global_step"), weights=which,
               metrics=metrics, analyses=analyses, errors=list(data.get("errors") or []), protocol=protocol,
               partial=partial, scoring=dict((data.get("settings") or {}).get("scoring") or {}),
               provenance=data.get("provenance"), num_classes=classes if isinstance(classes, int) else None,
               per_image={tagged(b, protocol): dict(parts) for b, parts in per_image.items()
                          if isinstance(parts, Mapping)},
               checkpoint=ckpt.get("path"))


def load_runs(paths: Iterable[str | os.PathLike], weights: str = "auto",
              strict: bool = False) -> tuple[list[Run], list[str]]:
    """The latest results file of every run under ``paths``, and notes on the files left out.

    A file that fails the results schema (types, ranges, finite values: ``validate_results``) is left out whole,
    never half-counted, with a note naming it and the problem; ``strict`` makes any such file an error that lists
    them all (one line each). When every file found is bad there is nothing to report: that is an error naming
    them, with or without ``strict``.
    """
    paths = list(paths)
    if weights not in ("auto", "raw", "ema"):
        raise ConfigError(f"--weights must be auto (EMA where it was scored, else raw), raw or ema, got {weights!r}")
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
        if run.partial:
            notes.append(f"{path}: {', '.join(run.partial)} left out of the tables: scored on fewer images than "
                         "the benchmark, not comparable with complete runs")
        inexact = {k: v for k, v in run.scoring.items()
                   if (k, v) in (("decode", "gpu"), ("precision", "bf16-mixed"))}
        if inexact:
            notes.append(f"{path}: scored with {', '.join(f'{k} {v}' for k, v in inexact.items())}; differs slightly "
                         "from CPU-decoded 32-true scoring (docs/robustness.md)")
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
        notes.append(_left_out_note(keep, drop))
    copies = _same_checkpoint_copies(list(latest.values()))
    for drop, keep in copies:
        latest = {k: r for k, r in latest.items() if r is not drop}
        notes.append(_left_out_note(keep, drop))
    if bad and strict:
        raise DataError(f"{len(bad)} bad results file(s) (--strict):\n  " + "\n  ".join(bad))
    if bad and not latest:
        raise DataError(f"no usable results file under {', '.join(map(str, paths))}: {len(bad)} bad results "
                        "file(s):\n  " + "\n  ".join(bad))
    if bad:
        warnings.warn(f"skipped {len(bad)} bad results file(s) (left out of every statistic; --strict makes this an "
                      "error):\n  " + "\n  ".join(bad), stacklevel=2)
    notes = [f"skipped, bad results file: {b}" for b in bad] + notes
    runs = sorted(latest.values(), key=lambda r: (r.family, kernel_x(r.kernel_sizes), r.kernel_sizes or (), r.model,
                                                  -1 if r.seed is None else r.seed, str(r.path)))
    return runs, notes


def _left_out_note(keep: Run, drop: Run) -> str:
    """Why ``drop`` is not counted beside ``keep``, the run it duplicates or precedes (one note per file left out)."""
    if keep.step != drop.step:
        return f"{drop.path}: superseded by the later {keep.path.name} (step {keep.step}) of the same run"
    what = f"step {keep.step} of {keep.label}" if keep.step is not None else keep.label
    if keep.metrics == drop.metrics and keep.analyses == drop.analyses:
        return f"{drop.path}: the same results as {keep.path} ({what}): counted once"
    differ = sorted(k for k in set(keep.metrics) & set(drop.metrics) if keep.metrics[k].value != drop.metrics[k].value)
    if differ:
        return (f"{drop.path}: holds {what} like {keep.path}, with other values ({', '.join(differ[:3])}"
                f"{' ...' if len(differ) > 3 else ''}); counted once, from {keep.path.name}: remove the file that is "
                "wrong")
    extra = sorted(set(drop.metrics) - set(keep.metrics)) or sorted(set(drop.analyses) - set(keep.analyses))
    return (f"{drop.path}: holds {what} like {keep.path}, with other entries ({', '.join(extra[:3]) or 'fewer'}"
            f"{' ...' if len(extra) > 3 else ''}); one file per run is counted ({keep.path.name}): score or analyse "
            "the run into one results file")


def _same_checkpoint_copies(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """(copy, kept) pairs among runs without a recorded seed: files that score the same checkpoint state (its
    recorded path and step), or hold the same values for one model, kernel, protocol and step. Without a seed such
    files fall into separate runs (one per folder), and a copy would count as a second seed."""
    out: list[tuple[Run, Run]] = []
    kept: list[Run] = []
    for run in sorted(runs, key=lambda r: (r.path.stem.startswith("last"), str(r.path))):
        twin = None
        if run.seed is None:
            for other in kept:
                same_run = (other.model, other.kernel_sizes, other.protocol, other.step, other.weights) == \
                    (run.model, run.kernel_sizes, run.protocol, run.step, run.weights)
                same_ckpt = run.checkpoint is not None and run.checkpoint == other.checkpoint
                if same_run and other.seed is None and (same_ckpt or (run.metrics == other.metrics and run.metrics)):
                    twin = other
                    break
        if twin is None:
            kept.append(run)
        else:
            out.append((run, twin))
    return out


# --- statistics -------------------------------------------------------------------------------------------
@dataclass
class Stat:
    """Mean over seeds with its 95% interval: Student's t over two or more runs (clipped to the metric's range,
    ``clipped`` says so), a single run's Wilson score interval (``kind`` "wilson"; ``se_binom`` kept for the CSV)."""

    n: int
    mean: float
    sd: float | None = None
    ci95: tuple[float, float] | None = None
    se_binom: float | None = None
    values: list[float] = field(default_factory=list)
    kind: str | None = None  # "t" (over seeds), "wilson" (a single run's accuracy), None (no interval)
    clipped: bool = False

    @property
    def error_bar(self) -> tuple[float, float] | None:
        """(below, above) the mean: the plotted 95% interval (asymmetric for Wilson and clipped intervals)."""
        if self.ci95 is None:
            return None
        return self.mean - self.ci95[0], self.ci95[1] - self.mean


def summarize(metrics: Sequence[Metric]) -> Stat:
    """Mean, sample sd (ddof 1) and 95% Student-t interval over repeats, clipped to the metric's range; for one run,
    the 95% Wilson interval of an accuracy (from its n, or a mean's effective n)."""
    values = [m.value for m in metrics]
    n = len(values)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = statistics.fmean(values)
    bounds = metrics[0].bounds
    if n == 1:
        m = metrics[0]
        ci = wilson_from_se(m.value, m.se, m.n) if bounds == (0.0, 100.0) else None
        return Stat(1, mean, se_binom=m.se, values=values, ci95=ci, kind="wilson" if ci else None)
    from scipy.stats import t

    sd = statistics.stdev(values)
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    lo, hi, clipped = clip_interval(mean - half, mean + half, bounds)
    return Stat(n, mean, sd, (lo, hi), values=values, kind="t", clipped=clipped)


@dataclass
class Row(_ModelKernel):
    """One (model, kernel size) of the table and the statistics of every metric over its runs. ``group`` tells
    apart the rows of one (model, kernel size) whose runs are not comparable ("" for the first, "data 2", ...,
    "no provenance")."""

    model: str
    kernel_sizes: tuple[int, ...] | None
    runs: list[Run]
    stats: dict[str, Stat]
    group: str = ""

    @property
    def seeds(self) -> str:
        seeds = [("?" if r.seed is None else str(r.seed)) for r in self.runs]
        return ", ".join(seeds)

    @property
    def series(self) -> str:
        """The plots' line this row belongs to: its family, and its group when it has one."""
        return self.family + (f" ({self.group})" if self.group else "")

    @property
    def label(self) -> str:
        return f"{self.model} k{self.kernel}" + (f" ({self.group})" if self.group else "")


def _fingerprint_text(fp: Mapping[str, Any]) -> str:
    classes = fp.get("num_classes")
    return (f"{fp.get('num_images'):,} images{'' if classes is None else f', {classes} classes'}, fingerprint "
            f"{str(fp.get('sha256'))[:12]}")


def comparable(a: Run, b: Run) -> list[str]:
    """Why runs ``a`` and ``b`` cannot share a row ([] when they can): provenance on one side only, another class
    count, or another data fingerprint of a benchmark both scored."""
    if (a.provenance is None) != (b.provenance is None):
        old = a if a.provenance is None else b
        return [f"{old.path} records no provenance"]
    out = []
    if a.num_classes is not None and b.num_classes is not None and a.num_classes != b.num_classes:
        out.append(f"the model's classes: {a.num_classes} vs {b.num_classes}")
    fa, fb = a.fingerprints, b.fingerprints
    for bench in sorted(set(fa) & set(fb)):
        x, y = fa[bench], fb[bench]
        if (x.get("sha256"), x.get("num_images"), x.get("num_classes")) != \
                (y.get("sha256"), y.get("num_images"), y.get("num_classes")):
            out.append(f"{bench}: {_fingerprint_text(x)} vs {_fingerprint_text(y)}")
    return out


def aggregate(runs: Sequence[Run], notes: list[str] | None = None, strict: bool = False) -> list[Row]:
    """The table's rows: runs of one (model, kernel sizes) that are ``comparable`` (first fit, in the runs' order).

    Runs that are not comparable with a row's runs start another row of the same (model, kernel sizes); each such
    split adds a note (to ``notes``) naming the files and the difference, and with ``strict`` it is an error that
    lists them all.
    """
    by_key: dict[tuple, list[list[Run]]] = {}
    split: list[str] = []
    for r in runs:
        groups = by_key.setdefault((r.model, r.kernel_sizes), [])
        for g in groups:
            if not any(comparable(r, other) for other in g):
                g.append(r)
                break
        else:
            if groups:
                first = groups[0][0]
                why = comparable(r, first) or next(w for other in groups[0] for w in [comparable(r, other)] if w)
                split.append(f"{r.model} k{r.kernel}: {r.path} is in a row of its own, not with {first.path}: "
                             f"{'; '.join(why)}")
            groups.append([r])
    if split and strict:
        raise DataError(f"{len(split)} run(s) not comparable with the other runs of their row (--strict):\n  "
                        + "\n  ".join(split))
    if notes is not None:
        notes.extend(split)
    rows = []
    for (model, ks), groups in by_key.items():
        for members, group in zip(groups, _group_names(groups)):
            keys = list(dict.fromkeys(k for r in members for k in r.metrics))
            stats = {k: summarize([r.metrics[k] for r in members if k in r.metrics]) for k in keys}
            rows.append(Row(model, ks, members, stats, group))
    return rows


def _group_names(groups: Sequence[Sequence[Run]]) -> list[str]:
    """Row tags of one (model, kernel)'s groups: "" for the first group with provenance, "data 2", "data 3", ...
    for the others; "no provenance" (numbered when several) for groups of old files, unless every group is."""
    if all(g[0].provenance is None for g in groups):
        return [""] + [f"data {i + 2}" for i in range(len(groups) - 1)]
    names, with_prov, without = [], 0, 0
    n_without = sum(g[0].provenance is None for g in groups)
    for g in groups:
        if g[0].provenance is None:
            without += 1
            names.append("no provenance" + (f" {without}" if n_without > 1 else ""))
        else:
            with_prov += 1
            names.append("" if with_prov == 1 else f"data {with_prov}")
    return names


# --- provenance and paired comparisons ----------------------------------------------------------------------
_NOTE_FIELDS = {"lk_ablate.commit": "lk_ablate commit", "lk_ablate.dirty": "uncommitted changes",
                "python": "Python", "device.type": "device", "device.name": "device name",
                "device.cpu_capability": "CPU kernels", "precision": "precision", "threads": "torch threads"}


def _field_label(name: str) -> str:
    if name in _NOTE_FIELDS:
        return _NOTE_FIELDS[name]
    if name.startswith("packages."):
        return f"{name[len('packages.'):]} version"
    if name.startswith("determinism.env."):
        return name[len("determinism.env."):]
    return name


def _get(d: Mapping[str, Any] | None, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping):
            return None
        d = d.get(part)
    return d


def provenance_notes(rows: Sequence[Row]) -> list[str]:
    """Notes on what differs between the runs of the table without making them incomparable (versions, device,
    precision, threads, determinism settings, dwconv implementation), one per field, and on runs that record no
    provenance."""
    runs = [r for row in rows for r in row.runs]
    with_prov = [r for r in runs if r.provenance is not None]
    notes = []
    fields: list[str] = []
    for r in with_prov[1:]:
        fields += [f for f in provenance_differences(with_prov[0].provenance, r.provenance) if f not in fields]
    for f in fields:
        values: dict[str, list[str]] = {}
        for r in with_prov:
            values.setdefault(str(_get(r.provenance, f)), []).append(r.label)
        listed = "; ".join(f"{v} ({', '.join(labels)})" for v, labels in values.items())
        notes.append(f"runs differ in {_field_label(f)}: {listed}; the numbers stay comparable, their last digits "
                     "may differ")
    old = [r for r in runs if r.provenance is None]
    if old:
        notes.append(f"{len(old)} run(s) record no provenance (results files written before lk_ablate recorded it): "
                     f"{', '.join(str(r.path) for r in old)}; each such row is marked and never merged with runs "
                     "that have it")
    return notes


def provenance_summary(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    """(one line describing what produced them, the runs' labels) for each distinct producer, in first-seen order."""
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(describe(r.provenance), []).append(r.label)
    return list(out.items())


def _flags(run: Run, bench: str) -> list[np.ndarray] | None:
    parts = run.per_image.get(bench)
    if not parts:
        return None
    return [unpack_bits(e["top1"], int(e["n"])) for e in parts.values()]


def pair_rows(a: Row, b: Row, bench: str, samples: int = 10_000, seed: int = 0) -> Paired | None:
    """B against A on benchmark ``bench``, image by image; None unless every run of both rows stored per-image
    results on data with one fingerprint. Several seeds: per-image correctness averaged over a row's runs."""
    fps = {_fp_key(r.fingerprints.get(bench)) for r in [*a.runs, *b.runs]}
    if len(fps) != 1 or None in fps:
        return None
    sets = []
    for row in (a, b):
        flags = [_flags(r, bench) for r in row.runs]
        if any(f is None for f in flags) or len({len(f) for f in flags}) != 1:
            return None
        if len(flags) == 1:
            sets.append(flags[0])
        else:
            sets.append([np.mean([f[i] for f in flags], axis=0) for i in range(len(flags[0]))])
    try:
        return paired_comparison(sets[0], sets[1], samples=samples, seed=seed)
    except ValueError:
        return None


def _fp_key(fp: Mapping[str, Any] | None) -> tuple | None:
    return None if not fp else (fp.get("sha256"), fp.get("num_images"), fp.get("num_classes"))


def paired_rows(rows: Sequence[Row], requested: Sequence[tuple[Row, Row]] = ()) -> list[tuple[Row, Row]]:
    """The pairs the report compares: adjacent kernel sizes within each family (and group), then ``requested``."""
    out: list[tuple[Row, Row]] = []
    series: dict[str, list[Row]] = {}
    for r in rows:
        series.setdefault(r.series, []).append(r)
    for members in series.values():
        members = sorted((r for r in members if math.isfinite(kernel_x(r.kernel_sizes))),
                         key=lambda r: (kernel_x(r.kernel_sizes), r.kernel_sizes or ()))
        out += list(zip(members, members[1:]))
    for pair in requested:
        if pair not in out:
            out.append(pair)
    return out


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


