"""ImageClassifier: the ConvNeXt training recipe as a LightningModule, for every registered model."""
from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torchmetrics.classification import MulticlassAccuracy

from ..data.seeding import STREAM_STEP, derive_seed, global_seed, seeded_rng
from ..base.errors import ConfigError, DataError
from ..base.metric_keys import TRAIN_GLOBAL_BATCH_SIZE, TRAIN_LOSS, TRAIN_LR, TRAIN_PEAK_LR, TRAIN_TOP1, eval_key
from ..base.provenance import collect
from ..models.checkpoints import load_checkpoint
from ..models.compile import check_compile_options, compile_model, is_compiled
from ..models.contract import AblationModel
from ..models.layers import dwconv_info, set_module_impl
from ..models.registry import ModelConfig, create_model
from .schedule import scaled_lr, warmup_cosine_factor


class ImageClassifier(L.LightningModule):
    """Trains ``create_model(model_name, kernel_size, ...)`` with the ConvNeXt recipe (defaults below).

    AdamW at ``base_lr`` for a global batch of ``base_batch_size``, scaled linearly to the real global batch
    (per-device batch x devices x nodes x gradient accumulation); no weight decay on 1-D parameters and
    biases; per-step linear warmup then cosine to ``min_lr``; label smoothing; batch-level mixup/cutmix
    (training only); drop path; EMA of the weights, validated and reported separately (val/ema_*).
    Warmup: 20 epochs, as the official 300-epoch recipe and the 120-epoch ablation configs (configs/base/) use.
    Accuracies are logged in percent (``train/top1``, ``val/top1``, ``val/top5``, ``val/ema_top1``,
    ``val/ema_top5``; ``test/...`` likewise), the unit of every accuracy lk_ablate prints.
    Randomness (mixup/cutmix, drop path) is drawn under a seed derived from (seed, epoch, batch, rank).
    ``compile: true`` runs the network (and its EMA) under ``torch.compile`` (``compile_mode``, ``compile_backend``)
    for fit, validate, test and predict; checkpoints are the same either way.
    """

    def __init__(self, model_name: str = "convnext_tiny", kernel_size: int | list[int] | None = None,
                 num_classes: int = 1000, drop_path_rate: float = 0.1, model_kwargs: dict[str, Any] | None = None,
                 pretrained_path: str | None = None, base_lr: float = 4e-3, base_batch_size: int = 4096,
                 weight_decay: float = 0.05, warmup_epochs: float = 20.0, min_lr: float = 1e-6,
                 betas: tuple[float, float] = (0.9, 0.999), label_smoothing: float = 0.1,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, mixup_prob: float = 1.0,
                 mixup_switch_prob: float = 0.5, ema_decay: float | None = 0.9999, channels_last: bool = False,
                 layer_decay: float | None = None, dwconv_impl: str | None = None,
                 seed: int | None = None, compile: bool = False, compile_mode: str | None = None,
                 compile_backend: str = "inductor") -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value, lo, hi in (("drop_path_rate", drop_path_rate, 0.0, 1.0),
                                    ("label_smoothing", label_smoothing, 0.0, 1.0),
                                    ("mixup_prob", mixup_prob, 0.0, 1.0)):
            if not lo <= value <= hi:
                raise ConfigError(f"model.{name} must be in [{lo}, {hi}], got {value}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"model.layer_decay must be in (0, 1] or null, got {layer_decay}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        if compile:  # torch.compile of the model (and EMA) happens in configure_model; checked here, before building
            check_compile_options(compile_mode, compile_backend)
        if base_lr <= 0 or base_batch_size < 1 or min_lr < 0 or warmup_epochs < 0 or weight_decay < 0:
            raise ConfigError("model.base_lr, base_batch_size must be > 0 and min_lr, warmup_epochs, weight_decay "
                              f">= 0; got {base_lr}, {base_batch_size}, {min_lr}, {warmup_epochs}, {weight_decay}")
        self.model = create_model(model_name, kernel_size=kernel_size, num_classes=num_classes,
                                  drop_path_rate=drop_path_rate, **(model_kwargs or {}))
        if dwconv_impl is not None:  # e.g. "auto", "direct", "fft" or a per-product plan "direct_cl,direct,fft"
            try:
                set_module_impl(self.model, dwconv_impl)
            except ValueError as e:
                raise ConfigError(f"model.dwconv_impl: {e}") from e
        # The starting weights matter only to a fit that starts from scratch: a resumed fit, validate and test take
        # every weight from their checkpoint, so a pretrained file that is gone since must not stop them (the
        # checkpoint's hyper-parameters still name it). A fresh start without it stops in _check_pretrained.
        self._pretrained_missing = bool(pretrained_path) and not os.path.isfile(pretrained_path)
        if pretrained_path and not self._pretrained_missing:
            load_checkpoint(self.model, pretrained_path, drop_head=True)
        self.ema = ModelEmaV3(self.model, decay=ema_decay) if ema_decay is not None else None
        if self.ema is not None:  # updated by copying, never by gradients; DDP rejects parameters that get no gradient
            self.ema.requires_grad_(False)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               switch_prob=mixup_switch_prob, mode="batch", label_smoothing=label_smoothing,
                               num_classes=num_classes)
        top5 = min(5, num_classes)
        self.val_metrics = torch.nn.ModuleDict({
            "top1": PercentAccuracy(num_classes, top_k=1, average="micro"),
            "top5": PercentAccuracy(num_classes, top_k=top5, average="micro"),
            "ema_top1": PercentAccuracy(num_classes, top_k=1, average="micro"),
            "ema_top5": PercentAccuracy(num_classes, top_k=top5, average="micro"),
        })
        self.train_acc = PercentAccuracy(num_classes, top_k=1, average="micro")

    # --- facts other components read --------------------------------------------------------------
    @property
    def model_config(self) -> ModelConfig:
        return self.model.model_config

    @property
    def run_seed(self) -> int:
        return self.hparams.seed if self.hparams.seed is not None else global_seed()

    def global_batch_size(self) -> int:
        """Per-device batch x devices x nodes x gradient accumulation.

        The per-device batch is the DataModule's option, read here because the peak lr is needed when the
        optimizer is built (configure_optimizers), before the trainer has a train loader to ask (see
        schedule_length); linking it into the model would make it a model hyperparameter in every checkpoint.
        """
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "batch_size"):
            raise ConfigError("cannot scale the learning rate: the DataModule has no batch_size")
        return dm.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    # --- training ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def configure_model(self) -> None:
        """``compile: true``: compile the network and its EMA in place (state-dict keys unchanged, see compile_model).

        Here rather than in __init__: after the EMA's deep copy and the channels-last conversion (setup), inside each
        launched process (a module pickled to spawned workers loses its compiled call), before DDP wraps the module.
        """
        hp = self.hparams
        if not hp.get("compile", False):
            return
        for net in (self.model, self.ema.module if self.ema is not None else None):
            if net is not None and not is_compiled(net):
                compile_model(net, hp.compile_mode, hp.compile_backend)

    def _check_pretrained(self) -> None:
        """A run whose weights would come from ``pretrained_path`` (no ``--ckpt_path``) needs that file."""
        if self._pretrained_missing and not self.trainer.ckpt_path:
            raise DataError(f"model.pretrained_path {self.hparams.pretrained_path} not found: this run starts from "
                            "those weights; give the file, or resume/evaluate a checkpoint with --ckpt_path (its "
                            "weights are used then, and the pretrained file is not needed)")

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "validate":  # not the validation inside fit: on_fit_start checked that
            self._check_pretrained()

    def on_test_start(self) -> None:
        self._check_pretrained()

    def on_predict_start(self) -> None:
        self._check_pretrained()

    def on_fit_start(self) -> None:
        self._check_pretrained()
        dm = self.trainer.datamodule
        if self.mixup is not None and getattr(dm, "batch_size", 0) % 2:
            raise ConfigError(f"mixup/cutmix mix each batch with its reverse and need an even per-device batch "
                              f"size; data.batch_size is {dm.batch_size}")
        if getattr(dm, "num_classes", self.hparams.num_classes) != self.hparams.num_classes:
            raise ConfigError(f"the dataset has {dm.num_classes} classes but model.num_classes is "
                              f"{self.hparams.num_classes}")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        seed = derive_seed(self.run_seed, STREAM_STEP, self.current_epoch, batch_idx, self.global_rank)
        with seeded_rng(seed, cuda=x.is_cuda):
            if self.mixup is not None:
                x, target = self.mixup(x, y)
            logits = self.model(self._prepare(x))
        if self.mixup is not None:
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits.detach(), y)
        self.log(TRAIN_LOSS, loss, prog_bar=True)
        self.log(TRAIN_TOP1, self.train_acc, on_step=False, on_epoch=True)
        self.log(TRAIN_LR, self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Once per real optimizer step (after gradient accumulation), at the constant decay from the first step,
        # starting from the weights the EMA copied at construction (after pretrained_path): the official ConvNeXt /
        # RepLKNet update (timm ModelEma, ema = decay * ema + (1 - decay) * model; facebookresearch/ConvNeXt
        # engine.py:74-75, 82-83). No ``step``: ModelEmaV3.get_decay(step) is 0 for steps <= 1, which with
        # Lightning's 0-based global_step replaced the EMA by the weights of the first two steps.
        if self.ema is not None:
            self.ema.update(self.model)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Weight decay except on 1-D params and biases; with ``layer_decay``, per-layer lr scales.

        Layer decay (fine-tuning) follows the official RepLKNet/BEiT rule: layer i of L gets
        lr * layer_decay ** (L - 1 - i); the model says which layer a parameter is in (``layer_decay_id``).
        """
        hp = self.hparams
        if hp.layer_decay is None:
            return param_groups_weight_decay(self.model, hp.weight_decay)
        if not isinstance(self.model, AblationModel):
            raise ConfigError(f"model.layer_decay needs a model with layer ids (the model contract); "
                              f"{hp.model_name} has none")
        n_ids = self.model.num_layer_decay_ids
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            no_wd = p.ndim <= 1 or name.endswith(".bias")
            lid = self.model.layer_decay_id(name)
            g = groups.setdefault((lid, no_wd), {"params": [], "weight_decay": 0.0 if no_wd else hp.weight_decay,
                                                 "lr_scale": hp.layer_decay ** (n_ids - 1 - lid)})
            g["params"].append(p)
        out = list(groups.values())
        for g in out:
            g["lr"] = lr * g["lr_scale"]
        return out

    def schedule_length(self) -> tuple[int, int]:
        """(optimizer steps per epoch, total optimizer steps) of this fit, from the trainer
        (``estimated_stepping_batches``: the train loader's length after ``limit_train_batches``, gradient
        accumulation, ``max_epochs`` / ``max_steps``).

        Called from ``on_train_start``, never earlier. Why (Lightning 2.6.6): ``configure_optimizers`` runs in
        ``strategy.setup`` (trainer.py:1053), before ``restore_training_state`` (trainer.py:1070) restores the loop
        progress and the loader state (fit_loop.py:528). There, with no train loader yet,
        ``estimated_stepping_batches`` calls ``fit_loop.setup_data()`` (trainer.py:1772-1774), which creates the
        train iterator at once (fit_loop.py:276), so our resumable loader reads its position (epoch 0, batch 0)
        before the checkpoint is restored; ``FitLoop.run``'s own ``setup_data`` (fit_loop.py:209) then returns early
        (fit_loop.py:227), the restored loader state is never applied (fit_loop.py:552-555), and a resumed epoch
        keeps that iterator (training_epoch_loop.py:245): the epoch would replay from its first batch. In
        ``on_train_start`` (fit_loop.py:414, after the restore and after :209) the loader exists and the property
        only reads ``num_training_batches``.
        """
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ConfigError("set trainer.max_epochs or trainer.max_steps: the lr schedule needs a length")
        batches = trainer.num_training_batches
        if batches == float("inf"):  # an iterable dataset without a length: max_steps spread over the epochs
            per_epoch = total // trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else total
        else:
            per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        return int(per_epoch), int(total)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        global_batch = self.global_batch_size()
        lr = scaled_lr(hp.base_lr, hp.base_batch_size, global_batch)
        groups = self.param_groups(lr)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas))
        # The schedule's length comes from the trainer in on_train_start (see schedule_length); until then the
        # factor is 1 and no optimizer step is taken. The lengths live in this dict, not in the partial's
        # attributes, so the scheduler's state dict (and the checkpoint) is what it always was.
        self._schedule_length: dict[str, int] = {}
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(_schedule_factor, self._schedule_length, peak_lr=lr, min_lr=hp.min_lr))
        self.schedule_facts = {"global_batch_size": global_batch, "peak_lr": lr}
        # What this run's options ask of each group, before a resumed checkpoint's optimizer state replaces it.
        self._configured_groups = [{k: g[k] for k in ("lr", "weight_decay", "betas")} for g in optimizer.param_groups]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        steps_per_epoch, total = self.schedule_length()
        warmup = int(round(self.hparams.warmup_epochs * steps_per_epoch))
        self._schedule_length.update(total_steps=total, warmup_steps=warmup)
        # The lr of the step about to run, now that the length is known: the LambdaLR formula (base_lr x factor),
        # so a restored run gets the value its checkpoint holds, bit for bit.
        schedule = self.lr_schedulers()
        self._check_restored_optimizer(schedule)
        for group, base_lr, factor in zip(schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
            group["lr"] = base_lr * factor(schedule.last_epoch)
        schedule._last_lr = [group["lr"] for group in schedule.optimizer.param_groups]
        facts = self.schedule_facts = {**self.schedule_facts, "total_steps": total, "warmup_steps": warmup}
        if self.logger is not None:
            self.logger.log_hyperparams({"schedule": facts})
        self.log_dict({TRAIN_GLOBAL_BATCH_SIZE: float(facts["global_batch_size"]),
                       TRAIN_PEAK_LR: facts["peak_lr"]}, rank_zero_only=True)

    def _check_restored_optimizer(self, schedule: Any) -> None:
        """A resumed fit continues the checkpoint's optimizer and lr schedule (Lightning restores their states), so
        options that set them (model.base_lr, base_batch_size and the global batch behind the peak lr, weight_decay,
        betas) must be those of the checkpoint: a changed one would be ignored, or mixed with the restored base lr
        by the schedule's factor (a resume with base_lr 1e-12 trained at lr 1000). One line naming what differs."""
        configured = getattr(self, "_configured_groups", None)
        if not self.trainer.ckpt_path or not configured:
            return
        restored = [{"lr": b, "weight_decay": g["weight_decay"], "betas": tuple(g["betas"])}
                    for b, g in zip(schedule.base_lrs, schedule.optimizer.param_groups)]
        differ = []
        for key, what in (("lr", "peak lr (model.base_lr x global batch / model.base_batch_size)"),
                          ("weight_decay", "model.weight_decay"), ("betas", "model.betas")):
            old = [r[key] for r in restored]
            new = [c[key] if key != "betas" else tuple(c[key]) for c in configured]
            if len(old) != len(new) or not all(math.isclose(a, b, rel_tol=1e-9) if key != "betas" else
                                               all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b))
                                               for a, b in zip(old, new)):
                differ.append(f"{what}: checkpoint {old[0] if len(set(map(str, old))) == 1 else old}, "
                              f"this run {new[0] if len(set(map(str, new))) == 1 else new}")
        if differ:
            raise ConfigError(f"--ckpt_path {self.trainer.ckpt_path}: a resumed fit continues the checkpoint's "
                              f"optimizer and lr schedule, but this run sets {'; '.join(differ)}; resume with the "
                              "checkpoint's values (and the same global batch: data.batch_size x devices x nodes x "
                              "accumulate_grad_batches), or start a new run from its weights with "
                              "--model.pretrained_path")

    # --- evaluation --------------------------------------------------------------------------------
    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        x, y = batch
        x = self._prepare(x)
        logits = self.model(x)
        self.log(eval_key(prefix, "loss"), F.cross_entropy(logits.float(), y), sync_dist=True)
        for name in ("top1", "top5"):
            self.val_metrics[name](logits, y)
            self.log(eval_key(prefix, name), self.val_metrics[name], prog_bar=name == "top1")
        if self.ema is not None:
            ema_logits = self.ema.module(x)
            for name in ("top1", "top5"):
                self.val_metrics[f"ema_{name}"](ema_logits, y)
                self.log(eval_key(prefix, name, ema=True), self.val_metrics[f"ema_{name}"])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(self._prepare(x)).softmax(-1)

    def provenance(self) -> dict[str, Any]:
        """What is training this model (lk_ablate.base.provenance): code, versions, device, precision, threads,
        determinism, the depthwise-conv implementation, the hyperparameters' hash and the data's class count."""
        trainer = self._trainer
        dm = trainer.datamodule if trainer is not None else None
        try:
            classes = getattr(dm, "num_classes", None) if dm is not None else None
        except Exception:  # a DataModule whose class count needs data it has not read
            classes = None
        data = {"train": {"num_classes": classes, "datamodule": type(dm).__name__}} if dm is not None else None
        return collect(device=self.device, precision=str(trainer.precision) if trainer is not None else None,
                       dwconv=dwconv_info(self.model), config=dict(self.hparams), data=data)
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before Lightning restores the callbacks (checkpoint_connector: restore_model, then restore_callbacks).
        convert_monitored_scores(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lk_ablate"] = {"model_name": self.hparams.model_name,
                                   "kernel_sizes": list(self.model.kernel_sizes),
                                   "model_config": self.model_config.to_dict(),
                                   "has_ema": self.ema is not None, "seed": self.run_seed,
                                   "provenance": self.provenance()}


