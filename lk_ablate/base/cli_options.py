"""Command-line pieces shared by lk_ablate's own commands and Lightning's (fit/validate/test/predict), in the bottom
layer and without torch: the ``--config`` action whose errors name the file, and the ``--trust_checkpoint`` option's
environment variable and help."""
from __future__ import annotations

import argparse
import os
from typing import Any

TRUST_ENV = "LK_ABLATE_TRUST_CHECKPOINTS"  # read by base/safe_load.py
TRUST_HELP = ("load checkpoints that need pickle globals outside lk_ablate's allow-list (they can run code: only for "
              f"files you trust); same as {TRUST_ENV}=1")

__all__ = ["TRUST_ENV", "TRUST_HELP", "config_file_action"]


def config_file_action() -> type:
    """jsonargparse's ActionConfigFile whose errors name the file (a YAML syntax error as "YAML syntax error in FILE
    line L, column C: problem"; jsonargparse says only "<unicode string>"). Every command's --config, Lightning's
    included (lightning_cli.LkAblateCLI.init_parser)."""
    from jsonargparse import ActionConfigFile

    class ConfigFile(ActionConfigFile):
        def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
            wrong = _fit_config_elsewhere(parser, values)
            if wrong:  # else jsonargparse's "Option 'trainer.max_epochs' is not accepted", after all else is read
                raise TypeError(wrong)
            try:
                super().__call__(parser, cfg, values, option_string)
            except (argparse.ArgumentError, TypeError, ValueError) as e:
                raise TypeError(_config_error(values, e)) from e

    return ConfigFile


def _fit_config_elsewhere(parser: Any, value: Any) -> str | None:
    """The message for a `lk_ablate fit` config (a ``trainer`` section) given as --config to another command."""
    import yaml

    if not (isinstance(value, str) and value.endswith((".yaml", ".yml")) and os.path.isfile(value)):
        return None
    known = {k.split(".")[0] for k in parser.get_defaults().keys()}
    if "trainer" in known:
        return None
    try:
        with open(value) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse reports it
    if not (isinstance(data, dict) and "trainer" in data):
        return None
    fix = f"pass it as --fit_config {value}" if "fit_config" in known else "it is for `lk_ablate fit`"
    return f"{value} is a `lk_ablate fit` config: {fix} (--config takes this command's options; see --print_config)"


def _config_error(value: Any, e: BaseException) -> str:
    import yaml

    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return str(e)
    mark = getattr(cause, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(cause, "problem", None) or str(cause).splitlines()[0]
    return f"YAML syntax error in {value}{where}: {problem}"
