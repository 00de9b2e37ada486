"""Occlusion: accuracy when 16x16 patches are dropped (set to black) at random, or by DINO saliency.

Follows the paper's ``occlusion_invariance/evaluate.py`` (after Naseer et al., 2021):

- ``random``: at level L, floor(L * P) of the P patches of a (H/16) x (W/16) grid are zeroed in [0, 1] pixel space
  (black), the same patches for the whole batch (one draw per batch and repeat).
- ``salient`` / ``non_salient``: a DINO ViT-S/16 (``timm`` ``vit_small_patch16_224`` with the DINO weights read
  from ``dino_path``) sees the image (resized to ``dino_img_size``, ImageNet mean/std). Its last block's
  attention from the class token to the patches (head ``dino_head``, 1 as in the released script; null = mean
  over heads) is renormalised to sum 1 and sorted. ``salient`` at level L drops the most-attended patches that
  together hold a fraction L of the attention mass; ``non_salient`` at level L drops the least-attended patches
  holding a fraction L. (The released script's ``drop_lambda`` is our level for the foreground run and 1 - level
  for the background run, which keeps the top ``drop_lambda`` of the mass.) The DINO patch mask is upsampled
  (nearest) to the model's input size.

Results also give, per level, the mean fraction of the image actually dropped.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base.figures import new_figure, save_figure
from ..base.safe_load import load_torch_file
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models.registry import ModelConfig
from .common import (count_correct, from_pixels, iterate_batches, logits_of, model_device, percent, script_eval_spec,
                     seeded_generator, to_pixels)
from .configs import OcclusionConfig


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """``occlusion_invariance/evaluate.py:51-52,69-73``: Resize(256) (bilinear), CenterCrop(224), ImageNet
    mean/std for every model; a model whose input is not 224 px gets the same geometry scaled to its size
    (:func:`~lk_ablate.analysis.common.script_eval_spec`)."""
    return script_eval_spec(cfg, "bilinear")


# --- masks ----------------------------------------------------------------------------------------------
def random_patch_mask(grid: tuple[int, int], level: float, generator: torch.Generator) -> torch.Tensor:
    """(gh, gw) keep-mask (1 keep, 0 drop) with floor(level * P) random patches dropped."""
    p = grid[0] * grid[1]
    n_drop = int(math.floor(level * p + 1e-9))
    keep = torch.ones(p)
    keep[torch.randperm(p, generator=generator)[:n_drop]] = 0
    return keep.view(grid)


def saliency_keep_mask(attn: torch.Tensor, level: float, mode: str) -> torch.Tensor:
    """(B, P) keep-mask from patch attention (B, P) (any non-negative scores, renormalised to sum 1).

    ``salient``: drop the top patches holding ``level`` of the mass (cumulative ascending mass > 1 - level);
    ``non_salient``: drop the bottom patches holding ``level`` (cumulative ascending mass <= level).
    """
    vals, idx = torch.sort(attn, dim=1, stable=True)
    vals = vals / vals.sum(dim=1, keepdim=True)
    cum = torch.cumsum(vals, dim=1)
    eps = 1e-6  # cumulative sums of float32 scores: keep exact thresholds (e.g. 0.5 + 0.5) on the right side
    if mode == "salient":
        drop_sorted = cum > 1 - level + eps
    elif mode == "non_salient":
        drop_sorted = cum <= level + eps
    else:
        raise ConfigError(f"saliency mode must be 'salient' or 'non_salient', got {mode!r}")
    drop = torch.zeros_like(drop_sorted)
    drop.scatter_(1, idx, drop_sorted)
    return (~drop).float()


# --- DINO -----------------------------------------------------------------------------------------------
def load_dino(path: str | os.PathLike, arch: str = "vit_small_patch16_224", img_size: int = 224) -> nn.Module:
    """A timm ViT with DINO weights from ``path`` (a backbone state dict, or a DINO training checkpoint with
    'teacher' / 'student' / 'model' entries and 'module.' / 'backbone.' prefixes). The position embedding is
    resampled if ``img_size`` differs from the weights' grid."""
    import timm
    from timm.layers import resample_abs_pos_embed

    if not os.path.isfile(path):
        raise DataError(f"DINO weights not found: {path}")
    obj = load_torch_file(path, what="DINO weights")  # allow-listed unpickling: downloaded weights run no code
    for key in ("teacher", "model", "state_dict", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if not k.startswith("head."):  # the DINO projection head / a classifier are not used
            sd[k] = v
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
    pe = sd.get("pos_embed")
    if pe is not None and pe.shape != model.pos_embed.shape:
        n_prefix = model.num_prefix_tokens
        old = int(math.isqrt(pe.shape[1] - n_prefix))
        sd["pos_embed"] = resample_abs_pos_embed(pe, list(model.patch_embed.grid_size), [old, old], n_prefix)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise DataError(f"{path} does not fit timm {arch!r}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.eval()


@torch.no_grad()
def cls_attention(vit: nn.Module, x: torch.Tensor, head: int | None = 1) -> torch.Tensor:
    """(B, gh*gw) attention of the class token to the patches in the last block (one head or the head mean)."""
    attn_mod = vit.blocks[-1].attn
    captured: dict[str, torch.Tensor] = {}

    def hook(m: nn.Module, inp: Any) -> None:
        captured["x"] = inp[0]

    h = attn_mod.register_forward_pre_hook(hook)
    try:
        vit.forward_features(x)
    finally:
        h.remove()
    t = captured["x"]
    b, n, _ = t.shape
    qkv = attn_mod.qkv(t).reshape(b, n, 3, attn_mod.num_heads, attn_mod.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn_mod.q_norm(qkv[0]), attn_mod.k_norm(qkv[1])
    a = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
    a = a[:, :, 0, vit.num_prefix_tokens:]
    if head is None:
        return a.mean(dim=1)
    if not 0 <= head < a.shape[1]:
        raise ConfigError(f"occlusion.dino_head {head} out of range: the model has {a.shape[1]} heads")
    return a[:, head]


def dino_patch_attention(vit: nn.Module, pixels: torch.Tensor,
                         cfg: OcclusionConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, P) class-token attention of the DINO ViT on [0, 1] pixels, and its (gh, gw) patch grid."""
    size = (cfg.dino_img_size, cfg.dino_img_size)
    z = pixels if tuple(pixels.shape[-2:]) == size else F.interpolate(pixels, size=size, mode="bilinear",
                                                                      align_corners=False, antialias=True)
    mean = torch.tensor(cfg.dino_mean, device=z.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.dino_std, device=z.device).view(1, -1, 1, 1)
    attn = cls_attention(vit, (z - mean) / std, cfg.dino_head)
    return attn, tuple(vit.patch_embed.grid_size)


def _upsample(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, gh, gw) or (gh, gw) patch mask -> (B or 1, 1, H, W), nearest."""
    m = mask if mask.dim() == 3 else mask[None]
    return F.interpolate(m[:, None].float(), size=size, mode="nearest")


# --- run ------------------------------------------------------------------------------------------------
@torch.no_grad()
def run(model: nn.Module, cfg: OcclusionConfig, data: Any, model_config: ModelConfig,
        dino: nn.Module | None = None) -> dict[str, Any]:
    """``dino``: an already loaded saliency ViT (else loaded from ``cfg.dino_path`` when needed)."""
    device = model_device(model)
    if any(m != "random" for m in cfg.modes) and dino is None:
        dino = load_dino(cfg.dino_path, cfg.dino_arch, cfg.dino_img_size)
    if dino is not None:
        dino.to(device)
    g = seeded_generator(cfg.seed)
    h, w = model_config.input_size[-2:]
    if h % cfg.patch_size or w % cfg.patch_size:
        raise ConfigError(f"occlusion.patch_size {cfg.patch_size} does not divide the input size {h}x{w}")
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    keys = [(m, lv) for m in cfg.modes for lv in cfg.levels]
    correct = {k: 0 for k in keys}
    dropped = {k: 0.0 for k in keys}
    clean, total = 0, 0
    for x, y in iterate_batches(data, cfg.max_images):
        x = x.to(device)
        clean += count_correct(logits_of(model, x), y)
        total += y.shape[0]
        pix = to_pixels(x, model_config)
        attn = None
        if dino is not None:
            attn, dgrid = dino_patch_attention(dino, pix, cfg)
        for mode, level in keys:
            reps = cfg.repeats if mode == "random" else 1
            for _ in range(reps):
                if mode == "random":
                    keep = _upsample(random_patch_mask(grid, level, g), (h, w)).to(device)
                else:
                    keep = _upsample(saliency_keep_mask(attn, level, mode).view(-1, *dgrid), (h, w))
                out = from_pixels(pix * keep, model_config)
                correct[(mode, level)] += count_correct(logits_of(model, out), y) / reps
                dropped[(mode, level)] += float((1 - keep).mean()) * y.shape[0] / reps
    curves: dict[str, list[dict[str, float]]] = {m: [] for m in cfg.modes}
    for mode, level in keys:
        curves[mode].append({"level": level, "accuracy": 100.0 * correct[(mode, level)] / total,
                             "dropped_fraction": dropped[(mode, level)] / total})
    return {"analysis": "occlusion", "config": cfg.to_dict(), "images": total,
            "clean_accuracy": percent(clean, total), "curves": curves}


def plot(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    for mode, pts in result["curves"].items():
        ax.plot([0] + [p["level"] for p in pts], [result["clean_accuracy"]] + [p["accuracy"] for p in pts],
                marker="o", ms=3, label=mode.replace("_", "-"))
    ax.set_xlabel("fraction dropped (patches for random, attention mass for saliency)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for mode, pts in result["curves"].items():
        out[f"occlusion.{mode}.mean"] = sum(p["accuracy"] for p in pts) / len(pts)
    return out
