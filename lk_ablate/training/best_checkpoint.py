"""A second best-checkpoint tracker (e.g. the best EMA accuracy), written beside the run's ``checkpoint`` files.

The official ConvNeXt / RepLKNet code keeps the best raw model and the best EMA model separately
(``checkpoint-best.pth`` and ``checkpoint-best-ema.pth``). The run's ``checkpoint`` callback tracks
``val/top1`` (raw weights); this one, listed in the trainer's ``callbacks``, tracks another metric such as
``val/ema_top1`` under its own file name. Without a ``dirpath`` it saves into the ``checkpoint`` callback's
folder, so one config line serves every run; in a run without that metric (no EMA) it saves nothing.
"""
from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from .lease import LeaseAwareSetup


class BestCheckpoint(LeaseAwareSetup, ModelCheckpoint):
    """ModelCheckpoint (top-k of ``monitor``, no ``last.ckpt`` by default) beside the run's other checkpoints."""

    def __init__(self, *args: Any, save_last: bool | None = False, **kwargs: Any) -> None:
        super().__init__(*args, save_last=save_last, **kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            # the folder of the run's main checkpoint callback (LightningCLI's ``checkpoint`` group)
            folders = [cb.dirpath for cb in trainer.checkpoint_callbacks
                       if cb is not self and getattr(cb, "dirpath", None)]
            if folders:
                self.dirpath = folders[0]
        super().setup(trainer, pl_module, stage)

    def _has_metric(self, trainer: L.Trainer) -> bool:
        return self.monitor is None or self.monitor in trainer.callback_metrics

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._has_metric(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._has_metric(trainer):
            super().on_train_epoch_end(trainer, pl_module)
