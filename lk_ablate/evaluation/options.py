"""The option groups shared by every evaluation command (``lk_ablate robustness``, ``lk_ablate analyze``).

One definition per concept, parsed by jsonargparse as dotted groups (``--model.ckpt``, ``--model.kernel_size
[31,29,27,13]``, ``--data.batch_size 64``), so a YAML written for one command reads the same in the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..base.errors import ConfigError

# model: each model's own eval config (size, crop, interpolation, mean/std). paper: what the paper's released
# scripts and the benchmark authors' scripts feed every model (see docs/robustness.md, "Protocols").
PROTOCOLS = ("model", "paper")
Protocol = Literal["model", "paper"]
# auto: EMA when the checkpoint has it, else raw (one set); both: raw, plus EMA when the checkpoint has it.
WEIGHTS = ("auto", "raw", "ema", "both")


@dataclass
class ModelOptions:
    """The model to evaluate.

    Args:
        ckpt: checkpoint: an lk_ablate run's (architecture from its hyper-parameters), official ConvNeXt/RepLKNet
            weights (with ``name``), or timm weights (with ``timm``).
        name: registered lk_ablate model (``lk_ablate.list_models()``) for official weights or random weights.
        kernel_size: kernel size for ``name``: an odd int or one per stage, e.g. [31,29,27,13].
        timm: a timm model name (timm's pretrained weights unless ``ckpt`` is given).
        num_classes: classifier size for ``name``/``timm`` when it is not the model's default.
        kwargs: extra keyword arguments for the model constructor (e.g. {small_kernel: null}).
        weights: auto (EMA when the checkpoint has it, else raw), raw, ema, or both (raw, plus EMA when present).
        channels_last: channels_last memory format (null: as the lk_ablate run trained; true otherwise).
        compile: torch.compile each weight set's forward (``lk_ablate.models.compile.compile_model``).
        compile_mode: torch.compile mode (null: default; reduce-overhead, max-autotune, ...).
    """

    ckpt: str | None = None
    name: str | None = None
    kernel_size: int | list[int] | None = None
    timm: str | None = None
    num_classes: int | None = None
    kwargs: dict[str, Any] | None = None
    weights: Literal["auto", "raw", "ema", "both"] = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str | None = None


@dataclass
class DataOptions:
    """Where the evaluation images are and how they are read.

    Args:
        imagenet_val: ImageNet validation folder, <root>/<wnid>/*.JPEG (``lk_ablate data prepare-imagenet-val``).
        batch_size: images per batch (per process).
        num_workers: DataLoader worker processes.
    """

    imagenet_val: str | None = None
    batch_size: int = 64
    num_workers: int = 4

    def check(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {self.batch_size} and "
                              f"{self.num_workers}")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol
