"""Every metric key and run-config field lk_ablate logs, defined once.

Training (Lightning's loggers), the robustness callback, ``lk_ablate robustness --wandb``, ``lk_ablate analyze
--wandb``, the report's W&B run and the W&B dashboard (``lk_ablate dashboard``) all take their names from here, so a
dashboard panel cannot point at a key nobody logs (tests/report/test_dashboard_keys.py runs a fit, a scoring and an
analysis under W&B offline and checks every key a panel names against what the run recorded).

Accuracies are in percent wherever a user reads them.

- training, against :data:`STEP`: ``train/loss``, ``train/top1``, ``train/lr``, ``train/peak_lr``,
  ``train/global_batch_size``; ``val/loss``, ``val/top1``, ``val/top5``, ``val/ema_top1``, ``val/ema_top5``
  (``test/...`` likewise; :func:`eval_key`);
- robustness: ``robust/<benchmark>[@<protocol>]/<metric>[_ema]`` (:func:`robust_key`); corruption benchmarks also
  ``top1_<corruption>`` (mean over the scored severities) and ``top1_<corruption>_<severity>`` (one cell);
  ``robust/errors`` (failed benchmarks of one scoring); the table ``robustness/top1_table``;
- analyses: ``analysis/<name>[@<protocol>]/<scalar>`` (:func:`analysis_key`), from each analysis's
  ``summary_scalars``;
- run config (besides the full resolved config, logged nested: ``model.kernel_size``, ``seed_everything``, ...):
  ``kernel_max`` (the largest stage kernel, a number: the kernel axis of every chart, per-stage kernels included)
  and ``kernel_label`` (``31`` or ``31-29-27-13``: the grouping key).
"""
from __future__ import annotations

__all__ = [
    "ANALYSIS_PREFIX", "BENCHMARK_METRICS", "CONFIG_KERNEL_LABEL", "CONFIG_KERNEL_MAX", "CONFIG_KERNEL_SIZE",
    "CONFIG_MODEL_NAME", "CONFIG_SEED", "CORRUPTION_BENCHMARKS", "IMAGENET_BENCHMARKS", "MONITORS",
    "REPORT_CHART_PREFIX", "REPORT_PLOT_PREFIX", "REPORT_RUNS", "REPORT_TABLE", "ROBUST_ERRORS", "ROBUST_PREFIX",
    "ROBUST_TABLE", "STEP", "TEST_EMA_TOP1", "TEST_EMA_TOP5", "TEST_LOSS", "TEST_TOP1", "TEST_TOP5",
    "TRAIN_GLOBAL_BATCH_SIZE", "TRAIN_LOSS", "TRAIN_LR", "TRAIN_PEAK_LR", "TRAIN_TOP1", "VAL_EMA_TOP1",
    "VAL_EMA_TOP5", "VAL_LOSS", "VAL_TOP1", "VAL_TOP5", "analysis_key", "analysis_summary_key", "corruption_key",
    "eval_key", "kernel_config", "robust_key",
]

# --- training ------------------------------------------------------------------------------------------------------
STEP = "trainer/global_step"  # Lightning's WandbLogger logs every metric against it (its define_metric step)
TRAIN_LOSS = "train/loss"
TRAIN_TOP1 = "train/top1"
TRAIN_LR = "train/lr"
TRAIN_PEAK_LR = "train/peak_lr"
TRAIN_GLOBAL_BATCH_SIZE = "train/global_batch_size"


def eval_key(stage: str, metric: str, ema: bool = False) -> str:
    """``val`` / ``test`` metric of the raw (``val/top1``) or EMA weights (``val/ema_top1``)."""
    return f"{stage}/{'ema_' if ema else ''}{metric}"


VAL_LOSS = eval_key("val", "loss")
VAL_TOP1 = eval_key("val", "top1")
VAL_TOP5 = eval_key("val", "top5")
VAL_EMA_TOP1 = eval_key("val", "top1", ema=True)
VAL_EMA_TOP5 = eval_key("val", "top5", ema=True)
TEST_LOSS = eval_key("test", "loss")
TEST_TOP1 = eval_key("test", "top1")
TEST_TOP5 = eval_key("test", "top5")
TEST_EMA_TOP1 = eval_key("test", "top1", ema=True)
TEST_EMA_TOP5 = eval_key("test", "top5", ema=True)
MONITORS = (VAL_TOP1, VAL_EMA_TOP1)  # the best raw and the best EMA checkpoint

