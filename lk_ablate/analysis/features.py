"""Feature-map variance per layer against normalised depth (Park & Kim, ICLR 2022, Fig. 9; the paper's Fig. 10).

For each recorded layer output ``z`` the spatial variance (unbiased, over H x W, or over the patch tokens of a ViT)
is taken per channel and averaged over channels. Two reductions over the images of a group:

- ``batch_mean`` (the paper's released script, LKRobust ``feature_map_variance/main.py:196-236``): the group's
  images are averaged into one mean map first (``torch.mean(xs, dim=0)``), then its spatial variance is taken;
  the result is averaged over the groups. It measures the variance of the *average* map, which is smaller and
  mixes in how similar the images are.
- ``per_image`` (Park & Kim's ``featuremap_variance.ipynb``): the spatial variance of every image's map, averaged
  over the images.

Groups (``sampling``):

- ``permutations`` (the released script, ``main.py:168-203``): ``torch.manual_seed(seed)`` then ``sweeps`` draws
  of ``torch.randperm(pool_size)`` over the first ``pool_size`` images the data source yields (the script: the
  first 1,280 images of the ImageFolder, i.e. its first 26 classes); each permutation is cut into batches of
  ``batch_mean_size`` and only its *last* batch is kept (the script overwrites its per-batch record). With the
  same seed and torch's CPU generator the permutations are the script's own (``randperm`` is the same algorithm
  for a given torch version); the data source must then yield the validation folder in ImageFolder order (no
  ``--limit`` subset, no shuffling).
- ``consecutive``: the first ``max_images`` images in consecutive groups of ``batch_mean_size`` (``per_image``:
  one group of all of them).

Layers, in forward order:

- lk_ablate models (``blocks()`` contract): the stem (each of RepLKNet's four stem units), every residual block
  (RepLKBlock and ConvFFN separately) and every downsampling / transition unit, as the released script lists
  RepLKNet's. ``drop_final_block`` leaves out the last block's output, as the script does for RepLKNet (its list
  ends with the last ConvFFN and it drops the last entry, ``main.py:137-146,217-218``); for ConvNeXt the same rule
  is a project choice (no released script).
- timm ViTs: the patch + position embedding (``pos_drop`` output, class token included and then dropped) and,
  per block, the output after the attention residual and after the MLP residual (``main.py:151-156``): the
  alternation the paper discusses. Prefix tokens (class / register) are left out of the variance.
- timm ResNets: the stem (after max-pool) and every bottleneck block (``main.py:113-120``).
- timm ConvNeXt-like (``stem`` + ``stages``): the stem, each stage's downsample and blocks.

For ResNet-50 and ViT the script's dropped last entry is the classifier, which is never recorded here, so
``drop_final_block`` does not apply to timm models. Depth = index / (layers - 1).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..base.figures import new_figure, save_figure
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models.contract import AblationModel, unit_parts
from ..models.registry import ModelConfig
from .common import iterate_batches, model_device, script_eval_spec
from .configs import FeatureVarianceConfig

Point = tuple[str, nn.Module, str]  # (name, module, "out": its output | "in": its input)


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """``feature_map_variance/main.py:172-182``: Resize(256) (bilinear), CenterCrop(224), ImageNet mean/std for
    every model; a model whose input is not 224 px gets the same geometry scaled to its size (see
    :func:`~lk_ablate.analysis.common.script_eval_spec`)."""
    return script_eval_spec(cfg, "bilinear")


# --- which outputs are recorded -------------------------------------------------------------------------
def _stem_units(stem: nn.Module | None) -> list[nn.Module]:
    # RepLKNet's stem is a ModuleList of conv units (each recorded, as the released script does);
    # ConvNeXt's stem is one Sequential(conv, norm) unit.
    if stem is None or isinstance(stem, nn.Identity):
        return []
    return list(stem) if isinstance(stem, nn.ModuleList) else [stem]


def _is_vit(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), nn.Sequential) and hasattr(model, "pos_drop")


def feature_points(model: nn.Module, drop_final_block: bool = False) -> list[Point]:
    """(name, module, "out" | "in") of the recorded layer outputs, for lk_ablate models and common timm families.

    Names are module names; a ViT's post-attention point is ``blocks.i.attn`` (the input of ``blocks.i.norm2``)
    and its post-MLP point ``blocks.i.mlp`` (the block's output).
    """
    names = {id(m): n for n, m in model.named_modules()}
    out = lambda mods: [(names.get(id(m), "?"), m, "out") for m in mods]  # noqa: E731
    if isinstance(model, AblationModel):
        # lk_ablate models: stem, residual blocks (pairs split), downsample / transition layers, in forward order.
        units = [unit_parts(u) for u in model.blocks()]
        mods = _stem_units(getattr(model, "stem", None))
        for unit in units:
            mods += list(unit)
        for name, m in model.named_modules():
            if name.endswith(".downsample") and not isinstance(m, nn.Identity):
                mods.append(m)
        for t in getattr(model, "transitions", []) or []:
            mods += list(t) if isinstance(t, nn.Sequential) else [t]
        if drop_final_block and units:
            mods = [m for m in mods if m is not units[-1][-1]]
        return out(mods)
    if _is_vit(model):
        points: list[Point] = [("pos_embed", model.pos_drop, "out")]
        for i, blk in enumerate(model.blocks):
            if not hasattr(blk, "norm2"):
                raise ConfigError(f"ViT block {i} ({type(blk).__name__}) has no norm2 to find its attention "
                                  "residual; list the modules in feature_variance.modules")
            points += [(f"blocks.{i}.attn", blk.norm2, "in"), (f"blocks.{i}.mlp", blk, "out")]
        return points
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # timm / torchvision ResNet
        mods = [model.maxpool if getattr(model, "maxpool", None) is not None else model.conv1]
        for i in range(1, 5):
            mods += list(getattr(model, f"layer{i}"))
        return out(mods)
    if hasattr(model, "stages") and hasattr(model, "stem"):  # timm ConvNeXt-like
        mods = [model.stem]
        for stage in model.stages:
            ds = getattr(stage, "downsample", None)
            if ds is not None and not isinstance(ds, nn.Identity):
                mods.append(ds)
            mods += list(getattr(stage, "blocks", []))
        return out(mods)
    raise ConfigError(f"cannot find the layers of {type(model).__name__}; list them in feature_variance.modules")


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of :func:`feature_points` (ViT attention points: their ``norm2``)."""
    return [m for _, m, _ in feature_points(model)]


def _spatial(z: Any, prefix_tokens: int) -> torch.Tensor:
    """A layer output as (B, C, S): NCHW maps flattened, ViT tokens (B, N, C) without the prefix tokens."""
    if isinstance(z, (tuple, list)):
        z = z[0]
    if z.dim() == 4:
        return z.flatten(2)
    if z.dim() == 3:
        return z[:, prefix_tokens:].transpose(1, 2)
    raise DataError(f"feature of shape {tuple(z.shape)} is not a map")


def _spatial_var(z: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the last (spatial) dim; a single position has variance 0."""
    if z.shape[-1] < 2:
        return torch.zeros(z.shape[:-1], device=z.device)
    return z.var(dim=-1)


class _GroupRecorder:
    """Forward hooks that accumulate, per point, the current group's map sum or per-image variance sum."""

    def __init__(self, points: list[Point], reduction: str, prefix_tokens: int) -> None:
        self.points, self.reduction, self.prefix = points, reduction, prefix_tokens
        self.order: list[int] = []  # point indices in forward-call order
        self.acc: dict[int, Any] = {}
        self.stats: dict[int, list[float]] = {}
        self.handles = []
        for i, (_, m, where) in enumerate(points):
            if where == "in":
                self.handles.append(m.register_forward_pre_hook(lambda mod, inp, i=i: self._add(i, inp[0])))
            else:
                self.handles.append(m.register_forward_hook(lambda mod, inp, o, i=i: self._add(i, o)))

    def _add(self, i: int, z: Any) -> None:
        z = _spatial(z, self.prefix).float()
        if i not in self.order:
            self.order.append(i)
        val = _spatial_var(z).mean(dim=1).sum() if self.reduction == "per_image" else z.sum(dim=0)
        self.acc[i] = self.acc[i] + val if i in self.acc else val

    def close_group(self, n: int) -> None:
        """End a group of ``n`` images: store its statistic per point."""
        for i in self.order:
            a = self.acc.pop(i)
            stat = a / n if self.reduction == "per_image" else _spatial_var(a / n).mean()
            self.stats.setdefault(i, []).append(float(stat))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def run(model: nn.Module, cfg: FeatureVarianceConfig, data: Any, model_config: Any = None) -> dict[str, Any]:
    named = dict(model.named_modules())
    if cfg.modules:
        missing = [n for n in cfg.modules if n not in named]
        if missing:
            raise ConfigError(f"feature_variance.modules not in the model: {missing}")
        points: list[Point] = [(n, named[n], "out") for n in cfg.modules]
    else:
        points = feature_points(model, cfg.drop_final_block)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    device = model_device(model)
    rec = _GroupRecorder(points, cfg.reduction, prefix)
    try:
        if cfg.sampling == "permutations":
            groups = cfg.groups()
            images = _collect(data, cfg.pool_size, {i for g in groups for i in g})
            for g in groups:
                model(torch.stack([images[i] for i in g]).to(device))
                rec.close_group(len(g))
            n_images = sum(len(g) for g in groups)
        else:
            n_images = _run_consecutive(model, cfg, data, rec, device)
    finally:
        rec.remove()
    if n_images < 2 or not rec.order:
        raise DataError("feature_variance needs at least 2 images and a model whose layers ran")
    layers = []
    for k, i in enumerate(rec.order):
        stats = rec.stats[i]
        layers.append({"name": points[i][0], "index": k, "depth": k / max(len(rec.order) - 1, 1),
                       "variance": sum(stats) / len(stats)})
    return {"analysis": "feature_variance", "config": cfg.to_dict(), "images": n_images, "layers": layers,
            "summary": {"mean_variance": sum(layer["variance"] for layer in layers) / len(layers),
                        "last_variance": layers[-1]["variance"]}}


def _collect(data: Any, pool_size: int, needed: set[int]) -> dict[int, torch.Tensor]:
    """The images with the ``needed`` indices among the first ``pool_size`` the source yields (kept on the CPU)."""
    images: dict[int, torch.Tensor] = {}
    seen = 0
    for x, _ in iterate_batches(data, pool_size):
        for j in range(x.shape[0]):
            if seen + j in needed:
                images[seen + j] = x[j].detach().cpu().clone()
        seen += x.shape[0]
    if seen < pool_size:
        raise DataError(f"feature_variance.pool_size is {pool_size} but the data source yielded {seen} images; "
                        "lower pool_size or give the whole validation folder (no --limit)")
    return images


def _run_consecutive(model: nn.Module, cfg: FeatureVarianceConfig, data: Any, rec: _GroupRecorder,
                     device: torch.device) -> int:
    group = cfg.batch_mean_size if cfg.reduction == "batch_mean" else cfg.max_images
    n_images, in_group = 0, 0
    for x, _ in iterate_batches(data, cfg.max_images):
        while x.shape[0]:
            # groups are exactly ``group`` consecutive images (the last may be short), whatever the batch size
            take = min(x.shape[0], group - in_group)
            model(x[:take].to(device))
            n_images, in_group, x = n_images + take, in_group + take, x[take:]
            if in_group == group:
                rec.close_group(in_group)
                in_group = 0
    if in_group:
        rec.close_group(in_group)
    return n_images


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
