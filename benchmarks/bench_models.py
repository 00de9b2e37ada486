"""Train-step and inference cost of ConvNeXt-T and RepLKNet-31B across kernel sizes: lk_ablate vs a baseline.

Baselines: ConvNeXt-T against timm's ``convnext_tiny(kernel_sizes=k)`` (PyTorch's direct depthwise conv), RepLKNet-31B
against the same lk_ablate model with every large kernel forced to ``impl="direct"`` (what the official PyTorch code
runs: ``nn.Conv2d``; timm has no RepLKNet). For each (model, kernel, pass) both contenders are built in the same
process and stepped alternately (A, B, A, B, ...), and the medians are reported, so slow drift of a shared machine
hits both alike. A train step is forward + backward + AdamW step on random images and labels; inference is a
forward under ``torch.inference_mode`` in eval mode.

Peak memory on CPU is VmHWM (peak resident set) of a fresh subprocess per configuration that builds the model and
runs two steps (``--memory true``); on CUDA it is ``torch.cuda.max_memory_allocated`` in the main process.

CPU: float32, NCHW, batch 8, 224x224. CUDA: bfloat16 autocast, channels_last, batch 64, cudnn.benchmark.

``--model.compile true`` runs BOTH contenders under torch.compile (``lk_ablate.models.compile.compile_model``, in
place; ``--model.compile_mode``, ``--model.compile_backend``): like is compared with like. The first warm-up step includes the
compilation; its seconds are reported as ``<contender>_first_s``.

    python benchmarks/bench_models.py --device cpu --memory true --output_path docs/bench_cpu.md
    python benchmarks/bench_models.py --device cuda --output_path bench_cuda.md
    python benchmarks/bench_models.py --device cuda --model.compile true --kernel_sizes [7,51] --model_names [convnext_tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, SUPPRESS
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BASELINE = {"convnext_tiny": "timm", "replknet_31b": "direct"}
RELEASED = {"31B": ((31, 29, 27, 13), 5), "3B": ((3, 3, 3, 3), None)}  # RepLKNet's own kernels, small kernel


def build(family: str, contender: str, kernel: str, device: str, channels_last: bool) -> nn.Module:
    """One contender: lk_ablate (impl auto) or its baseline, with the depthwise kernel ``kernel`` in every stage."""
    import lk_ablate
    from lk_ablate.models.layers import LargeKernelDWConv

    if family == "convnext_tiny":
        if contender == "timm":
            import timm
            model = timm.create_model("convnext_tiny", kernel_sizes=int(kernel))
        else:
            model = lk_ablate.create_model("convnext_tiny", kernel_size=int(kernel))
    elif family == "replknet_31b":
        # The parallel 5x5 needs large kernels > 5; below that the model is RepLKNet-3B-like (no small kernel).
        ks, small = RELEASED.get(kernel) or ((int(kernel),) * 4, 5 if int(kernel) > 5 else None)
        model = lk_ablate.create_model("replknet_31b", kernel_size=list(ks), small_kernel=small)
        if contender == "direct":
            for m in model.modules():
                if isinstance(m, LargeKernelDWConv):
                    m.impl = "direct"
    else:
        raise SystemExit(f"unknown model family {family!r}; choose convnext_tiny or replknet_31b")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """``model`` under torch.compile when ``--model.compile true`` (the same call for both contenders)."""
    if not args.model.compile:
        return model
    from lk_ablate.models.compile import compile_model

    return compile_model(model, args.model.compile_mode, args.model.compile_backend)


class Runner:
    """One contender's model, optimizer and batch; ``step()`` runs one timed train step or inference forward."""

    def __init__(self, family: str, contender: str, kernel: str, train: bool, args: argparse.Namespace) -> None:
        self.device, self.train = args.device, train
        self.clock = time.process_time if args.clock == "cpu" else time.perf_counter
        self.cuda = args.device == "cuda"
        self.model = compiled(build(family, contender, kernel, args.device, channels_last=self.cuda), args)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
        self.x = x.to(args.device, memory_format=torch.channels_last if self.cuda else torch.contiguous_format)
        self.y = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(args.device)
        self.model.train(train)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4) if train else None

    def step(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t = self.clock()
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.cuda):
            if self.train:
                loss = F.cross_entropy(self.model(self.x), self.y)
            else:
                with torch.inference_mode():
                    self.model(self.x)
        if self.train:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        if self.cuda:
            torch.cuda.synchronize()
        return self.clock() - t


def vmhwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: str, args: argparse.Namespace) -> int:
    """Fresh-process peak memory of one configuration: build, two steps, print VmHWM."""
    family, contender, kernel, mode = spec.split(":")
    runner = Runner(family, contender, kernel, mode == "train", args)
    times = [runner.step() for _ in range(2)]
    print(json.dumps({"vmhwm_mib": round(vmhwm_mib(), 1), "second_step_s": round(times[1], 3)}))
    return 0


def peak_memory(spec: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--child", spec, "--device", args.device, "--batch_size", str(args.batch_size),
           "--image_size", str(args.image_size), "--num_threads", str(torch.get_num_threads()), "--clock", args.clock]
    if args.model.compile:
        cmd += ["--model.compile", "true", "--model.compile_backend", args.model.compile_backend] + (
            ["--model.compile_mode", args.model.compile_mode] if args.model.compile_mode else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])["vmhwm_mib"]


def compare(family: str, kernel: str, train: bool, args: argparse.Namespace) -> dict:
    """Median seconds per step of lk_ablate and its baseline, stepped alternately in this process."""
    contenders = ["lk_ablate", BASELINE[family]]
    runners = {}
    peak_gpu = {}
    first = {}
    for c in contenders:
        if args.device == "cuda":  # peak above what the other contender already holds
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        runners[c] = Runner(family, c, kernel, train, args)
        t0 = time.perf_counter()
        for _ in range(max(1, args.warmup_steps)):
            runners[c].step()
            first.setdefault(c, time.perf_counter() - t0)  # wall seconds of the first step (compilation included)
        if args.device == "cuda":
            peak_gpu[c] = (torch.cuda.max_memory_allocated() - before) / 2**20
    times: dict[str, list[float]] = {c: [] for c in contenders}
    reps = args.steps
    t_budget = time.perf_counter() + args.max_seconds
    for i in range(reps):
        for c in (contenders if i % 2 == 0 else contenders[::-1]):
            times[c].append(runners[c].step())
        if i + 1 >= args.min_steps and time.perf_counter() > t_budget:
            break
    row = {"model": family, "k": kernel, "pass": "train" if train else "infer", "steps": len(times[contenders[0]]),
           "compiled": bool(args.model.compile)}
    for c in contenders:
        row[c] = statistics.median(times[c])
        row[c + "_first_s"] = round(first[c], 3)
        if args.device == "cuda":
            row[c + "_gpu_mib"] = round(peak_gpu[c], 1)
    row["baseline"] = BASELINE[family]
    del runners
    if args.memory and args.device == "cpu":
        for c in contenders:
            row[c + "_mib"] = peak_memory(f"{family}:{c}:{kernel}:{row['pass']}", args)
    return row


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: seconds (images/s on CUDA), ratio to the baseline, and lk_ablate's cost relative to its own k=7."""
    out = []
    for family in dict.fromkeys(r["model"] for r in rows):
        base = BASELINE[family]
        for mode in ("train", "infer"):
            sel = [r for r in rows if r["model"] == family and r["pass"] == mode]
            if not sel:
                continue
            ref = next((r for r in sel if r["k"] == "7"), None)
            unit = "s/step" if mode == "train" else "s/batch"
            head = [f"k", f"lk_ablate {unit}", f"{base} {unit}", "lk_ablate / " + base, "lk_ablate / own k7"]
            if args.device == "cuda":
                head += ["lk_ablate img/s", f"{base} img/s", "lk_ablate GPU MiB", f"{base} GPU MiB"]
            if any("lk_ablate_mib" in r for r in sel):
                head += ["lk_ablate peak MiB", f"{base} peak MiB", "lk_ablate MiB / own k7"]
            how = f", torch.compile ({args.model.compile_backend}, mode {args.model.compile_mode or 'default'})" if args.model.compile \
                else ""
            out += [f"\n{family}, {mode}, batch {args.batch_size}, {args.image_size}x{args.image_size}, {args.device}{how}\n",
                    "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in sel:
                cells = [r["k"], f"{r['lk_ablate']:.3f}", f"{r[base]:.3f}", f"{r['lk_ablate'] / r[base]:.2f}",
                         f"{r['lk_ablate'] / ref['lk_ablate']:.2f}" if ref else "-"]
                if args.device == "cuda":
                    cells += [f"{args.batch_size / r['lk_ablate']:.0f}", f"{args.batch_size / r[base]:.0f}",
                              f"{r['lk_ablate_gpu_mib']:.0f}", f"{r[base + '_gpu_mib']:.0f}"]
                if "lk_ablate_mib" in r:
                    cells += [f"{r['lk_ablate_mib']:.0f}", f"{r[base + '_mib']:.0f}",
                              f"{r['lk_ablate_mib'] / ref['lk_ablate_mib']:.2f}" if ref and "lk_ablate_mib" in ref
                              else "-"]
                out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="benchmarks/bench_models.py", description=__doc__)
    ap.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    ap.add_argument("--device", type=Literal["cpu", "cuda"], default="cpu")
    ap.add_argument("--model_names", type=list[str], default=["convnext_tiny", "replknet_31b"])
    ap.add_argument("--kernel_sizes", type=list[int | str], default=[3, 7, 13, 31, 51],
                    help="'31B' is RepLKNet-31B's own (31,29,27,13), '3B' RepLKNet-3B (3, no small kernel)")
    ap.add_argument("--passes", type=list[Literal["train", "infer"]], default=["train", "infer"])
    ap.add_argument("--batch_size", type=int | None, default=None, help="default 8 on cpu, 64 on cuda")
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--warmup_steps", type=int | None, default=None, help="default 1 on cpu, 3 on cuda")
    ap.add_argument("--steps", type=int | None, default=None, help="timed steps per contender (default 5 cpu, 20 cuda)")
    ap.add_argument("--min_steps", type=int, default=3)
    ap.add_argument("--max_seconds", type=float, default=60.0, help="stop after min_steps once a pair ran this long")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds; start no comparison after")
    ap.add_argument("--memory", type=bool, default=False, help="also peak memory (CPU: VmHWM of a fresh subprocess)")
    ap.add_argument("--num_threads", type=int | None, default=None)
    ap.add_argument("--clock", type=Literal["wall", "cpu"], default="wall",
                    help="cpu: process CPU time (with --num_threads 1 it ignores time other processes take on a busy "
                         "machine; with more threads it also counts OpenMP spinning)")
    ap.add_argument("--model.compile", type=bool, default=False,
                    help="both contenders under torch.compile (like with like)")
    ap.add_argument("--model.compile_mode", type=str | None, default=None,
                    help="torch.compile mode (default, reduce-overhead, max-autotune)")
    ap.add_argument("--model.compile_backend", type=str, default="inductor",
                    help="torch.compile backend (default inductor)")
    ap.add_argument("--output_path", type=str | None, default=None,
                    help="write the markdown tables (and a .json of the rows) here")
    ap.add_argument("--child", type=str | None, default=None, help=SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (64 if cuda else 8)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (3 if cuda else 1)
    args.steps = args.steps or (20 if cuda else 5)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.clock == "cpu" and cuda:
        raise SystemExit("--clock cpu is for CPU runs; CUDA steps are timed by wall clock after synchronize")
    if cuda:
        torch.backends.cudnn.benchmark = True
    if args.child:
        return child(args.child, args)
    rows = []
    t_end = time.time() + args.deadline
    for family in args.model_names:
        for kernel in map(str, args.kernel_sizes):
            if kernel in RELEASED and family != "replknet_31b":
                continue
            for mode in args.passes:
                if time.time() > t_end:
                    print(f"--deadline reached: {family} k={kernel} {mode} not measured", flush=True)
                    continue
                row = compare(family, kernel, mode == "train", args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    from bench_dwconv import machine_name

    text = (f"Machine: {machine_name(args.device)}; torch {torch.__version__}; clock: {args.clock}; median of "
            f"{args.steps} interleaved steps after {args.warmup_steps} warm-up\n" + table(rows, args))
    print(text)
    if args.output_path:
        Path(args.output_path).write_text(text)
        Path(args.output_path).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
