"""The recipe configs (warmup, the 224 px 22K->1K fine-tune) and best raw / best EMA checkpoints."""
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lk_ablate.cli import main
from lk_ablate.training.best_checkpoint import BestCheckpoint
from recipe_probes import check_config_effects

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EMA_CALLBACK = "lk_ablate.training.best_checkpoint.BestCheckpoint"


def print_config(capsys, config):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_replknet_31b_finetune_224_is_the_official_22k_to_1k_command(capsys):
    cfg = print_config(capsys, "replknet_31b_finetune_224.yaml")
    t, m, d = cfg["trainer"], cfg["model"], cfg["data"]["init_args"]
    assert (t["devices"], t["num_nodes"], d["batch_size"], t["accumulate_grad_batches"]) == (8, 2, 32, 1)  # 16 x 32
    assert t["max_epochs"] == 30 and m["base_lr"] == 4e-4 and m["base_batch_size"] == 512
    assert m["drop_path_rate"] == 0.2 and m["weight_decay"] == 1e-8 and m["warmup_epochs"] == 1
    assert m["mixup_alpha"] == 0.0 and m["cutmix_alpha"] == 0.0 and m["layer_decay"] == 0.7
    assert m["ema_decay"] == 0.9999 and m["min_lr"] == 1e-6 and m["label_smoothing"] == 0.1
    assert (d["input_size"], d["crop_pct"], d["crop_mode"]) == (224, 0.875, "center")
    assert m["pretrained_path"].endswith("RepLKNet-31B_ImageNet-22K.pth")
    # the module the section instantiates computes these values: no mixup, smoothing 0.1 on the loss, drop path
    # 0.2 by the linear rule, EMA 0.9999, lr 4e-4 at 512 with layer decay 0.7, weight decay 1e-8, 1 warmup epoch
    check_config_effects(m, d["batch_size"], t["devices"] * t["num_nodes"], t["accumulate_grad_batches"])


@pytest.mark.parametrize("config", ["convnext_k51.yaml"] + [pytest.param(c, marks=pytest.mark.slow) for c in (
    "convnext_k3.yaml", "replknet_31b.yaml", "replknet_3b.yaml")])
def test_120_epoch_configs_warm_up_20_epochs_and_keep_best_raw_and_best_ema(config, capsys):
    cfg = print_config(capsys, config)
    assert cfg["trainer"]["max_epochs"] == 120 and cfg["model"]["warmup_epochs"] == 20
    (cb,) = [c for c in cfg["trainer"]["callbacks"] if c["class_path"] == EMA_CALLBACK]
    assert cb["init_args"]["monitor"] == "val/ema_top1" and cb["init_args"]["mode"] == "max"
    assert cb["init_args"]["filename"].startswith("best-ema-")
    assert cfg["checkpoint"]["monitor"] == "val/top1" and not cfg["checkpoint"]["filename"].startswith("best-ema-")


class _Scores(L.LightningModule):
    """Logs prescribed raw / EMA validation accuracies, one pair per epoch."""

    def __init__(self, raw, ema):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.raw, self.ema = raw, ema

    def training_step(self, batch, idx):
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, idx):
        e = self.current_epoch
        self.log("val/top1", self.raw[e])
        if self.ema is not None:
            self.log("val/ema_top1", self.ema[e])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, ema):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=2)
    raw_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/top1", mode="max",
                                                 filename="epoch{epoch:03d}", auto_insert_metric_name=False)
    ema_cb = BestCheckpoint(monitor="val/ema_top1", mode="max", filename="best-ema-epoch{epoch:03d}",
                            auto_insert_metric_name=False)
    trainer = L.Trainer(max_epochs=3, callbacks=[raw_cb, ema_cb], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path / "elsewhere")
    trainer.fit(_Scores([0.5, 0.4, 0.3], ema), data, data)
    return sorted(p.name for p in tmp_path.glob("*.ckpt"))


def test_best_raw_and_best_ema_are_separate_files_in_one_folder(tmp_path):
    assert _fit(tmp_path, [0.1, 0.2, 0.6]) == ["best-ema-epoch002.ckpt", "epoch000.ckpt"]


def test_best_ema_saves_nothing_in_a_run_without_ema(tmp_path):
    assert _fit(tmp_path, None) == ["epoch000.ckpt"]
