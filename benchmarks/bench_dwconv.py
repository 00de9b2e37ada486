"""Measure each depthwise-conv product per method and write the rule table that ``impl="auto"`` reads.

For every (batch, map size, kernel) of a grid, times the forward, input-gradient and weight-gradient products of
each method (``direct``: PyTorch's kernel on the tensor as it comes, ``direct_cl``: on a channels-last copy,
``fft``), and records per product the fastest, keeping ``direct`` unless another method is more than ``--margin``
faster (millisecond differences at small kernels are noise, and PyTorch's own path has no overhead): the plan
``(fwd, gin, gw)``. Times are the minimum of ``--repeats``
interleaved repetitions after one warm-up, and of ``--sweeps`` passes over the whole grid (the minimum is the least
disturbed by other work on a busy machine).
A direct method already slower than ``--prune`` times the best at a smaller kernel is not timed again for larger
kernels at that (batch, map): direct costs only grow with k (the FFT's barely do), and timing a 51x51 direct weight
gradient on a 112x112 map takes minutes on a CPU.

CPU rows are measured in float32 on NCHW inputs, one thread, in process CPU time (see ``timer``) (how the models run on CPU); CUDA rows under bfloat16 autocast on
channels-last inputs (how they train on GPU); ``direct_cl`` is skipped there as it equals ``direct``.

    python benchmarks/bench_dwconv.py --device cpu --output_path lk_ablate/models/dwconv_rules.json
    python benchmarks/bench_dwconv.py --device cuda --output_path lk_ablate/models/dwconv_rules.json  # merges
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lk_ablate.models import layers  # noqa: E402

# ConvNeXt-T's channels at each stage map size (224 input); 112 and its channels cover 448-px inputs / RepLKNet stems.
CHANNELS = {7: 768, 14: 384, 28: 192, 56: 96, 112: 48}
KERNELS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 23, 27, 31, 39, 47, 51)
PASSES = ("fwd", "gin", "gw")


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from lk_ablate.base.provenance import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def product_fns(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, method: str,
                amp: torch.dtype | None) -> dict[str, Callable[[], object]]:
    """The three products as the planned autograd function runs them (layout copies and casts included)."""
    kh, kw = w.shape[-2:]
    height, width = x.shape[-2:]
    if method == "fft":
        size = layers._fft_size(height, width, kh, kw)
        xf, wf, gf = x.float(), w.float(), g.float()

        def fwd():
            return layers._fft_forward(xf, wf).to(amp or x.dtype).contiguous(memory_format=layers._memory_format(x))

        def gin():
            return layers._fft_input_grad(layers._spectrum(gf, size), wf, size, height, width).to(x.dtype) \
                .contiguous(memory_format=layers._memory_format(x))

        def gw():
            return layers._fft_weight_grad(xf, layers._spectrum(gf, size), kh, kw, size)
        return {"fwd": fwd, "gin": gin, "gw": gw}
    dt = amp or x.dtype
    xd, wd, gd = x.to(dt), w.to(dt), g.to(dt)
    fmt = layers._memory_format(x)
    return {
        "fwd": lambda: layers._direct_forward(xd, wd, method).contiguous(memory_format=fmt),
        "gin": lambda: layers._direct_backward(gd, xd, wd, method, [True, False])[0].contiguous(memory_format=fmt),
        "gw": lambda: layers._direct_backward(gd, xd, wd, method, [False, True])[1],
    }


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Seconds one call takes: CUDA wall time (synchronised); on CPU the process's CPU time.

    CPU time does not count the time the scheduler gives to other processes, so a busy shared machine does not
    distort the comparison; with one thread (the default here) it equals the compute time.
    """
    if device == "cuda":
        def run(fn: Callable[[], object]) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - t
        return run

    def run_cpu(fn: Callable[[], object]) -> float:
        t = time.process_time()
        fn()
        return time.process_time() - t
    return run_cpu


def choose(times: dict[str, float | None], margin: float) -> str:
    """The fastest method, but ``direct`` (PyTorch as called) unless another beats it by more than ``margin``."""
    best = min((t, m) for m, t in times.items() if t is not None)[1]
    direct = times.get("direct")
    if direct is not None and times[best] * (1 + margin) >= direct:
        return "direct"
    return best


