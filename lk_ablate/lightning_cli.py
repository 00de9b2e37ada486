"""LightningCLI for lk_ablate: ImageClassifier + any DataModule, trainer defaults for ablation runs."""
from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .data.base import ClassificationDataModule
from .training.module import ImageClassifier
from .training.preemption import ResumableCheckpoint, cli_trainer_extras, resolve_ckpt_path
from .training.wandb import WandbRun, configure_wandb_loggers, finish_wandb_run, resolved_config, wandb_loggers

# Noise that says nothing about the run: the srun hint fires whenever SLURM is installed, even for local runs.
for _message in (r".*The `srun` command is available on your system but is not used.*",
                 r".*LightningCLI's args parameter is intended to run from within Python.*",
                 r".*isinstance\(treespec, LeafSpec\).*",
                 # the EMA copy is kept in eval mode on purpose
                 r".*module\(s\) in eval mode at the start of training.*"):
    warnings.filterwarnings("ignore", message=_message)

TRAINER_DEFAULTS = {
    "default_root_dir": "checkpoints",
    # Our DataModules shard by rank themselves (no duplicates in evaluation); Lightning must not re-wrap them.
    "use_distributed_sampler": False,
}


class LkAblateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # ModelCheckpoint whose every_n_train_steps refreshes last.ckpt only (top-k after validation), see preemption.py
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch:03d}-step{step:07d}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def instantiate_trainer(self, **kwargs):
        # Atomic checkpoint writes and step-boundary SLURM requeues, unless the config brings its own CheckpointIO.
        return super().instantiate_trainer(**cli_trainer_extras(self._get(self.config_init, "trainer", default={}),
                                                                kwargs))

    def before_instantiate_classes(self) -> None:
        # W&B loggers: run name/tags/group from model and seed, job type, and a resumed run's id (training/wandb.py).
        configure_wandb_loggers(self.config[self.subcommand] if self.subcommand else self.config, self.subcommand)

    def after_instantiate_classes(self) -> None:
        # W&B: log the full resolved config, keep the run id in every checkpoint.
        if wandb_loggers(self.trainer):
            self.trainer.callbacks.append(WandbRun(resolved_config(
                self._parser(self.subcommand), self.config[self.subcommand] if self.subcommand else self.config)))

    def before_fit(self) -> None:
        # `--ckpt_path auto`: resume from the newest complete checkpoint of this run, or start fresh (SLURM requeues).
        cfg = self.config_init[self.subcommand]
        cfg["ckpt_path"] = resolve_ckpt_path(cfg.get("ckpt_path"), self.trainer)


def build_cli(args: Sequence[str] | None, run: bool = True) -> LkAblateCLI:
    """``args`` None reads sys.argv (the console script); tests pass a list."""
    try:
        cli = LkAblateCLI(ImageClassifier, ClassificationDataModule, subclass_mode_model=False,
                          subclass_mode_data=True, trainer_defaults=dict(TRAINER_DEFAULTS),
                          args=None if args is None else list(args), run=run, seed_everything_default=0,
                          save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    if run:  # one W&B run per command: a later command in this process starts its own
        finish_wandb_run()
    return cli


def run_lightning_cli(args: Sequence[str]) -> LkAblateCLI:
    return build_cli(None if list(args) == sys.argv[1:] else args)
