"""`lk_ablate fit` through FFCV, in process: a fast_dev_run, and the clear error for a missing .beton."""
import threading

import pytest
import yaml

from ffcv_helpers import write_betons
from lk_ablate.cli import main

pytestmark = pytest.mark.ffcv


def config(tmp_path, train, val):
    cfg = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"model_name": "convnext_demo", "kernel_size": 3, "num_classes": 4, "base_batch_size": 8,
                  "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "ema_decay": 0.9, "channels_last": True},
        "data": {"class_path": "lk_ablate.data.FFCVDataModule",
                 "init_args": {"train_path": train, "val_path": val, "batch_size": 4, "num_workers": 2,
                               "input_size": 32}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
    }
    path = tmp_path / "ffcv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_fit_fast_dev_run_through_ffcv(tmp_path):
    train, val = write_betons(tmp_path / "d", classes=4, per_class=6, size=40, ext="jpg", write_mode="proportion")
    before = threading.active_count()
    assert main(["fit", "--config", config(tmp_path, train, val), "--trainer.fast_dev_run", "true"]) == 0
    assert not [t for t in threading.enumerate() if t.name == "lk_ablate-ffcv-epoch"]
    assert threading.active_count() <= before + 1  # numba's pool may start one thread; no epoch thread leaks


@pytest.mark.slow
def test_fit_with_a_missing_beton_fails_at_start_with_one_message(tmp_path, capsys):
    train, val = write_betons(tmp_path / "d", classes=4, per_class=2, size=36)
    assert main(["fit", "--config", config(tmp_path, train, str(tmp_path / "missing.beton"))]) == 2
    err = capsys.readouterr().err
    assert "lk_ablate: error: val .beton not found" in err and "lk_ablate data write-ffcv" in err
    assert "Traceback" not in err
