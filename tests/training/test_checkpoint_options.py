"""Checkpoints across resumes and fit's fatal paths (issue 24): a resume with other checkpoint options keeps the best
checkpoint and keeps ``last.ckpt`` the newest state; a pretrained file matters only to a fresh start; a folder that
cannot take a checkpoint (read-only, full, a lease path that is a folder) and a resume past ``max_epochs`` or from
official weights stop with one line naming the file and the fix, before any training step.

The tiny run (tests/configs/cluster_tiny.yaml) with 3 training and 2 validation batches per epoch: steps 3, 6, 9.
"""
from __future__ import annotations

import errno
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from lk_ablate import create_model
from lk_ablate.cli import main

from helpers import make_image_folder

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "configs" / "cluster_tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=4, per_class=7, size=36)


def fit(data: Path, run: Path, *extra: str) -> int:
    return main(["fit", "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(run), "--checkpoint.dirpath", str(run / "checkpoints"),
                 "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", *extra])


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def record(path: Path) -> dict:
    """The ResumableCheckpoint record stored in a checkpoint (its best files and scores, last_model_path)."""
    states = torch.load(path, weights_only=True)["callbacks"]
    (state,) = [v for k, v in states.items() if str(k).startswith("ResumableCheckpoint")]
    return state


@pytest.mark.slow
def test_changed_checkpoint_options_keep_the_best_and_last_ckpt(data, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    # every_n_train_steps 0: no periodic last.ckpt, but the best checkpoint is still kept (Lightning alone would
    # read 0 with every_n_epochs unset as "never save top-k").
    assert fit(data, run, "--trainer.max_epochs", "1", "--checkpoint.every_n_train_steps", "0",
               "--ckpt_path", "auto") == 0
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["epoch000-step0000003.ckpt", "last.ckpt"]
    # Epoch 0 scored 100% in the run's record (a best that later epochs cannot beat: the comparison is strict), so the
    # file must survive whatever the next epochs score.
    state = torch.load(ckpts / "last.ckpt", weights_only=True)
    (key,) = [k for k in state["callbacks"] if str(k).startswith("ResumableCheckpoint")]
    rec = state["callbacks"][key]
    rec["best_k_models"] = {p: torch.tensor(100.0) for p in rec["best_k_models"]}
    rec["best_model_score"] = rec["kth_value"] = torch.tensor(100.0)
    torch.save(state, ckpts / "last.ckpt")
    # Resumed with another trigger: the record carries over, so epoch 0's file stays the best, and last.ckpt is
    # rewritten in place.
    capsys.readouterr()
    caplog.clear()
    with warnings.catch_warnings(record=True) as warned:  # the filters in force, not pytest.warns' "always"
        assert fit(data, run, "--trainer.max_epochs", "3", "--checkpoint.every_n_train_steps", "2",
                   "--ckpt_path", "auto") == 0
    err = caplog.text + capsys.readouterr().err + "\n".join(str(w.message) for w in warned)
    assert ("checkpoint options changed since the resumed checkpoint was written (every_n_train_steps 0 -> 2): the "
            "record of the best checkpoints by val/top1 (best: epoch000-step0000003.ckpt) and last.ckpt carry over"
            in err), err
    assert "killed start" not in err and "Please add the following callbacks" not in err
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["epoch000-step0000003.ckpt", "last.ckpt"]
    final = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert final["global_step"] == 9  # the newest state, in the file every scorer reads (no last-v1.ckpt)
    rec = record(ckpts / "last.ckpt")
    assert Path(rec["best_model_path"]).name == "epoch000-step0000003.ckpt"
    assert rec["best_model_score"] == 100.0 and Path(rec["last_model_path"]).name == "last.ckpt"
    # Options the restored optimizer and schedule decide cannot change on a resume: before, base_lr 1e-12 here mixed
    # the new peak into the restored schedule and trained at lr 1000; now one line, before the first step.
    assert fit(data, run, "--trainer.max_epochs", "4", "--model.base_lr", "1e-12", "--ckpt_path", "auto") == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: --ckpt_path {ckpts / 'last.ckpt'}: a resumed fit continues the checkpoint's optimizer and "
        "lr schedule, but this run sets peak lr (model.base_lr x global batch / model.base_batch_size): checkpoint "
        "0.0005, this run 5e-13; resume with the checkpoint's values (and the same global batch: data.batch_size x "
        "devices x nodes x accumulate_grad_batches), or start a new run from its weights with --model.pretrained_path")
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 9


@pytest.fixture(scope="module")
def pretrained_run(data, tmp_path_factory) -> dict[str, Path]:
    """A run that started from model.pretrained_path (2 steps), then the pretrained file was deleted."""
    base = tmp_path_factory.mktemp("pretrained")
    pre = base / "pre.pth"
    torch.manual_seed(1)
    torch.save({"model": create_model("convnext_demo", kernel_size=5, num_classes=4).state_dict()}, pre)
    run = base / "run"
    assert fit(data, run, "--model.pretrained_path", str(pre), "--trainer.max_steps", "2",
               "--ckpt_path", "auto") == 0
    pre.unlink()
    return {"pre": pre, "run": run, "last": run / "checkpoints" / "last.ckpt"}


