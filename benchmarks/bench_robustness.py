"""Robustness scoring throughput: the input pipeline against its bound, with and without the model, per layout;
plus the measured effect of GPU decoding and of bf16 scoring on inputs, logits and predictions.

Per layout (C: 224 px JPEGs read without resize; A/R: 500x375 JPEGs, resize + centre crop), on warm (cached)
files and as the median of interleaved repeats, it times:
- single: exactly the pipeline's per-batch work in one process (read + decode + geometry into one uint8 batch,
  then the normalisation on the device: ``ScoringInputs.finish``), img/s;
- bound = single x loader workers (what the workers could deliver if nothing else cost anything);
- pipeline: what ``ScoringInputs`` (the DataLoader of ``evaluate``, workers, normalisation) delivers, no model;
- model: ``evaluate`` with the model (raw weights), and the model's forward alone on random input;
and prints the ratios and the projected minutes per checkpoint. Ends with one line per layout,
``<layout> pipeline/bound = <ratio>``.

    python benchmarks/bench_robustness.py --pipeline_only true --device cpu          # < 3 min on 2 cores
    python benchmarks/bench_robustness.py --device cuda --data.num_workers 16 --data.batch_size 256 \\
        --model_names [convnext_tiny:7,replknet_31b]
    python benchmarks/bench_robustness.py --device cuda --data.decode gpu ...        # nvJPEG decode on the GPU
    python benchmarks/bench_robustness.py --measure_gpu_decode true --device cuda    # PIL vs GPU decode differences
    python benchmarks/bench_robustness.py --measure_bf16 true --device cpu           # 32-true vs bf16-mixed logits
    python benchmarks/bench_robustness.py --time_corruptions true --num_images 500   # corruption speed (Fashion-MNIST-C)
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image

from lk_ablate import create_model
from lk_ablate.models.registry import ModelConfig
from lk_ablate.robustness.benchmarks import Benchmark, Part, load_wnids
from lk_ablate.robustness.evaluate import evaluate
from lk_ablate.robustness.pipeline import ScoringInputs

# Images per scoring (one weight set): released sizes.
SETS = {"ImageNet-C severity5 (19 x 50k)": 950_000, "ImageNet-C full (19 x 5 x 50k)": 4_750_000,
        "val 50k + A 7.5k + R 30k + O 2k": 89_500}
CLASSES = 10  # class folders per generated tree (labels do not matter for throughput)


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like content (low-frequency colour field + mild noise) so JPEG sizes are realistic."""
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)


def _tree(root: Path, classes: tuple[str, ...], n: int, size: tuple[int, int], seed: int, unique: int = 10**9) -> Path:
    """n photo-like JPEGs spread over the class folders; only ``unique`` distinct ones, the rest byte copies of
    them (decoding a copy costs what decoding the original does; generating them does not)."""
    rng = np.random.default_rng(seed)
    made: list[bytes] = []
    for i in range(max(n, len(classes))):  # at least one image per class folder
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        if len(made) < unique:
            Image.fromarray(_smooth(rng, size[1], size[0])).save(d / f"{i}.JPEG", quality=85)
            made.append((d / f"{i}.JPEG").read_bytes())
        else:
            (d / f"{i}.JPEG").write_bytes(made[i % len(made)])
    for c in classes:  # every class folder exists (the layout check wants them)
        (root / c).mkdir(parents=True, exist_ok=True)
    return root


def _warm(root: Path) -> int:
    """Read every file once so that the timings see cached files, as a second scoring does."""
    total = 0
    for f in root.rglob("*.JPEG"):
        total += len(f.read_bytes())
    return total


