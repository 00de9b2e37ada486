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

import contextlib
import glob
import os
import re
import signal
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..base.files import check_free_space, check_writable
from ..base.safe_load import UnsafeCheckpointError, load_torch_file
from ..base.errors import ConfigError, DataError, WriteError
from ..models.kernel_sizes import stage_kernel_sizes
from .checkpoint_io import AtomicCheckpointIO
from .lease import Lease, LeaseAwareSetup

__all__ = ["DeferredRequeue", "GracefulStop", "HoldLease", "ResumableCheckpoint", "adopt_checkpoint_records",
           "check_lightning_checkpoint", "check_resume_limits", "checkpoint_step", "cli_trainer_extras", "estimate_checkpoint_bytes", "find_resume_checkpoint",
           "resolve_ckpt_path", "resume_candidates", "stop_exit_code"]

HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


class ResumableCheckpoint(LeaseAwareSetup, ModelCheckpoint):
    """ModelCheckpoint whose ``every_n_train_steps`` only refreshes ``last.ckpt`` (see the module docstring).

    With a ``monitor``: top-k files are saved where Lightning saves per-epoch checkpoints (after validation),
    ``last.ckpt`` every ``every_n_train_steps`` steps, at every epoch end and at the end of training.
    Without a monitor it behaves like ModelCheckpoint, plus the save at the end of training.

    What a run keeps when its checkpoint options change between resumes (``every_n_train_steps``,
    ``every_n_epochs``, ``save_top_k``, ...): Lightning stores this callback's record (the best checkpoints, their
    scores, ``last_model_path``) under a key made of the monitor, the mode and the trigger options, so a resume
    with other triggers would start with no record at all. Here the record of the same monitor carries over under
    the new key; ``last.ckpt`` is always the one file written for the newest state (never ``last-v1.ckpt``
    beside a stale ``last.ckpt``); and an untracked top-k file is removed only when it is newer than the resumed
    state (a killed start's), never because an option changed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning reads every_n_train_steps 0 with every_n_epochs unset as "never save top-k"; here 0 means no
        # periodic last.ckpt, and the best checkpoints are still chosen after each validation (as with both unset).
        if (not self._every_n_train_steps and not self._every_n_epochs and self._train_time_interval is None
                and kwargs.get("every_n_epochs") is None and len(args) < 13):  # 13th: every_n_epochs positionally
            self._every_n_epochs = 1
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

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        # Lightning writes last-v1.ckpt when last.ckpt exists and is not the path its record names (a record lost
        # to changed options, or a resume from last-v1.ckpt itself), leaving last.ckpt stale for every reader that
        # scores it. The folder is this run's (checked in on_fit_start; the lease keeps others out): overwrite it.
        if self.save_last and self.dirpath is not None:
            name = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
            previous = self.last_model_path
            if previous != name and self.file_exists(name, trainer):
                self.last_model_path = name
                super()._save_last_checkpoint(trainer, monitor_candidates)
                if previous and self._should_remove_checkpoint(trainer, previous, name):
                    self._remove_checkpoint(trainer, previous)
                return
        super()._save_last_checkpoint(trainer, monitor_candidates)

    # --- the record across resumes ------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        _quiet_lightning_callback_warning()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        adopt_checkpoint_records(trainer, checkpoint)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the restore (trainer.ckpt_path is known), before the first optimizer step.
        problem = self._fit_start_problem(trainer, pl_module) if trainer.is_global_zero else None
        problem = trainer.strategy.broadcast(problem)
        if problem:
            raise (WriteError if problem[0] == "write" else ConfigError)(problem[1])

    def _fit_start_problem(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[str, str] | None:
        if not self.dirpath or not _is_local(self.dirpath):
            return None
        folder = os.fspath(self.dirpath)
        hint = "set checkpoint.dirpath to another folder"
        try:
            check_writable(os.path.join(folder, "last.ckpt"), "checkpoint", hint)
            need = estimate_checkpoint_bytes(pl_module, trainer.optimizers)
            check_free_space(folder, need, f"a checkpoint of {pl_module.__class__.__name__} in {folder}", hint)
        except WriteError as e:
            return "write", str(e)
        if not self.save_last and os.path.isfile(os.path.join(folder, "last.ckpt")):
            rank_zero_warn(f"checkpoint.save_last is false, so {os.path.join(folder, 'last.ckpt')} (an earlier state) "
                           "is not updated by this run: move it away, or keep save_last true, so that nothing scores "
                           "or resumes it as the newest state")
        if self.save_last and self.CHECKPOINT_NAME_LAST == "last" and not _resumed_from_this_run(trainer, folder):
            for name in sorted(os.listdir(folder)):
                if not re.match(r"^last(-v\d+)?\.ckpt$", name):
                    continue
                try:
                    meta = checkpoint_meta(os.path.join(folder, name))
                except UnsafeCheckpointError:
                    meta = {"global_step": "?"}
                if meta is None:
                    continue  # a truncated file of an old non-atomic writer: nothing to keep
                start = f"starts from {trainer.ckpt_path}" if trainer.ckpt_path else "starts from scratch"
                other = model_differences(meta.get("hyper_parameters") or {}, pl_module.hparams) \
                    if meta.get("hyper_parameters") else []
                whose = f"another model ({'; '.join(other)})" if other else "an earlier run"
                resume = "" if other else "resume that run with --ckpt_path auto, or "
                return "config", (f"checkpoint folder {folder} holds {name} of {whose}, global step "
                                  f"{meta['global_step']}, and this fit {start}: its checkpoints would replace or "
                                  f"sit beside that run's; {resume}give this run another checkpoint.dirpath (or "
                                  "move the old files away)")
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Top-k files this callback does not track. Newer than the resumed state: written by a start that was killed
        # before its next last.ckpt (the resumed run rolled back past them), or between saving a new best and
        # deleting the old one; the resumed run owns the folder (lease) and removes them. Not newer: part of the
        # history this run resumed (a record that did not carry over, e.g. another monitor); they are kept and named,
        # as on a fresh start.
        super().on_train_start(trainer, pl_module)
        if not trainer.is_global_zero or self.monitor is None or self.save_top_k < 0 or not self.dirpath:
            return
        stale = self.untracked_top_k(trainer)
        if not stale:
            return
        removed, kept = [], []
        if trainer.ckpt_path:
            for path in stale:
                try:
                    meta = checkpoint_meta(path)
                except UnsafeCheckpointError:
                    kept.append(path)
                    continue
                if meta is None or meta["global_step"] > trainer.global_step:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                    removed.append(path)
                else:
                    kept.append(path)
        else:
            kept = stale
        if removed:
            rank_zero_info(f"removed {len(removed)} top-k checkpoint(s) newer than the resumed state (global step "
                           f"{trainer.global_step}), left by a start that was killed before its next last.ckpt: "
                           f"{', '.join(os.path.basename(p) for p in removed)}")
        if kept:
            rank_zero_warn(f"{self.dirpath} holds {len(kept)} top-k checkpoint(s) that this run's record does not "
                           f"track ({', '.join(os.path.basename(p) for p in kept[:3])}{' ...' if len(kept) > 3 else ''}"
                           "): they are kept, and save_top_k does not count them; move them away or use another "
                           "checkpoint.dirpath")

    def untracked_top_k(self, trainer: L.Trainer) -> list[str]:
        """Files in the folder named by this callback's ``filename`` template that no ModelCheckpoint tracks."""
        template = self.filename or "{epoch}-{step}"
        if self.auto_insert_metric_name:
            template = re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: f"{m[1]}{self.CHECKPOINT_EQUALS_CHAR}{m[0]}",
                              template)
        pattern, pos = "", 0
        for m in re.finditer(r"\{([^}:]+)(?::([^}]*))?\}", template):
            pattern += re.escape(template[pos:m.start()])
            pattern += r"-?\d+" if (m[2] or "").endswith("d") or m[1] in ("epoch", "step") else \
                r"[-+0-9.eEnaif]+"
            pos = m.end()
        pattern += re.escape(template[pos:])
        rx = re.compile(rf"^{pattern}(-v\d+)?{re.escape(self.FILE_EXTENSION)}$")
        tracked = set()
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                tracked |= {os.path.abspath(p) for p in (*cb.best_k_models, cb.best_model_path, cb.last_model_path)
                            if p}
        folder = os.fspath(self.dirpath)
        if not os.path.isdir(folder):
            return []
        return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                      if rx.match(n) and not n.startswith(self.CHECKPOINT_NAME_LAST or "last")
                      and os.path.abspath(os.path.join(folder, n)) not in tracked)