@pytest.mark.slow
def test_pretrained_file_is_needed_only_to_start_from_scratch(data, pretrained_run, tmp_path, capsys):
    pre, run, last = pretrained_run["pre"], pretrained_run["run"], pretrained_run["last"]
    assert torch.load(last, weights_only=True)["hyper_parameters"]["pretrained_path"] == str(pre)
    # validate (and test, the same path) take every weight from the checkpoint
    assert main(["validate", "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
                 "--trainer.limit_val_batches", "1", "--ckpt_path", str(last)]) == 0
    # an option of how to run the model, given on the command line, is used, not replaced by the checkpoint's
    assert main(["validate", "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
                 "--ckpt_path", str(last), "--model.dwconv_impl", "bogus"]) == 2
    assert last_error(capsys).startswith("lk_ablate: error: model.dwconv_impl: unknown depthwise conv "
                                         "implementation 'bogus'")
    # so does a resumed fit (the config still names the missing file)
    assert fit(data, run, "--model.pretrained_path", str(pre), "--trainer.max_steps", "3", "--ckpt_path", "auto") == 0
    assert torch.load(last, weights_only=True)["global_step"] == 3
    # a fit from scratch needs it: one line, before the first step
    capsys.readouterr()
    assert fit(data, tmp_path / "fresh", "--model.pretrained_path", str(pre), "--trainer.max_steps", "1") == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: model.pretrained_path {pre} not found: this run starts from those weights; give the "
        "file, or resume/evaluate a checkpoint with --ckpt_path (its weights are used then, and the pretrained file "
        "is not needed)")
    assert not list((tmp_path / "fresh" / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_resume_past_max_epochs_and_official_weights_are_one_line(data, pretrained_run, tmp_path, capsys):
    state = torch.load(pretrained_run["last"], weights_only=True)
    state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] = 3  # a checkpoint of epoch 3
    done = tmp_path / "done.ckpt"
    torch.save(state, done)
    assert fit(data, tmp_path / "run", "--trainer.max_epochs", "2", "--ckpt_path", str(done)) == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: --ckpt_path {done} has completed 3 epochs (global step {state['global_step']}) but "
        f"trainer.max_epochs is 2: set trainer.max_epochs to 3 or more to resume it, or evaluate it with "
        f"`lk_ablate validate --ckpt_path {done}`")
    official = tmp_path / "convnext_demo_official.pth"
    torch.save({"model": create_model("convnext_demo", kernel_size=5, num_classes=4).state_dict()}, official)
    for cmd in ("validate",):  # fit --ckpt_path takes the same path (LkAblateCLI._parse_ckpt_path)
        assert main([cmd, "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path / "run2"), "--ckpt_path", str(official)]) == 2
        assert last_error(capsys) == (
            f"lk_ablate: error: --ckpt_path {official} is not a checkpoint of `lk_ablate fit` (no Lightning training "
            f"state; official or timm weights?): score it with `lk_ablate robustness --ckpt_path {official} "
            f"--model.model_name NAME`, or start a fit from its weights with --model.pretrained_path {official}")


@pytest.mark.slow
def test_checkpoint_size_estimate_is_at_least_the_real_size(pretrained_run):
    """The free-space check's estimate against a real checkpoint of the tiny run (AdamW, EMA): not below the file,
    at most 5% above it."""
    from lk_ablate.training import ImageClassifier
    from lk_ablate.training.preemption import estimate_checkpoint_bytes

    last = pretrained_run["last"]
    module = ImageClassifier(model_name="convnext_demo", kernel_size=5, num_classes=4, ema_decay=0.9)
    optimizer = torch.optim.AdamW(module.model.parameters())
    estimate, real = estimate_checkpoint_bytes(module, [optimizer]), last.stat().st_size
    assert real <= estimate <= 1.05 * real, (estimate, real)


def test_unwritable_checkpoint_folder_stops_before_training(data, tmp_path, capsys, monkeypatch):
    import lk_ablate.base.files as files

    # A full file system: free space below one checkpoint.
    real_usage = shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1 << 20))
    run = tmp_path / "full"
    assert fit(data, run, "--trainer.max_steps", "1") == 2
    line = last_error(capsys)
    folder = run / "checkpoints"
    assert line == (f"lk_ablate: error: not enough space for a checkpoint of ImageClassifier in {folder}: it needs "
                    f"about 25.0 MiB and {folder} has 1.0 MiB free; free space there or write to another file "
                    "system; set checkpoint.dirpath to another folder"), line
    monkeypatch.undo()
    # A read-only file system: creating a file there fails (EROFS injected where the writer creates its files).

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    run = tmp_path / "ro"
    assert fit(data, run, "--trainer.max_steps", "1") == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: cannot write checkpoint {run / 'checkpoints' / 'last.ckpt'}: Read-only file system in "
        f"{run / 'checkpoints'} (errno EROFS); set checkpoint.dirpath to another folder")
    for folder in (tmp_path / "full", tmp_path / "ro"):
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [], "no checkpoint, no lease left"


