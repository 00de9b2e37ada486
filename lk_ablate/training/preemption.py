"""Surviving pre-emption: periodic ``last.ckpt``, automatic resumption, and SLURM requeues at step boundaries.

- ``ResumableCheckpoint``: Lightning's ModelCheckpoint with ``every_n_train_steps`` that keeps the two jobs apart.
  ``last.ckpt`` is written every ``every_n_train_steps`` optimizer steps (from the first epoch on), at the end of
  every epoch and when training ends; the monitored top-k files are chosen only where the monitored metric is
  fresh (after each validation). Plain ModelCheckpoint with a monitor and ``every_n_train_steps`` instead skips
  the whole first epoch (the metric does not exist yet), ranks mid-epoch weights by the previous validation's
  score, and does not save the final weights unless the last step is a multiple of ``every_n_train_steps``.
- ``find_resume_checkpoint``: what ``fit --ckpt_path auto`` resumes from: the newest loadable checkpoint among
  Lightning's pre-emption checkpoints (``hpc_ckpt_N.ckpt`` in ``default_root_dir``) and ``last*.ckpt`` of the
  checkpoint folders, or nothing on a first start. The same command line thus serves the first start and
  every requeue, whether the job was signalled (hpc checkpoint) or killed outright (periodic checkpoint).
  Lightning's own choice on SLURM (``ckpt_path=None``) takes an ``hpc_ckpt`` even when a newer ``last.ckpt``
  exists, which repeats work after a later hard requeue.
- ``DeferredRequeue``: Lightning's SLURM auto-requeue saves ``hpc_ckpt_N.ckpt`` and requeues from inside the
  SIGUSR1 handler, i.e. wherever the main thread happens to be: mid forward, between the optimizer and the EMA
  update, or (under DDP) while another rank is inside a gradient all-reduce, where the save's barrier is a
  mismatched collective. (Measured on a tiny CPU run: a signal between the optimizer step and the EMA update
  gave an ``hpc_ckpt`` whose resumed run differs from the uninterrupted one by 6.1e-4 in the first conv weights:
  the step is applied twice.) This callback runs that same handler at the next optimizer-step boundary instead
  (all ranks agree on which one), so the checkpoint is as consistent as a periodic one and the run resumes
  exactly. Outside the training batches (validation, scoring at the end of fit) the handler runs at once.
"""
from __future__ import annotations

import glob
import os
import re
import signal
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..base.safe_load import UnsafeCheckpointError, load_torch_file
from ..errors import ConfigError, DataError
from .checkpoint_io import AtomicCheckpointIO

__all__ = ["DeferredRequeue", "ResumableCheckpoint", "checkpoint_step", "cli_trainer_extras",
           "find_resume_checkpoint", "resolve_ckpt_path", "resume_candidates"]

HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``every_n_train_steps`` only refreshes ``last.ckpt`` (see the module docstring).

    With a ``monitor``: top-k files are saved where Lightning saves per-epoch checkpoints (after validation),
    ``last.ckpt`` every ``every_n_train_steps`` steps, at every epoch end and at the end of training.
    Without a monitor it behaves like ModelCheckpoint, plus the save at the end of training.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._periodic = self.monitor is not None and self._every_n_train_steps > 0
        if self._periodic:
            if not self.save_last:
                raise ConfigError("checkpoint.every_n_train_steps writes last.ckpt for resumption and needs "
                                  "checkpoint.save_last: true")
            self._every_n_epochs = 1  # top-k after each validation, where the monitored metric is fresh

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._periodic:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if self._should_skip_saving_checkpoint(trainer) or trainer.global_step % self._every_n_train_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-end save follows at this same step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._periodic and self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_unsaved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._periodic and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_unsaved(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_unsaved(trainer)

    def _save_last_if_unsaved(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# --- resumption --------------------------------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint, or None if the file is not a complete checkpoint.

    Memory-mapped: reads the pickled metadata, not the tensors, so this is cheap even for large checkpoints.
    Read without running code (base/safe_load.py): a file that needs non-allow-listed globals raises
    UnsafeCheckpointError instead of being skipped, so a planted file is reported, not silently passed over.
    """
    try:
        ckpt = load_torch_file(path, mmap=True)
    except UnsafeCheckpointError:
        raise
    except DataError:  # truncated, empty or foreign file: not something to resume from
        return None
    if not isinstance(ckpt, dict) or "global_step" not in ckpt or "state_dict" not in ckpt:
        return None
    return int(ckpt["global_step"])


def resume_candidates(hpc_dirs: Iterable[str | os.PathLike], last_dirs: Iterable[str | os.PathLike]) -> list[str]:
    """``hpc_ckpt_N.ckpt`` files in ``hpc_dirs`` and ``last*.ckpt`` files in ``last_dirs``."""
    found: list[str] = []
    for d in hpc_dirs:
        found += [p for p in glob.glob(os.path.join(glob.escape(os.fspath(d)), "hpc_ckpt_*.ckpt"))
                  if HPC_PATTERN.match(os.path.basename(p))]
    for d in last_dirs:
        found += [p for p in glob.glob(os.path.join(glob.escape(os.fspath(d)), "last*.ckpt"))
                  if re.match(r"^last(-v\d+)?\.ckpt$", os.path.basename(p))]
    return sorted({os.path.abspath(p) for p in found})


def find_resume_checkpoint(hpc_dirs: Iterable[str | os.PathLike], last_dirs: Iterable[str | os.PathLike]) -> str | None:
    """The newest complete checkpoint to resume from (highest stored global_step, then newest file), or None.

    Incomplete files (e.g. written by an older, non-atomic saver that was killed) are skipped with a warning.
    """
    best: tuple[int, float, str] | None = None
    for path in resume_candidates(hpc_dirs, last_dirs):
        step = checkpoint_step(path)
        if step is None:
            rank_zero_warn(f"ignoring {path} for resumption: it is not a complete Lightning checkpoint")
            continue
        key = (step, os.path.getmtime(path), path)
        if best is None or key > best:
            best = key
    return None if best is None else best[2]


def resolve_ckpt_path(ckpt_path: Any, trainer: L.Trainer) -> Any:
    """``fit --ckpt_path auto``: the newest complete checkpoint of this run, or None (first start).

    Searched: ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` and ``last*.ckpt`` in every ModelCheckpoint's
    folder. Any other value is returned unchanged (Lightning handles paths, "last", "hpc", "best").
    """
    if ckpt_path != "auto":
        return ckpt_path
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if any(cb.dirpath is None for cb in callbacks):
        raise ConfigError("--ckpt_path auto needs a fixed checkpoint folder: set checkpoint.dirpath (left unset, "
                          "Lightning puts checkpoints in the logger's version folder, which is new on every restart)")
    found = find_resume_checkpoint([trainer.default_root_dir], [cb.dirpath for cb in callbacks])
    where = ", ".join(dict.fromkeys([str(trainer.default_root_dir), *(str(cb.dirpath) for cb in callbacks)]))
    if found is None:
        rank_zero_info(f"--ckpt_path auto: no checkpoint in {where}; starting from scratch")
    else:
        rank_zero_info(f"--ckpt_path auto: resuming from {found} (global step {checkpoint_step(found)})")
    return found


def cli_trainer_extras(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer arguments the CLI adds to ``config`` (the parsed trainer section): AtomicCheckpointIO unless a
    CheckpointIO is configured, and DeferredRequeue. ``overrides`` win over ``config`` and are returned extended."""
    out = dict(overrides)
    plugins = _as_list(out.get("plugins", config.get("plugins")))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        out["plugins"] = [*plugins, AtomicCheckpointIO()]
    callbacks = _as_list(out.get("callbacks", config.get("callbacks")))
    if not any(isinstance(c, DeferredRequeue) for c in callbacks):
        out["callbacks"] = [*callbacks, DeferredRequeue()]
    return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --- SLURM requeue at step boundaries ----------------------------------------------------------------------------
class DeferredRequeue(L.Callback):
    """Run Lightning's SLURM requeue handler (save ``hpc_ckpt_N.ckpt``, ``scontrol requeue``) at a step boundary.

    Active only when Lightning's SLURM auto-requeue is (``SLURMEnvironment(auto_requeue=True)``, detected under
    ``srun``). A signal that arrives during the training batches is held until the next optimizer step has
    finished; under DDP every rank learns at that point whether any rank was signalled (one all-reduce of a
    flag per optimizer step), so all ranks save together. Elsewhere (validation, the end of fit) the handler
    runs immediately, as in Lightning.
    """

    def __init__(self) -> None:
        super().__init__()
        self._handler: Any = None
        self._signum: int | None = None
        self._pending = False
        self._in_steps = False
        self._step_at_start = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        env = trainer._accelerator_connector.cluster_environment
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None):
            return
        signum = env.requeue_signal
        current = signal.getsignal(signum)
        if not callable(current) or current is self._on_signal:  # Lightning installed no handler (or we did)
            return
        self._handler, self._signum, self._pending = current, signum, False
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._in_steps:
            rank_zero_info(f"signal {signum} received: requeueing after the current optimizer step")
            self._pending = True
        else:
            self._handler(signum, frame)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._in_steps = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._handler is None or trainer.global_step == self._step_at_start:
            return  # no optimizer step in this batch (gradient accumulation): the state is not resumable here
        self._fire_if_pending(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._handler is None:
            return
        self._fire_if_pending(trainer)
        self._in_steps = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._handler is not None:
            self._in_steps = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch is False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handler is not None:
            self._fire_if_pending(trainer)
        self._in_steps = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._in_steps = False
        if self._handler is not None:
            self._fire_if_pending(trainer)

    def _fire_if_pending(self, trainer: L.Trainer) -> None:
        pending = self._pending
        if trainer.world_size > 1:  # every rank decides the same; all of them must enter the save together
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if pending:
            self._pending = False
            self._handler(self._signum, None)
