"""``lk_ablate robustness``: score any model on ImageNet-val/A/R/C/O and write its results JSON.

    lk_ablate robustness --model.ckpt checkpoints/convnext_k7/last.ckpt --fit_config configs/convnext_k7.yaml
    lk_ablate robustness --model.ckpt RepLKNet-31B_ImageNet-1K_224.pth --model.name replknet_31b \\
        --data.imagenet_a /data/imagenet-a --preset paper
    lk_ablate robustness --model.timm convnext_tiny.fb_in1k --data.imagenet_r /data/imagenet-r --results convnext_t.json

Models come from the one evaluation loader (``lk_ablate.evaluation.load_for_eval``: lk_ablate checkpoints with
raw and EMA weights, official ConvNeXt/RepLKNet weights with ``--model.name``, timm models with
``--model.timm``). Benchmarks and their settings come from ``--data.*``, a ``--config`` file of these options,
a shipped ``--preset`` (``paper``: ``protocol: paper``) or the RobustnessEvaluation callback of a ``lk_ablate
fit`` config (``--fit_config``); the later source wins. Run under ``torchrun`` to shard over processes like the
callback does under DDP. The scoring itself is :func:`lk_ablate.robustness.score.score`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..base.errors import ConfigError
from ..base.files import check_writable
from ..base.results import RESULTS_SPACE, results_path, write_results_or_keep
from ..evaluation.options import ModelOptions
from ..robustness.score import BenchmarkOptions, format_table, load_config, robustness_settings, score
from ._common import base_parser, check_old_evaluation_spellings, config_files, parse, preset_argv

__all__ = ["cli_main", "fit_config_defaults", "parse_args"]

PRESETS_PACKAGE = "lk_ablate.robustness.presets"


def _parser() -> Any:
    from jsonargparse import ActionYesNo

    p = base_parser("lk_ablate robustness", __doc__.split("\n\n")[0], default_weights="both")
    p.add_class_arguments(BenchmarkOptions, "data")
    p.add_argument("--precision", type=Literal["fp32", "bf16"], default="fp32",
                   help="fp32 (the paper's evaluation) or bf16 (autocast; logit differences in docs/robustness.md)")
    p.add_argument("--fit_config", type=str | None, default=None,
                   help="a `lk_ablate fit` config: its RobustnessEvaluation callback gives benchmark defaults and its "
                        "model section the architecture of official weights")
    p.add_argument("--results", type=str | None, default=None,
                   help="results JSON (default: beside the checkpoint, <stem>.robustness.json)")
    p.add_argument("--progress", action=ActionYesNo, default=False, help="show progress bars")
    p.add_argument("--wandb", action=ActionYesNo, default=False,
                   help="also add the scores to the checkpoint's W&B training run (resumed by the id the checkpoint "
                        "stores; WANDB_MODE=offline writes it locally beside the checkpoint)")
    return p


def parse_args(argv: Sequence[str]) -> Any:
    """The command's options from ``argv`` (presets, --config files, --fit_config defaults, options)."""
    check_old_evaluation_spellings(argv)
    argv = preset_argv(argv, PRESETS_PACKAGE)
    _refuse_fit_configs(config_files(argv))
    parser = _parser()
    fit_config = _fit_config_arg(argv)
    if fit_config:
        parser.set_defaults(fit_config_defaults(load_config([fit_config])))
    return parse(parser, argv)


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    opts = ModelOptions(**vars(args.model))
    out = Path(args.results) if args.results else (
        results_path(opts.ckpt) if opts.ckpt else Path(f"{opts.timm or opts.name}.robustness.json"))
    # Before hours of scoring: the results file can be written (not a folder, writable, some space free).
    check_writable(out, "results file", "choose another with --results FILE", need_bytes=RESULTS_SPACE, lock=True)
    run = score(opts, BenchmarkOptions(**vars(args.data)), protocol=args.protocol, precision=args.precision,
                device=args.device, progress=args.progress, need_wandb_run=args.wandb)
    if run.rank == 0:
        print(format_table(run.data))  # the scores first: a file system that fails now cannot take them
        write_results_or_keep(out, run.data)
        print(f"results: {out}")
        if args.wandb:
            from ..training.wandb import log_results_to_run

            save_dir = os.environ.get("WANDB_DIR") or Path(opts.ckpt).parent
            run_id = log_results_to_run(run.data, run.loaded.wandb_run, seed=run.loaded.seed, save_dir=save_dir)
            print(f"W&B: added to run {run_id} ({run.loaded.wandb_run.get('project')})")
        for e in run.errors:
            print(f"FAILED {e['weights']} / {e['benchmark']} (rank {e['rank']}):\n{e['error']}", file=sys.stderr)
    return 1 if run.errors else 0


# --- fit configs -------------------------------------------------------------------------------------------
def _fit_config_arg(argv: Sequence[str]) -> str | None:
    found = None
    for i, a in enumerate(argv):
        if a == "--fit_config" and i + 1 < len(argv):
            found = argv[i + 1]
        elif a.startswith("--fit_config="):
            found = a.split("=", 1)[1]
    return found


def _refuse_fit_configs(paths: Sequence[str]) -> None:
    import yaml

    for path in paths:
        p = Path(path)
        if not p.is_file():
            continue  # jsonargparse names the missing file
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(data, Mapping) and ("trainer" in data or "robustness" in data):
            raise ConfigError(f"{path} is a `lk_ablate fit` config: pass it as --fit_config {path} (--config takes "
                              f"this command's own options; see --print_config)")


def fit_config_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Option defaults from a fit config: its RobustnessEvaluation settings and its model section."""
    out: dict[str, Any] = {}
    for key, value in robustness_settings(config).items():
        out[{"weights": "model.weights", "protocol": "protocol", "precision": "precision"}.get(key, f"data.{key}")] \
            = value
    model = config.get("model")
    if isinstance(model, Mapping):
        cm = dict(model.get("init_args") or model)
        for src, dst in (("model_name", "name"), ("kernel_size", "kernel_size"), ("num_classes", "num_classes"),
                         ("model_kwargs", "kwargs")):
            if cm.get(src) is not None:
                out[f"model.{dst}"] = cm[src]
    return out
