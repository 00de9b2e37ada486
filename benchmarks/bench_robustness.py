"""Robustness scoring throughput: model forward alone, and the whole pipeline (JPEG decode, transform, forward)
on synthetic trees in the ImageNet-C and ImageNet-A/R layouts; prints a table and the cost per checkpoint.

    python benchmarks/bench_robustness.py --device cuda --workers 16 --batch-size 256
    python benchmarks/bench_robustness.py --device cpu --models convnext_demo:3 --images 500 --batch-size 64
    python benchmarks/bench_robustness.py --corruptions --images 500   # on-the-fly corruption speed (Fashion-MNIST-C)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lk_ablate import create_model
from lk_ablate.robustness.benchmarks import Benchmark, Part, load_wnids
from lk_ablate.robustness.evaluate import evaluate

# Images per scoring (one weight set): released sizes.
SETS = {"ImageNet-C severity5 (19 x 50k)": 950_000, "ImageNet-C full (19 x 5 x 50k)": 4_750_000,
        "val 50k + A 7.5k + R 30k + O 2k": 89_500}


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like content (low-frequency colour field + mild noise) so JPEG sizes are realistic."""
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)


def _tree(root: Path, classes: tuple[str, ...], n: int, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(max(n, len(classes))):  # at least one image per class folder
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth(rng, size[1], size[0])).save(d / f"{i}.JPEG", quality=85)
    for c in classes:  # every class folder exists (the layout check wants them)
        (root / c).mkdir(parents=True, exist_ok=True)
    return root


def _forward_rate(model: torch.nn.Module, size: int, batch: int, device: torch.device, amp: bool) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    with torch.inference_mode(), ctx:
        for _ in range(2):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 3.0:
            model(x)
            n += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def _pipeline_rate(model: torch.nn.Module, bench: Benchmark, n: int, batch: int, workers: int,
                   device: torch.device) -> float:
    t = time.perf_counter()
    results, errors = evaluate({"raw": model}, model.model_config, [bench], batch_size=batch, num_workers=workers,
                               device=device)
    assert not errors, errors
    return n / (time.perf_counter() - t)


def bench_scoring(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    all_1k = load_wnids("imagenet_1k")
    with tempfile.TemporaryDirectory() as tmp:
        n_c, n_a = max(args.images, 1000), max(args.images, 200)
        c_root = _tree(Path(tmp) / "c", all_1k, n_c, (224, 224), 0)
        a_root = _tree(Path(tmp) / "a", load_wnids("imagenet_a"), n_a, (500, 375), 1)
        c_bench = Benchmark("imagenet_c", "corruption", (Part("fog/5", str(c_root), all_1k, False),))
        a_bench = Benchmark("imagenet_a", "masked_top1", (Part("a", str(a_root), load_wnids("imagenet_a"), True),),
                            mask="imagenet_a")
        rows = []
        for spec in args.models:
            name, _, k = spec.partition(":")
            model = create_model(name, kernel_size=int(k) if k else None, num_classes=1000).to(device).eval()
            size = model.model_config.image_size
            fwd = _forward_rate(model, size, args.batch_size, device, amp=False)
            fwd_bf16 = _forward_rate(model, size, args.batch_size, device, amp=True) if device.type == "cuda" else None
            # Warm the loader once (worker start-up, cudnn autotune) on the small A tree, then time both.
            _pipeline_rate(model, a_bench, n_a, args.batch_size, args.workers, device)
            c_rate = _pipeline_rate(model, c_bench, n_c, args.batch_size, args.workers, device)
            a_rate = _pipeline_rate(model, a_bench, n_a, args.batch_size, args.workers, device)
            rows.append((spec, fwd, fwd_bf16, c_rate, a_rate))
            del model
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()}"
          f" {'GPU' if device.type == 'cuda' else 'CPUs'}), batch {args.batch_size}, {args.workers} loader workers, "
          f"torch threads {torch.get_num_threads()}, {args.images} images per tree")
    print(f"{'model':<18}{'fwd fp32':>10}{'fwd bf16':>10}{'C pipe':>10}{'A pipe':>10}   minutes per scoring (fp32 "
          f"pipeline): " + ", ".join(SETS))
    for spec, fwd, bf16, c_rate, a_rate in rows:
        mins = [SETS[k] / (c_rate if "ImageNet-C" in k else a_rate) / 60 for k in SETS]
        print(f"{spec:<18}{fwd:>10.0f}{(bf16 or float('nan')):>10.0f}{c_rate:>10.0f}{a_rate:>10.0f}   "
              + "   ".join(f"{m:8.1f}" for m in mins))
    print("(img/s; 'pipe' = JPEG decode + transform + forward, as RobustnessEvaluation runs it; EMA doubles the "
          "forward cost, not the decode)")


def bench_corruptions(args: argparse.Namespace) -> None:
    from lk_ablate.robustness.corruptions import CORRUPTIONS, _corrupt_all, corrupt_images

    rng = np.random.default_rng(0)
    imgs = np.stack([_smooth(rng, 32, 32) for _ in range(args.images)])
    print(f"{args.images} images at 32 px, 5 severities, one process:")
    total = 0.0
    for c in CORRUPTIONS:
        t = time.perf_counter()
        for s in range(1, 6):
            _corrupt_all(imgs, c, s, 0)
        dt = time.perf_counter() - t
        total += dt
        print(f"  {c:<18} {dt:6.2f} s")
    print(f"  {'total':<18} {total:6.2f} s")
    for workers in (1, args.workers):
        t = time.perf_counter()
        corrupt_images(imgs, seed=1 + workers, workers=workers)
        print(f"corrupt_images, 15 x 5, {workers} worker(s): {time.perf_counter() - t:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["convnext_tiny:7", "convnext_tiny:31", "convnext_tiny:51",
                                                   "replknet_31b"])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--corruptions", action="store_true", help="time the on-the-fly corruptions instead")
    args = p.parse_args()
    (bench_corruptions if args.corruptions else bench_scoring)(args)


if __name__ == "__main__":
    main()
