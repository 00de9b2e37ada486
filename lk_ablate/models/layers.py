"""The one large-kernel depthwise convolution used by every model, with interchangeable exact implementations.

Its parameters are those of ``nn.Conv2d`` (``weight`` of shape (C, 1, k, k), ``bias``), so state-dict keys never
depend on which implementation computes it. Every implementation computes the same stride-1 'same' (zero-padded)
depthwise cross-correlation; they differ only in speed and memory.

A training step runs three products, and each may use its own method:

- forward ``y = x * w``, input gradient ``gx = gy * flip(w)``, weight gradient ``gw[u] = sum x[i + u] gy[i]``;
- methods: ``direct`` (PyTorch's convolution kernels, as called), ``direct_cl`` (the same on a channels-last copy:
  oneDNN's NHWC depthwise kernel is much faster for mid-size kernels), ``fft`` (circular convolution of the
  zero-padded map by ``rfft``/``fft``; exact because the period L >= H + k//2 keeps wrapped reads in the zero tail).

On a CPU the weight gradient is the expensive product (oneDNN's depthwise weight gradient costs 5-40x its forward),
so the fastest plan is often direct forward and input gradient with an FFT weight gradient.

``impl`` names: ``direct`` and ``direct_cl`` are plain ``F.conv2d`` (PyTorch autograd, what timm runs); ``fft``
uses FFT for all three products; a plan ``"fwd,gin,gw"`` (e.g. ``"direct_cl,direct_cl,fft"``) names each product's
method; ``auto`` takes the plan measured fastest for the nearest measured (device, batch, map, kernel) in
``dwconv_rules.json``, written by ``benchmarks/bench_dwconv.py`` (see ``rule_for``).

Exact tricks shared by all: a kernel larger than (2H-1, 2W-1) is centre-cropped to it, since with zero padding the
outer taps never touch an HxW map (they get zero gradient). FFT products never keep a complex tensor between
forward and backward (only x and w are saved; spectra are recomputed), so memory stays that of the direct conv.
Under autocast, direct products run in the autocast dtype as ``F.conv2d`` would; FFT products run in float32
(``torch.fft`` has no bfloat16) and the output has the autocast dtype.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base.errors import ConfigError
from .kernel_sizes import stage_kernel_sizes

__all__ = ["IMPLS", "METHODS", "KernelGeometryWarning", "LargeKernelDWConv", "crop_kernel", "depthwise_conv",
           "dwconv_info", "effective_kernel", "get_default_impl", "warn_kernel_geometry",
           "load_rules", "parse_plan", "rule_for", "select_plan", "set_default_impl", "set_module_impl", "use_impl"]

IMPLS = ("auto", "direct", "direct_cl", "fft")
METHODS = ("direct", "direct_cl", "fft")  # per-product methods of a plan "fwd,gin,gw"
RULES_ENV = "LK_ABLATE_DWCONV_RULES"  # path of another measured rule file (same format), e.g. for a new machine
IMPL_ENV = "LK_ABLATE_DWCONV_IMPL"  # initial default implementation
RULES_PATH = Path(__file__).with_name("dwconv_rules.json")

Plan = tuple[str, str, str]


def parse_plan(impl: str) -> Plan | None:
    """``None`` for ``auto``; the (forward, input-grad, weight-grad) methods for any other valid name or plan."""
    if impl == "auto":
        return None
    if impl in IMPLS:
        return (impl,) * 3  # type: ignore[return-value]
    parts = tuple(p.strip() for p in str(impl).split(","))
    if len(parts) == 3 and all(p in METHODS for p in parts):
        return parts  # type: ignore[return-value]
    raise ConfigError(f"unknown depthwise conv implementation {impl!r}; choose one of {', '.join(IMPLS)}, or a plan "
                      f"'fwd,gin,gw' of methods from {', '.join(METHODS)} (e.g. 'direct_cl,direct_cl,fft')")


def _check_impl(impl: str) -> str:
    parse_plan(impl)
    return impl


_default_impl = _check_impl(os.environ.get(IMPL_ENV, "auto"))


def set_default_impl(impl: str) -> None:
    """Choose the implementation every LargeKernelDWConv without its own ``impl`` uses."""
    global _default_impl
    _default_impl = _check_impl(impl)


def get_default_impl() -> str:
    return _default_impl


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Temporarily set the default implementation (tests, benchmarks)."""
    previous = get_default_impl()
    set_default_impl(impl)
    try:
        yield
    finally:
        set_default_impl(previous)


