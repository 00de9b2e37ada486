"""How ``lk_ablate data write-ffcv`` stores images (ffcv-imagenet's defaults): an option group without torch, so
the command's parser and ``--help`` do not import it (the writer itself is :mod:`.ffcv_writer`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..base.errors import ConfigError

WRITE_MODES = ("proportion", "raw", "jpg", "smart")


@dataclass
class WriterConfig:
    """How images are stored (ffcv-imagenet's defaults)."""

    max_resolution: int | None = 500
    write_mode: str = "proportion"
    compress_probability: float = 0.5
    jpeg_quality: int = 90
    chunk_size: int = 100
    num_workers: int = -1
    verify: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise ConfigError(f"write_mode must be one of {WRITE_MODES}, got {self.write_mode!r}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ConfigError(f"compress_probability must be in [0, 1], got {self.compress_probability}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.max_resolution is not None and self.max_resolution < 8:
            raise ConfigError(f"max_resolution must be >= 8 (or None to keep sizes), got {self.max_resolution}")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")

    def workers(self) -> int:
        return self.num_workers if self.num_workers > 0 else (os.cpu_count() or 1)

    def file_name(self, split: str) -> str:
        """ffcv-imagenet's naming: ``train_500_0.50_90.beton``."""
        res = self.max_resolution or 0
        return f"{split}_{res}_{self.compress_probability:.2f}_{self.jpeg_quality}.beton"