def _layouts(tmp: str, n: int) -> dict[str, Benchmark]:
    """C: n 224 px JPEGs; A/R: n // 2 500x375 JPEGs (4x the decode work each); 100 distinct images per tree."""
    wnids = load_wnids("imagenet_1k")[:CLASSES]
    c_root = _tree(Path(tmp) / "c", wnids, n, (224, 224), 0, unique=100)
    a_root = _tree(Path(tmp) / "a", wnids, max(n // 2, CLASSES), (500, 375), 1, unique=100)
    out = {"C": Benchmark("imagenet_c", "corruption", (Part("fog/5", str(c_root), wnids, False),)),
           "A/R": Benchmark("imagenet_a", "masked_top1", (Part("a", str(a_root), wnids, True),))}
    for b in out.values():
        _warm(Path(b.parts[0].root))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _single_rate(inputs: ScoringInputs, batch: int) -> tuple[float, float]:
    """The pipeline's whole per-image work in this one process (no loader, no workers): (img/s of wall time,
    img/s of this process's CPU time). On an idle machine they agree; under load the CPU-time rate is what one
    core delivers, so the bound built on it does not shrink with the other processes' share of the machine."""
    data, buffer = inputs.data, None
    n = len(data)
    t, c = time.perf_counter(), time.process_time()
    for s in range(0, n, batch):
        x, _, buffer = inputs.finish(data.__getitems__(list(range(s, min(s + batch, n)))), buffer)
    _sync(inputs.device)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # loader workers, once the loader has joined them
    return r.ru_utime + r.ru_stime


def _pipeline_rate(inputs: ScoringInputs) -> tuple[float, float]:
    """What the loader delivers, normalised on the device, with nothing consuming it (worker start-up included):
    (img/s of wall time, img/s per second of CPU time of this process and its workers together)."""
    t, c, k, n = time.perf_counter(), time.process_time(), _children_cpu(), 0
    for x, index in inputs:
        n += len(index)
    _sync(inputs.device)
    wall = time.perf_counter() - t
    return n / wall, n / (time.process_time() - c + _children_cpu() - k)


def _forward_rate(model: torch.nn.Module, size: int, batch: int, device: torch.device, bf16: bool) -> float:
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(2):
            model(x)
        _sync(device)
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 3.0:
            model(x)
            n += batch
        _sync(device)
    return n / (time.perf_counter() - t)


def _model_rate(model: torch.nn.Module, bench: Benchmark, cfg: ModelConfig, args: argparse.Namespace,
                device: torch.device) -> float:
    t = time.perf_counter()
    results, errors = evaluate({"raw": model}, cfg, [bench], batch_size=args.data.batch_size,
                               num_workers=args.data.num_workers, device=device, decode=args.data.decode, precision=args.precision)
    assert not errors, errors
    _sync(device)
    key = "n_total" if bench.kind == "corruption" else "n"
    return results["raw"][bench.name][key] / (time.perf_counter() - t)


def _machine(device: torch.device, args: argparse.Namespace) -> str:
    what = (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"device {device} ({what}), {os.cpu_count()} CPUs, load average {load}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, batch {args.data.batch_size}, {args.data.num_workers} loader workers, "
            f"decode {args.data.decode}, precision {args.precision}, {args.num_images} images per layout, "
            f"median of {args.repeats} interleaved repeats")


def bench_scoring(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    cfg = ModelConfig()  # ConvNeXt-T's eval input: 224 px, resize 256, bicubic
    models = [] if args.pipeline_only else args.model_names
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        layouts = _layouts(tmp, args.num_images)
        built = {}
        for spec in models:
            name, _, k = spec.partition(":")
            built[spec] = create_model(name, kernel_size=int(k) if k else None, num_classes=1000).to(device).eval()
        # Every model is fed the same 224 px input as the pipeline rows (ConvNeXt-T's eval transform), so
        # scoring/pipeline compares like with like.
        for spec, model in built.items():  # forward alone: once, it does not interleave with file reading
            size = cfg.image_size
            times[(spec, "forward")] = [_forward_rate(model, size, args.data.batch_size, device, args.precision == "bf16-mixed")]

        def inputs(bench: Benchmark) -> ScoringInputs:
            return ScoringInputs(bench, cfg, batch_size=args.data.batch_size, num_workers=args.data.num_workers, device=device,
                                 decode=args.data.decode)

        for layout, bench in layouts.items():  # warm-up: worker start, allocator, code paths
            _pipeline_rate(inputs(bench))
        for _ in range(args.repeats):
            for layout, bench in layouts.items():
                wall, cpu = _single_rate(inputs(bench), args.data.batch_size)
                times.setdefault((layout, "single wall"), []).append(wall)
                times.setdefault((layout, "single"), []).append(cpu)
                rate, per_cpu = _pipeline_rate(inputs(bench))
                times.setdefault((layout, "pipeline"), []).append(rate)
                times.setdefault((layout, "pipeline cpu"), []).append(per_cpu)
                for spec, model in built.items():
                    times.setdefault((layout, spec), []).append(_model_rate(model, bench, cfg, args, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(_machine(device, args))
    print(f"{'layout':<7}{'single':>9}{'(wall)':>9}{'bound':>9}{'pipeline':>10}{'pipe/bound':>12}{'CPU eff.':>10}"
          f"   pipeline/bound per repeat")
    for layout in layouts:
        single, pipe = med[(layout, "single")], med[(layout, "pipeline")]
        ratios = [p / (s * args.data.num_workers) for s, p in zip(times[(layout, "single")], times[(layout, "pipeline")])]
        print(f"{layout:<7}{single:>9.0f}{med[(layout, 'single wall')]:>9.0f}{single * args.data.num_workers:>9.0f}"
              f"{pipe:>10.0f}{pipe / (single * args.data.num_workers):>12.2f}{med[(layout, 'pipeline cpu')] / single:>10.2f}   "
              + " ".join(f"{r:.2f}" for r in ratios))
    print("(img/s. single: one process doing the pipeline's whole per-image work, per second of its CPU time "
          "(wall: per second of wall time); bound = single x workers; pipeline: delivered by the loader, "
          "normalised, per second of wall time, worker start included; CPU eff.: single's CPU time per image / "
          "the pipeline's (main process + workers), 1 = no overhead: on a machine that other work keeps busy "
          "pipe/bound falls with the share of the cores the pipeline gets, CPU eff. does not)")
    if built:
        print(f"\n{'model':<18}{'forward':>9}{'layout':>8}{'scoring':>9}{'scoring/pipeline':>18}"
              f"{'forward/scoring':>17}")
        for spec in built:
            fwd = med[(spec, "forward")]
            for layout in layouts:
                rate = med[(layout, spec)]
                print(f"{spec:<18}{fwd:>9.0f}{layout:>8}{rate:>9.0f}{rate / med[(layout, 'pipeline')]:>18.2f}"
                      f"{fwd / rate:>17.2f}")
    rows = [("input pipeline alone (no model)", {lay: med[(lay, "pipeline")] for lay in layouts})]
    rows += [(f"{spec} ({args.precision}, dwconv {_dw_impl()})", {lay: med[(lay, spec)] for lay in layouts})
             for spec in built]
    print("\nprojected minutes per checkpoint (raw weights; EMA adds its forward only): " + "; ".join(SETS))
    for label, rate in rows:
        mins = [SETS[k] / (rate["C"] if "ImageNet-C" in k else rate["A/R"]) / 60 for k in SETS]
        print(f"  {label:<48}" + "".join(f"{m:10.1f}" for m in mins))
    for layout in layouts:
        print(f"{layout} pipeline/bound = {med[(layout, 'pipeline')] / (med[(layout, 'single')] * args.data.num_workers):.2f}")


def _dw_impl() -> str:
    from lk_ablate.models.layers import get_default_impl

    return get_default_impl()


# --- agreement: GPU decode vs PIL, bf16 vs fp32 ---------------------------------------------------------------
def _scored_model(name: str, device: torch.device) -> torch.nn.Module:
    """A random-init model whose blocks all matter: layer-scale gammas set to 1 (at their 1e-6 init the blocks
    would be bypassed and the logits would be the stem's; trained ConvNeXt gammas are O(0.1..1))."""
    spec, _, k = name.partition(":")
    torch.manual_seed(0)
    model = create_model(spec, kernel_size=int(k) if k else None, num_classes=1000)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gamma"):
                p.fill_(1.0)
    return model.to(device).eval()


def _inputs_of(bench: Benchmark, cfg: ModelConfig, device: torch.device, decode: str, batch: int) -> torch.Tensor:
    it = ScoringInputs(bench, cfg, batch_size=batch, num_workers=0, device=device, decode=decode)
    return torch.cat([x.clone() for x, _ in it])  # clone: each x lives in a buffer the next batch reuses


def _logits(model: torch.nn.Module, x: torch.Tensor, batch: int, bf16: bool) -> torch.Tensor:
    out = []
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(x), batch):
            out.append(model(x[s:s + batch].contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out)


def _compare(label: str, a: torch.Tensor, b: torch.Tensor) -> str:
    rel = ((a - b).norm() / b.norm()).item()
    return f"{label} ||a-b||/||b|| = {rel:.2e}"


def measure_gpu_decode(args: argparse.Namespace) -> None:
    """decode gpu vs cpu (PIL) on generated photo-like 500x375 JPEGs, resize 256 + crop 224 (ConvNeXt-T's eval)."""
    device = torch.device(args.device)
    note = "" if device.type == "cuda" else (" [no CUDA: the device path runs on the CPU (torchvision's libjpeg "
                                             "decode_jpeg), not nvJPEG; re-run with --device cuda]")
    cfg = ModelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        wnids = load_wnids("imagenet_1k")[:CLASSES]
        root = _tree(Path(tmp) / "a", wnids, args.num_images, (500, 375), 1)
        bench = Benchmark("imagenet_a", "masked_top1", (Part("a", str(root), wnids, True),))
        ref = _inputs_of(bench, cfg, device, "cpu", args.data.batch_size)
        if device.type == "cuda":
            got = _inputs_of(bench, cfg, device, "gpu", args.data.batch_size)
        else:  # the same code on the CPU: decode_jpeg + v2 geometry, called directly
            from lk_ablate.robustness.pipeline import BatchImages, device_decode, normalize_nhwc

            spec = bench.parts[0].spec(cfg)
            data = BatchImages(bench.parts, spec, decode="gpu")
            got = torch.cat([normalize_nhwc(device_decode(data.__getitems__(list(range(s, min(s + 64, len(data))))),
                                                          spec, device, data.paths)[0], spec).contiguous()
                             for s in range(0, len(data), 64)])
    print(f"decode gpu vs decode cpu (PIL), {len(ref)} generated photo-like 500x375 JPEGs, resize 256 bicubic + "
          f"crop 224, on {device}{note}")
    print("  " + _compare("input", got, ref) + f", max |a-b| = {(got - ref).abs().max().item():.3f} "
          f"(normalised units; one grey level = {1 / 255 / 0.225:.4f})")
    for name in args.model_names:
        model = _scored_model(name, device)
        la, lb = _logits(model, got, args.data.batch_size, False), _logits(model, ref, args.data.batch_size, False)
        agree = (la.argmax(1) == lb.argmax(1)).float().mean().item() * 100
        print(f"  {name} (random init, gammas 1, fp32): " + _compare("logits", la, lb) + f", argmax agreement "
              f"{agree:.1f}%")


def measure_bf16(args: argparse.Namespace) -> None:
    """fp32 vs bf16 autocast scoring: logits and argmax, tiny ConvNeXt at 64 and 96 px on photo-like images."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        wnids = load_wnids("imagenet_1k")[:CLASSES]
        root = _tree(Path(tmp) / "a", wnids, args.num_images, (500, 375), 1)
        bench = Benchmark("imagenet_a", "masked_top1", (Part("a", str(root), wnids, True),))
        print(f"bf16 autocast vs fp32 on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
              f"{args.num_images} generated photo-like 500x375 JPEGs through the scoring pipeline")
        for name in args.model_names:
            model = _scored_model(name, device)
            for size in args.image_sizes:
                cfg = ModelConfig(input_size=(3, size, size), crop_pct=0.875, interpolation="bicubic",
                                  num_classes=1000)
                x = _inputs_of(bench, cfg, device, "cpu", args.data.batch_size)
                la, lb = _logits(model, x, args.data.batch_size, True), _logits(model, x, args.data.batch_size, False)
                agree = (la.argmax(1) == lb.argmax(1)).float().mean().item() * 100
                print(f"  {name} (random init, gammas 1) at {size} px: " + _compare("logits", la, lb)
                      + f", argmax agreement {agree:.1f}%")


def bench_corruptions(args: argparse.Namespace) -> None:
    from lk_ablate.robustness.corruptions import CORRUPTIONS, _corrupt_all, corrupt_images

    rng = np.random.default_rng(0)
    imgs = np.stack([_smooth(rng, 32, 32) for _ in range(args.num_images)])
    print(f"{args.num_images} images at 32 px, 5 severities, one process:")
    total = 0.0
    for c in CORRUPTIONS:
        t = time.perf_counter()
        for s in range(1, 6):
            _corrupt_all(imgs, c, s, 0)
        dt = time.perf_counter() - t
        total += dt
        print(f"  {c:<18} {dt:6.2f} s")
    print(f"  {'total':<18} {total:6.2f} s")
    for workers in (1, args.data.num_workers):
        t = time.perf_counter()
        corrupt_images(imgs, seed=1 + workers, workers=workers)
        print(f"corrupt_images, 15 x 5, {workers} worker(s): {time.perf_counter() - t:.1f} s")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/bench_robustness.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    p.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model_names", type=list[str] | None, default=None,
                   help="name[:kernel] (default: [convnext_tiny:7,replknet_31b]; convnext_demo for --measure_bf16)")
    p.add_argument("--num_images", type=int | None, default=None,
                   help="images per layout (C; A/R gets half; default 1000, 2400 pipeline-only)")
    p.add_argument("--data.batch_size", type=int | None, default=None, help="default 256 on CUDA, 64 on the CPU")
    p.add_argument("--data.num_workers", type=int, default=os.cpu_count() or 1, help="loader workers (default: cores)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--data.decode", type=Literal["cpu", "gpu"], default="cpu")
    p.add_argument("--precision", type=Literal["32-true", "bf16-mixed"], default="32-true")
    p.add_argument("--image_sizes", type=list[int], default=[64, 96], help="--measure_bf16 input sizes")
    p.add_argument("--pipeline_only", type=bool, default=False, help="no model: the input pipeline against its bound")
    p.add_argument("--measure_gpu_decode", type=bool, default=False, help="decode gpu vs PIL: inputs, logits, argmax")
    p.add_argument("--measure_bf16", type=bool, default=False, help="bf16 vs fp32 scoring: logits, argmax")
    p.add_argument("--time_corruptions", type=bool, default=False, help="time the on-the-fly corruptions instead")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.data.batch_size is None:
        args.data.batch_size = 256 if cuda else 64
    if args.model_names is None:
        args.model_names = ["convnext_demo"] if args.measure_bf16 else (
            ["convnext_tiny:7"] if args.measure_gpu_decode else ["convnext_tiny:7", "replknet_31b"])
    if args.num_images is None:
        args.num_images = 500 if args.time_corruptions else 256 if (args.measure_bf16 or args.measure_gpu_decode) else (
            2400 if args.pipeline_only else 1000)
    if args.pipeline_only and args.device == "cpu":
        # Each loader worker runs one intra-op thread (DataLoader's setting); so does the process that
        # normalises, or its idle OpenMP threads would spin on the cores the workers decode on.
        torch.set_num_threads(1)
    if args.time_corruptions:
        bench_corruptions(args)
    elif args.measure_gpu_decode:
        measure_gpu_decode(args)
    elif args.measure_bf16:
        measure_bf16(args)
    else:
        bench_scoring(args)


if __name__ == "__main__":
    main()
