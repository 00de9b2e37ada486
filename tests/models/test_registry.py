"""Model facts in the registry (lk_ablate.models.registry), read without building a model: default kernel sizes,
ablation family, the one kernel-size label."""
from __future__ import annotations

import pytest
import torch

from lk_ablate.base.errors import ConfigError
from lk_ablate.models.registry import create_model, default_kernel_sizes, kernel_label, list_models, model_family


@pytest.mark.parametrize("name", list_models())
def test_default_kernel_sizes_are_the_built_models(name: str):
    # RepLKNet on the meta device (no weights: only the structure is read); ConvNeXt's init needs data
    with torch.device("meta" if name.startswith("replknet") else "cpu"):
        model = create_model(name)
    assert default_kernel_sizes(name) == tuple(model.kernel_sizes)


def test_default_kernel_sizes_unknown_model_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown model 'nope'.*convnext_tiny"):
        default_kernel_sizes("nope")


def test_families():
    assert model_family("replknet_3b") == "replknet_31b"  # RepLKNet-31B with 3x3 kernels: one ablation
    assert {model_family(n) for n in list_models()} == set(list_models()) - {"replknet_3b"}
    assert model_family("vit_base_patch16_224") == "vit_base_patch16_224"  # any other name: its own family


@pytest.mark.parametrize("kernel, label", [(None, "default"), (31, "31"), ([7, 7, 7, 7], "7"),
                                           ((31, 29, 27, 13), "31-29-27-13")])
def test_kernel_label(kernel, label):
    assert kernel_label(kernel) == label
