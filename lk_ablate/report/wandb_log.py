"""The report as a W&B run (job type ``report``): the table, every run's values, the plots and native W&B charts."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base.metric_keys import REPORT_CHART_PREFIX, REPORT_PLOT_PREFIX, REPORT_RUNS, REPORT_TABLE
from .render import column_label
from .runs import Row, Run, analysis_columns, kernel_x, table_columns

__all__ = ["chart_series", "log_to_wandb"]

KERNEL_AXIS = "kernel size (largest stage)"


def chart_series(rows: Sequence[Row], key: str) -> tuple[list[list[float]], list[list[float]], list[str]]:
    """One line per ablation family (as the PNGs draw them): x the largest stage kernel, y the mean over seeds,
    sorted by x; rows without the metric or without known kernel sizes are left out. Returns (xs, ys, families)."""
    xs: list[list[float]] = []
    ys: list[list[float]] = []
    families: list[str] = []
    for fam in dict.fromkeys(r.family for r in rows):
        pts = sorted((kernel_x(r.kernel_sizes), r.stats[key].mean) for r in rows
                     if r.family == fam and key in r.stats)
        pts = [(x, y) for x, y in pts if math.isfinite(x)]
        if pts:
            xs.append([x for x, _ in pts])
            ys.append([y for _, y in pts])
            families.append(fam)
    return xs, ys, families


def log_to_wandb(rows: Sequence[Row], runs: Sequence[Run], plots: Mapping[str, Path], project: str,
                 entity: str | None = None, group: str | None = None, name: str | None = None,
                 save_dir: str | None = None) -> str:
    """Log the table (``report/table``), every run's values (``report/runs``), the PNGs (``report/plots/<name>``)
    and, per table column, a native W&B line chart of the metric against kernel size, one line per family
    (``report/charts/<column>``, dots as ``_`` as in ``metric_keys.analysis_key``); returns the run id."""
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
        charts = {}
        for c in cols:
            xs, ys, keys = chart_series(rows, c)
            if xs:
                charts[f"{REPORT_CHART_PREFIX}/{c.replace('.', '_')}"] = wandb.plot.line_series(
                    xs=xs, ys=ys, keys=keys, title=column_label(c), xname=KERNEL_AXIS)
        run.log({REPORT_TABLE: wandb.Table(columns=header, data=data),
                 REPORT_RUNS: wandb.Table(columns=["model", "kernel", "seed", "weights", "metric", "value",
                                                   "se_binom"], data=per_run),
                 **{f"{REPORT_PLOT_PREFIX}/{p.stem}": wandb.Image(str(p)) for p in plots.values()},
                 **charts})
        return run.id
    finally:
        run.finish()
