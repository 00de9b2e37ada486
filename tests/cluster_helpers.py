"""Shared by the cluster tests (DDP, pre-emption, SLURM): run the CLI in a subprocess, read and compare checkpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
import numpy as np
import torch
from PIL import Image

from helpers import REPO, TESTS, test_pythonpath

TEST_CONFIGS = TESTS / "configs"


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: one thread each, and tests/ importable (probe callbacks live there)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline",
               PYTHONPATH=test_pythonpath(env.get("PYTHONPATH", "")))
    for k in list(env):  # runs outside SLURM must not look like SLURM tasks (Lightning would pick SLURMEnvironment)
        if k.startswith("SLURM_"):
            del env[k]
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lk_ablate", *args]


def start_cli(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start ``lk_ablate ARGS`` in its own process group, output to ``log``."""
    f = open(log, "ab")
    return subprocess.Popen(cli(*args), cwd=REPO, env=cli_env(**env), stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ok(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        raise AssertionError(f"lk_ablate did not finish in {timeout} s:\n{tail(log)}") from None
    assert rc == 0, f"lk_ablate exited with {rc}:\n{tail(log)}"


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{tail(log) if log else ''}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{tail(log) if log else ''}")


# --- data ----------------------------------------------------------------------------------------------------
def make_wnid_folder(root: Path, wnids: list[str], splits: tuple[str, ...] = ("train", "val"), size: int = 32,
                     seed: int = 0) -> Path:
    """root/<split>/<wnid>/0.png: one small random image per class (the same file hard-linked into every split)."""
    rng = np.random.default_rng(seed)
    src = root / "_images"
    src.mkdir(parents=True, exist_ok=True)
    for i, w in enumerate(wnids):
        img = src / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(img)
        for split in splits:
            d = root / split / w
            d.mkdir(parents=True, exist_ok=True)
            os.link(img, d / "0.png")
    return root


# --- checkpoints ---------------------------------------------------------------------------------------------
def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def training_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What must match between an interrupted+resumed run and an uninterrupted one: weights (EMA included, it is
    the module's ``ema.module.*``), optimizer and lr-scheduler states, and the position in training."""
    return {"state_dict": ckpt["state_dict"], "optimizer_states": ckpt["optimizer_states"],
            "lr_schedulers": ckpt["lr_schedulers"], "global_step": ckpt["global_step"], "epoch": ckpt["epoch"]}


def assert_same(a: Any, b: Any, what: str = "") -> None:
    """Exact equality, recursively; tensors bit-identical."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{what}: keys differ {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{what}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{what}: tensors differ (max |a-b| {(a.double() - b.double()).abs().max():.3g})"
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


# --- probe callbacks (given to CLI subprocesses as `--trainer.callbacks+=cluster_helpers.<Name>`) ---------------
class PauseAt(L.Callback):
    """Before the batch of optimizer step ``step``: write ``marker`` (the pid), then wait until the ``release`` file
    exists or ``timeout`` passes -- so a test can signal or kill the run at that point. SIGTERM ends the run there.

    ``only_first_start``: do nothing in a SLURM task that was requeued (SLURM_RESTART_COUNT > 0).
    ``hold_next``: after the release, wait again before the next step, until SIGTERM (or ``timeout``).
    """

    def __init__(self, step: int, marker: str, release: str | None = None, timeout: float = 120.0,
                 only_first_start: bool = True, hold_next: bool = False) -> None:
        self.step, self.marker, self.release, self.timeout = step, marker, release, timeout
        self.hold_next = hold_next
        self.active = not (only_first_start and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.active or trainer.global_step != self.step:
            return
        first = not Path(self.marker).exists()
        if first:
            Path(self.marker).write_text(str(os.getpid()))
        if first and self.hold_next:
            self.step += 1  # wait once more, before the next step
        else:
            self.active = False
        release = self.release if first else None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if trainer.received_sigterm:  # stop right here, as SLURM's SIGTERM stops a real job (between steps)
                raise SIGTERMException
            if release is not None and Path(release).exists():
                break
            time.sleep(0.02)


class _SlowPickle:
    """Pickling it writes ``marker`` and then takes ``seconds``; it unpickles as the int 0."""

    def __init__(self, marker: str, seconds: float) -> None:
        self.marker, self.seconds = marker, seconds

    def __reduce__(self) -> tuple:
        Path(self.marker).write_text(str(os.getpid()))
        time.sleep(self.seconds)
        return (int, (0,))


class SlowSaveAt(L.Callback):
    """Makes the checkpoint saved at optimizer step ``step`` take ``seconds`` to write (a kill lands mid-save)."""

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.global_step == self.step:
            checkpoint["slow_to_write"] = _SlowPickle(self.marker, self.seconds)


class SignalInStep(L.Callback):
    """Sends ``signum`` to this process from inside the optimizer step that makes ``global_step`` reach ``step``: the
    weights have changed, but Lightning has not counted the step and the EMA has not been updated -- the worst moment
    for a checkpoint (test probe for the SLURM requeue signal)."""

    def __init__(self, step: int, signum: int = int(signal.SIGUSR1)) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            if not self.sent and trainer.global_step + 1 == self.step:
                self.sent = True
                os.kill(os.getpid(), self.signum)

        trainer.optimizers[0].register_step_post_hook(after_step)


class PauseIfAsked(PauseAt):
    """PauseAt configured by ``<trainer.default_root_dir>/pause.json`` ({"step": N, "hold_next": bool}), when that
    file exists: marker
    ``paused`` and release file ``release`` in the same folder. Lets one config pause chosen tasks of a sweep."""

    def __init__(self) -> None:
        super().__init__(step=-1, marker="")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = Path(trainer.default_root_dir)
        request = folder / "pause.json"
        if not request.exists():
            self.active = False
            return
        spec = json.loads(request.read_text())
        self.step, self.hold_next = int(spec["step"]), bool(spec.get("hold_next", False))
        self.marker, self.release = str(folder / "paused"), str(folder / "release")
