"""Deterministic, DDP-sharded, resumable batch order.

Order is a function of (seed, epoch) only. Each rank takes a strided shard of the permuted indices.
Training drops the tail so every rank sees the same number of full batches (no padding, no duplicates).
Evaluation keeps every sample exactly once: rank r takes positions r, r + W, r + 2W, ...; ranks may then hold
one sample more or less than each other (the metrics are summed over ranks, so nothing is counted twice).
Batches carry (index, epoch) pairs so a dataset derives each sample's augmentation from them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from .seeding import STREAM_ORDER, derive_seed


class ShardedBatchSampler:
    """Yields lists of (index, epoch); ``set_epoch`` is called by Lightning before each epoch."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip_batches = 0  # set once by a resume, consumed by the next __iter__
        # Lightning calls set_epoch on `loader.batch_sampler.sampler`, not on the batch sampler itself.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_ORDER, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.drop_last:
            per_rank = (self.num_samples // self.world_size) // self.batch_size * self.batch_size
            return order[self.rank::self.world_size][:per_rank]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch  # order and sample tags from one epoch, even if set_epoch comes mid-iteration
        idx = self.shard()
        skip, self.skip_batches = self.skip_batches, 0
        for start in range(skip * self.batch_size, len(idx), self.batch_size):
            chunk = idx[start:start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield [(i, epoch) for i in chunk]

    def __len__(self) -> int:
        per_rank = len(range(self.rank, self.num_samples, self.world_size))
        if self.drop_last:
            return (self.num_samples // self.world_size) // self.batch_size
        return -(-per_rank // self.batch_size)


class LoaderPosition:
    """Lightning's stateful-loader protocol (``_Stateful``) for a loader with a ShardedBatchSampler.

    Needs ``self.batch_sampler`` and ``self._progress``: a callable returning (epoch, batches completed in it)
    from the trainer; workers prefetch ahead, so the loader itself cannot know how many batches the training
    loop really consumed.
    """

    batch_sampler: ShardedBatchSampler
    _progress: Callable[[], tuple[int, int]] | None

    def state_dict(self) -> dict[str, int]:
        sampler = self.batch_sampler
        epoch, completed = self._progress() if self._progress else (sampler.epoch, 0)
        return {"epoch": int(epoch), "batches_completed": int(completed), "num_batches": len(sampler)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.batch_sampler
        if state["batches_completed"] >= state["num_batches"]:  # saved at the epoch's end: start the next one
            sampler.set_epoch(state["epoch"] + 1)
            sampler.skip_batches = 0
        else:
            sampler.set_epoch(state["epoch"])
            sampler.skip_batches = state["batches_completed"]


class ResumableDataLoader(LoaderPosition, DataLoader):
    """A DataLoader whose position Lightning saves in mid-epoch checkpoints (see LoaderPosition)."""

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress
