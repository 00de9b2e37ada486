"""One run per checkpoint folder (training/lease.py) and truthful exit codes, with real processes.

- A second ``lk_ablate fit`` on a folder whose lease is live stops at start with one line naming the holder.
- SIGTERM stops a run at the next optimizer step after saving ``last.ckpt`` and exits 143; Ctrl-C (SIGINT) 130.
- An expired lease (heartbeat too old, or its process gone) is taken over; a requeued start of the same SLURM job
  waits for the old start's heartbeat to expire, at most ``LK_ABLATE_LEASE_WAIT_S``, then errors.
- Temporary files of another live writer are never removed as stale.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lk_ablate.base.files import remove_stale_temps, temp_prefix
from lk_ablate.cli import main
from lk_ablate.training.lease import LEASE_NAME, LeaseHeld, Timings, acquire_lease, read_lease
from lk_ablate.training.preemption import checkpoint_step

from cluster_helpers import TEST_CONFIGS, cli_env, start_cli, tail, wait_for
from helpers import make_image_folder


def fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(TEST_CONFIGS / "cluster_tiny.yaml"), "--data.init_args.root", str(data),
            "--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "checkpoints"),
            "--trainer.logger", "false", *extra, "--ckpt_path", "auto"]


def pause_at(step: int, marker: Path) -> list[str]:
    return ["--trainer.callbacks+=cluster_helpers.PauseAt", "--trainer.callbacks.step", str(step),
            "--trainer.callbacks.marker", str(marker)]


@pytest.mark.slow
def test_second_fit_is_refused_and_signals_exit_with_128_plus_signum(tmp_path, capsys, monkeypatch):
    for k in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(k)
    data = make_image_folder(tmp_path / "data", classes=4, per_class=7, size=36)
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    # A: paused before optimizer step 5 (last.ckpt was written at step 3 by the periodic save).
    marker = tmp_path / "paused5"
    a = start_cli(fit_args(data, out, *pause_at(5, marker)), tmp_path / "a.log")
    try:
        wait_for(marker.exists, 120, "run A to pause", a, tmp_path / "a.log")
        held = read_lease(ckpts)
        assert held["pid"] == a.pid and held["host"] == socket.gethostname()
        # B (this test's process): same folder, while A lives.
        capsys.readouterr()
        rc = main(fit_args(data, out))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, err
        assert err[-1].startswith(f"lk_ablate: error: checkpoint folder {ckpts} is in use by another run (host "
                                  f"{socket.gethostname()} pid {a.pid}, heartbeat"), err[-1]
        assert checkpoint_step(ckpts / "last.ckpt") == 3  # B wrote nothing
        os.kill(a.pid, signal.SIGTERM)
        assert a.wait(timeout=60) == 143, tail(tmp_path / "a.log")
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    assert checkpoint_step(ckpts / "last.ckpt") == 5, "SIGTERM saves the state at the step where it stops"
    assert not (ckpts / LEASE_NAME).exists(), "the lease is released when the run ends"
    # A again, resumed; Ctrl-C before step 8 (periodic saves at 6, 7 = epoch end, 9) -> saved at 8, exit 130.
    marker = tmp_path / "paused8"
    a2 = start_cli(fit_args(data, out, *pause_at(8, marker)), tmp_path / "a2.log")
    try:
        wait_for(marker.exists, 120, "resumed run to pause", a2, tmp_path / "a2.log")
        os.kill(a2.pid, signal.SIGINT)
        assert a2.wait(timeout=60) == 130, tail(tmp_path / "a2.log")
    finally:
        if a2.poll() is None:
            os.killpg(a2.pid, signal.SIGKILL)
    assert "resuming from" in (tmp_path / "a2.log").read_text()
    assert checkpoint_step(ckpts / "last.ckpt") == 8


FAST = Timings(heartbeat_s=0.2, expiry_s=1.0, wait_s=4.0)

HOLDER = """
import sys, time
from lk_ablate.training.lease import Timings, acquire_lease
lease = acquire_lease(sys.argv[1], Timings(heartbeat_s=0.2, expiry_s=1.0, wait_s=1.0))
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], env=cli_env(**env),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _write_lease(folder: Path, **info) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LEASE_NAME).write_text(json.dumps({"token": "old", "beats": 3, **info}))


@pytest.mark.slow
def test_expired_or_orphaned_leases_are_taken_over_live_ones_are_not(tmp_path, monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(k, raising=False)
    folder = tmp_path / "ckpts"
    # another host, heartbeat 5 s old (expiry 1 s): taken over at once
    _write_lease(folder, host="node-17", pid=1234, slurm_job_id=None, heartbeat=time.time() - 5)
    lease = acquire_lease(folder, FAST)
    assert read_lease(folder)["token"] == lease.info["token"] and read_lease(folder)["pid"] == os.getpid()
    lease.release()
    assert read_lease(folder) is None
    # this host, a pid that is not running, fresh heartbeat: its process is gone, taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lease(folder, host=socket.gethostname(), pid=dead.pid, slurm_job_id=None, heartbeat=time.time())
    acquire_lease(folder, FAST).release()
    # a live holder (another process, heartbeating): refused at once, naming it, and the heartbeat advances
    holder = _holder(folder, 30)
    try:
        with pytest.raises(LeaseHeld, match=rf"in use by another run \(host {socket.gethostname()} pid {holder.pid},"):
            acquire_lease(folder, FAST)
        beats = read_lease(folder)["beats"]
        time.sleep(0.6)
        assert read_lease(folder)["beats"] > beats
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_requeued_job_waits_for_the_old_start_then_takes_over_or_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    folder = tmp_path / "ckpts"
    # The old start (restart 0) on another host stopped beating just now: the requeue waits until the heartbeat is
    # older than the expiry (1 s), then takes over.
    _write_lease(folder, host="node-3", pid=99, slurm_job_id="4242", restart_count=0, heartbeat=time.time())
    t0 = time.monotonic()
    lease = acquire_lease(folder, FAST)
    waited = time.monotonic() - t0
    assert 1.0 <= waited < FAST.wait_s, waited
    assert read_lease(folder)["restart_count"] == 1
    lease.release()
    # The old start still beats: after waiting at most wait_s, one line.
    holder = _holder(folder, 30, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
    try:
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=r"SLURM job 4242 restart 0, heartbeat .* after waiting 4 s"):
            acquire_lease(folder, FAST)
        assert FAST.wait_s <= time.monotonic() - t0 < FAST.wait_s + 2
    finally:
        holder.kill()
        holder.wait()


def test_stale_temp_cleanup_spares_live_writers(tmp_path):
    target = tmp_path / "last.ckpt"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    try:
        names = {"live": f"{temp_prefix(target)}{host}-{live.pid}-abc", "gone": f"{temp_prefix(target)}{host}-{gone.pid}-def",
                 "foreign": f"{temp_prefix(target)}othernode-{live.pid}-ghi"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        removed = remove_stale_temps(target)
        assert [Path(p).name for p in removed] == [names["gone"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["foreign"]])
    finally:
        live.kill()
        live.wait()
