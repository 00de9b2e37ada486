"""Weights & Biases for lk_ablate runs: run names from the config, the run id kept in checkpoints, robustness tables.

The CLI (``LkAblateCLI``) calls :func:`configure_wandb_loggers` before it builds the trainer. Every WandbLogger in
``trainer.logger`` then gets, unless the config sets them: a run name and tags carrying architecture, kernel size
and seed (``convnext_tiny-k31-s0``; tags ``convnext_tiny``, ``k31``, ``seed0``), a group per ablation family
(``convnext_tiny-kernel``), ``job_type`` ``train`` for ``fit`` and ``eval`` otherwise, and, when ``fit`` resumes
from a checkpoint that a W&B run wrote, that run's id, so the resumed job goes on logging into the same run.
:class:`WandbRun` (added by the CLI whenever a W&B logger is configured) logs the full resolved config and writes
the run id into every checkpoint, and adds ``kernel_max`` / ``kernel_label`` (the numeric kernel axis and the
grouping key of the W&B dashboard) to the run config. :func:`log_robustness` puts a results file's metrics into the run
summary and its per-benchmark top-1 into a ``wandb.Table``; :func:`log_results_to_run` and
:func:`log_analyses_to_run` do the same (and log the analyses' scalars) for a run reopened after training. Every key
comes from :mod:`lk_ablate.base.metric_keys`.

``wandb`` itself is imported only by the logger, never here at import time.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import WandbLogger

from ..base.errors import ConfigError, DataError
from ..base.metric_keys import ROBUST_TABLE, analysis_summary_key, kernel_config
from ..base.provenance import collect
from ..base.results import flatten_metrics
from ..base.safe_load import UnsafeCheckpointError, load_torch_file
from ..models.registry import default_kernel_sizes, kernel_label, model_family
from .preemption import find_resume_checkpoint

__all__ = ["CHECKPOINT_KEY", "WandbRun", "analysis_summary", "configure_wandb_loggers", "finish_wandb_run",
           "kernel_fields", "log_analyses_to_run", "log_results_to_run", "log_robustness", "run_group",
           "read_run_id", "read_run_info", "resolved_config", "resume_checkpoint", "robustness_table_rows",
           "run_identity", "wandb_logger_args", "wandb_loggers"]

CHECKPOINT_KEY = "wandb"  # checkpoint["wandb"] = {"run_id", "project", "entity", "name", "group"}
TABLE_COLUMNS = ["model", "kernel_size", "seed", "weights", "benchmark", "corruption", "severity", "top1"]
_OUR_JOB_TYPES = (None, "train", "eval")


def run_group(model_name: str) -> str:
    """The W&B group of a model's runs: one per ablation family (``replknet_3b`` -> ``replknet_31b-kernel``)."""
    return f"{model_family(model_name)}-kernel"


def run_identity(model_name: str, kernel_size: Any, seed: int | None) -> dict[str, Any]:
    """Run name, tags and group of one ablation run; ``kernel_size`` an int or a per-stage list."""
    k = kernel_label(kernel_size)
    seed_part = "" if seed is None else f"-s{seed}"
    tags = [model_name, f"k{k}"] + ([] if seed is None else [f"seed{seed}"])
    return {"name": f"{model_name}-k{k}{seed_part}", "tags": tags, "group": run_group(model_name)}


