"""One atomic writer for every file lk_ablate publishes (checkpoints, results, re-param files, caches, .beton).

A file is written under a temporary name beside its destination (same file system), flushed and fsync'ed,
given the permissions a plain ``open()`` would give it (0666 minus the umask: ``mkstemp`` makes 0600, which
hides results and checkpoints from the rest of a shared cluster), renamed over the destination with
``os.replace`` (atomic on POSIX) and the folder is fsync'ed so the rename itself is durable. A reader thus sees
the complete old file or the complete new one, never part of either.

Temporary names carry the writer's host and pid (``.<name>.tmp-<host>-<pid>-<random>``), so a later writer
removes only temporaries whose writer is gone: never the in-flight file of another live process.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write", "atomic_write_text", "file_mode", "fsync_dir", "publish",
           "remove_stale_temps", "temp_prefix"]

# A temporary file of another host cannot be checked for a live writer; it is stale only after this long.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0


def temp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of the temporary files written for ``path`` (hidden, so no glob for ``*.ckpt`` matches them)."""
    return f".{os.path.basename(os.fspath(path))}.tmp-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _umask() -> int:
    # /proc avoids os.umask's set-and-restore, which briefly changes the mask for every thread of the process.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open or fsync a directory; nothing to do then
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove temporaries of ``path`` left by killed writers; returns the removed paths.

    A temporary is stale when its writer (host, pid in its name) is this host and that pid is gone, or when it
    was written on another host more than ``FOREIGN_TEMP_MAX_AGE_S`` ago. Temporaries of live writers stay.
    """
    path = os.path.abspath(os.fspath(path))
    prefix = temp_prefix(path)
    pattern = re.compile(re.escape(prefix) + r"(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
    host, removed = _host(), []
    for tmp in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), glob.escape(prefix) + "*")):
        m = pattern.match(os.path.basename(tmp))
        if m is None:
            continue  # not one of ours (or an old-style name): leave it
        if m["host"] == host:
            stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
        else:
            with contextlib.suppress(FileNotFoundError):
                stale = time.time() - os.path.getmtime(tmp) > FOREIGN_TEMP_MAX_AGE_S
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
                removed.append(tmp)
    return removed


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync ``tmp``, give it the umask's permissions and rename it over ``path``; fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(os.fspath(path))))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (np.save, FFCV's writer);
    on a clean exit the file is published at ``path``, on an error it is removed. ``suffix`` ends the temporary
    name (``np.save`` appends ``.npy`` unless the name ends with it)."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(path)}{_host()}-{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` atomically once ``write`` returns."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically; ``torch.save`` streams into the file (no second in-memory copy)."""
    import torch  # lazy: the bottom layer's text/JSON writers do not import torch

    atomic_write(path, lambda f: torch.save(obj, f))

