"""The one large-kernel depthwise convolution used by every model.

Its parameters are those of ``nn.Conv2d`` (``weight`` of shape (C, 1, k, k), ``bias``), so state-dict
keys never depend on which implementation computes it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import stage_kernel_sizes

IMPLS = ("auto", "direct")
_default_impl = "auto"


def set_default_impl(impl: str) -> None:
    """Choose the implementation every LargeKernelDWConv without its own ``impl`` uses."""
    global _default_impl
    if impl not in IMPLS:
        raise ValueError(f"unknown depthwise conv implementation {impl!r}; choose one of {IMPLS}")
    _default_impl = impl


def get_default_impl() -> str:
    return _default_impl


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, impl: str = "auto") -> torch.Tensor:
    """Stride-1 'same' depthwise convolution of x (N, C, H, W) with an odd (C, 1, k, k) kernel."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, stride=1, padding=k // 2, groups=x.shape[1])


class LargeKernelDWConv(nn.Conv2d):
    """Depthwise stride-1 kxk convolution with 'same' zero padding; ``impl`` None follows the global default."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, impl: str | None = None) -> None:
        (kernel_size,) = stage_kernel_sizes(kernel_size, 1)
        super().__init__(channels, channels, kernel_size, stride=1, padding=kernel_size // 2, groups=channels, bias=bias)
        if impl is not None and impl not in IMPLS:
            raise ValueError(f"unknown depthwise conv implementation {impl!r}; choose one of {IMPLS}")
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv(x, self.weight, self.bias, self.impl or _default_impl)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl or 'default'}"
