"""Models and data for the analyses: lk_ablate/Lightning, official and timm checkpoints; ImageNet-style val folders."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError
from ..models.registry import ModelConfig, create_model


@dataclasses.dataclass
class LoadedModel:
    """A model in eval mode with the input config it expects and a short label for reports."""

    model: nn.Module
    config: ModelConfig
    label: str
    meta: dict[str, Any]

    def results_init(self) -> dict[str, Any]:
        """Keyword arguments of ``robustness.results.make_results`` describing this model (a new results file)."""
        ks = getattr(self.model, "kernel_sizes", None)
        return {
            "model_name": self.meta.get("model_name") or self.meta.get("timm_model") or self.label,
            "kernel_sizes": list(ks) if ks is not None else None,
            "num_params": sum(p.numel() for p in self.model.parameters()),
            "model_config": self.config.to_dict(),
            "weights": {"ema" if self.meta.get("ema") else "raw": {}},
            "checkpoint_path": self.meta.get("checkpoint"),
            "epoch": self.meta.get("epoch"),
            "global_step": self.meta.get("global_step"),
            "checkpoint_format": self.meta.get("format"),
            "model_source": "timm" if self.meta.get("source") == "timm" else "lk_ablate",
        }


def timm_model_config(model: nn.Module) -> ModelConfig:
    """ModelConfig from a timm model's own ``pretrained_cfg`` (mean/std/size/crop/interpolation)."""
    pc = dict(getattr(model, "pretrained_cfg", None) or {})
    default = ModelConfig()
    return ModelConfig(
        input_size=tuple(pc.get("input_size", default.input_size)),
        crop_pct=float(pc.get("crop_pct", default.crop_pct)),
        mean=tuple(pc.get("mean", default.mean)),
        std=tuple(pc.get("std", default.std)),
        interpolation=str(pc.get("interpolation", default.interpolation)),
        num_classes=int(getattr(model, "num_classes", pc.get("num_classes", default.num_classes))),
        crop_mode=str(pc.get("crop_mode") or default.crop_mode),
    )


def create_timm_model(name: str, checkpoint: str | os.PathLike | None = None, num_classes: int | None = None,
                      **kwargs: Any) -> LoadedModel:
    """timm.create_model(name) with weights from a local file (timm's loader: state_dict/_ema/model, module.)."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}),
                                  **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError for unknown names
        raise ConfigError(f"timm has no model {name!r} ({e}); see timm.list_models()") from e
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise DataError(f"checkpoint not found: {checkpoint}")
        try:
            from ..models.checkpoints import load_timm_weights  # safe unpickling (base/safe_load.py)

            load_timm_weights(model, checkpoint, use_ema=True, strict=True)
        except RuntimeError as e:
            raise DataError(f"checkpoint {checkpoint} does not fit timm model {name!r}: {str(e)[:500]}") from e
    model.eval()
    return LoadedModel(model, timm_model_config(model), name,
                       {"source": "timm", "timm_model": name, "checkpoint": str(checkpoint) if checkpoint else None,
                        "format": "timm" if checkpoint else None})


def load_model(ckpt: str | os.PathLike | None = None, model_name: str | None = None, kernel_size: Any = None,
               num_classes: int | None = None, timm_model: str | None = None, ema: bool | None = None,
               model_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """Build the model to analyse.

    - ``timm_model``: a timm architecture, weights from ``ckpt`` (timm/official layouts) if given.
    - ``ckpt`` saved by lk_ablate (Lightning): architecture from its ``hyper_parameters``; EMA weights when the
      checkpoint has them unless ``ema`` is False.
    - ``ckpt`` from elsewhere (official ConvNeXt/RepLKNet, timm) with ``model_name`` (+ ``kernel_size``).
    - ``model_name`` alone: random weights (for smoke runs; ``meta["random_weights"]`` says so).
    """
    from ..models.checkpoints import load_checkpoint, read_checkpoint

    if timm_model:
        return create_timm_model(timm_model, ckpt, num_classes)
    obj = read_checkpoint(ckpt) if ckpt is not None else None
    hp = dict(obj.get("hyper_parameters") or {}) if isinstance(obj, dict) else {}
    name = model_name or hp.get("model_name")
    if name is None:
        raise ConfigError("say which model to analyse: --ckpt of an lk_ablate run, or --model NAME (+ --ckpt for "
                          "official weights), or --timm-model NAME")
    ks = kernel_size if kernel_size is not None else hp.get("kernel_size")
    nc = num_classes if num_classes is not None else hp.get("num_classes")
    kwargs = dict(hp.get("model_kwargs") or {})
    kwargs.update(model_kwargs or {})
    model = create_model(name, kernel_size=ks, num_classes=nc, **kwargs)
    meta: dict[str, Any] = {"source": "lk_ablate", "model_name": name, "kernel_size": ks,
                            "checkpoint": str(ckpt) if ckpt else None}
    if obj is not None:
        sd = obj.get("state_dict") if isinstance(obj, dict) else None
        has_ema = isinstance(sd, dict) and any(k.startswith("ema.module.") for k in sd)
        use_ema = has_ema if ema is None else bool(ema)
        if use_ema and not has_ema:
            raise DataError(f"{ckpt} has no EMA weights ('ema.module.*'); drop --ema")
        load_checkpoint(model, obj, prefer_ema=use_ema)
        meta["ema"] = use_ema
        meta["format"] = "lightning" if hp else "official"
        if hp:
            meta["epoch"], meta["global_step"] = obj.get("epoch"), obj.get("global_step")
    else:
        meta["random_weights"] = True
    model.eval()
    ks_label = "x".join(str(k) for k in ks) if isinstance(ks, (list, tuple)) else ks
    label = f"{name} k{ks_label}" if ks is not None else name
    return LoadedModel(model, model.model_config, label, meta)


def val_loader(root: str | os.PathLike, cfg: ModelConfig, batch_size: int = 64, num_workers: int = 2,
               limit: int | None = None, seed: int = 0) -> torch.utils.data.DataLoader:
    """An ImageFolder (root/<class>/<images>) read with the model's eval transform.

    ``limit``: a seeded random subset of that many images, so every class can appear (ImageFolder is sorted
    by class, the first N images would be a few classes only).
    """
    from torchvision.datasets import ImageFolder

    from ..data.transforms import eval_transform

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"validation folder not found: {root}\n  expected layout: {root}/<class>/<images>\n  "
                        "for ImageNet val run `lk_ablate data prepare-imagenet-val` first")
    ds = ImageFolder(str(root), transform=eval_transform(cfg))
    if len(ds.classes) != cfg.num_classes:
        raise DataError(f"{root} has {len(ds.classes)} class folders but the model predicts {cfg.num_classes} "
                        "classes; point --data at the matching validation set")
    if limit is not None and limit < len(ds):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(ds), generator=g)[:limit].sort().values.tolist()
        ds = torch.utils.data.Subset(ds, idx)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