# --- robustness ----------------------------------------------------------------------------------------------------
ROBUST_PREFIX = "robust"
ROBUST_ERRORS = f"{ROBUST_PREFIX}/errors"
ROBUST_TABLE = "robustness/top1_table"

# The scalar metrics of each benchmark's results entry (base/results.py), headline first; the dashboard draws these.
BENCHMARK_METRICS: dict[str, tuple[str, ...]] = {
    "imagenet_val": ("top1", "top5"),
    "imagenet_a": ("top1",),
    "imagenet_r": ("top1",),
    "imagenet_c": ("mean_top1", "severity5_mean_top1", "mce", "relative_mce"),
    "imagenet_o": ("aupr",),
    "fashion_mnist": ("top1",),
    "fashion_mnist_c": ("mean_top1", "relative_mce", "clean_top1_subset"),
}
IMAGENET_BENCHMARKS = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_c", "imagenet_o")
# Benchmarks whose entries hold top-1 per corruption and severity (``top1[c][s]``, ``corruption_top1[c]``).
CORRUPTION_BENCHMARKS = ("imagenet_c", "fashion_mnist_c")


def robust_key(benchmark: str, metric: str, ema: bool = False, protocol: str | None = None) -> str:
    """``robust/imagenet_a/top1_ema``; a benchmark scored under a protocol other than ``model`` is
    ``imagenet_a@paper``, so the two are never logged under one key."""
    bench = benchmark if protocol in (None, "model") else f"{benchmark}@{protocol}"
    return f"{ROBUST_PREFIX}/{bench}/{metric}{'_ema' if ema else ''}"


def corruption_key(benchmark: str, corruption: str, severity: int | str | None = None, ema: bool = False,
                   protocol: str | None = None) -> str:
    """Top-1 of one corruption: mean over its scored severities (``severity`` None) or one severity's cell."""
    metric = f"top1_{corruption}" if severity is None else f"top1_{corruption}_{severity}"
    return robust_key(benchmark, metric, ema, protocol)


# --- analyses ------------------------------------------------------------------------------------------------------
ANALYSIS_PREFIX = "analysis"


def analysis_key(name: str, scalar: str, protocol: str | None = None) -> str:
    """``analysis/occlusion/random_mean``. Dots in the scalar's name become ``_``: W&B reads a dot in a key as
    nesting in some places (define_metric's "." separator, wandb/wandb#1928; the x axis of dotted keys,
    wandb/wandb#6659), so a dashboard panel on a dotted key may stay empty."""
    name = name if protocol in (None, "model") else f"{name}@{protocol}"
    return f"{ANALYSIS_PREFIX}/{name}/{scalar.replace('.', '_')}"


def analysis_summary_key(summary_key: str, protocol: str | None = None) -> str:
    """A ``summary_scalars`` key of the results file (``occlusion.random.mean``: analysis name, a dot, the scalar)
    as its W&B key (``analysis/occlusion/random_mean``)."""
    name, _, scalar = summary_key.partition(".")
    return analysis_key(name, scalar or name, protocol)


# --- the report's W&B run ------------------------------------------------------------------------------------------
REPORT_TABLE = "report/table"
REPORT_RUNS = "report/runs"
REPORT_PLOT_PREFIX = "report/plots"
REPORT_CHART_PREFIX = "report/charts"

# --- run config ----------------------------------------------------------------------------------------------------
CONFIG_KERNEL_MAX = "kernel_max"
CONFIG_KERNEL_LABEL = "kernel_label"
CONFIG_MODEL_NAME = "model.model_name"
CONFIG_KERNEL_SIZE = "model.kernel_size"
CONFIG_SEED = "seed_everything"


def kernel_config(kernel_sizes: list[int] | tuple[int, ...] | None, label: str) -> dict[str, int | str]:
    """The two run-config fields of a model with these per-stage kernel sizes (``label``: the registry's
    ``kernel_label``); empty for unknown sizes."""
    if not kernel_sizes:
        return {}
    return {CONFIG_KERNEL_MAX: int(max(kernel_sizes)), CONFIG_KERNEL_LABEL: label}