def _quiet_lightning_callback_warning() -> None:
    """The records of ResumableCheckpoints are re-keyed by adopt_checkpoint_records (and any it cannot place is named
    there): Lightning's own warning about them, issued just before, would tell the user to add callbacks they have.
    Installed at each setup (a filter is kept once), so it survives code that resets the filters between runs."""
    warnings.filterwarnings(
        "ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be "
                          r"provided during `Trainer` instantiation\. Please add the following callbacks: "
                          r"\[(\"(Resumable|Best)Checkpoint\{[^{}]*\}\"(, )?)+\]\.$")


_ADOPTED = "_lk_ablate_records_adopted"


def _state_options(key: Any) -> dict[str, Any]:
    """The options of a callback state key ("ResumableCheckpoint{'monitor': ..., 'every_n_train_steps': 3, ...}")."""
    import ast

    text = str(key)
    try:
        value = ast.literal_eval(text[text.index("{"):])
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def adopt_checkpoint_records(trainer: L.Trainer, checkpoint: dict[str, Any]) -> list[str]:
    """Give each checkpoint callback of ``trainer`` (ResumableCheckpoint, BestCheckpoint, ...) the record its monitor
    had in ``checkpoint`` when the record is stored under another key (checkpoint options changed between resumes);
    returns what was adopted, as lines.

    Lightning restores a callback's state only under its exact key (monitor, mode and the trigger options), so a
    resume with other triggers would forget the best checkpoints and ``last_model_path``: the old best file is then
    an untracked stranger in the folder and the new last goes to ``last-v1.ckpt``. The record moves to the new key
    in the loaded checkpoint (in memory) before Lightning loads the callbacks' states. A record that no callback
    of this run monitors, or that two could take, is named in a warning and not used.
    """
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict) or checkpoint.get(_ADOPTED):
        return []
    checkpoint[_ADOPTED] = True
    ours = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]  # BestCheckpoint (EMA) too
    current = {cb.state_key for cb in trainer.callbacks}
    orphans = {k: v for k, v in states.items() if isinstance(k, str) and k not in current and isinstance(v, dict)
               and {"monitor", "best_model_path", "dirpath"} <= set(v)}  # the records of checkpoint callbacks
    adopted: list[str] = []
    for cb in ours:
        if cb.state_key in states:
            continue
        kinds = {type(cb).__name__, "ModelCheckpoint", "ResumableCheckpoint"} if isinstance(cb, ResumableCheckpoint) \
            else {type(cb).__name__}
        # the same monitor in the same direction (a max-record's scores mean nothing to a min-callback)
        same = [k for k, v in orphans.items() if v.get("monitor") == cb.monitor and k.split("{", 1)[0] in kinds
                and _state_options(k).get("mode", cb.mode) == cb.mode]
        if len(same) > 1:  # several records of this monitor: the one of this folder, if that tells them apart
            same = [k for k in same if orphans[k].get("dirpath") == cb.dirpath] or same
        if len(same) != 1:
            continue
        key = same[0]
        states[cb.state_key] = states.pop(key)
        record = orphans.pop(key)
        old, new = _state_options(key), _state_options(cb.state_key)
        changed = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k])
        best = os.path.basename(record.get("best_model_path") or "") or "none yet"
        carry = "and last.ckpt carry over" if cb.save_last else "carries over"
        adopted.append(f"checkpoint options changed since the resumed checkpoint was written ({changed or key}): "
                       f"the record of the best checkpoints by {cb.monitor} (best: {best}) {carry}")
    for line in adopted:
        rank_zero_info(line)
    if orphans:
        rank_zero_warn(f"the resumed checkpoint holds the record of {len(orphans)} checkpoint callback(s) that this "
                       f"run does not have ({'; '.join(orphans)}): their best-checkpoint records are not used, and "
                       "their files stay in their folders")
    return adopted


