"""W&B in offline mode: run name/tags/group/job type, the full config, the run id through checkpoints, robustness
summary and table. Everything is read back from the offline run files (``run-<id>.wandb``, ``files/media``)."""
import json
import struct
import time
import zlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import WandbLogger

from lk_ablate.cli import main
from lk_ablate.base.results import flatten_metrics, make_results
from lk_ablate.training.wandb import (CHECKPOINT_KEY, log_robustness, read_run_id, resume_checkpoint,
                                      robustness_table_rows, run_identity)

from helpers import make_image_folder

REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).resolve().parents[1] / "configs" / "wandb_tiny.yaml"


# --- reading offline runs ---------------------------------------------------------------------------------
def _records(path: Path):
    """Protobuf records of a ``.wandb`` file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose records
    carry (crc32 of type+data, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf = path.read_bytes()
    assert buf[:4] == b":W&B" and struct.unpack("<H", buf[4:6])[0] == 0xBEE1
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(buf):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, n, kind = struct.unpack("<IHB", buf[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += block - pos % block
            continue
        if pos + 7 + n > len(buf):  # still being written
            return
        data = buf[pos + 7:pos + 7 + n]
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc
        pos += 7 + n
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def _complete_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a finished run: ``wandb.finish`` returns before wandb-core has flushed the offline file,
    so wait for its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def offline_runs(root: Path) -> list[dict]:
    """Every offline run under ``root``: its run record, merged config and summary, and its folder."""
    out = []
    for f in sorted(Path(root).rglob("offline-run-*/run-*.wandb")):
        run, config, summary = None, {}, {}

        def put(target, updates):  # an update names a key, or a path of keys (nested_key)
            for u in updates:
                *parents, leaf = list(u.nested_key) or [u.key]
                node = target
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = json.loads(u.value_json)

        for rec in _complete_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run = rec.run
                put(config, rec.run.config.update)
            elif kind == "config":
                put(config, rec.config.update)
            elif kind == "summary":
                put(summary, rec.summary.update)
        out.append({"run": run, "config": config, "summary": summary, "dir": f.parent})
    return out


# --- naming -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,kernel,seed,name,tags,group", [
    ("convnext_tiny", 31, 0, "convnext_tiny-k31-s0", ["convnext_tiny", "k31", "seed0"], "convnext_tiny-kernel"),
    ("convnext_tiny", [7, 7, 7, 7], 2, "convnext_tiny-k7-s2", ["convnext_tiny", "k7", "seed2"], "convnext_tiny-kernel"),
    ("replknet_31b", [31, 29, 27, 13], 1, "replknet_31b-k31-29-27-13-s1", ["replknet_31b", "k31-29-27-13", "seed1"],
     "replknet_31b-kernel"),
    ("replknet_3b", 3, 1, "replknet_3b-k3-s1", ["replknet_3b", "k3", "seed1"], "replknet_31b-kernel"),
    ("convnext_demo", 13, None, "convnext_demo-k13", ["convnext_demo", "k13"], "convnext_demo-kernel"),
])
def test_run_identity(model, kernel, seed, name, tags, group):
    assert run_identity(model, kernel, seed) == {"name": name, "tags": tags, "group": group}


def test_imagenet_configs_log_to_wandb(capsys):
    # Every ConvNeXt config takes its trainer (and so the logger) from the base file; resolve one fully.
    for k in (3, 7, 13, 31, 51):
        assert yaml.safe_load((REPO / "configs" / f"convnext_k{k}.yaml").read_text())["trainer"] == \
            "base/trainer_imagenet_120ep.yaml"
    assert yaml.safe_load((REPO / "configs/base/trainer_imagenet_120ep.yaml").read_text())["logger"] == "logger_wandb.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/convnext_k31.yaml"), "--data",
              str(REPO / "configs/base/data_imagenet_folder.yaml"), "--print_config"])
    logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    args = logger["init_args"]
    assert (args["project"], args["job_type"], args["resume"], args["log_model"]) == ("lk_ablate", "train", "allow", False)


# --- the run id through checkpoints -----------------------------------------------------------------------
def _ckpt(path: Path, step: int, run_id: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"global_step": step, "state_dict": {}}
    if run_id:
        data[CHECKPOINT_KEY] = {"run_id": run_id}
    torch.save(data, path)
    return path


def test_resume_checkpoint_and_run_id(tmp_path, monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    ck = tmp_path / "ck"
    old = _ckpt(ck / "last.ckpt", 10, "run-a")
    hpc = _ckpt(tmp_path / "root" / "hpc_ckpt_2.ckpt", 20, "run-b")
    _ckpt(tmp_path / "root" / "hpc_ckpt_1.ckpt", 5, "run-c")
    plain = _ckpt(tmp_path / "plain.ckpt", 3, None)
    cfg = lambda ckpt_path: {"ckpt_path": ckpt_path, "checkpoint": {"dirpath": str(ck)},  # noqa: E731
                             "trainer": {"default_root_dir": str(tmp_path / "root")}}
    assert resume_checkpoint(cfg(str(old))) == str(old)
    assert resume_checkpoint(cfg("last")) == str(old)
    assert resume_checkpoint(cfg("auto")) == str(hpc)  # highest stored step of hpc_ckpt_N and last*.ckpt
    assert resume_checkpoint(cfg("hpc")) == str(hpc)
    assert resume_checkpoint(cfg(None)) is None  # not under SLURM: a fresh start
    assert [read_run_id(p) for p in (old, hpc, plain, tmp_path / "missing.ckpt", None)] == \
        ["run-a", "run-b", None, None, None]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("wandb_data"), classes=3, per_class=4, size=36)


def test_fit_logs_run_and_resume_reuses_the_run_id(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "ck"
    base = ["--config", str(TINY), "--data.init_args.root", str(tiny_data), "--checkpoint.dirpath", str(ck)]
    assert main(["fit", *base]) == 0
    (first,) = offline_runs(ck / "wandb")
    run = first["run"]
    assert (run.display_name, list(run.tags), run.run_group, run.job_type, run.project) == \
        ("convnext_demo-k7-s5", ["convnext_demo", "k7", "seed5"], "convnext_demo-kernel", "train", "lk_ablate")
    # The full resolved config, including what the CLI filled in.
    cfg = first["config"]
    assert cfg["seed_everything"] == 5 and cfg["model"]["kernel_size"] == 7 and cfg["model"]["model_name"] == "convnext_demo"
    assert cfg["data"]["init_args"]["root"] == str(tiny_data) and cfg["checkpoint"]["dirpath"] == str(ck)
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "convnext_demo-k7-s5"
    assert cfg["trainer"]["max_steps"] == 2
    # the dashboard's numeric kernel axis and grouping key (base/metric_keys.py)
    assert (cfg["kernel_max"], cfg["kernel_label"]) == (7, "7")
    assert first["summary"]["trainer/global_step"] == 1  # steps 0 and 1 were logged
    ckpt = torch.load(ck / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt[CHECKPOINT_KEY]["run_id"] == run.run_id and ckpt["global_step"] == 2
    assert (ck / "config.yaml").is_file()  # the CLI's config file lands in the logger's save_dir: the checkpoints
    # What produced the run, in the checkpoint and in the W&B config (lk_ablate.base.provenance).
    prov = ckpt["lk_ablate"]["provenance"]
    assert prov["packages"]["torch"] == torch.__version__.split("+")[0] and prov["device"]["type"] == "cpu"
    assert prov["precision"] == "32-true" and prov["threads"] == torch.get_num_threads()
    assert prov["dwconv"]["impl"] == ["auto"] and prov["data"]["train"]["num_classes"] == 3
    assert prov["lk_ablate"]["commit"] and len(prov["config_sha256"]) == 64
    assert cfg["provenance"]["lk_ablate"] == prov["lk_ablate"] and cfg["provenance"]["packages"] == prov["packages"]

    # Resume: the stored id goes back to the logger (offline mode starts a new local folder under the same id).
    assert main(["fit", *base, "--ckpt_path", str(ck / "last.ckpt"), "--trainer.max_steps", "4"]) == 0
    runs = offline_runs(ck / "wandb")
    assert len(runs) == 2 and {r["run"].run_id for r in runs} == {run.run_id}
    resumed = next(r for r in runs if r["dir"] != first["dir"])
    assert resumed["summary"]["trainer/global_step"] == 3
    ckpt = torch.load(ck / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt[CHECKPOINT_KEY]["run_id"] == run.run_id and ckpt["global_step"] == 4

    # Evaluating a checkpoint is its own run (job type eval) in the same group.
    assert main(["validate", *base, "--ckpt_path", str(ck / "last.ckpt")]) == 0
    runs = offline_runs(ck / "wandb")
    (evaluation,) = [r for r in runs if r["run"].job_type == "eval"]
    assert evaluation["run"].run_id != run.run_id and evaluation["run"].run_group == "convnext_demo-kernel"
    assert evaluation["run"].display_name == "convnext_demo-k7-s5"


# --- robustness results -----------------------------------------------------------------------------------
def _results():
    c = {"top1": {"fog": {"1": 60.0, "5": 20.0}, "snow": {"1": 70.0, "5": 30.0}},
         "n": {"fog": {"1": 10, "5": 10}, "snow": {"1": 10, "5": 10}}, "mean_top1": 45.0, "mce": None, "n_total": 40}
    weights = {"raw": {"imagenet_val": {"top1": 81.5, "top5": 95.5, "n": 50000}, "imagenet_a": {"top1": 10.2, "n": 7500},
                       "imagenet_c": c, "imagenet_o": {"aupr": 55.5, "n_in": 10, "n_out": 5, "n": 15}},
               "ema": {"imagenet_a": {"top1": 11.0, "n": 7500}}}
    return make_results(model_name="convnext_tiny", kernel_sizes=[31, 31, 31, 31], num_params=1, model_config={},
                        weights=weights, settings={"seed": 3}, errors=[], epoch=119, global_step=700)


def test_robustness_table_rows():
    assert robustness_table_rows(_results(), seed=3) == [
        ["convnext_tiny", "31", 3, "raw", "imagenet_val", None, None, 81.5],
        ["convnext_tiny", "31", 3, "raw", "imagenet_a", None, None, 10.2],
        ["convnext_tiny", "31", 3, "raw", "imagenet_c", "fog", 1, 60.0],
        ["convnext_tiny", "31", 3, "raw", "imagenet_c", "fog", 5, 20.0],
        ["convnext_tiny", "31", 3, "raw", "imagenet_c", "snow", 1, 70.0],
        ["convnext_tiny", "31", 3, "raw", "imagenet_c", "snow", 5, 30.0],
        ["convnext_tiny", "31", 3, "ema", "imagenet_a", None, None, 11.0],
    ]


def test_log_robustness_summary_and_table(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    results = _results()
    logger = WandbLogger(project="lk_ablate_test", save_dir=str(tmp_path), name="robust")
    trainer = L.Trainer(logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    try:
        log_robustness(trainer, results)  # no module attached: the seed comes from the results' settings
    finally:
        wandb.finish()
    (run,) = offline_runs(tmp_path)
    summary = run["summary"]
    for key, value in flatten_metrics(results).items():
        assert summary[key] == value
    assert summary["robust/imagenet_a/top1_ema"] == 11.0 and summary["robust/imagenet_c/top1_fog_5"] == 20.0
    table = summary["robustness/top1_table"]
    assert (table["_type"], table["nrows"], table["ncols"]) == ("table-file", 7, 8)
    data = json.loads((run["dir"] / "files" / table["path"]).read_text())
    assert data["columns"] == ["model", "kernel_size", "seed", "weights", "benchmark", "corruption", "severity", "top1"]
    assert data["data"] == robustness_table_rows(results, seed=3)
    assert summary["trainer/global_step"] == 700  # logged at the scored checkpoint's step
