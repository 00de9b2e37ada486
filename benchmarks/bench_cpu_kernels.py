"""The speed cost of the demo's pinned CPU kernels (lk_ablate/base/cpu_kernels.py), measured side by side.

Each setting runs in its own process (the variables must be set before ``import torch``): ``native`` (the
libraries choose their kernels), ``pinned`` (``PINNED_ENV``: AVX2 ATen and oneDNN kernels, MKL's COMPATIBLE
path) and ``pinned-mkl-avx2`` (the same with MKL's AVX2 branch, Intel-only: the alternative the pinned set
does not take). Every process times the demo's training step (convnext_demo, batch 128, 32 px, channels-last,
AdamW, the demo's threads) and its inference (batch 256), after warm-up steps; settings alternate over
``--repeats`` rounds and each cell is the median, so load from other processes hits all settings alike.
Times are process CPU time per step (less disturbed by other work on a shared machine than wall time) and wall
time.

    python benchmarks/bench_cpu_kernels.py --kernel_sizes [3,13] --steps 20 --repeats 3
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "native": {},
    "pinned": None,  # PINNED_ENV, filled in main()
    "pinned-mkl-avx2": None,
}


def child(kernel: int, steps: int, threads: int) -> dict:
    import time

    import torch
    import torch.nn.functional as F

    from lk_ablate.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("convnext_demo", kernel_size=kernel, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    xi = torch.randn(256, 3, 32, 32)

    def infer() -> None:
        with torch.inference_mode():
            model(xi)

    out = {"capability": torch.backends.cpu.get_cpu_capability()}
    for name, fn, n in (("train", step, steps), ("infer", infer, steps)):
        for _ in range(3):
            fn()
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        out[f"{name}_cpu_ms"] = 1e3 * (time.process_time() - c0) / n
        out[f"{name}_wall_ms"] = 1e3 * (time.perf_counter() - w0) / n
    return out


def parser() -> ArgumentParser:
    from argparse import SUPPRESS

    p = ArgumentParser(prog="benchmarks/bench_cpu_kernels.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    p.add_argument("--kernel_sizes", type=list[int], default=[3, 13], help="the demo's kernel sizes")
    p.add_argument("--steps", type=int, default=20, help="timed training (and inference) steps per process")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds over the settings (the median counts)")
    p.add_argument("--num_threads", type=int, default=2, help="torch threads (the demo's default)")
    p.add_argument("--child", type=int | None, default=None, help=SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.num_threads)))
        return
    from lk_ablate.base.cpu_kernels import PINNED_ENV, pinnable

    ok, why = pinnable()
    if not ok:
        raise SystemExit(f"the pinned kernels cannot run here: {why}")
    SETTINGS["pinned"] = dict(PINNED_ENV)
    SETTINGS["pinned-mkl-avx2"] = dict(PINNED_ENV, MKL_CBWR="AVX2")
    base_env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    base_env["PYTHONPATH"] = str(ROOT) + os.pathsep + base_env.get("PYTHONPATH", "")
    results: dict[tuple[int, str], list[dict]] = {}
    for _ in range(args.repeats):
        for k in args.kernel_sizes:
            for name, env in SETTINGS.items():
                cmd = [sys.executable, __file__, "--child", str(k), "--steps", str(args.steps),
                       "--num_threads", str(args.num_threads)]
                res = subprocess.run(cmd, env={**base_env, **env}, capture_output=True, text=True, check=True)
                results.setdefault((k, name), []).append(json.loads(res.stdout.strip().splitlines()[-1]))
    from lk_ablate.base.provenance import cpu_name

    print(f"{cpu_name()}, {os.cpu_count()} cores, {args.num_threads} torch threads; median of {args.repeats} rounds x "
          f"{args.steps} steps; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'kernel':>6} {'setting':<16} {'capability':<10} {'train cpu ms':>12} {'train wall ms':>13} "
          f"{'infer cpu ms':>12} {'infer wall ms':>13} {'train ratio':>11}")
    for k in args.kernel_sizes:
        base = statistics.median(r["train_cpu_ms"] for r in results[(k, "native")])
        for name in SETTINGS:
            rs = results[(k, name)]
            med = {key: statistics.median(r[key] for r in rs) for key in rs[0] if key.endswith("ms")}
            print(f"{k:>6} {name:<16} {rs[0]['capability']:<10} {med['train_cpu_ms']:12.1f} "
                  f"{med['train_wall_ms']:13.1f} {med['infer_cpu_ms']:12.1f} {med['infer_wall_ms']:13.1f} "
                  f"{med['train_cpu_ms'] / base:11.2f}")
    print("train ratio: process CPU time per training step relative to native")


if __name__ == "__main__":
    main()