def wandb_logger_args(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The init args of the first WandbLogger of a resolved fit config (a plain dict, as ``--print_config`` prints
    it); None when it logs elsewhere or nowhere."""
    for spec in _logger_specs(config):
        if _is_wandb(spec):
            return dict(_get(spec, "init_args") or {})
    return None


def configure_wandb_loggers(config: Any, subcommand: str | None) -> int:
    """Fill name/tags/group/job_type (and, for a resumed ``fit``, the run id) of every WandbLogger in ``config``.

    ``config`` is the subcommand's parsed namespace (``trainer``, ``model``, ``seed_everything``, ``ckpt_path``).
    Values the config sets are kept; tags are extended. Returns the number of W&B loggers found.
    """
    specs = [s for s in _logger_specs(config) if _is_wandb(s)]
    if not specs:
        return 0
    model = config.get("model")
    model_name = _get(model, "model_name", "model")
    kernel = _get(model, "kernel_size")
    if kernel is None:
        kernel = _default_kernel_sizes(model_name)
    seed = _get(model, "seed")
    if seed is None and not isinstance(config.get("seed_everything"), bool):
        seed = config.get("seed_everything")
    ident = run_identity(model_name, kernel, seed)
    run_id = read_run_id(resume_checkpoint(config)) if subcommand == "fit" else None
    for spec in specs:
        args = spec.init_args
        if not args.get("name"):
            args.name = ident["name"]
        args.tags = list(dict.fromkeys([*(args.get("tags") or []), *ident["tags"]]))
        if not args.get("group"):
            args.group = ident["group"]
        if args.get("job_type") in _OUR_JOB_TYPES:
            args.job_type = "train" if subcommand in ("fit", None) else "eval"
        if run_id is not None and not (args.get("id") or args.get("version")):
            args.id = run_id
        if args.get("resume") is None:  # an explicit None would override WandbLogger's own "allow"
            args.resume = "allow"
        if args.get("save_dir") in (None, ".") and not args.get("dir"):
            # beside the checkpoints: W&B files and the CLI's config.yaml (saved to the logger's save_dir)
            args.save_dir = str(_get(config.get("checkpoint"), "dirpath")
                                or _get(config.get("trainer"), "default_root_dir") or ".")
    return len(specs)


def resume_checkpoint(config: Any) -> str | None:
    """The checkpoint file ``fit`` will resume from (None: a fresh start), found as the trainer will find it.

    A file path; ``auto`` (newest complete ``hpc_ckpt_N.ckpt`` / ``last*.ckpt``, see ``preemption.py``); ``last``
    (``last*.ckpt`` in ``checkpoint.dirpath``); ``hpc``, or nothing under SLURM (Lightning then resumes from the
    newest ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir``).
    """
    ckpt = config.get("ckpt_path")
    if ckpt not in (None, "auto", "last", "hpc", "best", "registry"):
        return str(ckpt)
    root = _get(config.get("trainer"), "default_root_dir") or os.getcwd()
    dirpath = _get(config.get("checkpoint"), "dirpath")
    last_dirs = [dirpath] if dirpath else []
    if ckpt == "auto":
        return find_resume_checkpoint([root], last_dirs)
    if ckpt == "last":
        return find_resume_checkpoint([], last_dirs)
    if ckpt == "hpc" or (ckpt is None and SLURMEnvironment.detect()):
        return find_resume_checkpoint([root], [])
    return None


def read_run_info(checkpoint_path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``checkpoint["wandb"]`` as :class:`WandbRun` stored it (run id, project, entity, name, group); None when the
    checkpoint is missing, unreadable or never logged to W&B."""
    if checkpoint_path is None or not Path(checkpoint_path).is_file():
        return None
    try:  # memory-mapped: reads the pickle, not the tensors; allow-listed unpickling (no code runs)
        ckpt = load_torch_file(checkpoint_path, mmap=True)
    except UnsafeCheckpointError:
        raise
    except DataError:  # unreadable: Lightning itself reports it when it loads the checkpoint
        return None
    info = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    return dict(info) if isinstance(info, dict) and info.get("run_id") else None


def read_run_id(checkpoint_path: str | os.PathLike | None) -> str | None:
    """The W&B run id stored in a Lightning checkpoint by :class:`WandbRun` (None when there is none)."""
    info = read_run_info(checkpoint_path)
    return None if info is None else info["run_id"]


def resolved_config(parser: Any, config: Any) -> dict[str, Any]:
    """The parsed config as the plain dict LightningCLI saves to config.yaml (links and nulls included)."""
    return yaml.safe_load(parser.dump(config, skip_none=False, skip_link_targets=False))


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class WandbRun(L.Callback):
    """Logs the resolved config to every W&B logger at setup and stores the run id in every checkpoint.

    Args:
        config: the full resolved config (plain dict, as the CLI saves it); None logs nothing at setup.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config) if config is not None else None
        self._logged = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.config is None or self._logged or not trainer.is_global_zero:
            return
        # What produced the run (code, versions, device, precision, threads, determinism; lk_ablate.base.provenance),
        # beside the config it ran with, and the kernel sizes the model was built with (model.kernel_size may be
        # null: the variant's default).
        provenance = pl_module.provenance() if hasattr(pl_module, "provenance") else collect(device=pl_module.device)
        fields = kernel_fields(getattr(getattr(pl_module, "model", None), "kernel_sizes", None))
        for logger in wandb_loggers(trainer):
            # Nested sections ("model", "data", "trainer", ...) show in the W&B UI as model.kernel_size etc.
            logger.experiment.config.update({**self.config, **fields, "provenance": provenance}, allow_val_change=True)
        self._logged = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero:  # only rank 0 writes the file
            return
        run = loggers[0].experiment
        checkpoint[CHECKPOINT_KEY] = {"run_id": loggers[0].version, "project": loggers[0].name,
                                      "entity": getattr(run, "entity", None), "name": getattr(run, "name", None),
                                      "group": getattr(run, "group", None)}


def robustness_table_rows(results: Mapping[str, Any], seed: int | None = None) -> list[list[Any]]:
    """Rows (model, kernel size, seed, weights, benchmark, corruption, severity, top-1 %) of a results dict.

    Every benchmark with a scalar ``top1`` gives one row (corruption and severity empty); one with a nested
    ``top1[corruption][severity]`` (ImageNet-C, Fashion-MNIST-C) one row per cell. AUPR and mCE are not top-1
    and stay in the summary only.
    """
    model = results["model"]["name"]
    kernel = kernel_label(results["model"].get("kernel_sizes"))
    rows = []
    for weights, benches in results["weights"].items():
        for bench, m in benches.items():
            top1 = (m or {}).get("top1")
            if isinstance(top1, (int, float)) and not isinstance(top1, bool):
                rows.append([model, kernel, seed, weights, bench, None, None, float(top1)])
            elif isinstance(top1, Mapping):
                for corruption, by_sev in top1.items():
                    for severity, v in by_sev.items():
                        rows.append([model, kernel, seed, weights, bench, corruption, int(severity), float(v)])
    return rows


def kernel_fields(kernel_sizes: Sequence[int] | None) -> dict[str, Any]:
    """``{"kernel_max": 31, "kernel_label": "31-29-27-13"}`` for per-stage kernel sizes ({} when unknown)."""
    sizes = list(kernel_sizes) if kernel_sizes else None
    return kernel_config(sizes, kernel_label(sizes)) if sizes else {}


def log_robustness(trainer: L.Trainer, results: Mapping[str, Any], seed: int | None = None,
                   key: str = ROBUST_TABLE) -> None:
    """Put a results dict's scalar metrics into the summary of every W&B run of ``trainer`` and log its table.

    Call on every rank (it does nothing off rank 0). ``seed``: default the module's ``run_seed``, else the
    results' ``settings.seed``.
    """
    loggers = wandb_loggers(trainer)
    if not loggers or not trainer.is_global_zero:
        return
    if seed is None:
        seed = getattr(trainer.lightning_module, "run_seed", None) if trainer.lightning_module is not None else None
    step = (results.get("checkpoint") or {}).get("global_step")
    for logger in loggers:
        summary, table = _summary_and_table(results, seed)
        logger.experiment.summary.update(summary)
        logger.log_metrics({key: table}, step=trainer.global_step if step is None else step)


def log_results_to_run(results: Mapping[str, Any], run_info: Mapping[str, Any], seed: int | None = None,
                       save_dir: str | os.PathLike | None = None, key: str = ROBUST_TABLE) -> str:
    """Reopen the W&B run a checkpoint was trained in (``checkpoint["wandb"]``, resumed by its id) and add a
    results dict to it, as the callback would have: scalar metrics into the summary, the top-1 table logged.

    For scores computed after training (``lk_ablate robustness --wandb``, the SLURM evaluation array): the
    metrics then sit on the training run, next to its kernel size and group. Returns the run id.
    """
    summary, table = _summary_and_table(results, seed)
    with _reopened_run(run_info, results, save_dir) as run:
        run.summary.update(summary)
        run.log({key: table})
    return str(run.id)


def analysis_summary(analyses: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The analyses' ``summary_scalars`` (``{name: result}``, as ``run_analyses`` returns them and the results file
    stores them) under their W&B keys, ``analysis/<name>[@<protocol>]/<scalar>``; scalars that could not be computed
    (None) are left out. Any analysis with ``summary_scalars`` is logged, whatever its name."""
    out: dict[str, float] = {}
    for result in analyses.values():
        protocol = result.get("protocol")
        for k, v in (result.get("summary_scalars") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[analysis_summary_key(k, protocol)] = float(v)
    return out


def log_analyses_to_run(analyses: Mapping[str, Mapping[str, Any]], run_info: Mapping[str, Any],
                        kernel_sizes: Sequence[int] | None = None,
                        save_dir: str | os.PathLike | None = None) -> tuple[str, dict[str, float]]:
    """Reopen the checkpoint's W&B run (as :func:`log_results_to_run`) and put the analyses' scalar summaries into
    its summary (``lk_ablate analyze --wandb``). Returns the run id and what was logged."""
    summary = analysis_summary(analyses)
    with _reopened_run(run_info, {"model": {"kernel_sizes": kernel_sizes}}, save_dir) as run:
        run.summary.update(summary)
    return str(run.id), summary


@contextlib.contextmanager
def _reopened_run(run_info: Mapping[str, Any], results: Mapping[str, Any],
                  save_dir: str | os.PathLike | None) -> Iterator[Any]:
    """The checkpoint's W&B run, resumed by its id, finished on exit. Its config gets ``kernel_max`` /
    ``kernel_label`` from the results' kernel sizes, so runs trained before those fields existed join the
    dashboard's kernel axis once they are scored or analysed."""
    import wandb  # lazy: only a W&B upload pays for (and needs) the wandb package

    run = wandb.init(id=run_info["run_id"], project=run_info.get("project"), entity=run_info.get("entity"),
                     resume="allow", dir=None if save_dir is None else str(save_dir), reinit="finish_previous")
    try:
        fields = kernel_fields((results.get("model") or {}).get("kernel_sizes"))
        if fields:
            run.config.update(fields, allow_val_change=True)
        yield run
    finally:
        run.finish()


def _summary_and_table(results: Mapping[str, Any], seed: int | None) -> tuple[dict[str, Any], Any]:
    """A results dict's scalar metrics (summary values) and its top-1 ``wandb.Table``; ``seed`` None: the
    results' ``settings.seed``."""
    import wandb  # lazy: only a W&B upload pays for (and needs) the wandb package

    if seed is None:
        seed = (results.get("settings") or {}).get("seed")
    return flatten_metrics(results), wandb.Table(columns=TABLE_COLUMNS, data=robustness_table_rows(results, seed))


def finish_wandb_run(exit_code: int = 0) -> None:
    """Finish the active W&B run, if any (a later run in the same process then starts a new one)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


# --- config helpers --------------------------------------------------------------------------------------
def _logger_specs(config: Any) -> list[Any]:
    trainer = config.get("trainer")
    spec = _get(trainer, "logger")
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    return [s for s in specs if s is not None and not isinstance(s, bool) and _get(s, "class_path")]


def _is_wandb(spec: Any) -> bool:
    module, _, name = str(_get(spec, "class_path")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, WandbLogger)


def _get(ns: Any, key: str, default: Any = None) -> Any:
    if ns is None:
        return default
    value = ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)
    return default if value is None else value


def _default_kernel_sizes(model_name: str) -> Sequence[int] | None:
    """The variant's own kernel sizes (model.kernel_size unset), a registry fact: no model is built."""
    try:
        return list(default_kernel_sizes(model_name))
    except ConfigError:  # an unknown model fails with its own message when the model is built
        return None
