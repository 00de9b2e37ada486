"""The DataModule base every dataset shares: seeded per-sample transforms, sharding, resumable order."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from ..base.errors import ConfigError, DataError
from ..models.registry import CROP_MODES, ModelConfig, get_model_config
from .sampler import ResumableDataLoader, ShardedBatchSampler
from .seeding import STREAM_SAMPLE, derive_seed, global_seed, seeded_rng


class SeededDataset(Dataset):
    """Wraps a dataset of (image, label); item (index, epoch) is transformed under seed (seed, epoch, index)."""

    def __init__(self, base: Any, transform: Callable | None, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Any, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            image, label = self.base[index]
        except Exception as e:  # noqa: BLE001 - any decode failure: name the file, never skip it
            raise DataError(self._unreadable(index, e)) from None
        if self.transform is not None:
            with seeded_rng(derive_seed(self.seed, STREAM_SAMPLE, epoch, index)):
                image = self.transform(image)
        return image, label


    def _unreadable(self, index: int, e: BaseException) -> str:
        # Skipping would change the batch count (DDP ranks must agree) and break exact resumption: stop, name it.
        samples = getattr(self.base, "samples", None)
        path = samples[index][0] if samples is not None else f"sample {index}"
        root = getattr(self.base, "root", None)
        check = f"`lk_ablate data check --root {root}`" if root else "`lk_ablate data check --root <folder>`"
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        return (f"cannot read image {path} ({reason}); training never skips images (exact resume and DDP batch "
                f"counts depend on every one): replace or remove it, and run {check} to list every unreadable file")


class ClassificationDataModule(L.LightningDataModule):
    """Common options and loaders; subclasses provide the datasets in ``build_datasets``.

    Image size, crop ratio and mode, mean/std and interpolation default to the model's config (None = the model's).
    """

    def __init__(self, batch_size: int = 128, num_workers: int = 4, seed: int | None = None,
                 input_size: int | None = None, crop_pct: float | None = None,
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 interpolation: str | None = None, model_name: str | None = None, pin_memory: bool = True,
                 persistent_workers: bool = True, crop_mode: str | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        if crop_mode is not None and crop_mode not in CROP_MODES:
            raise ConfigError(f"data crop_mode must be one of {', '.join(CROP_MODES)} (or null: the model's), "
                              f"got {crop_mode!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self._seed = seed
        self._overrides = dict(input_size=input_size, crop_pct=crop_pct, mean=mean, std=std,
                               interpolation=interpolation, crop_mode=crop_mode)
        self.model_name = model_name
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.datasets: dict[str, Dataset] = {}

    @property
    def seed(self) -> int:
        return self._seed if self._seed is not None else global_seed()

    def model_config(self) -> ModelConfig:
        """The model's config with this DataModule's overrides applied.

        The model is ``model_name``, which ``lk_ablate fit/validate/...`` links from ``model.model_name``
        (lk_ablate/lightning_cli.py). Without it (the Python API), the attached LightningModule's config.
        """
        if self.model_name is not None:
            cfg = get_model_config(self.model_name)
        elif self.trainer is not None and hasattr(self.trainer.lightning_module, "model_config"):
            cfg = self.trainer.lightning_module.model_config
        else:
            cfg = ModelConfig()
        o = dict(self._overrides)
        if o["input_size"] is not None:
            o["input_size"] = (cfg.input_size[0], o["input_size"], o["input_size"])
        for k in ("mean", "std"):
            if o[k] is not None:
                o[k] = tuple(o[k])
        return cfg.replace(**o)

    # subclasses -------------------------------------------------------------------------------------
    def build_datasets(self, stage: str, cfg: ModelConfig) -> dict[str, Dataset]:
        """Return {'train': ..., 'val': ..., 'test': ...} (those the stage needs)."""
        raise NotImplementedError

    # Lightning hooks --------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        cfg = self.model_config()
        self.datasets.update(self.build_datasets(stage, cfg))
        self.log_data_config(cfg)

    def log_data_config(self, cfg: ModelConfig) -> None:
        """The config the data is prepared with, as the ``data_config`` hyperparameter (with the dataset's class
        count, the model's too: fit and validate stop when they differ)."""
        if self.trainer is None or self.trainer.logger is None:
            return
        classes = getattr(self, "num_classes", None)
        if isinstance(classes, int) and not isinstance(classes, bool):
            cfg = cfg.replace(num_classes=classes)
        self.trainer.logger.log_hyperparams({"data_config": cfg.to_dict()})

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _progress(self) -> tuple[int, int]:
        loop = self.trainer.fit_loop
        return self.trainer.current_epoch, loop.epoch_loop.batch_progress.current.processed

    def _epoch_to_run(self) -> int:
        """The epoch the fit loop runs next (the value Lightning passes to ``set_epoch``).

        Lightning creates the train iterator before its first ``set_epoch`` call, and a run resumed from an
        epoch-end checkpoint restores no loader position: a train loader must start at this epoch, or the first
        epoch after such a resume replays epoch 0's order.
        """
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _loader(self, split: str, train: bool) -> ResumableDataLoader:
        if split not in self.datasets:
            raise ConfigError(f"{type(self).__name__} has no {split!r} split")
        ds = self.datasets[split]
        rank, world = self._rank_world()
        sampler = ShardedBatchSampler(len(ds), self.batch_size, shuffle=train, drop_last=train, seed=self.seed,
                                      rank=rank, world_size=world)
        if train and self.trainer is not None:
            sampler.set_epoch(self._epoch_to_run())
        if train and len(sampler) == 0:
            raise ConfigError(f"the {split} set ({len(ds)} samples) is smaller than one batch per rank "
                              f"(batch_size {self.batch_size} x {world} ranks); lower data.batch_size")
        return ResumableDataLoader(
            ds, batch_sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            progress=self._progress if train and self.trainer is not None else None)

    def train_batches_per_epoch(self) -> int:
        """Training batches per epoch on each rank (equal on all ranks: the tail is dropped)."""
        rank, world = self._rank_world()
        return len(ShardedBatchSampler(len(self.datasets["train"]), self.batch_size, True, True, self.seed, rank,
                                       world))

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> ResumableDataLoader:
        return self._loader("test" if "test" in self.datasets else "val", train=False)

    def predict_dataloader(self) -> ResumableDataLoader:
        return self.test_dataloader()
