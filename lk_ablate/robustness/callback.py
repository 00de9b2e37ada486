"""RobustnessEvaluation: score the trained model (and its EMA weights) on ImageNet-A/R/C/O during ``fit``.

When: at the end of ``fit`` (default), every ``every_n_epochs`` epochs, and/or after every checkpoint save
(``on_checkpoint``). A scoring that follows a save waits until the save is complete (the next training
batch or epoch, or the end of fit), so its JSON lands beside the checkpoint that holds exactly the scored
weights: ``<checkpoint stem>.robustness.json``. Without such a checkpoint it goes to
``output_dir`` (default ``<log_dir>/robustness``) as ``epoch=E-step=S.robustness.json``.

Cost per scoring (images decoded once, every weight set run on each; see docs/robustness.md):
clean val 50k, A 7.5k, R 30k, O 2k + 10k val, ImageNet-C ``severity5`` 19 x 50k = 950k, ``full`` 4.75M.

Under DDP each rank scores every world_size-th image and the partial results are gathered once; a failure
on one rank is caught, travels in that gather and is reported (warning, JSON ``errors``, logged
``robust/errors``) while training goes on. Layout errors are raised in ``setup``, before training starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..base.safe_load import UnsafeCheckpointError, load_torch_file
from ..base.errors import ConfigError, DataError
from ..base.metric_keys import ROBUST_ERRORS
from ..evaluation.loading import weight_sets
from ..evaluation.options import check_protocol
from ..models.layers import dwconv_info
from ..training.preemption import stop_on_signal
from ..training.wandb import log_robustness
from .benchmarks import Benchmark, build_benchmarks, resolve_corruptions
from .evaluate import evaluate
from .pipeline import check_options
from ..base.provenance import collect
from ..base.results import flatten_metrics, make_results, results_path, write_results

__all__ = ["RobustnessEvaluation"]


class RobustnessEvaluation(L.Callback):
    """Score the LightningModule's ``.model`` (and ``.ema.module`` when present) on the configured benchmarks.

    Args:
        imagenet_val, imagenet_a, imagenet_r, imagenet_c, imagenet_o: benchmark roots (None: skip). ImageNet-O
            uses ``imagenet_val`` for its in-distribution images; clean val also enables relative mCE.
        c_preset: "severity5" (19 corruptions at severity 5, the paper's number) or "full" (19 x 5);
            ``corruptions`` / ``severities`` override it.
        every_n_epochs: also score after every n-th training epoch (0: never).
        on_checkpoint: also score after every checkpoint save.
        at_fit_end: score when fit ends (default).
        weights: "both" (raw, and EMA when the module has one), "raw" or "ema".
        batch_size, num_workers: evaluation DataLoader settings (per rank).
        output_dir: where results go when no checkpoint holds the scored weights.
        protocol: "model" (the model's own eval config) or "paper" (the benchmark authors' transforms for
            every model; see docs/robustness.md), recorded in the results' settings.
        decode: "cpu" (PIL in the loader workers, the reference) or "gpu" (JPEGs decoded, resized and cropped
            on the GPU: faster, not bit-identical).
        precision: "32-true" (the paper's evaluation) or "bf16-mixed" (autocast).
        on_bad_image: "error" (stop at the first unreadable image with one line naming it) or "skip" (score
            the rest; the results list the skipped files and count them).
    """

    def __init__(self, imagenet_val: str | None = None, imagenet_a: str | None = None,
                 imagenet_r: str | None = None, imagenet_c: str | None = None, imagenet_o: str | None = None,
                 c_preset: str | None = "severity5", corruptions: list[str] | None = None,
                 severities: list[int] | None = None, every_n_epochs: int = 0, on_checkpoint: bool = False,
                 at_fit_end: bool = True, weights: str = "both", batch_size: int = 64, num_workers: int = 4,
                 output_dir: str | None = None, protocol: str = "model", decode: str = "cpu",
                 precision: str = "32-true", on_bad_image: str = "error") -> None:
        super().__init__()
        if weights not in ("both", "raw", "ema"):
            raise ConfigError(f"RobustnessEvaluation.weights must be 'both', 'raw' or 'ema', got {weights!r}")
        if every_n_epochs < 0 or batch_size < 1 or num_workers < 0:
            raise ConfigError("RobustnessEvaluation: every_n_epochs and num_workers must be >= 0, batch_size >= 1")
        self.paths = {"imagenet_val": imagenet_val, "imagenet_a": imagenet_a, "imagenet_r": imagenet_r,
                      "imagenet_c": imagenet_c, "imagenet_o": imagenet_o}
        if not any(self.paths.values()):
            raise ConfigError("RobustnessEvaluation has no benchmark: set at least one of imagenet_val, "
                              "imagenet_a, imagenet_r, imagenet_c, imagenet_o")
        self.c_preset, self.corruptions, self.severities = c_preset, corruptions, severities
        if imagenet_c:
            resolve_corruptions(c_preset, corruptions, severities)  # fail on bad names now
        self.every_n_epochs, self.on_checkpoint, self.at_fit_end = every_n_epochs, on_checkpoint, at_fit_end
        self.weights, self.batch_size, self.num_workers = weights, batch_size, num_workers
        self.output_dir = output_dir
        self.protocol = check_protocol(protocol)
        check_options(decode, precision, on_bad_image)
        self.scoring = {"decode": decode, "precision": precision, "on_bad_image": on_bad_image}
        self.benchmarks: list[Benchmark] = []
        self._pending: tuple[int, int] | None = None  # (epoch, global_step) to score at the next safe point
        self._scored_steps: set[int] = set()
        self._saved: dict[int, int] = {}  # global_step -> epoch stored in the checkpoint(s) saved at that step

    # --- configuration shared with the standalone command ---------------------------------------------
    def benchmark_kwargs(self) -> dict[str, Any]:
        return dict(self.paths, c_preset=self.c_preset, corruptions=self.corruptions, severities=self.severities,
                    protocol=self.protocol)

    def settings(self) -> dict[str, Any]:
        return settings_for(self.benchmarks, **self.scoring)

    # --- hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problem = None
        try:
            _model_contract(pl_module)
            check_options(**self.scoring, device=trainer.strategy.root_device)  # decode: gpu needs CUDA
            self.benchmarks = build_benchmarks(**self.benchmark_kwargs())
            cfg = pl_module.model.model_config
            if self.weights == "ema" and getattr(getattr(pl_module, "ema", None), "module", None) is None:
                raise ConfigError("RobustnessEvaluation.weights is 'ema' but the model has no EMA "
                                  "(model.ema_decay is null)")
            if cfg.num_classes != 1000:
                raise ConfigError(f"RobustnessEvaluation scores ImageNet benchmarks, which need a 1000-class model; "
                                  f"{pl_module.model.model_name} has {cfg.num_classes} classes")
            for bench in self.benchmarks:
                bench.check()
        except (ConfigError, DataError) as e:
            problem = e
        # Every rank checks; all raise together, so no rank starts training while another has stopped.
        problems = _all_gather(trainer, None if problem is None else (type(problem).__name__, str(problem)))
        bad = [(r, p) for r, p in enumerate(problems) if p is not None]
        if bad:
            if problem is not None:
                raise problem
            rank, (kind, msg) = bad[0]
            raise (DataError if kind == "DataError" else ConfigError)(f"on rank {rank}: {msg}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved[int(checkpoint.get("global_step", trainer.global_step))] = int(checkpoint.get("epoch", 0))
        if self.on_checkpoint and trainer.state.fn == "fit":
            self._pending = (int(checkpoint.get("epoch", trainer.current_epoch)), trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._pending = (trainer.current_epoch, trainer.global_step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._run_pending(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run_pending(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during this scoring must stop the job with 143/130, not let it finish and exit 0.
        with stop_on_signal(trainer):
            self._run_pending(trainer, pl_module)
            if self.at_fit_end and trainer.global_step not in self._scored_steps:
                epoch = self._saved.get(trainer.global_step, max(trainer.current_epoch - 1, 0))
                self.score(trainer, pl_module, epoch, trainer.global_step)

    def _run_pending(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        epoch, step = self._pending
        self._pending = None
        if step not in self._scored_steps:
            self.score(trainer, pl_module, epoch, step)

    # --- scoring --------------------------------------------------------------------------------------
    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, step: int) -> dict[str, Any]:
        """Score now (all ranks), write the JSON beside the checkpoint of this step, log the metrics."""
        self._scored_steps.add(step)
        models = self._weight_sets(pl_module)
        device = pl_module.device
        moved = {w: next(m.parameters()).device for w, m in models.items()}
        for w, m in models.items():
            if moved[w] != device:  # e.g. an EMA kept on the CPU
                m.to(device)
        details: dict[str, Any] = {}
        try:
            results, errors = evaluate(models, pl_module.model.model_config, self.benchmarks,
                                       batch_size=self.batch_size, num_workers=self.num_workers, device=device,
                                       rank=trainer.global_rank, world_size=trainer.world_size,
                                       gather=lambda obj: _all_gather(trainer, obj), details=details,
                                       **self.scoring)
        finally:
            for w, m in models.items():
                if moved[w] != device:
                    m.to(moved[w])
        ckpts = self._checkpoints_at(trainer, step) if trainer.is_global_zero else []
        data = make_results(
            model_name=pl_module.model.model_name, kernel_sizes=getattr(pl_module.model, "kernel_sizes", None),
            num_params=sum(p.numel() for p in pl_module.model.parameters()),
            model_config=model_config_dict(pl_module.model.model_config), weights=results,
            settings=dict(self.settings(), seed=getattr(pl_module, "run_seed", None)), errors=errors,
            checkpoint_path=ckpts[0] if ckpts else None,
            epoch=epoch, global_step=step, checkpoint_format="lightning" if ckpts else None,
            provenance=collect(device=device, precision=self.scoring.get("precision"),
                               dwconv=dwconv_info(pl_module.model), eval_transform=details.get("eval_transform"),
                               config=dict(self.settings(), hparams=dict(pl_module.hparams)),
                               data=details.get("fingerprints")),
            per_image=details.get("per_image"))
        if trainer.is_global_zero:
            try:  # only rank 0 writes: a failure here must not stop it while the other ranks train on
                targets = [results_path(c) for c in ckpts] or [self._fallback_path(trainer, epoch, step)]
                for path in targets:
                    write_results(path, data)
                rank_zero_info(f"robustness results written to {', '.join(map(str, targets))}")
                metrics = flatten_metrics(data)
                metrics[ROBUST_ERRORS] = float(len(errors))
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
                    logger.save()
                log_robustness(trainer, data)  # W&B summary values + the top-1 table (no-op without W&B)
            except Exception as e:
                rank_zero_warn(f"robustness results of step {step} could not be written or logged: {e!r}")
        for e in errors:
            rank_zero_warn(f"robustness evaluation of the {e['weights']} weights on {e['benchmark']} failed "
                           f"(rank {e['rank']}); training goes on. {e['error'].strip().splitlines()[-1]}")
        return data

    def _weight_sets(self, pl_module: L.LightningModule) -> dict[str, nn.Module]:
        ema = getattr(pl_module, "ema", None)
        ema_module = getattr(ema, "module", None) if ema is not None else None
        # The EMA choice every evaluation path shares (evaluation.weight_sets).
        sets = weight_sets(self.weights, ema_module is not None, "the model has no EMA (model.ema_decay null)")
        return {w: ema_module if w == "ema" else pl_module.model for w in sets}

    def _checkpoints_at(self, trainer: L.Trainer, step: int) -> list[str]:
        """Checkpoint files saved at ``step`` (their stored global_step says so), most specific first."""
        if step not in self._saved:
            return []
        candidates: list[str] = []
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "_last_global_step_saved", None) != step:
                continue
            for p in [getattr(cb, "_last_checkpoint_saved", ""), cb.best_model_path, cb.kth_best_model_path,
                      *getattr(cb, "best_k_models", {}), cb.last_model_path]:
                if p and p not in candidates and os.path.isfile(p):
                    candidates.append(p)
        found = [p for p in candidates if _stored_step(p) == step]
        # The uniquely named file first, "last.ckpt" (overwritten each save) after it.
        return sorted(found, key=lambda p: Path(p).stem.startswith("last"))

    def _fallback_path(self, trainer: L.Trainer, epoch: int, step: int) -> Path:
        root = self.output_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "robustness")
        return Path(root) / f"epoch={epoch}-step={step}.robustness.json"


def settings_for(benchmarks: list[Benchmark], decode: str = "cpu", precision: str = "32-true",
                 on_bad_image: str = "error") -> dict[str, Any]:
    """The part of the results that records what was scored (identical for callback and standalone runs)."""
    protocols = {p.protocol for b in benchmarks for p in b.parts}
    out: dict[str, Any] = {"benchmarks": {}, "protocol": protocols.pop() if len(protocols) == 1 else "model",
                           "scoring": {"decode": decode, "precision": precision, "on_bad_image": on_bad_image}}
    for b in benchmarks:
        if b.name == "imagenet_c":
            keys = [p.key.split("/") for p in b.parts]
            out["imagenet_c"] = {"corruptions": list(dict.fromkeys(c for c, _ in keys)),
                                 "severities": sorted({int(s) for _, s in keys})}
            root = Path(b.parts[0].root).parent.parent
            out["benchmarks"][b.name] = os.path.abspath(root)
        elif b.name == "imagenet_o":
            out["benchmarks"][b.name] = os.path.abspath(b.parts[1].root)
        else:
            out["benchmarks"][b.name] = os.path.abspath(b.parts[0].root)
    return out


def model_config_dict(cfg: Any) -> dict[str, Any]:
    return dict(cfg.to_dict(), resize_size=cfg.resize_size)


def _model_contract(pl_module: L.LightningModule) -> None:
    model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module) or getattr(model, "model_config", None) is None:
        raise ConfigError("RobustnessEvaluation needs a LightningModule with `.model` built by "
                          "lk_ablate.create_model (it reads model.model_config); use lk_ablate's ImageClassifier")


def _stored_step(path: str) -> int | None:
    try:  # memory-mapped: reads the pickle, not the tensors; allow-listed unpickling (no code runs)
        ckpt = load_torch_file(path, mmap=True)
    except UnsafeCheckpointError:
        raise
    except DataError:
        return None
    return int(ckpt["global_step"]) if isinstance(ckpt, dict) and "global_step" in ckpt else None


def _all_gather(trainer: L.Trainer, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (one collective); a single-process run returns [obj]."""
    if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out
