"""The report as a W&B run (job type ``report``): the table, every run's values and the plots."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .runs import Row, Run, analysis_columns, table_columns

__all__ = ["log_to_wandb"]


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
