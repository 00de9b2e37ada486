"""AtomicCheckpointIO: a checkpoint is either the complete old file or the complete new one, never half of either.

Lightning's ``TorchCheckpointIO`` (2.x) pickles into memory, then writes through an fsspec transaction: the bytes go
to a temporary file made by ``tempfile.mkstemp()`` in the system temp folder and are moved into place with
``shutil.move``. When that folder is on another file system than the checkpoint (node-local /tmp vs. a shared
checkpoint folder, the normal case on a cluster), the move is a copy that overwrites the destination in place: a
job killed during the copy leaves a truncated checkpoint and the previous one is already gone; a killed job also
leaves its temporary file behind in /tmp. Nothing is fsync'ed, so a node crash can lose a checkpoint that looked
written.

Here the temporary file is created beside the destination (same file system), written, flushed and fsync'ed, then
renamed over the destination with ``os.replace`` (atomic on POSIX), and the folder is fsync'ed so the rename itself
is durable. ``torch.save`` streams into the file, so no second in-memory copy of the checkpoint is made.
Remote paths (``s3://`` ...) keep Lightning's own behaviour.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "temp_prefix"]


def temp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of the temporary files written for ``path`` (hidden, so no glob for ``*.ckpt`` matches them)."""
    return f".{os.path.basename(os.fspath(path))}.tmp-"


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open or fsync a directory; nothing to do then
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a fsync'ed temporary file in the same folder and ``os.replace``.

    Temporary files left by an earlier killed save of the same ``path`` are removed first (only one process
    writes a given checkpoint path: Lightning saves on global rank 0).
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    prefix = temp_prefix(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions a plain open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _read_umask() -> int:
    # /proc avoids os.umask's set-and-restore, which briefly changes the mask for every thread of the process.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        path = os.fspath(path)
        if path.startswith("file://"):
            path = path[len("file://"):]
        atomic_torch_save(checkpoint, path)
