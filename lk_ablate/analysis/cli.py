"""``lk_ablate analyze <analysis|all|list> --ckpt ... --config ...``: run the paper's analyses on one model."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, DataError

DATA_KEYS = ("val_dir", "batch_size", "num_workers", "limit", "seed")


def _kernel_size(text: str) -> int | list[int]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError as e:
        raise ConfigError(f"--kernel-size takes an odd int or a comma list like 31,29,27,13, got {text!r}") from e
    return values[0] if len(values) == 1 else values


def _parser() -> argparse.ArgumentParser:
    from .runner import ANALYSES

    p = argparse.ArgumentParser(
        prog="lk_ablate analyze", description="Run one of the paper's robustness analyses (or all configured ones).",
        epilog="analyses: " + "; ".join(f"{a.name}: {a.help}" for a in ANALYSES.values()))
    p.add_argument("analysis", help="an analysis name, 'all' (every section in --config) or 'list'")
    p.add_argument("--config", help="YAML with one section per analysis (top level or under 'analyses:') and an "
                                    "optional 'data:' section (val_dir, batch_size, num_workers, limit, seed); "
                                    "'paper' = the shipped paper settings (lk_ablate/analysis/paper.yaml)")
    p.add_argument("--ckpt", help="checkpoint: an lk_ablate run's (architecture from its hyper-parameters), or "
                                  "official/timm weights with --model or --timm-model")
    p.add_argument("--model", help="registered model name (lk_ablate list_models())")
    p.add_argument("--kernel-size", type=_kernel_size, help="kernel size for --model: 31 or 31,29,27,13")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--timm-model", help="a timm architecture; mean/std/size from timm's pretrained_cfg")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="ema", action="store_true", default=None, help="use EMA weights (default: "
                     "when the checkpoint has them)")
    ema.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights")
    p.add_argument("--data", help="validation folder root/<class>/<images> (overrides data.val_dir)")
    p.add_argument("--limit", type=int, help="use a seeded random subset of this many validation images")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--results", help="results JSON to store into (default: the checkpoint's <name>.robustness.json "
                                     "beside it, shared with `lk_ablate robustness`; created when missing)")
    p.add_argument("--out-dir", help="folder for the PNGs (default: beside the results JSON)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cpu (default cpu)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option, value in YAML syntax, e.g. occlusion.levels=[0.1,0.5]")
    return p


def _load_config(path: str | None) -> dict[str, Any]:
    """A YAML config file; ``paper`` (when no such file exists) is the shipped ``paper.yaml``."""
    if path is None:
        return {}
    p = Path(path)
    if path == "paper" and not p.exists():
        from importlib import resources

        text = resources.files(__package__).joinpath("paper.yaml").read_text()
    elif not p.is_file():
        raise DataError(f"config file not found: {p}")
    else:
        text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of sections")
    return data


def _apply_sets(sections: dict[str, Any], data: dict[str, Any], sets: list[str]) -> None:
    for item in sets:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set takes SECTION.KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        section, option = key.split(".", 1)
        target = data if section == "data" else sections.setdefault(section, {})
        target[option] = yaml.safe_load(value)


def default_results_path(ckpt: str | None, label: str) -> Path:
    """The checkpoint's results JSON (``<ckpt stem>.robustness.json`` beside it), else ``./<model>.robustness.json``."""
    from ..robustness.results import results_path

    if ckpt:
        return results_path(ckpt)
    return Path("".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".robustness.json")


def cli_main(argv: list[str]) -> int:
    import torch

    from .loading import load_model, val_loader
    from .runner import ANALYSES, analysis_sections, get_analysis, run_analyses

    args = _parser().parse_args(argv)
    if args.analysis == "list":
        for a in ANALYSES.values():
            print(f"{a.name:<18} {a.help}")
        return 0
    config = _load_config(args.config)
    sections = analysis_sections(config)
    data_cfg = dict(config.get("data") or {})
    bad = sorted(set(data_cfg) - set(DATA_KEYS))
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in the data section; valid: {list(DATA_KEYS)}")
    _apply_sets(sections, data_cfg, args.set)
    if args.analysis == "all":
        names = [n for n in sections if n in ANALYSES]
        if not names:
            raise ConfigError("'all' runs the analysis sections of --config, and it has none; sections: "
                              + ", ".join(ANALYSES))
    else:
        names = [get_analysis(args.analysis).name]

    for n in names:  # every config error before any loading
        ANALYSES[n].config.from_dict(sections.get(n))
    lm = load_model(args.ckpt, args.model, args.kernel_size, args.num_classes, args.timm_model, args.ema)
    lm.model.to(torch.device(args.device))
    val_dir = args.data or data_cfg.get("val_dir")
    seed = args.seed if args.seed is not None else int(data_cfg.get("seed", 0))
    val = None
    if any(ANALYSES[n].needs_val for n in names):
        if not val_dir:
            raise ConfigError(f"{', '.join(n for n in names if ANALYSES[n].needs_val)} need validation images: "
                              "give --data VAL_DIR or data.val_dir in --config")
        val = val_loader(val_dir, lm.config,
                         batch_size=args.batch_size or int(data_cfg.get("batch_size", 64)),
                         num_workers=args.workers if args.workers is not None else int(data_cfg.get("num_workers", 2)),
                         limit=args.limit if args.limit is not None else data_cfg.get("limit"), seed=seed)
    results_path = Path(args.results) if args.results else default_results_path(args.ckpt, lm.label)
    out_dir = Path(args.out_dir) if args.out_dir else results_path.parent
    prefix = results_path.name.removesuffix(".json") + "."
    results = run_analyses(lm.model, sections, val, lm.config, results_path=results_path, out_dir=out_dir,
                           names=names, label=lm.label, plot_prefix=prefix, results_init=lm.results_init())
    for name, result in results.items():
        scalars = ", ".join(f"{k} {v:.4g}" for k, v in result["summary_scalars"].items() if v is not None)
        print(f"{name}: {scalars}\n  plot: {result.get('plot')}")
    print(f"results: {results_path}")
    return 0
