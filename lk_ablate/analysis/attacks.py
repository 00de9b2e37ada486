"""White-box FGSM / PGD (l_inf) and the TAIG transfer attack, with the paper's sweeps as presets.

FGSM / PGD follow torchattacks (Harry24k/adversarial-attacks-pytorch 3.4-3.5), which the paper's released code
calls on ImageNet batches that are already normalised, with ``set_normalization_used(mean, std)``: torchattacks
then un-normalises them, perturbs the [0, 1] pixels (eps, step size and the [0, 1] clamp in pixel units) and
normalises again. ``space: pixel`` (default) reproduces that; ``space: normalized`` perturbs the normalised tensor
itself (eps in normalised units, no clamp). FGSM: ``x + eps sign(grad CE)``. PGD: uniform random start in the
eps-ball, ``steps`` steps of ``alpha sign(grad)`` (released code: ``alpha = eps / 4``), each projected back.
The iterate after k steps *is* PGD with k steps (same start), so a step sweep costs max(steps) gradients.

TAIG (Huang & Kong, ICLR 2022; the paper's ``adversarial_attack/TAIG/TAIG_attack.py``): on a surrogate model,
``iterations`` steps of ``x <- clip_eps(x - step sign(IG(x)))`` in [0, 1] pixels, IG the integrated gradient of
the true class's logit from a black baseline over ``ig_steps + 1`` points (both ends included); TAIG-R adds
U(-eps, eps) noise to every path point. Adversarial images are rounded to 8 bits (the released code saves them
as uint8) and scored on the target model: success rate = % misclassified.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.registry import ModelConfig
from .common import (SectionConfig, check_levels, count_correct, from_pixels, iterate_batches, logits_of,
                     model_device, new_figure, percent, save_figure, seeded_generator, to_pixels)

SPACES = ("pixel", "normalized")


# --- the attacks ----------------------------------------------------------------------------------------
def _input_fn(model: nn.Module, cfg: ModelConfig, space: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """(function from attack-space tensors to logits, whether the attack space is clamped to [0, 1])."""
    if space == "pixel":
        return (lambda z: model(from_pixels(z, cfg))), True
    if space == "normalized":
        return model, False
    raise ConfigError(f"attack space must be one of {SPACES}, got {space!r}")


def _grad(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(fn(z), y)
        (g,) = torch.autograd.grad(loss, z)
    return g


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cfg: ModelConfig,
         space: str = "pixel") -> torch.Tensor:
    """FGSM adversarial examples of the normalised batch ``x``, returned normalised."""
    fn, clamp = _input_fn(model, cfg, space)
    z = to_pixels(x, cfg) if space == "pixel" else x
    adv = z + eps * _grad(fn, z, y).sign()
    if clamp:
        adv = adv.clamp(0, 1)
    return from_pixels(adv, cfg) if space == "pixel" else adv.detach()


def pgd_iterates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                 cfg: ModelConfig, space: str = "pixel", random_start: bool = True,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The normalised PGD iterates after 1..``steps`` steps (iterate k = PGD with k steps from the same start)."""
    fn, clamp = _input_fn(model, cfg, space)
    z0 = (to_pixels(x, cfg) if space == "pixel" else x).detach()
    adv = z0.clone()
    if random_start:
        u = torch.rand(z0.shape, generator=generator, device="cpu").to(z0.device, z0.dtype)
        adv = adv + (2 * u - 1) * eps
        if clamp:
            adv = adv.clamp(0, 1)
    out = []
    for _ in range(steps):
        adv = adv + alpha * _grad(fn, adv, y).sign()
        adv = z0 + (adv - z0).clamp(-eps, eps)
        if clamp:
            adv = adv.clamp(0, 1)
        adv = adv.detach()
        out.append(from_pixels(adv, cfg) if space == "pixel" else adv)
    return out


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, cfg: ModelConfig,
        space: str = "pixel", random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    return pgd_iterates(model, x, y, eps, alpha, steps, cfg, space, random_start, generator)[-1]


