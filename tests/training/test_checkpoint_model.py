"""The checkpoint decides the model, and says so: validate with a checkpoint of another architecture, kernel size or
class count stops with one line listing the differences; with no model options it uses (and prints) the
checkpoint's model; ``--ckpt_path auto`` skips checkpoints of another model with a warning naming them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lk_ablate.cli import main

from helpers import make_image_folder

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "configs" / "cluster_tiny.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A real k=5, 4-class convnext_demo checkpoint (one epoch of cluster_tiny) and its data."""
    base = tmp_path_factory.mktemp("k5")
    data = make_image_folder(base / "data", classes=4, per_class=7, size=36)
    ckpts = base / "run" / "checkpoints"
    assert main(["fit", "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(base / "run"), "--checkpoint.dirpath", str(ckpts),
                 "--trainer.max_epochs", "1"]) == 0
    return {"data": data, "ckpt": ckpts / "last.ckpt"}


def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_configured_model_differs_from_the_checkpoint(trained, capsys):
    ckpt = trained["ckpt"]
    common = ["validate", "--config", TINY, "--data.init_args.root", str(trained["data"]), "--trainer.logger",
              "false", "--ckpt_path", str(ckpt)]
    assert main([*common, "--model.kernel_size", "7"]) == 2
    assert _last_error(capsys) == (f"lk_ablate: error: --ckpt_path {ckpt} holds another model than configured: "
                                   "kernel_size 7 (checkpoint: 5); drop those model options to use the checkpoint's "
                                   "model, or pass the checkpoint of the configured one")
    assert main([*common, "--model.model_name", "convnext_tiny", "--model.num_classes", "10"]) == 2
    line = _last_error(capsys)
    assert "model_name 'convnext_tiny' (checkpoint: 'convnext_demo'), num_classes 10 (checkpoint: 4)" in line
    # The same per-stage kernels written as a list are the same model.
    assert main([*common, "--model.kernel_size", "[5, 5, 5, 5]", "--trainer.limit_val_batches", "1"]) == 0


@pytest.mark.slow
def test_no_model_options_use_the_checkpoint_and_say_so(trained, tmp_path, capsys):
    data_args = ["--data", "lk_ablate.data.ImageFolderDataModule", "--data.batch_size", "4", "--data.num_workers",
                 "0", "--data.input_size", "32", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                 "--ckpt_path", str(trained["ckpt"])]
    assert main(["validate", *data_args, "--data.root", str(trained["data"])]) == 0
    err = capsys.readouterr().err
    assert (f"lk_ablate validate: using the checkpoint's model (model_name='convnext_demo', kernel_size=5, "
            f"num_classes=4) from {trained['ckpt']}") in err
    # a model option without model_name (the data link's source) still counts as the user's
    assert main(["validate", *data_args, "--data.root", str(trained["data"]), "--model.kernel_size", "7"]) == 2
    assert "holds another model than configured: kernel_size 7 (checkpoint: 5)" in _last_error(capsys)
    # a 4-class checkpoint on a 6-class dataset
    six = make_image_folder(tmp_path / "six", classes=6, per_class=1, size=36)
    assert main(["validate", *data_args, "--data.root", str(six)]) == 2
    assert _last_error(capsys) == ("lk_ablate: error: the model has 4 classes but the dataset has 6: evaluate on "
                                   "the dataset the checkpoint was trained for")


def test_ckpt_path_auto_skips_checkpoints_of_another_model(trained, tmp_path, capsys):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["kernel_size"] = 7  # a k=7 run's last.ckpt left in this k=5 run's folder
    torch.save(ckpt, ckpts / "last.ckpt")
    with pytest.warns(UserWarning, match=r"ignoring .*last.ckpt for resumption: it holds another model "
                                         r"\(kernel_size: checkpoint 7 vs configured 5\)"):
        rc = main(["fit", "--config", TINY, "--data.init_args.root", str(trained["data"]), "--trainer.logger", "false",
                   "--trainer.default_root_dir", str(run), "--checkpoint.dirpath", str(ckpts),
                   "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--ckpt_path", "auto"])
    # Not resumed, and not started from scratch beside it either (that run's last.ckpt would stay, stale, as the
    # file every scorer reads): one line, the k=7 checkpoint untouched.
    assert rc == 2 and _last_error(capsys) == (
        f"lk_ablate: error: checkpoint folder {ckpts} holds last.ckpt of another model (kernel_size: checkpoint 7 vs "
        f"configured 5), global step {ckpt['global_step']}, and this fit starts from scratch: its checkpoints would "
        "replace or sit beside that run's; give this run another checkpoint.dirpath (or move the old files away)")
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["hyper_parameters"]["kernel_size"] == 7
