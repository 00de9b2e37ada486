"""Measure what ImageClassifier's recipe knobs do, from what the computation sees and produces.

Shared by the effect tests (test_recipe_effects.py) and the recipe-config tests (a config's values are checked
beside the effect of the module it instantiates). Every probe reads back an effect (a drop-path scale, a soft
target, an EMA update, an lr the optimizer steps with) and computes the reference from the recipe's definition
here, never by calling the code under test.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lk_ablate.models.convnext import ConvNeXtBlock
from lk_ablate.models.replknet import ConvFFN, RepLKBlock

IMG = 32  # convnext_demo's net stride: 32 px inputs end at 1x1


# --- drop path -------------------------------------------------------------------------------------------------
def residual_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The residual blocks in forward order, found by type (not by their drop-path module, which a bug may remove)."""
    return [m for m in model.modules() if isinstance(m, (ConvNeXtBlock, RepLKBlock, ConvFFN))]


def _channels(block: torch.nn.Module) -> int:
    if isinstance(block, ConvNeXtBlock):
        return block.norm.normalized_shape[0]
    return block.pw1.conv.in_channels


def expected_drop_rates(rate: float, units: int, per_unit: int = 1) -> list[float]:
    """The official linear rule: unit i of n gets rate * i / (n - 1) (ConvNeXt: each block a unit; RepLKNet: both
    blocks of a (RepLKBlock, ConvFFN) pair share their unit's rate)."""
    return [rate * i / (units - 1) for i in range(units) for _ in range(per_unit)]


