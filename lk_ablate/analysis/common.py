"""What every analysis shares: config sections, model loading, (un)normalisation, batched evaluation, output.

Every analysis takes a model, a data source and a config dataclass. Data sources for the validation-set
analyses are iterables of ``(images, labels)`` batches whose images are *normalised* with the model's mean/std
(what the model's eval transform yields); analyses that perturb pixels go through :func:`to_pixels` and
:func:`from_pixels`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..base.errors import DataError
from ..base.jsonable import to_jsonable
from ..base.progress import advance
from ..base.results import make_results, update_results, write_results
from ..data.transforms import EvalSpec
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

Batch = tuple[torch.Tensor, torch.Tensor]


# --- normalisation --------------------------------------------------------------------------------------
def mean_std(cfg: ModelConfig, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean and std as (1, C, 1, 1) tensors on ``like``'s device and dtype."""
    mean = torch.tensor(cfg.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return mean, std


def to_pixels(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Normalised model input -> [0, 1] pixel values."""
    mean, std = mean_std(cfg, x)
    return x * std + mean


def from_pixels(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """[0, 1] pixel values -> normalised model input."""
    mean, std = mean_std(cfg, x)
    return (x - mean) / std


def script_eval_spec(cfg: ModelConfig, interpolation: str) -> EvalSpec:
    """The released LKRobust scripts' eval geometry: resize the shorter side to 256, centre-crop 224, ImageNet
    mean/std (every model, ViTs included), with the script's ``interpolation``.

    The scripts only run at 224 px. For a model whose input side ``s`` is not 224 (31L / XL, 384 px fine-tunes)
    the same geometry is scaled to ``s`` (resize ``floor(s * 256 / 224)``, crop ``s``; 384 -> 438 / 384): a
    project choice, the released code has no other size (the paper scored 31L at 384 px).
    """
    h, w = (int(v) for v in cfg.input_size[-2:])
    return EvalSpec(crop=(h, w), resize=(min(h, w) * 256) // 224, squash=False, interpolation=interpolation,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --- data -----------------------------------------------------------------------------------------------
def iterate_batches(data: Iterable[Any] | Batch, limit: int | None = None) -> Iterator[Batch]:
    """(images, labels) batches from a DataLoader, a list of batches or one (images, labels) pair.

    ``limit`` stops after that many images (the last batch is cut).
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = [data]
    seen = 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"a data batch must be (images, labels), got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if limit is not None:
            if seen >= limit:
                return
            x, y = x[: limit - seen], y[: limit - seen]
        seen += x.shape[0]
        advance(x.shape[0])  # the running analysis's progress (base/progress.py; nothing when none is shown)
        yield x, y


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits for a batch; inputs moved to the model's device, outputs returned there."""
    return model(x.to(model_device(model)))


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(dim=1).cpu() == labels.cpu()).sum())


def percent(correct: int, total: int) -> float:
    if total == 0:
        raise DataError("the data source yielded no images; check the dataset path and --limit")
    return 100.0 * correct / total


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable[Any] | Batch, limit: int | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` on normalised batches."""
    correct = total = 0
    for x, y in iterate_batches(data, limit):
        correct += count_correct(logits_of(model, x), y)
        total += y.shape[0]
    return percent(correct, total)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# --- output ---------------------------------------------------------------------------------------------
def write_analysis_result(results_path: str | os.PathLike, name: str, result: Mapping[str, Any],
                          init: Mapping[str, Any] | None = None) -> None:
    """Store ``result`` as "analyses" -> ``name`` of the run's results JSON (lk_ablate.base.results schema).

    The analysis's previous entry is replaced, not merged (a re-run with fewer modes leaves no stale curves).
    A missing file is created from ``init`` (keyword arguments of ``make_results``; ``weights`` defaults to an
    empty set, i.e. no benchmark scored yet); without ``init`` a missing file is a DataError.
    """
    path = Path(results_path)
    if not path.is_file():
        if init is None:
            raise DataError(f"results file not found: {path}; score the checkpoint first (`lk_ablate robustness`) "
                            "or let `lk_ablate analyze` create it")
        kwargs = {"weights": {"raw": {}}, "settings": {}, "errors": [], **dict(init)}
        write_results(path, make_results(**kwargs))
    # update_results merges dicts recursively: clear the entry first so the new result replaces it
    update_results(path, f"analyses.{name}", None)
    update_results(path, f"analyses.{name}", to_jsonable(result, nonfinite_to_none=True))
