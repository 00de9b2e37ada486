"""Every key and config path a dashboard panel reads is one a run really records.

A tiny ``lk_ablate fit`` (1000-class demo ConvNeXt with EMA, W&B offline through the ImageNet configs' logger section)
scores ImageNet-val/A/O/C at its end with the RobustnessEvaluation callback, then ``lk_ablate analyze
kernel_distance --wandb`` adds an analysis to the same run. The keys and config the offline run files hold (read as
tests/training/test_wandb.py reads them) are checked against everything the dashboard's spec references. The few
panel keys a tiny benchmark cannot produce (mCE needs all 15 x 5 ImageNet-C cells, the paper's severity-5 mean all
19, ImageNet-R was not scored) are named exactly, and shown to be what the logger writes for a complete results file.
"""
from pathlib import Path

import pytest
import yaml

from lk_ablate.base.metric_keys import CONFIG_KERNEL_LABEL, CONFIG_KERNEL_MAX, corruption_key, robust_key
from lk_ablate.base.results import flatten_metrics, make_results
from lk_ablate.cli import main
from lk_ablate.report.dashboard import DashboardOptions, build_dashboard, referenced_keys, spec
from lk_ablate.robustness.metrics import summarize_imagenet_c
from lk_ablate.robustness.names import ALL_CORRUPTIONS, SEVERITIES

from cluster_helpers import make_wnid_folder
from test_robustness_support import imagenet_wnids, small_trees
from test_wandb import offline_runs

REPO = Path(__file__).resolve().parents[2]


def _config(path: Path, trees: dict[str, str]) -> Path:
    path.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 2,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, "logger": str(REPO / "configs" / "base" / "logger_wandb.yaml"),
                    "callbacks": [{"class_path": "lk_ablate.robustness.callback.RobustnessEvaluation",
                                   "init_args": {**trees, "corruptions": ["gaussian_noise"], "severities": [5],
                                                 "batch_size": 256, "num_workers": 0}}]},
        "model": {"model_name": "convnext_demo", "kernel_size": [7, 5, 3, 3], "num_classes": 1000,
                  "drop_path_rate": 0.0, "base_lr": 1.0e-3, "base_batch_size": 8, "warmup_epochs": 0,
                  "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "ema_decay": 0.5},
        "data": {"class_path": "lk_ablate.data.ImageFolderDataModule",
                 "init_args": {"batch_size": 8, "num_workers": 0, "input_size": 32, "persistent_workers": False}},
        "seed_everything": 4}))
    return path


def _lookup(config: dict, path: str):
    node = config
    for part in path.split("."):
        node = node[part]  # a KeyError names the missing part
    return node


@pytest.mark.slow
def test_every_panel_key_is_recorded_by_a_real_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    data = make_wnid_folder(tmp_path / "data", imagenet_wnids())
    trees = small_trees(tmp_path / "trees", val=True, a=True, o=True, c=True)
    ck = tmp_path / "ck"
    assert main(["fit", "--config", str(_config(tmp_path / "fit.yaml", trees)), "--data.init_args.root", str(data),
                 "--checkpoint.dirpath", str(ck)]) == 0
    assert main(["analyze", "kernel_distance", "--ckpt_path", str(ck / "last.ckpt"), "--device", "cpu",
                 "--wandb", "true"]) == 0
    runs = offline_runs(ck / "wandb")
    assert len(runs) == 2 and len({r["run"].run_id for r in runs}) == 1  # the analysis went into the training run
    config, summary = {}, {}
    for r in runs:  # W&B merges the two offline folders of one run id when they are synced
        config.update(r["config"])
        summary.update(r["summary"])

    # The two fields the kernel axis and the grouping read, from the model's real per-stage kernels.
    assert (config[CONFIG_KERNEL_MAX], config[CONFIG_KERNEL_LABEL]) == (7, "7-5-3-3")
    analysis = sorted(k for k in summary if k.startswith("analysis/"))
    assert analysis == ["analysis/kernel_distance/mean"]

    keys = referenced_keys(spec(build_dashboard(DashboardOptions(entity="e", project="p", analysis_keys=analysis))))
    assert {"trainer/global_step", "val/top1", "val/ema_top1", "train/loss", "train/lr"} == keys["history"]
    assert keys["history"] <= set(summary)  # every history key's last value is in the summary
    assert keys["config"] == {CONFIG_KERNEL_MAX, CONFIG_KERNEL_LABEL, "seed_everything"}
    for path in keys["config"]:
        _lookup(config, path)
    assert config["seed_everything"] == 4

    missing = keys["summary"] - set(summary)
    not_computable = {robust_key(b, m, ema) for ema in (False, True) for b, m in (
        ("imagenet_c", "mce"), ("imagenet_c", "relative_mce"), ("imagenet_c", "severity5_mean_top1"),
        ("imagenet_r", "top1"))}
    not_computable |= {corruption_key("imagenet_c", c, None, ema=True) for c in ALL_CORRUPTIONS
                       if c != "gaussian_noise"}
    assert missing == not_computable
    # ... and those are exactly the names the loggers write for complete benchmarks.
    counts = {c: {s: 500 for s in SEVERITIES} for c in ALL_CORRUPTIONS}
    c_entry = summarize_imagenet_c(counts, {c: {s: 1000 for s in SEVERITIES} for c in ALL_CORRUPTIONS}, clean_top1=75.0)
    full = {"imagenet_c": c_entry, "imagenet_r": {"top1": 30.0, "correct": 300, "n": 1000}}
    complete = make_results(model_name="convnext_demo", kernel_sizes=[7, 5, 3, 3], num_params=1, model_config={},
                            weights={"raw": full, "ema": full}, settings={}, errors=[])
    assert not_computable <= set(flatten_metrics(complete))
