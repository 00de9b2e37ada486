"""``lk_ablate robustness``: score any checkpoint on ImageNet-A/R/C/O and write its results JSON.

    lk_ablate robustness --ckpt checkpoints/convnext_k7/last.ckpt --config configs/convnext_k7.yaml
    lk_ablate robustness --ckpt RepLKNet-31B_ImageNet-1K_224.pth --model replknet_31b --imagenet-a /data/imagenet-a
    lk_ablate robustness --timm convnext_tiny.fb_in1k --imagenet-r /data/imagenet-r --output convnext_t.json

Models: lk_ablate Lightning checkpoints (model rebuilt from the checkpoint; raw and EMA weights), official
ConvNeXt / RepLKNet checkpoints (``--model`` names the registered variant), timm models by name (``--timm``,
pretrained or ``--ckpt``) with timm's own eval config. Benchmarks and their settings come from the
RobustnessEvaluation callback in the ``--config`` files (or a top-level ``robustness:`` section), and flags
override them. Run under ``torchrun`` to shard over processes like the callback does under DDP.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError
from ..models.registry import CROP_MODES, ModelConfig
from ..training.wandb import CHECKPOINT_KEY as WANDB_CHECKPOINT_KEY
from .benchmarks import build_benchmarks
from .callback import model_config_dict, settings_for
from .evaluate import evaluate
from .results import make_results, results_path, write_results

__all__ = ["cli_main", "load_models", "TimmEvalConfig"]

_BENCH_FLAGS = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_c", "imagenet_o")
_SETTING_KEYS = _BENCH_FLAGS + ("c_preset", "corruptions", "severities", "weights", "batch_size", "num_workers")


@dataclass(frozen=True)
class TimmEvalConfig(ModelConfig):
    """timm's eval config: like ModelConfig, but the resize is ``floor(input / crop_pct)`` as in timm's factory."""

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.image_size / self.crop_pct))


@dataclass
class LoadedModels:
    models: dict[str, nn.Module]
    config: ModelConfig
    name: str
    kernel_sizes: list[int] | None
    source: str
    checkpoint_format: str | None
    epoch: int | None = None
    global_step: int | None = None
    seed: int | None = None  # the training run's seed (lk_ablate checkpoints), as the callback records it
    wandb_run: Mapping[str, Any] | None = None  # the W&B run the checkpoint was trained in, if it logged to one


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lk_ablate robustness", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint to score (lk_ablate .ckpt, official .pth, timm weights)")
    p.add_argument("--config", action="append", default=[], help="YAML config(s), stacked like `lk_ablate fit`")
    p.add_argument("--model", help="registered lk_ablate model for a foreign checkpoint (default: config's model)")
    p.add_argument("--kernel-size", type=int, nargs="+", help="kernel size(s) for --model")
    p.add_argument("--timm", metavar="NAME", help="score a timm model by name (pretrained unless --ckpt)")
    for b in _BENCH_FLAGS:
        p.add_argument(f"--{b.replace('_', '-')}", dest=b, metavar="DIR")
    p.add_argument("--c-preset", choices=["severity5", "full"], default=None)
    p.add_argument("--corruptions", nargs="+")
    p.add_argument("--severities", type=int, nargs="+")
    p.add_argument("--weights", choices=["both", "raw", "ema"], default=None,
                   help="weight sets to score (default both: raw, plus EMA when the checkpoint has it)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--output", help="results JSON (default: beside the checkpoint, <stem>.robustness.json)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--wandb", action="store_true",
                   help="also add the scores to the checkpoint's W&B training run (resumed by the id the checkpoint "
                        "stores; WANDB_MODE=offline writes it locally beside the checkpoint)")
    return p


def cli_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config)
    settings = robustness_settings(config)
    for key in _SETTING_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    weights = settings.pop("weights", "both")
    batch_size = int(settings.pop("batch_size", 64))
    num_workers = int(settings.pop("num_workers", 4))
    bench_kwargs = {k: settings.get(k) for k in _BENCH_FLAGS}
    if not any(bench_kwargs.values()):
        raise ConfigError("no benchmark to score: pass --imagenet-a/-r/-c/-o/--imagenet-val, or a --config whose "
                          "RobustnessEvaluation callback names them")
    benchmarks = build_benchmarks(**bench_kwargs, c_preset=settings.get("c_preset", "severity5"),
                                  corruptions=settings.get("corruptions"), severities=settings.get("severities"))
    for bench in benchmarks:
        bench.check()

    rank, world, device = _distributed_setup(args.device)
    try:
        loaded = load_models(ckpt=args.ckpt, timm_name=args.timm, model_name=args.model,
                             kernel_size=args.kernel_size, weights=weights, config_model=config.get("model"))
        if args.wandb and not loaded.wandb_run:
            raise ConfigError(f"--wandb: {args.ckpt or args.timm} records no W&B run (only lk_ablate checkpoints of "
                              f"runs that logged to W&B do); score without --wandb, and log the report with "
                              f"`lk_ablate report --wandb-project`")
        if loaded.config.num_classes != 1000:
            raise ConfigError(f"{loaded.name} has {loaded.config.num_classes} classes; the ImageNet benchmarks "
                              f"need a 1000-class model")
        for m in loaded.models.values():
            m.to(device)
        gather = _all_gather if world > 1 else None
        results, errors = evaluate(loaded.models, loaded.config, benchmarks, batch_size=batch_size,
                                   num_workers=num_workers, device=device, rank=rank, world_size=world,
                                   gather=gather, progress=args.progress and rank == 0)
        raw = next(iter(loaded.models.values())) if "raw" not in loaded.models else loaded.models["raw"]
        data = make_results(model_name=loaded.name, kernel_sizes=loaded.kernel_sizes,
                            num_params=sum(p.numel() for p in raw.parameters()),
                            model_config=model_config_dict(loaded.config), weights=results,
                            settings=dict(settings_for(benchmarks), seed=loaded.seed), errors=errors,
                            checkpoint_path=args.ckpt,
                            epoch=loaded.epoch, global_step=loaded.global_step,
                            checkpoint_format=loaded.checkpoint_format, model_source=loaded.source)
        if rank == 0:
            out = Path(args.output) if args.output else (
                results_path(args.ckpt) if args.ckpt else Path(f"{loaded.name}.robustness.json"))
            write_results(out, data)
            print(format_table(data))
            print(f"results: {out}")
            if args.wandb:
                from ..training.wandb import log_results_to_run

                save_dir = os.environ.get("WANDB_DIR") or Path(args.ckpt).parent
                run_id = log_results_to_run(data, loaded.wandb_run, seed=loaded.seed, save_dir=save_dir)
                print(f"W&B: added to run {run_id} ({loaded.wandb_run.get('project')})")
            for e in errors:
                print(f"FAILED {e['weights']} / {e['benchmark']} (rank {e['rank']}):\n{e['error']}", file=sys.stderr)
        return 1 if errors else 0
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --- models ------------------------------------------------------------------------------------------------
def load_models(ckpt: str | None = None, timm_name: str | None = None, model_name: str | None = None,
                kernel_size: Sequence[int] | int | None = None, weights: str = "both",
                config_model: Mapping[str, Any] | None = None) -> LoadedModels:
    """The weight sets to score and their eval config, from a checkpoint and/or a model name."""
    if timm_name:
        return _load_timm(timm_name, ckpt, weights)
    if not ckpt:
        raise ConfigError("pass --ckpt (an lk_ablate or official checkpoint) or --timm NAME")
    from ..models.checkpoints import read_checkpoint

    obj = read_checkpoint(ckpt)
    if isinstance(obj, Mapping) and "state_dict" in obj and "hyper_parameters" in obj:
        return _load_lightning(obj, weights)
    return _load_foreign(obj, model_name, kernel_size, weights, config_model)


def _model_args(kernel_size: Any) -> Any:
    if isinstance(kernel_size, (list, tuple)) and len(kernel_size) == 1:
        return kernel_size[0]
    return None if kernel_size is None else list(kernel_size) if isinstance(kernel_size, (list, tuple)) else kernel_size


def _load_lightning(obj: Mapping[str, Any], weights: str) -> LoadedModels:
    from .. import create_model
    from ..models.checkpoints import load_checkpoint

    hp = dict(obj["hyper_parameters"])
    if "model_name" not in hp:
        raise DataError("Lightning checkpoint without hyper_parameters.model_name: not written by lk_ablate fit?")
    has_ema = any(k.startswith("ema.module.") for k in obj["state_dict"])
    sets = _weight_names(weights, has_ema, "the checkpoint has no EMA weights (trained with model.ema_decay null)")

    def build(prefer_ema: bool) -> nn.Module:
        m = create_model(hp["model_name"], kernel_size=hp.get("kernel_size"), num_classes=hp.get("num_classes"),
                         **(hp.get("model_kwargs") or {}))
        if hp.get("channels_last"):  # as ImageClassifier.setup does: same kernels, same bits as during fit
            m = m.to(memory_format=torch.channels_last)
        return load_checkpoint(m, obj, prefer_ema=prefer_ema).eval()

    models = {w: build(w == "ema") for w in sets}
    first = next(iter(models.values()))
    return LoadedModels(models, first.model_config, hp["model_name"], list(getattr(first, "kernel_sizes", []) or [])
                        or None, "lk_ablate", "lightning", obj.get("epoch"), obj.get("global_step"),
                        (obj.get("lk_ablate") or {}).get("seed"), obj.get(WANDB_CHECKPOINT_KEY) or None)


def _load_foreign(obj: Any, model_name: str | None, kernel_size: Any, weights: str,
                  config_model: Mapping[str, Any] | None) -> LoadedModels:
    from .. import create_model
    from ..models.checkpoints import load_checkpoint

    cm = dict((config_model or {}).get("init_args", config_model or {}))
    name = model_name or cm.get("model_name")
    if not name:
        raise ConfigError("a foreign checkpoint (official ConvNeXt/RepLKNet weights) needs --model NAME "
                          "(a registered lk_ablate model, see lk_ablate.list_models())")
    ks = _model_args(kernel_size) if kernel_size is not None else (cm.get("kernel_size") if name == cm.get("model_name")
                                                                    else None)
    has_ema = isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("model_ema", "state_dict_ema"))
    sets = _weight_names(weights, has_ema, "the checkpoint has no EMA weights ('model_ema' / 'state_dict_ema')")
    kwargs = {}
    if name == cm.get("model_name"):  # the config describes this model: its head size and extra arguments apply
        kwargs = dict(cm.get("model_kwargs") or {})
        if cm.get("num_classes") is not None:
            kwargs["num_classes"] = int(cm["num_classes"])
    models = {}
    for w in sets:
        m = create_model(name, kernel_size=ks, **kwargs)
        models[w] = load_checkpoint(m, obj, prefer_ema=w == "ema").eval()
    first = next(iter(models.values()))
    epoch = obj.get("epoch") if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int) else None
    return LoadedModels(models, first.model_config, name, list(getattr(first, "kernel_sizes", []) or []) or None,
                        "lk_ablate", "official", epoch, None)


def _load_timm(name: str, ckpt: str | None, weights: str) -> LoadedModels:
    import timm
    from timm.data import resolve_model_data_config

    try:
        base = timm.create_model(name, pretrained=ckpt is None)
    except RuntimeError as e:
        raise ConfigError(f"cannot create timm model {name!r}: {e}") from e
    has_ema = False
    if ckpt:
        from ..models.checkpoints import read_checkpoint

        obj = read_checkpoint(ckpt)
        has_ema = isinstance(obj, Mapping) and isinstance(obj.get("state_dict_ema"), Mapping)
    sets = _weight_names(weights, has_ema, "the timm checkpoint has no 'state_dict_ema'")
    models = {}
    for w in sets:
        m = base if not models else timm.create_model(name, pretrained=False)
        if ckpt:
            from ..models.checkpoints import load_timm_weights  # safe unpickling (base/safe_load.py)

            load_timm_weights(m, ckpt, use_ema=w == "ema", strict=True)
        models[w] = m.eval()
    dc = resolve_model_data_config(base)
    crop_mode = dc.get("crop_mode") or "center"
    if crop_mode not in CROP_MODES:
        raise ConfigError(f"timm model {name} evaluates with crop_mode {crop_mode!r}; supported: "
                          f"{', '.join(CROP_MODES)}")
    cfg = TimmEvalConfig(input_size=tuple(dc["input_size"]), crop_pct=float(dc["crop_pct"]),
                         mean=tuple(dc["mean"]), std=tuple(dc["std"]), interpolation=dc["interpolation"],
                         num_classes=int(base.num_classes), crop_mode=crop_mode)
    ks = getattr(base, "kernel_sizes", None)
    return LoadedModels(models, cfg, name, list(ks) if ks else None, "timm", "timm" if ckpt else "pretrained")


def _weight_names(weights: str, has_ema: bool, why: str) -> list[str]:
    if weights == "ema" and not has_ema:
        raise DataError(f"--weights ema: {why}")
    return {"raw": ["raw"], "ema": ["ema"], "both": ["raw", "ema"] if has_ema else ["raw"]}[weights]


# --- configs -----------------------------------------------------------------------------------------------
def load_config(paths: Sequence[str]) -> dict[str, Any]:
    """Stack YAML configs (later ones win, dicts merge); a top-level value naming a .yaml file is loaded."""
    import yaml

    merged: dict[str, Any] = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a YAML mapping")
        for key, value in list(data.items()):
            if isinstance(value, str) and value.endswith((".yaml", ".yml")):
                ref = p.parent / value
                if ref.is_file():
                    data[key] = yaml.safe_load(ref.read_text()) or {}
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
