"""LightningCLI for lk_ablate: ImageClassifier + any DataModule, trainer defaults for ablation runs."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .data import FashionMNISTDataModule, FFCVDataModule, ImageFolderDataModule  # noqa: F401  (--data.help lists them)
from .data.base import ClassificationDataModule
from .training.module import ImageClassifier
from .base.safe_load import TRUST_ENV, load_torch_file
from .base.errors import ConfigError, DataError
from .base.metric_keys import VAL_TOP1
from .base.cli_options import TRUST_HELP, config_file_action
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

# ImageClassifier options that say how to run the model, not what it is: the user's choice wins over a checkpoint's.
RUNTIME_MODEL_KEYS = {"compile", "compile_mode", "compile_backend", "dwconv_impl", "channels_last"}

TRAINER_DEFAULTS = {
    "default_root_dir": "checkpoints",
    # Our DataModules shard by rank themselves (no duplicates in evaluation); Lightning must not re-wrap them.
    "use_distributed_sampler": False,
}


class LkAblateCLI(LightningCLI):
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI.init_parser with two changes: errors come back as exceptions (lk_ablate.cli prints one line and
        # the pointer to --help, not the usage), and --config's errors name the file.
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning.pytorch.__version__}"])
        parser = self.parser_class(**{**kwargs, "exit_on_error": False})
        parser.add_argument("-c", "--config", action=config_file_action(),
                            help="Path to a configuration file in json or yaml format.")
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_HELP)
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
            "checkpoint.monitor": VAL_TOP1,
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
        super().parse_arguments(parser, args)
        # What the command line and its config files set (jsonargparse without defaults): which model facts the
        # user chose (_parse_ckpt_path). Parsed here, before any class is built.
        given = _parse_given(parser, args)
        sub = self.config.get("subcommand")
        section = (given.get(sub) if sub else given) or Namespace()
        model = section.get("model") or Namespace()
        self._explicit_model_keys = set((model.get("init_args") or model).keys()) if isinstance(model, Namespace) \
            else set()
        if (self.config.get(sub) if sub else self.config).get("trust_checkpoint"):
            os.environ[TRUST_ENV] = "1"  # every checkpoint read of this run (resume, validate, pretrained_path)

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
        explicit = getattr(self, "_explicit_model_keys", set())
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
        # Options of how to run the model (not of what it is) that the user set keep their value instead of being
        # replaced, silently, by the checkpoint's (`validate --model.compile true` compiles).
        for key in RUNTIME_MODEL_KEYS & explicit:
            hparams.pop(key, None)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)


def _parse_given(parser: LightningArgumentParser, args: Any) -> Namespace:
    """What the command line and its config files set, without defaults."""
    parse = parser.parse_object if isinstance(args, (dict, Namespace)) else parser.parse_args
    try:
        return parse(args, defaults=False)
    except argparse.ArgumentError as e:
        # The model_name -> data link needs its source even here; set nowhere (a `validate --ckpt_path` whose
        # checkpoint decides the model), it gets a stand-in for this parse only and does not count as given.
        if 'Key "model.model_name" not found' not in str(e) or isinstance(args, (dict, Namespace)):
            raise
        argv = list(sys.argv[1:] if args is None else args)
        given = parser.parse_args([*argv, "--model.model_name", "convnext_tiny"], defaults=False)
        sub = given.get("subcommand")
        model = (given[sub] if sub else given)["model"]
        model.pop("model_name")
        return given


_CLI_KWARGS = dict(subclass_mode_model=False, subclass_mode_data=True, seed_everything_default=0,
                   save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


def build_cli(args: Sequence[str] | None, run: bool = True) -> LkAblateCLI:
    """``args`` None reads sys.argv (the console script); tests pass a list."""
    try:
        cli = LkAblateCLI(ImageClassifier, ClassificationDataModule, trainer_defaults=dict(TRAINER_DEFAULTS),
                          args=None if args is None else list(args), run=run, **_CLI_KWARGS)
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    if run:  # one W&B run per command: a later command in this process starts its own
        finish_wandb_run()
    return cli


def run_lightning_cli(args: Sequence[str]) -> LkAblateCLI:
    return build_cli(None if list(args) == sys.argv[1:] else args)


class _Parsers(Exception):
    """Raised by _ParsersOnly once its parsers are built, carrying them (nothing is parsed or instantiated)."""


class _ParsersOnly(LkAblateCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        self.__dict__.setdefault("subcommand_parsers", []).append(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        raise _Parsers(parser, dict(zip(self.subcommands(), self.__dict__.get("subcommand_parsers", []))))


def lightning_parsers() -> tuple[LightningArgumentParser, dict[str, LightningArgumentParser]]:
    """The parser of ``lk_ablate fit|validate|test|predict`` and each subcommand's, built as a run builds them
    (through LightningCLI's public hooks), without parsing anything: for shell completion and for the tests that
    check every option against docs/cli.md and every documented command line."""
    try:
        _ParsersOnly(ImageClassifier, ClassificationDataModule, trainer_defaults=dict(TRAINER_DEFAULTS), args=[],
                     **_CLI_KWARGS)
    except _Parsers as built:
        return built.args[0], built.args[1]
    raise RuntimeError("LightningCLI built no parser")  # pragma: no cover
