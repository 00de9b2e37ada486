"""Training-loader throughput (images/s): FFCV vs two torchvision pipelines, same recipe, same workers.

Every pipeline runs the full training recipe at 224 px, batch 256: RandomResizedCrop (0.08-1), flip,
RandAugment rand-m9-mstd0.5-inc1, normalise, random erasing 0.25 (pixel noise).

- ffcv: lk_ablate's FFCV loader on a .beton written with ffcv-imagenet's parameters (max side 500, half
  JPEG q90, half raw); ``--data.num_workers`` numba threads in the main process.
- pil: torchvision ImageFolder + timm's ``create_transform`` (PIL), DataLoader with ``--data.num_workers`` processes.
- v2: file bytes -> ``torchvision.io.decode_jpeg`` -> ``transforms.v2`` (RandAugment with timm's op set,
  probabilities and magnitudes written with v2 functionals), DataLoader with ``--data.num_workers`` processes.

Data: ``--num_images`` generated JPEGs of 350-500 px per side (smooth random content plus noise, quality 90),
cached under ``--root``. Epochs of the pipelines are interleaved in one process (the machine's speed drifts);
the table shows every epoch and the median after the first (FFCV's first epoch compiles its kernels).

    python benchmarks/bench_loaders.py            # 4000 images, 6 epochs each
    python benchmarks/bench_loaders.py --num_images 1200 --max_epochs 3   # quick look
"""
from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAND_AUGMENT = "rand-m9-mstd0.5-inc1"


def make_jpegs(root: Path, n: int, classes: int = 50, seed: int = 0) -> Path:
    """n JPEGs (q90) of 350-500 px per side in ``classes`` folders; reused when already there."""
    folder = root / "jpeg" / "train"
    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return folder.parent
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = folder / f"c{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(350, 501, size=2)
        small = rng.integers(0, 256, size=(int(rng.integers(6, 24)), int(rng.integers(6, 24)), 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(small).resize((int(w), int(h)), Image.BICUBIC), dtype=np.float32)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
    done.write_text(str(n))
    return folder.parent


# --- torchvision pipelines ----------------------------------------------------------------------------
def pil_transform(size: int):
    from timm.data import create_transform

    from lk_ablate.data.transforms import patch_posterize

    return patch_posterize(create_transform(size, is_training=True, scale=(0.08, 1.0), hflip=0.5,
                                            auto_augment=RAND_AUGMENT, color_jitter=0.4, interpolation="bicubic",
                                            mean=IMAGENET_MEAN, std=IMAGENET_STD, re_prob=0.25, re_mode="pixel",
                                            re_count=1))


class V2RandAugment(torch.nn.Module):
    """timm's rand-m9-mstd0.5-inc1 (15 ops, 2 layers with replacement, p 0.5, magnitude N(9, 0.5) clamped to
    [0, 10], timm's level -> argument maps) with torchvision.transforms.v2 functionals on uint8 CHW tensors."""

    OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
           "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

    def __init__(self, fill: list[int]) -> None:
        super().__init__()
        self.fill = fill

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        bil = InterpolationMode.BILINEAR
        for _ in range(2):
            op = random.choice(self.OPS)
            if random.random() > 0.5:
                continue
            level = max(0.0, min(random.gauss(9.0, 0.5), 10.0)) / 10.0
            sign = -1.0 if random.random() > 0.5 else 1.0
            if op == "AutoContrast":
                img = F.autocontrast(img)
            elif op == "Equalize":
                img = F.equalize(img)
            elif op == "Invert":
                img = F.invert(img)
            elif op == "Rotate":
                img = F.rotate(img, sign * level * 30.0, interpolation=bil, fill=self.fill)
            elif op == "Posterize":
                img = F.posterize(img, max(1, 4 - int(level * 4))) if int(level * 4) < 4 else torch.zeros_like(img)
            elif op == "Solarize":
                img = F.solarize(img, min(255, 256 - min(256, int(level * 256))))
            elif op == "SolarizeAdd":
                add = min(128, int(level * 110))
                img = torch.where(img < 128, (img.int() + add).clamp(max=255).to(torch.uint8), img)
            elif op in ("Color", "Contrast", "Brightness", "Sharpness"):
                factor = max(0.1, 1.0 + sign * level * 0.9)
                fn = {"Color": F.adjust_saturation, "Contrast": F.adjust_contrast,
                      "Brightness": F.adjust_brightness, "Sharpness": F.adjust_sharpness}[op]
                img = fn(img, factor)
            elif op in ("ShearX", "ShearY"):
                deg = math.degrees(math.atan(sign * level * 0.3))
                shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
                img = F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=bil,
                               fill=self.fill)
            else:
                h, w = img.shape[-2:]
                t = [sign * level * 0.45 * w, 0] if op == "TranslateXRel" else [0, sign * level * 0.45 * h]
                img = F.affine(img, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0], interpolation=bil,
                               fill=self.fill)
        return img


class JpegFolder(Dataset):
    """File bytes -> decode_jpeg (uint8 CHW) -> v2 transform."""

    def __init__(self, root: Path, transform) -> None:
        from torchvision.datasets import ImageFolder

        self.samples = ImageFolder(str(root)).samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        path, label = self.samples[i]
        return self.transform(decode_jpeg(read_file(path), mode=ImageReadMode.RGB)), label


