"""The kernel-size ablation report (shaped like the paper's Table 7) and its plots, from results files only.

Reads every ``*.robustness.json`` under the given folders (or the given files) with
:func:`lk_ablate.base.results.read_results`, never W&B. One results file per run is used: the latest
(highest global step) of each run, a run being (model, kernel sizes, seed) when the file records its seed
(``settings.seed``) and its folder otherwise. Runs of one model and kernel size that differ in seed are repeats.

- :mod:`.runs`: finding and reading the files into :class:`Run`\\ s, and the statistics over seeds (:class:`Stat`,
  :func:`summarize`, :func:`aggregate` into table :class:`Row`\\ s);
- :mod:`.render`: ``report.md``, ``report.csv``, ``runs.csv`` and the PNGs;
- :mod:`.wandb_log`: the same tables and plots as a W&B run (job type ``report``);
- :mod:`.build`: :func:`build_report`, all of the above for one output folder.

The command line (``lk_ablate report``) is :mod:`lk_ablate.commands.report`; docs/report.md describes the outputs.
"""
from .build import build_report
from .render import bench_label, column_label, plot_analyses, plot_metrics, write_csv, write_markdown, write_runs_csv
from .runs import (Metric, Row, Run, Stat, aggregate, benchmark_metrics, find_results, load_run, load_runs, summarize,
                   tagged)
from .wandb_log import log_to_wandb

__all__ = ["Metric", "Row", "Run", "Stat", "aggregate", "bench_label", "benchmark_metrics", "build_report",
           "column_label", "find_results", "load_run", "load_runs", "log_to_wandb", "plot_analyses", "plot_metrics",
           "summarize", "tagged", "write_csv", "write_markdown", "write_runs_csv"]