def _is_local(path: Any) -> bool:
    return "://" not in os.fspath(path) or os.fspath(path).startswith("file://")


def _resumed_from_this_run(trainer: L.Trainer, folder: str) -> bool:
    """Whether the fit resumed from a checkpoint of this checkpoint folder or of ``default_root_dir`` (where
    ``--ckpt_path auto`` looks: last*.ckpt, hpc_ckpt_N.ckpt)."""
    if not trainer.ckpt_path or not _is_local(trainer.ckpt_path):
        return False
    parent = os.path.dirname(os.path.realpath(os.fspath(trainer.ckpt_path)))
    return parent in (os.path.realpath(folder), os.path.realpath(os.fspath(trainer.default_root_dir)))


def estimate_checkpoint_bytes(pl_module: L.LightningModule, optimizers: Iterable[Any] = ()) -> int:
    """The size of one full checkpoint of ``pl_module``: its state dict (model, EMA, buffers) plus the optimizers'
    per-parameter states (Adam-type: two moments per trainable parameter; with momentum: one), which exist only
    after the first step and so are counted from the parameters; plus 2% and 64 KiB for the rest (loops, callbacks,
    the zip container: a convnext_demo checkpoint of 25,826,173 bytes is estimated at 25.7e6 before that margin)."""
    total = sum(t.numel() * t.element_size() for t in pl_module.state_dict().values() if hasattr(t, "numel"))
    for opt in optimizers:
        moments = 2 if "adam" in type(opt).__name__.lower() else \
            int(any(g.get("momentum") for g in opt.param_groups))
        total += moments * sum(p.numel() * p.element_size() for g in opt.param_groups for p in g["params"]
                               if p.requires_grad)
    return int(total * 1.02) + 65536


