"""ImageFolder DataModule (torchvision): root/train/<class>/*.JPEG and root/val/<class>/*.JPEG.

The fallback to FFCV: use it when the data is not converted to .beton yet, for small datasets, or to read
the original JPEGs exactly (FFCV stores images re-encoded at max side 500).
"""
from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..base.errors import ConfigError, DataError
from ..models.registry import ModelConfig
from .base import ClassificationDataModule, SeededDataset
from .transforms import AugmentConfig, eval_transform, train_transform


def check_image_folder(path: Path, what: str, hint: str) -> list[str]:
    """The class folder names of an ImageFolder tree, or a DataError naming what is missing."""
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}\n  expected layout: {path}/<class>/<image files>\n  {hint}")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    if not classes:
        raise DataError(f"{what} folder {path} has no class sub-folders\n  expected layout: {path}/<class>/<images>"
                        f"\n  {hint}")
    empty = [c for c in classes if not _has_image(path / c)]
    if empty:  # torchvision's ImageFolder would fail later with a traceback
        raise DataError(f"{what} folder {path}: {len(empty)} class folder(s) hold no image files "
                        f"({', '.join(IMG_EXTENSIONS)}): {', '.join(str(path / c) for c in empty[:3])}"
                        f"{' ...' if len(empty) > 3 else ''}; remove them or add their images")
    return classes


def _has_image(folder: Path) -> bool:
    with os.scandir(folder) as it:  # stops at the first image: cheap on ImageNet's 1000 folders
        return any(e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file() for e in it)


class ImageFolderDataModule(ClassificationDataModule):
    """ImageNet-style folders read with PIL; per-sample augmentation seeded by (seed, epoch, index)."""

    def __init__(self, root: str, train_dir: str = "train", val_dir: str = "val",
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5,
                 auto_augment: str | None = "rand-m9-mstd0.5-inc1", color_jitter: float = 0.4,
                 re_prob: float = 0.25, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.train_path, self.val_path = self.root / train_dir, self.root / val_dir
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; got {scale}, {ratio}")
        self.augment = AugmentConfig(scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, auto_augment=auto_augment,
                                     color_jitter=color_jitter, re_prob=re_prob)
        hint = ("set data.init_args.root to your dataset folder (for ImageNet val, run "
                "`lk_ablate data prepare-imagenet-val` first)")
        # Checked here, when `fit` starts, not when the first batch is read.
        train_classes = check_image_folder(self.train_path, "training", hint)
        val_classes = check_image_folder(self.val_path, "validation", hint)
        if train_classes != val_classes:
            only_t = sorted(set(train_classes) - set(val_classes))[:5]
            only_v = sorted(set(val_classes) - set(train_classes))[:5]
            raise DataError(f"train and val class folders differ ({len(train_classes)} vs {len(val_classes)}): "
                            f"only in train {only_t}, only in val {only_v}")
        self.classes = train_classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def build_datasets(self, stage: str, cfg: ModelConfig) -> dict:
        out = {"val": SeededDataset(ImageFolder(str(self.val_path)), eval_transform(cfg), self.seed)}
        if stage == "fit":
            out["train"] = SeededDataset(ImageFolder(str(self.train_path)), train_transform(cfg, self.augment),
                                         self.seed)
        return out
