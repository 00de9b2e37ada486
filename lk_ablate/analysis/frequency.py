"""Accuracy drop under random noise confined to one spatial-frequency band (Park & Kim, ICLR 2022, Fig. 2b; the
paper's Fig. 8 and Table 5's Noise-0.7pi). The paper's released code has no script for it; the source is Park &
Kim's ``FreqAttack(Random(eps), f=..., s=...)`` (xxxnell/how-do-vits-work ``ops/adversarial.py:99-175``).

Frequencies are in units of pi (Nyquist = 1). Two band layouts:

- ``layout: centered`` (Park & Kim, ``paper.yaml``): bands centred on ``centers`` (default 11 centres 0, 0.1, ...,
  1, so one band is centred on 0.7 pi) with half-width ``s = window / 2`` (``window`` 0.1 pi: the bands tile
  [0, pi]). The mask is ``FreqAttack._fourier_mask``'s: in the DFT spectrum rolled by (H/2, W/2), the centred
  square of side ``int((f + s) H / (2 pi)) * 2`` minus the one of side ``int((f - s) H / (2 pi)) * 2`` (sides
  clamped to [0, H]), with ``f`` and ``s`` in radians; the filtered noise is the real part of the inverse DFT.
  (The script applies the same roll before and after masking; for even sizes such as 224 that is this mask in
  the unshifted spectrum, which is what is applied here.)
- ``layout: consecutive`` (project choice): windows ``[i w, (i + 1) w)`` over [0, 1], a DFT bin (ky, kx) having
  frequency ``max(|wy|, |wx|) / pi`` with ``w = 2 pi k / N`` (the last band includes f = 1); this mask is
  symmetric under (ky, kx) -> (-ky, -kx), so all of the noise's spectral energy lies in the band.

Noise: ``scale: pre_filter`` draws ``amplitude * sign(N(0, 1))`` per pixel and channel and keeps only the band
(Park & Kim's ``Random`` + ``FreqAttack``: noise energy grows with the band's area); ``scale: rms`` rescales each
band's noise to RMS ``amplitude`` per image (equal energy in every band). ``space``: the noise is added to the
normalised model input (Park & Kim) or to [0, 1] pixels (then clamped to [0, 1]). ``amplitude`` (0.1) is a
project choice: neither paper states the value used on ImageNet.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..base.figures import new_figure, save_figure
from ..data.transforms import EvalSpec
from ..models.registry import ModelConfig
from .common import (count_correct, from_pixels, iterate_batches, logits_of, percent, script_eval_spec,
                     seeded_generator, to_pixels)
from .configs import FrequencyNoiseConfig


def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """No released script: the paper's common evaluation geometry (Resize(256, bicubic), CenterCrop(224),
    ImageNet mean/std, as its adversarial / lesion loader ``adversarial_attack/utils.py:68-73``); a model whose
    input is not 224 px gets it scaled to its size (:func:`~lk_ablate.analysis.common.script_eval_spec`)."""
    return script_eval_spec(cfg, "bicubic")


def frequency_grid(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h, w) frequency of each unshifted DFT bin in units of pi: max(|wy|, |wx|) / pi, in [0, 1]."""
    fy = torch.fft.fftfreq(h, device=device).abs() * 2
    fx = torch.fft.fftfreq(w, device=device).abs() * 2
    return torch.maximum(fy[:, None], fx[None, :])


def band_mask(h: int, w: int, lo: float, hi: float, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (h, w) mask of the DFT bins in [lo, hi) (hi >= 1 includes the Nyquist frequency 1)."""
    f = frequency_grid(h, w, device)
    eps = 1e-9  # bin frequencies are exact multiples of 2/N; keep band edges from splitting them by rounding
    upper = f <= hi + eps if hi >= 1.0 else f < hi - eps
    return (f >= lo - eps) & upper


def freq_attack_mask(h: int, w: int, center: float, half_width: float,
                     device: torch.device | None = None) -> torch.Tensor:
    """Boolean (h, w) mask of Park & Kim's ``FreqAttack._fourier_mask`` band ``center +- half_width`` (units of
    pi), moved from the (h/2, w/2)-rolled spectrum it is defined in back to the unshifted DFT layout."""
    f, s = center * math.pi, half_width * math.pi

    def square(n: int, r: float) -> torch.Tensor:  # 1-D: the centred run of side int(r n / (2 pi)) * 2, clamped
        side = min(max(int((r * n) / (2 * math.pi)) * 2, 0), n)
        m = torch.zeros(n, dtype=torch.bool, device=device)
        start = int((n - side) / 2)
        m[start:start + side] = True
        return m

    outer = square(h, f + s)[:, None] & square(w, f + s)[None, :]
    inner = square(h, f - s)[:, None] & square(w, f - s)[None, :]
    return torch.roll(outer & ~inner, shifts=(-int(h / 2), -int(w / 2)), dims=(0, 1))


def band_masks(cfg: FrequencyNoiseConfig, h: int, w: int, device: torch.device | None = None) -> list[torch.Tensor]:
    """The boolean (h, w) mask of each band of ``cfg`` in the unshifted DFT spectrum."""
    if cfg.layout == "centered":
        return [freq_attack_mask(h, w, c, cfg.window / 2, device) for c in cfg.centers]
    return [band_mask(h, w, lo, hi, device) for lo, hi in cfg.bands()]


def band_limited_noise(shape: tuple[int, ...], lo: float, hi: float, amplitude: float, scale: str = "pre_filter",
                       generator: torch.Generator | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Real noise of ``shape`` (..., H, W) whose spectrum lies in [lo, hi) (``consecutive`` layout)."""
    return masked_noise(shape, band_mask(shape[-2], shape[-1], lo, hi, device), amplitude, scale, generator, device)


