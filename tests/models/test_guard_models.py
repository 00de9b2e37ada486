"""Model equality that exercises the blocks: every weight random, layer-scale gamma of order 1 (at init it is
1e-6, so a block adds ~1e-6 and a wrong activation or MLP hides below any tolerance).

- ConvNeXt at k = 3, 7, 13, 51 equals timm's ConvNeXt (nn.Conv2d depthwise convs), outputs and every parameter's
  gradient, in float64, with each of the project's depthwise implementations.
- RepLKNet's RepLKBlock and ConvFFN at k = 3, 7, 13, 51 equal the formula of the official code written here with
  torch.nn.functional (conv2d, batch_norm), with random BN statistics.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from lk_ablate.models.convnext import ConvNeXt
from lk_ablate.models.layers import use_impl
from lk_ablate.models.replknet import ConvFFN, RepLKBlock

KERNELS = [3, 7, 13, 51]
DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)
SIZE = 112  # stage maps 28 / 14 / 7 / 4: k = 51 uses 51 / 27 / 13 / 7 taps per axis


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (gamma and LayerNorm affine of order 1, biases non-zero), in sorted name order."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
            elif p.ndim == 1:
                scale = 1.0 if "norm" in name and name.endswith("weight") else 0.2
                p.copy_((1.0 if scale == 1.0 else 0.0) + scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / p[0].numel() ** 0.5)
    return model


def _pair(k: int) -> tuple[nn.Module, nn.Module]:
    ours = ConvNeXt(k, depths=DEPTHS, dims=DIMS, num_classes=5).double()
    ref = timm.models.convnext.ConvNeXt(num_classes=5, depths=DEPTHS, dims=DIMS, kernel_sizes=k).double()
    randomize_(ours, seed=k)
    ref.load_state_dict(ours.state_dict())  # strict: same names and shapes
    gammas = [b.gamma for s in ours.stages for b in s.blocks]
    assert min(float(g.detach().abs().min()) for g in gammas) >= 0.5  # the blocks matter
    return ours, ref


@pytest.mark.parametrize("k", [pytest.param(k, marks=pytest.mark.slow) if k == 51 else k for k in KERNELS])
def test_convnext_with_random_layer_scale_equals_timm(k):
    """Outputs and every parameter's gradient equal timm's in float64 (||a-b||/||b|| < 1e-10), for the default
    depthwise implementation and each named one."""
    ours, ref = _pair(k)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 3, 4])
    loss_ref = F.cross_entropy(ref(x), y)
    loss_ref.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    for impl in ("direct", "direct_cl", "fft"):
        ours.zero_grad()
        with use_impl(impl):
            out = ours(x)
            assert rel(out, ref(x).detach()) < 1e-10, impl
            F.cross_entropy(out, y).backward()
        for n, p in ours.named_parameters():
            assert rel(p.grad, ref_grads[n]) < 1e-9, (impl, n, rel(p.grad, ref_grads[n]))


def test_layer_scale_multiplies_the_block_branch():
    """A block computes x + gamma * mlp(norm(dwconv(x))): doubling gamma doubles the residual branch exactly."""
    torch.manual_seed(0)
    ours, _ = _pair(7)
    block = ours.stages[1].blocks[0]
    x = torch.randn(2, DIMS[1], 9, 9, dtype=torch.float64)
    with torch.no_grad():
        branch = block(x) - x
        block.gamma.mul_(2.0)
        assert rel(block(x) - x, 2.0 * branch) < 1e-12
        # the branch, written out: LayerNorm over channels (eps 1e-6), Linear-GELU-Linear, times gamma
        h = F.conv2d(x, block.conv_dw.weight, block.conv_dw.bias, padding=3, groups=DIMS[1]).permute(0, 2, 3, 1)
        h = F.layer_norm(h, (DIMS[1],), block.norm.weight, block.norm.bias, eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight,
                     block.mlp.fc2.bias)
        assert rel(block(x) - x, (h * block.gamma).permute(0, 3, 1, 2)) < 1e-12


# --- RepLKNet blocks against the official formula ---------------------------------------------------------------
def _random_bn_(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    c = bn.num_features
    bn.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
    bn.bias.copy_(0.3 * torch.randn(c, generator=g, dtype=torch.float64))
    bn.running_mean.copy_(0.3 * torch.randn(c, generator=g, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)


def _fill_(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    mods = dict(module.named_modules())
    with torch.no_grad():
        for name in sorted(mods):
            m = mods[name]
            if isinstance(m, nn.BatchNorm2d):
                _random_bn_(m, g)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    return module.eval()


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _conv_bn(x: torch.Tensor, unit: nn.Module, groups: int = 1) -> torch.Tensor:
    w = unit.conv.weight
    return _bn(F.conv2d(x, w, None, padding=w.shape[-1] // 2, groups=groups), unit.bn)


@pytest.mark.parametrize("k,small", [(k, s) for k in KERNELS for s in (5, None) if s is None or s < k])
def test_replknet_blocks_equal_the_official_formula(k, small):
    """RepLKBlock: x + pw2(ReLU(lkb(pw1(prelkb_bn(x))) + small(pw1(...)))), pw1 with ReLU, pw2 without;
    ConvFFN: x + pw2(GELU(pw1(preffn_bn(x)))). Eval mode, float64, ||a-b||/||b|| < 1e-12."""
    c, dw, hidden = 6, 6, 24
    block = _fill_(RepLKBlock(c, dw, k, small).double(), seed=k)
    ffn = _fill_(ConvFFN(c, hidden).double(), seed=100 + k)
    x = torch.randn(2, c, 20, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        h = F.relu(_conv_bn(_bn(x, block.prelkb_bn), block.pw1))
        lk = _conv_bn(h, block.large_kernel.lkb_origin, groups=dw)
        if small is not None:
            lk = lk + _conv_bn(h, block.large_kernel.small_conv, groups=dw)
        expected = x + _conv_bn(F.relu(lk), block.pw2)
        assert rel(block(x) - x, expected - x) < 1e-12
        expected_ffn = x + _conv_bn(F.gelu(_conv_bn(_bn(x, ffn.preffn_bn), ffn.pw1)), ffn.pw2)
        assert rel(ffn(x) - x, expected_ffn - x) < 1e-12
