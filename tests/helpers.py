"""Small generated datasets for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: int = 4, per_class: int = 6, size: int = 40, splits=("train", "val"),
                      seed: int = 0, ext: str = "png") -> Path:
    """root/<split>/<class_i>/<n>.<ext>: each class has its own mean colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=3)
            for i in range(per_class):
                img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{split}_{c}_{i}.{ext}")
    return root
