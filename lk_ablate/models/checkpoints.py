"""Loading lk_ablate, Lightning, official and timm checkpoints into registered models, strictly."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..base.safe_load import load_torch_file
from ..base.errors import DataError
from .contract import AblationModel


def unwrap_state_dict(obj: Mapping[str, Any], prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights from any of the checkpoint layouts we meet.

    - Lightning (lk_ablate's own): {"state_dict": {"model.*", "ema.module.*", ...}}
    - official ConvNeXt / RepLKNet: {"model": sd} (or {"model_ema": sd}), or a bare state dict
    - DDP-saved: keys prefixed "module."
    """
    lightning = isinstance(obj.get("state_dict"), Mapping) and any(
        k.startswith(("model.", "ema.module.")) for k in obj["state_dict"])
    if lightning:  # timm's training checkpoints also use "state_dict", with plain keys
        sd = obj["state_dict"]
        prefix = "ema.module." if prefer_ema else "model."
        if not any(k.startswith(prefix) for k in sd):
            raise DataError(f"checkpoint has no {'EMA ' if prefer_ema else ''}weights (no '{prefix}*' keys)")
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if prefer_ema and isinstance(obj.get("model_ema"), Mapping):
        sd = obj["model_ema"]
    elif isinstance(obj.get("model"), Mapping):
        sd = obj["model"]
    elif isinstance(obj.get("state_dict_ema" if prefer_ema else "state_dict"), Mapping):
        sd = obj["state_dict_ema" if prefer_ema else "state_dict"]
    else:
        sd = obj
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint on CPU without running code from it (allow-listed unpickling, see base/safe_load.py);
    one clear error for missing, unreadable or unsafe files."""
    return load_torch_file(path, mmap=mmap)


def load_timm_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = True, strict: bool = True) -> Any:
    """timm's ``load_checkpoint`` (same key precedence: state_dict_ema / model_ema when ``use_ema``, then
    state_dict, model, bare; DDP / compile prefixes removed), reading the file safely. ``.safetensors`` files
    cannot run code and go to timm directly."""
    import timm.models

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        check_safetensors(path)
        return timm.models.load_checkpoint(model, path, use_ema=use_ema, strict=strict)
    obj = read_checkpoint(path)
    key = ""
    if isinstance(obj, Mapping):
        for k, wanted in (("state_dict_ema", use_ema), ("model_ema", use_ema), ("state_dict", True),
                          ("model", True)):
            if wanted and obj.get(k) is not None:
                key = k
                break
    sd = timm.models.clean_state_dict(obj[key] if key else obj)
    return model.load_state_dict(sd, strict=strict)


def check_safetensors(path: str | os.PathLike) -> None:
    """One DataError line unless ``path`` is a readable safetensors file (a torch pickle renamed ``.safetensors``
    makes the safetensors reader fail with 'header too large' and a traceback)."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise DataError(f"weights file not found: {path}")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as safetensors ({str(e).splitlines()[0][:120]}): a .safetensors file "
                        "must hold safetensors data; if it is a torch checkpoint, rename it to .pth (it is then "
                        "read with the safe loader)") from None


def load_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], strict: bool = True,
                    prefer_ema: bool = False, drop_head: bool = False) -> nn.Module:
    """Load weights into ``model``; a contract model converts foreign keys/forms (``model.convert_state_dict``).

    ``drop_head``: fine-tuning to a new number of classes: classifier weights (``model.get_classifier()``)
    whose shape differs are left at their initialisation; every other key must still match exactly.
    """
    obj = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    sd = unwrap_state_dict(obj, prefer_ema=prefer_ema)
    if isinstance(model, AblationModel):
        sd = model.convert_state_dict(sd)
    own = model.state_dict()
    kept_head: list[str] = []
    if drop_head:
        head = model.get_classifier()
        prefix = next(n for n, m in model.named_modules() if m is head)
        head_keys = {k for k in own if k.startswith(prefix + ".")}
        if any(k in sd and sd[k].shape != own[k].shape for k in head_keys):
            kept_head = sorted(head_keys)
            sd = {k: v for k, v in sd.items() if k not in head_keys}
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise DataError("checkpoint shapes do not fit the model (wrong kernel size or variant?):\n  "
                        + "\n  ".join(mismatched[:10]))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in kept_head]
    if strict and (missing or unexpected):
        raise DataError(f"checkpoint keys do not match the model: missing {missing[:10]}"
                        f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                        f"{' ...' if len(unexpected) > 10 else ''}")
    return model
