"""Kernel attention distance and feature-map variance against values worked out by hand."""
import math

import pytest
import torch
import torch.nn as nn

import lk_ablate
from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.features import feature_modules
from lk_ablate.analysis.features import run as run_features
from lk_ablate.analysis.kernel_distance import depthwise_convs, kernel_attention_distance, tap_distances
from lk_ablate.base.errors import ConfigError
from lk_ablate.models.registry import ModelConfig


def _one_hot(k, i, j, value=1.0):
    w = torch.zeros(k, k)
    w[i, j] = value
    return w


@pytest.mark.parametrize("k,i,j,expected", [
    (3, 1, 1, 0.0),                       # centre tap
    (3, 0, 0, 1.0),                       # corner: the normalising distance
    (5, 0, 2, 2 / (2 * math.sqrt(2))),    # top middle of a 5x5: 2 / (2 sqrt 2)
    (31, 15, 30, 15 / (15 * math.sqrt(2))),
    (7, 6, 6, 1.0),
])
def test_one_hot_kernel_distance(k, i, j, expected):
    for value in (1.0, -3.5):  # |w|-weighted and scale-free
        d = kernel_attention_distance(_one_hot(k, i, j, value))
        assert d.item() == pytest.approx(expected, abs=1e-6)


def test_uniform_3x3_and_released_script_form():
    # taps: centre 0, 4 edges at 1/sqrt(2) (distance 1 over R = sqrt 2), 4 corners at 1
    w = torch.ones(1, 1, 3, 3)
    assert kernel_attention_distance(w).item() == pytest.approx((4 / math.sqrt(2) + 4) / 9, abs=1e-6)
    # the released script sums |w| d without dividing by sum |w|: doubling the weights doubles it
    assert kernel_attention_distance(2 * w, normalize_weights=False).item() == pytest.approx(
        2 * (4 / math.sqrt(2) + 4), abs=1e-5)
    assert kernel_attention_distance(torch.zeros(2, 1, 3, 3)).tolist() == [0.0, 0.0]


def test_tap_distances_and_1x1_refused():
    d = tap_distances(5, 5)
    assert d[2, 2] == 0 and d[0, 0] == pytest.approx(1.0) and d[2, 4] == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ConfigError, match="1x1"):
        tap_distances(1, 1)


def test_kernel_distance_on_demo_model_sorted_per_layer():
    model = lk_ablate.create_model("convnext_demo", kernel_size=[3, 5, 7, 9])
    with torch.no_grad():
        for conv in [m for _, m in depthwise_convs(model)]:
            conv.weight.zero_()
            conv.weight[:, 0, 0, 0] = torch.arange(conv.out_channels, dtype=torch.float)  # corner: distance 1
            k = conv.kernel_size[0]
            conv.weight[0, 0, k // 2, k // 2] = 1.0  # channel 0 at the centre: distance 0
    out = run_analyses(model, {"kernel_distance": {}}, None)["kernel_distance"]
    layers = out["layers"]
    assert [lay["kernel_size"][0] for lay in layers] == [3, 3, 5, 5, 7, 7, 9, 9]
    for lay in layers:
        assert lay["sorted"][0] == 0.0 and lay["sorted"][1:] == [1.0] * (lay["channels"] - 1)
        assert lay["sorted"] == sorted(lay["sorted"])


def test_timm_depthwise_kernels_found():
    import timm

    m = timm.create_model("test_convnext")
    convs = depthwise_convs(m)
    assert convs and all(c.groups == c.in_channels and c.kernel_size == (7, 7) for _, c in convs)
    with pytest.raises(ConfigError, match="no depthwise"):
        depthwise_convs(m, include="nothing.*")


class Maps(nn.Module):
    """Records two fixed 'layers': the input and the input doubled."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Identity(), nn.Identity()

    def forward(self, x):
        return self.b(2 * self.a(x))


def test_feature_variance_per_image_and_batch_mean_by_hand():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3, 3)
    data = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(2))]
    per = run_features(Maps(), section_config("feature_variance", {"modules": ["a", "b"], "max_images": 6}), data)
    expected = x.flatten(2).var(dim=2).mean().item()  # unbiased spatial variance, mean over images and channels
    assert [lay["variance"] for lay in per["layers"]] == pytest.approx([expected, 4 * expected], rel=1e-6)
    assert [lay["depth"] for lay in per["layers"]] == [0.0, 1.0]
    bm = run_features(Maps(), section_config("feature_variance", 
        {"modules": ["a"], "max_images": 6, "reduction": "batch_mean", "batch_mean_size": 3}), data)
    groups = [x[:3].mean(0), x[3:].mean(0)]  # exact groups of 3 although the batches are 4 + 2
    expected_bm = sum(g.flatten(1).var(dim=1).mean().item() for g in groups) / 2
    assert bm["layers"][0]["variance"] == pytest.approx(expected_bm, rel=1e-6)


def test_feature_variance_layers_of_demo_convnext():
    model = lk_ablate.create_model("convnext_demo").eval()
    mods = feature_modules(model)
    assert len(mods) == 1 + 8 + 4  # stem, 2+2+2+2 blocks, 4 downsamples (a patch-2 stem's first stage has one)
    out = run_features(model, section_config("feature_variance", {"max_images": 4}),
                       [(torch.randn(4, 3, 32, 32), torch.zeros(4))])
    names = [lay["name"] for lay in out["layers"]]
    assert names[:2] == ["stem", "stages.0.downsample"] and names[4] == "stages.1.downsample"
    assert names[-1] == "stages.3.blocks.1"
    assert len(names) == 13 and out["layers"][-1]["depth"] == 1.0


def test_feature_variance_on_timm_vit_tokens():
    import timm

    vit = timm.create_model("test_vit").eval()
    x = torch.randn(2, 3, 160, 160)
    out = run_features(vit, section_config("feature_variance", {"max_images": 2}), [(x, torch.zeros(2))])
    # patch + position embedding, then each block's attention and MLP residual outputs, recomputed here from the
    # block's formula (h + ls(attn(norm(h))), h + ls(mlp(norm(h)))); variance over the patch tokens (class token
    # left out), unbiased, mean over channels and images
    with torch.no_grad():
        h = vit._pos_embed(vit.patch_embed(x))
        states = [h]
        for blk in vit.blocks:
            h = h + blk.ls1(blk.attn(blk.norm1(h)))
            states.append(h)
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
            states.append(h)
    expected = [s[:, vit.num_prefix_tokens:].var(dim=1).mean().item() for s in states]
    assert len(out["layers"]) == 1 + 2 * len(vit.blocks)
    assert [lay["variance"] for lay in out["layers"]] == pytest.approx(expected, rel=1e-5)


def test_feature_variance_config_errors():
    with pytest.raises(ConfigError, match="reduction"):
        section_config("feature_variance", {"reduction": "mean"})
    with pytest.raises(ConfigError, match="not in the model"):
        run_features(Maps(), section_config("feature_variance", {"modules": ["zz"]}), [(torch.zeros(2, 1, 2, 2), None)],
                     ModelConfig())
