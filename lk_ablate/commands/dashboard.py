"""``lk_ablate dashboard``: the W&B dashboard of a kernel-size ablation, as code.

    lk_ablate dashboard --wandb.project lk_ablate                       # create, or update in place
    lk_ablate dashboard --wandb.project lk_ablate --dry_run true        # the spec as JSON, no network
    lk_ablate dashboard --wandb.entity my-team --wandb.project lk_ablate --wandb.group [convnext_tiny-kernel] \\
        --name "ConvNeXt-T kernels" --report_path reports/kernel_ablation/report.md

Saves a workspace view (sections Training, Robustness vs kernel size, ImageNet-C by corruption, Analyses, Runs) and
a W&B Report of the same panels with the ablation table, built from the keys the runs log
(lk_ablate/base/metric_keys.py). A second call with the same --name updates both in place. docs/report.md has the
details.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..base.errors import ConfigError, DataError
from ..base.files import atomic_write_text
from ..base.metric_keys import BENCHMARK_METRICS, IMAGENET_BENCHMARKS
from ..report.labels import DASHBOARD_NAME
from ._common import command_parser, parse

__all__ = ["WandbDashboardOptions", "cli_main", "parse_args", "sweep_command"]

DEFAULT_OUTPUT = "dashboard.json"


@dataclass
class WandbDashboardOptions:
    """Where the runs are, and which of them the dashboard shows.

    Args:
        entity: W&B entity (default: $WANDB_ENTITY / the W&B settings, else your login's default entity)
        project: W&B project (default: $WANDB_PROJECT / the W&B settings)
        group: only runs of these W&B groups, e.g. [convnext_tiny-kernel,replknet_31b-kernel] (default: all)
        tags: only runs with at least one of these tags (default: no tag filter)
        job_type: only runs of this job type (default: train, the framework's training runs; null: every run)
    """

    entity: str | None = None
    project: str | None = None
    group: str | list[str] | None = None
    tags: str | list[str] | None = None
    job_type: str | None = "train"


def _parser() -> Any:
    p = command_parser("lk_ablate dashboard", __doc__.split("\n\n")[0])
    p.add_class_arguments(WandbDashboardOptions, "wandb")
    p.add_argument("--name", type=str, default=DASHBOARD_NAME,
                   help="the view's name and the report's title (the same name updates the same view and report)")
    p.add_argument("--benchmarks", type=list[str], default=list(IMAGENET_BENCHMARKS),
                   help=f"benchmarks whose robustness panels are drawn; known: {', '.join(BENCHMARK_METRICS)} "
                        "(the demo: [fashion_mnist,fashion_mnist_c])")
    p.add_argument("--weights", type=Literal["both", "ema", "raw"], default="both",
                   help="robustness sections for both weight sets, or only ema / raw")
    p.add_argument("--report", type=bool, default=True, help="also create/update the W&B Report")
    p.add_argument("--report_path", type=str | None, default=None,
                   help="report.md of `lk_ablate report`: its tables become a block of the W&B Report")
    p.add_argument("--dry_run", type=bool, default=False,
                   help="write the full spec as JSON to --output_path and list it; no network, no W&B login")
    p.add_argument("--output_path", type=str | None, default=None,
                   help=f"where the spec goes (dry run: default {DEFAULT_OUTPUT}; online: the spec as sent, with the "
                        "looked-up ids, when given)")
    return p


def parse_args(argv: Sequence[str]) -> Any:
    return parse(_parser(), argv)


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def dashboard_options(args: Any, entity: str | None, project: str) -> dict[str, Any]:
    """The keyword arguments of ``report.dashboard.DashboardOptions`` from the parsed options."""
    markdown = None
    if args.report_path:
        path = Path(args.report_path)
        if not path.is_file():
            raise DataError(f"--report_path {path}: no such file (the report.md that `lk_ablate report` writes)")
        markdown = path.read_text()
    return {"entity": entity, "project": project, "name": args.name, "groups": _as_list(args.wandb.group),
            "tags": _as_list(args.wandb.tags), "job_type": args.wandb.job_type, "benchmarks": args.benchmarks,
            "weights": args.weights, "report": args.report, "report_markdown": markdown}


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    from ..report import dashboard as dash
    from ..report import dashboard_wandb as online

    defaults = online.settings_defaults()
    project = args.wandb.project or defaults["project"]
    if not project:
        raise ConfigError("name the W&B project: --wandb.project P (or set WANDB_PROJECT)")
    entity = args.wandb.entity or defaults["entity"]
    if args.dry_run:
        opts = dash.DashboardOptions(**dashboard_options(args, entity or dash.PLACEHOLDERS["entity"], project))
        sent = dash.spec(dash.build_dashboard(opts))
        out = Path(args.output_path or DEFAULT_OUTPUT)
        atomic_write_text(out, json.dumps(sent, indent=1) + "\n")
        print(dash.listing(sent))
        print(f"spec: {out} (dry run: nothing sent; the values only W&B knows are placeholders)")
        return 0
    online.check_online()  # before reading any file: nothing is half-made
    kwargs = dashboard_options(args, entity, project)
    dash.DashboardOptions(**{**kwargs, "entity": entity or "-"})  # every option error before any request
    result = online.save_dashboard(kwargs, on_step=lambda msg: print(f"W&B: {msg}", file=sys.stderr))
    print(f"view {result.view}: {result.view_url}")
    if result.report_url:
        print(f"report {result.report}: {result.report_url}")
    print(f"{result.runs} run(s) selected")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output_path:
        atomic_write_text(Path(args.output_path), json.dumps(result.sent, indent=1) + "\n")
        print(f"spec: {args.output_path}")
    return 0


# --- the sweep's dashboard command (slurm/submit.sh) ----------------------------------------------------------------
def sweep_command(configs: Sequence[str], fit_args: Sequence[str] = ()) -> str | None:
    """The ``lk_ablate dashboard`` command(s) for the W&B project(s) and groups a sweep of ``lk_ablate fit`` configs
    logs to, each config resolved as ``fit --print_config`` resolves it (stacked YAML, ``fit_args``), the group as
    the CLI names it; None when no config logs to W&B."""
    import os
    import shlex

    from ..training.wandb import run_group, wandb_logger_args

    where: dict[tuple[str | None, str], list[str]] = {}
    for config in configs:
        cfg = _fit_config(config, fit_args)
        args = wandb_logger_args(cfg)
        if args is None:
            continue
        # WandbLogger's own defaults when the config names no project / entity
        key = (args.get("entity") or None, args.get("project") or os.environ.get("WANDB_PROJECT") or "lightning_logs")
        group = args.get("group") or run_group((cfg.get("model") or {}).get("model_name") or "convnext_tiny")
        if group not in where.setdefault(key, []):
            where[key].append(group)
    lines = []
    for (entity, project), groups in where.items():
        words = ["lk_ablate", "dashboard", *(["--wandb.entity", entity] if entity else []), "--wandb.project", project,
                 "--wandb.group", f"[{','.join(groups)}]"]
        lines.append(" ".join(shlex.quote(w) for w in words))
    return "\n".join(lines) or None


def _fit_config(config: str, fit_args: Sequence[str]) -> dict[str, Any]:
    """``lk_ablate fit --config CONFIG FIT_ARGS --print_config`` as a dict (parsed only: nothing is built)."""
    import contextlib
    import io

    import yaml

    from ..lightning_cli import build_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            build_cli(["--config", config, *fit_args, "--print_config"], run=False)  # fit's parser, no subcommand
        except SystemExit as e:
            if e.code not in (0, None):
                raise ConfigError(f"{config}: `lk_ablate fit --config {config} --print_config` failed") from e
    return yaml.safe_load(out.getvalue()) or {}


def print_sweep_command(argv: Sequence[str]) -> int:
    """``CONFIG... [-- FIT_ARGS...]``: print the sweep's dashboard command (slurm/submit.sh runs this)."""
    argv = list(argv)
    configs, fit_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    command = sweep_command(configs, fit_args)
    if command:
        print(command)
    return 0


if __name__ == "__main__":  # slurm/submit.sh: python -m lk_ablate.commands.dashboard CONFIG... -- FIT_ARGS...
    sys.exit(print_sweep_command(sys.argv[1:]))
