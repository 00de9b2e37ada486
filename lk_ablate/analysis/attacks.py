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

The released TAIG protocol (``taig.imagenet_val`` set; ``paper.yaml``): a fixed list of 5,000 validation images, 5 per
class (LKRobust's ``adversarial_attack/TAIG/results/selected_images.csv``, given by path as ``image_list_path``, or the
project's own seeded 5-per-class list), read with ``Resize((256, 256))`` (bilinear squash) + ``CenterCrop(224)``
(``TAIG_attack.py:108-116``), attacked on a surrogate normalised with ImageNet mean/std whatever it is
(``TAIG_attack.py:145-163``), saved as uint8 and scored on the target after ``Resize(256, bicubic)`` +
``CenterCrop(224)`` (``TAIG_test.py:138-143``, tensors; torchvision < 0.17 did not antialias tensors, and an
upsample barely differs).
"""
from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base.figures import new_figure, save_figure
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .common import (count_correct, from_pixels, iterate_batches, logits_of, model_device, percent, script_eval_spec,
                     seeded_generator, to_pixels)
from .loading import create_timm_model, load_model
from .configs import ATTACK_SPACES as SPACES, FGSMConfig, PGDConfig, TAIGConfig, TARGET_TRANSFORMS


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """FGSM / PGD (``adversarial_attack/utils.py:68-73``, ``get_imagenet_data``): Resize(256, bicubic),
    CenterCrop(224), ImageNet mean/std for every model; a model whose input is not 224 px gets the same geometry
    scaled to its size (:func:`~lk_ablate.analysis.common.script_eval_spec`). TAIG reads its own image list
    (``taig.imagenet_val``); without it, its val batches are read with this transform too."""
    return script_eval_spec(cfg, "bicubic")


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


def target_input(pixels: torch.Tensor, cfg: ModelConfig, mode: str = "resize_crop") -> torch.Tensor:
    """The target model's normalised input for [0, 1] (adversarial) pixels.

    ``resize_crop`` (``TAIG_test.py:138-143``): bicubic resize to ``floor(s * 256 / 224)`` (256 for a 224 px
    model), centre crop ``s`` (the model's input side), like torchvision's tensor ``Resize(256)`` +
    ``CenterCrop(224)`` without antialiasing; ``none``: as they are (bilinear resize only if the size differs).
    """
    h, w = (int(v) for v in cfg.input_size[-2:])
    if mode == "resize_crop":
        r = (min(h, w) * 256) // 224
        ih, iw = pixels.shape[-2:]
        size = (r, max(r, int(r * iw / ih))) if ih <= iw else (max(r, int(r * ih / iw)), r)  # shorter side -> r
        z = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False)
        top, left = int(round((size[0] - h) / 2.0)), int(round((size[1] - w) / 2.0))
        z = z[..., top:top + h, left:left + w]
    elif mode == "none":
        z = pixels
        if tuple(z.shape[-2:]) != (h, w):
            z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ConfigError(f"taig.target_transform must be one of {TARGET_TRANSFORMS}, got {mode!r}")
    return from_pixels(z, cfg)


# --- TAIG's fixed image list --------------------------------------------------------------------------------
def _class_folders(val_dir: Path) -> list[str]:
    if not val_dir.is_dir():
        raise DataError(f"taig.imagenet_val not found: {val_dir}\n  expected layout: {val_dir}/<wnid>/<image files>")
    classes = sorted(e.name for e in os.scandir(val_dir) if e.is_dir())
    if not classes:
        raise DataError(f"taig.imagenet_val {val_dir} has no class folders (<wnid>/<image files>)")
    return classes


def taig_image_list(val_dir: str | os.PathLike, image_list: str | os.PathLike | None = None,
                    per_class: int = 5, seed: int = 0) -> list[tuple[str, int]]:
    """(image path, label) of TAIG's fixed images. Labels are indices of the sorted class folders.

    ``image_list``: a CSV with a header and rows ``class_index,class,image_name`` (LKRobust's
    ``selected_images.csv``: 5,000 rows, 5 per class), read in its order; every ``class_index`` must equal the
    sorted index of its ``class`` folder. None: the project's own list, ``random.Random(seed).sample`` of
    ``per_class`` images from each class folder's sorted images, classes in sorted order.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(val_dir)
    classes = _class_folders(root)
    index = {c: i for i, c in enumerate(classes)}
    out: list[tuple[str, int]] = []
    if image_list is not None:
        path = Path(image_list)
        if not path.is_file():
            raise DataError(f"taig.image_list_path not found: {path} (LKRobust's adversarial_attack/TAIG/results/"
                            "selected_images.csv, or unset for the project's own 5-per-class list)")
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0][:3]] != ["class_index", "class", "image_name"]:
            raise DataError(f"{path} must start with the header class_index,class,image_name")
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            label, wnid, name = int(row[0]), row[1].strip(), row[2].strip()
            if index.get(wnid) != label:
                raise DataError(f"{path} line {n}: class {wnid} has index {label} but is folder "
                                f"{index.get(wnid)} of {root}; give the ImageNet val folder the list was made for")
            img = root / wnid / name
            if not img.is_file():
                raise DataError(f"{path} line {n}: image not found: {img}")
            out.append((str(img), label))
        return out
    rng = random.Random(seed)
    for c in classes:
        files = sorted(p.name for p in (root / c).iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if len(files) < per_class:
            raise DataError(f"taig: class folder {root / c} has {len(files)} images, fewer than "
                            f"images_per_class {per_class}")
        out += [(str(root / c / f), index[c]) for f in rng.sample(files, per_class)]
    return out


class _ImageList(torch.utils.data.Dataset):
    """(uint8 CHW image through ``geometry``, label) for a list of (path, label)."""

    def __init__(self, items: list[tuple[str, int]], geometry: Callable[[Any], torch.Tensor]) -> None:
        self.items, self.geometry = items, geometry

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            return self.geometry(img.convert("RGB")), label


# the attack's geometry (TAIG_attack.py:108-112): Resize((256, 256)) (PIL bilinear, aspect ignored), CenterCrop(224)
ATTACK_SPEC = EvalSpec(crop=(224, 224), resize=256, squash=True, interpolation="bilinear")


def taig_pixel_batches(cfg: "TAIGConfig") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """[0, 1] pixel batches (uint8 / 255, as ToTensor) of TAIG's fixed image list, and labels."""
    items = taig_image_list(cfg.imagenet_val, cfg.image_list_path, cfg.images_per_class, cfg.list_seed)
    if cfg.max_images is not None:
        items = items[:cfg.max_images]
    loader = torch.utils.data.DataLoader(_ImageList(items, ATTACK_SPEC.geometry()), batch_size=cfg.batch_size,
                                         shuffle=False, num_workers=cfg.num_workers)
    for u8, y in loader:
        yield u8.to(torch.float32).div(255), y


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
    if cfg.surrogate_path is None:
        raise ConfigError("taig.surrogate_path is required: the surrogate's weights file (nothing is "
                          "downloaded), e.g. a timm vit_base_patch16_224 state dict")
    if cfg.surrogate_model is not None:
        lm = load_model(cfg.surrogate_path, cfg.surrogate_model, cfg.surrogate_kernel_size)
    else:
        lm = create_timm_model(cfg.surrogate_timm, cfg.surrogate_path)
    return lm.model.eval(), lm.config, lm.label


def run_taig(model: nn.Module, cfg: TAIGConfig, data: Any, model_config: ModelConfig,
             surrogate: tuple[nn.Module, ModelConfig, str] | None = None) -> dict[str, Any]:
    """``surrogate``: (model, config, label) to use instead of loading the one the config names."""
    sur, sur_cfg, sur_label = surrogate or load_surrogate(cfg)
    if cfg.surrogate_norm == "imagenet":
        sur_cfg = sur_cfg.replace(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    device = model_device(model)
    sur.to(device)
    sur_fn = pixel_model(sur, sur_cfg)
    g = seeded_generator(cfg.seed)
    clean_err, total = 0, 0
    fooled = [0] * len(cfg.eps)
    fooled_sur = [0] * len(cfg.eps)
    if cfg.imagenet_val is not None:
        source: Any = taig_pixel_batches(cfg)
    else:  # the run's normalised val batches, back to pixels
        source = ((to_pixels(x, model_config).clamp(0, 1), y) for x, y in iterate_batches(data, cfg.max_images))
    for pix, y in source:
        pix, y = pix.to(device), y.to(device)
        total += y.shape[0]
        clean_err += y.shape[0] - count_correct(logits_of(model, target_input(pix, model_config,
                                                                              cfg.target_transform)), y)
        for i, eps in enumerate(cfg.eps):
            adv = taig(sur_fn, pix, y, eps, cfg.iterations, cfg.step_size, cfg.ig_steps, cfg.variant == "R",
                       cfg.targeted, cfg.quantize, g, cfg.chunk)
            with torch.no_grad():
                pred = model(target_input(adv, model_config, cfg.target_transform)).argmax(1)
                pred_sur = sur_fn(adv).argmax(1)
            hit = (pred == y) if cfg.targeted else (pred != y)
            hit_sur = (pred_sur == y) if cfg.targeted else (pred_sur != y)
            fooled[i] += int(hit.sum())
            fooled_sur[i] += int(hit_sur.sum())
    points = [{"eps": e, "success_rate": percent(f, total), "surrogate_success_rate": percent(fs, total)}
              for e, f, fs in zip(cfg.eps, fooled, fooled_sur)]
    return {"analysis": "taig", "config": cfg.to_dict(), "surrogate": sur_label,
            "surrogate_mean_std": [list(sur_cfg.mean), list(sur_cfg.std)], "images": total,
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
    return {f"taig.eps{p['eps']:.4g}": p["success_rate"] for p in result["points"]}

