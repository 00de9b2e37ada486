"""FFCV DataModule: the ImageNet-1K training path of the paper's runs, from .beton files.

Train: RandomResizedCrop (scale 0.08-1, decoded and resized by FFCV), flip, RandAugment
rand-m9-mstd0.5-inc1 (or colour jitter when RandAugment is off), normalise, random erasing 0.25, all per
sample and seeded by (seed, epoch, sample index) (``ffcv_augment``). Val: centre crop of ``input / floor(input /
crop_pct)`` x the shorter side, what EvalSpec keeps (``crop_mode`` "squash": of each side), resized to the
model's input size, normalised. Image size,
crop ratio and mode and mean/std come from the model's config unless set here. Output: float32 NCHW in channels_last memory format, int64 labels.

Order: QUASI_RANDOM on one process (FFCV's page-aware shuffle, fewer disk reads when the data does not fit in
RAM), RANDOM under DDP (FFCV has no distributed QUASI_RANDOM); both are functions of (seed, epoch), so a
resumed run continues with the same batches. Sharding, tail rule and resume are ``ShardedBatchSampler``'s:
training drops the tail so every rank has the same number of full batches; evaluation reads every sample
exactly once (rank r takes positions r, r + W, ...; ranks may differ by one sample).

FFCV is imported only when this DataModule is built; without it every other feature works.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import ConfigError, DataError
from ..models.registry import ModelConfig
from .base import ClassificationDataModule
from .ffcv_import import FFCV_INSTALL_HINT, require_ffcv
from .ffcv_writer import read_meta
from .sampler import ShardedBatchSampler

__all__ = ["FFCV_INSTALL_HINT", "BetonInfo", "FFCVDataModule", "ProgressiveResolution", "check_beton", "require_ffcv",
           "val_crop_ratio"]

ORDERS = ("quasi_random", "random")


def val_crop_ratio(cfg: ModelConfig) -> float:
    """The share of the shorter side the validation centre crop keeps: ``input / resize`` with timm's floor resize
    (EvalSpec's rule), not ``crop_pct``, so FFCV validation crops what ImageFolder validation and the robustness
    benchmarks crop (XL: 320 / 365, not 0.875)."""
    return cfg.image_size / cfg.resize_size


@dataclass
class ProgressiveResolution:
    """ffcv-imagenet's progressive resizing: ``min_res`` until ``start_ramp``, then a linear ramp (rounded to a
    multiple of ``step``) to ``max_res`` at ``end_ramp`` and after. Epochs count from 0."""

    min_res: int = 160
    max_res: int = 192
    start_ramp: int = 65
    end_ramp: int = 76
    step: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.min_res <= self.max_res or self.start_ramp > self.end_ramp or self.step < 1:
            raise ConfigError(f"progressive resolution needs 0 < min_res <= max_res, start_ramp <= end_ramp and "
                              f"step >= 1; got {self}")

    def __call__(self, epoch: int) -> int:
        if epoch <= self.start_ramp:
            return self.min_res
        if epoch >= self.end_ramp:
            return self.max_res
        res = np.interp(epoch, [self.start_ramp, self.end_ramp], [self.min_res, self.max_res])
        return int(np.round(res / self.step)) * self.step


@dataclass
class BetonInfo:
    path: Path
    num_samples: int
    classes: list[str] | None
    num_classes: int


def check_beton(path: str | Path | None, what: str) -> BetonInfo:
    """Open a .beton's header: it must exist and hold an RGB 'image' and an int 'label' field."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    hint = ("write it with `lk_ablate data write-ffcv --root <ImageFolder root> --output_dir <dir>` and set "
            f"data.init_args.{what}_path")
    if not path:
        raise DataError(f"no {what} .beton given; {hint}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} .beton not found: {p}\n  {hint}")
    try:
        reader = Reader(str(p))
    except Exception as e:  # noqa: BLE001 - FFCV raises assorted errors on a wrong or truncated file
        raise DataError(f"{p} is not a readable FFCV .beton file ({type(e).__name__}: {e})\n  {hint}") from e
    fields = dict(zip(reader.field_names, reader.handlers.values()))
    if not isinstance(fields.get("image"), RGBImageField) or not isinstance(fields.get("label"), IntField):
        found = {k: type(v).__name__ for k, v in fields.items()}
        raise DataError(f"{p} has fields {found}; expected 'image' (RGBImageField) and 'label' (IntField)\n  {hint}")
    n = int(reader.num_samples)
    if n == 0:
        raise DataError(f"{p} holds no samples\n  {hint}")
    labels = reader.metadata[f"f{reader.field_names.index('label')}"]
    meta = read_meta(p)
    classes = list(meta["classes"]) if meta else None
    num_classes = len(classes) if classes else int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{p}: labels span [{labels.min()}, {labels.max()}] but there are {num_classes} classes")
    return BetonInfo(p, n, classes, num_classes)


