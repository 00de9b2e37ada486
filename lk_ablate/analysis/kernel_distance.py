"""Kernel attention distance: how far from its centre each depthwise kernel puts its weight (per channel, per layer).

For a kernel ``w`` (kh x kw) with centre ``c = ((kh-1)/2, (kw-1)/2)`` and ``R = |c|`` (the corner's distance, so
the normalised tap distance ``d_ij = |(i, j) - c| / R`` lies in [0, 1]):

    normalised (default):   D = sum_ij |w_ij| d_ij / sum_ij |w_ij|      in [0, 1]
    released script:        D = sum_ij |w_ij| d_ij                     (``normalize_weights: false``)

The normalised form is an |w|-weighted mean distance, the analogue of a ViT's mean attention distance: it does
not grow with the kernel's overall scale, so layers and models with different weight norms compare (a project
option). The paper's released script (LKRobust ``kernel_attention_pattern/kernel_atten_dis.py:45-66``) sums
without dividing by ``sum |w|``, which also scales with the kernel's magnitude; ``normalize_weights: false``
reproduces it and is what ``paper.yaml`` sets (for square kernels its ``max_dis = R * sqrt(2)`` is our ``R``).
The script read RepLKNet-31B's ImageNet-1K 224 px checkpoint. It reads only RepLKNet's large branch
(``lkb_origin.conv``), whose scale is arbitrary because a BatchNorm follows it (another reason to normalise);
``reparameterize: true`` analyses the merged inference kernels instead (BN folded, the 5x5 small kernel added at
the centre), for models with a ``reparameterize`` method (RepLKNet). ``modules`` selects the kernels.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any

import torch
import torch.nn as nn

from ..base.errors import ConfigError
from ..base.figures import new_figure, save_figure
from ..models.layers import LargeKernelDWConv
from .configs import KernelDistanceConfig


def is_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels
            and max(m.kernel_size) > 1)


def depthwise_convs(model: nn.Module, modules: str = "auto", include: str = "*") -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) of the selected depthwise convolutions, in module order."""
    large = [(n, m) for n, m in model.named_modules() if isinstance(m, LargeKernelDWConv) and max(m.kernel_size) > 1]
    if modules == "large_kernel" or (modules == "auto" and large):
        found = large
    else:
        found = [(n, m) for n, m in model.named_modules() if is_depthwise(m)]
    found = [(n, m) for n, m in found if fnmatch.fnmatch(n, include)]
    if not found:
        raise ConfigError(f"no depthwise kernels selected (modules={modules!r}, include={include!r}) in "
                          f"{type(model).__name__}")
    return found


def tap_distances(kh: int, kw: int, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(kh, kw) distances of each tap from the kernel centre, divided by the corner's distance."""
    cy, cx = (kh - 1) / 2, (kw - 1) / 2
    radius = math.hypot(cy, cx)
    if radius == 0:
        raise ConfigError("a 1x1 kernel has no spatial extent; its attention distance is undefined")
    ys = torch.arange(kh, device=device, dtype=dtype) - cy
    xs = torch.arange(kw, device=device, dtype=dtype) - cx
    return torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / radius


def kernel_attention_distance(weight: torch.Tensor, normalize_weights: bool = True) -> torch.Tensor:
    """Per-channel attention distance of depthwise kernels ``(C, 1, kh, kw)``, ``(C, kh, kw)`` or ``(kh, kw)``.

    An all-zero kernel has no weighted mean; with ``normalize_weights`` its distance is reported as 0.
    """
    w = weight.detach().float()
    if w.dim() == 4:
        if w.shape[1] != 1:
            raise ConfigError(f"expected a depthwise weight (C, 1, kh, kw), got {tuple(w.shape)}")
        w = w[:, 0]
    elif w.dim() == 2:
        w = w[None]
    elif w.dim() != 3:
        raise ConfigError(f"expected a kernel of 2-4 dims, got {tuple(w.shape)}")
    a = w.abs()
    d = tap_distances(w.shape[-2], w.shape[-1], device=w.device)
    total = (a * d).sum(dim=(-2, -1))
    if not normalize_weights:
        return total
    mass = a.sum(dim=(-2, -1))
    return torch.where(mass > 0, total / mass.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(total))


def run(model: nn.Module, cfg: KernelDistanceConfig, data: Any = None, model_config: Any = None) -> dict[str, Any]:
    """Sorted per-channel distances of every selected depthwise kernel."""
    if cfg.reparameterize:
        if not callable(getattr(model, "reparameterize", None)):
            raise ConfigError(f"kernel_distance.reparameterize: {type(model).__name__} has no reparameterize()")
        model = copy.deepcopy(model).eval()
        model.reparameterize("kernels")
    convs = depthwise_convs(model, cfg.modules, cfg.include)
    layers = []
    for i, (name, conv) in enumerate(convs):
        d = kernel_attention_distance(conv.weight, cfg.normalize_weights)
        s = torch.sort(d).values
        layers.append({
            "name": name, "index": i, "depth": i / max(len(convs) - 1, 1),
            "kernel_size": list(conv.kernel_size), "channels": int(d.numel()),
            "zero_kernels": int((conv.weight.detach().abs().flatten(1).sum(1) == 0).sum()),
            "mean": float(s.mean()), "median": float(s.median()), "min": float(s[0]), "max": float(s[-1]),
            "sorted": s.tolist(),
        })
    means = [layer["mean"] for layer in layers]
    return {"analysis": "kernel_distance", "config": cfg.to_dict(), "layers": layers,
            "summary": {"mean_distance": sum(means) / len(means), "layers": len(layers)}}


def plot(result: dict[str, Any], path: Any) -> Any:
    from matplotlib import colormaps

    fig, axes = new_figure(2)
    ax, ax2 = axes[0]
    layers = result["layers"]
    cmap = colormaps["viridis"]
    for layer in layers:
        s = layer["sorted"]
        xs = [i / max(len(s) - 1, 1) for i in range(len(s))]
        ax.plot(xs, s, color=cmap(layer["depth"]), lw=0.8)
    ax.set_xlabel("channel (sorted, normalised index)")
    ax.set_ylabel("attention distance")
    ax.set_title("per-channel kernel attention distance\n(colour: layer depth)")
    ax2.plot([layer["depth"] for layer in layers], [layer["mean"] for layer in layers], marker="o", ms=3)
    ax2.set_xlabel("normalised depth")
    ax2.set_ylabel("mean attention distance")
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    return {"kernel_distance.mean": result["summary"]["mean_distance"]}
