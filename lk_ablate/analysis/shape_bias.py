"""Shape bias on the cue-conflict stimuli (Geirhos et al., ICLR 2019), as bethgelab/model-vs-human computes it.

Line numbers refer to bethgelab/model-vs-human at commit 79ed7cd.

- Stimuli: the 1,280 cue-conflict PNGs of rgeirhos/texture-vs-shape (``stimuli/style-transfer-preprocessed-512``,
  CC-BY-4.0): one folder per **shape** category (the 16 below, 80 images each), the file name ending in
  ``<shape><n>-<texture><m>.png``; the texture category is the file name's last ``-`` part without its digits
  (``plotting/analyses.py:113-128``). The user downloads them (docs/analyses.md gives the command).
- Preprocessing (``datasets/dataloaders.py:54-68``, ``datasets/base.py:36`` with ``image_size`` 224): ToTensor and
  ImageNet mean/std, no resize.
- Decision (``datasets/decision_mappings.py:30-52``, ``models/wrappers/pytorch.py:46-51``): softmax over the 1,000
  ImageNet classes, then each of the 16 categories scores the **mean** of the probabilities of its ImageNet
  classes (the index lists of ``helper/human_categories.py:148-177``, shipped as ``cue_conflict_categories.json``);
  the decision is the best-scoring category.
- Shape bias (``plotting/analyses.py:89-106``): images whose shape and texture category agree are left out;
  shape bias = shape hits / (shape hits + texture hits). ``shape_accuracy`` / ``texture_accuracy`` are that
  file's ``fraction-correct-shape`` / ``-texture``: the hits among the cue-conflict images divided by **all**
  images read (left-out ones included), in %. Per shape category the same numbers (``plotting/plot.py:519-560``).

A model must predict the 1,000 ImageNet-1k classes in the standard (sorted WNID) order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import functional as TF

from ..base.errors import ConfigError
from ..base.figures import new_figure, save_figure
from ..base.metric_keys import SHAPE_BIAS_SCALARS
from ..data.transforms import EvalSpec
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .common import logits_of
from .configs import ShapeBiasConfig
from .cue_conflict import categories, category_indices, stimuli, texture_category  # noqa: F401 (the module's API)


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """model-vs-human's loader for 224 px datasets (``datasets/dataloaders.py:64-68``): ToTensor, ImageNet
    mean/std, no resize (``shape_bias.image_size`` resizes, a documented option)."""
    return EvalSpec(crop=tuple(int(v) for v in cfg.input_size[-2:]), resize=None, interpolation="bicubic",
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


class _Stimuli(torch.utils.data.Dataset):
    """Items are (normalised image, index into the stimulus list): ToTensor + Normalize, bit for bit."""

    def __init__(self, items: list[tuple[Path, str, str]], spec: EvalSpec, image_size: int | None) -> None:
        self.items, self.spec, self.image_size = items, spec, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.items[i][0]) as im:
            img = im.convert("RGB")
        if self.image_size is not None and img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BICUBIC)
        return self.spec.normalize(TF.pil_to_tensor(img)), i


def stimuli_loader(items: list[tuple[Path, str, str]], cfg: ShapeBiasConfig,
                   model_config: ModelConfig) -> torch.utils.data.DataLoader:
    """The stimuli as they are (or resized to ``image_size``), ToTensor, the mean/std of ``model_config`` (under
    ``protocol: paper`` ImageNet's, :func:`paper_eval_spec`)."""
    spec = EvalSpec(mean=model_config.mean, std=model_config.std)
    return torch.utils.data.DataLoader(_Stimuli(items, spec, cfg.image_size), batch_size=cfg.batch_size,
                                       shuffle=False, num_workers=cfg.num_workers)


def category_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1000) logits -> (B, 16): softmax over the 1,000 classes, then per category the mean probability of
    its ImageNet classes (``ImageNetProbabilitiesTo16ClassesMapping`` with its default ``np.mean``)."""
    if logits.dim() != 2 or logits.shape[1] != 1000:
        raise ConfigError(f"shape_bias needs a 1,000-class ImageNet model; this one gives {logits.shape[-1]} outputs")
    probs = torch.softmax(logits.float(), dim=1)
    return torch.stack([probs[:, list(idx)].mean(dim=1) for idx in category_indices().values()], dim=1)


def decisions(logits: torch.Tensor) -> list[str]:
    """The decided category per image: the best mean probability (ties: the first category in sorted order)."""
    cats = categories()
    return [cats[i] for i in category_probabilities(logits).argmax(dim=1).tolist()]


def _percent(num: int, den: int) -> float | None:
    return None if den == 0 else 100.0 * num / den


def tally(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Shape bias from (shape category, texture category, decision) rows (``plotting/analyses.py:89-106``)."""

    def counts(sel: list[tuple[str, str, str]]) -> dict[str, Any]:
        conflict = [r for r in sel if r[0] != r[1]]
        shape = sum(1 for s, _, d in conflict if d == s)
        texture = sum(1 for _, t, d in conflict if d == t)
        return {"images": len(sel), "conflict_images": len(conflict), "shape_hits": shape, "texture_hits": texture,
                "shape_bias": _percent(shape, shape + texture), "shape_accuracy": _percent(shape, len(sel)),
                "texture_accuracy": _percent(texture, len(sel))}

    out = counts(rows)
    out["excluded_same_category"] = out["images"] - out["conflict_images"]
    shapes = {r[0] for r in rows}
    out["categories"] = {c: counts([r for r in rows if r[0] == c]) for c in categories() if c in shapes}
    out["decisions"] = {c: sum(1 for r in rows if r[2] == c) for c in categories()}
    return out


