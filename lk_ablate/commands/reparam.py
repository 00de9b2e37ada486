"""``lk_ablate reparam``: write a RepLKNet checkpoint's re-parameterized (deploy-form) weights.

    lk_ablate reparam --ckpt_path checkpoints/replknet_31b/last.ckpt --output_path replknet_31b_deploy.pth
    lk_ablate reparam --ckpt_path last.ckpt --weights raw --mode full --output_path deploy_full.pth

Reads lk_ablate/Lightning checkpoints ('state_dict' with 'model.*' / 'ema.module.*' keys), official {'model': sd}
files and bare state dicts; writes {'model': merged_sd} atomically, which loads into create_model(name,
kernel_size=..., deploy=True) (or deploy='full'). The arithmetic is :mod:`lk_ablate.models.reparam`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..base.errors import ConfigError, DataError
from ._common import TRUST_HELP, apply_trust, command_parser, parse

if TYPE_CHECKING:
    import torch

__all__ = ["cli_main", "parse_args", "read_weights"]

def _parser() -> Any:
    p = command_parser("lk_ablate reparam", __doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", type=str, required=True, help="input checkpoint (training form)")
    p.add_argument("--weights", type=Literal["auto", "raw", "ema"], default="auto",
                   help="which weights of the checkpoint: auto (EMA when it has them, else raw), raw or ema")
    p.add_argument("--output_path", type=str, required=True, help="output file (written atomically)")
    p.add_argument("--mode", type=Literal["kernels", "full"], default="kernels",
                   help="kernels: the official merge of lkb_origin + small_conv; "
                        "full: also fold every BatchNorm into its conv / the head")
    p.add_argument("--check", type=bool, default=True,
                   help="build both networks and compare their outputs on a random batch (false: skip it)")
    p.add_argument("--check_size", type=int, default=64, help="image size of the check batch")
    p.add_argument("--force", type=bool, default=False, help="overwrite --output_path if it exists")
    p.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_HELP)
    return p


def parse_args(argv: Sequence[str]) -> Any:
    args = parse(_parser(), argv)
    apply_trust(args)
    return args


def read_weights(path: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of ``path``'s raw or EMA weights (any checkpoint layout ``unwrap_state_dict`` reads) and the set
    they are (``auto``: EMA when the checkpoint holds it, else raw)."""
    import torch

    from ..models.checkpoints import read_checkpoint, unwrap_state_dict

    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise DataError(f"{path} does not hold a state dict or a checkpoint dict")
    has_ema = any(k in obj for k in ("model_ema", "state_dict_ema")) or (
        isinstance(obj.get("state_dict"), Mapping) and any(k.startswith("ema.module.") for k in obj["state_dict"]))
    if weights == "ema" and not has_ema:
        raise DataError(f"{path} holds no EMA weights (no Lightning 'ema.module.*', 'model_ema' or "
                        "'state_dict_ema'); use --weights raw")
    chosen = "ema" if weights == "ema" or (weights == "auto" and has_ema) else "raw"
    sd = unwrap_state_dict(obj, prefer_ema=chosen == "ema")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, chosen


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    from ..base.files import atomic_torch_save
    from ..models.reparam import infer_replknet_kwargs, reparam_state_dict, state_dict_form
    from ..models.replknet import check_equivalence

    ckpt, out = args.ckpt_path, args.output_path
    if os.path.abspath(out) == os.path.abspath(ckpt):
        raise ConfigError("--output_path must differ from --ckpt_path: keep the training-form checkpoint")
    if os.path.exists(out) and not args.force:
        raise ConfigError(f"--output_path {out} exists; pass --force true to overwrite it, or choose another file")
    sd, weights = read_weights(ckpt, args.weights)
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