def pixel_model(model: nn.Module, cfg: ModelConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """[0, 1] pixels at any size -> logits: resize to the model's input size (bilinear), then normalise."""
    size = tuple(cfg.input_size[-2:])

    def fn(z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape[-2:]) != size:
            z = F.interpolate(z, size=size, mode="bilinear", align_corners=False, antialias=True)
        return model(from_pixels(z, cfg))

    return fn


def integrated_gradients(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
                         steps: int = 20, noise: float = 0.0, generator: torch.Generator | None = None,
                         chunk: int = 64) -> torch.Tensor:
    """IG of the ``labels`` logits at ``x`` (B, C, H, W) from a zero baseline, ``steps + 1`` path points.

    With ``noise`` > 0 every path point gets U(-noise, noise) added (TAIG-R) and, as in the released code, the
    path's displacement is measured between its noisy ends.
    """
    alphas = torch.arange(steps + 1, dtype=x.dtype, device=x.device) / steps
    path = alphas.view(-1, 1, 1, 1, 1) * x.unsqueeze(0)  # (S+1, B, C, H, W)
    if noise > 0:
        u = torch.rand(path.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        path = path + (2 * u - 1) * noise
    flat = path.reshape(-1, *x.shape[1:])
    lab = labels.repeat(steps + 1)
    grads = torch.empty_like(flat)
    for i in range(0, flat.shape[0], chunk):
        z = flat[i:i + chunk].detach().requires_grad_(True)
        with torch.enable_grad():
            score = fn(z).gather(1, lab[i:i + chunk, None]).sum()
            (grads[i:i + chunk],) = torch.autograd.grad(score, z)
    mean_grad = grads.view_as(path).mean(dim=0)
    return (path[-1] - path[0]) * mean_grad


def taig(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor, eps: float,
         iterations: int = 20, step_size: float = 1 / 255, ig_steps: int = 20, random_path: bool = True,
         targeted: bool = False, quantize: bool = True, generator: torch.Generator | None = None,
         chunk: int = 64) -> torch.Tensor:
    """TAIG adversarial pixels (B, C, H, W) in [0, 1] for pixels ``x`` against ``fn`` (pixels -> logits).

    Untargeted: lowers the ``labels`` logit; ``targeted``: raises it (``labels`` are then the targets).
    """
    x = x.detach()
    img = x.clone()
    sign = 1.0 if targeted else -1.0
    for _ in range(iterations):
        ig = integrated_gradients(fn, img, labels, ig_steps, eps if random_path else 0.0, generator, chunk)
        img = img + sign * step_size * ig.sign()
        img = torch.minimum(torch.maximum(img, x - eps), x + eps).clamp(0, 1).detach()
    if quantize:
        img = torch.round(img * 255) / 255
    return img


# --- configs --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FGSMConfig(SectionConfig):
    """``eps``: l_inf budgets (pixel units in [0, 1] for ``space: pixel``); preset ``paper``: 0.1..0.4."""

    SECTION = "fgsm"
    PRESETS = {"paper": {"eps": (0.1, 0.2, 0.3, 0.4), "space": "pixel"}}
    eps: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    space: str = "pixel"
    max_images: int | None = None

    def validate(self) -> None:
        check_levels("fgsm.eps", self.eps, 0.0, 10.0)
        if self.space not in SPACES:
            raise ConfigError(f"fgsm.space must be one of {SPACES}, got {self.space!r}")


@dataclasses.dataclass
class PGDConfig(SectionConfig):
    """Every (eps, steps) pair is run. ``alpha``: step size (None: ``alpha_ratio * eps``, released code 1/4).

    Presets: ``paper_eps`` (5 steps, eps 0.002..0.008), ``paper_steps`` (eps 0.006, 1..10 steps; the paper's
    exact step counts are not in its released code) and ``paper`` (both: every eps with 1..10 steps)."""

    SECTION = "pgd"
    PRESETS = {
        "paper_eps": {"eps": (0.002, 0.004, 0.006, 0.008), "steps": (5,)},
        "paper_steps": {"eps": (0.006,), "steps": tuple(range(1, 11))},
        # both sweeps at once: iterates 1..10 of every eps cost 10 gradients per eps
        "paper": {"eps": (0.002, 0.004, 0.006, 0.008), "steps": tuple(range(1, 11))},
    }
    eps: tuple[float, ...] = (0.002, 0.004, 0.006, 0.008)
    steps: tuple[int, ...] = (5,)
    alpha: float | None = None
    alpha_ratio: float = 0.25
    random_start: bool = True
    space: str = "pixel"
    seed: int = 0
    max_images: int | None = None

    def validate(self) -> None:
        check_levels("pgd.eps", self.eps, 0.0, 10.0)
        if not self.steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.steps):
            raise ConfigError(f"pgd.steps must be positive ints, got {list(self.steps)}")
        if self.space not in SPACES:
            raise ConfigError(f"pgd.space must be one of {SPACES}, got {self.space!r}")
        if (self.alpha is not None and self.alpha <= 0) or self.alpha_ratio <= 0:
            raise ConfigError("pgd.alpha and pgd.alpha_ratio must be > 0")

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else self.alpha_ratio * eps


@dataclasses.dataclass
class TAIGConfig(SectionConfig):
    """Surrogate: a timm architecture (``surrogate_timm``, the paper uses ViT-B for ConvNets) or a registered
    model (``surrogate_model`` + ``surrogate_kernel_size``; RepLKNet-31B for ViTs), weights from
    ``surrogate_checkpoint`` (required: nothing is downloaded). ``eps`` in [0, 1] pixel units.
    ``variant``: "R" (random path, the released code's default) or "S" (straight path)."""

    SECTION = "taig"
    PRESETS = {"paper": {"eps": (0.03, 0.05, 0.07, 0.1), "iterations": 20, "step_size": 1 / 255,
                         "ig_steps": 20, "variant": "R"}}
    eps: tuple[float, ...] = (0.03, 0.05, 0.07, 0.1)
    iterations: int = 20
    step_size: float = 1 / 255
    ig_steps: int = 20
    variant: str = "R"
    targeted: bool = False
    quantize: bool = True
    surrogate_timm: str | None = "vit_base_patch16_224"
    surrogate_model: str | None = None
    surrogate_kernel_size: Any = None
    surrogate_checkpoint: str | None = None
    chunk: int = 64
    seed: int = 0
    max_images: int | None = None

    def validate(self) -> None:
        check_levels("taig.eps", self.eps, 0.0, 1.0, strict_lo=True)
        if self.variant not in ("R", "S"):
            raise ConfigError(f"taig.variant must be 'R' or 'S', got {self.variant!r}")
        if self.iterations < 1 or self.ig_steps < 1 or self.step_size <= 0 or self.chunk < 1:
            raise ConfigError("taig.iterations, ig_steps, chunk must be >= 1 and step_size > 0")
        if self.surrogate_model is None and self.surrogate_timm is None:
            raise ConfigError("taig needs a surrogate: set surrogate_timm or surrogate_model")


# --- runs -----------------------------------------------------------------------------------------------
def run_fgsm(model: nn.Module, cfg: FGSMConfig, data: Any, model_config: ModelConfig) -> dict[str, Any]:
    clean, correct, total = 0, [0] * len(cfg.eps), 0
    for x, y in iterate_batches(data, cfg.max_images):
        x, y = x.to(model_device(model)), y.to(model_device(model))
        clean += count_correct(logits_of(model, x), y)
        total += y.shape[0]
        for i, eps in enumerate(cfg.eps):
            correct[i] += count_correct(logits_of(model, fgsm(model, x, y, eps, model_config, cfg.space)), y)
    points = [{"eps": e, "accuracy": percent(c, total)} for e, c in zip(cfg.eps, correct)]
    return {"analysis": "fgsm", "config": cfg.to_dict(), "images": total, "clean_accuracy": percent(clean, total),
            "points": points}


def run_pgd(model: nn.Module, cfg: PGDConfig, data: Any, model_config: ModelConfig) -> dict[str, Any]:
    g = seeded_generator(cfg.seed)
    steps = sorted(set(cfg.steps))
    clean, total = 0, 0
    correct = {(e, s): 0 for e in cfg.eps for s in steps}
    for x, y in iterate_batches(data, cfg.max_images):
        x, y = x.to(model_device(model)), y.to(model_device(model))
        clean += count_correct(logits_of(model, x), y)
        total += y.shape[0]
        for eps in cfg.eps:
            its = pgd_iterates(model, x, y, eps, cfg.step_size(eps), steps[-1], model_config, cfg.space,
                               cfg.random_start, g)
            for s in steps:
                correct[(eps, s)] += count_correct(logits_of(model, its[s - 1]), y)
    points = [{"eps": e, "steps": s, "alpha": cfg.step_size(e), "accuracy": percent(correct[(e, s)], total)}
              for e in cfg.eps for s in steps]
    return {"analysis": "pgd", "config": cfg.to_dict(), "images": total, "clean_accuracy": percent(clean, total),
            "points": points}


def load_surrogate(cfg: TAIGConfig) -> tuple[nn.Module, ModelConfig, str]:
    from .loading import create_timm_model, load_model

    if cfg.surrogate_checkpoint is None:
        raise ConfigError("taig.surrogate_checkpoint is required: the surrogate's weights file (nothing is "
                          "downloaded), e.g. a timm vit_base_patch16_224 state dict")
    if cfg.surrogate_model is not None:
        lm = load_model(cfg.surrogate_checkpoint, cfg.surrogate_model, cfg.surrogate_kernel_size)
    else:
        lm = create_timm_model(cfg.surrogate_timm, cfg.surrogate_checkpoint)
    return lm.model.eval(), lm.config, lm.label


def run_taig(model: nn.Module, cfg: TAIGConfig, data: Any, model_config: ModelConfig,
             surrogate: tuple[nn.Module, ModelConfig, str] | None = None) -> dict[str, Any]:
    """``surrogate``: (model, config, label) to use instead of loading the one the config names."""
    sur, sur_cfg, sur_label = surrogate or load_surrogate(cfg)
    sur.to(model_device(model))
    sur_fn = pixel_model(sur, sur_cfg)
    g = seeded_generator(cfg.seed)
    clean_err, total = 0, 0
    fooled = [0] * len(cfg.eps)
    fooled_sur = [0] * len(cfg.eps)
    for x, y in iterate_batches(data, cfg.max_images):
        x, y = x.to(model_device(model)), y.to(model_device(model))
        total += y.shape[0]
        clean_err += y.shape[0] - count_correct(logits_of(model, x), y)
        pix = to_pixels(x, model_config).clamp(0, 1)
        for i, eps in enumerate(cfg.eps):
            adv = taig(sur_fn, pix, y, eps, cfg.iterations, cfg.step_size, cfg.ig_steps, cfg.variant == "R",
                       cfg.targeted, cfg.quantize, g, cfg.chunk)
            with torch.no_grad():
                pred = model(from_pixels(adv, model_config)).argmax(1)
                pred_sur = sur_fn(adv).argmax(1)
            hit = (pred == y) if cfg.targeted else (pred != y)
            hit_sur = (pred_sur == y) if cfg.targeted else (pred_sur != y)
            fooled[i] += int(hit.sum())
            fooled_sur[i] += int(hit_sur.sum())
    points = [{"eps": e, "success_rate": percent(f, total), "surrogate_success_rate": percent(fs, total)}
              for e, f, fs in zip(cfg.eps, fooled, fooled_sur)]
    return {"analysis": "taig", "config": cfg.to_dict(), "surrogate": sur_label, "images": total,
            "clean_error": percent(clean_err, total), "points": points}


# --- plots and summaries ---------------------------------------------------------------------------------
def plot_fgsm(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    pts = result["points"]
    ax.plot([0] + [p["eps"] for p in pts], [result["clean_accuracy"]] + [p["accuracy"] for p in pts], marker="o")
    ax.set_xlabel(f"eps ({result['config']['space']} units)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("FGSM")
    return save_figure(fig, path)


def plot_pgd(result: dict[str, Any], path: Any) -> Any:
    pts = result["points"]
    eps = sorted({p["eps"] for p in pts})
    steps = sorted({p["steps"] for p in pts})
    fig, axes = new_figure()
    ax = axes[0][0]
    if len(steps) >= len(eps):  # a step sweep: accuracy vs steps, one line per eps
        for e in eps:
            ps = [p for p in pts if p["eps"] == e]
            ax.plot([p["steps"] for p in ps], [p["accuracy"] for p in ps], marker="o", label=f"eps {e}")
        ax.set_xlabel("PGD steps")
    else:
        for s in steps:
            ps = [p for p in pts if p["steps"] == s]
            ax.plot([p["eps"] for p in ps], [p["accuracy"] for p in ps], marker="o", label=f"{s} steps")
        ax.set_xlabel(f"eps ({result['config']['space']} units)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("PGD")
    ax.legend()
    return save_figure(fig, path)


def plot_taig(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    pts = result["points"]
    ax.plot([p["eps"] for p in pts], [p["success_rate"] for p in pts], marker="o", label="target")
    ax.plot([p["eps"] for p in pts], [p["surrogate_success_rate"] for p in pts], marker="x", ls="--",
            label=f"surrogate ({result['surrogate']})")
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("attack success rate (%)")
    ax.set_title("TAIG transfer attack")
    ax.legend()
    return save_figure(fig, path)


def summary_fgsm(result: dict[str, Any]) -> dict[str, float]:
    return {f"fgsm.eps{p['eps']}": p["accuracy"] for p in result["points"]}


def summary_pgd(result: dict[str, Any]) -> dict[str, float]:
    return {f"pgd.eps{p['eps']}.steps{p['steps']}": p["accuracy"] for p in result["points"]}


def summary_taig(result: dict[str, Any]) -> dict[str, float]:
    return {f"taig.eps{p['eps']}": p["success_rate"] for p in result["points"]}

