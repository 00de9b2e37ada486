"""What the commands share on the command line: jsonargparse parsers with ``fit``'s conventions (``--config FILE``,
``--print_config``, dotted options), shipped presets (``--preset NAME``), the evaluation commands' options, and
errors as one line with a pointer to ``--help``.

Nothing here imports torch: every command builds its parser (and prints ``--help``) without it; the names in
docs/cli.md are the only spellings (tests/commands/test_vocabulary.py checks every parser against that table).
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ..base.cli_options import TRUST_ENV, TRUST_HELP, config_file_action
from ..base.errors import ConfigError, one_line
from ..evaluation.options import TOP_LEVEL_MODEL_OPTIONS, ModelOptions, Protocol, Weights

__all__ = ["PROGRESS_HELP", "TRUST_HELP", "apply_trust", "command_parser", "error_line", "evaluation_parser",
           "model_options", "one_line", "parse", "preset_names"]

PROGRESS_HELP = ("show progress: a bar when stderr is a terminal, else one line every LK_ABLATE_PROGRESS_SECONDS "
                 "(30) seconds (SLURM logs); false: none")


def preset_names(package: str) -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))


def preset_path(package: str, name: str) -> Any:
    path = resources.files(package).joinpath(f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(preset_names(package))}")
    return path


class PresetAction(argparse.Action):
    """``--preset NAME``: the shipped ``<package>/NAME.yaml`` applied where it stands, like ``--config`` (later
    options and files override it), through jsonargparse's own ``ActionConfigFile.apply_config``.

    Keys of the file that are ``optional_groups`` this parser does not have are dropped (``analyze fgsm --preset
    paper``: the paper preset holds every analysis's section; the fgsm parser has one); any other unknown key is
    jsonargparse's error. The names applied are kept in the option's value (``--print_config``).
    """

    def __init__(self, *args: Any, package: str = "", optional_groups: Sequence[str] = (), **kwargs: Any) -> None:
        self.package, self.optional_groups = package, tuple(optional_groups)
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        import yaml
        from jsonargparse import ActionConfigFile

        names = [n for n in (cfg.get(self.dest) or []) if n]
        data = yaml.safe_load(preset_path(self.package, values).read_text()) or {}
        known = {k.split(".")[0] for k in parser.get_defaults().keys()}
        data = {k: v for k, v in data.items() if k in known or k not in self.optional_groups}
        ActionConfigFile.apply_config(parser, cfg, self.dest, yaml.safe_dump(data))
        cfg[self.dest] = names + [values]


def command_parser(prog: str, description: str, presets: str | None = None,
                   optional_groups: Sequence[str] = ()) -> Any:
    """A jsonargparse parser with ``fit``'s conventions: --config FILE (stacked), --print_config, dotted options,
    and with ``presets`` (a package of YAML files) ``--preset NAME``. Errors come back as
    ``argparse.ArgumentError`` (``parse`` makes them one ConfigError line)."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_meta=False)
    p.add_argument("--config", action=config_file_action(), help="YAML file(s) of these options (stacked in order)")
    if presets:
        p.add_argument("--preset", action=PresetAction, package=presets, optional_groups=optional_groups,
                       default=None, metavar="NAME",
                       help=f"a preset shipped with lk_ablate ({', '.join(preset_names(presets))}), applied where it "
                            "stands like --config: options after it override it")
    return p


def evaluation_parser(prog: str, description: str, default_weights: str, presets: str,
                      optional_groups: Sequence[str] = ()) -> Any:
    """The options every evaluation command has: --config, --preset, --print_config, --ckpt_path, --weights,
    --protocol, model.*, --device, --progress."""
    p = command_parser(prog, description, presets, optional_groups)
    p.add_argument("--ckpt_path", type=str | None, default=None,
                   help="checkpoint to evaluate: an lk_ablate run's (its model from its hyper-parameters), official "
                        "ConvNeXt/RepLKNet weights (with --model.model_name) or timm weights (with --model.timm)")
    p.add_argument("--weights", type=Weights, default=default_weights,
                   help="which weights of the checkpoint: auto (EMA when it has them, else raw), raw, ema, or both")
    p.add_argument("--protocol", type=Protocol, default="model",
                   help="model: each model's own eval config; paper: the paper's and the benchmark authors' "
                        "transforms for every model (docs/robustness.md)")
    p.add_class_arguments(ModelOptions, "model", skip=set(TOP_LEVEL_MODEL_OPTIONS))
    p.add_argument("--device", type=str | None, default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--progress", type=bool, default=True, help=PROGRESS_HELP)
    p.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_HELP)
    return p


def apply_trust(args: Any) -> None:
    """``--trust_checkpoint true``: every checkpoint this command reads is unpickled fully (base/safe_load.py)."""
    if args.get("trust_checkpoint"):
        os.environ[TRUST_ENV] = "1"


def model_options(args: Any) -> ModelOptions:
    """The ModelOptions of a parsed evaluation command (model.* plus the top-level --ckpt_path and --weights);
    applies --trust_checkpoint."""
    apply_trust(args)
    return ModelOptions(**vars(args.model), **{k: args[k] for k in TOP_LEVEL_MODEL_OPTIONS})


def error_line(e: BaseException, where: str, subcommand: str | None = None) -> ConfigError:
    """jsonargparse's error as one ConfigError line naming the options as they are typed, and the --help to read."""
    msg = one_line(e)
    m = re.match(r"the following arguments are required: (.*)", msg)
    if m:
        names = [n.strip() for n in m.group(1).split(",")]
        if subcommand:
            names = [n.removeprefix(f"{subcommand}.") for n in names]
        msg = "missing required option(s): " + ", ".join(f"--{n}" for n in names)
    return ConfigError(f"{msg} (see `{where} --help`)")


def parse(parser: Any, argv: Sequence[str], defaults: bool = True) -> Any:
    """parse_args, with jsonargparse's errors as one ConfigError line and the pointer to the command's --help."""
    try:
        return parser.parse_args(list(argv), defaults=defaults)
    except argparse.ArgumentError as e:
        raise error_line(e, parser.prog) from e
