"""The ``lk_ablate`` console script: LightningCLI for fit/validate/test/predict, plus extra subcommands."""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from .base.errors import ConfigError, LkAblateError, environment_error_line

# Extra subcommands: name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
# Imported lazily so `lk_ablate fit` never pays for (or depends on) another feature's imports.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lk_ablate.commands.demo:cli_main", "train and score the embedded Fashion-MNIST default"),
    "reparam": ("lk_ablate.commands.reparam:cli_main", "merge RepLKNet kernels (structural re-parameterization)"),
    "robustness": ("lk_ablate.commands.robustness:cli_main", "score a checkpoint on ImageNet-A/R/C/O"),
    "analyze": ("lk_ablate.commands.analyze:cli_main", "run one of the paper's robustness analyses"),
    "data": ("lk_ablate.commands.data:cli_main", "prepare-imagenet-val, write-ffcv, check"),
    "report": ("lk_ablate.commands.report:cli_main", "tables and plots across runs"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    lines = ["usage: lk_ablate <command> [options]", "", "Lightning commands (stacked --config YAML files):"]
    lines += [f"  {c}" for c in LIGHTNING_COMMANDS]
    lines += ["", "Other commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    lines += ["", f"{TRUST_FLAG} (any command): load checkpoints that need pickle globals outside lk_ablate's "
              "allow-list (they can run code: only for files you trust); same as LK_ABLATE_TRUST_CHECKPOINTS=1"]
    return "\n".join(lines)


TRUST_FLAG = "--trust-checkpoint"


def main(argv: Sequence[str] | None = None) -> int:
    from_argv = argv is None
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if TRUST_FLAG in args:  # every command: unpickle checkpoints fully (see lk_ablate/base/safe_load.py)
        args = [a for a in args if a != TRUST_FLAG]
        os.environ["LK_ABLATE_TRUST_CHECKPOINTS"] = "1"
        if from_argv:
            sys.argv[1:] = args
    try:
        check_yaml_files(args)
        if args[0] in EXTRA_COMMANDS:
            module, func = EXTRA_COMMANDS[args[0]][0].split(":")
            return int(getattr(importlib.import_module(module), func)(args[1:]) or 0)
        from .lightning_cli import run_lightning_cli

        run_lightning_cli(args)
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


def check_yaml_files(args: Sequence[str]) -> None:
    """Every YAML file named on the command line parses; a syntax error is one line naming the file and place
    (jsonargparse reports it without the file name)."""
    import yaml

    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if not value.lower().endswith((".yaml", ".yml")) or not os.path.isfile(value):
            continue
        try:
            with open(value) as f:
                yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"YAML syntax error in {value}{where}: {problem}") from None


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