# --- resumption --------------------------------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint, or None if the file is not a complete checkpoint.

    Memory-mapped: reads the pickled metadata, not the tensors, so this is cheap even for large checkpoints.
    Read without running code (base/safe_load.py): a file that needs non-allow-listed globals raises
    UnsafeCheckpointError instead of being skipped, so a planted file is reported, not silently passed over.
    """
    meta = checkpoint_meta(path)
    return None if meta is None else meta["global_step"]


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


def find_resume_checkpoint(hpc_dirs: Iterable[str | os.PathLike], last_dirs: Iterable[str | os.PathLike],
                           expect: Mapping[str, Any] | None = None) -> str | None:
    """The newest complete checkpoint to resume from (highest stored global_step, then newest file), or None.

    Incomplete files (e.g. written by an older, non-atomic saver that was killed) are skipped with a warning, and
    so are checkpoints of another model when ``expect`` (hyper-parameters: MODEL_FACTS) is given.
    """
    best: tuple[int, float, str] | None = None
    for path in resume_candidates(hpc_dirs, last_dirs):
        meta = checkpoint_meta(path)
        if meta is None:
            rank_zero_warn(f"ignoring {path} for resumption: it is not a complete Lightning checkpoint")
            continue
        diff = model_differences(meta["hyper_parameters"], expect) if expect is not None else []
        if diff:
            rank_zero_warn(f"ignoring {path} for resumption: it holds another model ({'; '.join(diff)})")
            continue
        key = (meta["global_step"], os.path.getmtime(path), path)
        if best is None or key > best:
            best = key
    return None if best is None else best[2]


def resolve_ckpt_path(ckpt_path: Any, trainer: L.Trainer, expect: Mapping[str, Any] | None = None) -> Any:
    """``fit --ckpt_path auto``: the newest complete checkpoint of this run, or None (first start).

    Searched: ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` and ``last*.ckpt`` in every ModelCheckpoint's
    folder. Any other value is returned unchanged (Lightning handles paths, "last", "hpc", "best"). A checkpoint
    file (found or given) that is past ``trainer.max_epochs`` stops the run here with one line, before the model
    and the data are set up (Lightning would raise a MisconfigurationException after that).
    """
    if ckpt_path != "auto":
        if isinstance(ckpt_path, (str, os.PathLike)) and os.path.isfile(ckpt_path):
            check_resume_limits(ckpt_path, trainer)
        return ckpt_path
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if any(cb.dirpath is None for cb in callbacks):
        raise ConfigError("--ckpt_path auto needs a fixed checkpoint folder: set checkpoint.dirpath (left unset, "
                          "Lightning puts checkpoints in the logger's version folder, which is new on every restart)")
    found = find_resume_checkpoint([trainer.default_root_dir], [cb.dirpath for cb in callbacks], expect)
    where = ", ".join(dict.fromkeys([str(trainer.default_root_dir), *(str(cb.dirpath) for cb in callbacks)]))
    if found is None:
        rank_zero_info(f"--ckpt_path auto: no checkpoint in {where}; starting from scratch")
    else:
        check_resume_limits(found, trainer)
        rank_zero_info(f"--ckpt_path auto: resuming from {found} (global step {checkpoint_step(found)})")
    return found


def check_resume_limits(path: str | os.PathLike, trainer: L.Trainer) -> None:
    """One ConfigError line when the checkpoint has completed more epochs than ``trainer.max_epochs`` (Lightning
    refuses to resume it, with a traceback, after setting up the model and the data)."""
    meta = checkpoint_meta(path)
    max_epochs = getattr(trainer, "max_epochs", None)
    if meta is None or max_epochs in (None, -1) or meta["epochs_completed"] <= max_epochs:
        return
    raise ConfigError(f"--ckpt_path {path} has completed {meta['epochs_completed']} epochs (global step "
                      f"{meta['global_step']}) but trainer.max_epochs is {max_epochs}: set trainer.max_epochs to "
                      f"{meta['epochs_completed']} or more to resume it, or evaluate it with `lk_ablate validate "
                      f"--ckpt_path {path}`")


