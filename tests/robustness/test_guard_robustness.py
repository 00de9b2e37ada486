"""ImageNet-C with a different accuracy for every corruption and severity, against numbers worked out here from
the published formulas (so averaging the wrong set of corruptions, or the wrong severities, cannot pass), and
the report's standard errors of those means.
"""
from __future__ import annotations

import math

import pytest
from test_robustness_metrics import README_AVERAGES  # the published AlexNet averages, typed again there

from lk_ablate.report import benchmark_metrics
from lk_ablate.robustness import metrics as M

# The 15 benchmark corruptions then the 4 extra ones, typed here in the official order.
FIFTEEN = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
           "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
FOUR = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]


def test_corruption_lists_are_the_benchmarks():
    assert list(M.CORRUPTIONS) == FIFTEEN and list(M.EXTRA_CORRUPTIONS) == FOUR
    assert list(M.ALL_CORRUPTIONS) == FIFTEEN + FOUR


def test_severity5_mean_over_19_distinct_corruptions():
    """Corruption i (official order) gets 7 + 2 i of 50 right at severity 5: the mean over the 19 is
    (7 + 18) / 50 = 50 %, over the first 15 (7 + 14) / 50 = 42 %; the last four alone would give 78 %."""
    names = FIFTEEN + FOUR
    correct = {c: {5: 7 + 2 * i} for i, c in enumerate(names)}
    total = {c: {5: 50} for c in names}
    out = M.summarize_imagenet_c(correct, total)
    assert out["severity5_mean_top1"] == pytest.approx(50.0, abs=1e-12)
    assert out["severity5_mean_top1_15"] == pytest.approx(42.0, abs=1e-12)
    assert out["top1"]["saturate"] == {"5": 100.0 * 43 / 50}
    assert out["corruption_top1"]["gaussian_noise"] == pytest.approx(14.0, abs=1e-12)
    assert out["mean_top1"] == pytest.approx(50.0, abs=1e-12) and out["mce"] is None


def _full_grid():
    """Every (corruption, severity) cell different: corruption i, severity s: 10 + 3 i + 7 s right of 100 + i."""
    names = FIFTEEN + FOUR
    correct = {c: {s: 10 + 3 * i + 7 * s for s in range(1, 6)} for i, c in enumerate(names)}
    total = {c: {s: 100 + i for s in range(1, 6)} for i, c in enumerate(names)}
    return names, correct, total


def test_mce_and_relative_mce_over_the_15_with_distinct_cells():
    """CE_c = sum_s E_sc / (5 x AlexNet average_c); mCE = mean over the 15 (not 19); relative mCE subtracts the clean
    error (clean top-1 76 %: E_clean 0.24; AlexNet's 0.4345). Oracle from the README averages, rel. 1e-6 (the
    published averages are rounded to 6 digits)."""
    names, correct, total = _full_grid()
    out = M.summarize_imagenet_c(correct, total, clean_top1=76.0)
    err = {c: [1.0 - correct[c][s] / total[c][s] for s in range(1, 6)] for c in names}
    ce = {c: sum(err[c]) / (5 * README_AVERAGES[c]) for c in names}
    assert out["mce"] == pytest.approx(100 * sum(ce[c] for c in FIFTEEN) / 15, rel=1e-6)
    rel_ce = [sum(e - 0.24 for e in err[c]) / (5 * README_AVERAGES[c] - 5 * 0.4345) for c in FIFTEEN]
    assert out["relative_mce"] == pytest.approx(100 * sum(rel_ce) / 15, rel=1e-6)
    for c in names:  # CE is reported for all 19
        assert out["ce"][c] == pytest.approx(100 * ce[c], rel=1e-6)
    sev5 = [100 * correct[c][5] / total[c][5] for c in names]
    assert out["severity5_mean_top1"] == pytest.approx(sum(sev5) / 19, abs=1e-12)
    assert out["severity5_mean_top1_15"] == pytest.approx(sum(sev5[:15]) / 15, abs=1e-12)
    cells = [100 * correct[c][s] / total[c][s] for c in names for s in range(1, 6)]
    assert out["mean_top1"] == pytest.approx(sum(cells) / 95, abs=1e-12)
    assert out["corruption_top1"]["fog"] == pytest.approx(
        sum(100 * correct["fog"][s] / total["fog"][s] for s in range(1, 6)) / 5, abs=1e-12)
    # the numbers differ enough that a 19-corruption mCE or a 15-corruption severity-5 mean cannot pass
    assert abs(100 * sum(ce.values()) / 19 - out["mce"]) > 0.5
    assert abs(out["severity5_mean_top1"] - out["severity5_mean_top1_15"]) > 3


def test_report_standard_errors_of_the_corruption_means():
    """The report's binomial SE of a mean of k independent cells: sqrt(sum p (1 - p) / n) / k, over the severity-5
    cells (19 or 15 of them) or all 95 cells, each with its own n."""
    names, correct, total = _full_grid()
    summary = M.summarize_imagenet_c(correct, total, clean_top1=76.0)
    metrics = benchmark_metrics("imagenet_c", summary)

    def se(cells):
        return 100 * math.sqrt(sum((k / n) * (1 - k / n) / n for k, n in cells)) / len(cells)

    sev5 = [(correct[c][5], total[c][5]) for c in names]
    assert metrics["imagenet_c/severity5_mean_top1"].value == pytest.approx(summary["severity5_mean_top1"], abs=1e-12)
    assert metrics["imagenet_c/severity5_mean_top1"].se == pytest.approx(se(sev5), rel=1e-12)
    assert metrics["imagenet_c/severity5_mean_top1_15"].se == pytest.approx(se(sev5[:15]), rel=1e-12)
    assert metrics["imagenet_c/mean_top1"].se == pytest.approx(
        se([(correct[c][s], total[c][s]) for c in names for s in range(1, 6)]), rel=1e-12)
    assert metrics["imagenet_c/corruption_top1/snow"].se == pytest.approx(
        se([(correct["snow"][s], total["snow"][s]) for s in range(1, 6)]), rel=1e-12)
    assert metrics["imagenet_c/top1/frost/3"].value == pytest.approx(100 * correct["frost"][3] / total["frost"][3])
