"""Through FFCV, a run stopped at a mid-epoch checkpoint and resumed ends bit-identical to an uninterrupted one."""
import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from ffcv_helpers import write_betons
from lk_ablate.data import FFCVDataModule
from lk_ablate.training import ImageClassifier
from test_resume import KillAtStep, Killed, assert_same, final_state

pytestmark = [pytest.mark.ffcv, pytest.mark.slow]


def make(train, val, ckpt_dir, extra_callbacks=()):
    L.seed_everything(3)
    model = ImageClassifier("convnext_demo", kernel_size=5, num_classes=4, drop_path_rate=0.2, base_lr=1e-3,
                            base_batch_size=8, warmup_epochs=0.5, label_smoothing=0.1, mixup_alpha=0.8,
                            cutmix_alpha=1.0, ema_decay=0.9, seed=3)
    data = FFCVDataModule(train, val, batch_size=4, num_workers=2, input_size=32, re_prob=0.25)
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_top_k=-1, save_last=False, filename="{step}")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt, *extra_callbacks], num_sanity_val_steps=0,
                        use_distributed_sampler=False, deterministic=True)
    return model, data, trainer


def test_mid_epoch_resume_through_ffcv_is_exact(tmp_path):
    train, val = write_betons(tmp_path / "data", classes=4, per_class=7, size=36, ext="jpg",
                              write_mode="proportion")  # 28 images: 7 batches per epoch, half JPEG
    model_a, data_a, trainer_a = make(train, val, tmp_path / "a")
    trainer_a.fit(model_a, data_a)
    assert trainer_a.global_step == 14
    straight = final_state(model_a, trainer_a)

    model_b, data_b, trainer_b = make(train, val, tmp_path / "b", [KillAtStep(10)])
    with pytest.raises(Killed):
        trainer_b.fit(model_b, data_b)
    data_b.teardown("fit")
    ckpt = tmp_path / "b" / "step=10.ckpt"  # epoch 1, batch 3 of 7: mid-epoch
    assert ckpt.is_file()
    model_c, data_c, trainer_c = make(train, val, tmp_path / "c")
    trainer_c.fit(model_c, data_c, ckpt_path=str(ckpt))
    assert trainer_c.global_step == 14
    resumed = final_state(model_c, trainer_c)
    for part, a, b in zip(("model", "ema", "optimizer", "scheduler"), straight, resumed):
        assert_same(a, b, part)
