"""Shape bias (model-vs-human's cue-conflict evaluation): the shipped 16-category index lists, the exact bias of a
model whose logits are built to decide given categories (mean-over-classes decision, shape == texture images left
out), the per-category counts, and the one-line errors of a wrong stimuli folder.

The oracle is model-vs-human's text (commit 79ed7cd): ``helper/human_categories.py:148-177`` (index lists),
``datasets/decision_mappings.py:30-52`` (mean probability per category), ``plotting/analyses.py:89-128``.
"""
from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from lk_ablate.analysis import load_preset, run_analyses
from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis.shape_bias import category_indices, decisions, stimuli, texture_category
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.base.results import read_results
from lk_ablate.cli import main
from lk_ablate.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

CATS = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog", "elephant",
        "keyboard", "knife", "oven", "truck")


def test_the_16_category_index_lists_are_model_vs_humans():
    """Counts, first and last index of every list of human_categories.py:148-177, transcribed exactly."""
    want = {"airplane": (1, 404, 404), "bear": (4, 294, 297), "bicycle": (2, 444, 671), "bird": (49, 8, 145),
            "boat": (5, 472, 914), "bottle": (7, 440, 907), "car": (3, 436, 817), "cat": (6, 281, 286),
            "chair": (4, 423, 857), "clock": (3, 409, 892), "dog": (109, 152, 268), "elephant": (2, 385, 386),
            "keyboard": (2, 508, 878), "knife": (1, 499, 499), "oven": (1, 766, 766), "truck": (8, 555, 867)}
    idx = category_indices()
    assert tuple(idx) == CATS
    assert {c: (len(v), v[0], v[-1]) for c, v in idx.items()} == want
    flat = [i for v in idx.values() for i in v]
    assert len(flat) == len(set(flat)) == 207 and all(0 <= i < 1000 for i in flat)
    assert idx["bird"][:5] == (8, 10, 11, 12, 13) and idx["truck"] == (555, 569, 656, 675, 717, 734, 864, 867)
    assert 192 not in idx["dog"] and 193 in idx["dog"]  # the hand-excluded WNIDs leave gaps
    meta = json.loads(resources.files("lk_ablate.analysis").joinpath("cue_conflict_categories.json").read_text())
    assert "model-vs-human" in meta["source"] and "MIT" in meta["license"]
    assert resources.files("lk_ablate.analysis").joinpath("cue_conflict_categories_LICENSE.txt").read_text() \
        .startswith("MIT License\n\nCopyright (c) Robert Geirhos 2021")


def test_texture_category_from_the_file_name():
    assert texture_category("airplane1-bicycle2.png") == "bicycle"
    assert texture_category("0003_s5n_s01_0_dog_00_dog10-bicycle1.png") == "bicycle"  # model-vs-human's names
    assert texture_category("bear10-bear3.png") == "bear"


def _logits_for(category: str) -> torch.Tensor:
    """Logits whose 16-category decision is ``category`` under the mean of class probabilities only: every class of
    ``category`` at 8; every dog class at 5 (dog's 109 classes hold the most total probability: a sum would pick
    dog); one cat class (281) at 9 (the single most probable class: a max would pick cat)."""
    z = torch.zeros(1000)
    z[list(category_indices()["dog"])] = 5.0
    z[281] = 9.0
    z[list(category_indices()[category])] = 8.0
    if category == "cat":
        z[281] = 9.0
    return z


def test_decision_is_the_mean_probability_of_the_category_classes():
    for c in CATS:
        assert decisions(_logits_for(c)[None]) == [c]
    probs = torch.softmax(_logits_for("knife"), 0)
    sums = {c: float(probs[list(v)].sum()) for c, v in category_indices().items()}
    maxes = {c: float(probs[list(v)].max()) for c, v in category_indices().items()}
    assert max(sums, key=sums.get) == "dog" and max(maxes, key=maxes.get) == "cat"  # the aggregation matters
    with pytest.raises(ConfigError, match="needs a 1,000-class ImageNet model; this one gives 10 outputs"):
        decisions(torch.zeros(1, 10))


