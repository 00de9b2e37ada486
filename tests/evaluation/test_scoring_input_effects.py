"""The eval options of a model's config reach the tensor a robustness scoring run feeds the model.

``evaluate`` (robustness scoring, the CPU batch pipeline: uint8 geometry in the workers, ``normalize_nhwc`` on the
device) with a config whose every eval option differs from the defaults (48 px input, crop_pct 0.8, bilinear,
its own mean/std): each image the network sees equals the eval transform written in Pillow + numpy
(tests/data/test_eval_effects.py's reference) at resize floor(48 / 0.8) = 60, bit for bit; the same images under the
default config at 48 px (crop_pct 0.875, bicubic, ImageNet mean/std) give other tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lk_ablate.models.registry import ModelConfig
from lk_ablate.robustness.benchmarks import Benchmark, Part
from lk_ablate.robustness.evaluate import evaluate
from test_eval_effects import reference
from test_robustness_pipeline import Recorder
from test_robustness_support import benchmark_wnids

CFG = ModelConfig(input_size=(3, 48, 48), crop_pct=0.8, interpolation="bilinear", mean=(0.3, 0.5, 0.7),
                  std=(0.2, 0.3, 0.4), num_classes=1000)


def test_scoring_input_follows_every_eval_option_of_the_model_config(tmp_path):
    wnids = benchmark_wnids("a")[:4]
    rng = np.random.default_rng(0)
    images = []
    for k, (h, w) in enumerate([(70, 90), (90, 70), (64, 64), (61, 83)]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        (tmp_path / "a" / wnids[k]).mkdir(parents=True)
        img.save(tmp_path / "a" / wnids[k] / "0.png")
        images.append(img)
    bench = Benchmark("imagenet_a", "masked_top1", (Part("a", str(tmp_path / "a"), tuple(wnids), True),), mask=None)
    seen = {}
    for name, cfg in (("cfg", CFG), ("default", ModelConfig(input_size=(3, 48, 48)))):
        model = Recorder()
        results, errors = evaluate({"raw": model}, cfg, [bench], batch_size=2, num_workers=0)
        assert errors == [] and results["raw"]["imagenet_a"]["n"] == 4
        seen[name] = torch.cat(model.seen)
    for k, img in enumerate(images):  # class folders in wnid order, one image each
        ref = reference(img, (48, 48), 60, False, "bilinear", CFG.mean, CFG.std)
        assert torch.equal(seen["cfg"][k], ref), k
        assert not torch.equal(seen["default"][k], ref)
