"""Every knob of ImageClassifier tested by its effect on the computation, against a reference written in the test.

Each test sets the knobs to values that are neither the recipe's nor neutral (so a knob replaced by its default or
by a neutral constant fails it), runs the real module, in Lightning's loop where the knob acts there, and compares
what the computation saw or produced with the recipe's definition worked out here (tests/training/recipe_probes.py):
per-block drop-path rates from the linear rule; the soft targets and the loss from hand-built smoothed one-hot
targets mixed by the lam read back from the mixed images; mixup/cutmix draws against Beta(alpha, alpha), the CutMix
box rule, mixup_prob and switch_prob; each lr and parameter after each AdamW step from an AdamW written out (lr
scaling with the global batch including gradient accumulation, warmup, cosine to min_lr, layer decay, weight-decay
groups, betas); the EMA from the official update; the memory format of weights and inputs; pretrained weights
with the head dropped; what the seeds decide. scripts/mutants.py holds one mutant per knob, caught here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import make_image_folder
from lk_ablate import create_model
from lk_ablate.models.replknet import RepLKNet
from lk_ablate.training import ImageClassifier
from recipe_probes import (IMG, Recorder, Tensors, adamw_reference, cosine_lr, cutmix_lam_reference,
                           expected_drop_rates, fit, measured_drop_rates, measured_smoothing, mix_draws, read_mix,
                           reference_loss, rel)


def demo(**kw) -> ImageClassifier:
    kw.setdefault("ema_decay", None)
    return ImageClassifier("convnext_demo", kernel_size=3, num_classes=kw.pop("num_classes", 4), **kw)


# --- drop path ----------------------------------------------------------------------------------------------------
def test_drop_path_rate_reaches_every_block_by_the_linear_rule():
    """convnext_demo (8 blocks) at drop_path_rate 0.35: block i drops its residual branch with rate 0.35 i / 7 (the
    official rule, torch.linspace in float32 as the official code: rates to 1e-7), measured from each block's output
    scale; block 0 never drops. At rate 0 no block drops."""
    measured = measured_drop_rates(demo(drop_path_rate=0.35).model)
    expected = expected_drop_rates(0.35, 8)
    assert len(measured) == 8
    for (p, dropped), q in zip(measured, expected):
        assert p == pytest.approx(q, abs=1e-7)
        # 128 samples: Binomial(128, q) dropped (sd <= 5.4); a drop path that scales without dropping fails here
        assert abs(dropped - 128 * q) <= 5 * np.sqrt(128 * q * (1 - q)) + 1e-9
    assert all(p == 0.0 and dropped == 0 for p, dropped in measured_drop_rates(demo(drop_path_rate=0.0).model))


@pytest.mark.slow  # the fast tier reaches the rule's code through ConvNeXt and test_replknet's rate check
def test_replknet_drop_path_pairs_share_the_linear_rate():
    """RepLKNet (the registered depths 2-2-18-2, 1/16 width): both blocks of unit i (RepLKBlock, ConvFFN) drop with
    0.3 i / 23 (official RepLKNet: dpr = linspace(0, rate, sum(layers)), one rate per pair)."""
    torch.manual_seed(0)
    model = RepLKNet((7, 7, 7, 7), layers=(2, 2, 18, 2), channels=(8, 16, 32, 64), small_kernel=5,
                     drop_path_rate=0.3)
    measured = measured_drop_rates(model, n=96)
    expected = expected_drop_rates(0.3, 24, per_unit=2)
    assert len(measured) == 48
    assert [p for p, _ in measured] == pytest.approx(expected, abs=1e-7)


# --- label smoothing, mixup, cutmix -------------------------------------------------------------------------------
def test_mixup_and_cutmix_draws_and_soft_targets_follow_the_knobs():
    """The module's mixup (the object training_step calls), 3000 batches of two images (all 0, all 1; labels 0, 1)
    with mixup_alpha 0.4, cutmix_alpha 2.0, mixup_prob 0.7, mixup_switch_prob 0.3, label_smoothing 0.2, 5 classes:

    - every returned soft target equals lam s(y) + (1 - lam) s(y reversed) with s the one-hot smoothed to off 0.04,
      on 0.84 and lam read back from the images (< 1e-6);
    - 30% of batches unmixed, 21% cutmix, 49% mixup (binomial sd <= 0.0092; bounds 0.04, > 4 sd);
    - mixup's lam ~ Beta(0.4, 0.4) and cutmix's lam ~ CutMix's box rule at Beta(2, 2) (Kolmogorov-Smirnov:
      D < 0.06 at n ~ 1450 / 630, whose 1e-4 critical values are 0.05 / 0.08; against the swapped alphas D > 0.15)."""
    module = demo(num_classes=5, mixup_alpha=0.4, cutmix_alpha=2.0, mixup_prob=0.7, mixup_switch_prob=0.3,
                  label_smoothing=0.2)
    draws = mix_draws(module, 3000, eps=0.2, classes=5)
    assert max(draws.target_errors) < 1e-6
    assert abs(draws.share("none") - 0.30) < 0.04
    assert abs(draws.share("cutmix") - 0.21) < 0.04
    assert abs(draws.share("mixup") - 0.49) < 0.04
    mixup, cutmix = draws.lam_of("mixup"), draws.lam_of("cutmix")
    assert stats.kstest(mixup, stats.beta(0.4, 0.4).cdf).statistic < 0.06
    assert stats.ks_2samp(cutmix, cutmix_lam_reference(2.0, 32, 20000)).statistic < 0.06
    # the test can tell the alphas apart: the same draws against the other alpha
    assert stats.kstest(mixup, stats.beta(2.0, 2.0).cdf).statistic > 0.15
    assert stats.ks_2samp(cutmix, cutmix_lam_reference(0.4, 32, 20000)).statistic > 0.15


@pytest.mark.parametrize("mix", [True, False], ids=["mixup-cutmix", "no-mixup"])
def test_training_loss_is_the_soft_target_cross_entropy(mix):
    """In Lightning's loop, each step's loss equals the cross-entropy against hand-built targets: smoothing 0.2 on 4
    classes, mixed by the lam read back from the model's input and the loaded batch (< 1e-5 relative; float32);
    the smoothing the loss implies is 0.2 (linear in it). With both alphas 0 (no mixup) the input is the batch and
    the loss is plain label-smoothed cross-entropy (the F.cross_entropy path)."""
    alphas = dict(mixup_alpha=0.8, cutmix_alpha=1.0) if mix else dict(mixup_alpha=0.0, cutmix_alpha=0.0)
    module = demo(label_smoothing=0.2, drop_path_rate=0.1, seed=1, **alphas)
    rec = Recorder()
    fit(module, Tensors(16, batch_size=2), rec, max_steps=8)
    kinds = set()
    for b in rec.batches:
        kind, lam = read_mix(b["x"], b["input"])
        kinds.add(kind)
        ref = reference_loss(b["logits"], b["y"], lam, 0.2)
        assert b["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
        assert measured_smoothing(b["logits"], b["y"], lam, b["loss"].item()) == pytest.approx(0.2, abs=1e-4)
    assert kinds == ({"mixup", "cutmix"} if mix else {"none"})


# --- optimizer, lr schedule, EMA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_decay", [None, pytest.param(0.5, marks=pytest.mark.slow)])
def test_adamw_steps_lr_schedule_and_ema_equal_the_recipe(layer_decay):
    """2 epochs of 6 batches of 2 with accumulate_grad_batches 2: 3 optimizer steps per epoch, 6 in all. Global batch
    2 x 1 device x 2 = 4, so the peak lr is base_lr 0.05 x 4 / base_batch_size 8 = 0.0125; warmup_epochs 2/3 =
    2 steps (lr peak/2, peak), then a cosine to min_lr 0.01 at step 6; layer decay 0.5: each parameter's lr (the
    floor too) times 0.5 ** (ids - 1 - its id). Checked at every step against values computed here:

    - each parameter's lr and weight decay (0.3 on weights with ndim > 1 that are not biases, else 0);
    - each parameter after the step equals AdamW written out from the recorded gradients with betas (0.8, 0.9)
      (update < 1e-5 relative; a wrong beta, decay or lr is off by > 5e-3);
    - the EMA after the 6 steps equals the official update from the initial weights, ema = 0.6 ema + 0.4 w_k after
      each optimizer step (< 1e-5 relative to how far it moved)."""
    module = demo(base_lr=0.05, base_batch_size=8, weight_decay=0.3, warmup_epochs=2 / 3, min_lr=0.01,
                  betas=(0.8, 0.9), layer_decay=layer_decay, ema_decay=0.6, drop_path_rate=0.1, seed=2)
    model = module.model
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = Recorder()
    fit(module, Tensors(12, batch_size=2), rec, max_epochs=2, accumulate_grad_batches=2)
    assert len(rec.steps) == 6

    ids = model.num_layer_decay_ids
    scale = {n: 1.0 if layer_decay is None else layer_decay ** (ids - 1 - model.layer_decay_id(n)) for n in initial}
    wd = {n: 0.3 if p.ndim > 1 and not n.endswith(".bias") else 0.0 for n, p in initial.items()}
    peak = 0.05 * (2 * 1 * 2) / 8
    lr = [{n: s * cosine_lr(k, peak, warmup=2, total=6, floor=0.01) for n, s in scale.items()} for k in range(6)]
    assert lr[0]["head.fc.weight"] == pytest.approx(peak / 2) and lr[1]["head.fc.weight"] == pytest.approx(peak)
    reference = adamw_reference(rec.steps, lr, wd, betas=(0.8, 0.9))
    for k, (step, ref) in enumerate(zip(rec.steps, reference)):
        assert set(step["lr"]) == set(initial)  # every parameter in exactly one group (dict keys: once)
        for n in initial:
            assert step["lr"][n] == pytest.approx(lr[k][n], rel=1e-12, abs=0), (k, n)
            assert step["wd"][n] == wd[n], (k, n)
        moved = torch.cat([(step["after"][n] - step["before"][n]).double().flatten() for n in initial])
        expect = torch.cat([(ref[n] - step["before"][n].double()).flatten() for n in initial])
        assert rel(moved, expect) < 1e-5, k

    ema = {n: p.double() for n, p in initial.items()}
    for step in rec.steps:
        ema = {n: 0.6 * ema[n] + 0.4 * step["after"][n].double() for n in ema}
    got = dict(module.ema.module.named_parameters())
    got_flat = torch.cat([got[n].detach().double().flatten() for n in ema])
    ref_flat = torch.cat([ema[n].flatten() for n in ema])
    moved = torch.cat([(ema[n] - initial[n].double()).flatten() for n in ema])
    assert float((got_flat - ref_flat).norm() / moved.norm()) < 1e-5


# --- channels_last ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_channels_last_is_the_memory_format_of_weights_and_inputs(channels_last):
    """What the network really gets, seen from inside its forward: in the training step, the validation step and
    predict_step the input is channels_last-contiguous (else plain contiguous, as the loader gave it), and so is
    every 4-D weight whose format is observable (in and out channels > 1 and spatial > 1: stem and downsampling
    convs), of the model and of its EMA."""
    module = demo(channels_last=channels_last, ema_decay=0.9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    other = torch.contiguous_format if channels_last else torch.channels_last
    seen = []

    def check(model, args):
        x = args[0]
        weights = [p for net in (module.model, module.ema.module) for p in net.parameters()
                   if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1]
        assert len(weights) == 2 * 5  # stem + 4 downsampling convs, model and EMA
        assert all(p.is_contiguous(memory_format=fmt) and not p.is_contiguous(memory_format=other) for p in weights)
        assert x.is_contiguous(memory_format=fmt) and not x.is_contiguous(memory_format=other)
        seen.append(model.training)

    module.model.register_forward_pre_hook(check)
    fit(module, Tensors(4, batch_size=2), max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    module.eval()  # as Trainer.predict does
    module.predict_step(torch.randn(2, 3, IMG, IMG), 0)
    assert seen == [True, False, False]  # train step, validation step, predict


# --- pretrained_path ----------------------------------------------------------------------------------------------
def test_pretrained_path_loads_the_body_drops_a_mismatched_head_and_seeds_the_ema(tmp_path):
    """A 10-class convnext_demo saved to a file, fine-tuned to 4 classes: the network computes the file's features
    (bit for bit), its classifier is the fresh one a run without the file gets (same torch seed), and the EMA
    starts from the loaded weights. With 10 classes the head fits and is loaded: the logits are the file's."""
    torch.manual_seed(5)
    src = create_model("convnext_demo", kernel_size=3, num_classes=10).eval()
    path = tmp_path / "src.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(0)
    fresh = demo(ema_decay=0.9).eval()
    torch.manual_seed(0)
    tuned = demo(ema_decay=0.9, pretrained_path=str(path)).eval()
    x = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = src.forward_features(x)
        assert rel(fresh.model.forward_features(x), feats) > 0.1  # the file's body is not what init gives
        assert torch.equal(tuned.model.forward_features(x), feats)
        assert torch.equal(tuned.model(x), fresh.model.forward_head(feats))
        assert torch.equal(tuned.ema.module(x), tuned.model(x))
        same_classes = ImageClassifier("convnext_demo", kernel_size=3, num_classes=10, ema_decay=None,
                                       pretrained_path=str(path)).eval()
        assert torch.equal(same_classes.model(x), src(x))


