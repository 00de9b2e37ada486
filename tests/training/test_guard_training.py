"""Training guards: resume from the epoch-end ``last.ckpt`` (the most common real resume point) is bit-identical
to an uninterrupted run through ImageFolder and FFCV; per-sample augmentations change from epoch to epoch;
ImageClassifier's own optimizer groups (weight decay, lr) are the recipe's.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from ffcv_helpers import write_betons, write_indexed_beton
from helpers import make_image_folder
from lk_ablate.data import FFCVDataModule, ImageFolderDataModule
from lk_ablate.training import ImageClassifier
from lk_ablate.training.preemption import ResumableCheckpoint
from test_resume import KillAtStep, Killed, assert_same, final_state

BATCHES = 7  # 28 images, batch 4


def _model() -> ImageClassifier:
    return ImageClassifier("convnext_demo", kernel_size=5, num_classes=4, drop_path_rate=0.2, base_lr=1e-3,
                           base_batch_size=8, warmup_epochs=0.5, label_smoothing=0.1, mixup_alpha=0.8,
                           cutmix_alpha=1.0, ema_decay=0.9, seed=3)


def _trainer(ckpt_dir, callbacks=()) -> L.Trainer:
    # The CLI's checkpoint: last.ckpt every 5 steps and at every epoch end (after validation), top-k by val/top1.
    ckpt = ResumableCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_last=True, monitor="val/top1",
                               mode="max", save_top_k=1)
    return L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[ckpt, *callbacks], num_sanity_val_steps=0,
                     use_distributed_sampler=False, deterministic=True)


def _epoch_end_resume(tmp_path, make_data) -> None:
    L.seed_everything(3)
    model_a, data_a, trainer_a = _model(), make_data(), _trainer(tmp_path / "a")
    trainer_a.fit(model_a, data_a)
    assert trainer_a.global_step == 2 * BATCHES
    straight = final_state(model_a, trainer_a)
    data_a.teardown("fit")

    L.seed_everything(3)
    model_b, data_b, trainer_b = _model(), make_data(), _trainer(tmp_path / "b", [KillAtStep(BATCHES)])
    with pytest.raises(Killed):  # killed before the first step of epoch 1
        trainer_b.fit(model_b, data_b)
    data_b.teardown("fit")
    last = tmp_path / "b" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == BATCHES and ckpt["epoch"] == 0  # written at the end of epoch 0
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state == {"epoch": 0, "batches_completed": BATCHES, "num_batches": BATCHES}

    L.seed_everything(3)
    model_c, data_c, trainer_c = _model(), make_data(), _trainer(tmp_path / "c")
    trainer_c.fit(model_c, data_c, ckpt_path=str(last))
    assert trainer_c.global_step == 2 * BATCHES and trainer_c.current_epoch == 2
    resumed = final_state(model_c, trainer_c)
    data_c.teardown("fit")
    for part, a, b in zip(("model", "ema", "optimizer", "scheduler"), straight, resumed):
        assert_same(a, b, part)


@pytest.mark.slow
def test_epoch_end_resume_is_exact(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=4, per_class=7, size=36)
    _epoch_end_resume(tmp_path, lambda: ImageFolderDataModule(str(root), batch_size=4, num_workers=1, input_size=32,
                                                              re_prob=0.25, persistent_workers=False))


@pytest.mark.slow
@pytest.mark.ffcv
def test_epoch_end_resume_through_ffcv_is_exact(tmp_path):
    train, val = write_betons(tmp_path / "data", classes=4, per_class=7, size=36, ext="jpg", write_mode="proportion")
    _epoch_end_resume(tmp_path, lambda: FFCVDataModule(train, val, batch_size=4, num_workers=2, input_size=32,
                                                       re_prob=0.25))


# --- augmentations change across epochs ----------------------------------------------------------------------
def _by_index(loader, epoch: int) -> dict[int, torch.Tensor]:
    """Sample index -> its augmented image in ``epoch`` (the sampler yields (index, epoch) pairs)."""
    loader.batch_sampler.set_epoch(epoch)
    order = [i for batch in loader.batch_sampler for i, _ in batch]
    loader.batch_sampler.set_epoch(epoch)
    images = torch.cat([x for x, _ in loader])
    return dict(zip(order, images))


def test_imagefolder_augmentations_differ_across_epochs(tmp_path):
    """Each sample's augmentation is drawn from (seed, epoch, index): the same sample in epochs 0 and 1 differs
    (all 24), while a second pass over epoch 0 repeats it bit for bit."""
    root = make_image_folder(tmp_path / "data", classes=4, per_class=6, size=36)
    dm = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, input_size=32, seed=5, re_prob=0.25)
    dm.setup("fit")
    loader = dm.train_dataloader()
    e0, e0_again, e1 = _by_index(loader, 0), _by_index(loader, 0), _by_index(loader, 1)
    assert sorted(e0) == sorted(e1) == list(range(24))
    assert all(torch.equal(e0[i], e0_again[i]) for i in e0)
    assert sum(not torch.equal(e0[i], e1[i]) for i in e0) == 24


@pytest.mark.ffcv
def test_ffcv_augmentations_differ_across_epochs(tmp_path):
    """The same through FFCV: sample i of an indexed .beton (label i) gets other crops and ops in epoch 1."""
    path = write_indexed_beton(tmp_path, n=16, size=36)
    from lk_ablate.data.ffcv_augment import build_params
    from lk_ablate.data.ffcv_loader import FFCVLoader, SeededAugment, SeededRandomResizedCrop

    params, ops = build_params((0.5,) * 3, (0.25,) * 3, True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    loader = FFCVLoader(path, SeededRandomResizedCrop((32, 32)), SeededAugment(params, ops, True), batch_size=4,
                        train=True, order="random", seed=5, num_workers=1)

    def epoch(e: int) -> dict[int, np.ndarray]:
        loader.set_epoch(e)
        return {int(y): x.numpy().copy() for xb, yb in loader for x, y in zip(xb, yb)}

    e0, e0_again, e1 = epoch(0), epoch(0), epoch(1)
    assert sorted(e0) == sorted(e1) == list(range(16))
    assert all(np.array_equal(e0[i], e0_again[i]) for i in e0)
    assert sum(not np.array_equal(e0[i], e1[i]) for i in e0) == 16


# --- the optimizer ImageClassifier builds ------------------------------------------------------------------
class _Capture(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.groups = [dict(g) for g in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # the lr of the first optimizer step (the schedule's length is set in the module's on_train_start, which
        # runs after the callbacks' on_train_start: see ImageClassifier.schedule_length)
        if trainer.global_step == 0 and batch_idx == 0:
            self.lr_at_start = [g["lr"] for g in trainer.optimizers[0].param_groups]


def test_image_classifier_optimizer_groups(tmp_path):
    """configure_optimizers of ImageClassifier itself: weight decay 0.05 on exactly the parameters with ndim > 1
    that are not biases, 0 on the rest (LayerNorm weights, biases, layer-scale gamma); each parameter once; lr =
    base_lr x global batch / base batch (2e-3 x 8 / 4096), times the first warmup step's factor 1 / warmup steps."""
    root = make_image_folder(tmp_path / "data", classes=4, per_class=2, size=36)  # 8 images: 2 batches of 4
    model = ImageClassifier("convnext_demo", kernel_size=3, num_classes=4, base_lr=2e-3, base_batch_size=4096,
                            weight_decay=0.05, warmup_epochs=1.0, ema_decay=None, mixup_alpha=0.0, cutmix_alpha=0.0)
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, input_size=32, persistent_workers=False)
    cap = _Capture()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[cap],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, data)
    names = {id(p): n for n, p in model.model.named_parameters()}
    decay = {n for n, p in model.model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")}
    no_decay = set(names.values()) - decay
    assert len(decay) == 1 + 8 * 3 + 4 + 1  # stem conv, 8 blocks x (conv_dw, fc1, fc2), 4 downsample convs, head fc
    seen: dict[str, float] = {}
    for g in cap.groups:
        for p in g["params"]:
            assert names[id(p)] not in seen
            seen[names[id(p)]] = g["weight_decay"]
    assert set(seen) == set(names.values())
    assert {n for n, wd in seen.items() if wd == 0.05} == decay
    assert {n for n, wd in seen.items() if wd == 0.0} == no_decay
    assert "stages.0.blocks.0.gamma" in no_decay and "head.norm.weight" in no_decay
    assert "stages.2.blocks.1.conv_dw.weight" in decay
    lr = 2e-3 * 4 / 4096
    assert all(g["initial_lr"] == pytest.approx(lr, rel=1e-15) for g in cap.groups)
    assert all(x == pytest.approx(lr / 2, rel=1e-15) for x in cap.lr_at_start)  # warmup step 0 of 2