def check_lightning_checkpoint(path: str | os.PathLike, obj: Any) -> None:
    """One ConfigError line unless ``obj`` (the loaded file ``path``) is a Lightning training checkpoint, the only
    kind fit/validate/test/predict ``--ckpt_path`` can restore (Lightning itself fails with a KeyError)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and "pytorch-lightning_version" in obj:
        return
    raise ConfigError(f"--ckpt_path {path} is not a checkpoint of `lk_ablate fit` (no Lightning training state; "
                      "official or timm weights?): score it with `lk_ablate robustness --ckpt_path "
                      f"{path} --model.model_name NAME`, or start a fit from its weights with --model.pretrained_path "
                      f"{path}")


def cli_trainer_extras(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer arguments the CLI adds to ``config`` (the parsed trainer section): AtomicCheckpointIO unless a
    CheckpointIO is configured, DeferredRequeue and GracefulStop. ``overrides`` win over ``config`` and are returned extended."""
    out = dict(overrides)
    plugins = _as_list(out.get("plugins", config.get("plugins")))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        out["plugins"] = [*plugins, AtomicCheckpointIO()]
    callbacks = _as_list(out.get("callbacks", config.get("callbacks")))
    for kind in (DeferredRequeue, GracefulStop):
        if not any(isinstance(c, kind) for c in callbacks):
            callbacks = [*callbacks, kind()]
    out["callbacks"] = callbacks
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
            _STOP["requeued"] = True
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
            _STOP["requeued"] = True
            self._handler(self._signum, None)


# --- stopping on SIGTERM / SIGINT --------------------------------------------------------------------------------
_STOP: dict[str, Any] = {"signal": None, "requeued": False}


