"""Robustness benchmarks read from their released layouts, with the authors' class masks and transforms.

Layouts (``root`` is the folder you pass):

- ImageNet val (clean):  root/<wnid>/*.JPEG, the 1000 class folders (``lk_ablate data prepare-imagenet-val``)
- ImageNet-A, -R:        root/<wnid>/*, the benchmark's 200 class folders (README.txt beside them is fine)
- ImageNet-O:            root/<wnid>/* (200 folders); in-distribution = ImageNet val images of those 200 wnids
- ImageNet-C:            root/<corruption>/<severity 1..5>/<wnid>/*.JPEG, 1000 class folders per severity;
                         the released tars' category level (root/noise/gaussian_noise/...) is accepted too

Masks follow hendrycks/natural-adv-examples and hendrycks/imagenet-r: take the 1000 wnids sorted,
``mask[i] = wnid_i in benchmark_wnids``, score ``logits[:, mask]``; labels are ImageFolder indices over the
benchmark's sorted wnid folders. Transforms follow the authors: A/R/O/val resize then centre-crop
(``Resize(256), CenterCrop(224)`` for a 224 model), ImageNet-C no resize. Under ``protocol: model`` sizes,
interpolation and normalisation come from the model's ``ModelConfig``; under ``protocol: paper`` every model gets
the benchmark authors' transform (:func:`paper_spec`).
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data.transforms import EvalSpec, eval_transform
from ..base.errors import ConfigError, DataError
from ..evaluation.options import check_protocol
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .metrics import ALL_CORRUPTIONS, SEVERITIES

__all__ = [
    "BENCHMARK_NAMES", "C_PRESETS", "Benchmark", "Part", "build_benchmarks", "class_indices", "class_mask",
    "eval_transform", "load_wnids", "paper_spec", "resolve_corruptions",
]

BENCHMARK_NAMES = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_c", "imagenet_o")
# ImageNet-C presets: (corruptions, severities). severity5 = the large-kernel paper's number (19 x 50k images),
# full = every released set (19 x 5 x 50k = 4.75M images; mCE uses the 15 x 5 of them).
C_PRESETS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "severity5": (ALL_CORRUPTIONS, (5,)),
    "full": (ALL_CORRUPTIONS, SEVERITIES),
}
# The category folders of the released ImageNet-C tars.
_C_CATEGORIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
_WNID_FILES = {"imagenet_1k": "imagenet_1k.txt", "imagenet_a": "imagenet_a.txt", "imagenet_r": "imagenet_r.txt",
               "imagenet_o": "imagenet_o.txt"}


@functools.lru_cache(maxsize=None)
def load_wnids(name: str) -> tuple[str, ...]:
    """Sorted wnids shipped as package data: imagenet_1k (1000), imagenet_a / imagenet_r / imagenet_o (200)."""
    if name not in _WNID_FILES:
        raise ConfigError(f"no wnid list {name!r}; choose one of {sorted(_WNID_FILES)}")
    text = (resources.files(__package__) / "wnids" / _WNID_FILES[name]).read_text()
    return tuple(sorted(line.strip() for line in text.splitlines() if line.strip()))


def class_mask(name: str) -> torch.Tensor:
    """Boolean mask over the 1000 sorted ImageNet wnids: True where the wnid belongs to benchmark ``name``."""
    keep = set(load_wnids(name))
    return torch.tensor([w in keep for w in load_wnids("imagenet_1k")], dtype=torch.bool)


def class_indices(name: str) -> list[int]:
    """The 200 indices into the 1000 ImageNet classes that benchmark ``name`` keeps, ascending."""
    return torch.nonzero(class_mask(name)).flatten().tolist()


class _FixedClassFolder(ImageFolder):
    """ImageFolder whose classes are a given sorted wnid list (labels = index in that list), not whatever is on disk."""

    def __init__(self, root: str, classes: Sequence[str], transform: Callable | None = None) -> None:
        self._fixed = list(classes)
        super().__init__(root, transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._fixed, {c: i for i, c in enumerate(self._fixed)}


# `protocol: paper`, the benchmark authors' evaluation scripts, for every model:
# - ImageNet-A, hendrycks/natural-adv-examples eval.py:16-20 (commit 0777070), ImageNet-O and its val images,
#   eval_many_models.py:31 (0777070), ImageNet-R and its ImageNet-200 val images, hendrycks/imagenet-r
#   eval.py:27-31 (3131cac), clean val, hendrycks/robustness ImageNet-C/test.py:209-211
#   (8190fe3, `clean_loader`): Resize(256) (torchvision's default, bilinear), CenterCrop(224), ToTensor,
#   Normalize(ImageNet mean, std).
# - ImageNet-C, ImageNet-C/test.py:244 (`show_performance`): CenterCrop(224), ToTensor, Normalize(ImageNet); no
#   resize.
# A model whose input is not 224 px (RepLKNet-31L and the 384 px fine-tunes; XL at 320) gets the same recipe at
# its own size: resize to floor(S * 256 / 224), centre crop S, bilinear, ImageNet mean/std (the paper scored 31L
# at 384, but no released script says how: this scaling is the project's choice). ImageNet-C's 224 px images are
# fed as released (224 px) to every model, as test.py does.
PAPER_RESIZE, PAPER_CROP = 256, 224


def paper_spec(cfg: ModelConfig, resize: bool = True) -> EvalSpec:
    """The benchmark authors' transform for a model of ``cfg``'s input size (``resize`` False: ImageNet-C)."""
    s = int(cfg.image_size)
    if not resize:
        return EvalSpec(crop=(PAPER_CROP, PAPER_CROP), resize=None, interpolation="bilinear", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD)
    return EvalSpec(crop=(s, s), resize=int(math.floor(s * PAPER_RESIZE / PAPER_CROP)), interpolation="bilinear",
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True)
class Part:
    """One folder to score: ``key`` names it within its benchmark (``imagenet_c``: "<corruption>/<severity>").

    ``protocol``: "model" (the model's own eval config) or "paper" (:func:`paper_spec`)."""

    key: str
    root: str
    classes: tuple[str, ...]
    resize: bool
    protocol: str = "model"

    def spec(self, cfg: ModelConfig) -> EvalSpec:
        """The eval input for this part under its protocol (ImageNet-C: no resize)."""
        if self.protocol == "paper":
            return paper_spec(cfg, resize=self.resize)
        return EvalSpec.from_model_config(cfg, resize=self.resize)

    def dataset(self, cfg: ModelConfig | EvalSpec, transform: Callable | None = None) -> Dataset:
        """The part's images with ``transform`` (default: the full eval transform of ``cfg``)."""
        if transform is None:
            transform = eval_transform(cfg if isinstance(cfg, EvalSpec) else self.spec(cfg))
        return _FixedClassFolder(self.root, self.classes, transform=transform)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its parts (folders), how each sample is scored, and which 1000-class mask applies.

    ``kind``: "topk" (clean val: top-1/top-5 over 1000), "masked_top1" (A, R), "corruption" (C),
    "ood" (O: parts "in" = ImageNet val of O's wnids, "out" = ImageNet-O).
    """

    name: str
    kind: str
    parts: tuple[Part, ...]
    mask: str | None = None

    def check(self) -> None:
        """Raise DataError naming every missing or empty class folder of every part."""
        problems = []
        for part in self.parts:
            problems += _folder_problems(Path(part.root), part.classes)
        if problems:
            shown = "\n  ".join(problems[:12])
            more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
            raise DataError(f"{_TITLES[self.name]}: wrong or partial layout\n  {shown}{more}\n  "
                            f"expected: {_LAYOUTS[self.name]}")

    @property
    def mask_tensor(self) -> torch.Tensor | None:
        return None if self.mask is None else class_mask(self.mask)


_TITLES = {"imagenet_val": "ImageNet val", "imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R",
           "imagenet_c": "ImageNet-C", "imagenet_o": "ImageNet-O"}
_LAYOUTS = {
    "imagenet_val": "<imagenet_val>/<wnid>/*.JPEG for all 1000 wnids (run `lk_ablate data prepare-imagenet-val` "
                    "on the flat val folder)",
    "imagenet_a": "<imagenet_a>/<wnid>/* for the 200 ImageNet-A wnids (the extracted imagenet-a.tar)",
    "imagenet_r": "<imagenet_r>/<wnid>/* for the 200 ImageNet-R wnids (the extracted imagenet-r.tar)",
    "imagenet_c": "<imagenet_c>/<corruption>/<severity>/<wnid>/*.JPEG, 1000 wnids per severity (the extracted "
                  "ImageNet-C tars)",
    "imagenet_o": "<imagenet_o>/<wnid>/* for the 200 ImageNet-O wnids, and <imagenet_val>/<wnid>/*.JPEG for "
                  "the same 200 wnids (in-distribution images)",
}


def _has_image(folder: str) -> bool:
    with os.scandir(folder) as it:
        return any(e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file() for e in it)


def _folder_problems(root: Path, classes: Sequence[str]) -> list[str]:
    if not root.is_dir():
        return [f"{root} does not exist"]
    present = {e.name for e in os.scandir(root) if e.is_dir()}
    missing = [c for c in classes if c not in present]
    problems = []
    if missing:
        hint = ""
        if len(present) == 1 and not set(classes) & present:
            hint = f" (it holds one folder, {next(iter(present))!r}: point to that folder instead?)"
        problems.append(f"{root} lacks {len(missing)} of its {len(classes)} class folders: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}{hint}")
    empty = [c for c in classes if c in present and not _has_image(str(root / c))]
    if empty:
        problems.append(f"{root} has {len(empty)} class folders without images: "
                        f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
    return problems


def resolve_corruptions(preset: str | None = "severity5", corruptions: Sequence[str] | None = None,
                        severities: Sequence[int] | None = None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The ImageNet-C subset to score: a preset, with explicit ``corruptions`` / ``severities`` overriding it."""
    if preset is not None and preset not in C_PRESETS:
        raise ConfigError(f"unknown ImageNet-C preset {preset!r}; choose one of {sorted(C_PRESETS)} or give "
                          f"corruptions and severities")
    base_c, base_s = C_PRESETS[preset] if preset is not None else (ALL_CORRUPTIONS, SEVERITIES)
    cs = tuple(corruptions) if corruptions is not None else base_c
    ss = tuple(int(s) for s in severities) if severities is not None else base_s
    bad = [c for c in cs if c not in ALL_CORRUPTIONS]
    if bad:
        raise ConfigError(f"unknown ImageNet-C corruptions {bad}; choose from {list(ALL_CORRUPTIONS)}")
    bad_s = [s for s in ss if s not in SEVERITIES]
    if bad_s or not ss or not cs:
        raise ConfigError(f"ImageNet-C needs at least one corruption and severities in 1..5, got {list(cs)} / {list(ss)}")
    # Keep the canonical order whatever order they were given in.
    return tuple(c for c in ALL_CORRUPTIONS if c in cs), tuple(sorted(set(ss)))


def _corruption_dir(root: Path, corruption: str) -> Path:
    direct = root / corruption
    if direct.is_dir():
        return direct
    for cat, members in _C_CATEGORIES.items():
        if corruption in members and (root / cat / corruption).is_dir():
            return root / cat / corruption
    return direct


def build_benchmarks(imagenet_val: str | None = None, imagenet_a: str | None = None, imagenet_r: str | None = None,
                     imagenet_c: str | None = None, imagenet_o: str | None = None, c_preset: str | None = "severity5",
                     corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                     protocol: str = "model") -> list[Benchmark]:
    """The configured benchmarks, in a fixed order (clean val first: relative mCE needs its error)."""
    check_protocol(protocol)
    all_1k = load_wnids("imagenet_1k")
    part = functools.partial(Part, protocol=protocol)
    out = []
    if imagenet_val:
        out.append(Benchmark("imagenet_val", "topk", (part("val", str(imagenet_val), all_1k, True),)))
    if imagenet_a:
        out.append(Benchmark("imagenet_a", "masked_top1", (part("a", str(imagenet_a), load_wnids("imagenet_a"), True),),
                             mask="imagenet_a"))
    if imagenet_r:
        out.append(Benchmark("imagenet_r", "masked_top1", (part("r", str(imagenet_r), load_wnids("imagenet_r"), True),),
                             mask="imagenet_r"))
    if imagenet_c:
        cs, ss = resolve_corruptions(c_preset, corruptions, severities)
        root = Path(imagenet_c)
        parts = tuple(part(f"{c}/{s}", str(_corruption_dir(root, c) / str(s)), all_1k, False) for c in cs for s in ss)
        out.append(Benchmark("imagenet_c", "corruption", parts))
    if imagenet_o:
        if not imagenet_val:
            raise ConfigError("ImageNet-O needs imagenet_val too: its in-distribution set is the ImageNet val "
                              "images of ImageNet-O's 200 classes")
        o_wnids = load_wnids("imagenet_o")
        out.append(Benchmark("imagenet_o", "ood", (part("in", str(imagenet_val), o_wnids, True),
                                                  part("out", str(imagenet_o), o_wnids, True)), mask="imagenet_o"))
    return out
