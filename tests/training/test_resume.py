"""A run stopped at a mid-epoch checkpoint and resumed ends bit-identical to an uninterrupted one (CPU)."""
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lk_ablate.data import ImageFolderDataModule
from lk_ablate.training import ImageClassifier

from helpers import make_image_folder


class Killed(RuntimeError):
    pass


class KillAtStep(Callback):
    """Simulates a job killed right after the checkpoint of ``step`` was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def make(root, ckpt_dir, extra_callbacks=()):
    L.seed_everything(3)
    model = ImageClassifier("convnext_demo", kernel_size=5, num_classes=4, drop_path_rate=0.2, base_lr=1e-3,
                            base_batch_size=8, warmup_epochs=0.5, label_smoothing=0.1, mixup_alpha=0.8,
                            cutmix_alpha=1.0, ema_decay=0.9, seed=3)
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=1, input_size=32, re_prob=0.25,
                                 persistent_workers=False)
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_top_k=-1, save_last=False,
                           filename="{step}")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt, *extra_callbacks], num_sanity_val_steps=0,
                        use_distributed_sampler=False, deterministic=True)
    return model, data, trainer


def final_state(model, trainer):
    opt = trainer.optimizers[0].state_dict()
    sched = trainer.lr_scheduler_configs[0].scheduler.state_dict()
    return model.model.state_dict(), model.ema.module.state_dict(), opt, sched


def assert_same(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    else:
        assert a == b, what


@pytest.mark.slow
def test_mid_epoch_resume_is_exact(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=4, per_class=7, size=36)  # 28 images: 7 batches/epoch
    model_a, data_a, trainer_a = make(root, tmp_path / "a")
    trainer_a.fit(model_a, data_a)
    assert trainer_a.global_step == 14
    straight = final_state(model_a, trainer_a)

    model_b, data_b, trainer_b = make(root, tmp_path / "b", [KillAtStep(10)])
    with pytest.raises(Killed):
        trainer_b.fit(model_b, data_b)
    ckpt = tmp_path / "b" / "step=10.ckpt"  # epoch 1, batch 3 of 7: mid-epoch
    assert ckpt.is_file()
    model_c, data_c, trainer_c = make(root, tmp_path / "c")
    trainer_c.fit(model_c, data_c, ckpt_path=str(ckpt))
    assert trainer_c.global_step == 14
    resumed = final_state(model_c, trainer_c)
    for part, a, b in zip(("model", "ema", "optimizer", "scheduler"), straight, resumed):
        assert_same(a, b, part)
