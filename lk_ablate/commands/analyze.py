"""``lk_ablate analyze NAME [options]``: run one of the paper's analyses (or ``all`` that a config names) on one model.

    lk_ablate analyze occlusion --preset paper --ckpt_path runs/convnext_k31/last.ckpt \\
        --data.imagenet_val /data/imagenet/val --occlusion.dino_path /w/dino_deitsmall16_pretrain.pth
    lk_ablate analyze lesion --preset paper_lesion_replknet --model.model_name replknet_31b \\
        --ckpt_path RepLKNet-31B_ImageNet-1K_224.pth --data.imagenet_val /data/imagenet/val --lesion.samples 3
    lk_ablate analyze all --config my_analyses.yaml --print_config

Each analysis is a subcommand: ``lk_ablate analyze --help`` lists them, ``lk_ablate analyze NAME --help`` shows that
analysis's options only. Options follow ``lk_ablate robustness`` (``--ckpt_path``, ``--weights``, ``--model.*``,
``--data.*``, ``--protocol``, ``--results_path``); the analysis's own options are a group named after it
(``--occlusion.levels [0.1,0.5]``), parsed from its config dataclass. ``--preset NAME`` applies a shipped preset
(lk_ablate/analysis/presets/NAME.yaml; ``paper``: the paper's settings and ``protocol: paper``) where it stands,
like ``--config``; its sections of other analyses are left out. ``all`` runs the analyses whose sections its
--config/--preset files or options set (a section counts when it sets at least one option: jsonargparse's parse
without defaults tells which).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.configs import CATALOGUE, PRESETS_PACKAGE, add_section_arguments
from ..base.errors import ConfigError
from ..evaluation.options import DataOptions
from ._common import error_line, evaluation_parser, model_options

__all__ = ["ALL", "AnalysisDataOptions", "cli_main", "parse_args", "parser", "sections_of"]

ALL = "all"


@dataclass
class AnalysisDataOptions(DataOptions):
    """The validation images the analyses read.

    Args:
        subset_size: use a seeded random subset of this many validation images (None: all).
        subset_seed: the subset's seed.
    """

    subset_size: int | None = None
    subset_seed: int = 0


def _analysis_parser(name: str) -> Any:
    """The options of ``lk_ablate analyze NAME`` (``all``: every analysis's section)."""
    summary = CATALOGUE[name].help if name != ALL else "the analyses that the --config/--preset files or options name"
    p = evaluation_parser(f"lk_ablate analyze {name}", summary, default_weights="auto", presets=PRESETS_PACKAGE,
                          optional_groups=list(CATALOGUE))
    p.add_class_arguments(AnalysisDataOptions, "data")
    p.add_argument("--results_path", type=str | None, default=None,
                   help="results JSON to store into (default: the checkpoint's <stem>.robustness.json beside it, "
                        "shared with `lk_ablate robustness`; created when missing)")
    p.add_argument("--output_dir", type=str | None, default=None,
                   help="folder for the plots (default: beside --results_path)")
    p.add_argument("--wandb", type=bool, default=False,
                   help="also put the analyses' scalar summaries (analysis/<name>/<scalar>) into the checkpoint's W&B "
                        "training run (resumed by the id the checkpoint stores; WANDB_MODE=offline writes it locally "
                        "beside the checkpoint)")
    add_section_arguments(p, None if name == ALL else [name])
    return p


def parser(only: str | None = None, listing: bool = False) -> Any:
    """``lk_ablate analyze`` with one subcommand per analysis and ``all``. ``only``: build that subcommand's options
    alone (the one a command line names); ``listing``: the subcommands without their options (``analyze --help``
    and an unknown name list them, and building all eleven parsers would double the wait)."""
    top = top_parser()
    add_subcommands(top, only, listing)
    return top


def top_parser() -> Any:
    from jsonargparse import ArgumentParser

    return ArgumentParser(prog="lk_ablate analyze", description=__doc__.split("\n\n")[0], exit_on_error=False)


def add_subcommands(top: Any, only: str | None = None, listing: bool = False) -> None:
    """The analyses (and ``all``) as subcommands of ``top`` (jsonargparse wants a nested parser added to its parent
    before its own subcommands: ``lk_ablate --print_completion`` adds ``top`` first)."""
    from jsonargparse import ArgumentParser

    sub = top.add_subcommands(required=True, dest="analysis")
    helps = {**{n: e.help for n, e in CATALOGUE.items()},
             ALL: "the analyses its --config/--preset files or options name"}
    for name, help_ in helps.items():
        if only is None or name == only:
            sub.add_subcommand(name, ArgumentParser(prog=f"lk_ablate analyze {name}") if listing
                               else _analysis_parser(name), help=help_)


def parse_args(argv: Sequence[str]) -> tuple[str, Any, list[str]]:
    """(the analysis or ``all``, its options, the sections that files or options set: what ``all`` runs)."""
    import argparse

    argv = list(argv)
    chosen = argv[0] if argv and argv[0] in [*CATALOGUE, ALL] else None
    p = parser(only=chosen, listing=chosen is None)
    where = f"lk_ablate analyze {chosen}" if chosen else "lk_ablate analyze"
    try:
        ns = p.parse_args(argv)
        name = ns.analysis
        given = p.parse_args(argv, defaults=False)[name]  # only what files and options set
    except argparse.ArgumentError as e:
        raise error_line(e, where, chosen) from e
    named = [n for n in CATALOGUE if given.get(n) is not None]
    return name, ns[name], named


def default_results_path(ckpt: str | None, label: str) -> Path:
    """The checkpoint's results JSON (``<ckpt stem>.robustness.json`` beside it), else ``./<model>.robustness.json``."""
    from ..base.results import results_path

    if ckpt:
        return results_path(ckpt)
    return Path("".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".robustness.json")


def sections_of(args: Any, names: Sequence[str]) -> dict[str, Any]:
    """The config dataclass of each analysis in ``names`` (parsed by jsonargparse; constructing it validates it;
    only the named ones: an analysis not run needs no paths)."""
    return {n: CATALOGUE[n].config(**vars(args[n])) for n in names}


def cli_main(argv: list[str]) -> int:
    name, args, named = parse_args(argv)
    if name == ALL:
        names = named
        if not names:
            raise ConfigError("'all' runs the analyses that --config/--preset files or options name, and none are "
                              "named; e.g. --preset paper, or sections: " + ", ".join(CATALOGUE))
    else:
        names = [name]
    sections = sections_of(args, names)  # every config error before any loading
    data = AnalysisDataOptions(**vars(args.data))
    data.check()
    opts = model_options(args)
    if opts.weights == "both":
        raise ConfigError("analyze runs on one weight set: --weights auto (EMA when the checkpoint has it), raw or "
                          "ema")
    if any(CATALOGUE[n].needs_val for n in names) and not data.imagenet_val:
        raise ConfigError(f"{', '.join(n for n in names if CATALOGUE[n].needs_val)} need validation images: give "
                          "--data.imagenet_val DIR")

    import torch

    from ..analysis.loading import LoadedModel, ValSource
    from ..analysis.runner import run_analyses
    from ..base.files import check_writable
    from ..base.results import RESULTS_SPACE
    from ..evaluation.loading import load_for_eval

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    em = load_for_eval(opts, device=device, allow_random=True)  # a name alone: random weights (smoke runs)
    if args.wandb and not em.wandb_run:  # before the analyses run, not after
        raise ConfigError(f"--wandb: {opts.ckpt_path or opts.timm or opts.model_name} records no W&B run (only "
                          "lk_ablate checkpoints of runs that logged to W&B do); analyse without --wandb, and log the "
                          "report with `lk_ablate report --wandb.project P`")
    lm = LoadedModel.from_eval_models(em)
    val = None
    if any(CATALOGUE[n].needs_val for n in names):
        val = ValSource(data.imagenet_val, em.config.num_classes, batch_size=data.batch_size,
                        num_workers=data.num_workers, limit=data.subset_size, seed=data.subset_seed)
    results_path = Path(args.results_path) if args.results_path else default_results_path(opts.ckpt_path, lm.label)
    out_dir = Path(args.output_dir) if args.output_dir else results_path.parent
    prefix = results_path.name.removesuffix(".json") + "."
    # Before the analyses run: their results file and plots can be written.
    check_writable(results_path, "results file", "choose another with --results_path FILE", need_bytes=RESULTS_SPACE,
                   lock=True)
    check_writable(out_dir / f"{prefix}{names[0]}.png", "plot", "choose another folder with --output_dir DIR")
    results = run_analyses(lm.model, sections, val, lm.config, results_path=results_path, out_dir=out_dir,
                           names=names, label=lm.label, plot_prefix=prefix, results_init=lm.results_init(),
                           protocol=args.protocol, progress=args.progress)
    for n, result in results.items():
        scalars = ", ".join(f"{k} {v:.4g}" for k, v in result["summary_scalars"].items() if v is not None)
        print(f"{n}: {scalars}\n  plot: {result.get('plot')}")
    print(f"results: {results_path}")
    if args.wandb:
        from ..training.wandb import log_analyses_to_run

        save_dir = os.environ.get("WANDB_DIR") or Path(opts.ckpt_path).parent
        run_id, logged = log_analyses_to_run(results, em.wandb_run, kernel_sizes=em.kernel_sizes, save_dir=save_dir)
        print(f"W&B: {len(logged)} analysis scalar(s) added to run {run_id} ({em.wandb_run.get('project')})")
    return 0
