"""Per-step linear warmup then cosine decay, and the linear learning-rate scaling rule."""
from __future__ import annotations

import math


def scaled_lr(base_lr: float, base_batch_size: int, global_batch_size: int) -> float:
    """Linear scaling (Goyal et al.): lr = base_lr * global_batch / base_batch."""
    return base_lr * global_batch_size / base_batch_size


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Multiplier of ``peak_lr`` at optimizer step ``step`` (0-based).

    Warmup rises linearly to the peak over ``warmup_steps`` (first step at peak/warmup_steps, never 0);
    then a half cosine falls from the peak to ``min_lr`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    floor = min_lr / peak_lr if peak_lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
