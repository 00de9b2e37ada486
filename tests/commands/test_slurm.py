"""The SLURM sweep on a real one-node SLURM cluster (slurm_cluster.py): the training array through slurm/submit.sh,
SIGUSR1 pre-emption with Lightning's auto-requeue, a hard requeue, and the evaluation array.

One sweep runs for all tests here: 2 configs (the tiny 1000-class demo ConvNeXt with kernel 3 and 5) x 2 seeds = 4
array tasks of 10 optimizer steps (2 epochs x 5). Task 1 (k3, seed 1) gets ``scancel --full -s USR1`` while it is
paused before step 7; task 3 (k5, seed 1) gets ``scontrol requeue`` there (its newest checkpoint: step 6, mid-epoch).
(In a real job training goes on until SLURM's SIGTERM follows the requeue, and a periodic checkpoint written in that
time is newer than the pre-emption one, so the restart takes it; the test holds task 1 still to see the hpc path.)
"""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lk_ablate.robustness.benchmarks import load_wnids
from lk_ablate.base.results import read_results
from lk_ablate.training.preemption import checkpoint_step

import slurm_cluster as slurm_cluster_module
from helpers import test_pythonpath
from cluster_helpers import REPO, TEST_CONFIGS, TESTS, load_ckpt, make_wnid_folder, tail, wait_for

SUBMIT = REPO / "slurm" / "submit.sh"
STEPS = 10
TASKS = {0: ("slurm_k3", 0), 1: ("slurm_k3", 1), 2: ("slurm_k5", 0), 3: ("slurm_k5", 1)}
USR1_TASK, REQUEUE_TASK, PAUSE_STEP = 1, 3, 7


def write_cluster_env(path: Path, configs: list[Path], seeds: list[int], root: Path) -> Path:
    path.write_text("\n".join([
        "LK_PARTITION=debug", "LK_ACCOUNT=", "LK_QOS=", "LK_TIME=00:15:00", "LK_EVAL_TIME=00:10:00", "LK_MAX_PARALLEL=",
        "LK_NODES=1", "LK_GPUS_PER_NODE=0", "LK_CPUS_PER_TASK=1", "LK_MEM_PER_NODE=", "LK_EVAL_GPUS=0",
        f"LK_CONFIGS=({' '.join(str(c) for c in configs)})", f"LK_SEEDS=({' '.join(map(str, seeds))})",
        f"LK_OUTPUT_ROOT={root}", f"LK_PYTHON={sys.executable}",
        # One thread per task; tests/ importable for the probe callback of the tiny config.
        f'LK_SETUP="export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONPATH={test_pythonpath()}"',
        "LK_FIT_ARGS=()", "LK_EVAL_ARGS=(--data.num_workers 0)", ""]))
    return path


