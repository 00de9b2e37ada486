"""``lk_ablate robustness``: lk_ablate Lightning checkpoints, official-style checkpoints, timm models by name."""
from __future__ import annotations

import re

import pytest
import torch
import yaml
from PIL import Image
from helpers import write_demo_checkpoint
from test_robustness_support import small_trees

from lk_ablate import create_model
from lk_ablate.cli import main
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.base.results import read_results
from lk_ablate.robustness.benchmarks import build_benchmarks, eval_transform
from lk_ablate.robustness.evaluate import evaluate
from lk_ablate.evaluation import ModelOptions, load_for_eval
from lk_ablate.commands.robustness import cli_main
from lk_ablate.robustness.score import format_table, load_config, robustness_settings


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return small_trees(tmp_path_factory.mktemp("trees"), a=True)


def _lightning_ckpt(path, ema=True):
    return write_demo_checkpoint(path, kernel_size=[3, 5, 7, 9], ema=ema, epoch=3, global_step=40)


@pytest.mark.slow
def test_lightning_checkpoint_with_config(tmp_path, trees, capsys):
    ckpt = tmp_path / "epoch=3-step=40.ckpt"
    module = _lightning_ckpt(ckpt)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "x"}},
        {"class_path": "lk_ablate.robustness.RobustnessEvaluation",
         "init_args": dict(trees, batch_size=16, num_workers=0, every_n_epochs=5)}]}}))
    assert main(["robustness", "--ckpt_path", str(ckpt), "--fit_config", str(cfg), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "convnext_demo  kernel sizes [3, 5, 7, 9]  epoch 3 step 40" in out
    assert any(line.split()[:3] == ["imagenet_a", "top1", "201"] for line in out.splitlines())
    data = read_results(tmp_path / "epoch=3-step=40.robustness.json")
    assert data["checkpoint"] == {"path": str(ckpt), "epoch": 3, "global_step": 40, "format": "lightning"}
    assert data["model"]["kernel_sizes"] == [3, 5, 7, 9] and data["primary"] == "ema"
    assert data["model"]["num_params"] == sum(p.numel() for p in module.model.parameters())
    # The numbers are those of the in-memory module's raw and EMA weights.
    expected, _ = evaluate({"raw": module.model, "ema": module.ema.module}, module.model.model_config,
                           build_benchmarks(**trees), batch_size=16, num_workers=0)
    assert data["weights"] == expected
    # --weights raw, and options override the fit config
    assert cli_main(["--ckpt_path", str(ckpt), "--fit_config", str(cfg), "--weights", "raw", "--data.batch_size", "64",
                     "--results_path", str(tmp_path / "raw.json")]) == 0
    assert set(read_results(tmp_path / "raw.json")["weights"]) == {"raw"}


def test_official_style_checkpoints(tmp_path, trees, capsys, monkeypatch):
    monkeypatch.setenv("LK_ABLATE_PROGRESS_SECONDS", "3600")  # a log (pytest's stderr is no tty): the closing lines
    torch.manual_seed(1)
    model = create_model("convnext_demo", kernel_size=5, num_classes=1000)
    sd = model.state_dict()
    cfg = tmp_path / "model.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"model_name": "convnext_demo", "kernel_size": 5, "num_classes": 1000},
                                   "robustness": dict(trees, num_workers=0, batch_size=64)}))
    expected, _ = evaluate({"raw": model.eval()}, model.model_config, build_benchmarks(**trees), batch_size=64,
                           num_workers=0)
    layouts = {"bare": sd, "model_key": {"model": sd, "epoch": 299},
               "ddp_prefix": {f"module.{k}": v for k, v in sd.items()}}
    for name, obj in layouts.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        assert cli_main(["--ckpt_path", str(path), "--fit_config", str(cfg)] +
                        (["--progress", "false"] if name == "ddp_prefix" else [])) == 0
        err = capsys.readouterr().err  # progress by default: one closing line per benchmark; none when off
        done = re.findall(r"^imagenet_a \(raw weights\): done (\d+)/(\d+) batches", err, re.M)
        assert done == ([] if name == "ddp_prefix" else [("4", "4")]), (name, err)
        data = read_results(tmp_path / f"{name}.robustness.json")
        assert data["weights"] == {"raw": expected["raw"]}, name
        assert data["checkpoint"]["format"] == "official" and data["model"]["kernel_sizes"] == [5, 5, 5, 5]
    assert read_results(tmp_path / "model_key.robustness.json")["checkpoint"]["epoch"] == 299
    with pytest.raises(DataError, match="no EMA weights"):
        cli_main(["--ckpt_path", str(tmp_path / "bare.pth"), "--fit_config", str(cfg), "--weights", "ema"])
    with pytest.raises(DataError, match="shapes do not fit"):  # kernel 5 weights into a kernel 7 model
        cli_main(["--ckpt_path", str(tmp_path / "bare.pth"), "--fit_config", str(cfg), "--model.model_name", "convnext_tiny",
                  "--model.kernel_size", "7"])


