"""Accuracy drop under random noise confined to one spatial-frequency band (Park & Kim, ICLR 2022, Fig. 2b).

Frequencies are in units of pi (Nyquist = 1). A 2-D DFT bin (ky, kx) of an H x W image has frequency
``max(|wy|, |wx|) / pi`` with ``w = 2 pi k / N`` (the square annuli of Park & Kim's ``FreqAttack._fourier_mask``);
band ``[lo, hi)`` keeps the bins with ``lo <= f < hi`` (the last band includes f = 1). Bands are consecutive
windows of width ``window`` (paper: 0.1 pi) over [0, 1].

Noise: ``scale: pre_filter`` draws ``amplitude * sign(N(0, 1))`` per pixel and channel and keeps only the band's
DFT bins (Park & Kim's ``Random`` + ``FreqAttack``: noise energy grows with the band's area);
``scale: rms`` rescales each band's noise to RMS ``amplitude`` per image (equal energy in every band).
The mask is symmetric under (ky, kx) -> (-ky, -kx), so the filtered noise is real and all of its spectral
energy lies in the band. ``space``: the noise is added to the normalised model input (Park & Kim) or to [0, 1]
pixels (then clamped to [0, 1]).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.registry import ModelConfig
from .common import (SectionConfig, count_correct, from_pixels, iterate_batches, logits_of, new_figure, percent,
                     save_figure, seeded_generator, to_pixels)

SCALES = ("pre_filter", "rms")
SPACES = ("normalized", "pixel")


@dataclasses.dataclass
class FrequencyNoiseConfig(SectionConfig):
    """``amplitude``: noise size (see ``scale``), in the units of ``space``; ``window``: band width in units of
    pi; ``repeats``: noise draws per image."""

    SECTION = "frequency"
    amplitude: float = 0.1
    window: float = 0.1
    scale: str = "pre_filter"
    space: str = "normalized"
    repeats: int = 1
    seed: int = 0
    max_images: int | None = None

    def validate(self) -> None:
        if not 0 < self.window <= 1:
            raise ConfigError(f"frequency.window must be in (0, 1] (units of pi), got {self.window}")
        if self.amplitude < 0:
            raise ConfigError(f"frequency.amplitude must be >= 0, got {self.amplitude}")
        if self.scale not in SCALES or self.space not in SPACES:
            raise ConfigError(f"frequency.scale must be one of {SCALES} and space one of {SPACES}")
        if self.repeats < 1:
            raise ConfigError("frequency.repeats must be >= 1")

    def bands(self) -> list[tuple[float, float]]:
        n = max(1, math.ceil(1.0 / self.window - 1e-9))
        return [(round(i * self.window, 10), round(min(1.0, (i + 1) * self.window), 10)) for i in range(n)]


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


def band_limited_noise(shape: tuple[int, ...], lo: float, hi: float, amplitude: float, scale: str = "pre_filter",
                       generator: torch.Generator | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Real noise of ``shape`` (..., H, W) whose spectrum lies in [lo, hi) (see the module docstring)."""
    h, w = shape[-2], shape[-1]
    base = torch.randn(shape, generator=generator, device=device).sign()
    spec = torch.fft.fft2(base) * band_mask(h, w, lo, hi, device)
    noise = torch.fft.ifft2(spec).real
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
    g = seeded_generator(cfg.seed)
    clean = 0
    noisy = [0] * len(bands)
    total = 0
    for x, y in iterate_batches(data, cfg.max_images):
        clean += count_correct(logits_of(model, x), y)
        total += y.shape[0]
        base = to_pixels(x, model_config) if cfg.space == "pixel" else x
        for b, (lo, hi) in enumerate(bands):
            for _ in range(cfg.repeats):
                n = band_limited_noise(tuple(x.shape), lo, hi, cfg.amplitude, cfg.scale, g)
                xn = base + n.to(base.device, base.dtype)
                if cfg.space == "pixel":
                    xn = from_pixels(xn.clamp(0, 1), model_config)
                noisy[b] += count_correct(logits_of(model, xn), y)
    clean_acc = percent(clean, total)
    points = []
    for (lo, hi), c in zip(bands, noisy):
        acc = percent(c, total * cfg.repeats)
        points.append({"low": lo, "high": hi, "center": (lo + hi) / 2, "accuracy": acc, "drop": clean_acc - acc})
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
    return {"frequency.mean_drop": sum(drops) / len(drops), "frequency.max_drop": max(drops)}