def v2_transform(size: int):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    fill = [min(255, round(255 * m)) for m in IMAGENET_MEAN]
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        V2RandAugment(fill),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        v2.RandomErasing(p=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), value="random"),
    ])


def torch_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=2 if workers else None)


# --- FFCV --------------------------------------------------------------------------------------------
def ffcv_loader(jpeg_root: Path, root: Path, size: int, batch_size: int, workers: int):
    from lk_ablate.data.ffcv_augment import build_params
    from lk_ablate.data.ffcv_loader import FFCVLoader, SeededAugment, SeededRandomResizedCrop
    from lk_ablate.data.ffcv_writer import WriterConfig, write_ffcv

    cfg = WriterConfig(num_workers=workers)
    n = sum(1 for _ in (jpeg_root / "train").glob("*/*.jpg"))
    beton = root / f"ffcv_{n}" / cfg.file_name("train")
    if not beton.is_file():
        write_ffcv(jpeg_root, beton.parent, splits=("train",), cfg=cfg)
    params, ops = build_params(IMAGENET_MEAN, IMAGENET_STD, True, hflip=0.5, auto_augment=RAND_AUGMENT,
                               re_prob=0.25, re_mode="pixel", interpolation="bicubic")
    return FFCVLoader(beton, SeededRandomResizedCrop((size, size)), SeededAugment(params, ops, True),
                      batch_size=batch_size, train=True, order="quasi_random", num_workers=workers)


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_epoch(loader, epoch: int) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process and its loader workers) for one epoch."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n, t0 = 0, time.perf_counter()
    it = iter(loader)
    workers = [w.pid for w in getattr(it, "_workers", [])]
    c0 = time.process_time() + sum(_proc_cpu(p) for p in workers)
    for x, _ in it:
        n += x.shape[0]
    dt = time.perf_counter() - t0
    return n, dt, time.process_time() + sum(_proc_cpu(p) for p in workers) - c0


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/bench_loaders.py", description=__doc__)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    p.add_argument("--num_images", type=int, default=4000, help="generated training JPEGs")
    p.add_argument("--max_epochs", type=int, default=6, help="epochs per pipeline (interleaved)")
    p.add_argument("--data.batch_size", type=int, default=256)
    p.add_argument("--data.num_workers", type=int, default=2, help="loader workers (FFCV: numba threads)")
    p.add_argument("--data.input_size", type=int, default=224, help="training crop side")
    p.add_argument("--root", type=str, default="/tmp/lk_ablate_bench_loaders", help="where the JPEGs are cached")
    p.add_argument("--pipelines", type=list[Literal["ffcv", "pil", "v2"]], default=["ffcv", "pil", "v2"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    load0 = os.getloadavg()
    jpeg_root = make_jpegs(root, args.num_images)
    loaders = {}
    if "ffcv" in args.pipelines:
        loaders["ffcv"] = ffcv_loader(jpeg_root, root, args.data.input_size, args.data.batch_size, args.data.num_workers)
    if "pil" in args.pipelines:
        from torchvision.datasets import ImageFolder

        loaders["pil"] = torch_loader(ImageFolder(str(jpeg_root / "train"), transform=pil_transform(args.data.input_size)),
                                      args.data.batch_size, args.data.num_workers)
    if "v2" in args.pipelines:
        loaders["v2"] = torch_loader(JpegFolder(jpeg_root / "train", v2_transform(args.data.input_size)), args.data.batch_size,
                                     args.data.num_workers)
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    for epoch in range(args.max_epochs):
        for name, loader in loaders.items():
            n, dt, c = run_epoch(loader, epoch)
            rates[name].append(n / dt)
            cpu[name].append(1e3 * c / n)
            print(f"epoch {epoch} {name:>5}: {n} images in {dt:6.2f} s = {n / dt:7.1f} img/s, "
                  f"{1e3 * c / n:.2f} CPU-ms/img", flush=True)
    load1 = os.getloadavg()
    med = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in cpu.items()}
    print(f"\n{args.num_images} JPEGs 350-500 px, batch {args.data.batch_size}, {args.data.num_workers} workers, {args.data.input_size} px, "
          f"{os.cpu_count()} cores; load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    print(f"| pipeline | {' | '.join(f'epoch {e}' for e in range(args.max_epochs))} | median (epochs 1+) img/s "
          f"| CPU-ms per image (median) |")
    print(f"|---|{'---|' * args.max_epochs}---|---|")
    for k, v in rates.items():
        print(f"| {k} | {' | '.join(f'{r:.0f}' for r in v)} | {med[k]:.0f} | {med_cpu[k]:.2f} |")
    if "ffcv" in med:
        others = {k: v for k, v in med.items() if k != "ffcv"}
        for k, v in others.items():
            print(f"ratio ffcv / {k}: {med['ffcv'] / v:.2f}x img/s, {med_cpu[k] / med_cpu['ffcv']:.2f}x CPU per image")
        if others:
            best = max(others, key=others.get)
            print(f"ratio ffcv / faster torchvision pipeline ({best}): {med['ffcv'] / others[best]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
