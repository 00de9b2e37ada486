"""RobustnessEvaluation inside a real ``fit`` of lk_ablate's ImageClassifier (reduced ConvNeXt, 1000 classes, EMA)."""
from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_robustness_support import small_trees

from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.base.results import read_results
from lk_ablate.robustness import RobustnessEvaluation
from lk_ablate.robustness.benchmarks import build_benchmarks
from lk_ablate.robustness.evaluate import evaluate
from lk_ablate.evaluation import ModelOptions, load_for_eval
from lk_ablate.training import ImageClassifier


class RandomData(L.LightningDataModule):
    """16 random 32x32 images over 1000 classes: enough to take real optimizer steps."""

    def __init__(self, batch_size: int = 8, n: int = 16) -> None:
        super().__init__()
        self.batch_size, self.num_classes = batch_size, 1000
        g = torch.Generator().manual_seed(0)
        self.ds = torch.utils.data.TensorDataset(torch.randn(n, 3, 32, 32, generator=g),
                                                 torch.randint(0, 1000, (n,), generator=g))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.ds, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.ds, batch_size=self.batch_size)


def make_module(num_classes: int = 1000, ema: bool = True, spread: bool = False) -> ImageClassifier:
    """``spread``: layer scale 1 and a 10x head, so logits are far apart (no near-ties at initialisation)."""
    kwargs = {"ls_init_value": 1.0, "head_init_scale": 10.0} if spread else None
    return ImageClassifier(model_name="convnext_demo", kernel_size=3, num_classes=num_classes, drop_path_rate=0.0,
                           model_kwargs=kwargs, base_lr=1e-3, base_batch_size=8, warmup_epochs=0.0,
                           label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, ema_decay=0.5 if ema else None,
                           seed=0)


def make_trainer(tmp_path: Path, callbacks: list, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=kw.pop("max_epochs", 2),
                     logger=kw.pop("logger", False), enable_progress_bar=False, enable_model_summary=False,
                     callbacks=callbacks, num_sanity_val_steps=0, **kw)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return small_trees(tmp_path_factory.mktemp("trees"), a=True)


@pytest.mark.slow
def test_scores_each_epoch_writes_json_beside_checkpoints_and_logs(tmp_path, trees):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1, save_last=True)
    rob = RobustnessEvaluation(**trees, every_n_epochs=1, batch_size=32, num_workers=0)
    logger = CSVLogger(tmp_path, name="logs")
    trainer = make_trainer(tmp_path, [rob, ckpt_cb], logger=logger)
    trainer.fit(make_module(), datamodule=RandomData())
    names = sorted(p.name for p in (tmp_path / "ckpts").iterdir())
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=2.robustness.json", "epoch=1-step=4.ckpt",
                     "epoch=1-step=4.robustness.json", "last.ckpt", "last.robustness.json"]
    assert rob._scored_steps == {2, 4}  # the fit-end scoring found step 4 already scored

    for ckpt in ("epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"):
        path = tmp_path / "ckpts" / ckpt
        data = read_results(path.with_suffix(".robustness.json"))
        stored = torch.load(path, map_location="cpu", weights_only=False)
        assert data["checkpoint"] == {"path": str(path), "epoch": stored["epoch"], "global_step": stored["global_step"],
                                      "format": "lightning"}
        assert data["model"]["name"] == "convnext_demo" and data["model"]["kernel_sizes"] == [3, 3, 3, 3]
        assert data["model"]["config"]["num_classes"] == 1000 and data["model"]["config"]["resize_size"] == 32
        assert set(data["weights"]) == {"raw", "ema"} and data["primary"] == "ema" and data["errors"] == []
        # The numbers are those of the weights stored in that checkpoint, scored afresh.
        loaded = load_for_eval(ModelOptions(ckpt_path=str(path), weights="both"))
        fresh, errors = evaluate(loaded.models, loaded.config, build_benchmarks(**trees), batch_size=7, num_workers=0)
        assert errors == [] and fresh == data["weights"]
        assert data["weights"]["raw"]["imagenet_a"]["n"] == 201
    assert read_results(tmp_path / "ckpts" / "last.robustness.json")["checkpoint"]["global_step"] == 4

    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("robust/imagenet_a/top1")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    last = read_results(tmp_path / "ckpts" / "epoch=1-step=4.robustness.json")["weights"]
    assert float(rows[1]["robust/imagenet_a/top1"]) == pytest.approx(last["raw"]["imagenet_a"]["top1"])
    assert float(rows[1]["robust/imagenet_a/top1_ema"]) == pytest.approx(last["ema"]["imagenet_a"]["top1"])
    assert float(rows[1]["robust/errors"]) == 0.0


class Recording(RobustnessEvaluation):
    """Keeps a copy of the weights it scores."""

    seen: list

    def score(self, trainer, pl_module, epoch, step):
        self.seen = getattr(self, "seen", []) + [(step, {k: v.clone() for k, v in pl_module.model.state_dict().items()})]
        return super().score(trainer, pl_module, epoch, step)


