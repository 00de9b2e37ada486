"""Effective receptive field (ERF) and its high-contribution area ratio, as in RepLKNet (Ding et al., CVPR 2022).

The released code is DingXiaoH/RepLKNet-pytorch ``erf/`` (commit b76808a); line numbers below refer to it.

- Images (``visualize_erf.py:44-61``): the first ``num_images`` images of the validation ImageFolder, in its
  order, one at a time, ``Resize((1024, 1024), bicubic)`` (both sides, no crop), ToTensor, ImageNet mean/std.
  The model is in eval mode.
- Output (``replknet_for_erf.py``, ``resnet_for_erf.py``): the feature map of the last stage, before the final
  norm, pooling and head. ``stage`` picks another stage's output (same convention: its raw output).
- Per image (``visualize_erf.py:31-40``): ``relu(out[:, :, h // 2, w // 2]).sum()`` (the centre pixel of the
  map, every channel), its gradient with respect to the normalised input, ``relu`` of that gradient (not abs),
  summed over the RGB channels: one H x W contribution map per image. Images whose map is not finite are skipped
  (``:105-110``; the script checks for NaN only, an infinite map would make its average infinite); the maps of the
  first ``num_images`` usable images are averaged (``:94-110``).
- Area ratio (``analyze_erf.py:53-73``): the average map ``A`` is rescaled to ``log10(A + 1) / max`` and, for each
  threshold t, the smallest centred square of side ``2i + 1`` (i = 1 .. H // 2 - 1; rows and columns
  ``c - i .. c + i`` around ``c = H // 2``) whose sum exceeds t of the total is found; the result is its side and
  its area as a fraction of the image, ``side**2 / (H * W)``. No square qualifies: side and ratio are None
  (``get_rectangle`` returns None there and the script's caller fails on it).

The rescale and the square sums run in float32 as the script's numpy code does on its float32 map
(``rescale_dtype``); the averaged map is accumulated in float64 (the script: float32; they differ by ~5e-8
norm-wise).

Deviations kept as options, never the ``paper`` default: ``gradient: abs`` (|grad| instead of relu), ``rescale:
none`` (the map divided by its max, no log: the area ratio of the raw contributions), ``rescale_dtype: float64``
(float32's ``A + 1`` loses contributions below ~1e-7), ``allow_fewer`` (average the usable images there are when
the folder holds fewer than ``num_images``; the script then writes nothing, and it also needs one image more than
``num_images`` before it saves, ``:96-98``: lk_ablate stops after ``num_images``).

Token models (timm ViTs): ``stage`` counts blocks; the output of block ``stage`` (before the final norm) has its
prefix (class / register) tokens dropped and its patch tokens laid out on the patch grid (B, C, H / p, W / p), so
the "centre pixel" is the patch token at the grid's centre (gh // 2, gw // 2).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base.errors import ConfigError, DataError
from ..base.figures import new_figure, save_figure
from ..base.metric_keys import erf_scalar
from ..data.transforms import EvalSpec
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .common import iterate_batches, model_device
from .configs import DTYPES, GRADIENTS, RESCALES, ErfConfig

# analyze_erf.py's heat map: seaborn's RdYlGn centred at 0 on a [0, 1] map, i.e. the colormap's upper half.
CMAP_RANGE = (0.5, 1.0)


def section_eval_spec(cfg: ErfConfig, model_config: ModelConfig, protocol: str) -> EvalSpec:
    """The images as the section reads them: resized to ``image_size`` x ``image_size`` (both sides, no crop).
    ``paper`` (``visualize_erf.py:45-49``): bicubic, ImageNet mean/std for every model; ``model``: the model's
    own interpolation and mean/std."""
    s = cfg.image_size
    if protocol == "paper":
        return EvalSpec(crop=(s, s), resize=s, squash=True, interpolation="bicubic", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD)
    return EvalSpec(crop=(s, s), resize=s, squash=True, interpolation=model_config.interpolation,
                    mean=model_config.mean, std=model_config.std)


# --- the map of one image ---------------------------------------------------------------------------------
class _Reached(Exception):
    """Raised by the stage hook to stop the forward pass once the chosen output exists (nothing after it runs)."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


def _is_token_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), nn.Sequential) and hasattr(model, "patch_embed") \
        and not hasattr(model, "stages")


def stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every stage whose output ``stage`` may pick, in forward order: ``stages[i]`` (lk_ablate
    ConvNeXt / RepLKNet, timm ConvNeXt-like), ``layer1..4`` (ResNet), or the blocks of a timm ViT."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
        return [(f"stages.{i}", s) for i, s in enumerate(stages)]
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(m, nn.Module) for m in layers):
        return [(f"layer{i + 1}", m) for i, m in enumerate(layers)]
    if _is_token_model(model):
        return [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    raise ConfigError(f"erf needs a model with stages (lk_ablate models, timm ConvNeXt-like `stages`, ResNet "
                      f"`layer1..4`) or a timm ViT (`blocks`); {type(model).__name__} has none of them")


def resolve_stage(model: nn.Module, stage: int) -> tuple[int, str, nn.Module]:
    mods = stage_modules(model)
    if not -len(mods) <= stage < len(mods):
        raise ConfigError(f"erf.stage {stage} out of range: the model has {len(mods)} stages "
                          f"({mods[0][0]} .. {mods[-1][0]}); -1 is the last")
    i = stage % len(mods)
    return i, *mods[i]


def _token_map(model: nn.Module, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ViT block output (B, N, C) -> (B, C, gh, gw): prefix tokens dropped, patch tokens on the patch grid."""
    if tokens.dim() == 4:  # NHWC blocks (dynamic_img_size models keep the tokens flat; some timm models do not)
        return tokens.permute(0, 3, 1, 2)
    pe = model.patch_embed
    gh, gw = pe.dynamic_feat_size(size) if hasattr(pe, "dynamic_feat_size") else pe.grid_size
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    patches = tokens[:, prefix:]
    if patches.shape[1] != gh * gw:
        raise ConfigError(f"erf: {patches.shape[1]} patch tokens do not fill the {gh}x{gw} patch grid")
    return patches.reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2)


def _check_token_input(model: nn.Module, size: tuple[int, int]) -> None:
    pe = getattr(model, "patch_embed", None)
    if getattr(pe, "strict_img_size", False) and tuple(pe.img_size) != tuple(size):
        raise ConfigError(f"erf: this ViT takes {pe.img_size[0]}x{pe.img_size[1]} px images only, not "
                          f"{size[0]}x{size[1]}: set erf.image_size {pe.img_size[0]}, or build the timm model with "
                          "dynamic_img_size=True (model keyword arguments) to resample its position embedding")


def stage_output(model: nn.Module, x: torch.Tensor, stage: int = -1) -> torch.Tensor:
    """The (B, C, h, w) output of stage ``stage`` for input ``x`` (a ViT block's tokens laid out on the patch
    grid); the forward pass stops there."""
    _, _, module = resolve_stage(model, stage)
    token = _is_token_model(model)
    if token:
        _check_token_input(model, tuple(x.shape[-2:]))

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        raise _Reached(out)

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Reached as reached:
        out = reached.output
    else:
        raise ConfigError(f"erf: the forward pass of {type(model).__name__} never called stage {stage}")
    finally:
        handle.remove()
    if token:
        out = _token_map(model, out, tuple(x.shape[-2:]))
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ConfigError(f"erf: stage {stage}'s output is not a (B, C, h, w) map")
    return out


def _maps(model: nn.Module, x: torch.Tensor, stage: int, gradient: str) -> tuple[torch.Tensor, tuple[int, int]]:
    if gradient not in GRADIENTS:
        raise ConfigError(f"erf.gradient must be one of {GRADIENTS}, got {gradient!r}")
    with torch.enable_grad():
        x = x.detach().to(torch.float32).requires_grad_(True)
        out = stage_output(model, x, stage)
        h, w = out.shape[-2:]
        (grad,) = torch.autograd.grad(F.relu(out[:, :, h // 2, w // 2]).sum(), x)
    grad = F.relu(grad) if gradient == "relu" else grad.abs()
    return grad.sum(dim=1), (int(h), int(w))


def contribution_maps(model: nn.Module, x: torch.Tensor, stage: int = -1, gradient: str = "relu") -> torch.Tensor:
    """(B, H, W) float32: per image, ``gradient``(d relu(out[:, :, h//2, w//2]).sum() / d x) summed over the input
    channels (``visualize_erf.py:31-40``). The images of a batch are independent in eval mode, so each map equals
    the map of that image alone."""
    return _maps(model, x, stage, gradient)[0]


# --- the area ratio -----------------------------------------------------------------------------------------
def rescale_map(erf: np.ndarray, rescale: str = "log", dtype: str = "float32") -> np.ndarray:
    """``analyze_erf.py:68-69``: ``log10(A + 1)`` divided by its max (``rescale: log``), or ``A / max`` (``none``),
    computed in ``dtype``. The script works in float32 (its map is saved as float32), where ``A + 1`` keeps ~7
    digits: contributions below ~1e-7 become 0 and a map whose max is small (an untrained model) is quantised;
    ``float64`` keeps them. An all-zero map stays zero."""
    if rescale not in RESCALES:
        raise ConfigError(f"erf.rescale must be one of {RESCALES}, got {rescale!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"erf.rescale_dtype must be one of {DTYPES}, got {dtype!r}")
    a = np.asarray(erf, dtype=dtype)
    a = np.log10(a + a.dtype.type(1)) if rescale == "log" else a
    top = a.max()
    return a / top if top > 0 else np.zeros_like(a)


def high_contribution_square(data: np.ndarray, threshold: float) -> tuple[int, float] | None:
    """``get_rectangle`` (``analyze_erf.py:53-61``): (side, area fraction) of the smallest centred square of side
    2i + 1, i = 1 .. H // 2 - 1 (rows and columns c - i .. c + i around c = H // 2), whose sum is more than
    ``threshold`` of the map's total; None when none is. Sums and the comparison are in ``data``'s dtype, as the
    script's numpy code (float32 for its map: the threshold is compared as a float32)."""
    data = np.asarray(data)
    h, w = data.shape
    if h != w:
        raise ConfigError(f"erf: the area ratio needs a square map, got {h}x{w}")
    total = np.sum(data)
    if not total > 0:
        return None
    t = data.dtype.type(threshold)
    for i in range(1, h // 2):
        if np.sum(data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]) / total > t:
            side = 2 * i + 1
            return side, side / h * side / w
    return None


def threshold_key(t: float) -> str:
    """A threshold as a summary-scalar suffix: 0.2 -> ``t20``, 0.99 -> ``t99``, 0.995 -> ``t99.5``."""
    return erf_scalar("area", t).removeprefix("area_")


def area_ratios(erf: np.ndarray, thresholds: Sequence[float], rescale: str = "log",
                dtype: str = "float32") -> list[dict[str, Any]]:
    """[{threshold, side, area_ratio}] of the rescaled map (side and area_ratio None where no square qualifies)."""
    data = rescale_map(erf, rescale, dtype)
    out = []
    for t in thresholds:
        found = high_contribution_square(data, t)
        out.append({"threshold": float(t), "side": None if found is None else found[0],
                    "area_ratio": None if found is None else found[1]})
    return out


# --- run ----------------------------------------------------------------------------------------------------
def _in_order(data: Any, chunk: int) -> Any:
    """(images, labels) batches of ``data`` in order. From a sequential DataLoader (``ValSource``) the images are
    read from its dataset ``chunk`` at a time, so only the images used are decoded: the loader's own batches
    (``data.batch_size`` at 1024 px, prefetched by its workers) would decode hundreds the analysis never reads."""
    ds = getattr(data, "dataset", None)
    if isinstance(data, torch.utils.data.DataLoader) and isinstance(data.sampler, torch.utils.data.SequentialSampler):
        for start in range(0, len(ds), chunk):
            items = [ds[i] for i in range(start, min(start + chunk, len(ds)))]
            yield torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
    else:
        yield from iterate_batches(data)


def run(model: nn.Module, cfg: ErfConfig, data: Any, model_config: ModelConfig) -> dict[str, Any]:
    """The averaged map of the first ``num_images`` usable images of ``data`` ((images, labels) batches,
    normalised, ``image_size`` square; the labels are not used) and its area ratios. The map is returned as
    ``arrays["erf"]`` (float32, H x W); ``run_analyses`` stores it beside the results file."""
    if data is None:
        raise ConfigError("erf needs images: give --data.imagenet_val DIR (the first erf.num_images images are used)")
    device = model_device(model)
    stage_index, stage_name, _ = resolve_stage(model, cfg.stage)
    total: torch.Tensor | None = None
    used = seen = 0
    skipped: list[int] = []
    feature_size: list[int] | None = None
    for x, _ in _in_order(data, cfg.chunk):
        if tuple(x.shape[-2:]) != (cfg.image_size, cfg.image_size):
            raise ConfigError(f"erf.image_size is {cfg.image_size} but the images are {x.shape[-2]}x{x.shape[-1]}: "
                              "give images of that size or set erf.image_size to theirs")
        start = 0
        while start < x.shape[0] and used < cfg.num_images:
            n = min(cfg.chunk, cfg.num_images - used, x.shape[0] - start)
            xb = x[start:start + n].to(device)
            maps, fsize = _maps(model, xb, cfg.stage, cfg.gradient)
            feature_size = list(fsize)
            maps = maps.double().cpu()
            for m in maps:
                if not bool(torch.isfinite(m).all()):
                    skipped.append(seen)
                else:
                    total = m if total is None else total + m
                    used += 1
                seen += 1
            start += n
        if used >= cfg.num_images:
            break
    if used < cfg.num_images and not (cfg.allow_fewer and used > 0):
        raise DataError(f"erf: {used} usable image(s) of the {cfg.num_images} asked for ({seen} read, {len(skipped)} "
                        "with non-finite gradients): give a folder with more images, lower erf.num_images, or set "
                        "erf.allow_fewer true")
    avg = (total / used).numpy().astype(np.float32)
    return {"analysis": "erf", "config": cfg.to_dict(), "image_size": list(avg.shape), "stage": stage_index,
            "stage_name": stage_name, "feature_size": feature_size,
            "centre": [feature_size[0] // 2, feature_size[1] // 2], "images": used, "images_read": seen,
            "skipped": skipped, "map_max": float(avg.max()), "map_min": float(avg.min()),
            "thresholds": area_ratios(avg, cfg.thresholds, cfg.rescale, cfg.rescale_dtype), "arrays": {"erf": avg}}


# --- plot and summary ---------------------------------------------------------------------------------------
def colormap() -> Any:
    """The heat maps' colormap: the upper half of RdYlGn (``analyze_erf.py:36-39`` draws the [0, 1] map with
    seaborn's RdYlGn centred at 0)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["RdYlGn"](np.linspace(*CMAP_RANGE, 256)), name="erf")


def draw_map(ax: Any, erf: np.ndarray, rescale: str = "log", title: str | None = None) -> Any:
    """The rescaled map on [0, 1] (one colour scale for every panel)."""
    im = ax.imshow(rescale_map(erf, rescale), cmap=colormap(), vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return im


def plot(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure(size=(4.2, 4.0))
    ax = axes[0][0]
    erf = result.get("arrays", {}).get("erf")
    rescale = (result.get("config") or {}).get("rescale", "log")
    im = draw_map(ax, erf, rescale)
    lines = [f"t={p['threshold']:g}: " + ("none" if p["side"] is None else
                                         f"{p['side']} px, {100 * p['area_ratio']:.2f}%")
             for p in result["thresholds"]]
    ax.set_title(f"ERF ({result['images']} images, {result['stage_name']})\n" + "; ".join(lines), fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float | None]:
    """Per threshold t: ``erf.area_t<100t>`` (% of the image) and ``erf.side_t<100t>`` (px); None where no square
    reaches t. The names are base/metric_keys.py's (``erf_scalar``): W&B ``analysis/erf/area_t20``, ..."""
    out: dict[str, float | None] = {}
    for p in result["thresholds"]:
        t = p["threshold"]
        out[f"erf.{erf_scalar('area', t)}"] = None if p["area_ratio"] is None else 100.0 * p["area_ratio"]
        out[f"erf.{erf_scalar('side', t)}"] = None if p["side"] is None else float(p["side"])
    return out


def area_table(results: dict[Any, dict[str, Any]], label: str = "kernel") -> str:
    """A printable table: one row per result (keyed by e.g. kernel size), side (px) and area (%) per threshold."""
    thresholds = [p["threshold"] for p in next(iter(results.values()))["thresholds"]]
    head = f"{label:>8} " + " ".join(f"{'t=' + format(t, 'g'):>16}" for t in thresholds)
    rows = [head, f"{'':>8} " + " ".join(f"{'side px  area %':>16}" for _ in thresholds)]
    for key, r in results.items():
        cells = []
        for p in r["thresholds"]:
            cells.append(f"{'none':>16}" if p["side"] is None else f"{p['side']:>7d} {100 * p['area_ratio']:8.2f}")
        rows.append(f"{key!s:>8} " + " ".join(cells))
    return "\n".join(rows)
