"""Scoring one model (or its raw and EMA weights) on ImageNet-val/A/R/C/O: ``score`` and its table.

Models come from the one evaluation loader (``lk_ablate.evaluation.load_for_eval``). The command that parses the
options, writes the results JSON and prints the table is ``lk_ablate robustness``
(:mod:`lk_ablate.commands.robustness`). Also here: reading a ``lk_ablate fit`` config's RobustnessEvaluation
settings (``load_config``, ``robustness_settings``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base.errors import ConfigError
from ..base.files import read_yaml
from ..base.provenance import collect
from ..base.results import make_results
from ..evaluation.loading import EvalModels, load_for_eval
from ..evaluation.options import BenchmarkOptions, ModelOptions
from ..models.layers import dwconv_info
from .benchmarks import build_benchmarks
from .callback import settings_for
from .evaluate import evaluate

__all__ = ["BenchmarkOptions", "Scored", "format_table", "load_config", "robustness_settings", "score"]

_BENCH_FLAGS = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_c", "imagenet_o")
_SCORING_KEYS = ("decode", "on_bad_image")
_SETTING_KEYS = _BENCH_FLAGS + _SCORING_KEYS + ("c_preset", "corruptions", "severities", "weights", "batch_size",
                                                "num_workers", "protocol", "precision")


@dataclass
class Scored:
    """What ``score`` measured: the results document, the failed benchmarks, this process's rank, the models."""

    data: dict[str, Any]
    errors: list[dict[str, Any]]
    rank: int
    loaded: EvalModels


def score(opts: ModelOptions, d: BenchmarkOptions, *, protocol: str = "model", precision: str = "32-true",
          device: str | None = None, progress: bool = True, need_wandb_run: bool = False) -> Scored:
    """Score the model(s) ``opts`` names on the benchmarks ``d`` names (sharded over processes under torchrun)."""
    d.check()
    bench_kwargs = {k: getattr(d, k) for k in _BENCH_FLAGS}
    if not any(bench_kwargs.values()):
        raise ConfigError("no benchmark to score: pass --data.imagenet_a/_r/_c/_o/--data.imagenet_val DIR, or a "
                          "--fit_config whose RobustnessEvaluation callback names them")
    benchmarks = build_benchmarks(**bench_kwargs, c_preset=d.c_preset, corruptions=d.corruptions,
                                  severities=d.severities, protocol=protocol)
    for bench in benchmarks:
        bench.check()

    rank, world, dev = _distributed_setup(device)
    try:
        loaded = load_for_eval(opts, device=dev)
        if need_wandb_run and not loaded.wandb_run:
            raise ConfigError(f"--wandb: {opts.ckpt_path or opts.timm} records no W&B run (only lk_ablate checkpoints of "
                              f"runs that logged to W&B do); score without --wandb, and log the report with "
                              f"`lk_ablate report --wandb.project P`")
        if loaded.config.num_classes != 1000:
            raise ConfigError(f"{loaded.name} has {loaded.config.num_classes} classes; the ImageNet benchmarks "
                              f"need a 1000-class model")
        gather = _all_gather if world > 1 else None
        scoring = {"decode": d.decode, "precision": precision, "on_bad_image": d.on_bad_image}
        details: dict[str, Any] = {}
        results, errors = evaluate(loaded.models, loaded.config, benchmarks, batch_size=d.batch_size,
                                   num_workers=d.num_workers, device=dev, rank=rank, world_size=world,
                                   gather=gather, progress=progress and rank == 0, details=details, **scoring)
        settings = dict(settings_for(benchmarks, **scoring), seed=loaded.seed)
        # The resolved options that decide the numbers (model, weights, benchmarks, protocol, precision).
        config = {"model": opts, "data": d, "protocol": protocol, "precision": precision, "world_size": world}
        prov = collect(device=dev, precision=precision, dwconv=dwconv_info(loaded.first), config=config,
                       eval_transform=details.get("eval_transform"), data=details.get("fingerprints"))
        data = make_results(**loaded.results_init(results), settings=settings, errors=errors, provenance=prov,
                            per_image=details.get("per_image"))
        return Scored(data, errors, rank, loaded)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --- configs -----------------------------------------------------------------------------------------------
