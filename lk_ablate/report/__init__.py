"""The kernel-size ablation report (shaped like the paper's Table 7) and its plots, from results files only.

Reads every ``*.robustness.json`` under the given folders (or the given files) with
:func:`lk_ablate.base.results.read_results`, never W&B. One results file per run is used: the latest
(highest global step) of each run, a run being (model, kernel sizes, seed) when the file records its seed
(``settings.seed``) and its folder otherwise. Runs of one model and kernel size that differ in seed are repeats.

- :mod:`.runs`: finding and reading the files into :class:`Run`\\ s, and the statistics over seeds (:class:`Stat`,
  :func:`summarize`, :func:`aggregate` into table :class:`Row`\\ s);
- :mod:`.render`: ``report.md``, ``report.csv``, ``runs.csv`` and the PNGs;
- :mod:`.wandb_log`: the same tables and plots as a W&B run (job type ``report``);
- :mod:`.build`: :func:`build_report`, all of the above for one output folder;
- :mod:`.dashboard`: the W&B dashboard as code (a saved workspace view and a W&B Report) and its dry-run spec;
  :mod:`.dashboard_wandb`: saving it through the W&B API (``lk_ablate dashboard``).

The command line (``lk_ablate report``) is :mod:`lk_ablate.commands.report`; docs/report.md describes the outputs.
Names are imported on first use, so ``lk_ablate dashboard`` (spec building only) does not pay for torch and
matplotlib, which the tables and plots need.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build": ("build_report",),
    "render": ("bench_label", "column_label", "plot_analyses", "plot_metrics", "write_csv", "write_markdown",
               "write_runs_csv"),
    "runs": ("Metric", "Row", "Run", "Stat", "aggregate", "benchmark_metrics", "find_results", "load_run", "load_runs",
             "summarize", "tagged"),
    "wandb_log": ("log_to_wandb",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