def measured_drop_rates(model: torch.nn.Module, n: int = 128, seed: int = 0) -> list[tuple[float, int]]:
    """Per residual block, (the drop rate it applies, how many of ``n`` samples it dropped), read from its output.

    In float64, BatchNorm frozen (its statistics would otherwise change with the mode) and everything else in
    training mode, a block computes x + m_i f(x) / (1 - p) with m_i in {0, 1} per sample (stochastic depth as timm's
    DropPath and the official code), while in eval mode it computes x + f(x). The ratio of the two residuals of a
    kept sample is 1 / (1 - p) exactly, so p = 1 - 1 / ratio; with p = 0 every sample must equal eval mode.
    Each block is probed as a copy whose layer scale is 1 (at its init, 1e-6, the residual would drown in x's
    rounding).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    torch.manual_seed(seed)
    for block in residual_blocks(model):
        block = copy.deepcopy(block).double()
        if getattr(block, "gamma", None) is not None:
            block.gamma.data.fill_(1.0)
        x = torch.randn(n, _channels(block), 2, 2, generator=g, dtype=torch.float64)
        with torch.no_grad():
            block.eval()
            f_eval = (block(x) - x).flatten(1)
            block.train()
            for m in block.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
            f_train = (block(x) - x).flatten(1)
            block.eval()
        ratio = (f_train * f_eval).sum(1) / (f_eval * f_eval).sum(1)
        kept = ratio > 0.5
        assert torch.all(kept | (ratio.abs() < 1e-9)), "a residual is neither kept nor dropped"
        scale = ratio[kept].mean().item() if kept.any() else math.inf
        spread = (ratio[kept] - scale).abs().max().item() if kept.any() else 0.0
        assert spread < 1e-9 * max(1.0, scale), "kept samples are scaled differently"
        out.append((1.0 - 1.0 / scale, int((~kept).sum())))
    return out


# --- soft targets -----------------------------------------------------------------------------------------------
def smoothed_one_hot(y: torch.Tensor, classes: int, eps: float) -> torch.Tensor:
    """Label smoothing as defined by Szegedy et al. and used by timm / PyTorch: off value eps / C, on value
    1 - eps + eps / C (float64)."""
    t = torch.full((len(y), classes), eps / classes, dtype=torch.float64)
    t[torch.arange(len(y)), y] = 1.0 - eps + eps / classes
    return t


def read_mix(x: torch.Tensor, mixed: torch.Tensor) -> tuple[str, float]:
    """(kind, lam) of a batch-mode mix, read from the images: 'none' (unchanged, lam 1), 'cutmix' (a rectangle of
    each image replaced by its partner's in the reversed batch; lam = 1 - box area / image area) or 'mixup'
    (lam x + (1 - lam) x.flip(0), lam by least squares)."""
    x, mixed = x.double(), mixed.double()
    partner = x.flip(0)
    if torch.equal(mixed, x):
        return "none", 1.0
    from_partner = (mixed == partner) & (x != partner)
    from_self = (mixed == x) & (x != partner)
    differ = x != partner
    if torch.equal(from_partner | from_self, differ):
        box = from_partner[0, 0]
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert box.sum() == len(rows) * len(cols), "cutmix region is not a rectangle"
        assert torch.equal(from_partner, box.expand_as(from_partner) & differ), "one box for the whole batch"
        return "cutmix", 1.0 - float(box.sum()) / box.numel()
    d = x - partner
    lam = float(((mixed - partner) * d).sum() / (d * d).sum())
    residual = (mixed - (lam * x + (1 - lam) * partner)).norm() / mixed.norm()
    assert residual < 1e-6, f"neither a cutmix box nor a convex mix (residual {residual:.2e})"
    return "mixup", lam


def reference_loss(logits: torch.Tensor, y: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Soft-target cross-entropy of the recipe: targets lam s(y) + (1 - lam) s(y reversed), s = smoothed one-hot."""
    classes = logits.shape[-1]
    target = lam * smoothed_one_hot(y, classes, eps) + (1 - lam) * smoothed_one_hot(y.flip(0), classes, eps)
    return (-target * F.log_softmax(logits.double(), -1)).sum(-1).mean()


def measured_smoothing(logits: torch.Tensor, y: torch.Tensor, lam: float, loss: float) -> float:
    """The label smoothing a loss value implies: the loss is linear in eps (reference_loss at 0 and 1)."""
    at0, at1 = reference_loss(logits, y, lam, 0.0).item(), reference_loss(logits, y, lam, 1.0).item()
    return (loss - at0) / (at1 - at0)


@dataclass
class MixDraws:
    kinds: list[str] = field(default_factory=list)
    lams: list[float] = field(default_factory=list)
    target_errors: list[float] = field(default_factory=list)

    def share(self, kind: str) -> float:
        return self.kinds.count(kind) / len(self.kinds)

    def lam_of(self, kind: str) -> np.ndarray:
        return np.array([lam for k, lam in zip(self.kinds, self.lams) if k == kind])


def mix_draws(module, n: int, eps: float, classes: int, side: int = 32, seed: int = 0) -> MixDraws:
    """``n`` calls of the module's own mixup/cutmix (the object training_step calls) on a batch of two images
    (all 0 and all 1, labels 0 and 1): each call's kind and lam read from the images, and the largest deviation of
    the returned soft targets from the hand-built ones at that lam."""
    out = MixDraws()
    y = torch.tensor([0, 1])
    np.random.seed(seed)
    for _ in range(n):
        x = torch.stack([torch.zeros(1, side, side), torch.ones(1, side, side)])
        mixed, target = module.mixup(x.clone(), y)
        kind, lam = read_mix(x, mixed)
        ref = lam * smoothed_one_hot(y, classes, eps) + (1 - lam) * smoothed_one_hot(y.flip(0), classes, eps)
        out.kinds.append(kind)
        out.lams.append(lam)
        out.target_errors.append(float((target.double() - ref).abs().max()))
    return out


def cutmix_lam_reference(alpha: float, side: int, n: int, seed: int = 1) -> np.ndarray:
    """lam of CutMix as its definition draws it (Yun et al. 2019; timm rand_bbox with correct_lam): l ~ Beta(a, a),
    a box of sides int(side sqrt(1 - l)) centred at a uniform pixel, clipped to the image, lam = 1 - area / side^2."""
    rng = np.random.default_rng(seed)
    lam0 = rng.beta(alpha, alpha, n)
    cut = (side * np.sqrt(1.0 - lam0)).astype(int)
    cy, cx = rng.integers(0, side, n), rng.integers(0, side, n)
    h = np.clip(cy + (cut + 1) // 2, 0, side) - np.clip(cy - cut // 2, 0, side)
    w = np.clip(cx + (cut + 1) // 2, 0, side) - np.clip(cx - cut // 2, 0, side)
    return 1.0 - h * w / side**2


# --- a short real fit, recorded ---------------------------------------------------------------------------------
class Tensors(L.LightningDataModule):
    """``n`` random images (labels i % classes), ``batch_size`` per batch: ImageClassifier reads the per-device batch
    from its DataModule when it scales the lr."""

    def __init__(self, n: int, batch_size: int, classes: int = 4, seed: int = 0, dtype=torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, IMG, IMG, generator=g, dtype=dtype)
        self.y = torch.arange(n) % classes
        self.batch_size, self.num_classes = batch_size, classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)


class Recorder(L.Callback):
    """What each training step saw: the batch, the model's input and logits, the loss; per optimizer step each
    parameter's lr, weight decay, gradient and value before and after the update (by name); the EMA after it."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def on_train_start(self, trainer, module) -> None:
        self.names = {id(p): n for n, p in module.model.named_parameters()}
        self.handles = [module.model.register_forward_hook(self._forward),
                        trainer.optimizers[0].register_step_post_hook(self._after_step)]
        self.module = module

    def _forward(self, model, args, output) -> None:
        if model.training and self.batches and "input" not in self.batches[-1]:
            self.batches[-1].update(input=args[0].detach().clone(), logits=output.detach().clone())

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append({"x": batch[0].clone(), "y": batch[1].clone()})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches[-1]["loss"] = outputs["loss"].detach().clone()

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # after the (accumulated) backward, inside optimizer.step's closure, before the update
        step = {"lr": {}, "wd": {}, "grad": {}, "before": {}}
        for g in optimizer.param_groups:
            for p in g["params"]:
                n = self.names[id(p)]
                step["lr"][n], step["wd"][n] = g["lr"], g["weight_decay"]
                step["grad"][n], step["before"][n] = p.grad.detach().clone(), p.detach().clone()
        self.steps.append(step)

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.steps[-1]["after"] = {self.names[id(p)]: p.detach().clone() for g in optimizer.param_groups
                                   for p in g["params"]}

    def on_train_end(self, trainer, module) -> None:
        for h in self.handles:
            h.remove()


def fit(module, data, recorder: Recorder | None = None, **trainer_kwargs) -> L.Trainer:
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0)
    kw.update(trainer_kwargs)
    trainer = L.Trainer(callbacks=[recorder] if recorder is not None else [], **kw)
    trainer.fit(module, datamodule=data)
    return trainer


def cosine_lr(step: int, peak: float, warmup: int, total: int, floor: float) -> float:
    """The recipe's schedule, per optimizer step (0-based): linear warmup to the peak (first step peak / warmup),
    then half a cosine from the peak to ``floor`` at ``total`` (ConvNeXt utils.cosine_scheduler, warmup from
    peak / warmup instead of 0: docs/testing.md)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def adamw_reference(steps: list[dict[str, Any]], lr: list[dict[str, float]], wd: dict[str, float],
                    betas: tuple[float, float], eps: float = 1e-8) -> list[dict[str, torch.Tensor]]:
    """Each parameter after each step, float64, from the recorded gradients: AdamW (Loshchilov & Hutter) written
    out: p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), m and v with bias correction. Starts each step from the
    recorded parameter value before it, so steps are compared one at a time."""
    b1, b2 = betas
    m = {n: torch.zeros_like(g, dtype=torch.float64) for n, g in steps[0]["grad"].items()}
    v = {n: torch.zeros_like(g, dtype=torch.float64) for n, g in steps[0]["grad"].items()}
    out = []
    for k, step in enumerate(steps, start=1):
        after = {}
        for n, g in step["grad"].items():
            g = g.double()
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            m_hat, v_hat = m[n] / (1 - b1**k), v[n] / (1 - b2**k)
            p = step["before"][n].double()
            after[n] = p * (1 - lr[k - 1][n] * wd[n]) - lr[k - 1][n] * m_hat / (v_hat.sqrt() + eps)
        out.append(after)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- the recipe a config instantiates, measured -----------------------------------------------------------------
def demo_module_of(model_section: dict[str, Any], num_classes: int = 10):
    """The ImageClassifier a config's ``model`` section instantiates, with its recipe knobs as configured and the
    network swapped for convnext_demo (the knobs act the same on any network; a full-size one costs seconds), no
    pretrained file and ``num_classes`` classes."""
    from lk_ablate.training import ImageClassifier

    kw = {**model_section, "model_name": "convnext_demo", "kernel_size": 3, "model_kwargs": {}, "pretrained_path": None,
          "num_classes": num_classes}
    kw["betas"] = tuple(kw.get("betas", (0.9, 0.999)))
    return ImageClassifier(**kw)


def measure_recipe(module, batch_size: int, world_size: int, accumulate: int, draws: int = 600) -> dict[str, Any]:
    """What ``module`` computes, read from effects (the module is trained for 2 steps by the last probe):

    - ``drop_path``: each block's measured drop rate;
    - ``mix``: shares of unmixed / mixup / cutmix batches in ``draws`` calls of its mixup (None without mixup),
      ``mix_lams`` their lams and ``target_error`` the largest deviation of its soft targets from hand-built ones
      at its ``label_smoothing``;
    - ``ema_decay``: from one EMA update towards weights moved by +1: ema' = d ema + (1 - d)(w + 1);
    - ``peak_lr``, ``weight_decay``, ``layer_decay``: from one AdamW step with every gradient 1 at the global batch
      ``batch_size x world_size x accumulate`` (the first Adam step moves a parameter by lr (1 + wd p), to eps):
      the head's bias (no decay) gives the lr, the stem's bias the layer decay (stem / head = decay ** (ids - 1)),
      the head's weight the weight decay;
    - ``label_smoothing`` and ``warmup_steps``: from a 2-step fit at global batch 2 (one batch per epoch): the
      smoothing the first step's loss implies at the lam read from its input, and peak / first lr, the peak being
      ``peak_lr`` scaled linearly to the batch of 2.
    """
    from types import SimpleNamespace

    out: dict[str, Any] = {"drop_path": [p for p, _ in measured_drop_rates(module.model)]}
    classes = module.hparams.num_classes
    out["mix"] = None
    if module.mixup is not None:
        d = mix_draws(module, draws, eps=module.hparams.label_smoothing, classes=classes)
        out["mix"] = {k: d.share(k) for k in ("none", "mixup", "cutmix")}
        out["mix_lams"] = {k: d.lam_of(k) for k in ("mixup", "cutmix")}
        out["target_error"] = max(d.target_errors)
    out["ema_decay"] = None
    if module.ema is not None:
        ema = copy.deepcopy(module.ema)
        moved_net = copy.deepcopy(module.model)
        with torch.no_grad():
            for p in moved_net.parameters():
                p.add_(1.0)
            before = ema.module.head.fc.bias.detach().double().clone()
            ema.update(moved_net)
            moved = ema.module.head.fc.bias.detach().double() - before
        out["ema_decay"] = 1.0 - float(moved.mean())  # ema' - ema = (1 - d)(w + 1 - ema), ema = w here

    probe = copy.deepcopy(module).double()  # float64: the lr and decay read back to 1e-9
    probe._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=batch_size), world_size=world_size,
                                     accumulate_grad_batches=accumulate)
    optimizer = probe.configure_optimizers()["optimizer"]
    probe._trainer = None
    net = probe.model
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    step = {n: before[n] - p.detach() for n, p in net.named_parameters()}
    stem_bias, head_bias = float(step["stem.0.bias"].mean()), float(step["head.fc.bias"].mean())
    out["peak_lr"] = head_bias
    w = before["head.fc.weight"]
    out["weight_decay"] = float(((step["head.fc.weight"] / head_bias - 1.0) * w).sum() / (w * w).sum())
    out["layer_decay"] = (stem_bias / head_bias) ** (1.0 / (net.num_layer_decay_ids - 1))

    rec = Recorder()
    fit(module, Tensors(2, 2, classes=classes), rec, max_steps=2)
    b = rec.batches[0]
    _, lam = read_mix(b["x"], b["input"])
    out["label_smoothing"] = measured_smoothing(b["logits"], b["y"], lam, b["loss"].item())
    out["warmup_steps"] = head_bias * 2 / (batch_size * world_size * accumulate) / rec.steps[0]["lr"]["head.fc.bias"]
    return out


