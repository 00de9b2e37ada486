"""Structural re-parameterization of RepLKNet state dicts (the arithmetic; the ``lk_ablate reparam`` command
that reads and writes the files is :mod:`lk_ablate.commands.reparam`).

Two forms beyond training (``train``):

- ``kernels``: the official merge (``RepLKNet.structural_reparam``). Each ``large_kernel``'s ``lkb_origin``
  (KxK conv + BN) and ``small_conv`` (kxk conv + BN) become one ``lkb_reparam`` KxK conv with bias: every BN is
  folded into its conv (w * gamma / std, beta - mean * gamma / std), the small kernel is zero-padded to KxK
  at the centre, kernels and biases are added. Nothing else changes. 31B: 79,864,168 -> 79,527,272 parameters.
- ``full``: ``kernels``, then every other BatchNorm folded as well: each conv -> BN pair (stem, pw1, pw2,
  transitions) into the conv (which gains a bias), each BN -> 1x1 conv pair (``prelkb_bn`` / ``preffn_bn`` ->
  ``pw1``) into that conv's input channels, and the final ``norm`` -> avgpool -> ``head`` into the Linear head.
  No BatchNorm is left. Parameters (training -> full): 31B 79,864,168 -> 79,388,776; 31L 172,671,016 ->
  171,957,928; XL 335,435,752 -> 335,110,632; 3B 71,906,408 -> 71,755,880.

Both use the BN running statistics: the result equals the original network in eval mode. The arithmetic runs in
float64 and is cast back to each weight's dtype.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..base.errors import ConfigError, DataError

FORMS = ("train", "kernels", "full")
FORM_ORDER = {form: i for i, form in enumerate(FORMS)}
BN_EPS = 1e-5
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def normalize_form(deploy: bool | str | None) -> str:
    """False / None / "train" -> "train"; True / "kernels" -> "kernels"; "full" -> "full"."""
    if deploy is None or deploy is False:
        return "train"
    if deploy is True:
        return "kernels"
    if isinstance(deploy, str) and deploy in FORMS:
        return deploy
    raise ConfigError(f"deploy must be False (training form), True or 'kernels' (official re-parameterization) or "
                      f"'full' (every BN folded), got {deploy!r}")


def fuse_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: Mapping[str, torch.Tensor],
            eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv (weight (O, ...), optional bias) into that conv."""
    std = (bn["running_var"].double() + eps).sqrt()
    t = bn["weight"].double() / std
    w = weight.double() * t.reshape(-1, *([1] * (weight.dim() - 1)))
    b0 = bias.double() if bias is not None else torch.zeros_like(t)
    b = bn["bias"].double() + (b0 - bn["running_mean"].double()) * t
    return w.to(weight.dtype), b.to(weight.dtype)


