"""The ``lk_ablate`` console script: LightningCLI for fit/validate/test/predict, plus lk_ablate's own commands.

Help, ``--version``, an unknown command and every own command's ``--help`` run without importing torch: commands
are imported when named, and their parsers are built from torch-free option classes (docs/cli.md).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .base.errors import ConfigError, LkAblateError, environment_error_line, one_line
from .base.version import __version__

# lk_ablate's own commands: name -> ("module:function", help); each function takes argv (list[str]) and returns an
# exit code. Imported when named, so `lk_ablate fit` never pays for (or depends on) another feature's imports.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lk_ablate.commands.demo:cli_main", "train and score the embedded Fashion-MNIST default"),
    "reparam": ("lk_ablate.commands.reparam:cli_main", "merge RepLKNet kernels (structural re-parameterization)"),
    "robustness": ("lk_ablate.commands.robustness:cli_main", "score a checkpoint on ImageNet-val/A/R/C/O"),
    "analyze": ("lk_ablate.commands.analyze:cli_main", "run one of the paper's robustness analyses"),
    "data": ("lk_ablate.commands.data:cli_main", "prepare-imagenet-val, write-ffcv, check"),
    "report": ("lk_ablate.commands.report:cli_main", "tables and plots across runs"),
    "dashboard": ("lk_ablate.commands.dashboard:cli_main", "the W&B workspace view and report of an ablation"),
}
LIGHTNING_COMMANDS = {
    "fit": "train a model (Lightning's LightningCLI; stacked --config YAML files)",
    "validate": "validate a checkpoint (--ckpt_path) on the val split",
    "test": "test a checkpoint (--ckpt_path) on the test split",
    "predict": "predict with a checkpoint (--ckpt_path)",
}
SHELLS = ("bash", "zsh", "tcsh")


def _usage() -> str:
    lines = [f"lk_ablate {__version__}",
             "usage: lk_ablate <command> [options]   (lk_ablate <command> --help: its options)", "",
             "Lightning's commands:"]
    lines += [f"  {name:<12} {help_}" for name, help_ in LIGHTNING_COMMANDS.items()]
    lines += ["", "lk_ablate's commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    lines += ["", "  --version              print the version",
              f"  --print_completion SHELL  shell completion script ({', '.join(SHELLS)}; needs the shtab package):",
              "                         e.g. lk_ablate --print_completion bash > ~/.local/share/bash-completion/"
              "completions/lk_ablate",
              "", "Every option, its default and the commands that have it: docs/cli.md."]
    return "\n".join(lines)


def command_names() -> list[str]:
    return [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]


def own_parser(name: str):
    """The jsonargparse parser of one of lk_ablate's own commands (nothing parsed; no torch imported)."""
    module = importlib.import_module(EXTRA_COMMANDS[name][0].split(":")[0])
    return module.parser() if hasattr(module, "parser") else module._parser()


def full_parser():
    """One parser for the whole program (every command as a subcommand): what shell completion is made from."""
    from jsonargparse import ArgumentParser

    from .lightning_cli import lightning_parsers

    top = ArgumentParser(prog="lk_ablate", description=__doc__.split("\n\n")[0])
    sub = top.add_subcommands(required=True, dest="command")
    for name, parser in lightning_parsers()[1].items():
        sub.add_subcommand(name, parser, help=LIGHTNING_COMMANDS[name])
    for name, (target, help_) in EXTRA_COMMANDS.items():
        module = importlib.import_module(target.split(":")[0])
        if hasattr(module, "add_subcommands"):  # analyze NAME, data CMD: a parent before its subcommands
            parser = module.top_parser()
            sub.add_subcommand(name, parser, help=help_)
            module.add_subcommands(parser)
        else:
            sub.add_subcommand(name, own_parser(name), help=help_)
    return top


def print_completion(shell: str | None) -> int:
    if shell not in SHELLS:
        raise ConfigError(f"--print_completion needs a shell: one of {', '.join(SHELLS)}")
    from importlib.util import find_spec

    if find_spec("shtab") is None:
        raise ConfigError("shell completion needs the shtab package: pip install shtab (or lk_ablate[dev])")
    print(full_parser().get_completion_script(f"shtab-{shell}"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    try:
        if args[0] == "--version":
            print(f"lk_ablate {__version__}")
            return 0
        if args[0] == "--print_completion":
            return print_completion(args[1] if len(args) > 1 else None)
        if args[0] in EXTRA_COMMANDS:
            module, func = EXTRA_COMMANDS[args[0]][0].split(":")
            return int(getattr(importlib.import_module(module), func)(args[1:]) or 0)
        if args[0] not in LIGHTNING_COMMANDS:
            raise ConfigError(f"unknown command {args[0]!r}; the commands are {', '.join(command_names())} "
                              "(see `lk_ablate --help`)")
        from .lightning_cli import run_lightning_cli

        try:
            run_lightning_cli(args)
        except argparse.ArgumentError as e:  # Lightning's parsers: one line, not the usage
            raise ConfigError(f"{one_line(e)} (see `lk_ablate {args[0]} --help`)") from e
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside Lightning's loops (argument parsing, data checks, scoring)
        print("lk_ablate: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        code = _stopped_exit_code(e)
        if code is None:
            raise
        return code
    except Exception as e:
        # jsonargparse wraps errors raised while instantiating classes; report ours as one message.
        ours = _our_error(e)
        # What the environment refused (a full disk, a read-only folder) where no lk_ablate code named it first:
        # still one line, naming the file; anything else is a bug and keeps its traceback.
        line = _message(ours) if ours is not None else environment_error_line(e)
        if line is None:
            raise
        print(f"lk_ablate: error: {line}", file=sys.stderr)
        return 2


def _message(e: LkAblateError) -> str:
    """The error's own text; a DataLoader worker re-raises it as 'Caught X in DataLoader worker ... Original
    Traceback ...': keep only the original message (the last traceback line onwards)."""
    text = str(e)
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = f"{type(e).__module__}.{type(e).__qualname__}: "
        if name in text:
            text = text[text.rindex(name) + len(name):].strip()
    return text


def _stopped_exit_code(e: SystemExit) -> int | None:
    """A run stopped by a signal exits 128 + the signal (SIGTERM 143, SIGINT 130), not 0, so job chains stop;
    a SLURM requeue exits 0 as before. None: not a signal stop (the SystemExit goes on as it is)."""
    if "lightning" not in sys.modules:
        return None
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(e, SIGTERMException):
        from .training.preemption import stop_exit_code

        code = stop_exit_code()
        if code:
            print(f"lk_ablate: stopped by a signal, exit status {code} (resume with --ckpt_path auto)",
                  file=sys.stderr)
        return code
    if isinstance(e.__context__, KeyboardInterrupt):  # Lightning's Ctrl-C handling ends in sys.exit(1)
        print("lk_ablate: interrupted", file=sys.stderr)
        return 130
    return None


def _our_error(e: BaseException | None) -> LkAblateError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, LkAblateError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
