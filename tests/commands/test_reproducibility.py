"""Same command, same numbers (docs/reproducibility.md): the demo's pinned CPU kernels reach its own process, and
the pieces of the demo repeat bit for bit (training in a fresh process, corruption caches whatever OpenCV's CPU
dispatch, .beton samples whatever the writer's process count). The ones that start processes are slow (the fast
tier keeps the demo's wiring)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lk_ablate.base import cpu_kernels
from lk_ablate.base.cpu_kernels import PINNED_ENV, REEXEC_MARK, pinnable

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k != REEXEC_MARK}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return dict(env, **extra)


def run_json(code: str, tmp_path: Path, env: dict[str, str], *args: str) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import importlib.util, json, os, sys
with open(sys.argv[1], "a") as f:  # one line per start of this script: a re-executed command starts twice
    f.write(os.environ.get("ATEN_CPU_CAPABILITY", "-") + "\\n")
import torch  # loaded before pin(): only a new process can get the pinned kernels
# the module alone, by its path (stdlib only): the probe need not import lk_ablate's models
spec = importlib.util.spec_from_file_location("cpu_kernels", {path!r})
ck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ck)
PINNED_ENV, REEXEC_MARK = ck.PINNED_ENV, ck.REEXEC_MARK
status = ck.pin([sys.executable, *sys.orig_argv[1:]])
print(json.dumps({"status": status, "capability": torch.backends.cpu.get_cpu_capability(),
                  "reexec": os.environ.get(REEXEC_MARK), "env": {k: os.environ.get(k) for k in PINNED_ENV}}))
""".replace("{path!r}", repr(cpu_kernels.__file__))


@pytest.mark.slow
def test_pin_reexecutes_the_command_with_the_kernels_set_before_torch_loads(tmp_path):
    starts = tmp_path / "starts.txt"
    got = run_json(PROBE, tmp_path, clean_env(), str(starts))
    ok, why = pinnable()
    if not ok:  # e.g. an ARM machine: nothing is pinned, and the demo says so
        assert got["status"].startswith("CPU kernels not pinned") and why in got["status"]
        return
    # The script started twice, the second time with the variables set before torch loaded, and printed there.
    assert starts.read_text().split() == ["-", "avx2"]
    assert got["reexec"] == "1" and got["env"] == PINNED_ENV and got["capability"] == "AVX2"
    assert got["status"] == "CPU kernels pinned: " + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())


def test_demo_pins_its_own_command_line_and_never_reexecutes_a_caller(monkeypatch):
    from lk_ablate.commands import demo

    ok, _ = pinnable()
    for key in [*PINNED_ENV, REEXEC_MARK]:
        monkeypatch.delenv(key, raising=False)
    calls = []

    class Execd(Exception):
        pass

    def fake_execv(path, args):
        calls.append((path, args))
        raise Execd

    monkeypatch.setattr(cpu_kernels.os, "execv", fake_execv)
    argv = ["--kernel_sizes", "[3]", "--max_epochs", "1"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/lk_ablate", "demo", *argv])
    monkeypatch.setattr(sys, "orig_argv", ["/venv/bin/python", "/venv/bin/lk_ablate", "demo", *argv])
    if ok:
        with pytest.raises(Execd):
            demo._pin_cpu_kernels(argv)
        assert calls == [(sys.executable, [sys.executable, "/venv/bin/lk_ablate", "demo", *argv])]
        assert {k: os.environ[k] for k in PINNED_ENV} == PINNED_ENV and os.environ[REEXEC_MARK] == "1"
        for key in [*PINNED_ENV, REEXEC_MARK]:
            monkeypatch.delenv(key)
    # already set (by the re-executed start, or by the user): no further start, whatever was imported
    for key, value in PINNED_ENV.items():
        monkeypatch.setenv(key, value)
    pinned = "CPU kernels pinned: " + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())
    assert demo._pin_cpu_kernels(argv) == pinned or not ok
    for key in PINNED_ENV:
        monkeypatch.delenv(key)
    # called from Python (here: pytest's command line): never replaced, and it says the kernels are not pinned
    monkeypatch.setattr(sys, "argv", ["pytest", "tests"])
    assert "NOT pinned" in demo._pin_cpu_kernels(argv) or not ok
    assert len(calls) == (1 if ok else 0)


TRAIN = """
import sys
import torch, torch.nn as nn, torch.nn.functional as F
# The demo's layer types without importing lk_ablate (its models package pulls in Lightning: seconds per process):
# a strided stem and channels-last depthwise convolutions (oneDNN), LayerNorm, GELU and AdamW (ATen's vectorised
# kernels), the blocks' linear layers (MKL's matrix products).
class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
torch.set_num_threads(2)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 32, 2, stride=2), Block(32), Block(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(32, 10)).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
g = torch.Generator().manual_seed(1)
for step in range(4):
    x = torch.randn(64, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), generator=g)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
model.eval()
with torch.inference_mode():
    logits = model(torch.randn(128, 3, 32, 32, generator=g))
torch.save({"weights": model.state_dict(), "logits": logits}, sys.argv[1])
"""


