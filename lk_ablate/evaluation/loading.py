"""The one evaluation loader: any model source -> its weight sets in eval mode, its eval config and metadata.

Sources: an lk_ablate (Lightning) checkpoint, rebuilt from its hyper-parameters; official/foreign weights for a
registered model (``model_name`` + ``kernel_size``); a timm model by name (timm's pretrained weights, or ``ckpt_path``);
a registered name alone gives random weights where the caller allows it (smoke runs of the analyses).
Every checkpoint is read through ``models.checkpoints.read_checkpoint`` / ``load_timm_weights`` (allow-listed
unpickling, base/safe_load.py).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models.checkpoints import load_checkpoint, load_timm_weights, read_checkpoint
from ..models.compile import check_compile_options, compile_model
from ..models.registry import CROP_MODES, ModelConfig, create_model, kernel_label
from ..training.preemption import same_fact
from ..training.wandb import CHECKPOINT_KEY as _WANDB_KEY
from .options import WEIGHTS, ModelOptions

__all__ = ["EvalModels", "load_for_eval", "timm_model_config", "weight_sets"]


def weight_sets(choice: str, has_ema: bool, why: str = "the model has no EMA weights") -> list[str]:
    """The weight sets to evaluate for ``choice`` (auto / raw / ema / both); every evaluation path uses this."""
    if choice not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {choice!r}")
    if choice == "ema" and not has_ema:
        raise DataError(f"weights ema: {why}; use --weights raw (or auto)")
    if choice == "auto":
        return ["ema" if has_ema else "raw"]
    return {"raw": ["raw"], "ema": ["ema"], "both": ["raw", "ema"] if has_ema else ["raw"]}[choice]


@dataclass
class EvalModels:
    """The weight sets of one model (same structure, eval mode) with the eval config they share."""

    models: dict[str, nn.Module]
    config: ModelConfig
    name: str
    kernel_sizes: list[int] | None
    source: str  # "lk_ablate" | "timm"
    checkpoint: str | None = None
    checkpoint_format: str | None = None  # lightning | official | timm | pretrained | None (random weights)
    epoch: int | None = None
    global_step: int | None = None
    seed: int | None = None  # the training run's seed (lk_ablate checkpoints)
    wandb_run: Mapping[str, Any] | None = None  # the W&B run the checkpoint was trained in, if it logged to one
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> EvalSpec:
        """The model's own eval transform (``protocol: model``)."""
        return EvalSpec.from_model_config(self.config)

    @property
    def first(self) -> nn.Module:
        return next(iter(self.models.values()))

    @property
    def label(self) -> str:
        return f"{self.name} k{kernel_label(self.kernel_sizes)}" if self.kernel_sizes else self.name

    def to(self, device: torch.device | str) -> "EvalModels":
        for m in self.models.values():
            m.to(device)
        return self

    def results_init(self, weights: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments of ``base.results.make_results`` describing this model."""
        return {
            "model_name": self.name, "kernel_sizes": self.kernel_sizes,
            "num_params": sum(p.numel() for p in self.first.parameters()),
            "model_config": dict(self.config.to_dict(), resize_size=self.config.resize_size),
            "weights": dict(weights) if weights is not None else {w: {} for w in self.models},
            "checkpoint_path": self.checkpoint, "epoch": self.epoch, "global_step": self.global_step,
            "checkpoint_format": self.checkpoint_format, "model_source": self.source,
        }


def load_for_eval(opts: ModelOptions, device: torch.device | str | None = None,
                  allow_random: bool = False) -> EvalModels:
    """Build ``opts``' model with each selected weight set, in eval mode (on ``device`` when given)."""
    if opts.timm and opts.model_name:
        raise ConfigError("give model.model_name (a registered lk_ablate model) or model.timm (a timm model), "
                          "not both")
    if opts.ckpt_path is not None and not os.path.isfile(opts.ckpt_path):
        raise DataError(f"checkpoint not found: {opts.ckpt_path}")
    if opts.compile:
        check_compile_options(opts.compile_mode)
    if opts.timm:
        out = _load_timm(opts)
    elif opts.ckpt_path is None:
        if not opts.model_name:
            raise ConfigError("say which model to evaluate: --ckpt_path of an lk_ablate run, --model.model_name NAME "
                              "with --ckpt_path for official weights, or --model.timm NAME")
        if not allow_random:
            raise ConfigError(f"--model.model_name {opts.model_name} without --ckpt_path would score random weights; "
                              f"give --ckpt_path (official or lk_ablate weights)")
        out = _load_registered(opts, None)
    else:
        obj = read_checkpoint(opts.ckpt_path)
        if isinstance(obj, Mapping) and "state_dict" in obj and "hyper_parameters" in obj:
            out = _load_lightning(opts, obj)
        else:
            out = _load_registered(opts, obj)
    channels_last = opts.channels_last if opts.channels_last is not None else out.meta.pop("channels_last", True)
    for m in out.models.values():
        if channels_last:  # same kernels as training with channels_last; results equal within float rounding
            m.to(memory_format=torch.channels_last)
        m.eval()
        if device is not None:
            m.to(device)
        if opts.compile:  # in place: the same module, parameters and state-dict keys
            compile_model(m, opts.compile_mode)
    out.meta["channels_last"] = bool(channels_last)
    return out


def _with_sets(build: Any, sets: list[str], load: Any) -> dict[str, nn.Module]:
    """One structure for every set: built once, copied for the next set, each loaded with its own weights."""
    base = build()
    models: dict[str, nn.Module] = {}
    for i, w in enumerate(sets):
        m = base if i == 0 else copy.deepcopy(base)
        load(m, w)
        models[w] = m
    return models


def _kernel_arg(kernel_size: Any) -> Any:
    if isinstance(kernel_size, (list, tuple)):
        return kernel_size[0] if len(kernel_size) == 1 else [int(k) for k in kernel_size]
    return kernel_size


def _kernel_sizes(model: nn.Module) -> list[int] | None:
    ks = getattr(model, "kernel_sizes", None)
    return [int(k) for k in ks] if ks else None


def _load_lightning(opts: ModelOptions, obj: Mapping[str, Any]) -> EvalModels:
    hp = dict(obj["hyper_parameters"])
    if "model_name" not in hp:
        raise DataError(f"{opts.ckpt_path}: Lightning checkpoint without hyper_parameters.model_name: not written by "
                        "lk_ablate fit?")
    if opts.model_name and opts.model_name != hp["model_name"]:
        raise ConfigError(f"{opts.ckpt_path} is an lk_ablate {hp['model_name']} checkpoint, but --model.model_name "
                          f"says {opts.model_name}; drop --model.model_name (the checkpoint names its model)")
    # The checkpoint's hyper-parameters define the architecture; options that contradict them are a mistake to
    # report (scoring the checkpoint's model under another model's name would be wrong), as validate does.
    given = {"kernel_size": opts.kernel_size, "num_classes": opts.num_classes, "model_kwargs": opts.model_kwargs}
    differ = [f"{k} {v!r} (checkpoint: {hp.get(k)!r})" for k, v in given.items()
              if v is not None and not same_fact(k, v, hp.get(k))]
    if differ:
        raise ConfigError(f"{opts.ckpt_path} is an lk_ablate {hp['model_name']} checkpoint, but the model options "
                          f"say {', '.join(differ)}; drop those options (the checkpoint names its architecture; they "
                          "may come from --model.*, a --config file or --fit_config's model section), or score "
                          "the checkpoint they describe")
    has_ema = any(k.startswith("ema.module.") for k in obj["state_dict"])
    sets = weight_sets(opts.weights, has_ema,
                       f"{opts.ckpt_path} has no EMA weights (trained with model.ema_decay null)")
    kwargs = dict(hp.get("model_kwargs") or {})
    ks, nc = hp.get("kernel_size"), hp.get("num_classes")
    models = _with_sets(lambda: create_model(hp["model_name"], kernel_size=ks, num_classes=nc, **kwargs), sets,
                        lambda m, w: load_checkpoint(m, obj, prefer_ema=w == "ema"))
    first = next(iter(models.values()))
    return EvalModels(models, first.model_config, hp["model_name"], _kernel_sizes(first), "lk_ablate",
                      os.fspath(opts.ckpt_path), "lightning", obj.get("epoch"), obj.get("global_step"),
                      (obj.get("lk_ablate") or {}).get("seed"), obj.get(_WANDB_KEY) or None,
                      meta={"channels_last": bool(hp.get("channels_last", False))})


def _load_registered(opts: ModelOptions, obj: Any) -> EvalModels:
    """Official/foreign weights (or none) for a registered model."""
    if not opts.model_name:
        raise ConfigError(f"{opts.ckpt_path} is not an lk_ablate checkpoint: say which registered model it holds "
                          "with --model.model_name NAME (see lk_ablate.list_models()), or --model.timm NAME for timm "
                          "weights")
    has_ema = isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("model_ema", "state_dict_ema"))
    what = f"{opts.ckpt_path} has no EMA weights ('model_ema' / 'state_dict_ema')" if obj is not None else \
        f"{opts.model_name} without --ckpt_path has random weights only"
    sets = weight_sets(opts.weights, has_ema, what)

    def load(m: nn.Module, w: str) -> None:
        if obj is not None:
            load_checkpoint(m, obj, prefer_ema=w == "ema")

    models = _with_sets(lambda: create_model(opts.model_name, kernel_size=_kernel_arg(opts.kernel_size),
                                             num_classes=opts.num_classes, **(opts.model_kwargs or {})), sets, load)
    first = next(iter(models.values()))
    epoch = obj.get("epoch") if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int) else None
    return EvalModels(models, first.model_config, opts.model_name, _kernel_sizes(first), "lk_ablate",
                      None if obj is None else os.fspath(opts.ckpt_path), None if obj is None else "official", epoch,
                      meta={"random_weights": obj is None})


