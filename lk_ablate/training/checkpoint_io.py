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
The writing itself is the project's one atomic writer (``lk_ablate/base/files.py``), whose temporary names carry
the writer's host and pid so that a stale-file clean-up never deletes another live process's in-flight file.
Loading goes through ``lk_ablate/base/safe_load.py`` (allow-listed unpickling: a checkpoint runs no code).
Remote paths (``s3://`` ...) keep Lightning's own behaviour (loaded with ``weights_only=True``).
"""
from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..base.files import atomic_torch_save
from ..base.safe_load import load_torch_file, trust_checkpoints

__all__ = ["AtomicCheckpointIO"]


def _local(path: Any) -> str | None:
    if not isinstance(get_filesystem(path), LocalFileSystem):
        return None
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable and whose loads run no code (see the module
    docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        local = _local(path)
        if local is None:
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, local)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # Lightning's own resume / validate path: the same allow-listed loader as every other checkpoint read.
        local = _local(path)
        if local is None:
            return super().load_checkpoint(path, map_location=map_location,
                                           weights_only=False if trust_checkpoints() else True)
        # On CPU: Lightning copies the states into the module and the optimizers, which cast to their devices.
        return load_torch_file(local)