def test_every_checkpoint_mid_epoch(tmp_path, trees):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=1, save_top_k=-1)
    rob = Recording(**trees, on_checkpoint=True, at_fit_end=False, weights="raw", batch_size=64, num_workers=0)
    trainer = make_trainer(tmp_path, [rob, ckpt_cb], max_epochs=1)
    trainer.fit(make_module(), datamodule=RandomData())
    jsons = sorted((tmp_path / "ckpts").glob("*.robustness.json"))
    assert [p.name for p in jsons] == ["epoch=0-step=1.robustness.json", "epoch=0-step=2.robustness.json"]
    first, second = (read_results(p) for p in jsons)
    assert (first["checkpoint"]["global_step"], second["checkpoint"]["global_step"]) == (1, 2)
    assert set(first["weights"]) == {"raw"}
    # Scored after the save completed and before the next optimizer step: exactly the checkpoint's weights.
    assert [step for step, _ in rob.seen] == [1, 2]
    for (step, weights), path in zip(rob.seen, ("epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt")):
        stored = torch.load(tmp_path / "ckpts" / path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.equal(v, stored[f"model.{k}"]) for k, v in weights.items())
    assert not all(torch.equal(rob.seen[0][1][k], rob.seen[1][1][k]) for k in rob.seen[0][1])


@pytest.mark.slow
def test_fit_end_without_checkpoint_and_a_bad_image(tmp_path, trees):
    broken = tmp_path / "imagenet-a"
    import shutil

    shutil.copytree(trees["imagenet_a"], broken)
    victim = next(p for p in sorted(broken.iterdir()) if p.is_dir())
    bad = next(victim.iterdir())
    bad.write_bytes(b"not a jpeg")  # passes the layout check, fails when read
    # on_bad_image: error (default): fit stops with one line naming the file; no results are written.
    rob = RobustnessEvaluation(imagenet_a=str(broken), batch_size=64, num_workers=0, output_dir=str(tmp_path / "out"))
    trainer = make_trainer(tmp_path, [rob], max_epochs=1, enable_checkpointing=False)
    with pytest.raises(DataError, match=f"imagenet_a: cannot read image {bad}: UnidentifiedImageError") as e:
        trainer.fit(make_module(ema=False), datamodule=RandomData())
    assert "\n" not in str(e.value) and trainer.global_step == 2 and not (tmp_path / "out").exists()
    # on_bad_image: skip: the run finishes, the results list the file.
    rob = RobustnessEvaluation(imagenet_a=str(broken), batch_size=64, num_workers=0, on_bad_image="skip",
                               output_dir=str(tmp_path / "out"))
    trainer = make_trainer(tmp_path, [rob], max_epochs=1, enable_checkpointing=False)
    trainer.fit(make_module(ema=False), datamodule=RandomData())
    assert trainer.state.finished and trainer.global_step == 2
    data = read_results(tmp_path / "out" / "epoch=0-step=2.robustness.json")
    assert data["checkpoint"] == {"path": None, "epoch": 0, "global_step": 2, "format": None}
    entry = data["weights"]["raw"]["imagenet_a"]
    assert data["errors"] == [] and entry["skipped_images"] == [str(bad)] and entry["n_skipped"] == 1
    assert data["settings"]["scoring"] == {"decode": "cpu", "precision": "32-true", "on_bad_image": "skip"}


def test_layout_error_stops_fit_before_training(tmp_path, trees):
    module = make_module()
    steps = []
    module.on_train_batch_start = lambda *a, **k: steps.append(1)
    rob = RobustnessEvaluation(imagenet_a=str(tmp_path / "missing"), num_workers=0)
    trainer = make_trainer(tmp_path, [rob])
    with pytest.raises(DataError, match="ImageNet-A: wrong or partial layout"):
        trainer.fit(module, datamodule=RandomData())
    assert steps == [] and trainer.global_step == 0


def test_config_errors(tmp_path, trees):
    with pytest.raises(ConfigError, match="no benchmark"):
        RobustnessEvaluation()
    with pytest.raises(ConfigError, match="unknown ImageNet-C corruptions"):
        RobustnessEvaluation(imagenet_c="/x", corruptions=["rain"])
    trainer = make_trainer(tmp_path, [RobustnessEvaluation(**trees, num_workers=0)])
    with pytest.raises(ConfigError, match="1000-class model"):
        trainer.fit(make_module(num_classes=10), datamodule=_TenClasses())


class _TenClasses(RandomData):
    def __init__(self):
        super().__init__()
        self.num_classes = 10
        self.ds = torch.utils.data.TensorDataset(self.ds.tensors[0], self.ds.tensors[1] % 10)


@pytest.mark.slow
def test_results_json_is_plain_json(tmp_path, trees):
    rob = RobustnessEvaluation(**trees, batch_size=64, num_workers=0)
    trainer = make_trainer(tmp_path, [rob, ModelCheckpoint(dirpath=tmp_path / "c")], max_epochs=1)
    trainer.fit(make_module(ema=False), datamodule=RandomData())
    text = (tmp_path / "c" / "epoch=0-step=2.robustness.json").read_text()
    assert json.loads(text)["weights"]["raw"]["imagenet_a"]["n"] == 201 and "NaN" not in text


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_signal_during_end_of_fit_scoring_stops_with_the_signal_status(tmp_path, trees, monkeypatch, signum, code):
    """A job killed while the end-of-fit scoring runs exits 128 + signal, not 0 as if the scoring had completed."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lk_ablate.training.preemption import stop_exit_code

    def killed_while_scoring(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(20)  # the signal must interrupt this
        raise AssertionError("the end-of-fit scoring went on after the signal")

    monkeypatch.setattr("lk_ablate.robustness.callback.evaluate", killed_while_scoring)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    rob = RobustnessEvaluation(**trees, batch_size=32, num_workers=0)
    trainer = make_trainer(tmp_path, [rob, ckpt_cb], max_epochs=1)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SIGTERMException):
        trainer.fit(make_module(), datamodule=RandomData())
    assert stop_exit_code() == code
    assert signal.getsignal(signal.SIGINT) == before  # handlers restored
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
