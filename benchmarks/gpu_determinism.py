"""Is a GPU training run bit-identical when repeated? A prepared check for a machine with CUDA (docs/reproducibility.md).

Trains convnext_demo (k=13, batch 64, 32 px, channels-last, AdamW) for ``--steps`` steps on generated batches,
twice per setting, each time in a new process, and compares the weights with ``torch.equal``:

- ``default``: cuDNN picks its algorithms (``benchmark`` off), non-deterministic kernels allowed;
- ``deterministic``: what ``trainer.deterministic: true`` sets (``torch.use_deterministic_algorithms(True)``,
  ``cudnn.deterministic``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``);
- each in float32 and under bf16 autocast.

Prints one line per setting: identical or the largest norm-wise relative difference of a weight tensor.

    PYTHONPATH=. python3 benchmarks/gpu_determinism.py --steps 20
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(out: str, steps: int, deterministic: bool, bf16: bool) -> None:
    import torch
    import torch.nn.functional as F

    from lk_ablate.models import create_model

    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = create_model("convnext_demo", kernel_size=13, num_classes=10).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(64, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (64,), generator=g).to(dev)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}))


def parser() -> ArgumentParser:
    from argparse import SUPPRESS

    p = ArgumentParser(prog="benchmarks/gpu_determinism.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    p.add_argument("--steps", type=int, default=20, help="training steps of each run")
    p.add_argument("--child", type=str | None, default=None, help=SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.child:
        out, steps, det, bf16 = args.child.split(",")
        child(out, int(steps), det == "1", bf16 == "1")
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_determinism.py needs CUDA")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        for det in (0, 1):
            for bf16 in (0, 1):
                run_env = dict(env, CUBLAS_WORKSPACE_CONFIG=":4096:8") if det else env
                paths, info = [], ""
                for i in range(2):
                    path = os.path.join(tmp, f"{det}{bf16}{i}.pt")
                    res = subprocess.run([sys.executable, __file__, "--child", f"{path},{args.steps},{det},{bf16}"],
                                         env=run_env, capture_output=True, text=True, check=True)
                    info = res.stdout.strip().splitlines()[-1]
                    paths.append(path)
                a, b = (torch.load(p) for p in paths)
                rel = max(float((a[k].double() - b[k].double()).norm() / max(b[k].double().norm(), 1e-30))
                          for k in a if a[k].is_floating_point())
                same = all(torch.equal(a[k], b[k]) for k in a)
                name = f"{'deterministic' if det else 'default'}, {'bf16-mixed' if bf16 else '32-true'}"
                print(f"{name:<28} {'identical' if same else f'differs (max rel {rel:.2e})'}  {info}")


if __name__ == "__main__":
    main()
