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
from ..base.lazy import lazy_exports

__all__ = ["Metric", "Row", "Run", "Stat", "aggregate", "bench_label", "benchmark_metrics", "build_report",
           "column_label", "find_results", "load_run", "load_runs", "log_to_wandb", "plot_analyses", "plot_metrics",
           "summarize", "tagged", "write_csv", "write_markdown", "write_runs_csv"]
__getattr__, __dir__ = lazy_exports(__name__, {
    ".build": ["build_report"],
    ".render": ["bench_label", "column_label", "plot_analyses", "plot_metrics", "write_csv", "write_markdown",
                "write_runs_csv"],
    ".runs": ["Metric", "Row", "Run", "Stat", "aggregate", "benchmark_metrics", "find_results", "load_run", "load_runs",
              "summarize", "tagged"],
    ".wandb_log": ["log_to_wandb"]}, globals())
