"""ImageFolder trees -> FFCV .beton files, with ffcv-imagenet's parameters as defaults.

ffcv-imagenet writes each image resized to a maximum side of 500 px (cv2 INTER_AREA), half of them as
JPEG at quality 90 and half raw ('proportion' mode), in chunks of 100, with one process per core; so do we.
Before writing, every file is checked (header for size, and a decode unless ``verify=False``; JPEGs are decoded
at 1/8 scale, which still reads all of the data, so truncation shows): unreadable files are skipped and
counted. The .beton is written under a temporary name and renamed only when complete, so an interrupted write
never leaves a file that looks finished. A JSON beside it (``<file>.json``) records the class names, the
counts, the skipped files and the parameters; the FFCV DataModule reads the class list from it.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..base.files import append_text, atomic_path, atomic_write_text
from ..base.progress import Progress
from ..base.errors import DataError
from .ffcv_import import require_ffcv
from .folder import check_image_folder
from .seeding import derive_seed
from .writer_config import WriterConfig

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
STREAM_WRITER = 4  # which images are stored as JPEG in 'proportion' mode: (seed, STREAM_WRITER, index)


@dataclass
class FolderScan:
    classes: list[str]
    files: list[str]
    labels: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0  # files whose extension is not an image's
    max_side: int = 0


def list_image_folder(root: Path, what: str = "image") -> FolderScan:
    """Class folders and their image files (sorted, as torchvision's ImageFolder), or a DataError."""
    classes = check_image_folder(root, what, "expected an ImageFolder tree: <root>/<class>/<image files>")
    files, labels, ignored, empty = [], [], 0, []
    for label, cls in enumerate(classes):
        names = sorted(os.listdir(root / cls))
        images = [n for n in names if n.lower().endswith(IMG_EXTENSIONS) and (root / cls / n).is_file()]
        ignored += len(names) - len(images)
        if not images:
            empty.append(cls)
        files += [str(root / cls / n) for n in images]
        labels += [label] * len(images)
    if not files:
        raise DataError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {root}/<class>/")
    if empty:
        raise DataError(f"{len(empty)} class folder(s) under {root} have no image files: {empty[:5]}"
                        f"{' ...' if len(empty) > 5 else ''}; remove them or add the images")
    return FolderScan(classes, files, labels, ignored=ignored)


def _check_file(path: str, decode: bool) -> tuple[int, int, str | None]:
    """(width, height, error or None) of one image; decoding a JPEG at 1/8 scale still reads all its data."""
    try:
        with Image.open(path) as im:
            size = im.size
            if decode:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        return size[0], size[1], None
    except Exception as e:  # noqa: BLE001 - every failure is a skipped file with its reason
        return 0, 0, f"{type(e).__name__}: {e}"


def _check_chunk(args: tuple[list[str], bool]) -> list[tuple[int, int, str | None]]:
    paths, decode = args
    return [_check_file(p, decode) for p in paths]


def check_files(scan: FolderScan, cfg: WriterConfig, desc: str, allow_all_bad: bool = False,
                progress: bool = True) -> FolderScan:
    """Drop unreadable files (recorded in ``skipped``) and note the largest side, using every core.
    ``allow_all_bad``: return even when no file is readable (``lk_ablate data check`` lists them)."""
    chunks = [scan.files[i:i + 256] for i in range(0, len(scan.files), 256)]
    results: list[tuple[int, int, str | None]] = []
    with ProcessPoolExecutor(cfg.workers()) as pool, Progress(desc, len(scan.files), "img", progress) as bar:
        for part in pool.map(_check_chunk, [(c, cfg.verify) for c in chunks]):
            results += part
            bar.update(len(part))
    keep_files, keep_labels, skipped, max_side = [], [], [], 0
    for path, label, (w, h, err) in zip(scan.files, scan.labels, results):
        if err is None:
            keep_files.append(path)
            keep_labels.append(label)
            max_side = max(max_side, w, h)
        else:
            skipped.append((path, err))
    if not keep_files and not allow_all_bad:
        raise DataError(f"none of the {len(scan.files)} image files could be read; first error: {skipped[0][1]} "
                        f"({skipped[0][0]})")
    return FolderScan(scan.classes, keep_files, keep_labels, skipped, scan.ignored, max_side)


class _FolderSamples:
    """(RGB uint8 array, label) per index for FFCV's writer processes.

    Seeds numpy per sample so 'proportion' mode picks the same images as JPEG in every run. A file that fails
    here (it passed the check, so it changed since) is recorded in ``failed_log`` and replaced by a 1-pixel
    placeholder: raising would kill an FFCV writer process and leave its progress loop waiting forever.
    """

    def __init__(self, files: Sequence[str], labels: Sequence[int], seed: int, failed_log: str) -> None:
        self.files, self.labels, self.seed, self.failed_log = files, labels, seed, failed_log

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        np.random.seed(derive_seed(self.seed, STREAM_WRITER, index) % 2**32)
        try:
            with Image.open(self.files[index]) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            append_text(self.failed_log, f"{self.files[index]}\t{type(e).__name__}: {e}\n")
            image = np.zeros((1, 1, 3), np.uint8)
        return image, int(self.labels[index])


def page_size_for(max_raw_bytes: int) -> int:
    """A power of two >= FFCV's default (8 MiB) that holds the largest raw image (FFCV needs one sample per page)."""
    size = 1 << 23
    while size < max_raw_bytes + 4096:
        size <<= 1
    return size


def meta_path(beton: str | Path) -> Path:
    return Path(f"{beton}.json")


def read_meta(beton: str | Path) -> dict | None:
    p = meta_path(beton)
    return json.loads(p.read_text()) if p.is_file() else None


def write_atomic(out: str | Path, dataset, fields: dict, meta: dict, page_size: int, num_workers: int,
                 chunk_size: int = 100, failed_log: Path | None = None, progress: bool = True) -> dict:
    """Write an indexable dataset of field tuples to ``out`` under a temporary name, then rename it (and its
    ``<out>.json`` with ``meta``) into place; an interrupted write leaves no file that looks complete.
    ``progress``: the writer's progress as every lk_ablate job shows it (base/progress.py)."""
    require_ffcv()
    from ffcv import writer as ffcv_writer
    from ffcv.writer import DatasetWriter

    out = Path(out)
    t0 = time.perf_counter()
    try:
        # The one atomic writer (base/files.py): fsync, rename into place, umask permissions; the .json metadata
        # is published after the .beton, so a .json always describes a complete file.
        with atomic_path(out) as tmp, _writer_progress(ffcv_writer, f"write {out.name}", progress):
            DatasetWriter(tmp, fields, page_size=page_size, num_workers=num_workers).from_indexed_dataset(
                dataset, chunksize=chunk_size)
            if failed_log is not None and failed_log.is_file() and failed_log.stat().st_size:
                lines = failed_log.read_text().splitlines()
                raise DataError(f"{len(lines)} file(s) could not be read while writing {out} although they passed "
                                f"the check (did the files change?); first: {lines[0]}")
        meta = {**meta, "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_text(meta_path(out), json.dumps(meta, indent=1))
        return meta
    finally:
        if failed_log is not None:
            failed_log.unlink(missing_ok=True)


@contextlib.contextmanager
def _writer_progress(module: Any, desc: str, enabled: bool) -> Iterator[None]:
    """FFCV's DatasetWriter always draws its own tqdm bar (``ffcv.writer.tqdm(total=n)``, then ``update``/``close``):
    in a SLURM log that is one redraw per chunk. For this write its module-level ``tqdm`` is our progress (a bar on a
    terminal, a line every N seconds elsewhere, nothing with ``progress: false``)."""
    original = module.tqdm
    module.tqdm = lambda total=None, **_: Progress(desc, total, "img", enabled)
    try:
        yield
    finally:
        module.tqdm = original


def write_beton(scan: FolderScan, out: str | Path, cfg: WriterConfig, source: str = "", progress: bool = True) -> dict:
    """Write checked samples to ``out``; returns the metadata written beside it."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField

    out = Path(out)
    failed_log = out.with_name(f".{out.name}.failed-{os.getpid()}")
    failed_log.unlink(missing_ok=True)
    side = min(cfg.max_resolution or scan.max_side, scan.max_side)  # FFCV only ever shrinks images
    fields = {"image": RGBImageField(write_mode=cfg.write_mode, max_resolution=cfg.max_resolution,
                                     jpeg_quality=cfg.jpeg_quality, compress_probability=cfg.compress_probability),
              "label": IntField()}
    meta = {"classes": scan.classes, "num_samples": len(scan.files),
            "num_per_class": np.bincount(scan.labels, minlength=len(scan.classes)).tolist(),
            "skipped": [{"file": f, "error": e} for f, e in scan.skipped], "ignored_non_images": scan.ignored,
            "source": source, "writer": asdict(cfg)}
    dataset = _FolderSamples(scan.files, scan.labels, cfg.seed, str(failed_log))
    return write_atomic(out, dataset, fields, meta, page_size_for(3 * side * side), cfg.workers(), cfg.chunk_size,
                        failed_log, progress)


def write_ffcv(root: str | Path, out_dir: str | Path, splits: Sequence[str] = ("train", "val"),
               cfg: WriterConfig | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Write ``<root>/<split>`` ImageFolder trees to ``<out_dir>/<split>_<res>_<prob>_<quality>.beton``.

    All splits must have the same class folders (checked before anything is written).
    """
    cfg = cfg or WriterConfig()
    cfg.check()
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    scans = {s: list_image_folder(root / s, f"{s!r} split") for s in splits}
    first = splits[0]
    for s in splits[1:]:
        a, b = scans[first].classes, scans[s].classes
        if a != b:
            only_a, only_b = sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5]
            raise DataError(f"class folders of {first!r} ({len(a)}) and {s!r} ({len(b)}) differ: only in {first} "
                            f"{only_a}, only in {s} {only_b}")
    results = {}
    for s in splits:
        target = out_dir / cfg.file_name(s)
        if target.exists() and not overwrite:
            raise DataError(f"{target} exists; pass --overwrite to replace it")
        scan = check_files(scans[s], cfg, f"check {s}", progress=progress)
        if scan.skipped:
            print(f"[write-ffcv] {s}: skipping {len(scan.skipped)} unreadable file(s), e.g. {scan.skipped[0][0]} "
                  f"({scan.skipped[0][1]}); all listed in {meta_path(target)}")
        print(f"[write-ffcv] {s}: writing {len(scan.files)} images of {len(scan.classes)} classes to {target}")
        results[s] = write_beton(scan, target, cfg, source=str(root / s), progress=progress)
        results[s]["path"] = str(target)
    return results