# --- seeds --------------------------------------------------------------------------------------------------------
def _first_step(root, seed_everything: int, model_seed: int | None = None, data_seed: int | None = None):
    """(initial weights, first loaded batch, the network's input in the first step) of a 1-step fit."""
    import lightning as L

    from lk_ablate.data import ImageFolderDataModule

    L.seed_everything(seed_everything, verbose=False)
    module = demo(drop_path_rate=0.1, seed=model_seed)  # mixup 0.8 / cutmix 1.0 (defaults)
    weights = torch.cat([p.detach().flatten().clone() for p in module.model.parameters()])
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, input_size=IMG, seed=data_seed,
                                 persistent_workers=False)
    rec = Recorder()
    fit(module, data, rec, max_steps=1)
    (b,) = rec.batches
    return weights, b["x"], b["input"]


def test_seeds_decide_initial_weights_first_batches_and_step_draws(tmp_path, monkeypatch):
    """seed_everything (the run's seed: the CLI's, exported as PL_GLOBAL_SEED) decides the initial weights, the
    first batch (order and per-sample augmentation) and the mixup/cutmix/drop-path draws: equal for the same seed,
    different for another. An explicit data seed (DataModule ``seed``) or model seed (``model.seed``) replaces it for
    its own consumer only. Runs: (seed_everything, model seed, data seed)."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything exports it; restored afterwards
    root = make_image_folder(tmp_path / "data", classes=4, per_class=2, size=36)
    a, b, c = _first_step(root, 1), _first_step(root, 1), _first_step(root, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # weights, batch, mixed input
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    d, e = _first_step(root, 1, data_seed=9), _first_step(root, 2, data_seed=9)
    assert torch.equal(d[0], a[0]) and not torch.equal(d[1], a[1])  # the data seed, not the global one
    assert torch.equal(d[1], e[1]) and not torch.equal(d[2], e[2])  # same batch; the global seed draws the mix
    f, g = _first_step(root, 1, model_seed=9, data_seed=9), _first_step(root, 2, model_seed=9, data_seed=9)
    assert not torch.equal(f[0], g[0]) and torch.equal(f[1], g[1]) and torch.equal(f[2], g[2])  # model seed's draws
    assert torch.equal(f[1], d[1]) and not torch.equal(f[2], d[2])  # model seed 9, not the global 1
