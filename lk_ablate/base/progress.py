"""Progress of long jobs (scoring, analyses, FFCV writing, corruption generation): one helper for every command.

On a terminal (stderr is a tty) it is a tqdm bar; elsewhere (SLURM logs, ``| tee``, CI) bar redraws would fill the
log with carriage returns, so it prints one plain line every ``LK_ABLATE_PROGRESS_SECONDS`` seconds (default 30)
and a last line when the job ends. ``enabled=False`` (``--progress false``) prints nothing.

Code deep inside a job (an analysis's batch loop) reports to the job's bar without being handed it:
``with Progress(...).active():`` makes it the current one, and :func:`advance` adds to it (a no-op when none is).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

__all__ = ["Progress", "advance", "line_interval", "progress_iter"]

T = TypeVar("T")
_CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("lk_ablate_progress", default=None)


def line_interval() -> float:
    """Seconds between two progress lines when stderr is not a terminal (``LK_ABLATE_PROGRESS_SECONDS``)."""
    try:
        return max(0.0, float(os.environ.get("LK_ABLATE_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts ``unit``\\ s done of ``total`` (None: unknown) for the job ``desc``.

    ``stream``: where it writes (stderr); ``tty``: force the bar (True) or the lines (False) instead of asking the
    stream; ``every``: seconds between lines (``line_interval()``).
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "img", enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None, every: float | None = None) -> None:
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._start = self._last = time.monotonic()
        self._every = line_interval() if every is None else every
        self._bar = None
        self._closed = False
        if enabled and (tty if tty is not None else _isatty(self.stream)):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if not self.enabled or self._closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._line(now)

    def _line(self, now: float, end: bool = False) -> None:
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:,}" + (f"/{self.total:,} {self.unit} ({100 * self.n / self.total:.1f}%)"
                                if self.total else f" {self.unit}")
        eta = ""
        if not end and self.total and rate > 0 and self.n < self.total:
            eta = f", eta {_duration((self.total - self.n) / rate)}"
        state = "done" if end else "progress"
        print(f"{self.desc}: {state} {done}, {rate:,.1f} {self.unit}/s, elapsed {_duration(elapsed)}{eta}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(time.monotonic(), end=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """Make this the job that :func:`advance` reports to, and close it at the end."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)
            self.close()


def advance(n: int = 1) -> None:
    """Add ``n`` to the active job's progress (see :meth:`Progress.active`); nothing when no job is active."""
    p = _CURRENT.get()
    if p is not None:
        p.update(n)


def progress_iter(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
                  enabled: bool = True, **kwargs: Any) -> Iterator[T]:
    """``iterable`` with one unit of progress per item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total, unit, enabled, **kwargs) as p:
        for item in iterable:
            yield item
            p.update(1)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
