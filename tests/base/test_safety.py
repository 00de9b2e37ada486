"""Untrusted checkpoints never run code: a pickle whose ``__reduce__`` would create a marker file is refused with
one line (naming the file and the global) at every entry point that reads a checkpoint or weights file, while
lk_ablate's own checkpoints and official-format files (argparse.Namespace, numpy scalars/arrays) still load."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from lk_ablate import create_model
from lk_ablate.base.safe_load import UnsafeCheckpointError, load_torch_file
from lk_ablate.cli import main
from lk_ablate.base.errors import DataError

from helpers import make_image_folder

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "configs" / "cluster_tiny.yaml")


class _Payload:
    """Unpickling calls ``open(marker, "w")``: the file appears if, and only if, the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture()
def evil(tmp_path) -> tuple[Path, Path]:
    """A checkpoint that looks like lk_ablate's own (state_dict, global_step, hyper-parameters) plus the payload."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "global_step": 5, "epoch": 0,
                "hyper_parameters": {"model_name": "convnext_demo", "kernel_size": 5, "num_classes": 4},
                "model": {"w": torch.zeros(2)}, "teacher": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    return path, marker


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, str]:
    from test_robustness_support import small_trees

    return small_trees(tmp_path_factory.mktemp("trees"), a=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=4, per_class=2, size=32)


def _refused_in_one_line(capsys, rc: int, path: Path) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 or "refusing to load" in err[-1], err
    line = err[-1]
    assert line.startswith("lk_ablate: error: refusing to load") and str(path) in line, line
    assert "io.open" in line and "--trust_checkpoint true" in line, line


def _assert_refused(fn, path: Path) -> None:
    with pytest.raises(UnsafeCheckpointError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "io.open" in msg, msg


def test_cli_entry_points_refuse_a_malicious_checkpoint(evil, data, trees, tmp_path, capsys, monkeypatch):
    path, marker = evil
    monkeypatch.delenv("LK_ABLATE_TRUST_CHECKPOINTS", raising=False)
    common = ["--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path / "run")]
    # fit --ckpt_path FILE, validate --ckpt_path FILE
    for cmd in ("fit", "validate"):
        _refused_in_one_line(capsys, main([cmd, *common, "--ckpt_path", str(path)]), path)
    # fit --ckpt_path auto with the file planted as the run's last.ckpt
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(path.read_bytes())
    rc = main(["fit", *common, "--checkpoint.dirpath", str(ckpts), "--ckpt_path", "auto"])
    _refused_in_one_line(capsys, rc, ckpts / "last.ckpt")
    assert not (ckpts / ".lk_ablate.lease").exists(), "the refused run released its lease"
    # robustness, analyze, reparam
    _refused_in_one_line(capsys, main(["robustness", "--ckpt_path", str(path), "--data.imagenet_a",
                                       trees["imagenet_a"], "--device", "cpu"]), path)
    _refused_in_one_line(capsys, main(["analyze", "kernel_distance", "--ckpt_path", str(path)]), path)
    _refused_in_one_line(capsys, main(["reparam", "--ckpt_path", str(path), "--output_path", str(tmp_path / "out.pth")]), path)
    assert not marker.exists()


def test_library_entry_points_refuse_a_malicious_checkpoint(evil, monkeypatch):
    from lk_ablate.analysis.occlusion import load_dino
    from lk_ablate.models.checkpoints import load_timm_weights, read_checkpoint
    from lk_ablate.robustness.callback import _stored_step
    from lk_ablate.training import ImageClassifier
    from lk_ablate.training.checkpoint_io import AtomicCheckpointIO
    from lk_ablate.training.preemption import checkpoint_step
    from lk_ablate.training.wandb import read_run_id

    path, marker = evil
    monkeypatch.delenv("LK_ABLATE_TRUST_CHECKPOINTS", raising=False)
    for fn in (lambda: read_checkpoint(path),
               lambda: create_model("convnext_demo", kernel_size=3, num_classes=4, checkpoint_path=str(path)),
               lambda: ImageClassifier(model_name="convnext_demo", num_classes=4, pretrained_path=str(path)),
               lambda: AtomicCheckpointIO().load_checkpoint(path),  # Lightning's own resume / validate load
               lambda: checkpoint_step(path),  # --ckpt_path auto
               lambda: _stored_step(str(path)),  # RobustnessEvaluation callback
               lambda: read_run_id(path),  # W&B resume
               lambda: load_dino(path),  # occlusion's DINO weights
               lambda: load_timm_weights(torch.nn.Linear(2, 2), path)):  # timm-format files
        _assert_refused(fn, path)
    assert not marker.exists()


def test_trust_opt_in_loads_it(evil, monkeypatch):
    path, marker = evil
    monkeypatch.setenv("LK_ABLATE_TRUST_CHECKPOINTS", "1")
    load_torch_file(path)
    assert marker.exists()  # the user asked for it: the pickle ran


@pytest.mark.slow
def test_own_and_official_formats_load(tmp_path, data):
    """A real lk_ablate checkpoint (Lightning's full dict) and an official-style training checkpoint with
    argparse.Namespace args, numpy scalars, dtypes and arrays load without the opt-in, weights unchanged."""
    from lightning.pytorch import Trainer

    from lk_ablate.data import ImageFolderDataModule
    from lk_ablate.training import ImageClassifier

    module = ImageClassifier(model_name="convnext_demo", kernel_size=3, num_classes=4, ema_decay=0.9,
                             base_batch_size=4)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=ImageFolderDataModule(str(data), batch_size=4, num_workers=0, input_size=32))
    own = tmp_path / "own.ckpt"
    trainer.save_checkpoint(own)
    ckpt = load_torch_file(own)
    assert ckpt["global_step"] == 1 and set(ckpt) >= {"optimizer_states", "lr_schedulers", "loops", "callbacks"}
    model = create_model("convnext_demo", kernel_size=3, num_classes=4, checkpoint_path=str(own))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), module.model.state_dict().values()))

    sd = module.model.state_dict()
    official = tmp_path / "checkpoint-best.pth"
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(model="convnext_demo", lr=4e-3),
                "max_accuracy": np.float64(82.1), "dtype": np.dtype("float32"), "hist": np.arange(3)}, official)
    obj = load_torch_file(official)
    assert obj["args"].lr == 4e-3 and obj["max_accuracy"] == 82.1 and obj["hist"].tolist() == [0, 1, 2]
    model = create_model("convnext_demo", kernel_size=3, num_classes=4, checkpoint_path=str(official))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sd.values()))


def test_unreadable_files_get_one_line(tmp_path, data, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(DataError, match=r"cannot read checkpoint .*garbage.ckpt: not a torch file"):
        load_torch_file(garbage)
    rc = main(["validate", "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
               "--ckpt_path", str(garbage)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("lk_ablate: error: cannot read checkpoint") and "weights_only" not in err[-1]
