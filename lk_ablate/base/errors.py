"""Errors that the CLI reports as one clear message, without a traceback."""
from __future__ import annotations


class LkAblateError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(LkAblateError, ValueError):
    """An invalid option (kernel size, batch size, ...) caught when the model or config is built."""


class DataError(LkAblateError, FileNotFoundError):
    """A dataset, benchmark or file is missing or has the wrong layout."""


def one_line(e: BaseException) -> str:
    """A multi-line error (jsonargparse's) as one line: its first distinct lines and the value it was given."""
    lines = [ln.strip().rstrip(":") for ln in str(e).splitlines() if ln.strip()]
    head = [ln for ln in lines[:3] if ln != "Errors"]
    given = [ln for ln in lines[3:] if ln.startswith("Given value:")]
    return ": ".join(dict.fromkeys(head + given))