def fold_bn_before(weight: torch.Tensor, bias: torch.Tensor | None, bn: Mapping[str, torch.Tensor],
                   eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that precedes a 1x1 conv (O, I, 1, 1) or Linear (O, I) into its inputs.

    Exact only where the layer has no zero padding (1x1 convs, the Linear after global average pooling).
    """
    std = (bn["running_var"].double() + eps).sqrt()
    scale = bn["weight"].double() / std
    shift = bn["bias"].double() - bn["running_mean"].double() * scale
    w2 = weight.double().reshape(weight.shape[0], weight.shape[1])
    b0 = bias.double() if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    w = (w2 * scale).reshape(weight.shape)
    return w.to(weight.dtype), (b0 + w2 @ shift).to(weight.dtype)


def merge_large_kernel(lk_weight: torch.Tensor, lk_bn: Mapping[str, torch.Tensor], small_weight: torch.Tensor | None,
                       small_bn: Mapping[str, torch.Tensor] | None,
                       eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The official merge: fold both BNs, zero-pad the small kernel to KxK at the centre, add."""
    w, b = fuse_bn(lk_weight.double(), None, lk_bn, eps)
    if small_weight is not None:
        sw, sb = fuse_bn(small_weight.double(), None, small_bn, eps)
        pad = (lk_weight.shape[-1] - small_weight.shape[-1]) // 2
        w = w + F.pad(sw, [pad] * 4)
        b = b + sb
    return w.to(lk_weight.dtype), b.to(lk_weight.dtype)


def state_dict_form(sd: Mapping[str, torch.Tensor]) -> str:
    """Which form a RepLKNet state dict holds: "train", "kernels" or "full"."""
    origin = any(".lkb_origin." in k for k in sd)
    merged = any(".lkb_reparam." in k for k in sd)
    if origin and merged:
        raise DataError("the state dict mixes merged (lkb_reparam) and unmerged (lkb_origin) large kernels; "
                        "re-parameterize from the original training checkpoint")
    if not (origin or merged):
        raise DataError("not a RepLKNet state dict: no 'large_kernel.lkb_origin' or 'large_kernel.lkb_reparam' keys")
    if origin:
        return "train"
    return "kernels" if any(k.endswith("running_var") for k in sd) else "full"


def _bn(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    try:
        return {n: sd[prefix + n] for n in ("weight", "bias", "running_mean", "running_var")}
    except KeyError as e:
        raise DataError(f"incomplete RepLKNet state dict: missing {e.args[0]!r}") from None


def _merge_kernels(sd: Mapping[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for part in (".lkb_origin.", ".small_conv."):
            if part in key:
                prefix = key[:key.index(part) + 1]
                if prefix + "lkb_reparam.weight" not in out:
                    small = prefix + "small_conv."
                    has_small = small + "conv.weight" in sd
                    w, b = merge_large_kernel(sd[prefix + "lkb_origin.conv.weight"], _bn(sd, prefix + "lkb_origin.bn."),
                                              sd[small + "conv.weight"] if has_small else None,
                                              _bn(sd, small + "bn.") if has_small else None, eps)
                    out[prefix + "lkb_reparam.weight"], out[prefix + "lkb_reparam.bias"] = w, b
                break
        else:
            out[key] = value
    return out


def _fold_all_bns(sd: Mapping[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
    # conv -> BN pairs: "<p>.conv.weight" followed by "<p>.bn.*".
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if any(key.endswith(".bn." + n) for n in _BN_KEYS):
            base = key[:key.rindex(".bn.") + 1]
            if base + "conv.weight" in sd:
                continue
        if key.endswith("conv.weight") and key[:-len("conv.weight")] + "bn.running_var" in sd:
            base = key[:-len("conv.weight")]
            w, b = fuse_bn(value, sd.get(base + "conv.bias"), _bn(sd, base + "bn."), eps)
            out[base + "conv.weight"], out[base + "conv.bias"] = w, b
            continue
        out[key] = value
    # BN -> 1x1 conv / Linear pairs.
    targets = {"prelkb_bn.": "pw1.conv.", "preffn_bn.": "pw1.conv."}
    for key in [k for k in out if k.endswith("running_var")]:
        bn_prefix = key[:-len("running_var")]
        block, _, name = bn_prefix[:-1].rpartition(".")
        if bn_prefix == "norm.":
            target = "head."
        elif name + "." in targets:
            target = f"{block}.{targets[name + '.']}"
        else:
            raise DataError(f"cannot fold BatchNorm {bn_prefix[:-1]!r}: no 1x1 conv or Linear follows it in RepLKNet")
        if target + "weight" not in out:
            raise DataError(f"cannot fold BatchNorm {bn_prefix[:-1]!r}: {target + 'weight'!r} is missing "
                            "(a RepLKNet without classifier cannot be fully fused; use mode 'kernels')")
        w, b = fold_bn_before(out[target + "weight"], out.get(target + "bias"), _bn(out, bn_prefix), eps)
        out[target + "weight"], out[target + "bias"] = w, b
        for n in _BN_KEYS:
            out.pop(bn_prefix + n, None)
    return out


def reparam_state_dict(sd: Mapping[str, torch.Tensor], mode: str = "kernels",
                       eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """A RepLKNet state dict re-parameterized to ``mode`` ("kernels" or "full"); the input is left unchanged.

    Raises DataError when ``sd`` already is in ``mode`` or beyond (re-parameterizing twice is never silent).
    """
    mode = normalize_form(mode)
    if mode == "train":
        raise ConfigError("mode must be 'kernels' or 'full'")
    form = state_dict_form(sd)
    if FORM_ORDER[form] >= FORM_ORDER[mode]:
        raise DataError(f"the state dict is already re-parameterized (form {form!r}); nothing to do for mode "
                        f"{mode!r}. Start from the training-form checkpoint.")
    out = dict(sd) if form != "train" else _merge_kernels(sd, eps)
    if mode == "full":
        out = _fold_all_bns(out, eps)
    return out


def infer_replknet_kwargs(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``RepLKNet`` constructor arguments (layers, channels, kernels, ...) read from a state dict's shapes."""
    form = state_dict_form(sd)
    layers, channels, kernels = [], [], []
    small_kernel, dw_ratio, ffn_ratio = None, None, None
    s = 0
    while f"stages.{s}.blocks.0.pw1.conv.weight" in sd:
        n = 0
        while f"stages.{s}.blocks.{n}.pw1.conv.weight" in sd:
            n += 1
        if n % 2:
            raise DataError(f"stage {s} has an odd number of blocks ({n}); RepLKNet stages hold (RepLK, FFN) pairs")
        layers.append(n // 2)
        pw1 = sd[f"stages.{s}.blocks.0.pw1.conv.weight"]
        channels.append(pw1.shape[1])
        dw_ratio = pw1.shape[0] / pw1.shape[1]
        ffn_ratio = sd[f"stages.{s}.blocks.1.pw1.conv.weight"].shape[0] / pw1.shape[1]
        lk = f"stages.{s}.blocks.0.large_kernel."
        weight = sd[lk + "lkb_origin.conv.weight"] if form == "train" else sd[lk + "lkb_reparam.weight"]
        kernels.append(weight.shape[-1])
        if lk + "small_conv.conv.weight" in sd:
            small_kernel = sd[lk + "small_conv.conv.weight"].shape[-1]
        s += 1
    if not layers or "stem.0.conv.weight" not in sd:
        raise DataError("not a RepLKNet state dict: no 'stem.0.conv.weight' / 'stages.0.blocks.0.pw1.conv.weight'")
    head = sd.get("head.weight")
    return {"kernel_size": kernels, "layers": layers, "channels": channels, "small_kernel": small_kernel,
            "dw_ratio": dw_ratio, "ffn_ratio": ffn_ratio, "num_classes": 0 if head is None else head.shape[0],
            "in_chans": sd["stem.0.conv.weight"].shape[1], "deploy": form if form != "train" else False}
