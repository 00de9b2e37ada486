"""LargeKernelDWConv / depthwise_conv: every implementation equals PyTorch's direct convolution.

Tolerance everywhere: norm-wise relative difference ||a - b|| / ||b|| < 1e-5 in float32 (the issue's bound).
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lk_ablate
from lk_ablate.base.errors import ConfigError
from lk_ablate.models import layers
from lk_ablate.models.layers import (IMPLS, METHODS, LargeKernelDWConv, crop_kernel, depthwise_conv,
                                     get_default_impl, parse_plan, rule_for, set_default_impl, set_module_impl,
                                     use_impl)
from lk_ablate.models.replknet import RepLKNet

TOL = 1e-5
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # gpu: deselected where CUDA is absent
KERNELS = list(range(3, 52, 2))  # every odd kernel of the study's range
# The fast tier checks the study's kernels; the other odd sizes run in the slow tier.
SWEEP = [k if k in (3, 13, 51) else pytest.param(k, marks=pytest.mark.slow) for k in KERNELS]
# Odd and even, square and not; 27 and 26 keep k up to 51 uncropped, 7 and 8 crop most kernels (to 13 / 15).
MAPS = [(7, 7), (8, 8), (27, 26), (26, 27)]
# The named implementations plus mixed plans, so every method serves every product somewhere.
PLANS = ["direct_cl", "fft", "auto", "fft,direct,direct_cl", "direct_cl,fft,fft", "direct,direct_cl,fft"]


@pytest.fixture(autouse=True)
def _no_tf32():
    """On CUDA the reference conv must be float32, not TF32 (PyTorch's default for cuDNN convolutions)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def reference(x, w, b, g):
    """PyTorch's direct convolution with the full (uncropped) kernel, and its gradients."""
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])
    return (y, *torch.autograd.grad(y, (x, w, b), g))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k", SWEEP)
def test_every_impl_matches_direct(k: int, batch: int, device: str) -> None:
    """Outputs and x/w/b gradients of each impl vs direct conv, every odd k 3..51, odd/even maps, batch 1 and 3."""
    gen = torch.Generator().manual_seed(k * 10 + batch)
    for h, wd in MAPS:
        c = 3
        x = torch.randn(batch, c, h, wd, generator=gen).to(device)
        w = torch.randn(c, 1, k, k, generator=gen).to(device)
        b = torch.randn(c, generator=gen).to(device)
        g = torch.randn(batch, c, h, wd, generator=gen).to(device)
        ref = reference(x, w, b, g)
        for impl in PLANS:
            xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
            y = depthwise_conv(xi, wi, bi, impl)
            got = (y, *torch.autograd.grad(y, (xi, wi, bi), g))
            for name, a, r in zip(("y", "gx", "gw", "gb"), got, ref):
                assert a.shape == r.shape and a.dtype == r.dtype
                assert rel(a, r) < TOL, (impl, (h, wd), device, name, rel(a, r))


