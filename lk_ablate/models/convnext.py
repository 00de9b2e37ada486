"""ConvNeXt with a configurable depthwise kernel (Liu et al., 2022), timm's module and key names.

State-dict keys equal timm's ``convnext_*`` (stem.0, stages.i.downsample, stages.i.blocks.j.conv_dw, mlp.fc1,
head.norm, head.fc, ...); official facebookresearch checkpoints are converted on load (checkpoints.py).
Implements the model contract (:class:`lk_ablate.models.contract.AblationModel`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath, LayerNorm, LayerNorm2d, Mlp, NormMlpClassifierHead, trunc_normal_

from ..base.errors import ConfigError
from .contract import layer_decay_group_starts
from .kernel_sizes import KernelSpec, stage_kernel_sizes
from .layers import LargeKernelDWConv
from .registry import ModelConfig, register_model

StateDict = dict[str, torch.Tensor]

__all__ = ["ConvNeXt", "ConvNeXtBlock", "convnext_tiny", "convnext_demo"]


class ConvNeXtBlock(nn.Module):
    """dwconv kxk -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> layer scale -> DropPath, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, ls_init_value: float | None = 1e-6,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = LargeKernelDWConv(dim, kernel_size, bias=True)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)  # the MLP runs channels-last, as in the official code
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class ConvNeXtStage(nn.Module):
    """Optional LayerNorm + 2x2/2 downsampling, then ``depth`` blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, kernel_size: int, drop_path_rates: Sequence[float],
                 ls_init_value: float | None, downsample: bool) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=1e-6), nn.Conv2d(in_chs, out_chs, 2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_chs, kernel_size, ls_init_value=ls_init_value, drop_path=drop_path_rates[j])
            for j in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self.blocks(x)
        for blk in self.blocks:  # recompute each block in the backward pass instead of keeping its activations
            x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return x


class ConvNeXt(nn.Module):
    """ConvNeXt whose depthwise kernel is set per stage (``kernel_size``: odd int or list of 4)."""

    model_config: ModelConfig | None = None  # set by create_model
    model_name: str | None = None

    def __init__(self, kernel_size: KernelSpec = 7, depths: Sequence[int] = (3, 3, 9, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), num_classes: int = 1000, in_chans: int = 3,
                 patch_size: int = 4, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                 ls_init_value: float | None = 1e-6, head_init_scale: float = 1.0) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ConfigError(f"depths {list(depths)} and dims {list(dims)} must have the same length")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.kernel_sizes = stage_kernel_sizes(kernel_size, len(depths))
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size),
                                  LayerNorm2d(dims[0], eps=1e-6))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, prev, start, stride = [], dims[0], 0, patch_size
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            # timm's rule: a stride-2 stem is followed by a downsampling first stage, so the net stride stays 32
            downsample = i > 0 or stride == 2
            stages.append(ConvNeXtStage(prev, dim, depth, self.kernel_sizes[i], rates[start:start + depth],
                                        ls_init_value, downsample=downsample))
            prev, start, stride = dim, start + depth, stride * (2 if downsample else 1)
        self.stages = nn.Sequential(*stages)
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(self.num_features, num_classes, pool_type="avg", drop_rate=drop_rate,
                                          norm_layer=LayerNorm2d)
        self.apply(self._init_weights)
        if isinstance(self.head.fc, nn.Linear):
            with torch.no_grad():
                self.head.fc.weight.mul_(head_init_scale)
                self.head.fc.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- lk_ablate model contract (contract.AblationModel) ---------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The residual units in forward order: one ConvNeXt block each (18 for ConvNeXt-T)."""
        return [b for s in self.stages for b in s.blocks]

    def block_stages(self) -> list[int]:
        """The stage index of each of ``blocks()``."""
        return [i for i, s in enumerate(self.stages) for _ in s.blocks]

    def large_kernel_convs(self) -> list[LargeKernelDWConv]:
        """The ablated depthwise convs in forward order (each block's ``conv_dw``)."""
        return [b.conv_dw for b in self.blocks()]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (torch.utils.checkpoint) to save activation memory."""
        for s in self.stages:
            s.grad_checkpointing = enable

    @property
    def num_layer_decay_ids(self) -> int:
        """Number of layer-decay groups: 14 for a 27-block third stage (as the official code), 8 for ConvNeXt-T."""
        return self._layer_decay_starts()[-1] + 1

    def layer_decay_id(self, param_name: str) -> int:
        """The fine-tuning layer-decay group of a parameter (official ``get_num_layer_for_convnext``, our keys).

        stem 0; stage 0 1; stage 1 (and its downsample) 2; stage 2 (its downsample with the first group) in groups
        of 3 blocks from 3; stage 3 (and its downsample) next; head last. For ConvNeXt-T's 9-block third stage
        that is 8 groups, where the official function's hard-coded ids would be 0-5 then 12-13
        (:func:`~lk_ablate.models.contract.layer_decay_group_starts`).
        """
        parts = param_name.split(".")
        starts = self._layer_decay_starts()
        if parts[0] == "stem":
            return 0
        if parts[0] == "stages":
            stage = int(parts[1])
            block = int(parts[3]) if parts[2] == "blocks" else 0  # downsample: with the stage's first group
            return starts[stage] + (block // 3 if stage == 2 else 0)
        return starts[-1]  # norm_pre, head

    def _layer_decay_starts(self) -> list[int]:
        return layer_decay_group_starts([len(s.blocks) for s in self.stages], per_group=3)

    def convert_state_dict(self, sd: StateDict) -> StateDict:
        """Rename official facebookresearch/ConvNeXt keys to ours (timm's); other layouts pass through."""
        if "downsample_layers.0.0.weight" not in sd:
            return sd
        out = {}
        for k, v in sd.items():
            parts = k.split(".")
            if parts[0] == "downsample_layers":
                i = int(parts[1])
                k = ("stem." if i == 0 else f"stages.{i}.downsample.") + ".".join(parts[2:])
            elif parts[0] == "stages":
                name = {"dwconv": "conv_dw", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2"}.get(parts[3], parts[3])
                k = ".".join([f"stages.{parts[1]}.blocks.{parts[2]}", name, *parts[4:]])
            elif parts[0] == "norm":
                k = "head.norm." + ".".join(parts[1:])
            elif parts[0] == "head":
                k = "head.fc." + ".".join(parts[1:])
            out[k] = v
        return out

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(ModelConfig(crop_pct=0.875))
def convnext_tiny(kernel_size: KernelSpec = 7, **kwargs) -> ConvNeXt:
    """ConvNeXt-T: depths (3, 3, 9, 3), dims (96, 192, 384, 768)."""
    return ConvNeXt(kernel_size, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **kwargs)


@register_model(ModelConfig(input_size=(3, 32, 32), crop_pct=1.0, mean=(0.286,) * 3, std=(0.353,) * 3,
                            interpolation="bilinear", num_classes=10))
def convnext_demo(kernel_size: KernelSpec = 7, **kwargs) -> ConvNeXt:
    """The embedded demo's ConvNeXt (same blocks, reduced): depths (2, 2, 2, 2), dims (32, 64, 128, 256), patch 2.

    As in timm, the 2x2 stem is followed by a downsampling first stage (8x8 maps there at 32 px, net stride 32).

    Its config is Fashion-MNIST's: 28 px images upsampled to 32, mean/std of the training set.
    """
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("patch_size", 2)
    return ConvNeXt(kernel_size, depths=(2, 2, 2, 2), dims=(32, 64, 128, 256), **kwargs)
