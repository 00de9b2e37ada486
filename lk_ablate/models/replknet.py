"""RepLKNet (Ding et al., CVPR 2022) with a configurable large kernel, module and key names of the official code.

State-dict keys equal DingXiaoH/RepLKNet-pytorch's training form (stem.N, stages.S.blocks.2i = RepLKBlock,
stages.S.blocks.2i+1 = ConvFFN, transitions.S.0/1, norm, head), so released checkpoints load strictly.
Every large depthwise kernel is a :class:`LargeKernelDWConv` (the project's fast implementation applies); the
parallel small kernel is a plain ``nn.Conv2d``, so ``LargeKernelDWConv`` modules are exactly the ablated kernels.

Forms (``deploy``): ``False`` is the training form; ``True`` / ``"kernels"`` is the official structural
re-parameterization (``lkb_origin`` + ``small_conv`` and their BNs merged into ``large_kernel.lkb_reparam``);
``"full"`` additionally folds every BatchNorm into its neighbouring conv / linear layer (no BN left). See
:mod:`lk_ablate.models.reparam` for the arithmetic (state dicts only; it imports nothing of this module) and
:mod:`lk_ablate.commands.reparam` for the ``lk_ablate reparam`` command (which checks a merge with
:func:`check_equivalence`).
Implements the model contract (:class:`lk_ablate.models.contract.AblationModel`); a residual unit is one
(RepLKBlock, ConvFFN) pair.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath

from ..base.errors import ConfigError, DataError
from .contract import ResidualUnit, layer_decay_group_starts
from .kernel_sizes import KernelSpec, stage_kernel_sizes
from .layers import LargeKernelDWConv
from .registry import ModelConfig, register_model
from .reparam import FORM_ORDER, infer_replknet_kwargs, normalize_form, reparam_state_dict, state_dict_form

__all__ = ["RepLKNet", "RepLKBlock", "ConvFFN", "ReparamLargeKernelConv", "ConvBN", "replknet_31b", "replknet_31l",
           "replknet_xl", "replknet_3b"]


class ConvBN(nn.Sequential):
    """conv -> BatchNorm (-> ReLU), children named ``conv``, ``bn``, ``nonlinear`` as in the official code.

    ``fused``: the BN is already folded into the conv (conv has a bias, ``bn`` is Identity).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False, fused: bool = False) -> None:
        super().__init__()
        self.add_module("conv", conv)
        self.add_module("bn", nn.Identity() if fused else nn.BatchNorm2d(conv.out_channels))
        if relu:
            self.add_module("nonlinear", nn.ReLU())

    @classmethod
    def make(cls, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1, relu: bool = False,
             fused: bool = False) -> "ConvBN":
        conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                         bias=fused)
        return cls(conv, relu=relu, fused=fused)

    @property
    def fused(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    def fuse_(self) -> None:
        """Switch to the fused structure (conv with bias, no BN); the weights are loaded afterwards."""
        if self.fused:
            return
        self.conv = _with_bias(self.conv)
        self.bn = nn.Identity()


class ReparamLargeKernelConv(nn.Module):
    """Depthwise KxK conv-BN plus an optional parallel depthwise small-kernel conv-BN, outputs summed.

    After re-parameterization one ``lkb_reparam`` conv (with bias) computes the same function in eval mode.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None, merged: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        if merged:
            self.lkb_reparam = LargeKernelDWConv(channels, kernel_size, bias=True)
            return
        self.lkb_origin = ConvBN(LargeKernelDWConv(channels, kernel_size, bias=False))
        if small_kernel is not None:
            self.small_conv = ConvBN.make(channels, channels, small_kernel, groups=channels)

    @property
    def merged(self) -> bool:
        return hasattr(self, "lkb_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if hasattr(self, "small_conv"):
            out = out + self.small_conv(x)
        return out

    def merge_(self) -> None:
        """Switch to the merged structure (a single ``lkb_reparam``); the weights are loaded afterwards."""
        if self.merged:
            return
        old = self.lkb_origin.conv
        new = LargeKernelDWConv(old.in_channels, self.kernel_size, bias=True, impl=old.impl)
        self.lkb_reparam = new.to(device=old.weight.device, dtype=old.weight.dtype)
        del self.lkb_origin
        if hasattr(self, "small_conv"):
            del self.small_conv

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, small_kernel={self.small_kernel}, merged={self.merged}"


class RepLKBlock(nn.Module):
    """x + DropPath(pw2(ReLU(large_kernel(pw1(prelkb_bn(x)))))), pw1 with ReLU, pw2 without."""

    def __init__(self, channels: int, dw_channels: int, kernel_size: int, small_kernel: int | None,
                 drop_path: float = 0.0, form: str = "train") -> None:
        super().__init__()
        full = form == "full"
        self.pw1 = ConvBN.make(channels, dw_channels, 1, relu=True, fused=full)
        self.pw2 = ConvBN.make(dw_channels, channels, 1, fused=full)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, kernel_size, small_kernel, merged=form != "train")
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = nn.Identity() if full else nn.BatchNorm2d(channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    """x + DropPath(pw2(GELU(pw1(preffn_bn(x))))), 1x1 conv-BNs with expansion ``ffn_ratio``."""

    def __init__(self, channels: int, hidden_channels: int, drop_path: float = 0.0, form: str = "train") -> None:
        super().__init__()
        full = form == "full"
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.preffn_bn = nn.Identity() if full else nn.BatchNorm2d(channels)
        self.pw1 = ConvBN.make(channels, hidden_channels, 1, fused=full)
        self.pw2 = ConvBN.make(hidden_channels, channels, 1, fused=full)
        self.nonlinear = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))
        return x + self.drop_path(out)


class RepLKNetStage(nn.Module):
    """``depth`` (RepLKBlock, ConvFFN) pairs in one ModuleList; both blocks of a pair share a drop-path rate.

    ``blocks`` holds the parameters (the official keys ``blocks.2i`` / ``blocks.2i+1``); the forward runs the
    pairs through ``units``, unregistered :class:`ResidualUnit` views of them, so that a unit's hooks fire and a
    unit whose ``forward`` is shadowed (lesion study) is bypassed whole.
    """

    def __init__(self, channels: int, depth: int, kernel_size: int, drop_path_rates: Sequence[float],
                 small_kernel: int | None, dw_ratio: float = 1.0, ffn_ratio: float = 4.0, form: str = "train") -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks.append(RepLKBlock(channels, int(channels * dw_ratio), kernel_size, small_kernel,
                                     drop_path_rates[i], form=form))
            blocks.append(ConvFFN(channels, int(channels * ffn_ratio), drop_path_rates[i], form=form))
        self.blocks = nn.ModuleList(blocks)
        # A plain tuple attribute: nn.Module does not register it, so state-dict keys and parameters are unchanged.
        self.units = tuple(ResidualUnit(blocks[i], blocks[i + 1]) for i in range(0, len(blocks), 2))
        self.norm = nn.Identity()  # the official BN here exists only for XL's downstream (detection) heads
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(unit, x, use_reentrant=False)
            else:
                x = unit(x)
        return x


class RepLKNet(nn.Module):
    """RepLKNet whose large depthwise kernel is set per stage (``kernel_size``: odd int or list of 4).

    ``small_kernel``: size of the parallel re-parameterizable small kernel (odd, smaller than every large kernel)
    or None. ``deploy``: False (training form), True / "kernels" (official re-parameterized form) or "full".
    Plain BatchNorm everywhere; SyncBatchNorm comes from Lightning's ``trainer.sync_batchnorm``.
    """

    model_config: ModelConfig | None = None  # set by create_model
    model_name: str | None = None

    def __init__(self, kernel_size: KernelSpec = (31, 29, 27, 13), layers: Sequence[int] = (2, 2, 18, 2),
                 channels: Sequence[int] = (128, 256, 512, 1024), small_kernel: int | None = 5,
                 dw_ratio: float = 1.0, ffn_ratio: float = 4.0, num_classes: int = 1000, in_chans: int = 3,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0, deploy: bool | str = False,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        if len(layers) != len(channels):
            raise ConfigError(f"layers {list(layers)} and channels {list(channels)} must have the same length")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        self.kernel_sizes = stage_kernel_sizes(kernel_size, len(layers))
        if small_kernel is not None:
            (small_kernel,) = stage_kernel_sizes(small_kernel, 1, name="small_kernel")
            too_small = [k for k in self.kernel_sizes if k <= small_kernel]
            if too_small:
                raise ConfigError(
                    f"small_kernel {small_kernel} must be smaller than every large kernel, got kernel_size "
                    f"{list(self.kernel_sizes)}; use small_kernel: null (as RepLKNet-3B) for kernels <= "
                    f"{small_kernel}, or a smaller odd small_kernel")
        self.form = normalize_form(deploy)
        if self.form == "full" and num_classes == 0:
            raise ConfigError("deploy='full' folds the final BN into the Linear head, which num_classes 0 removes; "
                              "use deploy=True (kernels only)")
        self.small_kernel = small_kernel
        self.num_classes = num_classes
        self.num_features = channels[-1]
        self.drop_rate = drop_rate
        full = self.form == "full"
        c0 = channels[0]
        self.stem = nn.ModuleList([
            ConvBN.make(in_chans, c0, 3, stride=2, relu=True, fused=full),
            ConvBN.make(c0, c0, 3, groups=c0, relu=True, fused=full),
            ConvBN.make(c0, c0, 1, relu=True, fused=full),
            ConvBN.make(c0, c0, 3, stride=2, groups=c0, relu=True, fused=full),
        ])
        # Computed on the CPU so that building under torch.device("meta") works (MAC counting).
        rates = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        start = 0
        for i, (depth, ch) in enumerate(zip(layers, channels)):
            self.stages.append(RepLKNetStage(ch, depth, self.kernel_sizes[i], rates[start:start + depth], small_kernel,
                                             dw_ratio, ffn_ratio, form=self.form))
            start += depth
            if i < len(layers) - 1:
                nxt = channels[i + 1]
                self.transitions.append(nn.Sequential(
                    ConvBN.make(ch, nxt, 1, relu=True, fused=full),
                    ConvBN.make(nxt, nxt, 3, stride=2, groups=nxt, relu=True, fused=full)))
        self.norm = nn.Identity() if full else nn.BatchNorm2d(channels[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        # With the final BN folded in ("full"), the classifier carries that BN, so it must stay a Linear.
        self.head = nn.Linear(channels[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    # --- lk_ablate model contract (contract.AblationModel) -------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The residual units in forward order: one :class:`ResidualUnit` per (RepLKBlock, ConvFFN) pair, 24 for
        the 31B/31L/XL depths; ``unit[0]`` is the RepLKBlock, ``unit[1]`` the ConvFFN (``contract.unit_parts``).

        Both members are residual (``x + f(x)``); the stage's forward calls the unit, so bypassing it bypasses both.
        """
        return [u for s in self.stages for u in s.units]

    def block_stages(self) -> list[int]:
        """The stage index of each of ``blocks()``."""
        return [i for i, s in enumerate(self.stages) for _ in s.units]

    def large_kernel_convs(self) -> list[LargeKernelDWConv]:
        """The ablated large depthwise convs in order (``lkb_origin.conv`` or ``lkb_reparam``)."""
        return [m for m in self.modules() if isinstance(m, LargeKernelDWConv)]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        if self.form == "full":
            raise ConfigError("reset_classifier on a fully fused RepLKNet would drop its folded final BN; "
                              "reset the classifier before `reparameterize('full')`")
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    @property
    def num_layer_decay_ids(self) -> int:
        """Number of layer-decay groups: 14 for the (2, 2, 18, 2) variants, as the official optim_factory."""
        return self._layer_decay_starts()[-1] + 1

    def layer_decay_id(self, param_name: str) -> int:
        """The official fine-tuning layer-decay group of a parameter (``get_num_layer_for_replknet``).

        stem 0; stage 0 (and transition 0) 1; stage 1 (and transition 1) 2; stage 2 in groups of 4 blocks from 3
        (transition 2 joins the last); stage 3 next; norm and head last. The official lr scale of group i is
        ``layer_decay ** (num_layer_decay_ids - 1 - i)`` (:func:`~lk_ablate.models.contract.layer_decay_group_starts`).
        """
        parts = param_name.split(".")
        starts = self._layer_decay_starts()
        if parts[0] == "stem":
            return 0
        if parts[0] == "stages":
            stage, block = int(parts[1]), int(parts[3])
            return starts[stage] + (block // 4 if stage == 2 else 0)
        if parts[0] == "transitions":  # with the last group of the stage before it
            return starts[int(parts[1]) + 1] - 1
        return starts[-1]

    def _layer_decay_starts(self) -> list[int]:
        return layer_decay_group_starts([len(s.blocks) for s in self.stages], per_group=4)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (the official ``use_checkpoint``) to save memory."""
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    # --- forward -----------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and transitions: the last stage's map before the final BN."""
        for layer in self.stem:
            x = layer(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.norm(x)), 1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- structural re-parameterization ----------------------------------------------------------
    def reparameterize(self, mode: str | bool = "kernels") -> "RepLKNet":
        """Re-parameterize in place: "kernels" (official merge) or "full" (also fold every BN); returns self.

        Uses the BN running statistics, so the result equals the original in eval mode (to check on a GPU, turn
        TF32 off: TF32 convolutions alone differ by ~1e-3). Asking for a form the model already has (or has gone
        beyond) is a no-op.
        """
        mode = normalize_form(mode)
        if mode == "train":
            raise ConfigError("cannot re-parameterize back to the training form; rebuild the model instead")
        if FORM_ORDER[mode] <= FORM_ORDER[self.form]:
            return self
        if mode == "full" and not isinstance(self.head, nn.Linear):
            raise ConfigError("the full form folds the final BN into the Linear head, and this model has none "
                              "(num_classes 0); use mode 'kernels'")
        sd = reparam_state_dict(self.state_dict(), mode, eps=self._bn_eps())
        self._restructure(mode)
        self.load_state_dict(sd, strict=True)
        return self

    def _bn_eps(self) -> float:
        eps = {m.eps for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        if len(eps) > 1:  # pragma: no cover - the model builds every BN with the default eps
            raise ConfigError(f"BatchNorm layers with different eps {sorted(eps)} cannot be folded in one pass")
        return eps.pop() if eps else 1e-5

    def _restructure(self, mode: str) -> None:
        """Swap modules to ``mode``'s structure (same devices and dtypes); weights are loaded by the caller."""
        for m in self.modules():
            if isinstance(m, ReparamLargeKernelConv):
                m.merge_()
        if mode == "full":
            for m in list(self.modules()):
                if isinstance(m, ConvBN):
                    m.fuse_()
                elif isinstance(m, RepLKBlock):
                    m.prelkb_bn = nn.Identity()
                elif isinstance(m, ConvFFN):
                    m.preffn_bn = nn.Identity()
            self.norm = nn.Identity()
        self.form = mode
        self.train(self.training)

    def convert_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official checkpoints use our keys; a less merged checkpoint is re-parameterized to this model's form."""
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        form = state_dict_form(sd)
        if FORM_ORDER[form] > FORM_ORDER[self.form]:
            raise DataError(f"the checkpoint is re-parameterized (form {form!r}) but the model is in form "
                            f"{self.form!r}; build the model with deploy={form!r} to load it")
        if form != self.form:
            sd = reparam_state_dict(sd, self.form, eps=self._bn_eps())
        return sd


def _with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv``'s structure with a bias, on the same device and dtype."""
    if conv.bias is not None:
        return conv
    w = conv.weight
    if isinstance(conv, LargeKernelDWConv):
        new: nn.Conv2d = LargeKernelDWConv(conv.in_channels, conv.kernel_size[0], bias=True, impl=conv.impl)
    else:
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    return new.to(device=w.device, dtype=w.dtype)


def check_equivalence(sd: Mapping[str, torch.Tensor], merged: Mapping[str, torch.Tensor], image_size: int = 64,
                      batch_size: int = 2, seed: int = 0) -> float:
    """Build a RepLKNet for each state dict (architecture read from its shapes), load each strictly, and return the
    norm-wise relative output difference in eval mode (``lk_ablate reparam``'s check of a merge)."""
    nets = []
    for weights in (sd, merged):
        net = RepLKNet(**infer_replknet_kwargs(weights)).eval()
        try:
            net.load_state_dict(weights, strict=True)
        except RuntimeError as e:  # keys or shapes the inferred architecture does not have
            raise DataError(f"the checkpoint does not fit a RepLKNet built from its own shapes: {e}") from None
        nets.append(net)
    before, after = nets
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, before.stem[0].conv.in_channels, image_size, image_size, generator=g)
    with torch.no_grad():
        y0, y1 = before(x).double(), after(x).double()
    return float((y1 - y0).norm() / y0.norm())


def _build(kernel_size: KernelSpec, channels: Sequence[int], small_kernel: int | None, dw_ratio: float = 1.0,
           **kwargs) -> RepLKNet:
    return RepLKNet(kernel_size, layers=(2, 2, 18, 2), channels=channels, small_kernel=small_kernel,
                    dw_ratio=dw_ratio, **kwargs)


_CFG_224 = ModelConfig(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")


@register_model(_CFG_224)
def replknet_31b(kernel_size: KernelSpec = (31, 29, 27, 13), small_kernel: int | None = 5, **kwargs) -> RepLKNet:
    """RepLKNet-31B: layers (2, 2, 18, 2), channels (128, 256, 512, 1024), small kernel 5."""
    return _build(kernel_size, (128, 256, 512, 1024), small_kernel, **kwargs)


# The released 31L weights are ImageNet-22K -> 1K fine-tuned at 384 px; the official eval warps (resizes the
# whole image to 384x384, no crop) at >= 384 px: crop_mode "squash" with crop_pct 1.0.
@register_model(ModelConfig(input_size=(3, 384, 384), crop_pct=1.0, interpolation="bicubic", crop_mode="squash"))
def replknet_31l(kernel_size: KernelSpec = (31, 29, 27, 13), small_kernel: int | None = 5, **kwargs) -> RepLKNet:
    """RepLKNet-31L: layers (2, 2, 18, 2), channels (192, 384, 768, 1536), small kernel 5."""
    return _build(kernel_size, (192, 384, 768, 1536), small_kernel, **kwargs)


# XL was pre-trained on MegData-73M and fine-tuned on ImageNet-1K at 320 px with mean = std = 0.5.
@register_model(ModelConfig(input_size=(3, 320, 320), crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            interpolation="bicubic"))
def replknet_xl(kernel_size: KernelSpec = (27, 27, 27, 13), small_kernel: int | None = None, **kwargs) -> RepLKNet:
    """RepLKNet-XL: layers (2, 2, 18, 2), channels (256, 512, 1024, 2048), dw_ratio 1.5, no small kernel."""
    return _build(kernel_size, (256, 512, 1024, 2048), small_kernel, dw_ratio=1.5, **kwargs)


@register_model(_CFG_224, family="replknet_31b")
def replknet_3b(kernel_size: KernelSpec = 3, small_kernel: int | None = None, **kwargs) -> RepLKNet:
    """RepLKNet-3B: RepLKNet-31B with every large kernel 3x3 and no small kernel (the paper's Table 5 baseline)."""
    return _build(kernel_size, (128, 256, 512, 1024), small_kernel, **kwargs)