def timm_model_config(model: nn.Module, name: str) -> ModelConfig:
    """A timm model's own eval config (timm's ``resolve_model_data_config``) as a ModelConfig."""
    from timm.data import resolve_model_data_config

    dc = resolve_model_data_config(model)
    crop_mode = dc.get("crop_mode") or "center"
    if crop_mode not in CROP_MODES:
        raise ConfigError(f"timm model {name} evaluates with crop_mode {crop_mode!r}; supported: "
                          f"{', '.join(CROP_MODES)}")
    return ModelConfig(input_size=tuple(dc["input_size"]), crop_pct=float(dc["crop_pct"]), mean=tuple(dc["mean"]),
                       std=tuple(dc["std"]), interpolation=dc["interpolation"],
                       num_classes=int(getattr(model, "num_classes", 1000)), crop_mode=crop_mode)


def _load_timm(opts: ModelOptions) -> EvalModels:
    import timm

    if opts.kernel_size is not None:
        raise ConfigError("--model.kernel_size applies to registered lk_ablate models (--model.model_name), not to "
                          "--model.timm; pass timm constructor arguments with --model.model_kwargs")
    kwargs = dict(opts.model_kwargs or {})
    if opts.num_classes is not None:
        kwargs["num_classes"] = opts.num_classes
    has_ema = False
    if opts.ckpt_path and not os.fspath(opts.ckpt_path).endswith(".safetensors"):
        obj = read_checkpoint(opts.ckpt_path)
        has_ema = isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping)
                                                   for k in ("state_dict_ema", "model_ema"))
    sets = weight_sets(opts.weights, has_ema, f"{opts.ckpt_path or opts.timm} has no 'state_dict_ema' / 'model_ema'")

    def build() -> nn.Module:
        try:
            return timm.create_model(opts.timm, pretrained=opts.ckpt_path is None, **kwargs)
        except RuntimeError as e:  # timm raises RuntimeError for unknown names
            raise ConfigError(f"cannot create timm model {opts.timm!r}: {e} (see timm.list_models())") from e

    def load(m: nn.Module, w: str) -> None:
        if opts.ckpt_path:
            try:
                load_timm_weights(m, opts.ckpt_path, use_ema=w == "ema", strict=True)
            except RuntimeError as e:
                raise DataError(f"{opts.ckpt_path} does not fit timm model {opts.timm!r}: {str(e)[:500]}") from e

    models = _with_sets(build, sets, load)
    first = next(iter(models.values()))
    cfg = timm_model_config(first, opts.timm)
    for m in models.values():  # what lk_ablate's own models carry, so every consumer reads one attribute
        m.model_config, m.model_name = cfg, opts.timm
    return EvalModels(models, cfg, opts.timm, _kernel_sizes(first), "timm",
                      os.fspath(opts.ckpt_path) if opts.ckpt_path else None, "timm" if opts.ckpt_path else "pretrained")
