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

With ``--wandb.project P`` (default ``$WANDB_PROJECT``) the same tables and plots are logged to a W&B run
(job type ``report``); ``--wandb.project null`` never logs. docs/report.md has the details.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._common import command_parser, parse

__all__ = ["WandbOptions", "cli_main", "parse_args"]


@dataclass
class WandbOptions:
    """Also log the report to a W&B run (job type ``report``).

    Args:
        project: W&B project (default: $WANDB_PROJECT; null: no W&B)
        entity: W&B entity (default: yours)
        group: W&B group (default: <family>-kernel when every run is of one family, else report)
    """

    project: str | None = None
    entity: str | None = None
    group: str | None = None


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
    return 0
