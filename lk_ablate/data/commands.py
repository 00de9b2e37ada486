"""``lk_ablate data ...``: prepare-imagenet-val (flat official val folder -> class folders), write-ffcv
(ImageFolder trees -> .beton files with ffcv-imagenet's parameters) and check (decode every image of a folder once,
list the unreadable ones)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .ffcv_writer import WriterConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lk_ablate data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("prepare-imagenet-val", help="sort the official flat ImageNet val folder into class folders",
                       description="Sort ILSVRC2012_val_*.JPEG into <out>/<wnid>/ with the official labels shipped "
                                   "with lk_ablate; checks 1000 classes x 50 images. Safe to repeat.")
    v.add_argument("--src", required=True, help="folder with the 50,000 ILSVRC2012_val_*.JPEG files")
    v.add_argument("--out", required=True, help="destination: <out>/<wnid>/*.JPEG (e.g. /data/imagenet/val)")
    v.add_argument("--mode", default="symlink", choices=("symlink", "hardlink", "copy", "move"),
                   help="how files get there (default symlink: no extra space, keep --src)")

    d = WriterConfig()
    w = sub.add_parser("write-ffcv", help="write ImageFolder splits to FFCV .beton files",
                       description="Write <root>/<split>/<class>/<images> to <out>/<split>_<res>_<prob>_<q>.beton "
                                   "(ffcv-imagenet's parameters by default) plus a .json of classes and counts.")
    w.add_argument("--root", required=True, help="dataset root holding the split folders (e.g. /data/imagenet)")
    w.add_argument("--out", required=True, help="output folder for the .beton files")
    w.add_argument("--splits", nargs="+", default=["train", "val"], help="split folders to write (default train val)")
    w.add_argument("--max-resolution", type=int, default=d.max_resolution,
                   help=f"longest side stored, px (default {d.max_resolution}; 0 keeps sizes)")
    w.add_argument("--write-mode", default=d.write_mode, choices=("proportion", "raw", "jpg", "smart"))
    w.add_argument("--compress-probability", type=float, default=d.compress_probability,
                   help=f"share of images stored as JPEG in proportion mode (default {d.compress_probability})")
    w.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    w.add_argument("--chunk-size", type=int, default=d.chunk_size)
    w.add_argument("--num-workers", type=int, default=d.num_workers, help="processes (default: all cores)")
    w.add_argument("--no-verify", action="store_true", help="skip decoding every file before writing")
    w.add_argument("--seed", type=int, default=d.seed, help="which images are stored as JPEG")
    w.add_argument("--overwrite", action="store_true", help="replace existing .beton files")

    c = sub.add_parser("check", help="decode every image of an ImageFolder tree once and list unreadable files",
                       description="Decode every image under FOLDER/<class>/ (or under each split FOLDER/train, "
                                   "FOLDER/val, ... when FOLDER holds splits) and list the files that cannot be "
                                   "read. Training stops at the first unreadable image; fix them all at once with "
                                   "this list. Exit status 1 when any file is bad.")
    c.add_argument("folders", nargs="+", metavar="FOLDER", help="dataset root or class-folder tree")
    c.add_argument("--num-workers", type=int, default=d.num_workers, help="processes (default: all cores)")
    return p


def _trees(folder: Path) -> list[Path]:
    """The class-folder trees of ``folder``: its split folders (train, val, ...) when it holds them, else itself."""
    splits = [folder / s for s in ("train", "val", "test") if (folder / s).is_dir()]
    return splits or [folder]


def check_folders(folders: list[str], num_workers: int = -1) -> int:
    """``lk_ablate data check``: one line per unreadable file, a summary per tree; 1 when any file is bad."""
    from .ffcv_writer import check_files, list_image_folder

    bad = 0
    for folder in folders:
        for tree in _trees(Path(folder)):
            scan = list_image_folder(tree, "image")
            checked = check_files(scan, WriterConfig(num_workers=num_workers, verify=True), f"decode {tree}",
                                  allow_all_bad=True)
            for path, err in checked.skipped:
                print(f"bad: {path}: {err}")
            bad += len(checked.skipped)
            print(f"{tree}: {len(scan.files)} images in {len(scan.classes)} classes, "
                  f"{len(checked.skipped)} unreadable" + (f", {scan.ignored} non-image files ignored"
                                                          if scan.ignored else ""))
    return 1 if bad else 0


def cli_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check_folders(args.folders, args.num_workers)
    if args.command == "prepare-imagenet-val":
        from .imagenet_val import prepare_imagenet_val

        summary = prepare_imagenet_val(args.src, args.out, mode=args.mode)
        print(f"ImageNet val ready: {summary['out']} ({summary['classes']} classes x {summary['per_class']} "
              f"images; {summary['placed']} placed, {summary['already_there']} already there"
              + (f", {summary['ignored_extra_files']} other files ignored" if summary["ignored_extra_files"] else "")
              + ")")
        return 0
    from .ffcv import require_ffcv
    from .ffcv_writer import write_ffcv

    require_ffcv()
    cfg = WriterConfig(max_resolution=args.max_resolution or None, write_mode=args.write_mode,
                       compress_probability=args.compress_probability, jpeg_quality=args.jpeg_quality,
                       chunk_size=args.chunk_size, num_workers=args.num_workers, verify=not args.no_verify,
                       seed=args.seed)
    results = write_ffcv(args.root, args.out, splits=args.splits, cfg=cfg, overwrite=args.overwrite)
    for split, meta in results.items():
        print(f"{split}: {meta['path']}  {meta['num_samples']} images, {len(meta['classes'])} classes, "
              f"{len(meta['skipped'])} skipped, {meta['seconds']} s")
    print(json.dumps({s: m["path"] for s, m in results.items()}))
    return 0
