"""``lk_ablate analyze <analysis|all|list> [options]``: run the paper's analyses on one model.

    lk_ablate analyze occlusion --model.ckpt runs/convnext_k31/last.ckpt --preset paper \\
        --data.imagenet_val /data/imagenet/val --occlusion.dino_weights /w/dino_deitsmall16_pretrain.pth
    lk_ablate analyze lesion --model.name replknet_31b --model.ckpt RepLKNet-31B_ImageNet-1K_224.pth \\
        --data.imagenet_val /data/imagenet/val --lesion.samples 3
    lk_ablate analyze all --config my_analyses.yaml --print_config

Options follow ``lk_ablate robustness`` (``--model.*``, ``--data.*``, ``--protocol``, ``--results``); every
analysis is a group of its own (``--occlusion.levels [0.1,0.5]``), parsed from its config dataclass; ``--preset
NAME`` loads a shipped preset (lk_ablate/analysis/presets/NAME.yaml; ``paper``: the paper's settings and
``protocol: paper``; presets stack, later ones and explicit values override earlier ones).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.runner import ANALYSES, PRESETS_PACKAGE, add_section_arguments, check_no_section_preset, \
    get_analysis, section_from_parsed
from ..base.errors import ConfigError
from ..base.files import check_writable, read_yaml
from ..base.results import RESULTS_SPACE
from ..evaluation.loading import load_for_eval
from ..evaluation.options import DataOptions, ModelOptions
from ._common import base_parser, check_old_evaluation_spellings, config_files, parse, preset_argv

__all__ = ["AnalysisDataOptions", "cli_main", "parse_args", "sections_of"]


@dataclass
class AnalysisDataOptions(DataOptions):
    """The validation images the analyses read.

    Args:
        limit: use a seeded random subset of this many validation images (None: all).
        seed: the subset's seed.
    """

    limit: int | None = None
    seed: int = 0


def _parser() -> Any:
    p = base_parser("lk_ablate analyze", __doc__.split("\n\n")[0], default_weights="auto")
    p.add_class_arguments(AnalysisDataOptions, "data")
    p.set_defaults({"data.num_workers": 2})
    p.add_argument("--results", type=str | None, default=None,
                   help="results JSON to store into (default: the checkpoint's <stem>.robustness.json beside it, "
                        "shared with `lk_ablate robustness`; created when missing)")
    p.add_argument("--plot_dir", type=str | None, default=None, help="folder for the PNGs (default: beside --results)")
    add_section_arguments(p)
    return p


def _check_old_section_presets(argv: Sequence[str]) -> None:
    """``--pgd.preset paper_eps`` (a section's named preset, now a shipped file): one line naming --preset."""
    for a in argv:
        flag = a.split("=", 1)[0]
        head, _, key = flag.lstrip("-").partition(".")
        if flag.startswith("--") and key == "preset" and head in ANALYSES:
            check_no_section_preset(head, {"preset": None}, where="--")


def parse_args(argv: Sequence[str]) -> tuple[str | None, Any, list[str]]:
    """(analysis name or None, options, the sections named by --config/--preset files or options)."""
    argv = list(argv)
    name = argv.pop(0) if argv and not argv[0].startswith("-") else None
    check_old_evaluation_spellings(argv)
    _check_old_section_presets(argv)
    argv = preset_argv(argv, PRESETS_PACKAGE)
    named = _named_sections(argv)
    return name, parse(_parser(), argv), named


def _named_sections(argv: Sequence[str]) -> list[str]:
    named: list[str] = []
    for path in config_files(argv):
        p = Path(path)
        data = read_yaml(p) if p.is_file() else None
        if isinstance(data, dict):
            if "analyses" in data:
                raise ConfigError(f"{path}: the analysis sections now sit at the top level of the file (drop the "
                                  "'analyses:' level); see `lk_ablate analyze --print_config`")
            for k in data:
                if k in ANALYSES:
                    check_no_section_preset(k, data[k], where=f"{path}: ")
                    named.append(k)
    for a in argv:
        head = a.lstrip("-").split(".", 1)[0]
        if a.startswith("--") and "." in a and head in ANALYSES:
            named.append(head)
    return list(dict.fromkeys(named))


def default_results_path(ckpt: str | None, label: str) -> Path:
    """The checkpoint's results JSON (``<ckpt stem>.robustness.json`` beside it), else ``./<model>.robustness.json``."""
    from ..base.results import results_path

    if ckpt:
        return results_path(ckpt)
    return Path("".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".robustness.json")


def sections_of(args: Any, names: Sequence[str]) -> dict[str, Any]:
    """The config dataclass of each analysis in ``names`` (parsed by jsonargparse; constructing it validates it;
    only the named ones: an analysis not run needs no paths)."""
    return {n: section_from_parsed(n, getattr(args, n)) for n in names}


def cli_main(argv: list[str]) -> int:
    import torch

    from ..analysis.loading import LoadedModel, ValSource
    from ..analysis.runner import run_analyses

    name, args, named = parse_args(argv)
    if name == "list":
        for a in ANALYSES.values():
            print(f"{a.name:<18} {a.help}")
        return 0
    if name is None:
        raise ConfigError("name the analysis to run: lk_ablate analyze NAME|all|list [options] (see `lk_ablate "
                          "analyze list`)")
    if name == "all":
        names = [n for n in named if n in ANALYSES]
        if not names:
            raise ConfigError("'all' runs the analyses that --config/--preset files or options name, and none are "
                              "named; e.g. --preset paper, or analyses: " + ", ".join(ANALYSES))
    else:
        names = [get_analysis(name).name]
    sections = sections_of(args, names)  # every config error before any loading
    data = AnalysisDataOptions(**vars(args.data))
    data.check()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    opts = ModelOptions(**vars(args.model))
    if opts.weights == "both":
        raise ConfigError("analyze runs on one weight set: --model.weights auto (EMA when the checkpoint has it), "
                          "raw or ema")
    em = load_for_eval(opts, device=device, allow_random=True)  # a name alone: random weights (smoke runs)
    lm = LoadedModel.from_eval_models(em)
    val = None
    if any(ANALYSES[n].needs_val for n in names):
        if not data.imagenet_val:
            raise ConfigError(f"{', '.join(n for n in names if ANALYSES[n].needs_val)} need validation images: "
                              "give --data.imagenet_val DIR")
        val = ValSource(data.imagenet_val, em.config.num_classes, batch_size=data.batch_size,
                        num_workers=data.num_workers, limit=data.limit, seed=data.seed)
    results_path = Path(args.results) if args.results else default_results_path(opts.ckpt, lm.label)
    out_dir = Path(args.plot_dir) if args.plot_dir else results_path.parent
    prefix = results_path.name.removesuffix(".json") + "."
    # Before the analyses run: their results file and plots can be written.
    check_writable(results_path, "results file", "choose another with --results FILE", need_bytes=RESULTS_SPACE,
                   lock=True)
    check_writable(out_dir / f"{prefix}{names[0]}.png", "plot", "choose another folder with --plot_dir DIR")
    results = run_analyses(lm.model, sections, val, lm.config, results_path=results_path, out_dir=out_dir,
                           names=names, label=lm.label, plot_prefix=prefix, results_init=lm.results_init(),
                           protocol=args.protocol)
    for n, result in results.items():
        scalars = ", ".join(f"{k} {v:.4g}" for k, v in result["summary_scalars"].items() if v is not None)
        print(f"{n}: {scalars}\n  plot: {result.get('plot')}")
    print(f"results: {results_path}")
    return 0

