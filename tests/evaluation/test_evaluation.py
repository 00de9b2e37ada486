"""The one evaluation path: `robustness` and `analyze` load a checkpoint through ``load_for_eval`` and feed its
model the same tensors (same logits); the loader's weight-set choice, shared structure and channels_last."""
from __future__ import annotations

import pytest
import torch
from test_protocol import _demo_ckpt, random_tree, recorded  # noqa: F401  (fixture)
from test_robustness_support import imagenet_wnids

from lk_ablate.cli import main
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.evaluation import ModelOptions, load_for_eval, weight_sets


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", ["null", "true"])  # as trained (contiguous here), and channels_last
def test_robustness_and_analyze_feed_the_model_the_same_tensors(tmp_path, recorded, channels_last):  # noqa: F811
    random_tree(tmp_path / "val", imagenet_wnids(), size=(41, 37), seed=5)  # 1000 classes, one image each
    ckpt = _demo_ckpt(tmp_path / "run.ckpt")
    common = ["--ckpt_path", str(ckpt), "--weights", "ema", "--data.imagenet_val", str(tmp_path / "val"),
              "--data.batch_size", "50", "--data.num_workers", "0", "--device", "cpu",
              "--model.channels_last", channels_last]
    assert main(["robustness", *common, "--results_path", str(tmp_path / "r.json")]) == 0
    n_rob = len(recorded)
    assert n_rob == 20  # 1000 images in batches of 50, EMA weights only
    assert main(["analyze", "fgsm", *common, "--fgsm.eps", "[0.01]", "--fgsm.max_images", "100",
                 "--results_path", str(tmp_path / "a.json")]) == 0
    analyze = recorded[n_rob:]
    assert len(analyze) == 6  # per batch: clean, attack, adversarial
    for b, (w, x, logits) in enumerate(analyze[::3]):  # the clean forwards of the first two batches
        assert w == "ema"
        assert torch.equal(x, recorded[b][1]) and torch.equal(logits, recorded[b][2])


def test_weight_sets_is_one_rule():
    assert weight_sets("auto", True) == ["ema"] and weight_sets("auto", False) == ["raw"]
    assert weight_sets("both", True) == ["raw", "ema"] and weight_sets("both", False) == ["raw"]
    assert weight_sets("raw", True) == ["raw"] and weight_sets("ema", True) == ["ema"]
    with pytest.raises(DataError, match="weights ema: .*no EMA"):
        weight_sets("ema", False, "no EMA here")
    with pytest.raises(ConfigError, match="weights must be one of"):
        weight_sets("best", True)


def test_loader_sets_share_one_structure_and_keep_their_weights(tmp_path):
    from lk_ablate.training import ImageClassifier

    ckpt = _demo_ckpt(tmp_path / "run.ckpt")
    sd = torch.load(ckpt, weights_only=False)["state_dict"]
    em = load_for_eval(ModelOptions(ckpt_path=str(ckpt), weights="both"))
    assert list(em.models) == ["raw", "ema"] and em.models["raw"] is not em.models["ema"]
    for w, prefix in (("raw", "model."), ("ema", "ema.module.")):
        m = em.models[w]
        assert not m.training and m.model_config == em.config
        for k, v in m.state_dict().items():
            assert torch.equal(v, sd[prefix + k]), (w, k)
    assert em.meta["channels_last"] is ImageClassifier(model_name="convnext_demo").hparams.channels_last
    assert em.label == "convnext_demo k3" and (em.epoch, em.global_step) == (1, 5)
    cl = load_for_eval(ModelOptions(ckpt_path=str(ckpt), weights="raw", channels_last=True)).models["raw"]
    conv = next(p for p in cl.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="random weights"):
        load_for_eval(ModelOptions(model_name="convnext_demo"))
    with pytest.raises(ConfigError, match="drop --model.model_name"):
        load_for_eval(ModelOptions(ckpt_path=str(ckpt), model_name="convnext_tiny"))


@pytest.mark.parametrize("name", ["convnext_tiny", "replknet_xl", "replknet_31l", "convnext_demo"])
def test_ffcv_val_crop_keeps_what_the_eval_transform_keeps(name):
    """FFCV's val decoder crops ``ratio x shorter side`` of the source; EvalSpec resizes the shorter side to
    R = floor(S / crop_pct) and keeps S of it, i.e. S / R of the source side. The two must agree."""
    import math

    from lk_ablate.data.ffcv import val_crop_ratio
    from lk_ablate.models.registry import get_model_config

    cfg = get_model_config(name)
    s = cfg.input_size[-1]
    r = math.floor(s / cfg.crop_pct)
    assert val_crop_ratio(cfg) == s / r
    for short in (333, 500, 517, 1024):  # the decoder's integer box equals the floored source box of the spec
        assert int(val_crop_ratio(cfg) * short) == math.floor(s * short / r)
    if name == "replknet_xl":  # 320 / 365, no longer crop_pct 0.875 (a 500 px side: 438 px kept, not 437)
        assert int(val_crop_ratio(cfg) * 500) == 438 and int(cfg.crop_pct * 500) == 437


def test_compile_option_compiles_every_weight_set(tmp_path, monkeypatch):
    import lk_ablate.evaluation.loading as loading_mod

    calls = []
    monkeypatch.setattr(loading_mod, "compile_model", lambda m, mode=None: calls.append((m, mode)) or m)
    ckpt = _demo_ckpt(tmp_path / "run.ckpt")
    em = load_for_eval(ModelOptions(ckpt_path=str(ckpt), weights="both", compile=True, compile_mode="max-autotune"))
    assert calls == [(em.models["raw"], "max-autotune"), (em.models["ema"], "max-autotune")]
    with pytest.raises(ConfigError, match="compile_mode must be one of"):
        load_for_eval(ModelOptions(ckpt_path=str(ckpt), compile=True, compile_mode="fastest"))