class PercentAccuracy(MulticlassAccuracy):
    """torchmetrics' top-k accuracy, in percent: the unit of every accuracy lk_ablate logs and prints."""

    def compute(self) -> torch.Tensor:
        return 100.0 * super().compute()


# Metric keys of checkpoints written before accuracies were logged in percent under these names (fractions then).
OLD_FRACTION_KEYS = {f"{stage}/{'ema_' if ema else ''}{old}": eval_key(stage, new, ema)
                     for stage in ("train", "val", "test") for ema in (False, True)
                     for old, new in (("acc1", "top1"), ("acc5", "top5"))}
_SCORE_FIELDS = ("best_model_score", "kth_value", "current_score", "best_score")  # ModelCheckpoint, EarlyStopping


def convert_monitored_scores(checkpoint: dict[str, Any]) -> list[str]:
    """A checkpoint's callback states that monitored an old fraction key (``val/acc1``) as the same callbacks on the
    new percent key (``val/top1``): the state key names the new monitor (else Lightning would not restore the state
    into a callback monitoring ``val/top1``: best score, top-k files and early-stopping patience would be lost) and
    every stored score is multiplied by 100 (else a fraction's best, 0.76, would be compared with percentages).
    Returns the converted state keys (the old ones)."""
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict):
        return []
    converted = []
    for key in list(states):
        old = next((o for o in OLD_FRACTION_KEYS if f"'monitor': '{o}'" in str(key)), None)
        state = states[key]
        if old is None or not isinstance(state, dict):
            continue
        new = OLD_FRACTION_KEYS[old]
        state = dict(state)
        if state.get("monitor") == old:
            state["monitor"] = new
        for field in _SCORE_FIELDS:
            if isinstance(state.get(field), (torch.Tensor, float, int)) and not isinstance(state[field], bool):
                state[field] = state[field] * 100.0
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {path: score * 100.0 for path, score in state["best_k_models"].items()}
        del states[key]
        states[str(key).replace(f"'monitor': '{old}'", f"'monitor': '{new}'")] = state
        converted.append(str(key))
    return converted


def _schedule_factor(length: dict[str, int], step: int, peak_lr: float, min_lr: float) -> float:
    """The warmup-cosine factor at ``step`` once ``length`` holds total_steps / warmup_steps (1 before)."""
    if not length:
        return 1.0
    return warmup_cosine_factor(step, length["total_steps"], length["warmup_steps"], peak_lr, min_lr)
