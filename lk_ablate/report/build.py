"""One report: read the runs, summarize them, write the files (and the W&B run)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..base.errors import ConfigError, DataError
from .receptive import plot_receptive
from .render import plot_analyses, plot_metrics, write_csv, write_markdown, write_runs_csv
from .runs import Row, aggregate, load_runs, pair_rows, paired_rows, provenance_notes
from .wandb_log import log_to_wandb

__all__ = ["build_report"]


def build_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, weights: str = "auto",
                 wandb_project: str | None = None, wandb_entity: str | None = None,
                 wandb_group: str | None = None, wandb_dir: str | None = None, strict: bool = False,
                 pairs: Sequence[Sequence[str | int]] = (), bootstrap_samples: int = 10_000) -> dict[str, Any]:
    """Read the runs, write report.md / report.csv / runs.csv / PNGs into ``out``; returns what was written.

    ``strict``: a results file that fails validation, or a run that is not comparable with the others of its
    (model, kernel size) (another data fingerprint or class count), is an error (by default: skipped, or put in a
    row of its own, with a note). ``pairs``: extra paired comparisons, each ``(A, B)`` with a row named
    ``model/kernel`` or by its kernel label alone when that is unambiguous (``("convnext_tiny/13",
    "convnext_tiny/31")``, ``(13, 31)``); adjacent kernel sizes of each family are always compared.
    """
    runs, notes = load_runs(paths, weights, strict=strict)
    if not runs:
        raise DataError(f"no results file under {', '.join(map(str, paths))} holds {weights} weights")
    rows = aggregate(runs, notes, strict=strict)
    requested = [_parse_pair(p, rows) for p in pairs]  # before anything is written: a typo stops at once
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes += provenance_notes(rows)
    compared = []
    for a, b in paired_rows(rows, requested):
        for bench in sorted(set(a.runs[0].per_image) & set(b.runs[0].per_image)):
            p = pair_rows(a, b, bench, samples=bootstrap_samples)
            if p is not None:
                compared.append((a, b, bench, p))
    plots = plot_metrics(rows, out)
    plots.update(plot_analyses(runs, out))
    receptive_plots, receptive_notes = plot_receptive(runs, rows, out)  # ERF heat maps, area ratio, shape bias
    plots.update(receptive_plots)
    notes = [*notes, *receptive_notes]
    written = {"markdown": write_markdown(out / "report.md", rows, runs, notes, plots, weights, [str(p) for p in paths],
                                          compared, bootstrap_samples),
               "csv": write_csv(out / "report.csv", rows), "runs_csv": write_runs_csv(out / "runs.csv", runs),
               "plots": list(plots.values()), "rows": rows, "runs": runs, "notes": notes, "pairs": compared}
    if wandb_project:
        written["wandb_run_id"] = log_to_wandb(rows, runs, plots, wandb_project, wandb_entity, wandb_group,
                                               save_dir=wandb_dir)
    return written


def _parse_pair(pair: Sequence[str | int], rows: Sequence[Row]) -> tuple[Row, Row]:
    """``(A, B)`` -> the two rows it names (see ``build_report``); a name that matches no row, or several, is a
    ConfigError listing the rows."""
    names = ", ".join(f"{r.model}/{r.kernel}" for r in rows if not r.group)
    text = "[" + ",".join(map(str, pair)) + "]"
    if isinstance(pair, (str, bytes)) or len(pair) != 2:
        raise ConfigError(f"--pairs {text}: expected two rows, e.g. [[convnext_tiny/13,convnext_tiny/31]] (rows: "
                          f"{names})")
    found = []
    for name in pair:
        name = str(name).strip()
        model, _, kernel = name.rpartition("/")
        match = [r for r in rows if r.kernel == kernel and (not model or r.model == model) and not r.group]
        if len(match) != 1:
            why = "matches no row" if not match else "matches several rows (say model/kernel)"
            raise ConfigError(f"--pairs {text}: {name!r} {why}; rows: {names}")
        found.append(match[0])
    return found[0], found[1]
