"""Cost of one ERF image (``lk_ablate analyze erf``: forward to the last stage + input gradient of its centre
output) at RepLKNet's 1024 px, per model, against the same model computed the way the released script runs it.

Baselines: ConvNeXt-T against timm's ``convnext_tiny(kernel_sizes=k)`` (PyTorch's direct depthwise conv, what a
timm model in RepLKNet's ``visualize_erf.py`` runs), RepLKNet-31B against the same lk_ablate model with every large
kernel ``impl="direct"`` (the official ``nn.Conv2d``). Both contenders are built in one process, warmed up on one
image, then timed alternately (A, B, A, B, ...) on ``--repeats`` random images each; medians. The projected time of
RepLKNet's 50 images is 50 x the median (the images are independent; the model is built once).

``--clock cpu`` (default) is process CPU time with ``--num_threads 1``: stable on a machine shared with other jobs;
``--clock wall`` is what an idle machine gives with its threads. Random weights (the cost does not depend on them).

    python benchmarks/bench_erf.py                                    # the three rows of docs/benchmarks.md
    python benchmarks/bench_erf.py --configurations [convnext_tiny:7] --image_size 1024 --repeats 3 --baseline false
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_MODELS = ["convnext_tiny:7", "convnext_tiny:31", "replknet_31b:31B"]
BASELINE = {"convnext_tiny": "timm", "replknet_31b": "direct"}


def build(family: str, kernel: str, contender: str) -> nn.Module:
    import lk_ablate
    from lk_ablate.models.layers import LargeKernelDWConv

    if family == "convnext_tiny":
        if contender == "timm":
            import timm

            return timm.create_model("convnext_tiny", pretrained=False, kernel_sizes=int(kernel)).eval()
        return lk_ablate.create_model("convnext_tiny", kernel_size=int(kernel)).eval()
    if family == "replknet_31b":
        ks = [31, 29, 27, 13] if kernel == "31B" else [int(kernel)] * 4
        model = lk_ablate.create_model("replknet_31b", kernel_size=ks).eval()
        if contender == "direct":
            for m in model.modules():
                if isinstance(m, LargeKernelDWConv):
                    m.impl = "direct"
        return model
    raise SystemExit(f"unknown model family {family!r}; choose convnext_tiny or replknet_31b")


def machine() -> str:
    from lk_ablate.base.provenance import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def one_image(model: nn.Module, size: int, clock: str, seed: int, device: str = "cpu") -> float:
    from lk_ablate.analysis.erf import contribution_maps

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    tick = time.process_time if clock == "cpu" else time.perf_counter
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = tick()
    m = contribution_maps(model, x)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = tick() - t0
    assert bool(torch.isfinite(m).all())
    return dt


def parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog="benchmarks/bench_erf.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    p.add_argument("--configurations", type=list[str], default=DEFAULT_MODELS,
                   help="model_name:kernel_size pairs (kernel 31B: RepLKNet-31B's own 31-29-27-13)")
    p.add_argument("--image_size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2, help="timed images per contender (after one warm-up image)")
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--clock", type=Literal["cpu", "wall"], default="cpu", help="cuda: always wall (synchronized)")
    p.add_argument("--device", type=Literal["cpu", "cuda"], default="cpu")
    p.add_argument("--baseline", type=bool, default=True, help="also time the direct-convolution baseline")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.num_threads)
    if args.device == "cuda":
        args.clock = "wall"
    load0 = os.getloadavg()[0]
    where = torch.cuda.get_device_name() if args.device == "cuda" else machine()
    print(f"# ERF cost per image at {args.image_size} px: {where}, clock {args.clock}, "
          f"{args.repeats} timed image(s) after 1 warm-up, medians", flush=True)
    rows = []
    for spec in args.configurations:
        family, kernel = spec.split(":")
        names = ["lk_ablate"] + ([BASELINE[family]] if args.baseline else [])
        models = {n: build(family, kernel, n).to(args.device) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        for n in names:
            one_image(models[n], args.image_size, args.clock, 0, args.device)  # warm-up: allocations, kernels
        for i in range(args.repeats):
            for n in names:
                times[n].append(one_image(models[n], args.image_size, args.clock, i + 1, args.device))
        med = {n: statistics.median(v) for n, v in times.items()}
        rows.append((family, kernel, med))
        print(f"  {family} k{kernel}: " + ", ".join(f"{n} {v:.1f} s" for n, v in med.items()), flush=True)
        del models
    ref = next((r[2]["lk_ablate"] for r in rows if r[0] == "convnext_tiny" and r[1] == "7"), None)
    print()
    head = ["model", "k", "lk_ablate s/image", "baseline", "baseline s/image", "lk_ablate / baseline",
            "lk_ablate / ConvNeXt-T k7", "50 images (lk_ablate)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for family, kernel, med in rows:
        lk = med["lk_ablate"]
        base = [n for n in med if n != "lk_ablate"]
        b = med[base[0]] if base else None
        cells = [family, kernel, f"{lk:.2f}", base[0] if base else "–", "–" if b is None else f"{b:.2f}",
                 "–" if b is None else f"{lk / b:.2f}", "–" if ref is None else f"{lk / ref:.2f}",
                 f"{50 * lk / 60:.1f} min"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nload average (1 min) {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
