"""LightningCLI for lk_ablate: ImageClassifier + any DataModule, trainer defaults for ablation runs."""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .data.base import ClassificationDataModule
from .training.module import ImageClassifier
from .base.safe_load import load_torch_file
from .base.errors import ConfigError, DataError
from .training.lease import acquire_lease, is_global_rank_zero
from .training.preemption import (MODEL_FACTS, HoldLease, ResumableCheckpoint, check_lightning_checkpoint,
                                  cli_trainer_extras, resolve_ckpt_path, same_fact)
from .training.wandb import WandbRun, configure_wandb_loggers, finish_wandb_run, resolved_config, wandb_loggers

# Noise that says nothing about the run: the srun hint fires whenever SLURM is installed, even for local runs.
for _message in (r".*The `srun` command is available on your system but is not used.*",
                 r".*LightningCLI's args parameter is intended to run from within Python.*",
                 r".*isinstance\(treespec, LeafSpec\).*",
                 # the EMA copy is kept in eval mode on purpose
                 r".*module\(s\) in eval mode at the start of training.*"):
    warnings.filterwarnings("ignore", message=_message)

INT_OR_FRACTION = {f"trainer.limit_{s}_batches" for s in ("train", "val", "test", "predict")}

TRAINER_DEFAULTS = {
    "default_root_dir": "checkpoints",
    # Our DataModules shard by rank themselves (no duplicates in evaluation); Lightning must not re-wrap them.
    "use_distributed_sampler": False,
}


class LkAblateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Trainer's limit_*_batches are typed Union[float, int]: jsonargparse tries float first, so `1` (one batch)
        # became 1.0 (all batches). int first keeps YAML's and the command line's distinction.
        for action in parser._actions:
            if action.dest in INT_OR_FRACTION and hasattr(action, "_typehint"):
                action._typehint = Optional[Union[int, float]]
        # The model decides the image config its data is prepared with (size, crop, mean/std, interpolation; the
        # DataModule's own overrides apply over it): one fact, stated once, known when the config is parsed.
        parser.link_arguments("model.model_name", "data.init_args.model_name")
        # The class count is checked, not linked: the dataset knows it only once built (a folder listing, a .beton
        # header), a link applied on instantiation would drop model.num_classes from every config, and in
        # validate/test the checkpoint decides it (_parse_ckpt_path); so fit (ImageClassifier.on_fit_start) and
        # the evaluation commands (_check_dataset_classes) stop with one line when the two differ.
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
        # One run per checkpoint folder (training/lease.py), taken before anything in the folder is read.
        if is_global_rank_zero():
            folders = sorted({os.path.abspath(cb.dirpath) for cb in self.trainer.checkpoint_callbacks
                              if getattr(cb, "dirpath", None)})
            leases = []
            try:
                for folder in folders:
                    leases.append(acquire_lease(folder))
            except BaseException:
                for lease in leases:
                    lease.release()
                raise
        else:
            leases = []
        if leases:
            self.trainer.callbacks.append(HoldLease(leases))
        # `--ckpt_path auto`: resume from the newest complete checkpoint of this run, or start fresh (SLURM requeues);
        # checkpoints of another model (kernel size, classes, ...) in the folder are skipped with a warning.
        cfg = self.config_init[self.subcommand]
        expect = {k: self.model.hparams.get(k) for k in MODEL_FACTS}
        try:
            cfg["ckpt_path"] = resolve_ckpt_path(cfg.get("ckpt_path"), self.trainer, expect)
        except BaseException:
            for lease in leases:  # fit will not run: its teardown would not release them
                lease.release()
            raise

    def _check_dataset_classes(self) -> None:
        # validate/test/predict: a 1000-class model scored on a 4-class dataset gives a meaningless number.
        data_classes = getattr(self.datamodule, "num_classes", None)
        model_classes = self.model.hparams.get("num_classes")
        if isinstance(data_classes, int) and data_classes != model_classes:
            raise ConfigError(f"the model has {model_classes} classes but the dataset has {data_classes}: "
                              "evaluate on the dataset the checkpoint was trained for")

    before_validate = before_test = before_predict = _check_dataset_classes

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """The checkpoint decides the architecture, and says so (replaces LightningCLI's silent override).

        The model facts (MODEL_FACTS) that the command line or config set to something else than the checkpoint
        holds stop the run with one line listing them; facts left at their defaults are taken from the
        checkpoint, and the command prints what it uses. The checkpoint is read with the safe loader.
        """
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("auto", "last", "hpc", "best", "registry"):
            return
        if not os.path.isfile(ckpt_path):
            raise DataError(f"--ckpt_path: checkpoint not found: {ckpt_path}")
        ckpt = load_torch_file(ckpt_path, mmap=True)
        check_lightning_checkpoint(ckpt_path, ckpt)  # official weights: one line, not Lightning's KeyError
        hparams = dict(ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        given = self.config[sub].get("model")
        defaults = self._parser(sub).get_defaults().get("model")
        explicit = _explicit_model_keys(getattr(self, "_argv", []))
        differ, taken = [], []
        for key in MODEL_FACTS:
            if key not in hparams:
                continue
            value, default = given.get(key) if given else None, defaults.get(key) if defaults else None
            if same_fact(key, value, hparams[key]):
                continue
            if key not in explicit and same_fact(key, value, default):
                taken.append(f"{key}={hparams[key]!r}")
            else:
                differ.append(f"{key} {value!r} (checkpoint: {hparams[key]!r})")
        if differ:
            raise ConfigError(f"--ckpt_path {ckpt_path} holds another model than configured: {', '.join(differ)}; "
                              "drop those model options to use the checkpoint's model, or pass the checkpoint "
                              "of the configured one")
        if taken:
            print(f"lk_ablate {sub}: using the checkpoint's model ({', '.join(taken)}) from {ckpt_path}",
                  file=sys.stderr)
        # Other model options given on the command line (how to run it: compile, dwconv_impl, channels_last, ...)
        # keep the value given instead of being replaced, silently, by the checkpoint's.
        for key in _command_line_model_keys(getattr(self, "_argv", [])) - set(MODEL_FACTS):
            hparams.pop(key, None)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)


def _command_line_model_keys(argv: Sequence[str]) -> set[str]:
    """The ``--model.KEY`` options of the command line."""
    return {a.partition("=")[0][len("--model."):].split(".")[0] for a in argv if a.startswith("--model.")}


def _explicit_model_keys(argv: Sequence[str]) -> set[str]:
    """The model options the user set: ``--model.KEY`` arguments and the ``model:`` keys of --config / --model
    files (a value equal to its default still counts as chosen)."""
    import yaml

    keys: set[str] = set()
    for i, arg in enumerate(argv):
        name, _, inline = arg.partition("=")
        if name.startswith("--model."):
            keys.add(name[len("--model."):].split(".")[0])
        elif name in ("--config", "-c", "--model"):
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                with open(value) as f:
                    loaded = yaml.safe_load(f)
            except (OSError, yaml.YAMLError):
                continue
            section = loaded.get("model") if name != "--model" and isinstance(loaded, dict) else loaded
            if isinstance(section, dict):
                keys |= set(section.get("init_args", section))
    return keys


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