def crop_kernel(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop a (C, 1, kh, kw) kernel to at most (2H-1, 2W-1): the outer taps never touch an HxW map."""
    kh, kw = weight.shape[-2:]
    ch, cw = effective_kernel(kh, kw, height, width)
    if (ch, cw) == (kh, kw):
        return weight
    top, left = (kh - ch) // 2, (kw - cw) // 2
    return weight[..., top:top + ch, left:left + cw]


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ------------------------------------------------------------------------------------------ direct products

def _layout(x: torch.Tensor, method: str) -> torch.Tensor:
    # ``direct`` convolves the tensor as it comes (what the caller's code would run); ``direct_cl`` channels-last.
    return x.contiguous(memory_format=torch.channels_last) if method == "direct_cl" else x


def _direct_forward(x: torch.Tensor, weight: torch.Tensor, method: str) -> torch.Tensor:
    kh, kw = weight.shape[-2:]
    return F.conv2d(_layout(x, method), weight, None, padding=(kh // 2, kw // 2), groups=x.shape[1])


def _direct_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, method: str,
                     mask: list[bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    kh, kw = weight.shape[-2:]
    gx, gw, _ = torch.ops.aten.convolution_backward(
        _layout(grad_y, method), _layout(x, method), weight, None, [1, 1], [kh // 2, kw // 2], [1, 1], False, [0, 0],
        x.shape[1], mask + [False])
    return gx, gw


# --------------------------------------------------------------------------------------------- FFT products

@functools.lru_cache(maxsize=None)
def fft_length(n: int) -> int:
    """Smallest even length >= n whose only prime factors are 2, 3, 5, 7.

    Odd lengths cost up to 2x more in MKL's real FFTs (81 vs 84 measured: 31 vs 17 ms), so even only.
    """
    m = n + n % 2
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2


@torch.compiler.assume_constant_result  # traced code gets the lengths as constants (no loop for dynamo to unroll)
def _fft_size(height: int, width: int, kh: int, kw: int) -> tuple[int, int]:
    # Period L >= H + k//2: the kept outputs' wrapped reads land in the zero tail (negative offsets) or in
    # rows >= H that hold zeros (positive offsets), so the circular correlation equals the zero-padded one.
    return fft_length(height + kh // 2), fft_length(width + kw // 2)


def _spectrum(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # rfft along W on the H real rows first, then the complex FFT along H pads: cheaper than rfft2 of the padded map.
    return torch.fft.fft(torch.fft.rfft(t, n=size[1], dim=-1), n=size[0], dim=-2)


def _inverse(spec: torch.Tensor, size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    # Inverse along H, keep the H wanted rows, then the (costlier) complex-to-real transform on those rows only.
    rows = torch.fft.ifft(spec, dim=-2)[..., :height, :]
    return torch.fft.irfft(rows, n=size[1], dim=-1)[..., :width]


def _kernel_spectrum(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rfft2 of the kernel placed with its centre tap at (0, 0) of the periodic (Lh, Lw) grid."""
    kh, kw = weight.shape[-2:]
    lh, lw = size
    w = F.pad(weight[:, 0], (0, lw - kw, 0, lh - kh)).roll((-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(w)


def _fft_forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    size = _fft_size(height, width, *weight.shape[-2:])
    spec = _spectrum(x, size)
    spec.mul_(_kernel_spectrum(weight, size).conj_physical())  # correlation: conj of the kernel's spectrum
    return _inverse(spec, size, height, width)


def _fft_input_grad(grad_spec: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], height: int,
                    width: int) -> torch.Tensor:
    # The adjoint of correlation with w is convolution with w: no conj. Consumes grad_spec.
    return _inverse(grad_spec.mul_(_kernel_spectrum(weight, size)), size, height, width)


def _fft_weight_grad(x: torch.Tensor, grad_spec: torch.Tensor, kh: int, kw: int, size: tuple[int, int]) -> torch.Tensor:
    # gw[u] = sum_{n,i} gy[i] x[i + u]: correlation of x with gy, summed over the batch before the (small) inverse.
    spec = _spectrum(x, size).mul_(grad_spec.conj_physical())
    corr = torch.fft.irfft2(spec.sum(0), s=size)
    return corr.roll((kh // 2, kw // 2), dims=(-2, -1))[:, :kh, :kw].unsqueeze(1)


# ---------------------------------------------------------------------------------------- the function

class _PlannedDepthwiseConv(torch.autograd.Function):
    """Depthwise conv whose forward, input-gradient and weight-gradient products each use their own method.

    Saves only x and w (as ``F.conv2d`` does). Direct products run in ``amp_dtype`` when autocast was on at the
    forward, FFT products in float32 (or float64 for float64 inputs).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
                amp_dtype: torch.dtype | None) -> torch.Tensor:
        ctx.plan, ctx.amp_dtype = plan, amp_dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(x, weight)
        fmt = _memory_format(x)
        if plan[0] == "fft":
            dt = _fft_dtype(x)
            y = _fft_forward(x.to(dt), weight.to(dt))
        else:
            dt = amp_dtype or x.dtype
            y = _direct_forward(x.to(dt), weight.to(dt), plan[0])
        if bias is not None:
            y = y + bias.to(y.dtype).view(-1, 1, 1)  # also makes the FFT's cropped view dense
        return y.to(dtype=amp_dtype or x.dtype, memory_format=fmt)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        _, gin, gwm = ctx.plan
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        height, width = x.shape[-2:]
        kh, kw = weight.shape[-2:]
        grad_x = grad_w = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            direct_mask = [need_x and gin != "fft", need_w and gwm != "fft"]
            if any(direct_mask):
                # One call when both gradients are direct with the same layout; otherwise one call each.
                dt = ctx.amp_dtype or x.dtype
                g, xd, wd = grad_y.to(dt), x.to(dt), weight.to(dt)
                if all(direct_mask) and gin == gwm:
                    grad_x, grad_w = _direct_backward(g, xd, wd, gin, [True, True])
                else:
                    if direct_mask[0]:
                        grad_x, _ = _direct_backward(g, xd, wd, gin, [True, False])
                    if direct_mask[1]:
                        _, grad_w = _direct_backward(g, xd, wd, gwm, [False, True])
            if (need_x and gin == "fft") or (need_w and gwm == "fft"):
                dt = _fft_dtype(x)
                size = _fft_size(height, width, kh, kw)
                grad_spec = _spectrum(grad_y.to(dt), size)
                if need_w and gwm == "fft":
                    grad_w = _fft_weight_grad(x.to(dt), grad_spec, kh, kw, size)
                if need_x and gin == "fft":
                    grad_x = _fft_input_grad(grad_spec, weight.to(dt), size, height, width)
            if ctx.bias_dtype is not None and need_b:
                grad_b = grad_y.sum((0, 2, 3), dtype=torch.float32 if grad_y.dtype in _LOW else grad_y.dtype)
                grad_b = grad_b.to(ctx.bias_dtype)
        if grad_x is not None:
            grad_x = grad_x.to(dtype=x.dtype, memory_format=_memory_format(x))
        if grad_w is not None:
            # Exactly the weight's strides (channels-last models): DDP buckets copy gradients whose strides differ.
            grad_w = torch.empty_like(weight).copy_(grad_w)
        return grad_x, grad_w, grad_b, None, None


_LOW = (torch.bfloat16, torch.float16)


def _fft_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------------ the rule

@functools.lru_cache(maxsize=None)
def load_rules(path: str | None = None) -> dict[str, Any]:
    """The measured rule table (``dwconv_rules.json``, or the file ``$LK_ABLATE_DWCONV_RULES`` or ``path`` names)."""
    path = path or os.environ.get(RULES_ENV) or str(RULES_PATH)
    try:
        with open(path) as f:
            rules = json.load(f)
        for device, rows in rules["devices"].items():
            for row in rows:
                if len(row["plan"]) != 3 or not all(m in METHODS for m in row["plan"]):
                    raise ValueError(f"{device}: bad plan {row['plan']!r}")
                for key in ("n", "h", "k"):
                    int(row[key])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot use the depthwise conv rule table {path}: {e!r}; regenerate it with "
                          f"`python benchmarks/bench_dwconv.py --output_path {path}` or unset ${RULES_ENV}") from e
    return rules


def _nearest(values: list[int], v: float, log: bool = True) -> int:
    key = (lambda u: abs(math.log(u / v))) if log else (lambda u: abs(u - v))
    return min(sorted(set(values), reverse=True), key=key)  # ties go to the larger measured value


@functools.lru_cache(maxsize=4096)
def rule_for(device: str, batch: int, height: int, width: int, kh: int, kw: int) -> Plan:
    """The plan measured fastest (forward + both gradients) for the nearest measured case.

    Nearest means, in order: the measured batch closest to ``batch`` (log scale); the measured map size closest to
    sqrt(H*W) (log scale) among those whose measured kernels reach this (cropped) kernel, so that a partial table
    never answers a large kernel from small-kernel rows; then the measured kernel closest to sqrt(kh*kw).
    Inference uses the plan's forward method, the fastest forward measured. A device type with no measurements
    (e.g. mps) gets PyTorch's own convolution.
    """
    rows = load_rules()["devices"].get(device)
    if not rows:
        return ("direct",) * 3  # type: ignore[return-value]
    kh, kw = min(kh, 2 * height - 1), min(kw, 2 * width - 1)
    k = math.sqrt(kh * kw)
    n = _nearest([r["n"] for r in rows], batch)
    rows = [r for r in rows if r["n"] == n]
    reach: dict[int, int] = {}
    for r in rows:
        reach[r["h"]] = max(reach.get(r["h"], 0), r["k"])
    # A size's rows reach k if they go up to k, or up to its own crop limit (2h-1) when k is larger still.
    covering = [h for h, top in reach.items() if top >= min(k, 2 * h - 1) - 2] or list(reach)
    size = _nearest(covering, math.sqrt(height * width))
    rows = [r for r in rows if r["h"] == size]
    best = _nearest([r["k"] for r in rows], k, log=False)
    return tuple(next(r["plan"] for r in rows if r["k"] == best))  # type: ignore[return-value]


@torch.compiler.assume_constant_result
def resolve_plan(impl: str, device: str, batch: int, height: int, width: int, kh: int, kw: int) -> Plan:
    """The plan of ``impl`` for one call's (device, batch, map, cropped kernel); all arguments are plain values.

    Under ``torch.compile`` dynamo does not trace this function: it calls it once while tracing and bakes the plan
    into the graph as a constant (guarded by the module's ``impl`` and the default implementation, and by the
    shapes, which ``compile_model`` keeps static). So ``auto`` costs no graph break: its rule lookup reads a JSON
    file and runs Python that dynamo cannot trace.
    """
    plan = parse_plan(impl)
    return plan if plan is not None else rule_for(device, batch, height, width, kh, kw)


def select_plan(impl: str, x: torch.Tensor, weight: torch.Tensor) -> Plan:
    """Resolve ``impl`` for this call (``auto``: from the measured rule for its device, batch, map, kernel)."""
    # int(): a symbolic size (dynamic shapes) is specialised to its value, as the plan depends on it.
    return resolve_plan(impl, x.device.type, int(x.shape[0]), int(x.shape[-2]), int(x.shape[-1]),
                        int(weight.shape[-2]), int(weight.shape[-1]))


# ------------------------------------------------------------------------------------------- entry point

def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, impl: str = "auto") -> torch.Tensor:
    """Stride-1 'same' depthwise convolution of x (N, C, H, W) with an odd (C, 1, kh, kw) kernel.

    Every ``impl`` gives the same result within float32 rounding (norm-wise relative difference < 1e-5).
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ConfigError(f"depthwise_conv needs x (N, C, H, W) and weight (C, 1, kh, kw); got x {tuple(x.shape)} "
                          f"and weight {tuple(weight.shape)}")
    if weight.shape[-2] % 2 == 0 or weight.shape[-1] % 2 == 0:
        raise ConfigError(f"depthwise_conv needs an odd kernel (a centre tap), got {tuple(weight.shape[-2:])}")
    weight = crop_kernel(weight, x.shape[-2], x.shape[-1])
    plan = select_plan(impl, x, weight)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                        (bias is not None and bias.requires_grad))
    if not grad:
        plan = (plan[0],) * 3
    if plan[0] != "fft" and plan == (plan[0],) * 3:
        # A uniform direct plan is plain F.conv2d under PyTorch's own autograd: exactly what timm runs.
        kh, kw = weight.shape[-2:]
        y = F.conv2d(_layout(x, plan[0]), weight, bias, padding=(kh // 2, kw // 2), groups=x.shape[1])
        return y.contiguous(memory_format=_memory_format(x))
    amp = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    with torch.autocast(x.device.type, enabled=False):
        return _PlannedDepthwiseConv.apply(x, weight, bias, plan, amp)


class KernelGeometryWarning(UserWarning):
    """A depthwise kernel larger than the feature map it runs on (see ``warn_kernel_geometry``)."""


_GEOMETRIES_WARNED: set[tuple[int, int, int, int]] = set()


def effective_kernel(kh: int, kw: int, height: int, width: int) -> tuple[int, int]:
    """The kernel size that acts on an HxW map: at most (2H-1, 2W-1) (``crop_kernel``)."""
    return min(kh, 2 * height - 1), min(kw, 2 * width - 1)


def warn_kernel_geometry(kh: int, kw: int, height: int, width: int) -> bool:
    """Warn once per process and (kernel, map) geometry when a kh x kw kernel is wider than the HxW map it runs on;
    True if it warned. Such a kernel gives every output pixel the whole map; beyond (2H-1, 2W-1) its outer taps
    never touch a pixel (zero padding), get no gradient, and are cropped away exactly. Global rank 0 only (DDP and
    torchrun set RANK / LOCAL_RANK), so a multi-GPU run says it once."""
    if (kh <= height and kw <= width) or (kh, kw, height, width) in _GEOMETRIES_WARNED:
        return False
    _GEOMETRIES_WARNED.add((kh, kw, height, width))
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return False
    eh, ew = effective_kernel(kh, kw, height, width)
    acts = (f"it acts as {eh}x{ew} (2H-1: the outer taps never touch a pixel and get no gradient)"
            if (eh, ew) != (kh, kw) else f"it acts as {kh}x{kw} (within 2H-1, every tap reaches the map)")
    warnings.warn(f"a {kh}x{kw} depthwise kernel runs on {height}x{width} feature maps, wider than the map: {acts}; "
                  "kernel sizes and map sizes: docs/architecture.md, 'Kernel sizes'", KernelGeometryWarning,
                  stacklevel=2)
    return True


class LargeKernelDWConv(nn.Conv2d):
    """Depthwise stride-1 kxk convolution with 'same' zero padding; ``impl`` None follows the global default."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, impl: str | None = None) -> None:
        (kernel_size,) = stage_kernel_sizes(kernel_size, 1)
        super().__init__(channels, channels, kernel_size, stride=1, padding=kernel_size // 2, groups=channels, bias=bias)
        self.impl = _check_impl(impl) if impl is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Eager calls only: under torch.compile the shapes are constants and a warning would break the graph.
        if not torch.compiler.is_compiling():
            warn_kernel_geometry(*self.kernel_size, int(x.shape[-2]), int(x.shape[-1]))
        return depthwise_conv(x, self.weight, self.bias, self.impl or _default_impl)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl or 'default'}"


def set_module_impl(module: nn.Module, impl: str | None) -> int:
    """Set ``impl`` on every LargeKernelDWConv in ``module`` (None: follow the global default); returns how many.

    The config hook: a model option ``dwconv_impl`` calls this once after building the model.
    """
    if impl is not None:
        _check_impl(impl)
    convs = [m for m in module.modules() if isinstance(m, LargeKernelDWConv)]
    for conv in convs:
        conv.impl = impl
    return len(convs)


def dwconv_info(module: nn.Module) -> dict[str, Any]:
    """The depthwise-conv implementation ``module`` computes with, for provenance records: the ``impl`` of its
    LargeKernelDWConvs (their own or the default), and for ``auto`` the rule file that decides each call's plan
    (its path and SHA-256: the plan is a function of that table and the call's shapes)."""
    import hashlib

    impls = sorted({m.impl or _default_impl for m in module.modules() if isinstance(m, LargeKernelDWConv)})
    out: dict[str, Any] = {"impl": impls, "layers": sum(isinstance(m, LargeKernelDWConv) for m in module.modules())}
    if "auto" in impls:
        path = Path(os.environ.get(RULES_ENV) or RULES_PATH)
        out["rules"] = str(path)
        out["rules_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return out