@pytest.mark.slow
def test_a_training_run_repeats_bit_for_bit_in_a_fresh_process_with_the_pinned_kernels(tmp_path):
    """The demo's claim in small: the same steps in two new processes with the demo's settings (pinned kernels, 2
    threads) give equal weights and logits (torch.equal, no tolerance), and a third process with ATen's kernels
    one instruction set down (as on another CPU without the pin) does not: the kernel variables reach the
    computation, so the check can see them. The processes run side by side (each mostly imports torch)."""
    pinned = pinnable()[0]  # elsewhere (ARM): nothing to pin, the repeat alone
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    envs = {"a": clean_env(**(PINNED_ENV if pinned else {})), "b": clean_env(**(PINNED_ENV if pinned else {}))}
    if pinned:
        envs["other"] = clean_env(**dict(PINNED_ENV, ATEN_CPU_CAPABILITY="default"))
    procs = {name: subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{name}.pt")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, env in envs.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    out = {name: torch.load(tmp_path / f"{name}.pt") for name in envs}
    a, b = out["a"], out["b"]
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert torch.equal(a["logits"], b["logits"])
    if pinned:
        assert not torch.equal(a["logits"], out["other"]["logits"])


CORRUPT = """
import hashlib, json
import numpy as np
from lk_ablate.robustness.corruptions import corrupt_images
rng = np.random.default_rng(0)
imgs = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
c = corrupt_images(imgs, ["defocus_blur"], [1, 2, 3, 4, 5], seed=0, workers=1)
print(json.dumps({s: hashlib.sha256(c.arrays["defocus_blur"][s].tobytes()).hexdigest() for s in range(1, 6)}))
"""


@pytest.mark.slow
def test_corruption_cache_does_not_depend_on_opencvs_cpu_dispatch(tmp_path):
    """OpenCV picks AVX2 / AVX-512 kernels by CPU, and its AVX2 filter changes defocus_blur's pixels; corrupting
    with OpenCV's baseline kernels gives one result whatever the CPU offers (here: AVX2 switched off)."""
    import hashlib

    from lk_ablate.robustness.corruptions import corrupt_images

    # 48 random images: OpenCV's AVX2 and SSE kernels give different pixels for some of them (measured: one at
    # severity 4 with these seeds; on Fashion-MNIST-C's 500 test images, some at every run)
    script = tmp_path / "corrupt.py"
    script.write_text(CORRUPT)
    # the other process (mostly imports) runs while this one corrupts the same images
    other = subprocess.Popen([sys.executable, str(script)], env=clean_env(OPENCV_CPU_DISABLE="AVX2,FMA3,AVX"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    imgs = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    c = corrupt_images(imgs, ["defocus_blur"], [1, 2, 3, 4, 5], seed=0, workers=1)
    here = {str(s): hashlib.sha256(c.arrays["defocus_blur"][s].tobytes()).hexdigest() for s in range(1, 6)}
    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == here


@pytest.mark.slow
@pytest.mark.ffcv
def test_beton_samples_do_not_depend_on_the_writers_process_count(tmp_path):
    """FFCV's parallel writer may lay pages out in another order, but every sample decodes to the same pixels and
    label, and the demo reads them by index (RANDOM order), so its batches do not depend on the writer."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    from lk_ablate.data.fashion_mnist import load_fashion_mnist, resize_grey
    from lk_ablate.data.fashion_mnist_ffcv import _GreyAsRGB
    from lk_ablate.data.ffcv_writer import page_size_for, write_atomic

    images, labels = load_fashion_mnist("test")
    grey = resize_grey(images[:3000], 32).numpy()
    decoded = []
    for workers in (1, 2):
        path = tmp_path / f"w{workers}.beton"
        write_atomic(path, _GreyAsRGB(grey, labels[:3000]), {"image": RGBImageField(write_mode="raw"),
                                                             "label": IntField()},
                     {"num_samples": 3000}, page_size_for(3 * 32 * 32), workers, chunk_size=500)
        loader = Loader(str(path), batch_size=1000, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
        xs, ys = zip(*((np.array(x), np.array(y).reshape(-1)) for x, y in loader))
        decoded.append((np.concatenate(xs), np.concatenate(ys)))
    (xa, ya), (xb, yb) = decoded
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and np.array_equal(ya, labels[:3000])
    assert np.array_equal(xa[..., 0], grey)
