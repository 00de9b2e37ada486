"""What the commands share on the command line: jsonargparse parsers with ``fit``'s conventions (``--config
FILE``, ``--print_config``, dotted options), the evaluation commands' option groups, shipped presets (``--preset
NAME``) and one-line errors for the spellings of earlier versions.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..base.errors import ConfigError, one_line
from ..evaluation.options import ModelOptions, Protocol

__all__ = ["OLD_SPELLINGS", "base_parser", "check_old_evaluation_spellings", "check_old_spellings", "command_parser",
           "config_files", "one_line", "parse", "preset_argv", "preset_names"]

# Spellings of the argparse versions of `robustness` / `analyze` -> the option that replaced them (the other
# commands keep their own table: these options do not exist there).
OLD_SPELLINGS: dict[str, str] = {
    "--ckpt": "--model.ckpt PATH",
    "--kernel-size": "--model.kernel_size 31 (or [31,29,27,13])",
    "--timm": "--model.timm NAME",
    "--timm-model": "--model.timm NAME",
    "--num-classes": "--model.num_classes N",
    "--weights": "--model.weights auto|raw|ema|both",
    "--ema": "--model.weights ema",
    "--no-ema": "--model.weights raw",
    "--batch-size": "--data.batch_size N",
    "--num-workers": "--data.num_workers N",
    "--workers": "--data.num_workers N",
    "--imagenet-val": "--data.imagenet_val DIR",
    "--imagenet-a": "--data.imagenet_a DIR",
    "--imagenet-r": "--data.imagenet_r DIR",
    "--imagenet-c": "--data.imagenet_c DIR",
    "--imagenet-o": "--data.imagenet_o DIR",
    "--c-preset": "--data.c_preset severity5|full",
    "--corruptions": "--data.corruptions [fog,snow]",
    "--severities": "--data.severities [3,5]",
    "--output": "--results FILE",
    "--out-dir": "--plot_dir DIR",
    "--limit": "--data.limit N",
    "--seed": "--data.seed N",
    "--set": "--SECTION.KEY VALUE (e.g. --occlusion.levels [0.1,0.5])",
}
# Group names that took a plain value before (``--model replknet_31b``, ``--data /val``).
_OLD_GROUP_VALUES = {"--model": "--model.name NAME (a registered model) or --model.timm NAME",
                     "--data": "--data.imagenet_val DIR (the validation folder)"}


def command_parser(prog: str, description: str) -> Any:
    """A jsonargparse parser with ``fit``'s conventions: --config FILE (stacked), --print_config, dotted options;
    errors come back as ``argparse.ArgumentError`` (``parse`` turns them into one ConfigError line)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_meta=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options (stacked in order)")
    return p


def base_parser(prog: str, description: str, default_weights: str = "auto") -> Any:
    """A parser with the options every evaluation command has: --config, --print_config, --protocol, model.*,
    --device."""
    description += ("\n\n--preset NAME loads a preset shipped with lk_ablate (paper: the paper's settings and "
                    "protocol paper) before any --config file and option.")
    p = command_parser(prog, description)
    p.add_argument("--protocol", type=Protocol, default="model",
                   help="model: each model's own eval config; paper: the paper's and the benchmark authors' "
                        "transforms for every model (docs/robustness.md)")
    p.add_class_arguments(ModelOptions, "model")
    p.set_defaults({"model.weights": default_weights})
    p.add_argument("--device", type=str | None, default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    return p


def preset_names(package: str) -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))


def preset_argv(argv: Sequence[str], package: str) -> list[str]:
    """``--preset NAME`` -> ``--config <NAME.yaml shipped in package>`` placed first, so that later --config
    files and options override the preset's values."""
    out: list[str] = []
    presets: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--preset":
            value = next(it, None)
            if value is None:
                raise ConfigError(f"--preset needs a name: one of {', '.join(preset_names(package))}")
            presets.append(value)
        elif a.startswith("--preset="):
            presets.append(a.split("=", 1)[1])
        else:
            out.append(a)
    files = []
    for name in presets:
        path = resources.files(package).joinpath(f"{name}.yaml")
        if not path.is_file():
            raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(preset_names(package))}")
        files += ["--config", str(path)]
    return files + out


def check_old_spellings(argv: Sequence[str], table: Mapping[str, str]) -> None:
    """One ConfigError naming the new spelling for the first option of ``table`` (a command's own spellings of its
    earlier version -> the option that replaced them) in ``argv``."""
    for a in argv:
        flag = a.split("=", 1)[0]
        if flag in table:
            raise ConfigError(f"{flag} is now {table[flag]}")


def check_old_evaluation_spellings(argv: Sequence[str]) -> None:
    """``robustness`` / ``analyze``: OLD_SPELLINGS, the group names that took a plain value, ``--config paper``."""
    check_old_spellings(argv, OLD_SPELLINGS)
    for i, a in enumerate(argv):
        flag = a.split("=", 1)[0]
        if flag not in _OLD_GROUP_VALUES and flag != "--config":
            continue
        value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
        if flag in _OLD_GROUP_VALUES:
            if not (value.startswith(("{", "[")) or value.endswith((".yaml", ".yml", ".json"))):
                raise ConfigError(f"{flag} {value} is now {_OLD_GROUP_VALUES[flag]}")
        elif value == "paper" and not Path(value).exists():
            raise ConfigError("--config paper is now --preset paper")


def parse(parser: Any, argv: Sequence[str]) -> argparse.Namespace:
    """parse_args, with jsonargparse's errors as one ConfigError line (plus the option list hint)."""
    try:
        return parser.parse_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(f"{one_line(e)} (see `{parser.prog} --help`)") from e


def config_files(argv: Sequence[str]) -> list[str]:
    """The --config files named in ``argv``, in order."""
    out = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out

