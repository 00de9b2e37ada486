"""LightningCLI for lk_ablate: ImageClassifier + any DataModule, trainer defaults for ablation runs."""
from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .data.base import ClassificationDataModule
from .training.module import ImageClassifier

# Noise that says nothing about the run: the srun hint fires whenever SLURM is installed, even for local runs.
for _message in (r".*The `srun` command is available on your system but is not used.*",
                 r".*LightningCLI's args parameter is intended to run from within Python.*",
                 r".*isinstance\(treespec, LeafSpec\).*"):
    warnings.filterwarnings("ignore", message=_message)

TRAINER_DEFAULTS = {
    "default_root_dir": "checkpoints",
    # Our DataModules shard by rank themselves (no duplicates in evaluation); Lightning must not re-wrap them.
    "use_distributed_sampler": False,
}


class LkAblateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch:03d}-step{step:07d}",
            "checkpoint.auto_insert_metric_name": False,
        })


def build_cli(args: Sequence[str] | None, run: bool = True) -> LkAblateCLI:
    """``args`` None reads sys.argv (the console script); tests pass a list."""
    return LkAblateCLI(ImageClassifier, ClassificationDataModule, subclass_mode_model=False,
                       subclass_mode_data=True, trainer_defaults=dict(TRAINER_DEFAULTS), args=None if args is None else list(args),
                       run=run, seed_everything_default=0,
                       save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


def run_lightning_cli(args: Sequence[str]) -> LkAblateCLI:
    return build_cli(None if list(args) == sys.argv[1:] else args)
