"""The embedded default through FFCV: real Fashion-MNIST written once to .beton files, then read by FFCV.

``ensure_fashion_mnist_betons`` resizes the 28 px grey images to ``size`` (bilinear, as the in-memory
DataModule does), copies them to 3 channels and stores them raw (no JPEG loss) in ``cache_dir``; later calls
reuse the files while the source files and size are unchanged. ``FashionMNISTFFCVDataModule`` trains from
them with the demo's augmentation (flip; a zero-padded random crop with ``pad_crop`` > 0) and validates on the
full 10,000-image test set.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import DataError
from ..models.registry import get_model_config
from .fashion_mnist import CLASSES, DEBIAN_ROOT, FILES, _find, load_fashion_mnist, resize_grey
from .ffcv import FFCVDataModule
from .ffcv_import import require_ffcv
from .ffcv_writer import meta_path, page_size_for, read_meta, write_atomic

FORMAT = 1  # bump when the stored layout changes, to rewrite cached files


class _GreyAsRGB:
    """(H, W, 3) uint8 copies of grey images, with labels, for FFCV's writer processes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.repeat(self.images[i][:, :, None], 3, axis=2), int(self.labels[i])


def _source_stamp(root: str, split: str) -> list:
    paths = [_find(Path(root), stem) for stem in FILES[split]]
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] if p else None for p in paths]


def ensure_fashion_mnist_betons(cache_dir: str | Path, size: int = 32, root: str = DEBIAN_ROOT,
                                download: bool = False, num_workers: int = -1) -> dict[str, Any]:
    """Write (once) and return {'train': path, 'val': path, 'size', 'classes', 'num_train', 'num_val'}.

    'val' is the 10,000-image test split. Files are rewritten only when missing or when the source files,
    ``size`` or the format changed.
    """
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField

    if size < 8:
        raise DataError(f"size must be >= 8 px, got {size}")
    cache = Path(cache_dir).expanduser()
    out: dict[str, Any] = {"size": size, "classes": list(CLASSES)}
    for split, name in (("train", "train"), ("test", "val")):
        path = cache / f"fashion_mnist_{split}_{size}px.beton"
        stamp = {"format": FORMAT, "size": size, "source": _source_stamp(root, split)}
        meta = read_meta(path) if path.is_file() else None
        if meta is None or meta.get("stamp") != stamp:
            images, labels = load_fashion_mnist(split, root, download)
            stamp["source"] = _source_stamp(root, split)  # after a download
            grey = resize_grey(images, size).numpy()
            workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
            print(f"[fashion-mnist] writing {len(grey)} {split} images ({size} px RGB) to {path}", flush=True)
            meta = write_atomic(path, _GreyAsRGB(grey, labels), {"image": RGBImageField(write_mode="raw"),
                                                                 "label": IntField()},
                                {"classes": list(CLASSES), "num_samples": len(grey), "stamp": stamp,
                                 "source": str(root)}, page_size_for(3 * size * size), workers, chunk_size=1000)
        out[name] = str(path)
        out[f"num_{name}"] = int(meta["num_samples"])
    if not meta_path(out["train"]).is_file():  # pragma: no cover - written above
        raise DataError(f"Fashion-MNIST cache in {cache} is incomplete")
    return out


class FashionMNISTFFCVDataModule(FFCVDataModule):
    """Fashion-MNIST (60k train, 10k test as val) through FFCV, with the demo's augmentation.

    The .beton files are written to ``cache_dir`` on first use (``ensure_fashion_mnist_betons``) at the model's
    input size (``size`` overrides it).
    """

    def __init__(self, cache_dir: str = "data_cache/fashion_mnist_ffcv", root: str = DEBIAN_ROOT,
                 download: bool = False, size: int | None = None, hflip: float = 0.5, pad_crop: int = 0,
                 **kwargs: Any) -> None:
        if kwargs.get("model_name") is None:  # the CLI passes None explicitly
            kwargs["model_name"] = "convnext_demo"
        # The CLI passes the parent's options with their defaults (jsonargparse resolves **kwargs); only a
        # value that differs from the parent's default is a real attempt to override what this module sets.
        defaults = inspect.signature(FFCVDataModule.__init__).parameters
        for k in ("train_path", "val_path", "auto_augment", "color_jitter", "re_prob", "scale", "ratio"):
            if k in kwargs:
                value = kwargs.pop(k)
                default = defaults[k].default
                if value != default and not (isinstance(value, (list, tuple)) and tuple(value) == tuple(default)):
                    raise DataError(f"FashionMNISTFFCVDataModule sets {k} itself")
        self.cache_dir, self.root, self.download = cache_dir, root, download
        side = size or kwargs.get("input_size") or get_model_config(kwargs["model_name"]).image_size
        self.paths = ensure_fashion_mnist_betons(cache_dir, int(side), root, download)
        super().__init__(train_path=self.paths["train"], val_path=self.paths["val"], scale=(1.0, 1.0),
                         ratio=(1.0, 1.0), hflip=hflip, pad_crop=pad_crop, auto_augment=None, color_jitter=None,
                         re_prob=0.0, **kwargs)
