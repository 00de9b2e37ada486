"""Small generated datasets for tests, and lazily imported modules."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# The test folders (they mirror lk_ablate/). Tests share helpers, fixtures and probe callbacks by module name
# (`from test_resume import KillAtStep`, `--trainer.callbacks+=test_ddp.RankStateDump`), so every folder is
# importable: tests/conftest.py puts them on sys.path, subprocesses get them through test_pythonpath().
TEST_DIRS = [TESTS, *sorted(d for d in TESTS.iterdir() if d.is_dir() and any(d.glob("test_*.py")))]


def test_pythonpath(*extra: str) -> str:
    """PYTHONPATH for a subprocess that imports test modules: the test folders, the repository, then ``extra``."""
    return os.pathsep.join([*map(str, TEST_DIRS), str(REPO), *(e for e in extra if e)])


def make_image_folder(root: Path, classes: int = 4, per_class: int = 6, size: int = 40, splits=("train", "val"),
                      seed: int = 0, ext: str = "png") -> Path:
    """root/<split>/<class_i>/<n>.<ext>: each class has its own mean colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=3)
            for i in range(per_class):
                img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{split}_{c}_{i}.{ext}")
    return root


class LazyModule:
    """The module ``name``, imported at the first attribute access. Test modules name numba/FFCV code with it at
    the top, so collecting the suite imports neither (``pytest -m "not ffcv"`` works without the ffcv extra, and
    does not pay numba's import); the test that uses it imports it, and fails if it is missing."""

    def __init__(self, name: str) -> None:
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # what pytest probes at collection (_mock_name, __pytest_wrapped__, ...): no import
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


def write_demo_checkpoint(path: Path, kernel_size: int | list[int] = 3, num_classes: int = 1000, ema: bool = True,
                          epoch: int = 1, global_step: int = 5, seed: int = 0):
    """A Lightning-format checkpoint of ``convnext_demo`` (EMA weights = raw / 2, so the two sets differ); returns
    the module it holds."""
    import torch

    from lk_ablate.training import ImageClassifier

    torch.manual_seed(seed)
    module = ImageClassifier(model_name="convnext_demo", kernel_size=kernel_size, num_classes=num_classes,
                             drop_path_rate=0.0, ema_decay=0.9 if ema else None)
    if ema:
        with torch.no_grad():
            for p in module.ema.module.parameters():
                p.mul_(0.5)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": epoch,
                "global_step": global_step}, path)
    return module