def time_row(device: str, n: int, h: int, c: int, k: int, todo: dict[str, list[str]], reps: int,
             amp: torch.dtype | None) -> dict[str, dict[str, float]]:
    """Minimum ms of each (product, method) in ``todo`` for one case, methods interleaved rep by rep."""
    run = timer(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, h, h, device=device, generator=gen)
    g = torch.randn(n, c, h, h, device=device, generator=gen)
    w = torch.randn(c, 1, k, k, device=device, generator=gen)
    if device == "cuda":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    methods = sorted({m for ms in todo.values() for m in ms})
    fns = {m: product_fns(x, w, g, m, amp) for m in methods}
    out: dict[str, dict[str, float]] = {}
    for p, active in todo.items():
        for m in active:
            run(fns[m][p])  # warm-up (FFT plans, oneDNN primitives, cuDNN autotuning)
        samples: dict[str, list[float]] = {m: [] for m in active}
        for _ in range(reps):
            for m in active:
                samples[m].append(run(fns[m][p]))
        out[p] = {m: min(v) * 1e3 for m, v in samples.items()}
    return out


def measure(device: str, batches: list[int], sizes: list[int], kernels: list[int], reps: int, prune: float,
            margin: float, sweeps: int, log: Callable[[str], None], deadline: float = float("inf"),
            rows: list[dict] | None = None) -> list[dict]:
    """Sweep the grid ``sweeps`` times (the later sweeps re-time what the first timed) and keep each minimum.

    A burst of other work on the machine can slow one whole case; it rarely hits the same case in every sweep.
    Rows are appended to ``rows`` as they are measured (so an interrupted run keeps them).
    """
    cuda = device == "cuda"
    methods = ["direct", "fft"] if cuda else list(layers.METHODS)
    amp = torch.bfloat16 if cuda else None
    rows = [] if rows is None else rows
    for h in sizes:
        c = CHANNELS.get(h, 96)
        for n in batches:
            dropped: set[tuple[str, str]] = set()
            for kc in dict.fromkeys(min(k, 2 * h - 1) for k in kernels):
                if time.time() > deadline:
                    log(f"--max_minutes reached: rows from n={n} h={h} k={kc} on not measured")
                    break
                todo = {p: [m for m in methods if (p, m) not in dropped] for p in PASSES}
                got = time_row(device, n, h, c, kc, todo, reps, amp)
                times = {p: {m: got[p].get(m) for m in methods} for p in PASSES}
                for p in PASSES:
                    best = min(got[p].values())
                    dropped |= {(p, m) for m, t in got[p].items() if m != "fft" and t > prune * best}
                rows.append({"n": n, "h": h, "c": c, "k": kc, "ms": times, "plan": plan_of(times, margin)})
                log(f"sweep 1 " + fmt_row(rows[-1]))
    for sweep in range(2, sweeps + 1):
        for row in rows:
            if time.time() > deadline:
                break
            todo = {p: [m for m, t in row["ms"][p].items() if t is not None] for p in PASSES}
            got = time_row(device, row["n"], row["h"], row["c"], row["k"], todo, reps, amp)
            for p in PASSES:
                for m, t in got[p].items():
                    row["ms"][p][m] = min(row["ms"][p][m], t)
            row["plan"] = plan_of(row["ms"], margin)
            log(f"sweep {sweep} " + fmt_row(row))
    return rows


def plan_of(times: dict[str, dict[str, float | None]], margin: float) -> list[str]:
    for ts in times.values():
        ts.update({m: None if t is None else round(t, 4) for m, t in ts.items()})
    return [choose(times[p], margin) for p in PASSES]


def fmt_row(row: dict) -> str:
    return f"n={row['n']:3d} h={row['h']:3d} c={row['c']:4d} k={row['k']:3d}  " + "  ".join(
        f"{p}: " + " ".join(f"{m}={'-' if t is None else f'{t:.2f}'}" for m, t in row["ms"][p].items())
        for p in PASSES)


