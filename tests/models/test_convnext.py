"""ConvNeXt at any kernel size: exact parameter counts, equality with timm, checkpoint loading, bad sizes."""
import json
from pathlib import Path

import pytest
import torch
import timm

import lk_ablate
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.models.checkpoints import load_checkpoint

DATA = Path(__file__).resolve().parents[1] / "assets"

# sum(p.numel()) of timm's convnext_tiny(kernel_sizes=k) (timm 1.0.31; source: timm/models/convnext.py of
# https://github.com/huggingface/pytorch-image-models). k=7 is ConvNeXt-T's published 28.6 M; another k changes only
# the depthwise weights, by 6624 (k^2 - 49) where 6624 = sum of depth x dim = 3*96 + 3*192 + 9*384 + 3*768.
TIMM_PARAMS = {3: 28_324_168, 7: 28_589_128, 13: 29_384_008, 31: 34_630_216, 51: 45_493_576}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_models_and_configs():
    names = lk_ablate.list_models()
    assert names[0] == "convnext_demo" and "convnext_tiny" in names
    cfg = lk_ablate.get_model_config("convnext_tiny")
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.resize_size == 256
    assert cfg.interpolation == "bicubic" and cfg.mean == (0.485, 0.456, 0.406)
    m = lk_ablate.create_model("convnext_tiny", kernel_size=3, num_classes=7)
    assert m.model_config.num_classes == 7 and m.model_name == "convnext_tiny"


@pytest.mark.parametrize("k", [k if k == 7 else pytest.param(k, marks=pytest.mark.slow) for k in sorted(TIMM_PARAMS)])
def test_convnext_tiny_parameter_count_equals_timm(k):
    assert TIMM_PARAMS[k] == TIMM_PARAMS[7] + 6624 * (k * k - 49)  # the table is consistent with the count above
    assert n_params(lk_ablate.create_model("convnext_tiny", kernel_size=k)) == TIMM_PARAMS[k]


def test_per_stage_kernel_list():
    m = lk_ablate.create_model("convnext_tiny", kernel_size=[3, 7, 13, 31])
    assert m.kernel_sizes == (3, 7, 13, 31)
    assert [s.blocks[0].conv_dw.weight.shape[-1] for s in m.stages] == [3, 7, 13, 31]
    t = timm.create_model("convnext_tiny", kernel_sizes=(3, 7, 13, 31))
    assert n_params(m) == n_params(t)


@pytest.mark.parametrize("k", [3] + [pytest.param(k, marks=pytest.mark.slow) for k in (13, 51, [5, 9, 15, 21])])
def test_outputs_equal_timm_with_same_weights(k):
    torch.manual_seed(0)
    ours = lk_ablate.create_model("convnext_tiny", kernel_size=k).eval()
    ref = timm.create_model("convnext_tiny", kernel_sizes=tuple(k) if isinstance(k, list) else k).eval()
    ref.load_state_dict(ours.state_dict())  # strict: identical key names and shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("k", [3, 13])
def test_demo_model_equals_timm_patch2_convnext(k):
    """convnext_demo is timm's ConvNeXt at depths 2, dims 32..256, patch 2 (a downsampling first stage, stride 32)."""
    torch.manual_seed(0)
    ours = lk_ablate.create_model("convnext_demo", kernel_size=k).eval()
    ref = timm.models.convnext.ConvNeXt(num_classes=10, depths=(2, 2, 2, 2), dims=(32, 64, 128, 256), patch_size=2,
                                        kernel_sizes=k).eval()
    assert n_params(ours) == n_params(ref) == {3: 1_590_602, 13: 1_744_202}[k]
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert ours.forward_features(x).shape == (2, 256, 1, 1)
    assert ((a - b).norm() / b.norm()).item() < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name,k", [("convnext_tiny", 3), ("convnext_tiny", 31), ("convnext_demo", 13)])
def test_forward_backward_small_resolution(name, k):
    m = lk_ablate.create_model(name, kernel_size=k, num_classes=10, drop_path_rate=0.1)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 10)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.stages[-1].blocks[-1].conv_dw.weight.grad.abs().sum() > 0


def test_state_dict_keys_match_timm_list():
    ref = json.loads((DATA / "convnext_tiny_timm_keys.json").read_text())["entries"]
    ours = {k: list(v.shape) for k, v in lk_ablate.create_model("convnext_tiny", kernel_size=7).state_dict().items()}
    assert len(ref) == len(ours) == 182
    assert ours == {k: s for k, s in ref}


def test_official_keys_convert_to_ours():
    ref = json.loads((DATA / "convnext_tiny_official_keys.json").read_text())["entries"]
    assert len(ref) == 182
    official = {k: torch.zeros(s) for k, s in ref}
    model = lk_ablate.create_model("convnext_tiny", kernel_size=7)
    converted = model.convert_state_dict(official)
    assert {k: list(v.shape) for k, v in converted.items()} == {k: list(v.shape) for k, v in
                                                                model.state_dict().items()}
    load_checkpoint(model, {"model": official})  # strict


def test_official_checkpoint_reproduces_official_outputs(tmp_path):
    blob = torch.load(DATA / "convnext_official_small.pth", weights_only=False)
    from lk_ablate.models.convnext import ConvNeXt

    model = ConvNeXt(7, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5).eval()
    path = tmp_path / "official.pth"
    torch.save({"model": blob["model"]}, path)
    load_checkpoint(model, path)
    with torch.no_grad():
        y = model(blob["x"])
    assert (torch.linalg.norm(y - blob["y"]) / torch.linalg.norm(blob["y"])).item() < 1e-6


@pytest.mark.slow
def test_timm_state_dict_and_lightning_checkpoint_load():
    t = timm.create_model("convnext_tiny", kernel_sizes=13)
    ours = lk_ablate.create_model("convnext_tiny", kernel_size=13)
    load_checkpoint(ours, t.state_dict())
    assert torch.equal(ours.stages[2].blocks[4].conv_dw.weight, t.stages[2].blocks[4].conv_dw.weight)
    sd = {"state_dict": {f"model.{k}": v for k, v in t.state_dict().items()}}
    load_checkpoint(lk_ablate.create_model("convnext_tiny", kernel_size=13), sd)


def test_wrong_kernel_checkpoint_is_a_clear_error():
    src = lk_ablate.create_model("convnext_demo", kernel_size=3).state_dict()
    with pytest.raises(DataError, match="wrong kernel size or variant"):
        load_checkpoint(lk_ablate.create_model("convnext_demo", kernel_size=7), src)


@pytest.mark.parametrize("k,msg", [
    (4, "must be odd"), (0, "must be >= 1"), (-3, "must be >= 1"), ([3, 5, 7], "one size per stage \\(4\\), got 3"),
    ([3, 5, 7, 8], "must be odd"), ("7", "odd int or a list"), (7.0, "odd int or a list"), (True, "odd int"),
])
def test_invalid_kernel_sizes_fail_at_build(k, msg):
    with pytest.raises(ConfigError, match=msg):
        lk_ablate.create_model("convnext_tiny", kernel_size=k)


def test_unknown_model_name_lists_registered():
    with pytest.raises(ConfigError, match="registered models: .*convnext_tiny"):
        lk_ablate.create_model("convnext_huge")
