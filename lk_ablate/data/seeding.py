"""Randomness derived from (seed, epoch, step or sample index), so a resumed run continues exactly.

Nothing in training draws from a generator whose state depends on history (worker assignment, how many
batches ran before a restart): every random op runs inside ``seeded_rng(derive_seed(...))``.
"""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

# Stream tags keep the derived seeds of different consumers apart.
STREAM_SAMPLE = 1  # per-sample augmentation: (seed, epoch, index)
STREAM_ORDER = 2  # dataset order: (seed, epoch)
STREAM_STEP = 3  # mixup/cutmix and drop path: (seed, epoch, batch index, rank)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (SeedSequence hashing: no collisions between nearby keys)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def global_seed(default: int = 0) -> int:
    """The run's seed: Lightning's ``seed_everything`` exports it as PL_GLOBAL_SEED."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


@contextlib.contextmanager
def seeded_rng(seed: int, cuda: bool = False) -> Iterator[None]:
    """Seed python, numpy and torch's CPU generator (and CUDA's with ``cuda``) for the block.

    In the main process the previous states are restored afterwards; a DataLoader worker skips that
    (every sample re-seeds anyway, and saving the states costs more than the transforms of a small image).
    """
    in_worker = torch.utils.data.get_worker_info() is not None
    if in_worker and not cuda:
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.default_generator.manual_seed(seed)
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if cuda and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