def stop_exit_code() -> int:
    """The exit status for a run that Lightning stopped with SIGTERMException: 0 after a SLURM requeue (the job
    goes on in its next start), else 128 + the signal (SIGTERM 143, SIGINT 130), as a shell reports a killed job."""
    if _STOP["requeued"]:
        return 0
    return 128 + int(_STOP["signal"] or signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signal(trainer: L.Trainer) -> Iterator[None]:
    """Work after the last optimizer step (the end-of-fit robustness scoring) stops on SIGTERM / Ctrl-C.

    Outside the training batches no loop checks Lightning's SIGTERM flag any more, so without this a job killed
    while scoring would finish the scoring and exit 0 as if complete. Here the signal (or one that already came,
    e.g. during the last validation) raises SIGTERMException: the CLI exits 143 / 130; ``last.ckpt`` is already
    written. A SLURM requeue's SIGTERM keeps Lightning's handling. Main thread only (signals are delivered there).
    """
    import threading

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if trainer.received_sigterm and not _STOP["requeued"]:
        _STOP["signal"] = _STOP["signal"] or signal.SIGTERM
        raise SIGTERMException()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(signum: int, frame: Any) -> None:
        if _STOP["requeued"] and callable(previous[signum]):
            previous[signum](signum, frame)
            return
        _STOP["signal"] = signum
        for s, handler in previous.items():  # a second signal acts as before (e.g. Ctrl-C interrupts at once)
            signal.signal(s, handler)
        raise SIGTERMException()

    for s in previous:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


class GracefulStop(L.Callback):
    """SIGTERM or a first Ctrl-C during ``fit``: finish the current optimizer step, write ``last.ckpt``, stop.

    Lightning alone notices SIGTERM only at the end of the epoch (single process) and then exits with status 0;
    here the stop happens at the next optimizer-step boundary (every rank together under DDP), after a save from
    which the run resumes exactly, and the CLI exits 143 (SIGTERM) or 130 (SIGINT). A second Ctrl-C interrupts at
    once (no save). A SLURM requeue (SIGUSR1, see DeferredRequeue) keeps its behaviour: exit 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = False
        self._previous: dict[int, Any] = {}
        self._step_at_start = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its handlers (its SIGTERM handler is wrapped, and called, by ours).
        import threading

        _STOP.update(signal=None, requeued=False)
        self._trainer = trainer
        if trainer.received_sigterm:  # SIGTERM during set-up: stop after the first optimizer step, not the epoch
            _STOP["signal"] = signal.SIGTERM
            self._pending = True
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        if _STOP["requeued"]:  # the SIGTERM of `scontrol requeue`: Lightning's requeue behaviour, unchanged
            if callable(previous):
                previous(signum, frame)
            return
        _STOP["signal"] = _STOP["signal"] or signum
        if signum == signal.SIGINT:
            if self._pending:  # second Ctrl-C: the user wants out now
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            rank_zero_info("Ctrl-C: stopping after the current optimizer step (press again to stop at once)")
        self._pending = True
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)  # Lightning's: kills DDP children it launched, stops outside the training batches
        elif signum == signal.SIGINT:
            trainer_stop = getattr(self, "_trainer", None)
            if trainer_stop is not None:  # outside the training batches Lightning stops where it checks SIGTERM
                trainer_stop._signal_connector.received_sigterm = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step_at_start or _STOP["requeued"]:
            return  # no optimizer step in this batch (gradient accumulation): not a resumable state
        pending = self._pending
        if trainer.world_size > 1:  # every rank must stop (and enter the save) together
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if not pending:
            return
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        _save_last_if_unsaved(trainer)
        rank_zero_info(f"stopped by signal {_STOP['signal'] or signal.SIGTERM} at global step {trainer.global_step}"
                       " after saving last.ckpt; resume with --ckpt_path auto")
        raise SIGTERMException()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # Lightning's own SIGTERM stops (epoch end; mid-validation, which Lightning resumes) save like its
        # ModelCheckpoint(save_on_exception=True) would; not after a requeue (the hpc checkpoint is the resume point).
        if (isinstance(exception, SIGTERMException) and not _STOP["requeued"] and not trainer.sanity_checking and trainer.state.fn == "fit"):
            _STOP["signal"] = _STOP["signal"] or signal.SIGTERM
            _save_last_if_unsaved(trainer)
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}


def _save_last_if_unsaved(trainer: L.Trainer) -> None:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb._last_global_step_saved != trainer.global_step:
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))


# --- which model a checkpoint holds ------------------------------------------------------------------------------
MODEL_FACTS = ("model_name", "kernel_size", "num_classes", "model_kwargs")


def _norm_facts(key: str, value: Any) -> Any:
    if key == "kernel_size" and value is not None:
        try:  # 7 and [7, 7, 7, 7] are the same model
            return list(stage_kernel_sizes(value, len(value) if isinstance(value, (list, tuple)) else 4))
        except ConfigError:
            return value
    if key == "model_kwargs":
        return dict(value or {})
    return value


def same_fact(key: str, a: Any, b: Any) -> bool:
    return _norm_facts(key, a) == _norm_facts(key, b)


def model_differences(checkpoint_hparams: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``key: checkpoint X vs wanted Y`` for each architecture fact (MODEL_FACTS) that differs."""
    return [f"{k}: checkpoint {checkpoint_hparams.get(k)!r} vs configured {wanted.get(k)!r}" for k in MODEL_FACTS
            if not same_fact(k, checkpoint_hparams.get(k), wanted.get(k))]


def checkpoint_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """``global_step``, ``hyper_parameters`` and ``epochs_completed`` of a Lightning checkpoint (memory-mapped, allow-listed unpickling),
    None if the file is not a complete checkpoint; raises UnsafeCheckpointError for a file that needs more."""
    try:
        ckpt = load_torch_file(path, mmap=True)
    except UnsafeCheckpointError:
        raise
    except DataError:
        return None
    if not isinstance(ckpt, dict) or "global_step" not in ckpt or "state_dict" not in ckpt:
        return None
    try:  # what Lightning restores as current_epoch: the completed epochs of the fit loop
        completed = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"])
    except (KeyError, TypeError, ValueError):
        completed = int(ckpt.get("epoch") or 0)
    return {"global_step": int(ckpt["global_step"]), "hyper_parameters": dict(ckpt.get("hyper_parameters") or {}),
            "epochs_completed": completed}


# --- the checkpoint folder's lease (training/lease.py) -------------------------------------------------------------
class HoldLease(L.Callback):
    """Lightning callback that stops the run if its lease was taken and releases it at the end."""

    def __init__(self, leases: list[Lease]) -> None:
        super().__init__()
        self.leases = leases

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for lease in self.leases:
            lease.check()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.release()

    def release(self) -> None:
        for lease in self.leases:
            lease.release()