def masked_noise(shape: tuple[int, ...], mask: torch.Tensor, amplitude: float, scale: str = "pre_filter",
                 generator: torch.Generator | None = None, device: torch.device | None = None) -> torch.Tensor:
    """``amplitude * Re(IDFT(DFT(sign(N(0, 1))) * mask))`` of ``shape`` (..., H, W) (``rms``: rescaled to RMS
    ``amplitude`` per image)."""
    base = torch.randn(shape, generator=generator, device=device).sign()
    noise = torch.fft.ifft2(torch.fft.fft2(base) * mask).real
    if scale == "pre_filter":
        return amplitude * noise
    rms = noise.flatten(-3).pow(2).mean(-1).sqrt().clamp_min(1e-12)
    return amplitude * noise / rms.view(*rms.shape, *([1] * 3))


def band_energy_fraction(x: torch.Tensor, lo: float, hi: float) -> float:
    """Fraction of the spectral energy of x (..., H, W) that lies in the band [lo, hi)."""
    p = torch.fft.fft2(x.double()).abs().pow(2)
    m = band_mask(x.shape[-2], x.shape[-1], lo, hi, x.device)
    return float((p * m).sum() / p.sum())


@torch.no_grad()
def run(model: nn.Module, cfg: FrequencyNoiseConfig, data: Any, model_config: ModelConfig) -> dict[str, Any]:
    bands = cfg.bands()
    masks: list[torch.Tensor] | None = None
    g = seeded_generator(cfg.seed)
    clean = 0
    noisy = [0] * len(bands)
    total = 0
    for x, y in iterate_batches(data, cfg.max_images):
        clean += count_correct(logits_of(model, x), y)
        total += y.shape[0]
        base = to_pixels(x, model_config) if cfg.space == "pixel" else x
        if masks is None:
            masks = band_masks(cfg, x.shape[-2], x.shape[-1])
        for b in range(len(bands)):
            for _ in range(cfg.repeats):
                n = masked_noise(tuple(x.shape), masks[b], cfg.amplitude, cfg.scale, g)
                xn = base + n.to(base.device, base.dtype)
                if cfg.space == "pixel":
                    xn = from_pixels(xn.clamp(0, 1), model_config)
                noisy[b] += count_correct(logits_of(model, xn), y)
    clean_acc = percent(clean, total)
    points = []
    centers = list(cfg.centers) if cfg.layout == "centered" else [round((lo + hi) / 2, 10) for lo, hi in bands]
    for (lo, hi), center, c in zip(bands, centers, noisy):
        acc = percent(c, total * cfg.repeats)
        points.append({"low": lo, "high": hi, "center": center, "accuracy": acc, "drop": clean_acc - acc})
    return {"analysis": "frequency", "config": cfg.to_dict(), "images": total, "clean_accuracy": clean_acc,
            "bands": points}


def plot(result: dict[str, Any], path: Any) -> Any:
    fig, axes = new_figure()
    ax = axes[0][0]
    b = result["bands"]
    ax.plot([p["center"] for p in b], [p["drop"] for p in b], marker="o", ms=3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("noise frequency (x pi)")
    ax.set_ylabel("accuracy drop (points)")
    ax.set_title(f"band-limited noise, amplitude {result['config']['amplitude']}")
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    drops = [p["drop"] for p in result["bands"]]
    out = {"frequency.mean_drop": sum(drops) / len(drops), "frequency.max_drop": max(drops)}
    for p in result["bands"]:
        if abs(p["center"] - 0.7) < 1e-9:  # Table 5's Noise-0.7pi: accuracy under the band centred on 0.7 pi
            out["frequency.noise_0.7pi"] = p["accuracy"]
    return out
