"""``lk_ablate data ...``: prepare-imagenet-val (flat official val folder -> class folders) and write-ffcv
(ImageFolder trees -> .beton files with ffcv-imagenet's parameters)."""
from __future__ import annotations

import argparse
import json

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
    return p


def cli_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
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
