"""``lk_ablate data CMD``: prepare-imagenet-val (flat official val folder -> class folders), write-ffcv (ImageFolder
trees -> .beton files with ffcv-imagenet's parameters) and check (decode every image of a folder once, list the
unreadable ones).

    lk_ablate data prepare-imagenet-val --root /datasets/ILSVRC2012_img_val --output_dir /datasets/imagenet/val
    lk_ablate data write-ffcv --root /datasets/imagenet --output_dir /datasets/imagenet_ffcv \\
        --writer.max_resolution 500
    lk_ablate data check --root /datasets/imagenet --num_workers 8

Each command takes ``--config FILE`` (its options as YAML) and ``--print_config``; ``lk_ablate data CMD --help``
lists its options. ``num_workers`` here counts FFCV writer / checker processes (-1: one per core), not DataLoader
workers.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..data.writer_config import WriterConfig
from ._common import PROGRESS_HELP, command_parser, error_line

__all__ = ["COMMANDS", "check_folder", "cli_main", "parse_args", "parser"]

COMMANDS = {
    "prepare-imagenet-val": "sort the official flat ImageNet val folder into class folders",
    "write-ffcv": "write ImageFolder splits to FFCV .beton files",
    "check": "decode every image of an ImageFolder tree once and list unreadable files",
}


def _workers_help(d: WriterConfig) -> str:
    return f"processes ({d.num_workers}: one per core)"


def _prepare_parser() -> Any:
    p = command_parser("lk_ablate data prepare-imagenet-val",
                       "Sort ILSVRC2012_val_*.JPEG into <output_dir>/<wnid>/ with the official labels shipped with "
                       "lk_ablate; checks 1000 classes x 50 images. Safe to repeat.")
    p.add_argument("--root", type=str, required=True, help="folder with the 50,000 ILSVRC2012_val_*.JPEG files")
    p.add_argument("--output_dir", type=str, required=True,
                   help="destination: <output_dir>/<wnid>/*.JPEG (e.g. /data/imagenet/val)")
    p.add_argument("--mode", type=Literal["symlink", "hardlink", "copy", "move"], default="symlink",
                   help="how files get there (symlink: no extra space, keep --root)")
    return p


def _write_parser() -> Any:
    d = WriterConfig()
    p = command_parser("lk_ablate data write-ffcv",
                       "Write <root>/<split>/<class>/<images> to <output_dir>/<split>_<res>_<prob>_<q>.beton "
                       "(ffcv-imagenet's parameters by default) plus a .json of classes and counts.")
    p.add_argument("--root", type=str, required=True,
                   help="dataset root holding the split folders (e.g. /data/imagenet)")
    p.add_argument("--output_dir", type=str, required=True, help="output folder for the .beton files")
    p.add_argument("--splits", type=list[str], default=["train", "val"], help="split folders to write")
    p.add_argument("--num_workers", type=int, default=d.num_workers, help=_workers_help(d))
    p.add_argument("--verify", type=bool, default=d.verify,
                   help="decode every file before writing (false: skip it)")
    p.add_argument("--overwrite", type=bool, default=False, help="replace existing .beton files")
    p.add_argument("--progress", type=bool, default=True, help=PROGRESS_HELP)
    p.add_class_arguments(WriterConfig, "writer", skip={"num_workers", "verify"},
                          help="how images are stored (max_resolution null keeps sizes)")
    return p


def _check_parser() -> Any:
    d = WriterConfig()
    p = command_parser("lk_ablate data check",
                       "Decode every image under ROOT/<class>/ (or under each split ROOT/train, ROOT/val, ... when "
                       "ROOT holds splits) and list the files that cannot be read. Training stops at the first "
                       "unreadable image; fix them all at once with this list. Exit status 1 when any file is bad.")
    p.add_argument("--root", type=str, required=True, help="dataset root (split folders) or class-folder tree")
    p.add_argument("--num_workers", type=int, default=d.num_workers, help=_workers_help(d))
    p.add_argument("--progress", type=bool, default=True, help=PROGRESS_HELP)
    return p


PARSERS = {"prepare-imagenet-val": _prepare_parser, "write-ffcv": _write_parser, "check": _check_parser}


def parser() -> Any:
    top = top_parser()
    add_subcommands(top)
    return top


def top_parser() -> Any:
    from jsonargparse import ArgumentParser

    return ArgumentParser(prog="lk_ablate data", description=__doc__.split("\n\n")[0], exit_on_error=False)


def add_subcommands(top: Any) -> None:
    """The data commands as subcommands of ``top`` (added to its parent first, see analyze.add_subcommands)."""
    sub = top.add_subcommands(required=True, dest="command")
    for name, build in PARSERS.items():
        sub.add_subcommand(name, build(), help=COMMANDS[name])


def parse_args(argv: Sequence[str]) -> tuple[str, Any]:
    """(the subcommand, its options)."""
    argv = list(argv)
    where = f"lk_ablate data {argv[0]}" if argv and argv[0] in PARSERS else "lk_ablate data"
    try:
        ns = parser().parse_args(argv)
    except argparse.ArgumentError as e:
        raise error_line(e, where, argv[0] if argv and argv[0] in PARSERS else None) from e
    return ns.command, ns[ns.command]


def _trees(folder: Path) -> list[Path]:
    """The class-folder trees of ``folder``: its split folders (train, val, ...) when it holds them, else itself."""
    splits = [folder / s for s in ("train", "val", "test") if (folder / s).is_dir()]
    return splits or [folder]


def check_folder(root: str, num_workers: int = -1, progress: bool = True) -> int:
    """``lk_ablate data check``: one line per unreadable file, a summary per tree; 1 when any file is bad."""
    from ..data.ffcv_writer import check_files, list_image_folder

    bad = 0
    for tree in _trees(Path(root)):
        scan = list_image_folder(tree, "image")
        checked = check_files(scan, WriterConfig(num_workers=num_workers, verify=True), f"decode {tree}",
                              allow_all_bad=True, progress=progress)
        for path, err in checked.skipped:
            print(f"bad: {path}: {err}")
        bad += len(checked.skipped)
        print(f"{tree}: {len(scan.files)} images in {len(scan.classes)} classes, {len(checked.skipped)} unreadable"
              + (f", {scan.ignored} non-image files ignored" if scan.ignored else ""))
    return 1 if bad else 0


def cli_main(argv: list[str]) -> int:
    command, args = parse_args(argv)
    if command == "check":
        return check_folder(args.root, args.num_workers, args.progress)
    if command == "prepare-imagenet-val":
        from ..data.imagenet_val import prepare_imagenet_val

        summary = prepare_imagenet_val(args.root, args.output_dir, mode=args.mode)
        print(f"ImageNet val ready: {summary['out']} ({summary['classes']} classes x {summary['per_class']} "
              f"images; {summary['placed']} placed, {summary['already_there']} already there"
              + (f", {summary['ignored_extra_files']} other files ignored" if summary["ignored_extra_files"] else "")
              + ")")
        return 0
    from ..data.ffcv_import import require_ffcv
    from ..data.ffcv_writer import write_ffcv

    require_ffcv()
    w = args.writer
    cfg = WriterConfig(max_resolution=w.max_resolution or None, write_mode=w.write_mode,
                       compress_probability=w.compress_probability, jpeg_quality=w.jpeg_quality,
                       chunk_size=w.chunk_size, num_workers=args.num_workers, verify=args.verify, seed=w.seed)
    results = write_ffcv(args.root, args.output_dir, splits=args.splits, cfg=cfg, overwrite=args.overwrite,
                         progress=args.progress)
    for split, meta in results.items():
        print(f"{split}: {meta['path']}  {meta['num_samples']} images, {len(meta['classes'])} classes, "
              f"{len(meta['skipped'])} skipped, {meta['seconds']} s")
    print(json.dumps({s: m["path"] for s, m in results.items()}))
    return 0
