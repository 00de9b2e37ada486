"""The report's statistics: Wilson intervals for single runs, clipping of seed intervals, and paired comparisons of
two models scored on the same images (exact McNemar test, paired bootstrap interval).

All accuracies are in percent. Formulas:

- Wilson score interval (Wilson 1927) for k successes of n at z = 1.96: centre (p + z²/2n) / (1 + z²/n), half-width
  z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n), with p = k/n. It never leaves [0, 100]. A mean over several independent
  accuracies (ImageNet-C's cells) uses the effective n = p(1-p)/Var(mean) (Korn & Graubard 1998).
- Exact McNemar test: of the images one model gets right and the other wrong (b one way, c the other), under "no
  difference" each is a fair coin: p = min(1, 2·P[Binomial(b + c, 1/2) <= min(b, c)]).
- Paired bootstrap: images are resampled with replacement (within each stratum, e.g. an ImageNet-C cell, whose
  size is fixed) and the difference of the accuracies recomputed; the interval is the 2.5 and 97.5 percentiles.
  Only the per-image differences d = b_i - a_i matter, and resampling n images draws their value counts from a
  multinomial, which is how it is computed (exactly the same distribution, at the cost of the number of distinct
  values instead of n per draw).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Z95", "Paired", "clip_interval", "mcnemar_exact", "paired_bootstrap", "paired_comparison", "wilson",
           "wilson_from_se"]

Z95 = 1.959963984540054  # the normal 97.5% quantile


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion, in percent."""
    if n <= 0:
        raise ValueError("the Wilson interval needs n > 0")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def wilson_from_se(value: float, se: float | None, n: int | None, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson interval of an accuracy ``value`` (%) with binomial standard error ``se`` (percentage points):
    n is the images' count where it is one accuracy, else the effective n = p(1-p)/se² (a mean over cells); with
    se 0 (every cell at 0 or 100%) the given ``n``. None when neither is known."""
    p = value / 100.0
    if se is not None and se > 0:
        n_eff = p * (1 - p) / (se / 100.0) ** 2
    elif n:
        n_eff = float(n)
    else:
        return None
    return wilson(p * n_eff, n_eff, z)


def clip_interval(lo: float, hi: float, bounds: tuple[float | None, float | None]) -> tuple[float, float, bool]:
    """(lo, hi) clipped to the metric's range, and whether anything was clipped."""
    low, high = bounds
    new_lo = lo if low is None else max(lo, low)
    new_hi = hi if high is None else min(hi, high)
    return new_lo, new_hi, (new_lo, new_hi) != (lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    from scipy.stats import binom

    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def paired_bootstrap(diffs: Sequence[np.ndarray], samples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval (percentage points) of the mean over strata of the mean per-image difference, images
    resampled with replacement within each stratum. ``diffs``: one array of per-image differences per stratum."""
    rng = np.random.default_rng(seed)
    total = np.zeros(samples)
    for d in diffs:
        d = np.asarray(d, dtype=np.float64)
        if d.size == 0:
            raise ValueError("a stratum without images")
        values, counts = np.unique(d, return_counts=True)
        draws = rng.multinomial(d.size, counts / d.size, size=samples)  # (samples, distinct values)
        total += draws @ values / d.size
    total *= 100.0 / len(diffs)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(total, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass
class Paired:
    """A paired comparison of B against A on the same images (percent / percentage points)."""

    n: int  # images (pairs)
    a: float  # accuracy of A
    b: float  # accuracy of B
    diff: float  # b - a
    ci95: tuple[float, float]  # paired bootstrap interval of diff
    discordant: tuple[int, int] | None  # (A right and B wrong, A wrong and B right); None with several seeds
    p_value: float | None  # exact McNemar; None with several seeds


def paired_comparison(a: Sequence[np.ndarray], b: Sequence[np.ndarray], samples: int = 10_000,
                      seed: int = 0) -> Paired:
    """Compare per-image correctness ``b`` with ``a``, stratum by stratum (equal lengths per stratum).

    Each array is one stratum's per-image correctness: bool for a single run, or the mean over seeds (then no
    McNemar test: it needs one yes/no per image and model). The accuracy of a set of strata is the mean of the
    strata's accuracies (ImageNet-C's mean top-1 over cells).
    """
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ValueError("paired comparisons need the same images in the same order")
    a = [np.asarray(x) for x in a]
    b = [np.asarray(y) for y in b]
    acc_a = 100.0 * float(np.mean([x.mean() for x in a]))
    acc_b = 100.0 * float(np.mean([y.mean() for y in b]))
    binary = all(x.dtype == bool for x in a + b)
    discordant = p = None
    if binary:
        right_wrong = int(sum(int((x & ~y).sum()) for x, y in zip(a, b)))
        wrong_right = int(sum(int((~x & y).sum()) for x, y in zip(a, b)))
        discordant, p = (right_wrong, wrong_right), mcnemar_exact(right_wrong, wrong_right)
    diffs = [y.astype(np.float64) - x.astype(np.float64) for x, y in zip(a, b)]
    return Paired(sum(len(x) for x in a), acc_a, acc_b, acc_b - acc_a, paired_bootstrap(diffs, samples, seed),
                  discordant, p)