def dump(table: dict) -> str:
    """JSON with one line per measured row (diffable, short)."""
    parts = ["{"]
    for i, (key, value) in enumerate(table.items()):
        sep = "," if i < len(table) - 1 else ""
        if key == "devices":
            parts.append(' "devices": {')
            for j, (dev, rows) in enumerate(value.items()):
                parts.append(f'  {json.dumps(dev)}: [')
                parts += [f"   {json.dumps(r)}" + ("," if r is not rows[-1] else "") for r in rows]
                parts.append("  ]" + ("," if j < len(value) - 1 else ""))
            parts.append(" }" + sep)
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}{sep}")
    return "\n".join(parts + ["}"]) + "\n"


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="benchmarks/bench_dwconv.py", description=__doc__)
    ap.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    ap.add_argument("--device", type=Literal["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch_sizes", type=list[int] | None, default=None, help="default cpu [1,8]; cuda [8,64]")
    ap.add_argument("--map_sizes", type=list[int], default=[7, 14, 28, 56, 112], help="square map sizes")
    ap.add_argument("--kernel_sizes", type=list[int], default=list(KERNELS))
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per product (the minimum counts)")
    ap.add_argument("--sweeps", type=int, default=3, help="passes over the whole grid (the minimum counts)")
    ap.add_argument("--max_minutes", type=float, default=float("inf"), help="stop measuring after this long")
    ap.add_argument("--prune", type=float, default=8.0)
    ap.add_argument("--replan", type=bool, default=False,
                    help="only recompute the plans of the --output_path table from its measured times with --margin")
    ap.add_argument("--margin", type=float, default=0.25,
                    help="keep direct unless another method is this much faster (tiny differences are noise)")
    ap.add_argument("--num_threads", type=int, default=1,
                    help="torch threads on CPU (default 1: CPU time then is compute time; all methods scale alike)")
    ap.add_argument("--output_path", type=str | None, default=None,
                    help="rule JSON to create or merge this device's rows into")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.replan:
        path = Path(args.output_path)
        table = json.loads(path.read_text())
        for rows in table["devices"].values():
            for row in rows:
                row["plan"] = plan_of(row["ms"], args.margin)
        for meta in table["meta"].values():
            meta["margin"] = args.margin
        path.write_text(dump(table))
        print(f"re-planned {path} with margin {args.margin}")
        return 0
    if args.device == "cpu":
        torch.set_num_threads(args.num_threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    batches = args.batch_sizes or ([8, 64] if args.device == "cuda" else [1, 8])
    sizes, kernels = list(args.map_sizes), list(args.kernel_sizes)
    sizes_note = ",".join(map(str, sizes))
    t0 = time.time()
    rows: list[dict] = []
    try:
        measure(args.device, batches, sizes, kernels, args.repeats, args.prune, args.margin, args.sweeps,
                lambda s: print(s, flush=True), deadline=t0 + 60 * args.max_minutes, rows=rows)
    except BaseException as e:  # keep what was measured
        print(f"interrupted after {len(rows)} rows: {e!r}", flush=True)
        sizes_note += " (interrupted)"
    for row in rows:
        print(fmt_row(row) + "  -> " + ",".join(row["plan"]))
    meta = {"machine": machine_name(args.device), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "seconds": round(time.time() - t0),
            "sizes": sizes_note, "margin": args.margin, "setting": ("bfloat16 autocast, channels_last" if args.device == "cuda" else "float32, NCHW"),
            "command": "python benchmarks/bench_dwconv.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(meta))
    if args.output_path:
        path = Path(args.output_path)
        table = json.loads(path.read_text()) if path.exists() else {}
        table.setdefault("about", "Measured by benchmarks/bench_dwconv.py; read by lk_ablate.models.layers.rule_for. "
                                  "ms: minimum time of each product per method; plan: the fastest per product.")
        table.setdefault("meta", {})[args.device] = meta
        table.setdefault("devices", {})[args.device] = rows
        path.write_text(dump(table))
        print(f"wrote {len(rows)} {args.device} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
