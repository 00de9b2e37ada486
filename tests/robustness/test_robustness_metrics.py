"""Class masks against the official index lists, and every metric formula on hand-made inputs with answers
worked out by hand (not by calling the code under test)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_robustness_support import TIMM_INFO, benchmark_wnids, imagenet_wnids, official_indices

from lk_ablate.base.errors import ConfigError
from lk_ablate.robustness import metrics as M
from lk_ablate.robustness.benchmarks import C_PRESETS, class_indices, class_mask, load_wnids, resolve_corruptions

# hendrycks/robustness README (commit 76d9393), "AlexNet ImageNet-C Error", column "Average", typed again here.
README_AVERAGES = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500, "speckle_noise": 0.845388, "gaussian_blur": 0.787108,
    "spatter": 0.717512, "saturate": 0.658248,
}


# --- wnids and masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "r", "o"])
def test_mask_indices_equal_official_lists(name):
    ours = class_indices(f"imagenet_{name}")
    official = official_indices(name)
    assert len(official) == 200 and ours == official  # all 200, in order
    mask = class_mask(f"imagenet_{name}")
    assert mask.dtype == torch.bool and mask.shape == (1000,) and int(mask.sum()) == 200
    assert torch.nonzero(mask).flatten().tolist() == official


def test_reference_facts_about_mask_ends():
    # reference.md: first and last indices of each mask.
    assert official_indices("a")[:5] == [6, 11, 13, 15, 17] and official_indices("a")[-4:] == [984, 986, 987, 988]
    assert official_indices("r")[:10] == [1, 2, 4, 6, 8, 9, 11, 13, 22, 23]
    assert official_indices("r")[-5:] == [967, 980, 981, 983, 988]
    assert official_indices("o")[:5] == [1, 51, 70, 79, 89] and official_indices("o")[-4:] == [980, 987, 988, 996]


@pytest.mark.parametrize("name", ["imagenet_1k", "imagenet_a", "imagenet_r", "imagenet_o"])
def test_packaged_wnid_lists(name):
    ours = list(load_wnids(name))
    assert ours == sorted(ours) and len(set(ours)) == len(ours)
    if name == "imagenet_1k":
        assert ours == imagenet_wnids() and len(ours) == 1000
    elif name == "imagenet_o":
        assert ours == benchmark_wnids("o")
    else:
        assert ours == (TIMM_INFO / f"{name}_synsets.txt").read_text().split() == benchmark_wnids(name[-1])


# --- top-1 over masked logits -------------------------------------------------------------------------------
def test_masked_top1_hand_made():
    a = official_indices("a")
    logits = torch.zeros(4, 1000)
    logits[0, 0] = 9.0; logits[0, a[0]] = 1.0           # best class outside the mask; masked best is label 0
    logits[1, a[5]] = 3.0; logits[1, 500] = 2.0         # label 5
    logits[2, a[7]] = 5.0; logits[2, a[3]] = 4.0        # label 7, target 3: wrong
    logits[3, :] = -1.0                                 # all tied: the first masked column (label 0) wins
    target = torch.tensor([0, 5, 3, 1])
    masked = M.masked_logits(logits, class_mask("imagenet_a"))
    assert masked.shape == (4, 200)
    assert M.topk_correct(masked, target, (1,))[1].tolist() == [True, True, False, False]


def test_masked_logits_rejects_non_imagenet_heads():
    with pytest.raises(ConfigError, match="1000-class"):
        M.masked_logits(torch.zeros(2, 10), class_mask("imagenet_r"))


def test_topk_hand_made():
    logits = torch.tensor([[0.0, 5, 4, 3, 2, 1, -1], [9.0, 0, 1, 2, 3, 4, 5]])
    out = M.topk_correct(logits, torch.tensor([6, 1]), (1, 5))
    assert out[1].tolist() == [False, False]
    assert out[5].tolist() == [False, False]  # class 6 is 7th for row 0; class 1 is 7th for row 1
    out = M.topk_correct(logits, torch.tensor([5, 3]), (1, 5))  # 5th best in each row
    assert out[1].tolist() == [False, False] and out[5].tolist() == [True, True]
    out = M.topk_correct(logits, torch.tensor([1, 2]), (1, 5))  # best of row 0; 6th of row 1
    assert out[1].tolist() == [True, False] and out[5].tolist() == [True, False]


# --- ImageNet-O ---------------------------------------------------------------------------------------------
def test_msp_score_hand_made():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]], dtype=torch.float64)
    assert M.msp_score(logits).tolist() == pytest.approx([-0.5, -0.75, -0.8], abs=1e-15)


def test_aupr_hand_made():
    # Ranked by score: + - + - + -  -> precisions at the positives 1/1, 2/3, 3/5.
    assert M.ood_aupr(in_scores=[0.6, 0.3, 0.1], out_scores=[0.9, 0.5, 0.2]) == pytest.approx(
        100 * (1 + 2 / 3 + 3 / 5) / 3, abs=1e-12)
    # A tie between a positive and a negative is one threshold: precision 2/3 at recall 1.
    assert M.ood_aupr(in_scores=[0.5, 0.1], out_scores=[0.5, 0.5]) == pytest.approx(100 * 2 / 3, abs=1e-12)
    # Perfect separation.
    assert M.ood_aupr(in_scores=[-0.9, -0.8], out_scores=[-0.1]) == pytest.approx(100.0)


# --- ImageNet-C ---------------------------------------------------------------------------------------------
def test_alexnet_tables():
    assert set(M.ALEXNET_ERRORS) == set(M.ALL_CORRUPTIONS) == set(README_AVERAGES)
    assert M.ALEXNET_MEAN_ERRORS == README_AVERAGES
    for c, per_sev in M.ALEXNET_ERRORS.items():  # the published average is the mean of the five severities
        assert len(per_sev) == 5 and abs(sum(per_sev) / 5 - README_AVERAGES[c]) < 5e-7, c
    assert M.ALEXNET_CLEAN_ERROR == 0.4345
    assert len(M.CORRUPTIONS) == 15 and len(M.EXTRA_CORRUPTIONS) == 4


def test_mce_and_relative_mce_with_a_hand_made_reference():
    ref = {"a": (0.5,) * 5, "b": (0.8,) * 5}
    errors = {"a": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}, "b": {s: 0.4 for s in range(1, 6)}}
    # CE_a = 1.5 / 2.5 = 0.6, CE_b = 2.0 / 4.0 = 0.5 -> mCE 55.
    assert M.corruption_errors(errors, ref) == pytest.approx({"a": 0.6, "b": 0.5})
    assert M.mce(errors, ("a", "b"), ref) == pytest.approx(55.0)
    # Relative, clean 0.05 vs reference clean 0.3: (1.5 - 0.25) / (2.5 - 1.5) = 1.25, (2.0 - 0.25) / (4.0 - 1.5) = 0.7.
    assert M.relative_mce(errors, 0.05, ("a", "b"), ref, 0.3) == pytest.approx(97.5)
    # A corruption without all five severities has no CE, and then no mCE.
    partial = {"a": {1: 0.1, 2: 0.2}, "b": errors["b"]}
    assert M.corruption_errors(partial, ref) == pytest.approx({"b": 0.5})
    assert M.mce(partial, ("a", "b"), ref) is None and M.relative_mce(partial, 0.05, ("a", "b"), ref, 0.3) is None


def test_mce_of_alexnet_itself_is_100():
    errors = {c: dict(zip(M.SEVERITIES, v)) for c, v in M.ALEXNET_ERRORS.items()}
    assert M.mce(errors) == pytest.approx(100.0, abs=1e-12)
    assert M.relative_mce(errors, M.ALEXNET_CLEAN_ERROR) == pytest.approx(100.0, abs=1e-12)


def test_mce_with_the_alexnet_table_hand_worked():
    # Error 0.5 everywhere: CE_c = 2.5 / (5 * avg_c); relative with clean error 0.2: 0.3 / (avg_c - 0.4345).
    errors = {c: {s: 0.5 for s in M.SEVERITIES} for c in M.ALL_CORRUPTIONS}
    fifteen = list(README_AVERAGES)[:15]
    assert M.mce(errors) == pytest.approx(100 * np.mean([0.5 / README_AVERAGES[c] for c in fifteen]), rel=1e-6)
    assert M.relative_mce(errors, 0.2) == pytest.approx(
        100 * np.mean([0.3 / (README_AVERAGES[c] - 0.4345) for c in fifteen]), rel=1e-6)
    # gaussian_noise alone, by hand: 0.5 / 0.886428 = 0.5640616...
    assert M.corruption_errors({"gaussian_noise": errors["gaussian_noise"]})["gaussian_noise"] == pytest.approx(
        0.5640616, abs=1e-7)


def test_summarize_imagenet_c_full_and_partial():
    total = {c: {s: 50 for s in M.SEVERITIES} for c in M.ALL_CORRUPTIONS}
    correct = {c: {s: 10 * s - 5 for s in M.SEVERITIES} for c in M.ALL_CORRUPTIONS}  # 5, 15, 25, 35, 45 of 50
    out = M.summarize_imagenet_c(correct, total, clean_top1=80.0)
    assert out["top1"]["fog"] == {"1": 10.0, "2": 30.0, "3": 50.0, "4": 70.0, "5": 90.0}
    assert out["n"]["fog"]["3"] == 50
    assert out["mean_top1"] == pytest.approx(50.0) and out["corruption_top1"]["snow"] == pytest.approx(50.0)
    assert out["severity5_mean_top1"] == pytest.approx(90.0) and out["severity5_mean_top1_15"] == pytest.approx(90.0)
    # Errors 0.9 .. 0.1 sum to 2.5 per corruption.
    assert out["mce"] == pytest.approx(100 * np.mean([2.5 / (5 * README_AVERAGES[c]) for c in list(README_AVERAGES)[:15]]),
                                       rel=1e-6)
    assert out["relative_mce"] == pytest.approx(
        100 * np.mean([(2.5 - 5 * 0.2) / (5 * README_AVERAGES[c] - 5 * 0.4345) for c in list(README_AVERAGES)[:15]]),
        rel=1e-6)
    # Severity 5 only (the paper's preset): no mCE, but the 19-corruption mean at severity 5.
    sev5 = M.summarize_imagenet_c({c: {5: 20} for c in M.ALL_CORRUPTIONS}, {c: {5: 50} for c in M.ALL_CORRUPTIONS})
    assert sev5["severity5_mean_top1"] == pytest.approx(40.0) and sev5["mce"] is None and sev5["ce"] == {}
    # 18 of the 19 corruptions at severity 5: the paper's number is undefined.
    part = M.summarize_imagenet_c({c: {5: 20} for c in M.ALL_CORRUPTIONS[:-1]}, {c: {5: 50} for c in M.ALL_CORRUPTIONS[:-1]})
    assert part["severity5_mean_top1"] is None and part["severity5_mean_top1_15"] == pytest.approx(40.0)


def test_c_presets_and_subsets():
    assert C_PRESETS["severity5"] == (M.ALL_CORRUPTIONS, (5,))
    assert resolve_corruptions("full") == (M.ALL_CORRUPTIONS, (1, 2, 3, 4, 5))
    assert resolve_corruptions("severity5", ["fog", "gaussian_noise"], [3, 1]) == (("gaussian_noise", "fog"), (1, 3))
    with pytest.raises(ConfigError, match="unknown ImageNet-C corruptions"):
        resolve_corruptions("full", ["fogg"])
    with pytest.raises(ConfigError, match="severities"):
        resolve_corruptions("full", None, [6])
    with pytest.raises(ConfigError, match="preset"):
        resolve_corruptions("everything")
