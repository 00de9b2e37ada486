"""One run per checkpoint folder: a lease file that ``fit`` takes on its checkpoint folder and renews while it lives.

Two trainings writing into one folder corrupt each other (``last.ckpt`` from one, ``last-v1.ckpt`` from the other,
each resuming from the other's files). That happens for real when a requeued SLURM job starts while the old one
is still alive. The lease, ``<checkpoint folder>/.lk_ablate.lease``, is created with ``O_CREAT | O_EXCL`` (atomic
on NFS v3+ and Lustre, where ``flock`` is not dependable) by global rank 0 only, and holds the holder's host, pid,
SLURM job id and restart count and a heartbeat that a thread rewrites every ``HEARTBEAT_S`` seconds.

A ``fit`` that finds the lease:
- held by a live run (heartbeat younger than ``EXPIRY_S``) of another job: stops at once with one line naming it;
- held by an earlier start of the same SLURM job (a requeue: same job id, new ``SLURM_RESTART_COUNT``, maybe another
  host): waits until the old start's heartbeat expires, at most ``TAKEOVER_WAIT_S`` seconds, then takes over or
  stops with one line;
- left by a process that is gone (same host, pid not running) or whose heartbeat expired: takes it over.
Readers (``validate``, ``robustness``, ``analyze``, ``report``) take no lease and are never blocked.

Timings (environment overrides, for tests and slow file systems): ``LK_ABLATE_LEASE_HEARTBEAT_S`` (30),
``LK_ABLATE_LEASE_EXPIRY_S`` (120), ``LK_ABLATE_LEASE_WAIT_S`` (expiry + 30 = 150).
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import socket
import stat
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from ..base.files import atomic_write_text
from ..base.errors import ConfigError, WriteError

__all__ = ["LEASE_NAME", "Lease", "LeaseAwareSetup", "LeaseHeld", "acquire_lease", "holds_only_lease",
           "is_global_rank_zero", "lease_timings", "read_lease"]

LEASE_NAME = ".lk_ablate.lease"


class LeaseHeld(ConfigError):
    """The checkpoint folder belongs to another live run."""


@dataclass(frozen=True)
class Timings:
    heartbeat_s: float
    expiry_s: float
    wait_s: float


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):  # also NaN
        raise ConfigError(f"{name}={text!r} is not a number of seconds; unset it (default {default:g}) or give one, "
                          f"e.g. {name}={default:g}")
    return value


def lease_timings() -> Timings:
    hb = _seconds("LK_ABLATE_LEASE_HEARTBEAT_S", 30)
    expiry = _seconds("LK_ABLATE_LEASE_EXPIRY_S", 120)
    wait = _seconds("LK_ABLATE_LEASE_WAIT_S", expiry + 30)
    if not 0 < hb < expiry:
        raise ConfigError(f"LK_ABLATE_LEASE_HEARTBEAT_S ({hb}) must be > 0 and below LK_ABLATE_LEASE_EXPIRY_S "
                          f"({expiry})")
    return Timings(hb, expiry, wait)


def _identity() -> dict[str, Any]:
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": job,
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)}


def read_lease(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The lease of ``folder`` (None when there is none; an unreadable one reads as ``{}``: being written)."""
    try:
        with open(os.path.join(folder, LEASE_NAME)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def describe(info: dict[str, Any]) -> str:
    if "host" not in info:
        return "an unreadable lease file"
    job = f", SLURM job {info['slurm_job_id']} restart {info.get('restart_count', 0)}" if info.get("slurm_job_id") else ""
    age = time.time() - float(info.get("heartbeat", 0))
    return f"host {info.get('host')} pid {info.get('pid')}{job}, heartbeat {age:.0f} s ago"


class Lease:
    """A held lease: renewed by a daemon thread until :meth:`release` (also run at interpreter exit)."""

    def __init__(self, folder: str, info: dict[str, Any], timings: Timings) -> None:
        self.folder, self.path, self.info, self.timings = folder, os.path.join(folder, LEASE_NAME), info, timings
        self.lost: dict[str, Any] | None = None  # the lease's content when another run took it from us
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lk_ablate-lease-{folder}", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _beat(self) -> None:
        while not self._stop.wait(self.timings.heartbeat_s):
            current = read_lease(self.folder)
            if current and current.get("token") != self.info["token"]:
                self.lost = current
                return
            self.info = {**self.info, "heartbeat": time.time(), "beats": self.info.get("beats", 0) + 1}
            with contextlib.suppress(OSError):  # a missed beat is retried; expiry allows several
                atomic_write_text(self.path, json.dumps(self.info))

    def check(self) -> None:
        """Raise if another run took the lease over (this run's heartbeats had stopped for ``EXPIRY_S``)."""
        if self.lost is not None:
            raise LeaseHeld(f"checkpoint folder {self.folder} was taken over by another run ({describe(self.lost)}) "
                            "while this run's heartbeat was stalled; stopping so the two do not mix checkpoints")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        current = read_lease(self.folder)
        if current and current.get("token") == self.info["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _create(path: str, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as e:  # read-only folder, no permission: one line naming the file
        raise _unwritable(path, e) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk creates the file and refuses its content
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise _unwritable(path, e) from None
    return True


def _unwritable(path: str, e: OSError) -> WriteError:
    return WriteError(f"cannot create the lease file {path}: {e.strerror} (errno "
                      f"{errno.errorcode.get(e.errno, e.errno)}); set checkpoint.dirpath to a writable folder with "
                      "free space")


def _dead_or_expired(info: dict[str, Any], timings: Timings) -> str | None:
    """Why the lease ``info`` may be taken over, or None while its holder lives."""
    if "host" not in info:
        return "it is unreadable (its writer died while creating it)"
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        if info["pid"] == os.getpid():
            return "held by this process"
        if not _pid_alive(info["pid"]):
            return "its process is gone"
    age = time.time() - float(info.get("heartbeat", 0))
    if age > timings.expiry_s:
        return f"its heartbeat expired {age:.0f} s ago"
    return None


def acquire_lease(folder: str | os.PathLike, timings: Timings | None = None) -> Lease:
    """Take the lease on ``folder`` (see the module docstring); raises LeaseHeld naming the live holder."""
    timings = timings or lease_timings()
    folder = os.path.abspath(os.fspath(folder))
    path = os.path.join(folder, LEASE_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create checkpoint folder {folder}: {e.strerror} (errno "
                         f"{errno.errorcode.get(e.errno, e.errno)}); set checkpoint.dirpath to a writable folder") \
            from None
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        kind = "folder" if os.path.isdir(path) and not os.path.islink(path) else "symbolic link" \
            if os.path.islink(path) else "special file"
        raise ConfigError(f"{path} is a {kind}, not lk_ablate's lease file: remove it (fit creates that file itself "
                        "and removes it when it ends)")
    me = _identity()
    info = {**me, "token": uuid.uuid4().hex, "started": time.time(), "heartbeat": time.time(), "beats": 0}
    deadline = time.monotonic() + timings.wait_s
    announced = False
    unreadable_since: float | None = None
    while True:
        if _create(path, info):
            # Two contenders that both removed an expired lease: only one O_EXCL create succeeds, but the loser may
            # have removed the winner's fresh file before creating its own. Re-reading tells the winner apart.
            time.sleep(0.05)
            if (read_lease(folder) or {}).get("token") == info["token"]:
                return Lease(folder, info, timings)
            continue
        held = read_lease(folder)
        if held is None:
            continue  # released between our create and read
        if held == {}:  # being written by its creator right now, or its creator died while writing it
            unreadable_since = unreadable_since or time.monotonic()
            if time.monotonic() - unreadable_since < 2.0:
                time.sleep(0.1)
                continue
            held = {"heartbeat": 0.0}
        else:
            unreadable_since = None
        why = _dead_or_expired(held, timings)
        if why is not None:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"taking over the lease on {folder} ({why}): {describe(held)}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        same_job = me["slurm_job_id"] is not None and held.get("slurm_job_id") == me["slurm_job_id"]
        if not same_job or time.monotonic() > deadline:
            waited = f" after waiting {timings.wait_s:.0f} s for it to expire" if same_job else ""
            raise LeaseHeld(f"checkpoint folder {folder} is in use by another run ({describe(held)}){waited}; "
                            "two runs in one folder corrupt each other's checkpoints: wait for it to end or set "
                            f"another checkpoint.dirpath (a killed run's lease expires {timings.expiry_s:.0f} s "
                            "after its last heartbeat)")
        if not announced:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"waiting up to {timings.wait_s:.0f} s for the previous start of this SLURM job to "
                           f"release {folder} ({describe(held)})")
            announced = True
        time.sleep(min(1.0, timings.heartbeat_s))


def is_global_rank_zero() -> bool:
    """Whether this process is global rank 0, from the launchers' environment (known before the strategy starts:
    Lightning's DDP children, torchrun, srun and MPI set these)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return getattr(rank_zero_only, "rank", 0) == 0 and node == "0"



def holds_only_lease(folder: str | os.PathLike | None) -> bool:
    """True when ``folder`` exists and its one entry is this run's lease file (a fresh run's checkpoint folder)."""
    try:
        return folder is not None and os.listdir(folder) == [LEASE_NAME]
    except OSError:
        return False


class LeaseAwareSetup:
    """Mixin for ModelCheckpoint callbacks: the lease is created in the checkpoint folder before ``fit`` sets the
    callbacks up, so ModelCheckpoint's "Checkpoint directory ... exists and is not empty" would greet every fresh
    run. That one warning is dropped when the lease is the folder's only file; every other warning of the setup
    (and this one, for a folder that holds anything else) is shown as it was raised."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().setup(trainer, pl_module, stage)  # type: ignore[misc]
        fresh = holds_only_lease(getattr(self, "dirpath", None))
        for w in caught:
            if fresh and "exists and is not empty" in str(w.message):
                continue
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
