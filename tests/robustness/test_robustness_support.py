"""Shared helpers for the robustness tests: reference data independent of lk_ablate's own lists, benchmark
trees in the released layouts, and an oracle model whose predictions are written into the images.

Reference wnids come from timm's ``imagenet_synsets.txt`` (the same sorted 1000 as the official scripts'
``all_wnids``) and the official mask indices checked in under tests/assets/robustness (see its README).
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn
from PIL import Image

from lk_ablate.models.registry import ModelConfig

DATA = Path(__file__).resolve().parents[1] / "assets" / "robustness"
TIMM_INFO = Path(timm.__file__).parent / "data" / "_info"
ORACLE_CONFIG = ModelConfig(input_size=(3, 32, 32), crop_pct=0.875, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                            interpolation="bilinear", num_classes=1000)


def official_indices(name: str) -> list[int]:
    """The 200 indices the official code keeps for ImageNet-A/R/O ("a", "r", "o")."""
    return [int(x) for x in (DATA / f"official_imagenet_{name}_indices.txt").read_text().split()]


def imagenet_wnids() -> list[str]:
    return (TIMM_INFO / "imagenet_synsets.txt").read_text().split()


def benchmark_wnids(name: str) -> list[str]:
    all_ = imagenet_wnids()
    return [all_[i] for i in official_indices(name)]


def encode(index: int, level: int = 1) -> tuple[int, int, int]:
    """The colour that makes the oracle predict class ``index`` (0..999) with confidence level 0..7."""
    return (index % 32) * 8 + 4, (index // 32) * 8 + 4, 16 + 32 * level


class OracleNet(nn.Module):
    """Reads the class index and a confidence level from the mean colour of its (normalised) input.

    Logits are 0 except ``logits[index] = 2 + level``; with ``top5_tail`` also
    ``logits[index + k] = 2 + level - k / 5`` for k = 1..4, which fixes the top-5.
    """

    def __init__(self, top5_tail: bool = False, config: ModelConfig = ORACLE_CONFIG) -> None:
        super().__init__()
        self.top5_tail = top5_tail
        self.model_config = config
        self.model_name = "oracle"
        self.kernel_sizes = [1, 1, 1, 1]
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the model a device and a parameter count

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.model_config.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.model_config.std).view(1, 3, 1, 1)
        rgb = ((x.cpu() * std + mean) * 255).mean(dim=(2, 3))
        r = ((rgb[:, 0] - 4) / 8).round().long().clamp(0, 31)
        g = ((rgb[:, 1] - 4) / 8).round().long().clamp(0, 31)
        level = ((rgb[:, 2] - 16) / 32).round().long().clamp(0, 7)
        return (g * 32 + r).clamp(max=999), level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index, level = self.decode(x)
        logits = torch.zeros(len(x), 1000)
        rows = torch.arange(len(x))
        scale = 2.0 + level.float()
        if self.top5_tail:
            for k in range(4, 0, -1):
                logits[rows, (index + k) % 1000] = scale - k / 5
        logits[rows, index] = scale
        return logits.to(x.device) + 0 * self.dummy


def write_tree(root: Path, images: dict[str, list[tuple[int, int, int]]], size: tuple[int, int] = (40, 36)) -> Path:
    """root/<class>/<k>.JPEG, one uniform image per colour."""
    for cls, colours in images.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for k, colour in enumerate(colours):
            Image.new("RGB", size, colour).save(d / f"{cls}_{k}.JPEG", quality=95)
    return root


def masked_rule_tree(name: str, extra: dict[int, int]) -> tuple[dict[str, list[tuple[int, int, int]]], int, int]:
    """An A/R-style tree with known masked top-1: returns (images, expected correct, total).

    Class j (benchmark label j, 1000-index I_j): j=0 and j=1 get the first index OUTSIDE the mask (the
    masked argmax is then label 0: right for j=0, wrong for j=1); other j with j % 4 == 0 get I_{j+1}
    (wrong); the rest get I_j (right). ``extra`` {j: count} adds right images to class j.
    """
    idx = official_indices(name)
    outside = min(set(range(1000)) - set(idx))
    wnids = benchmark_wnids(name)
    images, correct = {}, 0
    for j, w in enumerate(wnids):
        if j in (0, 1):
            code, ok = outside, j == 0
        elif j % 4 == 0:
            code, ok = idx[(j + 1) % 200], False
        else:
            code, ok = idx[j], True
        images[w] = [encode(code)] + [encode(idx[j])] * extra.get(j, 0)
        correct += int(ok) + extra.get(j, 0)
    return images, correct, 200 + sum(extra.values())


def test_oracle_reads_its_colours_through_jpeg_and_eval_transform(tmp_path):
    from lk_ablate.robustness.benchmarks import eval_transform
    from PIL import Image as PILImage

    net = OracleNet()
    codes = [0, 1, 31, 32, 517, 998, 999]
    write_tree(tmp_path, {"c": [encode(c, lv) for c in codes for lv in (0, 7)]})
    tf = eval_transform(ORACLE_CONFIG)
    files = sorted((tmp_path / "c").iterdir(), key=lambda p: int(p.stem.split("_")[1]))
    x = torch.stack([tf(PILImage.open(f).convert("RGB")) for f in files])
    assert x.shape == (14, 3, 32, 32)
    index, level = net.decode(x)
    assert index.tolist() == [c for c in codes for _ in (0, 7)]
    assert level.tolist() == [0, 7] * len(codes)
    assert net(x).argmax(1).tolist() == index.tolist()


def small_trees(root: Path, val: bool = False, a: bool = True, o: bool = False, c: bool = False) -> dict[str, str]:
    """Benchmark trees with odd sizes for callback / DDP tests (content arbitrary): val 1001, A 201, O 201 out
    (+ 200 in from val), C gaussian_noise/5 with 1001 images. Returns RobustnessEvaluation keyword arguments."""
    all_1k = imagenet_wnids()
    out: dict[str, str] = {}
    if val or o:
        imgs = {w: [encode((i * 7) % 1000)] for i, w in enumerate(all_1k)}
        imgs[all_1k[3]].append(encode(3))
        write_tree(root / "val", imgs)
        out["imagenet_val"] = str(root / "val")
    if a:
        imgs = {w: [encode((j * 5) % 1000, level=j % 8)] for j, w in enumerate(benchmark_wnids("a"))}
        imgs[benchmark_wnids("a")[0]].append(encode(0))
        write_tree(root / "imagenet-a", imgs)
        out["imagenet_a"] = str(root / "imagenet-a")
    if o:
        imgs = {w: [encode((j * 11) % 1000, level=j % 8)] for j, w in enumerate(benchmark_wnids("o"))}
        imgs[benchmark_wnids("o")[1]].append(encode(5))
        write_tree(root / "imagenet-o", imgs)
        out["imagenet_o"] = str(root / "imagenet-o")
    if c:
        imgs = {w: [encode((i * 3) % 1000)] for i, w in enumerate(all_1k)}
        imgs[all_1k[0]].append(encode(1))
        write_tree(root / "imagenet-c" / "gaussian_noise" / "5", imgs, size=(32, 32))
        out["imagenet_c"] = str(root / "imagenet-c")
    if not (val or o):
        out.pop("imagenet_val", None)
    return out
