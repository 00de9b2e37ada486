"""One report: read the runs, summarize them, write the files (and the W&B run)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..base.errors import DataError
from .receptive import plot_receptive
from .render import plot_analyses, plot_metrics, write_csv, write_markdown, write_runs_csv
from .runs import aggregate, load_runs
from .wandb_log import log_to_wandb

__all__ = ["build_report"]


def build_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, weights: str = "auto",
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
    receptive_plots, receptive_notes = plot_receptive(runs, rows, out)  # ERF heat maps, area ratio, shape bias
    plots.update(receptive_plots)
    notes = [*notes, *receptive_notes]
    written = {"markdown": write_markdown(out / "report.md", rows, runs, notes, plots, weights, [str(p) for p in paths]),
               "csv": write_csv(out / "report.csv", rows), "runs_csv": write_runs_csv(out / "runs.csv", runs),
               "plots": list(plots.values()), "rows": rows, "runs": runs, "notes": notes}
    if wandb_project:
        written["wandb_run_id"] = log_to_wandb(rows, runs, plots, wandb_project, wandb_entity, wandb_group,
                                               save_dir=wandb_dir)
    return written