def submit(cluster, mode: str, env_file: Path, *sbatch_args: str) -> str:
    out = subprocess.run(["bash", str(SUBMIT), mode, "--parsable", *sbatch_args], env=cluster.env |
                         {"LK_CLUSTER_ENV": str(env_file)}, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def task_dir(root: Path, task: int) -> Path:
    name, seed = TASKS[task]
    return root / name / f"seed{seed}"


@pytest.fixture(scope="module")
def sweep(slurm_cluster, tmp_path_factory):
    cluster = slurm_cluster
    base = tmp_path_factory.mktemp("sweep")
    data = make_wnid_folder(base / "data", list(load_wnids("imagenet_1k")))
    template = yaml.safe_load((TEST_CONFIGS / "slurm_tiny.yaml").read_text())
    configs = []
    for k in (3, 5):
        cfg = copy.deepcopy(template)
        cfg["model"]["kernel_size"] = k
        cfg["data"]["init_args"]["root"] = str(data)
        cfg["trainer"]["callbacks"][0]["init_args"]["imagenet_r"] = str(data / "val")
        configs.append(base / "configs" / f"slurm_k{k}.yaml")
        configs[-1].parent.mkdir(exist_ok=True)
        configs[-1].write_text(yaml.safe_dump(cfg))
    root = base / "runs"
    env_file = write_cluster_env(base / "cluster.env", configs, [0, 1], root)
    for task in (USR1_TASK, REQUEUE_TASK):
        task_dir(root, task).mkdir(parents=True)
        # Task 1 waits again after its pre-emption save, until SLURM's SIGTERM: no periodic save can follow it.
        (task_dir(root, task) / "pause.json").write_text(json.dumps({"step": PAUSE_STEP,
                                                                      "hold_next": task == USR1_TASK}))

    job = submit(cluster, "train", env_file)
    seen = {"job": job, "root": root, "configs": configs, "env_file": env_file}
    # SIGUSR1 to task 1 while it waits before step 7 (to the batch shell and the srun step, as a time limit would).
    usr1_dir = task_dir(root, USR1_TASK)
    wait_for((usr1_dir / "paused").exists, 240, f"task {USR1_TASK} at step {PAUSE_STEP}")
    cluster.run("scancel", "--full", "-s", "USR1", f"{job}_{USR1_TASK}")
    log = usr1_dir / "train.slurm.out"
    wait_for(lambda: "requeueing after the current optimizer step" in log.read_text(), 60, "the SIGUSR1 handler")
    (usr1_dir / "release").touch()
    # A hard requeue of task 3 at the same point: no signal, no pre-emption checkpoint.
    requeue_dir = task_dir(root, REQUEUE_TASK)
    wait_for((requeue_dir / "paused").exists, 240, f"task {REQUEUE_TASK} at step {PAUSE_STEP}")
    seen["requeue_last_step"] = checkpoint_step(requeue_dir / "checkpoints" / "last.ckpt")
    cluster.run("scontrol", "requeue", f"{job}_{REQUEUE_TASK}")
    try:
        seen["states"] = cluster.wait_done(job, timeout=300, expect_tasks=len(TASKS))
    except TimeoutError as e:
        logs = "\n".join(f"--- task {t} ---\n{tail(task_dir(root, t) / 'train.slurm.out', 30)}" for t in TASKS)
        raise AssertionError(f"{e}\n{logs}") from None
    return seen


@pytest.mark.slow
@pytest.mark.slurm
def test_every_array_task_finishes_with_its_checkpoint_and_results(sweep):
    assert sorted(sweep["states"]) == [f"{sweep['job']}_{t}" for t in TASKS]
    for key, fields in sweep["states"].items():
        assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), key
    for task, (name, seed) in TASKS.items():
        folder = task_dir(sweep["root"], task)
        ckpt = load_ckpt(folder / "checkpoints" / "last.ckpt")
        assert ckpt["global_step"] == STEPS
        assert ckpt["lk_ablate"]["kernel_sizes"] == [int(name[-1])] * 4
        # The run's saved config: the array map's seed, the task's folders.
        config = yaml.safe_load(next(folder.glob("lightning_logs/version_0/config.yaml")).read_text())
        assert config["seed_everything"] == seed and config["ckpt_path"] == "auto"
        assert config["checkpoint"]["dirpath"] == str(folder / "checkpoints")
        results = read_results(folder / "checkpoints" / "last.robustness.json")
        assert results["checkpoint"]["global_step"] == STEPS and sorted(results["weights"]) == ["ema", "raw"]
        assert results["weights"]["raw"]["imagenet_r"]["n"] == 200
        assert results["model"]["kernel_sizes"] == [int(name[-1])] * 4
    # The two seeds of a config trained differently (different data order, augmentation and init).
    w = [load_ckpt(task_dir(sweep["root"], t) / "checkpoints" / "last.ckpt")["state_dict"]["model.head.fc.weight"]
         for t in (0, 1)]
    assert not w[0].equal(w[1])


def starts(folder: Path) -> list[str]:
    return re.findall(r"restart (\d+)", (folder / "slurm_starts.log").read_text())


@pytest.mark.slow
@pytest.mark.slurm
def test_sigusr1_saves_a_preemption_checkpoint_requeues_and_finishes(sweep):
    folder = task_dir(sweep["root"], USR1_TASK)
    assert starts(folder) == ["0", "1"]  # requeued once, by the training process itself (scontrol requeue)
    log = (folder / "train.slurm.out").read_text()
    hpc = folder / "hpc_ckpt_1.ckpt"
    assert checkpoint_step(hpc) == PAUSE_STEP + 1  # saved after the step during which the signal arrived
    assert log.count("starting from scratch") == 1
    assert f"--ckpt_path auto: resuming from {hpc} (global step {PAUSE_STEP + 1})" in log
    assert "Restored all states from the checkpoint" in log


@pytest.mark.slow
@pytest.mark.slurm
def test_hard_requeue_resumes_from_the_last_periodic_checkpoint(sweep):
    folder = task_dir(sweep["root"], REQUEUE_TASK)
    assert sweep["requeue_last_step"] == 6  # periodic, mid-epoch (epoch 1 has steps 5..9)
    assert starts(folder) == ["0", "1"]
    log = (folder / "train.slurm.out").read_text()
    # scontrol requeue's SIGTERM stops the run at the step where it waits (7) after saving last.ckpt (issue 13);
    # the requeued start resumes there, and the stopped start reported exit status 143
    assert f"--ckpt_path auto: resuming from {folder / 'checkpoints' / 'last.ckpt'} (global step 7)" in log
    assert "stopped by a signal, exit status 143" in log
    assert log.count("starting from scratch") == 1 and not list(folder.glob("hpc_ckpt_*.ckpt"))


