"""Lesion study: accuracy when n residual blocks are removed (replaced by the identity), n random draws each.

A residual unit is what ``model.blocks()`` returns: one ConvNeXt block, or for RepLKNet a (RepLKBlock, ConvFFN)
pair (24 in RepLKNet-31B) removed together, as in the paper's ``evaluate_lession_replk``. Its fraction removed is
n / (all units of the model). The released script (LKRobust ``lession_study/main_lession_replk.py:51-55``) draws
``random.sample(range(4, 22), n)`` 10 times: the 18 units of RepLKNet-31B's third stage. ``candidate_stages: [2]``
(``paper.yaml``) picks the units of the third stage of any model with stages (lk_ablate RepLKNet and ConvNeXt,
timm ConvNeXt, ResNet ``layer3``), found through the model contract (``block_stages()``,
``lk_ablate.models.contract.unit_stages``), not from names; for RepLKNet-31B exactly ``range(4, 22)``. For ConvNeXt the third stage is a project choice (no released script); a model without
stages (ViT) keeps every unit as candidate, as the released ``engine.py`` ``evaluate_lession_vit``. The script's
``random`` is not seeded, so its draws cannot be reproduced; lk_ablate draws ``random.Random(seed).sample``.
By default every unit is a candidate.
For timm models: ``stages[*].blocks[*]`` (ConvNeXt-like), ``blocks[*]`` (ViT), ResNet blocks without a
downsample shortcut. A unit whose output shape differs from its input (it downsamples) cannot be removed.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..base.figures import new_figure, save_figure
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models import contract
from ..models.registry import ModelConfig
from .common import accuracy, iterate_batches, model_device, script_eval_spec
from .configs import LesionConfig  # noqa: F401  (re-exported: the section lives there)

Unit = tuple[nn.Module, ...]


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """``lession_study/utils.py:68-73`` (``get_imagenet_data``): Resize(256, bicubic), CenterCrop(224), ImageNet
    mean/std for every model; a model whose input is not 224 px gets the same geometry scaled to its size (see
    :func:`~lk_ablate.analysis.common.script_eval_spec`)."""
    return script_eval_spec(cfg, "bicubic")


def unit_stages(model: nn.Module, units: Sequence[Unit] | None = None) -> list[int] | None:
    """The stage index of every residual unit (the model contract's ``block_stages()``; timm ConvNeXt
    ``stages[i]``, ResNet ``layer{i+1}``), or None for a model without stages (ViT)."""
    return contract.unit_stages(model)


def residual_units(model: nn.Module) -> list[Unit]:
    """The model's removable residual units in forward order, each as the blocks the forward calls (a RepLKNet
    unit is its (RepLKBlock, ConvFFN) pair)."""
    return [tuple(contract.unit_parts(u)) for u in contract.units(model)]


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


@contextlib.contextmanager
def units_removed(units: Sequence[Unit]) -> Iterator[None]:
    """Within the block, every module of ``units`` returns its input unchanged (its forward is shadowed)."""
    modules = [m for unit in units for m in unit]
    for m in modules:
        m.forward = _identity
    try:
        yield
    finally:
        for m in modules:
            del m.forward


@torch.no_grad()
def check_removable(model: nn.Module, units: Sequence[Unit], x: torch.Tensor) -> None:
    """ConfigError naming the units whose output shape differs from their input shape."""
    shapes: dict[int, list[Any]] = {}

    def pre(m: nn.Module, inp: Any) -> None:
        shapes.setdefault(id(m), [None, None])[0] = tuple(inp[0].shape)

    def post(m: nn.Module, inp: Any, out: Any) -> None:
        o = out[0] if isinstance(out, (tuple, list)) else out
        shapes.setdefault(id(m), [None, None])[1] = tuple(o.shape)

    handles = [u[0].register_forward_pre_hook(pre) for u in units] + [u[-1].register_forward_hook(post) for u in units]
    try:
        model(x.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    bad = [i for i, u in enumerate(units)
           if shapes.get(id(u[0]), [None])[0] != shapes.get(id(u[-1]), [None, None])[1]]
    if bad:
        raise ConfigError(f"residual units {bad} change the feature shape and cannot be removed; leave them out "
                          "of lesion.candidates")


def run(model: nn.Module, cfg: LesionConfig, data: Any, model_config: Any = None) -> dict[str, Any]:
    units = residual_units(model)
    candidates = list(cfg.candidates) if cfg.candidates else list(range(len(units)))
    if cfg.candidate_stages:
        stages = unit_stages(model, units)
        if stages is not None:
            candidates = [i for i, s in enumerate(stages) if s in set(cfg.candidate_stages)]
            if not candidates:
                raise ConfigError(f"lesion.candidate_stages {list(cfg.candidate_stages)}: the model has no units "
                                  f"there (its units are in stages {sorted(set(stages))})")
    if any(not 0 <= i < len(units) for i in candidates) or len(set(candidates)) != len(candidates):
        raise ConfigError(f"lesion.candidates must be distinct indices in [0, {len(units) - 1}], got {candidates}")
    ns = list(cfg.ns) if cfg.ns else list(range(len(candidates) + 1))
    if max(ns) > len(candidates):
        raise ConfigError(f"lesion.ns asks to remove {max(ns)} units but only {len(candidates)} are candidates")
    batches = list(iterate_batches(data, cfg.max_images)) if cfg.cache_images else data
    probe = next(iterate_batches(batches, 2), None)
    if probe is None:
        raise DataError("lesion: the data source yielded no images")
    check_removable(model, [units[i] for i in candidates], probe[0])
    rng = random.Random(cfg.seed)
    points = []
    for n in ns:
        draws = [[]] if n == 0 else [sorted(rng.sample(candidates, n)) for _ in range(cfg.samples)]
        accs = []
        for removed in draws:
            with units_removed([units[i] for i in removed]):
                accs.append(accuracy(model, batches, cfg.max_images))
        points.append({"n": n, "fraction": n / len(units), "removed": draws, "accuracies": accs,
                       "mean": sum(accs) / len(accs), "min": min(accs), "max": max(accs)})
    return {"analysis": "lesion", "config": cfg.to_dict(), "total_units": len(units), "candidates": candidates,
            "points": points}


def plot(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    pts = result["points"]
    xs = [p["fraction"] for p in pts]
    ax.plot(xs, [p["mean"] for p in pts], marker="o", ms=3, label="mean")
    ax.fill_between(xs, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.25, label="min-max")
    ax.set_xlabel(f"fraction of residual units removed (of {result['total_units']})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for p in result["points"]:
        out[f"lesion.n{p['n']}.mean"] = p["mean"]
    return out
