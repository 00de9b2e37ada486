"""``lk_ablate reparam``: write a RepLKNet checkpoint's re-parameterized (deploy-form) weights.

    lk_ablate reparam --model.ckpt checkpoints/replknet_31b/last.ckpt --out replknet_31b_deploy.pth
    lk_ablate reparam --model.ckpt last.ckpt --model.weights ema --mode full --out deploy_full.pth

Reads lk_ablate/Lightning checkpoints ('state_dict' with 'model.*' / 'ema.module.*' keys), official {'model': sd}
files and bare state dicts; writes {'model': merged_sd} atomically, which loads into create_model(name,
kernel_size=..., deploy=True) (or deploy='full'). The arithmetic is :mod:`lk_ablate.models.reparam`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ..base.errors import ConfigError, DataError
from ..base.files import atomic_torch_save
from ..models.checkpoints import read_checkpoint, unwrap_state_dict
from ..models.reparam import infer_replknet_kwargs, reparam_state_dict, state_dict_form
from ..models.replknet import check_equivalence
from ._common import check_old_spellings, command_parser, parse

__all__ = ["cli_main", "parse_args", "read_weights"]

# Spellings of the argparse version -> the option that replaced them.
OLD_SPELLINGS = {
    "--ckpt": "--model.ckpt PATH",
    "--weights": "--model.weights raw|ema",
    "--no-check": "--no_check",
    "--check-size": "--check_size N",
}


def _parser() -> Any:
    from jsonargparse import ActionYesNo

    p = command_parser("lk_ablate reparam", __doc__.split("\n\n")[0])
    p.add_argument("--model.ckpt", type=str | None, default=None, help="input checkpoint (training form)")
    p.add_argument("--model.weights", type=Literal["raw", "ema"], default="raw",
                   help="which weights of a checkpoint that holds both: raw (the model's) or ema")
    p.add_argument("--out", type=str | None, default=None, help="output file (written atomically)")
    p.add_argument("--mode", type=Literal["kernels", "full"], default="kernels",
                   help="kernels: the official merge of lkb_origin + small_conv; "
                        "full: also fold every BatchNorm into its conv / the head")
    p.add_argument("--check", action=ActionYesNo, default=True,
                   help="build both networks and compare their outputs on a random batch (--no_check skips it)")
    p.add_argument("--check_size", type=int, default=64, help="image size of the check batch")
    p.add_argument("--force", action=ActionYesNo, default=False, help="overwrite --out if it exists")
    return p


def parse_args(argv: Sequence[str]) -> Any:
    check_old_spellings(argv, OLD_SPELLINGS)
    args = parse(_parser(), argv)
    for flag, value in (("--model.ckpt", args.model.ckpt), ("--out", args.out)):
        if not value:
            raise ConfigError(f"{flag} is required (see `lk_ablate reparam --help`)")
    return args


def read_weights(path: str, weights: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path``'s raw or EMA weights (any checkpoint layout ``unwrap_state_dict`` reads)."""
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise DataError(f"{path} does not hold a state dict or a checkpoint dict")
    ema = weights == "ema"
    if ema and "state_dict" not in obj and not any(k in obj for k in ("model_ema", "state_dict_ema")):
        raise DataError(f"{path} holds no EMA weights (no Lightning 'ema.module.*', 'model_ema' or "
                        "'state_dict_ema'); use --model.weights raw")
    sd = unwrap_state_dict(obj, prefer_ema=ema)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    ckpt, out, weights = args.model.ckpt, args.out, args.model.weights
    if os.path.abspath(out) == os.path.abspath(ckpt):
        raise ConfigError("--out must differ from --model.ckpt: keep the training-form checkpoint")
    if os.path.exists(out) and not args.force:
        raise ConfigError(f"--out {out} exists; pass --force to overwrite it, or choose another file")
    sd = read_weights(ckpt, weights)
    form = state_dict_form(sd)
    merged = reparam_state_dict(sd, args.mode)
    n_before = sum(v.numel() for k, v in sd.items() if not _is_buffer(k))
    n_after = sum(v.numel() for k, v in merged.items() if not _is_buffer(k))
    arch = infer_replknet_kwargs(merged)
    if args.check:
        rel = check_equivalence(sd, merged, image_size=args.check_size)
        if not rel < 1e-5:
            raise DataError(f"re-parameterized outputs differ from the original by {rel:.3g} (relative); "
                            "the checkpoint's BatchNorm statistics may be non-finite")
        print(f"check: eval-mode outputs equal, relative difference {rel:.2e} "
              f"({args.check_size}x{args.check_size} random batch)")
    # The file records the weights as earlier versions did: "model" (raw) or "ema".
    atomic_torch_save({"model": merged, "lk_ablate_reparam": {"mode": args.mode, "source_form": form,
                                                              "source": os.path.abspath(ckpt),
                                                              "weights": "model" if weights == "raw" else weights,
                                                              "arch": arch}}, out)
    print(f"{ckpt} ({form}, {n_before:,} parameters) -> {out} ({args.mode}, {n_after:,} parameters); "
          f"load with create_model(..., kernel_size={arch['kernel_size']}, "
          f"deploy={'True' if args.mode == 'kernels' else repr('full')})")
    return 0


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))
