"""The option groups shared by the evaluation commands (``lk_ablate robustness``, ``lk_ablate analyze``).

One definition per concept, parsed by jsonargparse as dotted groups (``--model.model_name``, ``--model.kernel_size
[31,29,27,13]``, ``--data.batch_size 64``) beside the top-level ``--ckpt_path`` and ``--weights``, so a YAML
written for one command reads the same in the other (docs/cli.md lists every option). No torch here: the
commands build their parsers (and ``--help``) from these classes without it.
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
Weights = Literal["auto", "raw", "ema", "both"]
# Lightning's spellings of the two precisions scoring supports (``trainer.precision`` of a fit).
PRECISIONS = ("32-true", "bf16-mixed")
Precision = Literal["32-true", "bf16-mixed"]


@dataclass
class ModelOptions:
    """The model to evaluate.

    Args:
        model_name: registered lk_ablate model (``lk_ablate.list_models()``) for official weights (or, in
            ``analyze``, random weights).
        kernel_size: kernel size for ``model_name``: an odd int or one per stage, e.g. [31,29,27,13].
        timm: a timm model name (timm's pretrained weights unless ``ckpt_path`` is given).
        num_classes: classifier size for ``model_name``/``timm`` when it is not the model's default.
        model_kwargs: extra keyword arguments for the model constructor (e.g. {small_kernel: null}).
        channels_last: channels_last memory format (null: as the lk_ablate run trained; true otherwise).
        compile: torch.compile each weight set's forward (``lk_ablate.models.compile.compile_model``).
        compile_mode: torch.compile mode (null: default; reduce-overhead, max-autotune, ...).
        ckpt_path: the checkpoint: an lk_ablate run's (architecture from its hyper-parameters), official
            ConvNeXt/RepLKNet weights (with ``model_name``), or timm weights (with ``timm``). On the command line
            the top-level ``--ckpt_path``.
        weights: auto (EMA when the checkpoint has it, else raw), raw, ema, or both (raw, plus EMA when present).
            On the command line the top-level ``--weights``.
    """

    model_name: str | None = None
    kernel_size: int | list[int] | None = None
    timm: str | None = None
    num_classes: int | None = None
    model_kwargs: dict[str, Any] | None = None
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str | None = None
    ckpt_path: str | None = None
    weights: Weights = "auto"


# The fields of ModelOptions that are top-level options (Lightning's ckpt_path; which weights of it), not model.*.
TOP_LEVEL_MODEL_OPTIONS = ("ckpt_path", "weights")


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


@dataclass
class BenchmarkOptions(DataOptions):
    """The benchmarks to score (None: skip) and how their images are read.

    Args:
        imagenet_a: ImageNet-A folder, <root>/<wnid>/* (200 wnids).
        imagenet_r: ImageNet-R folder, <root>/<wnid>/* (200 wnids).
        imagenet_c: ImageNet-C folder, <root>/<corruption>/<severity>/<wnid>/*.JPEG.
        imagenet_o: ImageNet-O folder, <root>/<wnid>/* (needs imagenet_val for its in-distribution images).
        c_preset: severity5 (19 corruptions at severity 5, the paper's number) or full (19 x 5).
        corruptions: ImageNet-C corruptions to score (overrides the preset's).
        severities: ImageNet-C severities to score (overrides the preset's).
        decode: cpu (PIL in the loader workers, the reference) or gpu (JPEGs decoded, resized and cropped on the
            scoring GPU; not bit-identical, see docs/robustness.md).
        on_bad_image: error (stop at the first unreadable image, naming it) or skip (score the rest, list them).
    """

    imagenet_a: str | None = None
    imagenet_r: str | None = None
    imagenet_c: str | None = None
    imagenet_o: str | None = None
    c_preset: Literal["severity5", "full"] | None = "severity5"
    corruptions: list[str] | None = None
    severities: list[int] | None = None
    decode: Literal["cpu", "gpu"] = "cpu"
    on_bad_image: Literal["error", "skip"] = "error"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol
