"""Pre-emption safety with real processes: SIGKILL mid-epoch, a kill in the middle of writing a checkpoint, and a
SLURM-style SIGUSR1 requeue; each interrupted run, restarted with the same command line (``--ckpt_path auto``),
ends bit-identical (weights, EMA, optimizer, lr schedule, step) to an uninterrupted run of ``lk_ablate fit``.

The tiny run (tests/configs/cluster_tiny.yaml): 28 images, batch 4 -> 7 optimizer steps per epoch, 2 epochs;
``last.ckpt`` every 3 steps (3, 6, 9, 12) and at each epoch end (7, 14); mixup/cutmix, drop path, random erasing
and EMA all on, so any randomness that a restart replays differently would show. The SIGKILL case runs through
the ImageFolder and the FFCV DataModule.
"""
import os
import re
import signal
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lk_ablate.data.ffcv_writer import WriterConfig, write_ffcv
from lk_ablate.base.errors import ConfigError
from lk_ablate.base.files import temp_prefix
from lk_ablate.training.checkpoint_io import AtomicCheckpointIO
from lk_ablate.training.preemption import (ResumableCheckpoint, checkpoint_step, find_resume_checkpoint,
                                          resolve_ckpt_path)

from cluster_helpers import TEST_CONFIGS, assert_same, load_ckpt, start_cli, tail, training_state, wait_ok
from helpers import make_image_folder

STEPS = 14  # 2 epochs x 7 optimizer steps


def fit_args(data: list[str], out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(TEST_CONFIGS / "cluster_tiny.yaml"), *data,
            "--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "checkpoints"),
            "--trainer.logger", "false", *extra, "--ckpt_path", "auto"]


def probe(name: str, **init_args) -> list[str]:
    args = [f"--trainer.callbacks+=cluster_helpers.{name}"]
    for k, v in init_args.items():
        args += [f"--trainer.callbacks.{k}", str(v)]
    return args


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[str]]:
    """The tiny dataset as an ImageFolder and as FFCV .beton files: the data arguments of each DataModule."""
    root = make_image_folder(tmp_path_factory.mktemp("data"), classes=4, per_class=7, size=36)
    betons = {s: r["path"] for s, r in write_ffcv(root, root / "beton", cfg=WriterConfig(num_workers=1)).items()}
    return {"folder": ["--data.init_args.root", str(root)],
            "ffcv": ["--data", "lk_ablate.data.ffcv.FFCVDataModule", "--data.train_path", betons["train"],
                     "--data.val_path", betons["val"], "--data.batch_size", "4", "--data.num_workers", "1",
                     "--data.input_size", "32", "--data.re_prob", "0.25"]}


class Run:
    """One training (``lk_ablate fit``) in its own folder (``out``): its processes, one log per start."""

    def __init__(self, base: Path, name: str, data: list[str], *extra: str, **env: str) -> None:
        self.dir = base / name
        self.out, self.data = self.dir / "run", data
        self.dir.mkdir(parents=True)
        self.logs: list[Path] = []
        self.procs: list = []
        self.start(*extra, **env)

    def start(self, *extra: str, **env: str) -> None:
        """(Re)start with the same command line, plus ``extra`` (a probe) and ``env`` for this start only."""
        self.logs.append(self.dir / f"start{len(self.logs)}.log")
        self.procs.append(start_cli(fit_args(self.data, self.out, *extra), self.logs[-1], **env))

    @property
    def proc(self):
        return self.procs[-1]

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def final_state(self) -> dict:
        wait_ok(self.proc, self.log, timeout=300)
        return training_state(load_ckpt(self.out / "checkpoints" / "last.ckpt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """The interrupted trainings and the uninterrupted ones, run concurrently; each is interrupted as soon as it
    reaches its point, then restarted. Yields {name: Run} and the facts seen at each interruption."""
    base = tmp_path_factory.mktemp("preemption")
    seen: dict = {}
    folder, ffcv = data["folder"], data["ffcv"]
    straight = Run(base, "straight", folder)
    # ImageFolder, killed twice. First inside a save: the save of step 6 (epoch 0, before any validation) takes
    # 120 s to pickle. Then, restarted, by SIGKILL before step 11 (batch 5 of 7 in epoch 1; the newest checkpoint
    # then is the periodic one of step 9).
    kills = Run(base, "kills", folder, *probe("SlowSaveAt", step=6, marker=base / "mid_save.marker"))
    # FFCV DataModule (its own loader, order and augmentation code), SIGKILL before step 11.
    straight_ffcv = Run(base, "straight_ffcv", ffcv)
    kill_ffcv = Run(base, "kill_ffcv", ffcv, *probe("PauseAt", step=11, marker=base / "sigkill_ffcv.marker"))
    # SIGUSR1 (Lightning's SLURM auto-requeue) outside SLURM: SLURM variables as srun sets them, and an `scontrol`
    # that records the requeue and sends SIGTERM like SLURM. The signal comes from inside the optimizer step that
    # makes step 5, after the weights changed and before the EMA update and Lightning's step count.
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {base / "scontrol.calls"}\nkill -TERM $PPID\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = dict(SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                 SLURM_NODELIST="localhost", SLURM_JOB_ID="4242", SLURM_JOB_NAME="lk_test",
                 PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    usr1 = Run(base, "usr1", folder, *probe("SignalInStep", step=5), **slurm)
    all_runs = {"straight": straight, "kills": kills, "straight_ffcv": straight_ffcv, "kill_ffcv": kill_ffcv,
                "usr1": usr1}
    pending = {"mid_save": kills, "sigkill_ffcv": kill_ffcv, "usr1": usr1}
    try:
        while pending:
            time.sleep(0.05)
            for name, run in sorted(pending.items()):
                ckpts = run.out / "checkpoints"
                if name == "usr1":  # ends by itself: the requeue's SIGTERM stops it after the pre-emption save
                    if run.proc.poll() is None:
                        continue
                    assert run.proc.returncode == 0, tail(run.log)
                    seen["usr1_calls"] = (base / "scontrol.calls").read_text().split()
                    seen["usr1_hpc_step"] = checkpoint_step(run.out / "hpc_ckpt_1.ckpt")
                    seen["usr1_last_step"] = checkpoint_step(ckpts / "last.ckpt")
                    run.start()
                else:  # waiting in its probe: kill it there
                    if not (base / f"{name}.marker").exists():
                        assert run.proc.poll() is None, f"{name}: ended before its interruption\n{tail(run.log)}"
                        continue
                    if name == "mid_save":
                        seen["mid_save_partial"] = sorted(p.name for p in ckpts.iterdir()
                                                          if p.name.startswith(temp_prefix("last.ckpt")))
                    else:
                        seen[f"{name}_last_step"] = checkpoint_step(ckpts / "last.ckpt")
                    run.kill()
                    if name == "mid_save":
                        seen["mid_save_files"] = sorted(p.name for p in ckpts.iterdir() if p.suffix == ".ckpt")
                        seen["mid_save_last_step"] = load_ckpt(ckpts / "last.ckpt")["global_step"]  # a full load
                        run.start(*probe("PauseAt", step=11, marker=base / "sigkill.marker"))
                        pending["sigkill"] = run
                    else:
                        run.start()
                del pending[name]
        yield all_runs, seen
    finally:
        for run in all_runs.values():
            for proc in run.procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)


def resumed_from(log: Path) -> str:
    match = re.search(r"--ckpt_path auto: resuming from (\S+) \(global step (\d+)\)", log.read_text())
    assert match, tail(log)
    return f"{Path(match[1]).name}@{match[2]}"


def assert_resumed_exactly(run: Run, straight: Run) -> None:
    """Waits for the run's last start to finish; it must end bit-identical to the uninterrupted run."""
    resumed = run.final_state()
    assert resumed["global_step"] == STEPS
    assert_same(resumed, straight.final_state(), "resumed vs uninterrupted")


@pytest.mark.slow
@pytest.mark.ffcv
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(runs):
    all_runs, seen = runs
    run = all_runs["kills"]
    assert len(seen["mid_save_partial"]) == 1, "the new checkpoint goes to a temporary file beside last.ckpt"
    # The previous checkpoint -- the periodic one of step 3, written in the first epoch -- is intact and loads,
    # and the restart resumes from it.
    assert seen["mid_save_files"] == ["last.ckpt"] and seen["mid_save_last_step"] == 3
    assert_resumed_exactly(run, all_runs["straight"])  # (after one more kill, below)
    assert resumed_from(run.logs[1]) == "last.ckpt@3"
    assert not any(p.name.startswith(".") for p in (run.out / "checkpoints").iterdir()), \
        "the partial file is removed by the next save"


@pytest.mark.slow
@pytest.mark.ffcv
@pytest.mark.parametrize("loader", ["folder", "ffcv"])
def test_sigkill_mid_epoch_then_resume_is_exact(runs, loader):
    all_runs, seen = runs
    run, straight, key = ((all_runs["kills"], all_runs["straight"], "sigkill") if loader == "folder" else
                          (all_runs["kill_ffcv"], all_runs["straight_ffcv"], "sigkill_ffcv"))
    assert seen[f"{key}_last_step"] == 9
    assert_resumed_exactly(run, straight)
    assert resumed_from(run.log) == "last.ckpt@9"


@pytest.mark.slow
@pytest.mark.ffcv
def test_sigusr1_requeue_saves_at_a_step_boundary_and_resumes_exactly(runs):
    """The pre-emption checkpoint is taken at the end of the step during which the signal came (step 5), not inside
    it. (Lightning's own handler saves right there: resuming from that checkpoint repeats the step.)"""
    all_runs, seen = runs
    run = all_runs["usr1"]
    assert "requeueing after the current optimizer step" in run.logs[0].read_text()
    assert seen["usr1_calls"] == ["requeue", "4242"], tail(run.logs[0])
    assert seen["usr1_hpc_step"] == 5 and seen["usr1_last_step"] == 3
    assert_resumed_exactly(run, all_runs["straight"])
    assert resumed_from(run.log) == "hpc_ckpt_1.ckpt@5"


@pytest.mark.slow
@pytest.mark.ffcv
def test_checkpoint_files_of_an_uninterrupted_run(runs):
    # Top-k by val/top1 only where validation ran (epoch ends: steps 7, 14); last.ckpt holds the final step.
    straight = runs[0]["straight"]
    assert straight.final_state()["global_step"] == STEPS
    files = sorted(p.name for p in (straight.out / "checkpoints").iterdir())
    assert len(files) == 2 and files[1] == "last.ckpt"
    assert files[0] in ("epoch000-step0000007.ckpt", "epoch001-step0000014.ckpt")


# --- in-process units ---------------------------------------------------------------------------------------------
class _Boom:
    """Pickling it records the files in ``folder`` (the partial checkpoint is there by then), then fails."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[str] = []

    def __reduce__(self):
        self.seen.extend(sorted(os.listdir(self.folder)))
        raise RuntimeError("killed while pickling")


def test_atomic_checkpoint_io_replaces_or_keeps(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(5.0)}, "global_step": 1}, path)
    before = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    boom = _Boom(path.parent)
    with pytest.raises(RuntimeError, match="killed while pickling"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(5)}, "global_step": 2, "boom": boom}, path)
    assert [n for n in boom.seen if n != "last.ckpt"][0].startswith(temp_prefix(path))  # same folder
    assert path.read_bytes() == before and os.listdir(path.parent) == ["last.ckpt"]
    io.save_checkpoint({"state_dict": {"w": torch.ones(5)}, "global_step": 3}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(5))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fake_ckpt(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)
    return path


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    root, ckpts = tmp_path / "task", tmp_path / "task" / "checkpoints"
    assert find_resume_checkpoint([root], [ckpts]) is None  # first start: nothing yet
    _fake_ckpt(root / "hpc_ckpt_1.ckpt", 5)
    hpc2 = _fake_ckpt(root / "hpc_ckpt_2.ckpt", 8)
    last = _fake_ckpt(ckpts / "last.ckpt", 7)
    _fake_ckpt(ckpts / "epoch009-step0000099.ckpt", 99)  # top-k files are not resume points
    _fake_ckpt(ckpts / (temp_prefix("last.ckpt") + "x"), 50)  # a partial write
    (ckpts / "last-v1.ckpt").write_bytes(last.read_bytes()[:200])  # truncated (non-atomic writer killed)
    with pytest.warns(UserWarning, match="last-v1.ckpt for resumption: it is not a complete Lightning checkpoint"):
        assert find_resume_checkpoint([root], [ckpts]) == str(hpc2)  # SIGUSR1 checkpoint newer than periodic one
    _fake_ckpt(last, 12)
    (ckpts / "last-v1.ckpt").unlink()
    assert find_resume_checkpoint([root], [ckpts]) == str(last)  # a later periodic checkpoint wins (hard requeue)

    trainer = SimpleNamespace(default_root_dir=str(root), checkpoint_callbacks=[ModelCheckpoint(dirpath=ckpts)])
    assert resolve_ckpt_path("auto", trainer) == str(last)
    assert resolve_ckpt_path("/some/path.ckpt", trainer) == "/some/path.ckpt"
    trainer.checkpoint_callbacks = [ModelCheckpoint(dirpath=None)]
    with pytest.raises(ConfigError, match="set checkpoint.dirpath"):
        resolve_ckpt_path("auto", trainer)


def test_periodic_checkpoints_need_save_last():
    with pytest.raises(ConfigError, match="needs checkpoint.save_last: true"):
        ResumableCheckpoint(monitor="val/top1", every_n_train_steps=3, save_last=False)
    ResumableCheckpoint(monitor=None, every_n_train_steps=3, save_last=False)  # plain ModelCheckpoint behaviour