@pytest.mark.slow
def test_timm_model_by_name_uses_timm_eval_config(tmp_path, trees):
    import timm
    from timm.data import create_transform, resolve_model_data_config

    torch.manual_seed(2)
    net = timm.create_model("test_convnext").eval()
    torch.save(net.state_dict(), tmp_path / "test_convnext.pth")
    assert cli_main(["--model.timm", "test_convnext", "--ckpt_path", str(tmp_path / "test_convnext.pth"), "--data.imagenet_a",
                     trees["imagenet_a"], "--data.num_workers", "0", "--data.batch_size", "67"]) == 0
    data = read_results(tmp_path / "test_convnext.robustness.json")
    assert data["model"]["source"] == "timm" and data["checkpoint"]["format"] == "timm"
    assert data["model"]["config"]["input_size"] == [3, 160, 160] and data["model"]["config"]["resize_size"] == 168
    loaded = load_for_eval(ModelOptions(ckpt_path=str(tmp_path / "test_convnext.pth"), timm="test_convnext"))
    # Our transform equals timm's own eval transform for this model.
    img = Image.new("RGB", (301, 217), (200, 30, 90))
    img.putpixel((150, 100), (0, 255, 0))
    ours = eval_transform(loaded.config)(img)
    theirs = create_transform(**resolve_model_data_config(net))(img)
    assert torch.equal(ours, theirs)
    # ... and the scored weights are the checkpoint's.
    assert set(loaded.models) == {"raw"}
    theirs_sd = net.state_dict()
    assert all(torch.equal(v, theirs_sd[k]) for k, v in loaded.models["raw"].state_dict().items())
    assert data["weights"]["raw"]["imagenet_a"]["n"] == 201


def test_errors(tmp_path, trees, capsys):
    with pytest.raises(ConfigError, match="no benchmark"):
        cli_main(["--ckpt_path", "x.ckpt"])
    assert main(["robustness", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--data.imagenet_a", trees["imagenet_a"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lk_ablate: error: checkpoint not found") and "Traceback" not in err
    with pytest.raises(ConfigError, match="--model.model_name NAME"):
        torch.save(create_model("convnext_demo").state_dict(), tmp_path / "w.pth")
        cli_main(["--ckpt_path", str(tmp_path / "w.pth"), "--data.imagenet_a", trees["imagenet_a"]])
    with pytest.raises(ConfigError, match="1000-class model"):
        cli_main(["--ckpt_path", str(tmp_path / "w.pth"), "--model.model_name", "convnext_demo", "--data.imagenet_a", trees["imagenet_a"]])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"robustness": {"imagenet_a": "x", "severity": 5}}))
    with pytest.raises(ConfigError, match="unknown RobustnessEvaluation settings"):
        robustness_settings(load_config([str(bad)]))


def test_nested_config_files_and_table(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "trainer.yaml").write_text(yaml.safe_dump({"callbacks": [
        {"class_path": "lk_ablate.robustness.RobustnessEvaluation", "init_args": {"imagenet_a": "/a", "batch_size": 8}}]}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"trainer": "base/trainer.yaml"}))
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({"robustness": {"batch_size": 32, "imagenet_r": "/r"}}))
    settings = robustness_settings(load_config([str(tmp_path / "run.yaml"), str(tmp_path / "over.yaml")]))
    assert settings == {"imagenet_a": "/a", "imagenet_r": "/r", "batch_size": 32}
    data = {"model": {"name": "m", "kernel_sizes": [7] * 4, "source": "lk_ablate"},
            "checkpoint": {"path": "/c.ckpt", "epoch": 1, "global_step": 2},
            "weights": {"raw": {"imagenet_a": {"top1": 12.345, "correct": 1, "n": 8}, "imagenet_r": None},
                        "ema": {"imagenet_a": {"top1": 50.0, "correct": 4, "n": 8}, "imagenet_r": None}}}
    table = format_table(data).splitlines()
    assert table[2].split() == ["imagenet_a", "top1", "8", "12.35", "50.00"]
    assert table[3].split() == ["imagenet_r", "top1", "FAILED", "FAILED"]


def test_wandb_adds_the_scores_to_the_training_run(tmp_path, trees, monkeypatch, capsys):
    """--wandb reopens the run id stored in the checkpoint (offline here) and adds summary + table to it."""
    import wandb
    from test_wandb import offline_runs

    from lk_ablate.base.results import flatten_metrics
    from lk_ablate.training.wandb import CHECKPOINT_KEY

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    train = wandb.init(project="lk_ablate_test", dir=str(tmp_path), name="convnext_demo-k3-s0", group="g")
    train.log({"train/loss": 1.0})
    train.finish()
    ckpt = tmp_path / "last.ckpt"
    _lightning_ckpt(ckpt)
    obj = torch.load(ckpt, weights_only=False)
    obj[CHECKPOINT_KEY] = {"run_id": train.id, "project": "lk_ablate_test", "entity": None,
                           "name": "convnext_demo-k3-s0", "group": "g"}
    torch.save(obj, ckpt)
    assert main(["robustness", "--ckpt_path", str(ckpt), "--data.imagenet_a", trees["imagenet_a"], "--device", "cpu",
                 "--data.batch_size", "16", "--data.num_workers", "0", "--wandb", "true"]) == 0
    assert f"W&B: added to run {train.id}" in capsys.readouterr().out
    runs = offline_runs(tmp_path)
    assert len(runs) == 2 and {r["run"].run_id for r in runs} == {train.id}
    scored = next(r for r in runs if "robustness/top1_table" in r["summary"])
    data = read_results(tmp_path / "last.robustness.json")
    for key, value in flatten_metrics(data).items():
        assert scored["summary"][key] == value
    assert scored["summary"]["robustness/top1_table"]["nrows"] == 2  # imagenet_a for raw and EMA weights
    # a run trained before kernel_max / kernel_label were logged gets them from the scored checkpoint (per-stage
    # kernels: the axis is the largest)
    assert data["model"]["kernel_sizes"] == [3, 5, 7, 9]
    assert (scored["config"]["kernel_max"], scored["config"]["kernel_label"]) == (9, "3-5-7-9")
    # a checkpoint that never logged to W&B: a clear error before any scoring
    _lightning_ckpt(tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match="records no W&B run"):
        cli_main(["--ckpt_path", str(tmp_path / "plain.ckpt"), "--data.imagenet_a", trees["imagenet_a"], "--wandb", "true"])
