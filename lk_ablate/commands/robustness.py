"""``lk_ablate robustness``: score any model on ImageNet-val/A/R/C/O and write its results JSON.

    lk_ablate robustness --ckpt_path checkpoints/convnext_k7/last.ckpt --fit_config configs/convnext_k7.yaml
    lk_ablate robustness --preset paper --ckpt_path RepLKNet-31B_ImageNet-1K_224.pth \\
        --model.model_name replknet_31b --data.imagenet_a /data/imagenet-a
    lk_ablate robustness --model.timm convnext_tiny.fb_in1k --data.imagenet_r /data/imagenet-r \\
        --results_path convnext_t.json

Models come from the one evaluation loader (``lk_ablate.evaluation.load_for_eval``: lk_ablate checkpoints with
raw and EMA weights, official ConvNeXt/RepLKNet weights with ``--model.model_name``, timm models with
``--model.timm``). Benchmarks and their settings come from ``--data.*``, a ``--config`` file of these options,
a shipped ``--preset`` (``paper``: ``protocol: paper``) or the RobustnessEvaluation callback of a ``lk_ablate
fit`` config (``--fit_config``, the lowest layer: every other source overrides it). Run under ``torchrun`` to
shard over processes like the callback does under DDP. The scoring itself is
:func:`lk_ablate.robustness.score.score`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base.errors import ConfigError
from ..evaluation.options import BenchmarkOptions, Precision
from ._common import evaluation_parser, model_options, parse

__all__ = ["cli_main", "fit_config_defaults", "parse_args"]

PRESETS_PACKAGE = "lk_ablate.robustness.presets"


def _parser() -> Any:
    p = evaluation_parser("lk_ablate robustness", __doc__.split("\n\n")[0], default_weights="both",
                          presets=PRESETS_PACKAGE)
    p.add_class_arguments(BenchmarkOptions, "data")
    p.add_argument("--precision", type=Precision, default="32-true",
                   help="32-true (the paper's evaluation) or bf16-mixed (autocast; logit differences in "
                        "docs/robustness.md); Lightning's names")
    p.add_argument("--fit_config", type=str | None, default=None,
                   help="a `lk_ablate fit` config: its RobustnessEvaluation callback gives benchmark defaults and its "
                        "model section the architecture of official weights (every other option overrides it)")
    p.add_argument("--results_path", type=str | None, default=None,
                   help="results JSON (default: beside the checkpoint, <stem>.robustness.json)")
    p.add_argument("--wandb", type=bool, default=False,
                   help="also add the scores to the checkpoint's W&B training run (resumed by the id the checkpoint "
                        "stores; WANDB_MODE=offline writes it locally beside the checkpoint)")
    return p


def parse_args(argv: Sequence[str]) -> Any:
    """The command's options from ``argv``: --fit_config's values as defaults under presets, --config files and
    options (parsed once to find --fit_config, then again on top of its values)."""
    parser = _parser()
    args = parse(parser, argv)
    if args.fit_config:
        from ..robustness.score import load_config

        config = load_config([args.fit_config])
        if not ("trainer" in config or "robustness" in config or "model" in config):
            raise ConfigError(f"--fit_config {args.fit_config} is not a `lk_ablate fit` config (no trainer, model or "
                              "robustness section)")
        parser.set_defaults(fit_config_defaults(config))
        args = parse(parser, argv)
    return args


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    from ..base.files import check_writable
    from ..base.results import RESULTS_SPACE, results_path, write_results_or_keep
    from ..robustness.score import format_table, score

    opts = model_options(args)
    out = Path(args.results_path) if args.results_path else (
        results_path(opts.ckpt_path) if opts.ckpt_path else Path(f"{opts.timm or opts.model_name}.robustness.json"))
    # Before hours of scoring: the results file can be written (not a folder, writable, some space free).
    check_writable(out, "results file", "choose another with --results_path FILE", need_bytes=RESULTS_SPACE,
                   lock=True)
    run = score(opts, BenchmarkOptions(**vars(args.data)), protocol=args.protocol, precision=args.precision,
                device=args.device, progress=args.progress, need_wandb_run=args.wandb)
    if run.rank == 0:
        print(format_table(run.data))  # the scores first: a file system that fails now cannot take them
        write_results_or_keep(out, run.data)
        print(f"results: {out}")
        if args.wandb:
            from ..training.wandb import log_results_to_run

            save_dir = os.environ.get("WANDB_DIR") or Path(opts.ckpt_path).parent
            run_id = log_results_to_run(run.data, run.loaded.wandb_run, seed=run.loaded.seed, save_dir=save_dir)
            print(f"W&B: added to run {run_id} ({run.loaded.wandb_run.get('project')})")
        for e in run.errors:
            print(f"FAILED {e['weights']} / {e['benchmark']} (rank {e['rank']}):\n{e['error']}", file=sys.stderr)
    return 1 if run.errors else 0


def fit_config_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Option defaults from a fit config: its RobustnessEvaluation settings and its model section."""
    from ..robustness.score import robustness_settings

    out: dict[str, Any] = {}
    for key, value in robustness_settings(config).items():
        out[key if key in ("weights", "protocol", "precision") else f"data.{key}"] = value
    model = config.get("model")
    if isinstance(model, Mapping):
        cm = dict(model.get("init_args") or model)
        for key in ("model_name", "kernel_size", "num_classes", "model_kwargs"):
            if cm.get(key) is not None:
                out[f"model.{key}"] = cm[key]
    return out
