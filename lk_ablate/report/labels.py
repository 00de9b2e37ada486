"""How benchmarks and metrics are named in the report's tables and plots and on the W&B dashboard (no torch)."""
from __future__ import annotations

__all__ = ["BENCH_LABELS", "DASHBOARD_NAME", "METRIC_LABELS", "bench_label", "metric_label"]

DASHBOARD_NAME = "Kernel-size ablation"  # the W&B view's name and report's title unless --name says otherwise

BENCH_LABELS = {"imagenet_val": "ImageNet", "imagenet_a": "IN-A", "imagenet_r": "IN-R", "imagenet_c": "IN-C",
                "imagenet_o": "IN-O", "fashion_mnist": "Fashion-MNIST", "fashion_mnist_c": "Fashion-MNIST-C"}
METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "mean_top1": "mean top-1",
                 "severity5_mean_top1": "sev-5 top-1 (19)", "severity5_mean_top1_15": "sev-5 top-1 (15)",
                 "mce": "mCE", "relative_mce": "rel. mCE", "aupr": "AUPR", "clean_top1_subset": "clean top-1 (subset)"}


def bench_label(bench: str) -> str:
    """``imagenet_a`` -> ``IN-A``; ``imagenet_a@paper`` -> ``IN-A [paper]``."""
    base, _, protocol = bench.partition("@")
    return BENCH_LABELS.get(base, base) + (f" [{protocol}]" if protocol else "")


def metric_label(bench: str, metric: str) -> str:
    """``imagenet_a``, ``top1`` -> ``IN-A top-1``."""
    return f"{bench_label(bench)} {METRIC_LABELS.get(metric, metric)}"