@pytest.mark.slow
@pytest.mark.slurm
def test_evaluation_array_scores_the_existing_checkpoints(sweep, slurm_cluster):
    """``slurm/submit.sh eval`` for tasks 0 and 3: ``lk_ablate robustness`` on each task's last.ckpt reproduces the
    numbers that the training's RobustnessEvaluation callback wrote for the same weights."""
    tasks = (0, 3)
    before = {}
    for t in tasks:  # the callback's results, removed so that the evaluation must write them again
        path = task_dir(sweep["root"], t) / "checkpoints" / "last.robustness.json"
        before[t] = read_results(path)
        path.unlink()
    job = submit(slurm_cluster, "eval", sweep["env_file"], f"--array={','.join(map(str, tasks))}")
    states = slurm_cluster.wait_done(job, timeout=180, expect_tasks=len(tasks))
    for t in tasks:
        folder = task_dir(sweep["root"], t)
        assert states[f"{job}_{t}"]["JobState"] == "COMPLETED", tail(folder / "eval.slurm.out")
        after = read_results(folder / "checkpoints" / "last.robustness.json")
        assert after["checkpoint"]["global_step"] == STEPS
        for w in ("raw", "ema"):
            assert after["weights"][w]["imagenet_r"] == before[t]["weights"][w]["imagenet_r"]


@pytest.mark.slow
@pytest.mark.slurm
def test_submit_prints_the_sweeps_dashboard_command(slurm_cluster, tmp_path):
    """Before handing over to sbatch, submit.sh prints (stderr) the `lk_ablate dashboard` command of the W&B project
    and groups the configs log to, as `lk_ablate fit` resolves them (LK_FIT_ARGS included); with --parsable stdout is
    the job id alone and nothing is printed. Jobs are submitted held and cancelled."""
    configs = []
    for model in ("convnext_demo", "replknet_3b"):  # RepLKNet-3B's runs are in RepLKNet-31B's group
        configs.append(tmp_path / f"{model}.yaml")
        configs[-1].write_text(yaml.safe_dump({
            "trainer": {"logger": str(REPO / "configs" / "base" / "logger_wandb.yaml")},
            "model": {"model_name": model, "num_classes": 10},
            "data": {"class_path": "lk_ablate.data.ImageFolderDataModule", "init_args": {"root": "/nowhere"}}}))
    env_file = write_cluster_env(tmp_path / "cluster.env", configs, [0], tmp_path / "runs")
    env_file.write_text(env_file.read_text() + "LK_FIT_ARGS=(--trainer.logger.init_args.project sweep_test)\n")
    env = slurm_cluster.env | {"LK_CLUSTER_ENV": str(env_file)}
    out = subprocess.run(["bash", str(SUBMIT), "train", "--hold"], env=env, capture_output=True, text=True,
                         timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    job = re.fullmatch(r"Submitted batch job (\d+)\n", out.stdout).group(1)
    slurm_cluster.run("scancel", job)
    assert out.stderr.splitlines() == [
        "lk_ablate: once the runs have logged to W&B, build (or update) the sweep's dashboard with:",
        "  lk_ablate dashboard --wandb.project sweep_test --wandb.group '[convnext_demo-kernel,replknet_31b-kernel]'"]
    out = subprocess.run(["bash", str(SUBMIT), "eval", "--hold", "--parsable"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0 and re.fullmatch(r"\d+(;\w+)?\n", out.stdout) and out.stderr == "", out
    slurm_cluster.run("scancel", out.stdout.strip().split(";")[0])


def test_task_map_of_the_paper_sweep(tmp_path):
    """slurm/cluster.env as shipped: the 7 configs of the paper's kernel ablations; task t -> (config t // S,
    seed t % S) for S seeds."""
    shipped = (REPO / "slurm" / "cluster.env").read_text()
    env = dict(os.environ, LK_CLUSTER_ENV=str(tmp_path / "cluster.env"))
    (tmp_path / "cluster.env").write_text(shipped + f"\nLK_SEEDS=(0 1 2)\nLK_OUTPUT_ROOT={tmp_path / 'runs'}\n")
    out = subprocess.run(["bash", str(SUBMIT), "list"], env=env, capture_output=True, text=True, cwd=tmp_path,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    names = ["convnext_k3", "convnext_k7", "convnext_k13", "convnext_k31", "convnext_k51", "replknet_31b",
             "replknet_3b"]
    expected = [f"{t} configs/{names[t // 3]}.yaml seed={t % 3} {tmp_path / 'runs' / names[t // 3] / f'seed{t % 3}'}"
                for t in range(21)]
    assert out.stdout.splitlines() == expected
    assert all((REPO / "configs" / f"{n}.yaml").is_file() for n in names)


def test_missing_slurm_is_an_error_naming_the_fix(tmp_path, monkeypatch):
    """Without slurm-wlm/munge the cluster fixture fails (pytest.fail), it does not skip."""
    monkeypatch.setattr(slurm_cluster_module.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match=r"SLURM/munge programs not found: munged, .* scripts/setup\.sh"):
        slurm_cluster_module.SlurmCluster(tmp_path)
