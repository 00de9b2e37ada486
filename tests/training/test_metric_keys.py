"""Training's accuracies are logged in percent under the metric-key names (``val/top1``, ``val/ema_top5``, ...), and a
run resumed from a checkpoint whose callbacks monitored the old fraction key (``val/acc1``) keeps its best score's
meaning (converted to the new key and to percent when the checkpoint is loaded)."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from lk_ablate.cli import main
from lk_ablate.lightning_cli import build_cli
from lk_ablate.training.module import ImageClassifier

from helpers import make_image_folder

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "configs" / "cluster_tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=4, per_class=6, size=36)


def test_validation_accuracies_are_percent_of_an_independent_count(data):
    """val/top1, val/top5 and the EMA's equal 100 x (correct / images) counted here from the models' logits."""
    torch.manual_seed(0)
    module = ImageClassifier(model_name="convnext_demo", kernel_size=3, num_classes=4, ema_decay=0.5)
    with torch.no_grad():  # an EMA that differs from the raw model
        for p in module.ema.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    from lk_ablate.data import ImageFolderDataModule

    dm = ImageFolderDataModule(root=str(data), batch_size=5, num_workers=0, input_size=32, model_name="convnext_demo")
    dm.setup("validate")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    got = trainer.callback_metrics
    module.eval()
    counts = {"top1": 0, "top5": 0, "ema_top1": 0, "ema_top5": 0}
    n = 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            for prefix, net in (("", module.model), ("ema_", module.ema.module)):
                rank = (net(x) > net(x).gather(1, y[:, None])).sum(1)  # classes scored above the label
                counts[f"{prefix}top1"] += int((rank < 1).sum())
                counts[f"{prefix}top5"] += int((rank < 4).sum())  # top-5 of 4 classes: min(5, classes)
            n += len(y)
    assert n == 24  # 4 classes x 6 validation images
    for key, correct in counts.items():
        assert float(got[f"val/{key}"]) == pytest.approx(100.0 * correct / n, rel=0, abs=1e-4), key
    assert not [k for k in got if "acc" in k]  # no fraction keys left


def _old_style(ckpt: dict) -> dict:
    """``ckpt`` as lk_ablate wrote it before the rename: callbacks monitoring ``val/acc1``, scores as fractions."""
    out = dict(ckpt)
    out["callbacks"] = {}
    for key, state in ckpt["callbacks"].items():
        if "'monitor': 'val/top1'" in key:
            state = dict(state, monitor="val/acc1")
            for f in ("best_model_score", "kth_value", "current_score"):
                if isinstance(state.get(f), torch.Tensor):
                    state[f] = state[f] / 100.0
            state["best_k_models"] = {p: s / 100.0 for p, s in state["best_k_models"].items()}
            key = key.replace("'monitor': 'val/top1'", "'monitor': 'val/acc1'")
        out["callbacks"][key] = state
    return out


def test_resume_from_a_fraction_checkpoint_keeps_the_best_score(data, tmp_path):
    run = tmp_path / "run"
    common = ["--config", TINY, "--data.root", str(data), "--trainer.logger", "false",
              "--trainer.default_root_dir", str(run), "--checkpoint.dirpath", str(run / "ckpt"),
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(["fit", *common])
    # a fresh run's folder holds only its lease when the callbacks are set up: no "exists and is not empty"
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    cb = cli.trainer.checkpoint_callback
    best = float(cb.best_model_score)
    assert cb.monitor == "val/top1" and 1.0 < best <= 100.0 and len(cb.best_k_models) == 1  # percent, 6 images
    ckpt = torch.load(cb.last_model_path, map_location="cpu", weights_only=False)
    old = run / "ckpt" / "old.ckpt"
    torch.save(_old_style(ckpt), old)
    # resumed with the epoch already done: nothing trains, the restored callback state is what the run carries on
    resumed = build_cli(["fit", *common, "--ckpt_path", str(old)])
    rcb = resumed.trainer.checkpoint_callback
    assert rcb.best_model_score is not None, "the callback state was not restored"
    assert float(rcb.best_model_score) == pytest.approx(best, rel=1e-6)
    assert {p: float(s) for p, s in rcb.best_k_models.items()} == pytest.approx(
        {p: float(s) for p, s in cb.best_k_models.items()}, rel=1e-6)


def test_fresh_fit_warns_when_the_folder_holds_more_than_the_lease(data, tmp_path):
    """The lease alone is no reason to warn; a folder with an earlier run's file still is."""
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "ckpt" / "stale.ckpt").write_bytes(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", TINY, "--data.root", str(data), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(run), "--checkpoint.dirpath", str(run / "ckpt"),
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                     "--trainer.limit_val_batches", "1"]) == 0
    assert [w for w in caught if "exists and is not empty" in str(w.message)]
