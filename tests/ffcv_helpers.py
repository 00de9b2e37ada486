"""Small .beton files for the FFCV tests (written with lk_ablate's writer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers import make_image_folder
from lk_ablate.data.ffcv_writer import WriterConfig, write_ffcv


def write_betons(root: Path, classes: int = 4, per_class: int = 7, size: int = 40, ext: str = "png",
                 **cfg) -> tuple[str, str]:
    """(train, val) .beton paths of a generated ImageFolder dataset (raw storage unless told otherwise)."""
    make_image_folder(root / "data", classes=classes, per_class=per_class, size=size, ext=ext)
    cfg.setdefault("write_mode", "raw")
    cfg.setdefault("num_workers", 1)
    res = write_ffcv(root / "data", root / "ffcv", cfg=WriterConfig(**cfg))
    return res["train"]["path"], res["val"]["path"]


def write_indexed_beton(root: Path, n: int = 21, size: int = 36, same_image: bool = False) -> str:
    """A 'train' .beton whose label of sample i is i (one image per class folder), so batches show which
    samples they hold; ``same_image`` stores one picture n times."""
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        d = root / "indexed" / "train" / f"c{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        img = first if same_image else rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / "0.png")
    res = write_ffcv(root / "indexed", root / "indexed_ffcv", splits=("train",),
                     cfg=WriterConfig(write_mode="raw", num_workers=1))
    return res["train"]["path"]
