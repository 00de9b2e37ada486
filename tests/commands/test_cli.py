"""The lk_ablate CLI in-process: configs resolve, fit runs, bad input gives one clear message."""
from pathlib import Path

import pytest
import yaml

from lk_ablate.cli import main

from helpers import make_image_folder
from recipe_probes import check_config_effects

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def print_config(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(["fit", *args, "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("k", [pytest.param(k, marks=pytest.mark.slow) for k in (3, 7, 13, 31)] + [51])
def test_convnext_configs_resolve_to_the_120_epoch_recipe(k, capsys):
    cfg = print_config(capsys, "--config", str(CONFIGS / f"convnext_k{k}.yaml"))
    t, m, d = cfg["trainer"], cfg["model"], cfg["data"]["init_args"]
    assert t["max_epochs"] == 120 and t["precision"] == "bf16-mixed"
    assert m["model_name"] == "convnext_tiny" and m["kernel_size"] == k
    assert m["drop_path_rate"] == 0.1 and m["ema_decay"] == 0.9999
    assert m["mixup_alpha"] == 0.8 and m["cutmix_alpha"] == 1.0 and m["label_smoothing"] == 0.1
    assert m["warmup_epochs"] == 20 and m["min_lr"] == 1e-6 and m["weight_decay"] == 0.05
    global_batch = d["batch_size"] * t["devices"] * t["num_nodes"] * t["accumulate_grad_batches"]
    assert global_batch == 4096
    # The module's rule: lr = base_lr * global / base_batch -> the recipe's 4e-3 at 4096.
    assert m["base_lr"] * global_batch / m["base_batch_size"] == pytest.approx(4e-3, rel=0, abs=1e-15)
    # ... and the module this section instantiates computes it: drop path per block, smoothed soft targets,
    # mixup/cutmix draws, EMA decay, the lr and weight decay of its AdamW at this global batch, the warmup
    check_config_effects(m, d["batch_size"], t["devices"] * t["num_nodes"], t["accumulate_grad_batches"])


def test_print_config_shows_overrides(capsys):
    cfg = print_config(capsys, "--config", str(CONFIGS / "convnext_k31.yaml"), "--model.kernel_size", "[31,29,27,13]",
                       "--trainer.devices", "4")
    assert cfg["model"]["kernel_size"] == [31, 29, 27, 13] and str(cfg["trainer"]["devices"]) == "4"


def fit_args(root, *extra):
    return ["fit", "--config", str(CONFIGS / "convnext_k31.yaml"), "--data", str(CONFIGS / "base" / "data_imagenet_folder.yaml"),
            "--data.init_args.root", str(root), "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--data.init_args.input_size", "32", "--model.num_classes", "3", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.precision", "32-true",
            "--trainer.accumulate_grad_batches", "1", "--trainer.logger", "false", *extra]


@pytest.mark.slow
def test_fit_fast_dev_run_convnext_k31(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=40)
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(root, "--trainer.fast_dev_run", "true")) == 0


def test_fit_without_data_is_one_clear_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CONFIGS / "convnext_k31.yaml"), "--data",
                 str(CONFIGS / "base" / "data_imagenet_folder.yaml")]) == 2
    err = capsys.readouterr().err
    assert "lk_ablate: error: training folder not found: /datasets/imagenet/train" in err
    assert "data.init_args.root" in err and "Traceback" not in err


@pytest.mark.parametrize("extra,message", [
    (["--model.kernel_size", "4"], "must be odd"),
    (["--model.kernel_size", "[3,5,7]"], "one size per stage"),
    (["--model.model_name", "convnext_huge"], "unknown model 'convnext_huge'"),
    (["--model.drop_path_rate", "1.5"], "drop_path_rate must be in"),
    pytest.param(["--model.num_classes", "5"], "the dataset has 3 classes but model.num_classes is 5", marks=pytest.mark.slow),
    pytest.param(["--data.init_args.batch_size", "3"], "need an even per-device batch size", marks=pytest.mark.slow),
    pytest.param(["--data.init_args.batch_size", "0"], "batch_size must be >= 1", marks=pytest.mark.slow),
    pytest.param(["--model.ema_decay", "1.5"], "ema_decay must be in", marks=pytest.mark.slow),
])
def test_invalid_config_messages(extra, message, tmp_path, monkeypatch, capsys):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=2, size=36)
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(root, "--trainer.fast_dev_run", "true", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "validate", "test", "predict", "demo", "reparam", "robustness", "analyze", "data", "report"):
        assert cmd in out


@pytest.mark.slow
def test_commands_import_only_what_they_use():
    """`fit` never imports FFCV/numba or the evaluation commands' code; `robustness` never imports the analyses."""
    import subprocess
    import sys

    code = ("import sys, lk_ablate.cli, lk_ablate.lightning_cli\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ffcv', 'numba') or m.startswith(("
            "'lk_ablate.analysis', 'lk_ablate.evaluation', 'lk_ablate.robustness'))]\n"
            "assert not bad, bad\n"
            "import lk_ablate.commands.robustness\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ffcv', 'numba') or m.startswith('lk_ablate.analysis')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv,message", [
    (["fit", "--model.kernel_size", "abc"],
     'Parser key "model.kernel_size": Does not validate against any of the Union subtypes'),
    (["fit", "--config", "missing.yaml"], 'Parser key "config": File does not exist'),
    (["validate", "--trainer.max_epochs", "x"], "see `lk_ablate validate --help`"),
    (["bogus"], "unknown command 'bogus'; the commands are fit, validate, test, predict, demo, reparam, robustness, "
                "analyze, data, report, dashboard (see `lk_ablate --help`)"),
])
def test_bad_values_are_one_line_with_the_help_to_read(argv, message, capsys):
    """Lightning's commands as lk_ablate's own: the error line and a pointer to --help, not ~100 lines of usage."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lk_ablate: error: ") and message in err[0], err
    if argv[0] == "fit":
        assert err[0].endswith("(see `lk_ablate fit --help`)")


def test_version(capsys):
    from lk_ablate.base.version import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lk_ablate {__version__}\n"
