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

import dataclasses
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import functional as TF

from ..base.errors import ConfigError, DataError
from ..base.figures import new_figure, save_figure
from ..data.transforms import EvalSpec
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .common import SectionConfig, logits_of

IMAGES_PER_CATEGORY = 80
GET_STIMULI = ("get them with `git clone --depth 1 https://github.com/rgeirhos/texture-vs-shape` and set "
               "shape_bias.root to texture-vs-shape/stimuli/style-transfer-preprocessed-512")


@lru_cache(maxsize=1)
def category_indices() -> dict[str, tuple[int, ...]]:
    """The 16 categories (sorted, as ``get_human_object_recognition_categories``) -> their ImageNet class indices."""
    table = json.loads(resources.files(__package__).joinpath("cue_conflict_categories.json").read_text())
    return {c: tuple(int(i) for i in v) for c, v in sorted(table["categories"].items())}


def categories() -> tuple[str, ...]:
    return tuple(category_indices())


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """model-vs-human's loader for 224 px datasets (``datasets/dataloaders.py:64-68``): ToTensor, ImageNet
    mean/std, no resize (``shape_bias.image_size`` resizes, a documented option)."""
    return EvalSpec(crop=tuple(int(v) for v in cfg.input_size[-2:]), resize=None, interpolation="bicubic",
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclasses.dataclass
class ShapeBiasConfig(SectionConfig):
    """``root``: the stimuli folder (16 category folders); ``check_layout``: require the released set, 80 PNGs in
    each folder (false: any number, e.g. a subset); ``image_size``: null feeds the stimuli as they are
    (model-vs-human), a number resizes them (bicubic) to that square size, e.g. for a ViT that takes 384 px only."""

    root: str = ""
    check_layout: bool = True
    image_size: int | None = None
    batch_size: int = 64
    num_workers: int = 2

    def validate(self) -> None:
        if not self.root:
            raise ConfigError(f"shape_bias.root is required: the folder of the 16 cue-conflict category folders; "
                              f"{GET_STIMULI}")
        if self.image_size is not None and self.image_size < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("shape_bias.image_size (or null) and shape_bias.batch_size must be >= 1, "
                              "shape_bias.num_workers >= 0")
        stimuli(self.root, self.check_layout)  # the folder's layout, before any model is loaded (a few ms)


def texture_category(file_name: str) -> str:
    """``plotting/analyses.py:113-128``: 'airplane1-bicycle2.png' -> 'bicycle' (after the last '_', before the
    first '.', the last '-' part, digits removed)."""
    part = file_name.split("_")[-1].split(".")[0].split("-")[-1]
    return "".join(ch for ch in part if not ch.isdigit())


def stimuli(root: str | os.PathLike, check_layout: bool = True) -> list[tuple[Path, str, str]]:
    """(path, shape category, texture category) of every stimulus, sorted by folder then file name; a folder that
    is not the released layout stops here, with one line naming what is wrong and where to get the stimuli."""
    root = Path(root)
    cats = categories()
    if not root.is_dir():
        raise DataError(f"cue-conflict stimuli not found: {root}; {GET_STIMULI}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [c for c in cats if c not in folders]
    unknown = [f for f in folders if f not in cats]
    if missing or unknown:
        what = "; ".join(x for x in (f"missing category folder(s) {', '.join(missing)}" if missing else "",
                                      f"unexpected folder(s) {', '.join(unknown)}" if unknown else "") if x)
        raise DataError(f"{root} is not the cue-conflict stimuli folder ({what}; expected the 16 folders "
                        f"{', '.join(cats)}); {GET_STIMULI}")
    items: list[tuple[Path, str, str]] = []
    wrong_count: list[str] = []
    for c in cats:
        files = sorted(p for p in (root / c).iterdir() if not p.name.startswith("."))
        not_png = [p.name for p in files if not (p.is_file() and p.suffix.lower() == ".png")]
        if not_png:
            raise DataError(f"{root / c} holds {len(not_png)} file(s) that are not PNG images (e.g. {not_png[0]}); "
                            f"the cue-conflict stimuli are PNGs; {GET_STIMULI}")
        if check_layout and len(files) != IMAGES_PER_CATEGORY:
            wrong_count.append(f"{c} {len(files)}")
        for p in files:
            tex = texture_category(p.name)
            if tex not in cats:
                raise DataError(f"{p}: file name names no texture category (expected <shape><n>-<texture><m>.png "
                                f"with a texture among {', '.join(cats)}); {GET_STIMULI}")
            items.append((p, c, tex))
    if wrong_count:
        raise DataError(f"{root}: the released stimuli have {IMAGES_PER_CATEGORY} PNGs per category, found "
                        f"{', '.join(wrong_count)} ({len(items)} in all, 1280 expected); {GET_STIMULI} (or set "
                        "shape_bias.check_layout false for a subset)")
    if not items:
        raise DataError(f"{root}: no PNG stimuli in the 16 category folders; {GET_STIMULI}")
    return items


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
    return {"shape_bias.shape_bias": result["shape_bias"], "shape_bias.shape_accuracy": result["shape_accuracy"],
            "shape_bias.texture_accuracy": result["texture_accuracy"]}