class PlannedDecisions(nn.Module):
    """Reads the stimulus number stored in pixel (0, 0) (red + 256 * green, ImageNet-normalised) and returns the
    logits that make its planned category the decision."""

    def __init__(self, plan: list[str]) -> None:
        super().__init__()
        self.register_buffer("table", torch.stack([_logits_for(c) for c in plan]))
        self.num_classes = 1000

    def forward(self, x):
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3)
        std = torch.tensor(IMAGENET_STD).view(1, 3)
        rgb = (x[:, :, 0, 0] * std + mean) * 255
        number = (rgb[:, 0].round() + 256 * rgb[:, 1].round()).long()
        return self.table[number]


def make_stimuli(root, per_category: int = 80, same: int = 5, size: int = 8):
    """16 shape folders x ``per_category`` PNGs named <shape><n>-<texture><m>.png, the first ``same`` of each with
    texture == shape; every image carries its own number in pixel (0, 0). Returns [(shape, texture)] in the order
    the numbers were given (folder, then file name: the names sort in creation order here)."""
    rows = []
    for s in CATS:
        (root / s).mkdir(parents=True)
        others = [c for c in CATS if c != s]
        for i in range(per_category):
            t = s if i < same else others[i % 15]
            number = len(rows)
            img = np.zeros((size, size, 3), dtype=np.uint8)
            img[0, 0] = (number % 256, number // 256, 0)
            Image.fromarray(img).save(root / s / f"{s}{i // 9 + 1:02d}{i:03d}-{t}{i % 3 + 1}.png")
            rows.append((s, t))
    return rows


def _plan(rows):
    """Decide shape for every 3rd image, texture for every 3rd + 1, another category otherwise (same-category
    images: their one category, which counts for neither bias term since they are left out)."""
    plan = []
    for n, (s, t) in enumerate(rows):
        other = next(c for c in CATS if c not in (s, t))
        plan.append(s if n % 3 == 0 else t if n % 3 == 1 else other)
    return plan


@pytest.fixture(scope="module")
def released_layout(tmp_path_factory):
    """The released layout (16 x 80 PNGs, 5 per folder with shape == texture), generated once for the module."""
    root = tmp_path_factory.mktemp("stimuli") / "cue-conflict"
    return root, make_stimuli(root)


@pytest.mark.slow  # reads the 1,280 stimuli of the released layout
def test_shape_bias_of_planned_decisions_is_exact(released_layout):
    root, rows = released_layout
    plan = _plan(rows)
    out = run_analyses(PlannedDecisions(plan), {"shape_bias": {"root": str(root), "num_workers": 0,
                                                               "batch_size": 100}},
                       None, ModelConfig(num_classes=1000), protocol="paper")["shape_bias"]
    conflict = [(s, t, d) for (s, t), d in zip(rows, plan) if s != t]
    shape = sum(d == s for s, t, d in conflict)
    texture = sum(d == t for s, t, d in conflict)
    assert (len(conflict), shape, texture) == (1200, 400, 400)  # the plan's counts, independent of the code
    assert out["images"] == 1280 and out["conflict_images"] == 1200 and out["excluded_same_category"] == 80
    assert (out["shape_hits"], out["texture_hits"]) == (400, 400)
    assert out["shape_bias"] == 50.0
    assert out["shape_accuracy"] == pytest.approx(100 * 400 / 1280) and out["texture_accuracy"] == out[
        "shape_accuracy"]
    # per shape category, as model-vs-human's per-category analysis
    for c in CATS:
        cc = [(s, t, d) for s, t, d in conflict if s == c]
        sh, tx = sum(d == s for s, t, d in cc), sum(d == t for s, t, d in cc)
        got = out["categories"][c]
        assert (got["images"], got["conflict_images"], got["shape_hits"], got["texture_hits"]) == (80, 75, sh, tx)
        assert got["shape_bias"] == pytest.approx(100 * sh / (sh + tx))
    assert sum(out["decisions"].values()) == 1280
    assert out["decisions"] == {c: plan.count(c) for c in CATS}
    assert out["summary_scalars"] == {"shape_bias.shape_bias": 50.0,
                                      "shape_bias.shape_accuracy": pytest.approx(31.25),
                                      "shape_bias.texture_accuracy": pytest.approx(31.25)}


def test_same_category_images_are_left_out_of_the_bias(tmp_path):
    """Decide shape on every image of 16 x 4 stimuli (1 per folder with shape == texture): kept, the 16
    same-category images would count as shape AND texture hits (bias 64 / 80 = 80%); left out, it is exactly 100%."""
    root = tmp_path / "cc"
    rows = make_stimuli(root, per_category=4, same=1)
    section = {"shape_bias": {"root": str(root), "num_workers": 0, "check_layout": False}}
    out = run_analyses(PlannedDecisions([s for s, _ in rows]), section, None, ModelConfig(num_classes=1000),
                       protocol="paper")["shape_bias"]
    assert (out["images"], out["excluded_same_category"]) == (64, 16)
    assert (out["shape_hits"], out["texture_hits"], out["shape_bias"]) == (48, 0, 100.0)
    # texture on every image: bias 0
    out = run_analyses(PlannedDecisions([t for _, t in rows]), section, None, ModelConfig(num_classes=1000),
                       protocol="paper")["shape_bias"]
    assert (out["shape_hits"], out["texture_hits"], out["shape_bias"]) == (0, 48, 0.0)


def _check_error(root, match, check_layout=True):
    with pytest.raises(DataError, match=match) as e:
        stimuli(root, check_layout)
    assert "\n" not in str(e.value) and "git clone --depth 1 https://github.com/rgeirhos/texture-vs-shape" in \
        str(e.value)


def test_a_wrong_stimuli_folder_stops_with_one_line(tmp_path):
    _check_error(tmp_path / "nowhere", "cue-conflict stimuli not found")
    root = tmp_path / "cc"
    make_stimuli(root, per_category=2, same=0)
    for c in ("knife", "oven"):
        for f in (root / c).iterdir():
            f.unlink()
        (root / c).rmdir()
    _check_error(root, r"missing category folder\(s\) knife, oven")
    (root / "knife").mkdir()
    (root / "oven").mkdir()
    (root / "extra").mkdir()
    _check_error(root, r"unexpected folder\(s\) extra")
    (root / "extra").rmdir()
    _check_error(root, r"80 PNGs per category, found airplane 2, bear 2, .* knife 0, oven 0, truck 2 \(28 in all, "
                       r"1280 expected\)")
    assert len(stimuli(root, check_layout=False)) == 28  # a subset is fine without the layout check
    (root / "bear" / "notes.txt").write_text("x")
    _check_error(root, r"bear holds 1 file\(s\) that are not PNG images \(e.g. notes.txt\)", check_layout=False)
    (root / "bear" / "notes.txt").unlink()
    Image.new("RGB", (8, 8)).save(root / "bear" / "bear9-zebra1.png")
    _check_error(root, r"bear9-zebra1.png: file name names no texture category", check_layout=False)


def test_config_checks_and_non_imagenet_models(tmp_path):
    with pytest.raises(ConfigError, match="shape_bias.root is required"):
        section_config("shape_bias", {})
    with pytest.raises(DataError, match="cue-conflict stimuli not found"):  # checked when the section is built
        section_config("shape_bias", {"root": str(tmp_path / "missing")})
    assert load_preset("paper")["shape_bias"] == {"check_layout": True, "image_size": None}
    make_stimuli(tmp_path / "cc", per_category=1, same=0)
    ten = nn.Linear(3, 10)
    ten.num_classes = 10
    with pytest.raises(ConfigError, match="needs a 1,000-class ImageNet model .* this model predicts 10 classes"):
        run_analyses(ten, {"shape_bias": {"root": str(tmp_path / "cc"), "check_layout": False}}, None,
                     ModelConfig(num_classes=10))


@pytest.mark.slow
def test_analyze_shape_bias_cli(tmp_path, capsys):
    """`lk_ablate analyze shape_bias` on a registered model (random weights, 32 px stimuli, a subset)."""
    make_stimuli(tmp_path / "cc", per_category=2, same=1, size=32)
    rc = main(["analyze", "shape_bias", "--model.model_name", "convnext_demo", "--model.num_classes", "1000",
               "--model.kernel_size", "3", "--preset",
               "paper", "--shape_bias.root", str(tmp_path / "cc"), "--shape_bias.check_layout", "false",
               "--shape_bias.num_workers", "0", "--results_path", str(tmp_path / "r.robustness.json")])
    assert rc == 0
    assert "shape_bias: shape_bias.shape_bias" in capsys.readouterr().out
    entry = read_results(tmp_path / "r.robustness.json")["analyses"]["shape_bias"]
    assert entry["images"] == 32 and entry["conflict_images"] == 16 and entry["protocol"] == "paper"
    assert sum(entry["decisions"].values()) == 32
    assert (tmp_path / "r.robustness.shape_bias.png").is_file()
