"""The model contract (lk_ablate.models.contract.AblationModel) over every registered model x kernel sizes.

Fast tier: ConvNeXt at full size, RepLKNet variants at 1/8 width (same class, depths, kernels, small kernel and
ratios, read from a meta-device build of the registered variant), 64 px inputs. Slow tier: every variant at full
size (XL: 335 M parameters).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from lk_ablate.models import create_model, get_model_config, list_models, stage_kernel_sizes
from lk_ablate.models.checkpoints import load_checkpoint
from lk_ablate.models.contract import AblationModel, ResidualUnit, unit_parts, unit_stages, units
from lk_ablate.models.convnext import ConvNeXt
from lk_ablate.models.layers import LargeKernelDWConv
from lk_ablate.models.replknet import ConvFFN, RepLKBlock, RepLKNet

# Official depths (units per stage): a newly registered model must be added here, with its published depths.
DEPTHS = {"convnext_demo": (2, 2, 2, 2), "convnext_tiny": (3, 3, 9, 3), "replknet_31b": (2, 2, 18, 2),
          "replknet_31l": (2, 2, 18, 2), "replknet_xl": (2, 2, 18, 2), "replknet_3b": (2, 2, 18, 2)}
DEFAULT_KERNELS = {"convnext_demo": (7,) * 4, "convnext_tiny": (7,) * 4, "replknet_31b": (31, 29, 27, 13),
                   "replknet_31l": (31, 29, 27, 13), "replknet_xl": (27, 27, 27, 13), "replknet_3b": (3,) * 4}
IMG = 64


def _cases() -> list:
    """(name, kernel): kernels 3 and 13 and the variant's default (None), without duplicates; the fast tier runs
    the defaults of ConvNeXt-T and RepLKNet-31B, the slow tier the rest."""
    out = []
    for name in sorted(DEPTHS):
        default = DEFAULT_KERNELS[name]
        out += [pytest.param(name, k, marks=pytest.mark.slow) for k in (3, 13) if default != (k,) * 4]
        out += [(name, None) if name in ("convnext_tiny", "replknet_31b") else
                pytest.param(name, None, marks=pytest.mark.slow)]
    return out


def _kwargs(name: str, kernel: int | None) -> dict:
    # Kernel 3 leaves no room for RepLKNet's parallel 5x5: without it, as RepLKNet-3B.
    return {"small_kernel": None} if name.startswith("replknet") and kernel == 3 else {}


def _build(name: str, kernel: int | None, reduced: bool = True, seed: int = 0) -> nn.Module:
    """The registered variant; with ``reduced``, RepLKNet at 1/8 width with the variant's other settings."""
    torch.manual_seed(seed)
    kw = _kwargs(name, kernel)
    if not (reduced and name.startswith("replknet")):
        return create_model(name, kernel_size=kernel, **kw)
    with torch.device("meta"):
        full = create_model(name, kernel_size=kernel, **kw)
    channels = [s.blocks[0].pw1.conv.in_channels for s in full.stages]
    dw_ratio = full.stages[0].blocks[0].pw1.conv.out_channels / channels[0]
    model = RepLKNet(full.kernel_sizes, layers=[len(s.units) for s in full.stages],
                     channels=[c // 8 for c in channels], small_kernel=full.small_kernel, dw_ratio=dw_ratio)
    model.model_config, model.model_name = full.model_config, name
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _input(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def test_every_registered_model_is_covered():
    assert list_models() == sorted(DEPTHS)


@pytest.mark.parametrize("name,kernel", _cases())
def test_contract(name: str, kernel: int | None):
    model = _build(name, kernel)
    assert isinstance(model, AblationModel)
    expected_k = DEFAULT_KERNELS[name] if kernel is None else (kernel,) * 4
    assert model.kernel_sizes == expected_k == stage_kernel_sizes(expected_k)
    assert model.model_config is get_model_config(name) and model.model_name == name

    # units: the official depth, their stages, and the large kernels each stage was configured with
    depths = DEPTHS[name]
    assert len(model.blocks()) == sum(depths) and units(model) == model.blocks()
    assert model.block_stages() == [s for s, d in enumerate(depths) for _ in range(d)] == unit_stages(model)
    convs = model.large_kernel_convs()
    assert all(type(c) is LargeKernelDWConv for c in convs)
    assert [c.kernel_size for c in convs] == [(expected_k[s],) * 2 for s in model.block_stages()]

    # forward: shapes, finite, forward == forward_head(forward_features); every unit runs once, shape-preserving
    x = _input()
    calls: list[tuple[int, bool]] = []
    hooks = [u.register_forward_hook(lambda m, i, o, j=j: calls.append((j, i[0].shape == o.shape)) or None)
             for j, u in enumerate(units(model))]
    feats = model.forward_features(x)
    for h in hooks:
        h.remove()
    assert calls == [(j, True) for j in range(sum(depths))]
    assert feats.shape == (2, model.num_features, IMG // 32, IMG // 32)
    logits = model.forward_head(feats)
    assert logits.shape == (2, model.num_classes) and model.num_classes == get_model_config(name).num_classes
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert torch.isfinite(logits).all()
    assert torch.equal(model(x), logits)

    # every parameter gets a finite, non-zero gradient
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    # state-dict round trip through the checkpoint loader (convert_state_dict is the identity on our keys)
    model.eval()
    sd = model.state_dict()
    assert model.convert_state_dict(sd).keys() == sd.keys()
    other = _build(name, kernel, seed=1).eval()
    assert not torch.equal(other(x), model(x))
    load_checkpoint(other, {"model": sd}, strict=True)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_layer_decay_ids_monotone_in_depth(name: str):
    # ids depend on names and structure only: RepLKNet at full size on the meta device (ConvNeXt's init needs data)
    with torch.device("meta" if name.startswith("replknet") else "cpu"):
        model = create_model(name, kernel_size=3, **_kwargs(name, 3))
    n = model.num_layer_decay_ids
    ids = {k: model.layer_decay_id(k) for k, _ in model.named_parameters()}
    assert sorted(set(ids.values())) == list(range(n))  # every group used, none empty
    name_of = {id(p): k for k, p in model.named_parameters()}
    per_unit = [{ids[name_of[id(p)]] for p in u.parameters()} for u in model.blocks()]
    assert all(len(g) == 1 for g in per_unit)  # a unit's parameters share one group
    unit_ids = [min(g) for g in per_unit]
    assert unit_ids == sorted(unit_ids) and unit_ids[0] == 1 and unit_ids[-1] == n - 2
    stem = [v for k, v in ids.items() if k.startswith("stem.")]
    head = [v for k, v in ids.items() if k.startswith(("head.", "norm."))]
    assert set(stem) == {0} and set(head) == {n - 1}


def test_convnext_layer_decay_equals_official_at_27_blocks():
    """facebookresearch/ConvNeXt optim_factory.get_num_layer_for_convnext (written for depths 3-3-27-3), our keys."""
    m = ConvNeXt(3, depths=(3, 3, 27, 3), dims=(8, 16, 32, 64), num_classes=5)
    official = {"downsample_layers.0.0.weight": 0, "stages.0.2.gamma": 1, "downsample_layers.1.1.weight": 2,
                "stages.1.0.dwconv.weight": 2, "downsample_layers.2.0.bias": 3, "stages.2.2.pwconv1.weight": 3,
                "stages.2.3.norm.weight": 4, "stages.2.26.pwconv2.bias": 11, "downsample_layers.3.1.weight": 12,
                "stages.3.2.gamma": 12, "norm.weight": 13, "head.bias": 13}
    ours = m.convert_state_dict({k: torch.zeros(1) for k in official})
    assert list(ours) == ["stem.0.weight", "stages.0.blocks.2.gamma", "stages.1.downsample.1.weight",
                          "stages.1.blocks.0.conv_dw.weight", "stages.2.downsample.0.bias",
                          "stages.2.blocks.2.mlp.fc1.weight", "stages.2.blocks.3.norm.weight",
                          "stages.2.blocks.26.mlp.fc2.bias", "stages.3.downsample.1.weight",
                          "stages.3.blocks.2.gamma", "head.norm.weight", "head.fc.bias"]
    assert [m.layer_decay_id(k) for k in ours] == list(official.values())
    assert m.num_layer_decay_ids == 14
    tiny = create_model("convnext_tiny")  # 9 blocks in stage 2: groups 3, 4, 5, then stage 3 and the head
    assert tiny.num_layer_decay_ids == 8
    assert [tiny.layer_decay_id(f"stages.2.blocks.{j}.gamma") for j in range(9)] == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert tiny.layer_decay_id("stages.3.downsample.1.weight") == 6 and tiny.layer_decay_id("head.fc.weight") == 7


def test_contract_holds_for_any_stage_count():
    """isinstance must not raise (Python 3.11 evaluates the Protocol's properties) and the groups stay contiguous."""
    for m in (ConvNeXt(3, depths=(1, 2), dims=(8, 16), num_classes=5),
              RepLKNet(5, layers=(1, 2), channels=(8, 16), small_kernel=3, num_classes=5)):
        assert isinstance(m, AblationModel) and m.num_layer_decay_ids == 4
        assert sorted({m.layer_decay_id(k) for k, _ in m.named_parameters()}) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["convnext_demo", "replknet_31b"])
def test_grad_checkpointing_recomputes_and_gives_equal_gradients(name: str):
    a = _build(name, 13)
    b = copy.deepcopy(a)
    b.set_grad_checkpointing(True)
    x = _input()
    runs = []
    unit, forward = b.blocks()[0], b.blocks()[0].forward  # counted by a wrapper: hooks do not fire in recomputation
    unit.forward = lambda t: (runs.append(1), forward(t))[1]
    for m in (a, b):
        m(x).square().mean().backward()
    assert len(runs) == 2  # forward, then the recomputation in backward
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert _rel(q.grad, p.grad) <= 1e-6, n
    b.set_grad_checkpointing(False)
    runs.clear()
    b(x).sum().backward()
    assert len(runs) == 1


def test_replknet_unit_is_its_pair_and_keys_are_official():
    m = _build("replknet_31b", None)
    assert len([k for k in m.state_dict() if ".units." in k]) == 0
    assert len(m.state_dict()) == 1171  # the official training form
    unit = m.blocks()[5]  # stage 2, pair 1: official keys stages.2.blocks.2 / .3
    assert isinstance(unit, ResidualUnit) and m.block_stages()[5] == 2
    lk, ffn = unit_parts(unit)
    assert lk is m.stages[2].blocks[2] and ffn is m.stages[2].blocks[3]
    assert isinstance(lk, RepLKBlock) and isinstance(ffn, ConvFFN)
    assert [id(p) for p in unit.parameters()] == [id(p) for p in [*lk.parameters(), *ffn.parameters()]]
    x = torch.randn(2, m.stages[2].blocks[2].pw1.conv.in_channels, 4, 4)
    m.eval()
    with torch.no_grad():
        assert torch.equal(unit(x), ffn(lk(x)))
    # bypassing the unit bypasses both members (lesion), and the copy's units are the copy's blocks
    c = copy.deepcopy(m)
    first = unit_parts(c.blocks()[0])
    assert first[0] is c.stages[0].blocks[0] and first[1] is c.stages[0].blocks[1] and first[0] is not m.stages[0].blocks[0]
    x = _input()
    with torch.no_grad():
        ref = m(x)
        c.blocks()[5].forward = lambda t: t
        bypassed = c(x)
        del c.blocks()[5].forward
        assert torch.equal(c(x), ref) and not torch.equal(bypassed, ref)


def test_units_adapter_on_timm_models():
    import timm

    cnx = timm.create_model("convnext_atto", pretrained=False)
    assert len(units(cnx)) == 2 + 2 + 6 + 2 and unit_stages(cnx) == [0] * 2 + [1] * 2 + [2] * 6 + [3] * 2
    assert units(cnx)[2] is cnx.stages[1].blocks[0] and not isinstance(cnx, AblationModel)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
    assert units(vit) == list(vit.blocks) and unit_stages(vit) is None
    res = timm.create_model("resnet18", pretrained=False)
    # blocks with a projection shortcut (the first of layer2..4) are not x + f(x)
    assert units(res) == [res.layer1[0], res.layer1[1], res.layer2[1], res.layer3[1], res.layer4[1]]
    assert unit_stages(res) == [0, 0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_contract_full_size(name: str):
    model = _build(name, None, reduced=False)
    assert isinstance(model, AblationModel) and len(model.blocks()) == sum(DEPTHS[name])
    x = _input()
    logits = model(x)
    assert logits.shape == (2, 1000 if name != "convnext_demo" else 10) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    model.eval()
    other = create_model(name)
    load_checkpoint(other, {"model": model.state_dict()})
    with torch.no_grad():
        assert torch.equal(other.eval()(x), model(x))