def check_config_effects(model_section: dict[str, Any], batch_size: int, world_size: int, accumulate: int) -> None:
    """The module a config's ``model`` section instantiates computes what the section says, for the config's
    per-device batch, devices x nodes and accumulation (``measure_recipe``; norm-wise tolerances: float32 drop-path
    rates 1e-7, float32 loss 1e-3 on the smoothing; the mix shares are Binomial(600, 1/2), sd 0.02)."""
    m = model_section
    r = measure_recipe(demo_module_of(m), batch_size, world_size, accumulate)
    assert r["drop_path"] == pytest.approx(expected_drop_rates(m["drop_path_rate"], 8), abs=1e-7)
    assert r["label_smoothing"] == pytest.approx(m["label_smoothing"], abs=1e-3)
    if m["mixup_alpha"] > 0 or m["cutmix_alpha"] > 0:
        assert r["target_error"] < 1e-6
        prob, switch = m.get("mixup_prob", 1.0), m.get("mixup_switch_prob", 0.5)
        assert abs(r["mix"]["none"] - (1 - prob)) < 0.1 and abs(r["mix"]["cutmix"] - prob * switch) < 0.1
    else:
        assert r["mix"] is None
    assert r["ema_decay"] == (None if m["ema_decay"] is None else pytest.approx(m["ema_decay"], abs=1e-9))
    global_batch = batch_size * world_size * accumulate
    assert r["peak_lr"] == pytest.approx(m["base_lr"] * global_batch / m["base_batch_size"], rel=1e-6)
    assert r["weight_decay"] == pytest.approx(m["weight_decay"], rel=1e-3)
    assert r["layer_decay"] == pytest.approx(m.get("layer_decay") or 1.0, rel=1e-6)
    assert r["warmup_steps"] == pytest.approx(max(1, round(m["warmup_epochs"])), rel=1e-6)
