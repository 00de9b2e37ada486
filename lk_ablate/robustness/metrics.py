"""The benchmark metrics, exactly as the authors compute them.

- ImageNet-A / -R (Hendrycks et al.): top-1 of the argmax over the 200 masked logits
  (``output[:, mask].max(1)``), labels are ImageFolder indices over the benchmark's sorted wnids.
- ImageNet-C (Hendrycks & Dietterich, ICLR 2019): error E_{s,c} per corruption c and severity s;
  CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}, mCE = mean of CE_c over the 15 corruptions;
  relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean).
  The large-kernel paper's ImageNet-C number is the mean top-1 over the 19 corruptions at severity 5.
- ImageNet-O: score = -max softmax over the 200 masked logits, OOD is the positive class,
  AUPR = ``sklearn.metrics.average_precision_score`` (``calibration_tools.get_measures``).

Accuracies and mCE values returned here are percentages (0-100), like the papers' tables.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..base.errors import ConfigError
from .names import ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES

__all__ = [
    "CORRUPTIONS", "EXTRA_CORRUPTIONS", "ALL_CORRUPTIONS", "SEVERITIES", "ALEXNET_ERRORS",
    "ALEXNET_MEAN_ERRORS", "ALEXNET_CLEAN_ERROR", "masked_logits", "topk_correct", "msp_score", "ood_aupr",
    "corruption_errors", "mce", "relative_mce", "summarize_imagenet_c",
]


# AlexNet top-1 error on ImageNet-C per severity 1..5, from the table "AlexNet ImageNet-C Error" of
# hendrycks/robustness README.md (added in commit 76d9393, Oct 2019; later replaced by a spreadsheet link).
# Its "Average" column is the mean of these five values; the 15 averages are the constants every mCE
# implementation uses (e.g. google-research/augmix ALEXNET_ERR).
ALEXNET_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
    "speckle_noise": (0.66192, 0.74440, 0.90246, 0.94548, 0.97268),
    "gaussian_blur": (0.54732, 0.70444, 0.82574, 0.89864, 0.95940),
    "spatter": (0.47196, 0.62194, 0.75052, 0.84132, 0.90182),
    "saturate": (0.59342, 0.65514, 0.51174, 0.70834, 0.82260),
}
# The README's "Average" column (mean over the five severities), as published.
ALEXNET_MEAN_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500, "speckle_noise": 0.845388, "gaussian_blur": 0.787108,
    "spatter": 0.717512, "saturate": 0.658248,
}
# Clean top-1 error of the AlexNet the official test script loads (torchvision alexnet-owt-4df8aa71.pth):
# 43.45% in torchvision's model table (docs 0.1.12 .. 0.x, "ImageNet 1-crop error rates (224x224)").
# Hendrycks' own value lives in a spreadsheet that is not mirrored; the paper's Table 1 prints 43.5.
ALEXNET_CLEAN_ERROR: float = 0.4345


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | Sequence[bool] | None) -> torch.Tensor:
    """``logits[:, mask]`` with a 1000-entry boolean mask (None: unchanged), as the official eval code does."""
    if mask is None:
        return logits
    mask = torch.as_tensor(mask, dtype=torch.bool, device=logits.device)
    if logits.shape[-1] != mask.numel():
        raise ConfigError(f"the model outputs {logits.shape[-1]} classes but the benchmark mask covers "
                          f"{mask.numel()}; ImageNet benchmarks need a 1000-class ImageNet model")
    return logits[:, mask]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1,)) -> dict[int, torch.Tensor]:
    """Per-sample booleans: is the target among the top-k logits. Top-1 is ``argmax == target``, first max wins."""
    out = {}
    if 1 in ks:
        out[1] = logits.argmax(dim=1) == target
    rest = [k for k in ks if k != 1]
    if rest:
        top = logits.topk(max(rest), dim=1).indices
        for k in rest:
            out[k] = (top[:, :k] == target[:, None]).any(dim=1)
    return out


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """The ImageNet-O anomaly score: minus the maximum softmax probability (higher = more anomalous)."""
    return -torch.softmax(logits.double(), dim=1).amax(dim=1)


def ood_aupr(in_scores: np.ndarray | Sequence[float], out_scores: np.ndarray | Sequence[float]) -> float:
    """Area under the precision-recall curve with OOD as positive (``get_measures(out_score, in_score)[1]``), in %."""
    from sklearn.metrics import average_precision_score

    pos = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    neg = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUPR needs both in-distribution and out-of-distribution scores")
    labels = np.zeros(pos.size + neg.size, dtype=np.int32)
    labels[:pos.size] = 1
    return 100.0 * float(average_precision_score(labels, np.concatenate([pos, neg])))


def corruption_errors(errors: Mapping[str, Mapping[int, float]],
                      reference: Mapping[str, Sequence[float]] | None = None) -> dict[str, float]:
    """CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c} for each corruption scored at all five severities.

    ``errors[c][s]`` are error rates (fractions); ``reference`` defaults to AlexNet's table. Corruptions with
    missing severities are left out (CE is defined over all five).
    """
    ref = ALEXNET_ERRORS if reference is None else reference
    out = {}
    for c, by_sev in errors.items():
        if c not in ref or any(s not in by_sev for s in SEVERITIES):
            continue
        out[c] = sum(by_sev[s] for s in SEVERITIES) / sum(ref[c][s - 1] for s in SEVERITIES)
    return out


def mce(errors: Mapping[str, Mapping[int, float]], corruptions: Sequence[str] = CORRUPTIONS,
        reference: Mapping[str, Sequence[float]] | None = None) -> float | None:
    """Mean corruption error in % over ``corruptions`` (the 15 by default); None unless all were scored fully."""
    ce = corruption_errors(errors, reference)
    if any(c not in ce for c in corruptions):
        return None
    return 100.0 * float(np.mean([ce[c] for c in corruptions]))


def relative_mce(errors: Mapping[str, Mapping[int, float]], clean_error: float,
                 corruptions: Sequence[str] = CORRUPTIONS, reference: Mapping[str, Sequence[float]] | None = None,
                 reference_clean_error: float = ALEXNET_CLEAN_ERROR) -> float | None:
    """Relative mCE in %: mean over c of sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)."""
    ref = ALEXNET_ERRORS if reference is None else reference
    rel = []
    for c in corruptions:
        by_sev = errors.get(c, {})
        if c not in ref or any(s not in by_sev for s in SEVERITIES):
            return None
        num = sum(by_sev[s] - clean_error for s in SEVERITIES)
        den = sum(ref[c][s - 1] - reference_clean_error for s in SEVERITIES)
        rel.append(num / den)
    return 100.0 * float(np.mean(rel))


def summarize_imagenet_c(correct: Mapping[str, Mapping[int, int]], total: Mapping[str, Mapping[int, int]],
                         clean_top1: float | None = None) -> dict:
    """Every ImageNet-C number from per-(corruption, severity) counts; ``clean_top1`` in % enables relative mCE.

    Returns top-1 (%) per corruption and severity, their mean, per-corruption mean, CE per corruption (%),
    mCE and relative mCE over the 15 (None unless all 15 x 5 were scored), and the paper's mean top-1 over
    the 19 corruptions at severity 5 (None unless all 19 were scored at severity 5).
    """
    top1 = {c: {s: 100.0 * correct[c][s] / total[c][s] for s in sorted(total[c])} for c in total}
    errors = {c: {s: 1.0 - v / 100.0 for s, v in by_sev.items()} for c, by_sev in top1.items()}
    cells = [v for by_sev in top1.values() for v in by_sev.values()]
    ce = corruption_errors(errors)
    sev5 = [top1[c][5] for c in ALL_CORRUPTIONS if c in top1 and 5 in top1[c]]
    return {
        "top1": {c: {str(s): v for s, v in by_sev.items()} for c, by_sev in top1.items()},
        "n": {c: {str(s): int(total[c][s]) for s in sorted(total[c])} for c in total},
        "mean_top1": float(np.mean(cells)) if cells else None,
        "corruption_top1": {c: float(np.mean(list(by_sev.values()))) for c, by_sev in top1.items()},
        "ce": {c: 100.0 * v for c, v in ce.items()},
        "mce": mce(errors),
        "relative_mce": None if clean_top1 is None else relative_mce(errors, 1.0 - clean_top1 / 100.0),
        "severity5_mean_top1": float(np.mean(sev5)) if len(sev5) == len(ALL_CORRUPTIONS) else None,
        "severity5_mean_top1_15": (float(np.mean([top1[c][5] for c in CORRUPTIONS]))
                                   if all(c in top1 and 5 in top1[c] for c in CORRUPTIONS) else None),
    }
