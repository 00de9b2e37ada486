"""Feature-map variance per layer against normalised depth (Park & Kim, ICLR 2022, Fig. 9; the paper's Fig. on it).

For each recorded layer output ``z`` (B, C, H, W) the spatial variance is taken per image and channel
(unbiased, over H and W) and averaged over images and channels (``reduction: per_image``, Park & Kim's
``featuremap_variance.ipynb``). The paper's released script (LKRobust ``feature_map_variance/main.py``) first
averages each batch of 128 images into one mean feature map and takes the spatial variance of that mean
(averaged over 10 batches): ``reduction: batch_mean`` reproduces it; it measures the variance of the *average*
map, which is smaller and mixes in how similar the images are.

Layers: the stem, every residual block (RepLKNet: the RepLK block and the ConvFFN separately, as in the released
script) and every downsampling / transition layer, in forward order. Depth = index / (layers - 1). For ViTs the
tokens (B, N, C) are reshaped to a square map after dropping the prefix (class) tokens.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError
from .common import SectionConfig, iterate_batches, model_device, new_figure, save_figure

REDUCTIONS = ("per_image", "batch_mean")


@dataclasses.dataclass
class FeatureVarianceConfig(SectionConfig):
    """``max_images``: images used (Park & Kim: one batch; LKRobust: 1280 in batches of ``batch_mean_size``).
    ``modules``: explicit module names to record (default: found from the architecture)."""

    SECTION = "feature_variance"
    max_images: int = 128
    reduction: str = "per_image"
    batch_mean_size: int = 128
    modules: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"feature_variance.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.max_images < 2 or self.batch_mean_size < 1:
            raise ConfigError("feature_variance.max_images must be >= 2 and batch_mean_size >= 1")


def _stem_units(stem: nn.Module | None) -> list[nn.Module]:
    # RepLKNet's stem is a ModuleList of conv units (each recorded, as the released script does);
    # ConvNeXt's stem is one Sequential(conv, norm) unit.
    if stem is None or isinstance(stem, nn.Identity):
        return []
    return list(stem) if isinstance(stem, nn.ModuleList) else [stem]


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose outputs are recorded, for lk_ablate models and the common timm families."""
    mods: list[nn.Module] = []
    if hasattr(model, "blocks") and callable(model.blocks) and not isinstance(model.blocks, nn.Module):
        # lk_ablate models: stem, residual units (pairs split), downsample / transition layers.
        mods += _stem_units(getattr(model, "stem", None))
        for unit in model.blocks():
            mods += list(unit) if isinstance(unit, (tuple, list)) else [unit]
        for name, m in model.named_modules():
            if name.endswith(".downsample") and not isinstance(m, nn.Identity):
                mods.append(m)
        for t in getattr(model, "transitions", []) or []:
            mods += list(t) if isinstance(t, nn.Sequential) else [t]
        return mods
    if hasattr(model, "stages") and hasattr(model, "stem"):  # timm ConvNeXt-like
        mods.append(model.stem)
        for stage in model.stages:
            ds = getattr(stage, "downsample", None)
            if ds is not None and not isinstance(ds, nn.Identity):
                mods.append(ds)
            mods += list(getattr(stage, "blocks", []))
        return mods
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # timm / torchvision ResNet
        mods.append(model.maxpool if getattr(model, "maxpool", None) is not None else model.conv1)
        for i in range(1, 5):
            mods += list(getattr(model, f"layer{i}"))
        return mods
    if isinstance(getattr(model, "blocks", None), nn.Sequential):  # ViT-like
        mods.append(model.patch_embed)
        mods += list(model.blocks)
        return mods
    raise ConfigError(f"cannot find the layers of {type(model).__name__}; list them in feature_variance.modules")


def _as_map(z: Any, prefix_tokens: int) -> torch.Tensor:
    if isinstance(z, (tuple, list)):
        z = z[0]
    if z.dim() == 4:
        return z
    if z.dim() == 3:  # (B, N, C) tokens
        z = z[:, prefix_tokens:]
        n = z.shape[1]
        h = math.isqrt(n)
        if h * h != n:
            raise DataError(f"cannot reshape {n} tokens to a square map")
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], h, h)
    raise DataError(f"feature of shape {tuple(z.shape)} is not a map")


