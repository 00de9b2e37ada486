"""A real one-node SLURM cluster for tests: munged + slurmctld + slurmd under a temporary folder.

Debian's slurm-wlm and munge (installed by scripts/setup.sh) run it; nothing is read from or written to the
system's own SLURM/munge set-up: the cluster has its own munge key and socket, its own slurm.conf (free ports,
state and spool folders in the temp folder), and clients reach it through ``SLURM_CONF``. Jobs run as the
current user. Tests that use the ``slurm_cluster`` fixture FAIL when SLURM or munge is missing.

    def test_x(slurm_cluster):  # the fixture is registered for all tests by tests/conftest.py (pytest_plugins)
        job = slurm_cluster.sbatch("script.sh", "--array=0-1")
        slurm_cluster.wait_done(job, timeout=60)
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
# Job states after which a job (array task) will not run again by itself.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    """Starts and stops the daemons; small helpers to submit jobs and wait for them.

    ``cred_expire``: a requeued job waits this long before it may run again (SLURM's default is 120 s).
    ``kill_wait``: seconds between SIGTERM and SIGKILL when a job is cancelled or requeued.
    """

    def __init__(self, root: Path, cred_expire: int = 6, kill_wait: int = 5) -> None:
        self.bin = {b: shutil.which(b) or shutil.which(b, path="/usr/sbin:/usr/local/sbin:/sbin") for b in BINARIES}
        missing = [b for b, path in self.bin.items() if path is None]
        if missing:
            raise RuntimeError(f"SLURM/munge programs not found: {', '.join(missing)}; install them with "
                               f"scripts/setup.sh (Debian packages slurm-wlm and munge)")
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.cred_expire, self.kill_wait = cred_expire, kill_wait
        self._pids: dict[str, Path] = {}

    # --- environment for clients and jobs ----------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        for k in list(env):  # a test run inside a SLURM job must not leak that job's identity into ours
            if k.startswith("SLURM_") and k != "SLURM_CONF":
                del env[k]
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    # --- daemons -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        for d in ("munge", "state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        subprocess.run([self.bin["mungekey"], "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        subprocess.run([self.bin["munged"], "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                        f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                        f"--log-file={self.root / 'log' / 'munged.log'}",
                        f"--seed-file={self.root / 'munge' / 'munged.seed'}"], check=True, capture_output=True)
        self._pids["munged"] = self.root / "munge" / "munged.pid"
        self._write_conf()
        for daemon in ("slurmctld", "slurmd"):
            result = subprocess.run([self.bin[daemon], "-f", str(self.conf)], env=self.env, capture_output=True,
                                    text=True)
            self._pids[daemon] = self.root / f"{daemon}.pid"
            if result.returncode != 0:
                raise RuntimeError(f"{daemon} did not start: {result.stderr}\n{self.logs(daemon)}")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the SLURM node did not become idle within {timeout} s (state {state!r})\n"
                           f"{self.logs('slurmctld')}\n{self.logs('slurmd')}")

    def _write_conf(self) -> None:
        ctld_port, d_port = _free_ports(2)
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=lktest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmUser={getpass.getuser()}", f"SlurmdUser={getpass.getuser()}",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={d_port}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "MpiDefault=none", "MailProg=/bin/true", "ReturnToService=2",
            # React at once: pending (e.g. requeued) jobs are tried every second, finished ones stay visible.
            "SchedulerType=sched/builtin", "SchedulerParameters=sched_interval=1",
            f"KillWait={self.kill_wait}", "MinJobAge=600", "InactiveLimit=0",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (by the pids in their pid files)."""
        if self.conf.exists():
            self.run("scancel", "--full", "--user", str(os.getuid()), check=False)
            time.sleep(0.5)
        pids = []
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self._pids.get(name)
            try:
                pids.append(int(pid_file.read_text().split()[0]))
            except (AttributeError, OSError, ValueError, IndexError):
                continue
        _terminate(pids)

    def logs(self, daemon: str) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return f"--- {path} ---\n" + (path.read_text()[-4000:] if path.exists() else "(none)")

    # --- jobs ----------------------------------------------------------------------------------------------------
    def sbatch(self, *args: str, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> str:
        """Submit; returns the job id (of the array)."""
        full_env = self.env | (env or {})
        out = subprocess.run(["sbatch", "--parsable", *args], env=full_env, cwd=cwd, capture_output=True, text=True,
                             timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {out.stderr}")
        return out.stdout.strip().split(";")[0]

    def job_states(self, job: str) -> dict[str, dict[str, str]]:
        """``{<job>_<task> or <job>: fields}`` of ``scontrol show job`` for a job or every task of an array."""
        out = self.run("scontrol", "show", "job", "--oneliner", job, check=False).stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" not in fields:
                continue
            key = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if fields.get("ArrayTaskId") not in (None, "N/A")
                   else fields["JobId"])
            jobs[key] = fields
        return jobs

    def wait_done(self, job: str, timeout: float, expect_tasks: int | None = None, poll: float = 0.5,
                  ) -> dict[str, dict[str, str]]:
        """Wait until every task of ``job`` is in a final state (and, with ``expect_tasks``, all tasks exist)."""
        deadline = time.monotonic() + timeout
        states: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            states = self.job_states(job)
            done = [k for k, f in states.items() if f.get("JobState") in FINAL_STATES and "[" not in k]
            if states and len(done) == len(states) and (expect_tasks is None or len(done) >= expect_tasks):
                return states
            time.sleep(poll)
        summary = {k: f.get("JobState") for k, f in states.items()}
        raise TimeoutError(f"job {job} not finished after {timeout} s: {summary}\n{self.logs('slurmctld')}")

    def wait_state(self, task: str, states: Sequence[str], timeout: float, poll: float = 0.2) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            fields = self.job_states(task).get(task, {})
            if fields.get("JobState") in states:
                return fields
            time.sleep(poll)
        raise TimeoutError(f"{task} not in {list(states)} after {timeout} s: {fields.get('JobState')}")


def _terminate(pids: list[int], timeout: float = 3) -> None:
    """SIGTERM, then SIGKILL for whatever still runs after ``timeout`` seconds (its state is thrown away anyway)."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster (partition ``debug``, all CPUs of this machine), stopped after the session."""
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()
