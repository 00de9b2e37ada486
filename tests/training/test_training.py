"""The recipe's pieces: lr scaling, warmup + cosine, weight-decay groups, sharded order, seeded samples."""
import math

import pytest
import torch

from lk_ablate.data.sampler import ShardedBatchSampler
from lk_ablate.data.seeding import derive_seed, seeded_rng
from lk_ablate.training.schedule import scaled_lr, warmup_cosine_factor


def test_linear_lr_scaling():
    assert scaled_lr(4e-3, 4096, 4096) == 4e-3
    assert scaled_lr(4e-3, 4096, 128 * 8 * 2) == pytest.approx(2e-3, rel=1e-15)
    assert scaled_lr(4e-3, 4096, 64) == pytest.approx(6.25e-5, rel=1e-15)


def test_warmup_then_cosine_values():
    peak, floor = 4e-3, 1e-6
    f = lambda s: peak * warmup_cosine_factor(s, total_steps=110, warmup_steps=10, peak_lr=peak, min_lr=floor)
    assert f(0) == pytest.approx(peak / 10, rel=1e-12)
    assert f(4) == pytest.approx(peak * 5 / 10, rel=1e-12)
    assert f(10) == pytest.approx(peak, rel=1e-12)  # cosine starts at the peak
    assert f(60) == pytest.approx(floor + (peak - floor) * 0.5, rel=1e-12)  # half way
    assert f(35) == pytest.approx(floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert f(110) == pytest.approx(floor, rel=1e-12)


def test_no_weight_decay_on_1d_params_and_biases():
    from lk_ablate.training import ImageClassifier
    from timm.optim import param_groups_weight_decay

    m = ImageClassifier("convnext_demo", kernel_size=3, num_classes=10).model
    groups = {g["weight_decay"]: g for g in param_groups_weight_decay(m, 0.05)}
    decay, no_decay = groups[0.05], groups[0.0]
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "stages.0.blocks.0.gamma" in nd and "stages.0.blocks.0.conv_dw.bias" in nd and "head.norm.weight" in nd


@pytest.mark.parametrize("n,world,batch", [(11, 2, 2), (10, 3, 3), (7, 2, 4)])
def test_eval_shards_cover_every_sample_once(n, world, batch):
    seen = []
    for r in range(world):
        s = ShardedBatchSampler(n, batch, shuffle=False, drop_last=False, rank=r, world_size=world)
        idx = [i for b in s for i, _ in b]
        assert len(s) == math.ceil(len(idx) / batch)
        seen += idx
    assert sorted(seen) == list(range(n))


def test_train_shards_are_disjoint_equal_and_depend_on_epoch():
    shards = []
    for r in range(2):
        s = ShardedBatchSampler(23, 4, shuffle=True, drop_last=True, seed=5, rank=r, world_size=2)
        s.set_epoch(3)
        shards.append([i for b in s for i, e in b if e == 3])
        assert len(s) == 2 and len(shards[-1]) == 8
    assert not set(shards[0]) & set(shards[1])
    s.set_epoch(4)
    assert [i for b in s for i, _ in b] != shards[1]


def test_resume_skips_completed_batches():
    s = ShardedBatchSampler(40, 4, shuffle=True, drop_last=True, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.skip_batches = 3
    assert list(s) == full[3:]
    assert list(s) == full  # the skip applies once


def test_seeded_rng_is_reproducible_and_restores_state():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    with seeded_rng(derive_seed(1, 2, 3)):
        a = torch.rand(5)
    after = torch.rand(3)
    assert torch.equal(before, after)  # the block did not consume the outer stream
    with seeded_rng(derive_seed(1, 2, 3)):
        assert torch.equal(torch.rand(5), a)
    assert derive_seed(1, 2, 3) != derive_seed(1, 2, 4) != derive_seed(1, 3, 3)


def test_fine_tuning_drops_only_a_mismatched_head():
    from lk_ablate import create_model
    from lk_ablate.base.errors import DataError
    from lk_ablate.models.checkpoints import load_checkpoint

    src = create_model("convnext_demo", kernel_size=3, num_classes=10)
    dst = create_model("convnext_demo", kernel_size=3, num_classes=5)
    fc_before = dst.head.fc.weight.clone()
    load_checkpoint(dst, src.state_dict(), drop_head=True)
    assert torch.equal(dst.stages[3].blocks[1].conv_dw.weight, src.stages[3].blocks[1].conv_dw.weight)
    assert torch.equal(dst.head.fc.weight, fc_before)  # new head keeps its initialisation
    with pytest.raises(DataError, match="wrong kernel size"):  # a body mismatch is never silently skipped
        load_checkpoint(create_model("convnext_demo", kernel_size=5, num_classes=5), src.state_dict(),
                        drop_head=True)


def test_layer_decay_scales_lr_per_layer():
    from lk_ablate.training import ImageClassifier

    module = ImageClassifier("replknet_3b", num_classes=10, layer_decay=0.7, ema_decay=None)
    groups = module.param_groups(lr=1e-3)
    model = module.model
    n = model.num_layer_decay_ids
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["lr"] == pytest.approx(1e-3 * 0.7 ** (n - 1 - model.layer_decay_id(name)), rel=1e-12)
        assert g["weight_decay"] == (0.0 if p.ndim <= 1 or name.endswith(".bias") else 0.05)
    assert by_param[id(model.head.weight)]["lr"] == pytest.approx(1e-3, rel=1e-12)


def test_randaugment_posterize_at_magnitude_10_does_not_crash():
    """timm's PosterizeIncreasing keeps 0 bits at magnitude 10; Pillow >= 11 raises there without our patch."""
    import numpy as np
    from PIL import Image

    from lk_ablate.data.transforms import AugmentConfig, train_transform
    from lk_ablate.models.registry import ModelConfig

    t = train_transform(ModelConfig(input_size=(3, 32, 32)), AugmentConfig())
    ops = [op for tr in t.transforms for op in getattr(tr, "ops", []) if op.name.startswith("Posterize")]
    assert len(ops) == 1
    img = Image.fromarray(np.full((40, 40, 3), 200, np.uint8))
    out = ops[0].aug_fn(img, 0)
    assert np.asarray(out).max() == 0
    assert np.array_equal(np.asarray(ops[0].aug_fn(img, 4)), np.asarray(img) & 0xF0)


def test_dwconv_impl_is_a_config_option():
    from lk_ablate.base.errors import ConfigError
    from lk_ablate.models.layers import LargeKernelDWConv
    from lk_ablate.training import ImageClassifier

    m = ImageClassifier("convnext_demo", kernel_size=13, num_classes=10, dwconv_impl="fft", ema_decay=None)
    impls = {c.impl for c in m.model.modules() if isinstance(c, LargeKernelDWConv)}
    assert impls == {"fft"}
    with pytest.raises(ConfigError, match="dwconv_impl"):
        ImageClassifier("convnext_demo", kernel_size=13, num_classes=10, dwconv_impl="winograd")