class FFCVDataModule(ClassificationDataModule):
    """Train/val from .beton files written by ``lk_ablate data write-ffcv``; see the module docstring.

    ``num_workers`` is the number of FFCV (numba) threads. ``progressive`` enables progressive resizing of the
    training crops. ``pad_crop`` (pixels) adds a zero-padded random crop (for small images; off for ImageNet).
    """

    def __init__(self, train_path: str | None = None, val_path: str | None = None,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                 color_jitter: float | None = 0.4, re_prob: float = 0.25, re_mode: str = "pixel",
                 re_count: int = 1, pad_crop: int = 0, order: str = "quasi_random", os_cache: bool = True,
                 batches_ahead: int = 3, progressive: ProgressiveResolution | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        require_ffcv()
        if order not in ORDERS:
            raise ConfigError(f"data.order must be one of {ORDERS}, got {order!r}")
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; got {scale}, {ratio}")
        if batches_ahead < 1:
            raise ConfigError(f"batches_ahead must be >= 1, got {batches_ahead}")
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.augment_options = dict(hflip=hflip, pad=pad_crop, auto_augment=auto_augment, color_jitter=color_jitter,
                                    re_prob=re_prob, re_mode=re_mode, re_count=re_count)
        self.order, self.os_cache, self.batches_ahead, self.progressive = order, os_cache, batches_ahead, progressive
        self._set_paths(train_path, val_path)
        self._loaders: dict[str, Any] = {}
        self._cfg: ModelConfig | None = None

    def _set_paths(self, train_path: str | None, val_path: str | None) -> None:
        # Checked when the DataModule is built (at `fit` start), not when the first batch is read.
        self.val_info = check_beton(val_path, "val")
        self.train_info = check_beton(train_path, "train") if train_path else None
        if self.train_info is not None:
            a, b = self.train_info, self.val_info
            if a.classes and b.classes and a.classes != b.classes:
                diff = sorted(set(a.classes) ^ set(b.classes))[:5]
                raise DataError(f"train and val .beton files have different classes ({a.num_classes} vs "
                                f"{b.num_classes}; e.g. {diff}): write both from one dataset root")
            if a.num_classes != b.num_classes:
                raise DataError(f"train has {a.num_classes} classes, val {b.num_classes}")

    @property
    def num_classes(self) -> int:
        return (self.train_info or self.val_info).num_classes

    @property
    def classes(self) -> list[str] | None:
        return (self.train_info or self.val_info).classes

    # --- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._cfg = self.model_config()
        self.log_data_config(self._cfg)

    def teardown(self, stage: str) -> None:
        for loader in self._loaders.values():
            loader.close()

    def _config(self) -> ModelConfig:
        return self._cfg if self._cfg is not None else self.model_config()

    def _make_loader(self, split: str) -> Any:
        # lazy: these compile numba kernels and import FFCV; only a DataModule that loads pays for them
        from .ffcv_augment import build_params
        from .ffcv_loader import CenterCrop, FFCVLoader, SeededAugment, SeededRandomResizedCrop

        cfg, train = self._config(), split == "train"  # test/predict read the val file
        info = self.train_info if train else self.val_info
        if info is None:
            raise ConfigError("no training .beton: set data.init_args.train_path")
        rank, world = self._rank_world()
        params, ops = build_params(cfg.mean, cfg.std, train, interpolation=cfg.interpolation,
                                   **(self.augment_options if train else {}))
        size = cfg.image_size
        if train:
            decoder = SeededRandomResizedCrop((size, size), self.scale, self.ratio)
        else:
            decoder = CenterCrop((size, size), val_crop_ratio(cfg), squash=cfg.crop_mode == "squash")
        order = self.order if train and world == 1 else "random"
        loader = FFCVLoader(info.path, decoder, SeededAugment(params, ops, train), batch_size=self.batch_size,
                            train=train, order=order, seed=self.seed, rank=rank, world_size=world,
                            num_workers=self.num_workers, os_cache=self.os_cache, batches_ahead=self.batches_ahead,
                            progress=self._progress if train and self.trainer is not None else None,
                            resolution=self.progressive if train else None)
        if train and len(loader) == 0:
            raise ConfigError(f"the train set ({info.num_samples} samples) is smaller than one batch per rank "
                              f"(batch_size {self.batch_size} x {world} ranks); lower data.batch_size")
        if train and self.trainer is not None:
            loader.set_epoch(self._epoch_to_run())
        old = self._loaders.pop(split, None)
        if old is not None:
            old.close()
        self._loaders[split] = loader
        return loader

    def train_batches_per_epoch(self) -> int:
        if self.train_info is None:
            raise ConfigError("no training .beton: set data.init_args.train_path")
        rank, world = self._rank_world()
        return len(ShardedBatchSampler(self.train_info.num_samples, self.batch_size, True, True, self.seed, rank,
                                       world))

    def train_dataloader(self) -> Any:
        return self._make_loader("train")

    def val_dataloader(self) -> Any:
        return self._make_loader("val")

    def test_dataloader(self) -> Any:
        return self._make_loader("test")

    def predict_dataloader(self) -> Any:
        return self._make_loader("predict")
