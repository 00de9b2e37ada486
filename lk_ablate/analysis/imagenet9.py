"""ImageNet-9 backgrounds (Xiao et al., 2020; MadryLab/backgrounds_challenge): Original / Mixed-Same / Mixed-Rand.

Layout of the released test sets: ``<root>/<variation>/val/<class folder>/*`` with the 9 class folders sorted
as classes 0 dog, 1 bird, 2 vehicle, 3 reptile, 4 carnivore, 5 insect, 6 instrument, 7 primate, 8 fish
(``00_dog`` ... ``08_fish``), 224 x 224 images read with ``ToTensor`` and the model's mean/std (no resize; images
are resized only when the model's input size is not 224). A 1000-class model's *argmax* is mapped to the 9
classes with the authors' ``in_to_in9.json`` (shipped here unchanged; 630 ImageNet classes map to -1, which
always counts as wrong), as ``tools/model_utils.eval_model`` does. A 9-class model (``num_outputs: 9``) is scored
directly. BG-Gap = Mixed-Same - Mixed-Rand (accuracy points).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..base.figures import new_figure, save_figure
from ..base.progress import advance
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .common import logits_of, percent
from .configs import ImageNet9Config


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """MadryLab/backgrounds_challenge (``tools/datasets.py:94-96``, ``tools/model_utils.py:30``): the 224 px test
    images as they are (ToTensor), normalised with ImageNet mean/std for an ImageNet-trained model; a model whose
    input is not 224 px gets them resized to it."""
    return EvalSpec(crop=tuple(int(v) for v in cfg.input_size[-2:]), resize=None, interpolation="bilinear",
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)

IN9_CLASSES = ("dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument", "primate", "fish")


@lru_cache(maxsize=1)
def in_to_in9() -> torch.Tensor:
    """(1000,) long tensor: ImageNet class -> ImageNet-9 class, -1 for classes outside the 9."""
    table = json.loads(resources.files(__package__).joinpath("in_to_in9.json").read_text())
    out = torch.full((1000,), -2, dtype=torch.long)
    for k, v in table.items():
        out[int(k)] = int(v)
    if (out == -2).any():
        raise DataError("in_to_in9.json does not cover all 1000 ImageNet classes")
    return out


def map_to_in9(logits: torch.Tensor) -> torch.Tensor:
    """ImageNet-9 predictions from 1000-class logits: map the argmax (not a sum over class groups)."""
    if logits.shape[1] != 1000:
        raise ConfigError(f"mapping to ImageNet-9 needs 1000-class logits, got {logits.shape[1]}; set "
                          "imagenet9.num_outputs: 9 for a 9-class model")
    return in_to_in9().to(logits.device)[logits.argmax(dim=1)]


def variation_loader(root: str | os.PathLike, variation: str, cfg: ModelConfig, batch_size: int = 64,
                     num_workers: int = 2) -> torch.utils.data.DataLoader:
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    path = Path(root) / variation / "val"
    if not path.is_dir():
        raise DataError(f"ImageNet-9 {variation} not found at {path}\n  expected {root}/{variation}/val/<9 class "
                        "folders>; download the test sets from github.com/MadryLab/backgrounds_challenge/releases")
    size = tuple(cfg.input_size[-2:])
    steps = [] if size == (224, 224) else [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)]
    ds = ImageFolder(str(path), transform=T.Compose(steps + [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]))
    if len(ds.classes) != 9:
        raise DataError(f"{path} has {len(ds.classes)} class folders, ImageNet-9 has 9 ({', '.join(IN9_CLASSES)})")
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
def in9_accuracy(model: nn.Module, data: Any, num_outputs: int = 1000, limit: int | None = None) -> float:
    correct = total = 0
    for x, y in data:
        if limit is not None and total >= limit:
            break
        if limit is not None:
            x, y = x[: limit - total], y[: limit - total]
        logits = logits_of(model, x)
        pred = map_to_in9(logits) if num_outputs == 1000 else logits.argmax(dim=1)
        correct += int((pred.cpu() == y).sum())
        total += y.shape[0]
        advance(y.shape[0])
    return percent(correct, total)


def run(model: nn.Module, cfg: ImageNet9Config, data: Any = None, model_config: ModelConfig | None = None,
        loaders: dict[str, Any] | None = None) -> dict[str, Any]:
    """``loaders``: variation -> (images, labels) batches, instead of reading ``cfg.root``."""
    acc = {}
    for v in cfg.variations:
        loader = (loaders or {}).get(v) or variation_loader(cfg.root, v, model_config, cfg.batch_size,
                                                             cfg.num_workers)
        acc[v] = in9_accuracy(model, loader, cfg.num_outputs, cfg.max_images)
    out: dict[str, Any] = {"analysis": "imagenet9", "config": cfg.to_dict(), "accuracy": acc}
    if "mixed_same" in acc and "mixed_rand" in acc:
        out["bg_gap"] = acc["mixed_same"] - acc["mixed_rand"]
    return out


def plot(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    names = list(result["accuracy"])
    ax.bar(range(len(names)), [result["accuracy"][n] for n in names])
    ax.set_xticks(range(len(names)), [n.replace("_", "-") for n in names])
    ax.set_ylabel("ImageNet-9 accuracy (%)")
    if "bg_gap" in result:
        ax.set_title(f"BG-Gap {result['bg_gap']:.1f}")
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    out = {f"imagenet9.{k}": v for k, v in result["accuracy"].items()}
    if "bg_gap" in result:
        out["imagenet9.bg_gap"] = result["bg_gap"]
    return out