def load_config(paths: Sequence[str]) -> dict[str, Any]:
    """Stack YAML configs (later ones win, dicts merge); a top-level value naming a .yaml file is loaded."""
    merged: dict[str, Any] = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a YAML mapping")
        for key, value in list(data.items()):
            if isinstance(value, str) and value.endswith((".yaml", ".yml")):
                ref = p.parent / value
                if ref.is_file():
                    data[key] = read_yaml(ref) or {}
        merged = _merge(merged, data)
    return merged


def robustness_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """RobustnessEvaluation init args from trainer.callbacks, or a top-level ``robustness:`` mapping."""
    found: dict[str, Any] = {}
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    if isinstance(callbacks, Mapping):
        callbacks = [callbacks]
    for cb in callbacks:
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).endswith("RobustnessEvaluation"):
            found = _merge(found, dict(cb.get("init_args") or {}))
    if isinstance(config.get("robustness"), Mapping):
        found = _merge(found, dict(config["robustness"]))
    unknown = set(found) - set(_SETTING_KEYS) - {"every_n_epochs", "on_checkpoint", "at_fit_end", "output_dir"}
    if unknown:
        raise ConfigError(f"unknown RobustnessEvaluation settings {sorted(unknown)}")
    return {k: v for k, v in found.items() if k in _SETTING_KEYS}


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else v
    return out


# --- distributed -------------------------------------------------------------------------------------------
def _distributed_setup(device_arg: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_arg:
        device = torch.device(device_arg)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# --- output ------------------------------------------------------------------------------------------------
def format_table(data: Mapping[str, Any]) -> str:
    """A plain-text table: one row per metric, one column per weight set."""
    sets = list(data["weights"])
    ck = data["checkpoint"]
    head = (f"{data['model']['name']}  kernel sizes {data['model']['kernel_sizes']}  "
            f"epoch {ck['epoch']} step {ck['global_step']}  ({ck['path'] or data['model']['source']})")
    rows: list[tuple[str, str, str, list[str]]] = []
    metrics = [("imagenet_val", "top1", "n"), ("imagenet_val", "top5", "n"), ("imagenet_a", "top1", "n"),
               ("imagenet_r", "top1", "n"), ("imagenet_c", "severity5_mean_top1", None),
               ("imagenet_c", "mean_top1", "n_total"), ("imagenet_c", "mce", None),
               ("imagenet_c", "relative_mce", None), ("imagenet_o", "aupr", "n")]
    for bench, metric, count in metrics:
        entries = [data["weights"][w].get(bench) for w in sets]
        if all(e is None for e in entries) and not any(bench in data["weights"][w] for w in sets):
            continue
        n = next((str(e[count]) for e in entries if e and count), "")
        rows.append((bench, metric, n, [_fmt(e.get(metric)) if e else "FAILED" for e in entries]))
    c_entries = [data["weights"][w].get("imagenet_c") for w in sets]
    if any(c_entries):
        for c in next(e for e in c_entries if e)["corruption_top1"]:
            rows.append(("imagenet_c", f"top1 {c}", "", [_fmt(e["corruption_top1"].get(c)) if e else "FAILED"
                                                          for e in c_entries]))
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("benchmark", "metric", "n"))]
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(("benchmark", "metric", "n"), widths))
             + "".join(f"  {s:>8}" for s in sets)]
    for bench, metric, n, vals in rows:
        lines.append(f"{bench.ljust(widths[0])}  {metric.ljust(widths[1])}  {n.rjust(widths[2])}"
                     + "".join(f"  {v:>8}" for v in vals))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"
