"""``lk_ablate report RUNS_DIR...``: the kernel-size ablation table (shaped like the paper's Table 7) and plots.

Reads every ``*.robustness.json`` under the given folders (or the given files), never W&B: the latest results file
of each run; runs of one model and kernel size that differ in seed are repeats. A results file that fails
validation is skipped with a note naming it (``--strict``: an error).

Outputs in ``--output_dir``: ``report.md`` (one row per (model, kernel size) and comparable data, a column per
benchmark metric present, each cell the mean over seeds with the sample sd and a 95% Student-t interval, or a single
run's 95% Wilson interval; then top-1 per corruption, the analyses' scalar summaries, paired comparisons of adjacent
kernel sizes on the same images (``--pairs`` adds others), the runs and their provenance), ``report.csv`` (the same
table), ``runs.csv`` (every value of every run) and the PNGs (each metric against kernel size, one line per
architecture). Runs whose data differ (fingerprint, class count) are never averaged together: they get rows of
their own, with a note (``--strict``: an error).

With ``--wandb.project P`` (default ``$WANDB_PROJECT``) the same tables and plots, and a native W&B chart of every
metric against kernel size, are logged to a W&B run (job type ``report``); ``--wandb.project null`` never logs.
``--wandb.dashboard true`` also creates or updates the project's dashboard (``lk_ablate dashboard``) with this
report's table. docs/report.md has the details.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..base.errors import ConfigError
from ._common import command_parser, parse

__all__ = ["WandbOptions", "cli_main", "parse_args"]


@dataclass
class WandbOptions:
    """Also log the report to a W&B run (job type ``report``).

    Args:
        project: W&B project (default: $WANDB_PROJECT; null: no W&B)
        entity: W&B entity (default: yours)
        group: W&B group (default: <family>-kernel when every run is of one family, else report)
        dashboard: also create or update the project's W&B dashboard (`lk_ablate dashboard`) with this table
    """

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    dashboard: bool = False


def _parser() -> Any:
    p = command_parser("lk_ablate report", __doc__)
    p.add_argument("runs", type=str, nargs="+", metavar="RUNS_DIR",
                   help="folders searched for *.robustness.json (or results files)")
    p.add_argument("--output_dir", type=str, default="report", help="output folder")
    p.add_argument("--weights", type=Literal["auto", "raw", "ema"], default="auto",
                   help="weight set of each run (auto: EMA where scored, else raw)")
    p.add_argument("--strict", type=bool, default=False,
                   help="stop on a results file with bad values, or on a run whose data (fingerprint, class count) "
                        "differs from the other runs of its row (default: skip it, or give it its own row, with a "
                        "note naming it)")
    p.add_argument("--pairs", type=list[list[str | int]], default=[],
                   help="paired comparisons besides adjacent kernel sizes, e.g. [[convnext_tiny/13,convnext_tiny/31]] "
                        "or [[3,13]] (rows named model/kernel, or by kernel when unambiguous)")
    p.add_argument("--bootstrap_samples", type=int, default=10_000,
                   help="resamples of the paired bootstrap intervals")
    p.add_class_arguments(WandbOptions, "wandb")
    p.set_defaults({"wandb.project": os.environ.get("WANDB_PROJECT") or None})
    return p


def parse_args(argv: Sequence[str]) -> Any:
    return parse(_parser(), argv)


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    api = None
    if args.wandb.dashboard:  # every W&B problem before the report is built
        if not args.wandb.project:
            raise ConfigError("--wandb.dashboard true needs the W&B project: --wandb.project P (or set WANDB_PROJECT)")
        from ..report.dashboard_wandb import check_online, connect

        check_online()
        api = connect()
    from ..report import build_report

    with warnings.catch_warnings():  # skipped files are printed below, one "note:" line each
        warnings.filterwarnings("ignore", message=r"skipped \d+ bad results file")
        written = build_report(args.runs, args.output_dir, args.weights, args.wandb.project, args.wandb.entity,
                               args.wandb.group, strict=args.strict, pairs=args.pairs,
                               bootstrap_samples=args.bootstrap_samples)
    rows = written["rows"]
    print(f"{len(written['runs'])} run(s) in {len(rows)} (model, kernel) row(s) -> {written['markdown']}, "
          f"{written['csv']}, {len(written['plots'])} plot(s)")
    for note in written["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if api is not None:
        _dashboard(args, written, api)
    return 0


def _dashboard(args: Any, written: dict[str, Any], api: Any) -> None:
    """The project's dashboard with this report's table; its robustness panels for the benchmarks the report has."""
    from ..base.metric_keys import BENCHMARK_METRICS, IMAGENET_BENCHMARKS
    from ..report.dashboard_wandb import save_dashboard
    from ..report.runs import table_columns

    present = {c.split("/")[0] for c in table_columns(written["rows"])}
    benchmarks = [b for b in BENCHMARK_METRICS if b in present] or list(IMAGENET_BENCHMARKS)
    result = save_dashboard({"entity": args.wandb.entity, "project": args.wandb.project, "benchmarks": benchmarks,
                             "report_markdown": written["markdown"].read_text()}, api=api,
                            on_step=lambda msg: print(f"W&B: {msg}", file=sys.stderr))
    print(f"dashboard view {result.view}: {result.view_url}")
    if result.report_url:
        print(f"dashboard report {result.report}: {result.report_url}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
