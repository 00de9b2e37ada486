"""ImageNet-9: the authors' 1000 -> 9 class map, argmax mapping, and a generated dataset scored end to end."""
import collections

import pytest
import torch
import torch.nn as nn
from PIL import Image

from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.imagenet9 import IN9_CLASSES, in_to_in9, map_to_in9
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.models.registry import ModelConfig


def test_in_to_in9_table_is_the_authors():
    table = in_to_in9()
    counts = collections.Counter(table.tolist())
    # MadryLab/backgrounds_challenge in_to_in9.json: 630 classes outside the 9, then dog .. fish
    assert counts == {-1: 630, 0: 116, 1: 52, 2: 42, 3: 36, 4: 35, 5: 27, 6: 26, 7: 20, 8: 16}
    assert table[151] == 0 and table[0] == 8 and table[999] == -1  # Chihuahua -> dog, tench -> fish


def test_argmax_is_mapped_not_class_group_sums():
    logits = torch.zeros(2, 1000)
    logits[0, 999] = 5.0  # argmax outside the 9 classes: always wrong, although dogs hold more total mass
    logits[0, 151:160] = 4.0
    logits[1, 0] = 1.0  # tench -> fish
    assert map_to_in9(logits).tolist() == [-1, 8]
    with pytest.raises(ConfigError, match="num_outputs"):
        map_to_in9(torch.zeros(1, 9))


class RedToImageNet(nn.Module):
    """Predicts, for red level r = c/8 (c = 0..8), the first ImageNet class that maps to ImageNet-9 class c."""

    def __init__(self):
        super().__init__()
        table = in_to_in9()
        self.register_buffer("rep", torch.tensor([int((table == c).nonzero()[0]) for c in range(9)]))
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = (x[:, 0].mean(dim=(1, 2)) * 8).round().long().clamp(0, 8)
        out = torch.zeros(x.shape[0], 1000) + self.dummy
        out[torch.arange(x.shape[0]), self.rep[c]] = 1.0
        return out


def _make_in9(root, wrong):
    """Two 224x224 images per class per variation; in ``wrong[variation]`` images, the colour of the next class."""
    for variation in ("original", "mixed_same", "mixed_rand"):
        for c, name in enumerate(IN9_CLASSES):
            d = root / variation / "val" / f"{c:02d}_{name}"
            d.mkdir(parents=True)
            for i in range(2):
                shown = (c + 1) % 9 if (c, i) in wrong.get(variation, ()) else c
                Image.new("RGB", (224, 224), (round(255 * shown / 8), 50, 50)).save(d / f"{i}.png")


CFG = ModelConfig(input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=1000)


def test_generated_imagenet9_end_to_end(tmp_path):
    _make_in9(tmp_path, {"mixed_same": {(0, 0)}, "mixed_rand": {(1, 0), (2, 1), (3, 0), (8, 1)}})
    out = run_analyses(RedToImageNet(), {"imagenet9": {"root": str(tmp_path), "num_workers": 0}}, None,
                       CFG)["imagenet9"]
    assert out["accuracy"]["original"] == 100.0
    assert out["accuracy"]["mixed_same"] == pytest.approx(100 * 17 / 18)
    assert out["accuracy"]["mixed_rand"] == pytest.approx(100 * 14 / 18)
    assert out["bg_gap"] == pytest.approx(100 * 3 / 18)


def test_imagenet9_errors(tmp_path):
    with pytest.raises(ConfigError, match="root"):
        section_config("imagenet9", {})
    with pytest.raises(ConfigError, match="unknown"):
        section_config("imagenet9", {"root": "x", "variations": ["mixed"]})
    with pytest.raises(DataError, match="not found"):
        run_analyses(RedToImageNet(), {"imagenet9": {"root": str(tmp_path)}}, None, CFG)