def test_lease_problems_are_one_line(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints" / ".lk_ablate.lease").mkdir(parents=True)
    assert fit(data, run, "--trainer.max_steps", "1") == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: {run / 'checkpoints' / '.lk_ablate.lease'} is a folder, not lk_ablate's lease file: "
        "remove it (fit creates that file itself and removes it when it ends)")
    monkeypatch.setenv("LK_ABLATE_LEASE_EXPIRY_S", "abc")
    assert fit(data, tmp_path / "run2", "--trainer.max_steps", "1") == 2
    assert last_error(capsys) == ("lk_ablate: error: LK_ABLATE_LEASE_EXPIRY_S='abc' is not a number of seconds; "
                                  "unset it (default 120) or give one, e.g. LK_ABLATE_LEASE_EXPIRY_S=120")
    monkeypatch.delenv("LK_ABLATE_LEASE_EXPIRY_S")
    import lk_ablate.training.lease as lease

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(lease.os, "makedirs", read_only)  # `fit` into a folder on a read-only file system
    assert fit(data, tmp_path / "ro", "--trainer.max_steps", "1") == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: cannot create checkpoint folder {tmp_path / 'ro' / 'checkpoints'}: Read-only file "
        "system (errno EROFS); set checkpoint.dirpath to a writable folder")


def test_records_of_every_checkpoint_callback_follow_changed_options(tmp_path):
    """The unit under the resume above, for both callbacks of the ImageNet configs (the raw best with last.ckpt, and
    BestCheckpoint's best EMA): each takes the record of its own monitor stored under its old key; a record no
    callback monitors any more is named, not used."""
    from types import SimpleNamespace

    from lk_ablate.training.best_checkpoint import BestCheckpoint
    from lk_ablate.training.preemption import ResumableCheckpoint, adopt_checkpoint_records

    def rec(monitor: str, best: str) -> dict:
        return {"monitor": monitor, "best_model_path": str(tmp_path / best), "dirpath": str(tmp_path),
                "best_model_score": torch.tensor(0.5), "best_k_models": {str(tmp_path / best): torch.tensor(0.5)},
                "last_model_path": str(tmp_path / "last.ckpt")}

    old_raw = ResumableCheckpoint(dirpath=tmp_path, monitor="val/top1", mode="max", every_n_train_steps=3,
                                  save_last=True)
    old_ema = BestCheckpoint(dirpath=tmp_path, monitor="val/ema_top1", mode="max")
    old_top5 = BestCheckpoint(dirpath=tmp_path, monitor="val/acc5", mode="max")
    checkpoint = {"callbacks": {old_raw.state_key: rec("val/top1", "epoch001.ckpt"),
                                old_ema.state_key: rec("val/ema_top1", "best-ema-epoch002.ckpt"),
                                old_top5.state_key: rec("val/acc5", "top5.ckpt")}}
    raw = ResumableCheckpoint(dirpath=tmp_path, monitor="val/top1", mode="max", every_n_train_steps=7, save_last=True)
    ema = BestCheckpoint(dirpath=tmp_path, monitor="val/ema_top1", mode="max", every_n_epochs=2)
    minimum = BestCheckpoint(dirpath=tmp_path, monitor="val/acc5", mode="min")  # another direction: not adopted
    trainer = SimpleNamespace(callbacks=[raw, ema, minimum])
    with pytest.warns(UserWarning, match=r"the resumed checkpoint holds the record of 1 checkpoint callback\(s\) that "
                                         r"this run does not have \(BestCheckpoint\{'monitor': 'val/acc5'"):
        lines = adopt_checkpoint_records(trainer, checkpoint)
    assert lines == [
        "checkpoint options changed since the resumed checkpoint was written (every_n_train_steps 3 -> 7): the record "
        "of the best checkpoints by val/top1 (best: epoch001.ckpt) and last.ckpt carry over",
        "checkpoint options changed since the resumed checkpoint was written (every_n_epochs 1 -> 2): the record of "
        "the best checkpoints by val/ema_top1 (best: best-ema-epoch002.ckpt) carries over"]
    states = checkpoint["callbacks"]
    assert states[raw.state_key]["best_model_path"].endswith("epoch001.ckpt")
    assert states[ema.state_key]["best_model_path"].endswith("best-ema-epoch002.ckpt")
    assert adopt_checkpoint_records(trainer, checkpoint) == []  # once per loaded checkpoint


def test_lightning_option_errors_are_one_line(data, tmp_path, capsys):
    """Lightning's own checks of trainer options (a ValueError from its loops) end in one line too."""
    assert fit(data, tmp_path / "run", "--trainer.val_check_interval", "100") == 2
    assert last_error(capsys) == (
        "lk_ablate: error: `val_check_interval` (100) must be less than or equal to the number of the training batches "
        "(3). If you want to disable validation set `limit_val_batches` to 0.0 instead. If you want to validate based "
        "on the total training batches, set `check_val_every_n_epoch=None`.")
