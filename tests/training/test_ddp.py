"""Real DDP through the CLI: 2 CPU processes (gloo, one thread each) train like the ImageNet configs' recipe.

Checked: both ranks end with identical weights, EMA and optimizer states; each rank trained on its own half of
every epoch's order; the logged global batch is per-device batch x devices x nodes x accumulation, the peak lr is
base_lr x global / base_batch, and every step's lr follows the per-step warmup + cosine schedule. The sweep's
ImageNet configs resolve to the multi-GPU recipe (DDP, bf16-mixed, SyncBatchNorm for RepLKNet only).
(SyncBatchNorm itself needs GPUs: PyTorch refuses it in CPU DDP.)
"""
import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lk_ablate.cli import main

from cluster_helpers import REPO, TEST_CONFIGS, assert_same, start_cli, wait_ok
from helpers import make_image_folder


class RankStateDump(L.Callback):
    """Saves what each rank holds at the end of fit to ``<out_dir>/rank<r>.pt`` (test probe, used via the CLI)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.shards: list[list[int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.shards.append(list(trainer.train_dataloader.batch_sampler.shard()))

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"state_dict": pl_module.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                    "shards": self.shards, "world_size": trainer.world_size, "global_step": trainer.global_step},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def read_metrics(csv_path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None):
                    out.setdefault(k, []).append(float(v))
    return out


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_same_weights_and_global_batch(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=4, per_class=9, size=36)  # 36 images, 4 of them dropped
    out = tmp_path / "run"
    out.mkdir()
    max_epochs = 2
    args = ["fit", "--config", str(TEST_CONFIGS / "cluster_tiny.yaml"),
            "--data.init_args.root", str(root), "--trainer.default_root_dir", str(out),
            "--checkpoint.dirpath", str(out / "checkpoints"), "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.accumulate_grad_batches", "2", "--trainer.max_epochs", str(max_epochs),
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(out), "--trainer.logger.name", "csv",
            "--trainer.callbacks+=test_ddp.RankStateDump", "--trainer.callbacks.out_dir", str(out)]
    log = tmp_path / "ddp.log"
    wait_ok(start_cli(args, log), log, timeout=240)

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 36 images, 2 ranks x batch 4: 4 full batches per rank per epoch, 2 optimizer steps with accumulation 2.
    steps_per_epoch = 2
    assert [r["global_step"] for r in ranks] == [steps_per_epoch * max_epochs] * 2
    for epoch in range(max_epochs):
        a, b = ranks[0]["shards"][epoch], ranks[1]["shards"][epoch]
        assert len(a) == len(b) == 16 and not set(a) & set(b), "ranks must train on disjoint halves"
    # Identical weights (EMA included: it is part of the module) and optimizer states on both ranks.
    assert_same(ranks[0]["state_dict"], ranks[1]["state_dict"], "state_dict")
    assert_same(ranks[0]["optimizer"], ranks[1]["optimizer"], "optimizer")

    metrics = read_metrics(out / "csv" / "version_0" / "metrics.csv")
    global_batch = 4 * 2 * 1 * 2  # data.batch_size x devices x num_nodes x accumulate_grad_batches
    peak = 1e-3 * global_batch / 8  # base_lr x global batch / base_batch_size
    # Logged metrics are float32; the schedule facts in hparams.yaml are exact.
    assert metrics["train/global_batch_size"] == [float(global_batch)]
    assert metrics["train/peak_lr"] == [pytest.approx(peak, rel=1e-7)]
    facts = yaml.unsafe_load((out / "csv" / "version_0" / "hparams.yaml").read_text())["schedule"]
    assert facts == {"global_batch_size": global_batch, "peak_lr": peak, "total_steps": steps_per_epoch * max_epochs,
                     "warmup_steps": 1}
    # The lr of every optimizer step: linear warmup over 1 step (0.5 epoch) to the peak, then a half cosine from the
    # peak (at the end of warmup) to min_lr at the last step.
    total, warmup, min_lr = steps_per_epoch * max_epochs, 1, 1e-6
    expected = [peak * (s + 1) / warmup if s < warmup else
                min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
                for s in range(total)]
    assert metrics["train/lr"] == pytest.approx(expected, rel=1e-6)


SWEEP = {  # config -> (global batch of the recipe, SyncBatchNorm)
    **{f"convnext_k{k}": (4096, False) for k in (3, 7, 13, 31, 51)},
    "replknet_31b": (2048, True),  # RepLKNet's official recipe: 64 per GPU x 8 GPUs x update_freq 4
    "replknet_3b": (2048, True),
}


@pytest.mark.parametrize("name", [n if n == "replknet_31b" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(SWEEP)])
def test_sweep_configs_are_the_multi_gpu_recipe(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(REPO / "configs" / f"{name}.yaml"), "--print_config"])
    assert e.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    t, d, ckpt = cfg["trainer"], cfg["data"]["init_args"], cfg["checkpoint"]
    global_batch, sync_bn = SWEEP[name]
    assert (t["strategy"], t["precision"], t["accelerator"], t["max_epochs"]) == ("ddp", "bf16-mixed", "gpu", 120)
    assert t["sync_batchnorm"] is sync_bn and t["use_distributed_sampler"] is False
    assert d["batch_size"] * t["devices"] * t["num_nodes"] * t["accumulate_grad_batches"] == global_batch
    assert cfg["model"]["base_batch_size"] == global_batch  # so the lr is the recipe's base_lr on this set-up
    assert ckpt["save_last"] is True and ckpt["every_n_train_steps"] > 0  # periodic last.ckpt for pre-emption
