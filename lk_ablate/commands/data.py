"""``lk_ablate data <command>``: prepare-imagenet-val (flat official val folder -> class folders), write-ffcv
(ImageFolder trees -> .beton files with ffcv-imagenet's parameters) and check (decode every image of a folder once,
list the unreadable ones).

    lk_ablate data prepare-imagenet-val --src /datasets/ILSVRC2012_img_val --out /datasets/imagenet/val
    lk_ablate data write-ffcv --root /datasets/imagenet --out /datasets/imagenet_ffcv --writer.max_resolution 500
    lk_ablate data check /datasets/imagenet --num_workers 8

Each command takes ``--config FILE`` (its options as YAML) and ``--print_config``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..base.errors import ConfigError
from ..data.ffcv_writer import WriterConfig
from ._common import check_old_spellings, command_parser, parse

__all__ = ["COMMANDS", "check_folders", "cli_main"]

COMMANDS = {
    "prepare-imagenet-val": "sort the official flat ImageNet val folder into class folders",
    "write-ffcv": "write ImageFolder splits to FFCV .beton files",
    "check": "decode every image of an ImageFolder tree once and list unreadable files",
}
# Spellings of the argparse version -> the option that replaced them.
OLD_SPELLINGS = {
    "--max-resolution": "--writer.max_resolution N (null keeps sizes)",
    "--write-mode": "--writer.write_mode MODE",
    "--compress-probability": "--writer.compress_probability P",
    "--jpeg-quality": "--writer.jpeg_quality Q",
    "--chunk-size": "--writer.chunk_size N",
    "--seed": "--writer.seed N",
    "--num-workers": "--num_workers N",
    "--no-verify": "--no_verify",
}


def _usage() -> str:
    lines = ["usage: lk_ablate data <command> [options]   (lk_ablate data <command> --help for its options)", ""]
    lines += [f"  {name:<22} {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def _prepare_parser() -> Any:
    p = command_parser("lk_ablate data prepare-imagenet-val",
                       "Sort ILSVRC2012_val_*.JPEG into <out>/<wnid>/ with the official labels shipped with "
                       "lk_ablate; checks 1000 classes x 50 images. Safe to repeat.")
    p.add_argument("--src", type=str | None, default=None, help="folder with the 50,000 ILSVRC2012_val_*.JPEG files")
    p.add_argument("--out", type=str | None, default=None,
                   help="destination: <out>/<wnid>/*.JPEG (e.g. /data/imagenet/val)")
    p.add_argument("--mode", type=Literal["symlink", "hardlink", "copy", "move"], default="symlink",
                   help="how files get there (symlink: no extra space, keep --src)")
    return p


def _workers_help(d: WriterConfig) -> str:
    return f"processes ({d.num_workers}: all cores)"


def _write_parser() -> Any:
    from jsonargparse import ActionYesNo

    d = WriterConfig()
    p = command_parser("lk_ablate data write-ffcv",
                       "Write <root>/<split>/<class>/<images> to <out>/<split>_<res>_<prob>_<q>.beton "
                       "(ffcv-imagenet's parameters by default) plus a .json of classes and counts.")
    p.add_argument("--root", type=str | None, default=None,
                   help="dataset root holding the split folders (e.g. /data/imagenet)")
    p.add_argument("--out", type=str | None, default=None, help="output folder for the .beton files")
    p.add_argument("--splits", type=list[str], default=["train", "val"], help="split folders to write")
    p.add_argument("--num_workers", type=int, default=d.num_workers, help=_workers_help(d))
    p.add_argument("--verify", action=ActionYesNo, default=d.verify,
                   help="decode every file before writing (--no_verify skips it)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace existing .beton files")
    p.add_class_arguments(WriterConfig, "writer", skip={"num_workers", "verify"},
                          help="how images are stored (max_resolution null keeps sizes)")
    return p


def _check_parser() -> Any:
    d = WriterConfig()
    p = command_parser("lk_ablate data check",
                       "Decode every image under FOLDER/<class>/ (or under each split FOLDER/train, FOLDER/val, ... "
                       "when FOLDER holds splits) and list the files that cannot be read. Training stops at the "
                       "first unreadable image; fix them all at once with this list. Exit status 1 when any file "
                       "is bad.")
    p.add_argument("folders", type=str, nargs="+", metavar="FOLDER", help="dataset root or class-folder tree")
    p.add_argument("--num_workers", type=int, default=d.num_workers, help=_workers_help(d))
    return p


PARSERS = {"prepare-imagenet-val": _prepare_parser, "write-ffcv": _write_parser, "check": _check_parser}


def _require(args: Any, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            raise ConfigError(f"--{name} is required (see `lk_ablate data {args.command} --help`)")


def parse_args(argv: Sequence[str]) -> Any:
    """The subcommand (``args.command``) and its options."""
    command = argv[0] if argv else None
    if command not in PARSERS:
        raise ConfigError(f"lk_ablate data needs a command: one of {', '.join(COMMANDS)}"
                          + (f" (got {command!r})" if command else ""))
    check_old_spellings(argv[1:], OLD_SPELLINGS)
    args = parse(PARSERS[command](), argv[1:])
    args.command = command
    return args


def _trees(folder: Path) -> list[Path]:
    """The class-folder trees of ``folder``: its split folders (train, val, ...) when it holds them, else itself."""
    splits = [folder / s for s in ("train", "val", "test") if (folder / s).is_dir()]
    return splits or [folder]


def check_folders(folders: list[str], num_workers: int = -1) -> int:
    """``lk_ablate data check``: one line per unreadable file, a summary per tree; 1 when any file is bad."""
    from ..data.ffcv_writer import check_files, list_image_folder

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
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    args = parse_args(argv)
    if args.command == "check":
        return check_folders(args.folders, args.num_workers)
    if args.command == "prepare-imagenet-val":
        from ..data.imagenet_val import prepare_imagenet_val

        _require(args, "src", "out")
        summary = prepare_imagenet_val(args.src, args.out, mode=args.mode)
        print(f"ImageNet val ready: {summary['out']} ({summary['classes']} classes x {summary['per_class']} "
              f"images; {summary['placed']} placed, {summary['already_there']} already there"
              + (f", {summary['ignored_extra_files']} other files ignored" if summary["ignored_extra_files"] else "")
              + ")")
        return 0
    from ..data.ffcv_import import require_ffcv
    from ..data.ffcv_writer import write_ffcv

    _require(args, "root", "out")
    require_ffcv()
    w = args.writer
    cfg = WriterConfig(max_resolution=w.max_resolution or None, write_mode=w.write_mode,
                       compress_probability=w.compress_probability, jpeg_quality=w.jpeg_quality,
                       chunk_size=w.chunk_size, num_workers=args.num_workers, verify=args.verify, seed=w.seed)
    results = write_ffcv(args.root, args.out, splits=args.splits, cfg=cfg, overwrite=args.overwrite)
    for split, meta in results.items():
        print(f"{split}: {meta['path']}  {meta['num_samples']} images, {len(meta['classes'])} classes, "
              f"{len(meta['skipped'])} skipped, {meta['seconds']} s")
    print(json.dumps({s: m["path"] for s, m in results.items()}))
    return 0