@torch.no_grad()
def run(model: nn.Module, cfg: FeatureVarianceConfig, data: Any, model_config: Any = None) -> dict[str, Any]:
    named = dict(model.named_modules())
    if cfg.modules:
        missing = [n for n in cfg.modules if n not in named]
        if missing:
            raise ConfigError(f"feature_variance.modules not in the model: {missing}")
        mods = [named[n] for n in cfg.modules]
    else:
        mods = feature_modules(model)
    names = {id(m): n for n, m in named.items()}
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    order: list[int] = []  # module ids in forward-call order
    var_sum: dict[int, float] = {}  # per_image: sum over images of the channel-mean spatial variance
    map_sum: dict[int, torch.Tensor] = {}  # batch_mean: sum of the current group's maps

    def hook(m: nn.Module, inp: Any, out: Any) -> None:
        z = _as_map(out, prefix).float()
        key = id(m)
        if key not in order:
            order.append(key)
        if cfg.reduction == "per_image":
            var_sum[key] = var_sum.get(key, 0.0) + float(_spatial_var(z).mean(dim=1).sum())
        else:
            s = z.sum(dim=0)
            map_sum[key] = map_sum[key] + s if key in map_sum else s

    handles = [m.register_forward_hook(hook) for m in mods]
    device = model_device(model)
    n_images, in_group = 0, 0
    group_vars: dict[int, list[float]] = {}
    try:
        for x, _ in iterate_batches(data, cfg.max_images):
            while x.shape[0]:
                # batch_mean groups are exactly ``batch_mean_size`` consecutive images (the last may be short)
                take = x.shape[0] if cfg.reduction == "per_image" else min(x.shape[0], cfg.batch_mean_size - in_group)
                model(x[:take].to(device))
                n_images, in_group, x = n_images + take, in_group + take, x[take:]
                if cfg.reduction == "batch_mean" and in_group == cfg.batch_mean_size:
                    _close_group(order, map_sum, in_group, group_vars)
                    in_group = 0
        if cfg.reduction == "batch_mean" and in_group:
            _close_group(order, map_sum, in_group, group_vars)
    finally:
        for h in handles:
            h.remove()
    if n_images < 2 or not order:
        raise DataError("feature_variance needs at least 2 images and a model whose layers ran")
    layers = []
    for i, key in enumerate(order):
        if cfg.reduction == "per_image":
            var = var_sum[key] / n_images
        else:
            var = sum(group_vars[key]) / len(group_vars[key])
        layers.append({"name": names.get(key, "?"), "index": i, "depth": i / max(len(order) - 1, 1),
                       "variance": var})
    return {"analysis": "feature_variance", "config": cfg.to_dict(), "images": n_images, "layers": layers,
            "summary": {"mean_variance": sum(layer["variance"] for layer in layers) / len(layers),
                        "last_variance": layers[-1]["variance"]}}


def _spatial_var(z: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the last two (spatial) dims; a 1x1 map has variance 0."""
    if z.shape[-1] * z.shape[-2] < 2:
        return torch.zeros(z.shape[:-2], device=z.device)
    return z.flatten(-2).var(dim=-1)


def _close_group(order: list[int], map_sum: dict[int, torch.Tensor], n: int,
                 group_vars: dict[int, list[float]]) -> None:
    for key in order:
        mean_map = map_sum.pop(key) / n  # (C, H, W): the group's mean feature map
        group_vars.setdefault(key, []).append(float(_spatial_var(mean_map).mean()))


def plot(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    layers = result["layers"]
    ax.plot([layer["depth"] for layer in layers], [layer["variance"] for layer in layers], marker="s", ms=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("normalised depth")
    ax.set_ylabel("feature map variance")
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    return {"feature_variance.mean": result["summary"]["mean_variance"]}
