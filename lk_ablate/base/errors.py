"""Errors that the CLI reports as one clear message, without a traceback."""
from __future__ import annotations


class LkAblateError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(LkAblateError, ValueError):
    """An invalid option (kernel size, batch size, ...) caught when the model or config is built."""


class DataError(LkAblateError, FileNotFoundError):
    """A dataset, benchmark or file is missing or has the wrong layout."""
