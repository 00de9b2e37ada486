"""The one eval transform: uint8 geometry then normalisation, equal to timm's eval transform bit for bit."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from lk_ablate.data.transforms import EvalSpec, eval_transform
from lk_ablate.base.errors import ConfigError
from lk_ablate.models.registry import ModelConfig

CONFIGS = [
    ModelConfig(),  # ConvNeXt-T / RepLKNet-31B at 224: Resize(256) bicubic + CenterCrop(224)
    ModelConfig(input_size=(3, 320, 320), crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3),  # XL: 365, not 366
    ModelConfig(input_size=(3, 384, 384), crop_pct=1.0, crop_mode="squash"),  # RepLKNet's >= 384 px warp
    ModelConfig(interpolation="bilinear", crop_pct=0.9),  # 224 / 0.9 = 248.9 -> 248
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["224", "xl320", "squash384", "bilinear0.9"])
@pytest.mark.parametrize("shape", [(300, 500), (517, 333), (224, 224)])
def test_eval_transform_equals_timm_bit_for_bit(cfg, shape):
    img = Image.fromarray(np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8))
    ref = create_transform(cfg.input_size, is_training=False, interpolation=cfg.interpolation, mean=cfg.mean,
                           std=cfg.std, crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode)(img)
    assert torch.equal(eval_transform(cfg)(img), ref)


def test_uint8_geometry_then_batched_normalize_equals_per_sample_transform():
    spec = EvalSpec.from_model_config(ModelConfig(input_size=(3, 64, 64)))
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (90 + 7 * i, 80, 3), dtype=np.uint8)) for i in range(4)]
    u8 = torch.stack([spec.geometry()(im) for im in imgs])
    assert u8.dtype == torch.uint8 and u8.shape == (4, 3, 64, 64)
    assert torch.equal(spec.normalize(u8), torch.stack([spec.transform()(im) for im in imgs]))
    # The formula, written out: (x / 255 - mean) / std.
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    assert torch.equal(spec.normalize(u8)[0], (u8[0].float() / 255 - mean) / std)
    assert spec.normalize(u8, torch.bfloat16).dtype == torch.bfloat16


def test_resize_rule_is_timm_floor():
    assert ModelConfig(input_size=(3, 320, 320), crop_pct=0.875).resize_size == 365
    assert ModelConfig(crop_pct=0.9).resize_size == 248
    assert ModelConfig().resize_size == 256


def test_no_resize_crops_only_larger_images():
    spec = EvalSpec(crop=(224, 224), resize=None)
    assert spec.geometry()(Image.new("RGB", (224, 224))).shape == (3, 224, 224)
    assert spec.geometry()(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
    assert spec.geometry()(Image.new("RGB", (100, 80))).shape == (3, 80, 100)


def test_bad_spec_is_refused():
    with pytest.raises(ConfigError, match="interpolation"):
        EvalSpec(interpolation="lanczos4")
    with pytest.raises(ConfigError, match="std > 0"):
        EvalSpec(std=(0.0, 1.0, 1.0))
