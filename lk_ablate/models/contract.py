"""The model contract every registered model implements, and one adapter that finds the same units in timm models.

Callers (training's layer decay, checkpoint loading, the lesion and feature-variance analyses) use
:class:`AblationModel` instead of probing for methods, and :func:`units` / :func:`unit_stages` /
:func:`unit_parts` to find the residual units of any model they are handed, lk_ablate's or timm's.

A *residual unit* computes ``x + f(x)`` (identity shortcut), so removing it (making it return its input) leaves a
working network: one ConvNeXt block; one RepLKNet (RepLKBlock, ConvFFN) pair (:class:`ResidualUnit`, both
members residual); one ViT block; one ResNet block without a projection shortcut. Downsampling layers and
transitions are not units.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from ..base.errors import ConfigError
from .layers import LargeKernelDWConv
from .model_config import ModelConfig

__all__ = ["AblationModel", "ResidualUnit", "layer_decay_group_starts", "unit_parts", "unit_stages", "units"]

StateDict = dict[str, torch.Tensor]


@runtime_checkable
class AblationModel(Protocol):
    """What lk_ablate's training, loading and analyses may rely on in a registered model.

    ``model_config`` and ``model_name`` are set by ``create_model`` (None on a model built from its class).
    Layer decay (fine-tuning): parameter ``name`` is in group ``layer_decay_id(name)`` of
    ``num_layer_decay_ids``, ids increasing with depth; group i's lr scale is ``decay ** (num - 1 - i)``.
    """

    kernel_sizes: tuple[int, ...]
    model_config: ModelConfig | None
    model_name: str | None
    num_classes: int
    num_features: int

    @property
    def num_layer_decay_ids(self) -> int: ...

    def layer_decay_id(self, param_name: str) -> int: ...

    def blocks(self) -> list[nn.Module]:
        """The residual units in forward order; calling ``blocks()[i]`` computes unit i, and the model's forward
        calls each of these modules, so shadowing one's ``forward`` (or hooking it) acts on the model."""
        ...

    def block_stages(self) -> list[int]:
        """The stage index of each unit of ``blocks()``."""
        ...

    def large_kernel_convs(self) -> list[LargeKernelDWConv]:
        """The ablated depthwise convolutions in forward order."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def convert_state_dict(self, sd: StateDict) -> StateDict:
        """A foreign checkpoint's state dict (official keys or form) in this model's keys and form."""
        ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


def layer_decay_group_starts(stage_sizes: Sequence[int], per_group: int, deep_stage: int = 2) -> list[int]:
    """The first layer-decay group of each stage, then the head's group (the BEiT rule of the official ConvNeXt and
    RepLKNet fine-tuning code).

    The stem is group 0; each stage is one group except ``deep_stage``, cut into groups of ``per_group`` entries
    of its ``blocks`` (official: 3 ConvNeXt blocks, 4 RepLKNet blocks = 2 pairs). The official functions hard-code
    the depths they were written for (ConvNeXt 3-3-27-3: stage 3 is group 12 whatever the depth); this follows
    the real depths, so it equals them at those depths and numbers the groups contiguously at others.
    """
    starts, nxt = [], 1
    for s, n in enumerate(stage_sizes):
        starts.append(nxt)
        nxt += -(-n // per_group) if s == deep_stage else 1
    return starts + [nxt]


class ResidualUnit(nn.Sequential):
    """Several residual blocks run in sequence as one unit (RepLKNet's (RepLKBlock, ConvFFN) pair).

    A view: the model registers the blocks elsewhere (their state-dict keys stay the model's) and keeps this
    object unregistered, so it owns no parameters and is not in ``named_modules()``. Its ``training`` flag is
    not kept in step with the model's; the blocks' flags are the ones that count.
    """


def unit_parts(unit: nn.Module) -> list[nn.Module]:
    """The residual blocks a unit is made of: a :class:`ResidualUnit`'s members, else the unit itself."""
    return list(unit) if isinstance(unit, ResidualUnit) else [unit]


def _resnet_layers(model: nn.Module) -> list[nn.Module] | None:
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    return layers if all(isinstance(m, nn.Sequential) for m in layers) else None


def _timm_stages(model: nn.Module) -> list[nn.Module] | None:
    stages = getattr(model, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and all(
            isinstance(getattr(s, "blocks", None), (nn.Sequential, nn.ModuleList)) for s in stages):
        return list(stages)
    return None


def _units_and_stages(model: nn.Module) -> tuple[list[nn.Module], list[int] | None]:
    if isinstance(model, AblationModel):
        return model.blocks(), model.block_stages()
    stages = _timm_stages(model)
    if stages is not None:  # timm ConvNeXt-like: stages[i].blocks[j]
        pairs = [(b, i) for i, s in enumerate(stages) for b in s.blocks]
        return [b for b, _ in pairs], [i for _, i in pairs]
    if isinstance(getattr(model, "blocks", None), nn.Sequential):  # timm ViT: one stage, no stage indices
        return list(model.blocks), None
    layers = _resnet_layers(model)
    if layers is not None:  # timm / torchvision ResNet: a block with a projection shortcut is not x + f(x)
        pairs = [(b, i) for i, layer in enumerate(layers) for b in layer if getattr(b, "downsample", None) is None]
        return [b for b, _ in pairs], [i for _, i in pairs]
    raise ConfigError(f"{type(model).__name__} exposes no residual units (neither the lk_ablate model contract nor "
                      "timm's stages[*].blocks, blocks or layer1..4)")


def units(model: nn.Module) -> list[nn.Module]:
    """The residual units of an lk_ablate model (``blocks()``) or a timm ConvNeXt / ViT / ResNet, in forward order."""
    return _units_and_stages(model)[0]


def unit_stages(model: nn.Module) -> list[int] | None:
    """The stage index of each of ``units(model)``; None for a model without stages (ViT)."""
    return _units_and_stages(model)[1]