@torch.no_grad()
def run(model: nn.Module, cfg: ShapeBiasConfig, data: Any = None, model_config: ModelConfig | None = None,
        loader: Any = None) -> dict[str, Any]:
    """``loader``: (images, indices into ``stimuli(cfg.root)``) batches instead of reading the files."""
    n_classes = getattr(model, "num_classes", None) or (model_config.num_classes if model_config else None)
    if n_classes is not None and n_classes != 1000:
        raise ConfigError(f"shape_bias needs a 1,000-class ImageNet model (its decision averages ImageNet class "
                          f"probabilities); this model predicts {n_classes} classes")
    items = stimuli(cfg.root, cfg.check_layout)
    if loader is None:
        loader = stimuli_loader(items, cfg, model_config)
    rows = []
    for x, idx in loader:
        for i, d in zip(idx.tolist(), decisions(logits_of(model, x))):
            rows.append((items[i][1], items[i][2], d))
    return {"analysis": "shape_bias", "config": cfg.to_dict(), **tally(rows)}


def plot(result: dict[str, Any], path: Any) -> Any:
    """model-vs-human's matrix plot: per shape category the fraction of shape decisions, the overall line."""
    fig, axes = new_figure(size=(4.6, 4.4))
    ax = axes[0][0]
    cats = [c for c in result["categories"] if result["categories"][c]["shape_bias"] is not None]
    ax.scatter([result["categories"][c]["shape_bias"] / 100 for c in cats], range(len(cats)), s=18, zorder=3)
    if result["shape_bias"] is not None:
        ax.axvline(result["shape_bias"] / 100, color="C0", lw=1)
    ax.set_yticks(range(len(cats)), cats, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of 'shape' decisions (of shape + texture decisions)")
    sb = result["shape_bias"]
    ax.set_title(f"shape bias {'n/a' if sb is None else f'{sb:.1f}%'} "
                 f"({result['conflict_images']} cue-conflict images)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float | None]:
    """``shape_bias.<scalar>`` for base/metric_keys.py's SHAPE_BIAS_SCALARS (W&B ``analysis/shape_bias/...``)."""
    return {f"shape_bias.{k}": result[k] for k in SHAPE_BIAS_SCALARS}