@pytest.mark.parametrize("h,w", [(7, 7), (8, 8), (5, 9)])
def test_crop_is_exact(h: int, w: int) -> None:
    """A kernel larger than (2H-1, 2W-1) gives the same output as its centre crop; the outer taps get zero grad."""
    x = torch.randn(2, 4, h, w, dtype=torch.float64)
    wt = torch.randn(4, 1, 51, 51, dtype=torch.float64, requires_grad=True)
    cropped = crop_kernel(wt, h, w)
    assert cropped.shape[-2:] == (min(51, 2 * h - 1), min(51, 2 * w - 1))
    full = F.conv2d(x, wt, None, padding=25, groups=4)
    small = F.conv2d(x, cropped, None, padding=(cropped.shape[-2] // 2, cropped.shape[-1] // 2), groups=4)
    assert rel(small, full) < 1e-13
    gw, = torch.autograd.grad(depthwise_conv(x, wt, None, "fft").sum(), wt)
    top, left = (51 - cropped.shape[-2]) // 2, (51 - cropped.shape[-1]) // 2
    outer = gw.clone()
    outer[..., top:top + cropped.shape[-2], left:left + cropped.shape[-1]] = 0
    assert outer.abs().max().item() == 0.0 and gw.abs().max().item() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("plan", ["fft", "direct_cl,direct_cl,fft", "direct,fft,fft"])
def test_bf16_autocast_fft_in_float32(device: str, plan: str) -> None:
    """Under bf16 autocast, FFT products compute in float32: output = float32 result rounded to bf16."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 14, 14, device=device)
    w = torch.randn(8, 1, 27, 27, device=device) * 0.05
    b = torch.randn(8, device=device)
    xa, wa, ba = (t.clone().requires_grad_() for t in (x, w, b))
    with torch.autocast(device, dtype=torch.bfloat16):
        y = depthwise_conv(xa, wa, ba, plan)
        direct = depthwise_conv(x, w, b, "direct")
    assert y.dtype == torch.bfloat16 and direct.dtype == torch.bfloat16
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (xa, wa, ba), g)
    assert (gx.dtype, gw.dtype, gb.dtype) == (torch.float32,) * 3
    # The same products without autocast, fed the same bf16 upstream gradient, in float32.
    x32, w32, b32 = (t.clone().requires_grad_() for t in (x, w, b))
    y32 = depthwise_conv(x32, w32, b32, plan)
    r = torch.autograd.grad(y32, (x32, w32, b32), g.float())
    if plan.split(",")[0] == "fft":
        assert torch.equal(y, y32.to(torch.bfloat16))
    if plan.split(",")[-1] == "fft":
        assert rel(gw, r[1]) < TOL
    if plan.split(",")[1 if "," in plan else 0] == "fft":
        assert rel(gx, r[0]) < TOL
    assert rel(gb, r[2]) < TOL
    # bf16 rounding of the output only (2^-9 relative): far below the direct bf16 conv's error.
    assert rel(y, y32) < 4e-3


def test_state_dict_is_conv2d() -> None:
    conv = LargeKernelDWConv(6, 13, impl="fft")
    ref = nn.Conv2d(6, 6, 13, padding=6, groups=6)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 9, 10)
    for impl in IMPLS:
        conv.impl = impl
        assert rel(conv(x), ref(x)) < TOL
    assert "impl=fft" in repr(conv) and "impl=default" in repr(LargeKernelDWConv(6, 13))


@pytest.mark.parametrize("impl", ["direct", "fft", "direct,direct,fft"])
def test_weight_grad_keeps_weight_strides(impl: str) -> None:
    """A channels-last model's depthwise weight gets a gradient with its exact strides (DDP buckets compare them)."""
    conv = LargeKernelDWConv(8, 13, impl=impl).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride() == (169, 1, 13, 1)


def test_options_are_checked() -> None:
    assert parse_plan("auto") is None
    assert parse_plan("fft") == ("fft",) * 3
    assert parse_plan("direct_cl, direct, fft") == ("direct_cl", "direct", "fft")
    for bad in ("cuda", "direct,fft", "fft,fft,matmul", ""):
        with pytest.raises(ConfigError, match="unknown depthwise conv implementation"):
            parse_plan(bad)
    with pytest.raises(ConfigError):
        LargeKernelDWConv(4, 7, impl="winograd")
    with pytest.raises(ConfigError, match="odd"):
        LargeKernelDWConv(4, 8)
    with pytest.raises(ConfigError, match="odd kernel"):
        depthwise_conv(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 4, 4), None)
    with pytest.raises(ConfigError, match="needs x"):
        depthwise_conv(torch.randn(1, 3, 5, 5), torch.randn(2, 1, 3, 3), None)
    model = lk_ablate.create_model("convnext_demo", kernel_size=13)
    assert set_module_impl(model, "direct_cl,direct,fft") == 8
    assert {m.impl for m in model.modules() if isinstance(m, LargeKernelDWConv)} == {"direct_cl,direct,fft"}
    with pytest.raises(ConfigError):
        set_module_impl(model, "fast")
    before = get_default_impl()
    with use_impl("fft"):
        assert get_default_impl() == "fft"
        with pytest.raises(ConfigError):
            set_default_impl("nope")
    assert get_default_impl() == before


def test_rule_table() -> None:
    """The checked-in table is the measured one: valid plans, and its decisions at the study's layers."""
    rules = layers.load_rules()
    assert set(rules["devices"]) >= {"cpu"} and "machine" in rules["meta"]["cpu"]
    for device, rows in rules["devices"].items():
        for row in rows:
            times = row["ms"]
            for p, m in zip(("fwd", "gin", "gw"), row["plan"]):
                # The plan's method is the fastest measured, or direct within the noise margin.
                fastest = min(t for t in times[p].values() if t is not None)
                assert times[p][m] is not None and (times[p][m] == fastest or m == "direct"), (device, row)
    # ConvNeXt-T's layers at 224, batch 8 on CPU: direct conv at k=3; FFT weight gradient at k=51 everywhere.
    for h in (56, 28, 14, 7):
        plan = rule_for("cpu", 8, h, h, 3, 3)
        assert plan[:2] == ("direct", "direct") and "fft" not in plan
        assert rule_for("cpu", 8, h, h, 51, 51)[2] == "fft"
    assert rule_for("mps", 8, 56, 56, 51, 51) == ("direct",) * 3  # no measurements: PyTorch's own


def test_rule_table_override(tmp_path, monkeypatch) -> None:
    table = {"devices": {"cpu": [{"n": 8, "h": 14, "c": 4, "k": 3, "ms": {}, "plan": ["fft", "fft", "direct"]}]}}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(layers.RULES_ENV, str(path))
    layers.load_rules.cache_clear()
    layers.rule_for.cache_clear()
    try:
        assert rule_for("cpu", 1, 100, 100, 51, 51) == ("fft", "fft", "direct")
        path.write_text(json.dumps({"devices": {"cpu": [{**table["devices"]["cpu"][0], "plan": ["fft", "x", "y"]}]}}))
        layers.load_rules.cache_clear()
        with pytest.raises(ConfigError, match="bench_dwconv.py"):
            layers.load_rules()
    finally:
        monkeypatch.delenv(layers.RULES_ENV)
        layers.load_rules.cache_clear()
        layers.rule_for.cache_clear()


@pytest.mark.parametrize("impl", ["direct", "fft", "direct_cl,direct,fft"])
def test_saves_only_input_and_weight(impl: str) -> None:
    """FFT products keep no complex spectra for backward: the saved bytes equal PyTorch's direct conv's."""
    x = torch.randn(2, 4, 20, 20, requires_grad=True)
    w = torch.randn(4, 1, 31, 31, requires_grad=True)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        depthwise_conv(x, w, None, impl)
    assert sum(saved) == x.numel() * 4 + 4 * 31 * 31 * 4


def _tiny_replknet(**kw) -> RepLKNet:
    return RepLKNet(kernel_size=(13, 11, 9, 7), layers=(1, 1, 1, 1), channels=(8, 16, 16, 16), small_kernel=5,
                    num_classes=10, **kw)


MODELS = {
    "convnext_demo": lambda: lk_ablate.create_model("convnext_demo", kernel_size=[51, 31, 13, 7]),
    "replknet_tiny": _tiny_replknet,
}


@pytest.mark.parametrize("name,dtype,tol", [("convnext_demo", torch.float32, TOL), ("convnext_demo", torch.float64, 1e-10),
                                            ("replknet_tiny", torch.float64, 1e-10)])
def test_model_gradients_agree(name: str, dtype: torch.dtype, tol: float) -> None:
    """The whole-model gradient (all parameters as one vector) is the same with every implementation.

    Compared as one vector: BatchNorm/LayerNorm invariances make some single-parameter gradients zero in theory,
    i.e. pure rounding noise. RepLKNet in float64 only: its tiny-batch BatchNorms amplify rounding so much that even
    PyTorch's own float32 conv differs from float64 by ~1e-5 here; float64 shows that the algorithms are exact.
    """
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y = torch.arange(6) % 10
    torch.manual_seed(0)
    model = MODELS[name]().to(dtype)
    grads = {}
    impls = ("direct", "direct_cl", "fft", "auto") if dtype == torch.float32 else ("direct", "fft", "direct_cl,fft,fft")
    for impl in impls:
        model.zero_grad()
        with use_impl(impl):
            F.cross_entropy(model(x), y).backward()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
    for impl, g in grads.items():
        assert rel(g, grads["direct"]) < tol, impl


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_portable_across_impls(name: str, tmp_path) -> None:
    """Train with one implementation, evaluate with every other: same argmax, logits within tolerance."""
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    torch.manual_seed(0)
    model = MODELS[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with use_impl("fft"):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    model = MODELS[name]()
    model.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    model.eval()
    logits = {}
    with torch.no_grad():
        for impl in ("direct", "direct_cl", "fft", "auto"):
            with use_impl(impl):
                logits[impl] = model(x)
    for impl, out in logits.items():
        assert torch.equal(out.argmax(1), logits["direct"].argmax(1)), impl
        assert rel(out, logits["direct"]) < TOL, impl


def test_every_method_used_by_models() -> None:
    """The study's models route all their depthwise kernels through LargeKernelDWConv."""
    model = lk_ablate.create_model("convnext_demo", kernel_size=51)
    convs = [m for m in model.modules() if isinstance(m, LargeKernelDWConv)]
    assert len(convs) == 8 and all(c.kernel_size == (51, 51) for c in convs)
    assert len(_tiny_replknet().large_kernel_convs()) == 4
    assert set(METHODS) == {"direct", "direct_cl", "fft"}


def test_a_kernel_wider_than_its_map_warns_once_with_the_effective_size(monkeypatch):
    """convnext_demo at 32 px runs its stages on 8x8, 4x4, 2x2 and 1x1 maps: a 51x51 kernel acts as 15x15, 7x7, 3x3
    and 1x1 there (the exact crop to 2H-1); each geometry is named once per process, on global rank 0 only."""
    import warnings

    monkeypatch.setattr(layers, "_GEOMETRIES_WARNED", set())
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    model = lk_ablate.create_model("convnext_demo", kernel_size=51, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model(x)
        model(x)  # the second forward: nothing new to say
    got = [str(w.message) for w in caught if issubclass(w.category, layers.KernelGeometryWarning)]
    assert got == [f"a 51x51 depthwise kernel runs on {h}x{h} feature maps, wider than the map: it acts as {k}x{k} "
                   "(2H-1: the outer taps never touch a pixel and get no gradient); kernel sizes and map sizes: "
                   "docs/architecture.md, 'Kernel sizes'" for h, k in ((8, 15), (4, 7), (2, 3), (1, 1))]
    # within 2H-1 (7 on 4x4 maps) the kernel is not cropped, and the warning says so
    with pytest.warns(layers.KernelGeometryWarning, match=r"runs on 4x4 feature maps, wider than the map: it acts as "
                                                          r"7x7 \(within 2H-1, every tap reaches the map\)"):
        assert layers.warn_kernel_geometry(7, 7, 4, 4)
    assert not layers.warn_kernel_geometry(7, 7, 4, 4)
    assert not layers.warn_kernel_geometry(7, 7, 7, 7)  # not wider than its map
    monkeypatch.setenv("RANK", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not layers.warn_kernel_geometry(9, 9, 4, 4)  # other ranks stay quiet
    assert not caught
