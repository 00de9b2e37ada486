"""ImageNet-P flip probability and top-5 distance: hand-worked sequences, the scipy definition, real .mp4 files."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import rankdata

from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.imagenet_p import (VideoFolder, decode_video, flip_rate, ranks,
                                           top5_distance)
from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.models.registry import ModelConfig

# Five frames over 7 classes (worked by hand below):
#   f0 ranks classes 0,1,2,3,4,5,6;  f1 = f0;  f2 swaps classes 0 and 1;  f3 puts class 6 first;  f4 = f0.
FRAMES = torch.tensor([
    [7, 6, 5, 4, 3, 2, 1],
    [7, 6, 5, 4, 3, 2, 1],
    [6, 7, 5, 4, 3, 2, 1],
    [6, 7, 5, 4, 3, 2, 8],
    [7, 6, 5, 4, 3, 2, 1],
], dtype=torch.float)


def test_hand_worked_sequence_non_noise():
    # predictions 0, 0, 1, 6, 0 -> flips vs the previous frame: 0, 1, 1, 1 -> FP 3/4
    # top-5 distances vs the previous frame: f1 0; f2: ranks of f1's top-5 (0,1,2,3,4) in f2 are 2,1,3,4,5 -> 1+1 = 2;
    # f3: f2's top-5 (1,0,2,3,4) rank 2,3,4,5,6 in f3 -> 1+1+1+1+1 = 5; f4: f3's top-5 (6,1,0,2,3) rank 7,2,1,3,4
    # in f4 -> |0-5|+|1-1|+|2-0|+|3-2|+|4-3| = 9.  T5D = (0+2+5+9)/4 = 4
    assert flip_rate(FRAMES.argmax(1), noise=False) == 0.75
    assert top5_distance(FRAMES, noise=False) == 4.0


def test_hand_worked_sequence_noise_compares_with_frame_0():
    # flips vs frame 0 (prediction 0): 0, 1, 1, 0 -> 1/2; distances vs f0: 0, 2, 5 (ranks 3,2,4,5,6), 0 -> 7/4
    assert flip_rate(FRAMES.argmax(1), noise=True) == 0.5
    assert top5_distance(FRAMES, noise=True) == 1.75


def test_ranks_are_scipy_ordinal_ranks_with_ties():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 1.0]])
    assert ranks(x)[0].tolist() == rankdata(-x[0].numpy(), method="ordinal").tolist() == [4, 1, 2, 6, 3, 5]


def _scipy_reference(videos, noise):
    """The definition written out with scipy ranks: per video the mean over compared pairs, then over videos."""
    fps, t5s = [], []
    for v in videos:
        v = v.numpy()
        preds = v.argmax(1)
        r = [rankdata(-f, method="ordinal") for f in v]
        flips, dists = [], []
        for t in range(1, len(v)):
            ref = 0 if noise else t - 1
            flips.append(int(preds[t] != preds[ref]))
            order_ref = np.argsort(r[ref])  # classes by rank in the reference frame
            sigma = r[t][order_ref][:5]
            dists.append(sum(abs(i - min(int(s) - 1, 5)) for i, s in enumerate(sigma)))
        fps.append(np.mean(flips))
        t5s.append(np.mean(dists))
    return float(np.mean(fps)), float(np.mean(t5s))


@pytest.mark.parametrize("noise", [False, True])
def test_random_videos_match_the_scipy_definition(noise):
    g = torch.Generator().manual_seed(0)
    videos = [torch.randn(6, 20, generator=g).round(decimals=1) for _ in range(3)]  # rounding makes ties
    fp = np.mean([flip_rate(v.argmax(1), noise) for v in videos])
    t5 = np.mean([top5_distance(v, noise) for v in videos])
    ref_fp, ref_t5 = _scipy_reference(videos, noise)
    assert fp == pytest.approx(ref_fp, abs=1e-12) and t5 == pytest.approx(ref_t5, abs=1e-12)


# --- real videos -----------------------------------------------------------------------------------------
class RedLevel(nn.Module):
    """10 classes: class k scores -(mean red - k/9)^2 on [0, 1] pixels (the input is normalised with mean 0, std 1)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        red = x[:, 0].mean(dim=(1, 2))
        centers = torch.arange(10, dtype=x.dtype) / 9
        return -(red[:, None] - centers[None]) ** 2 * 1000 + self.dummy


def _write_mp4(path, levels, size=32):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "0"}
        for lv in levels:
            f = np.zeros((size, size, 3), np.uint8)
            f[..., 0] = round(255 * lv / 9)
            f[..., 1] = 60
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


CFG = ModelConfig(input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10)


def test_videos_decode_and_score(tmp_path):
    root = tmp_path / "imagenet_p"
    _write_mp4(root / "brightness" / "n01" / "a.mp4", [2, 2, 5, 5, 3])  # flips vs previous: 0,1,0,1
    _write_mp4(root / "brightness" / "n02" / "b.mp4", [7, 7, 7, 7, 7])  # no flips
    _write_mp4(root / "gaussian_noise" / "n01" / "c.mp4", [4, 6, 4, 4, 1])  # vs frame 0: 1,0,0,1
    frames = decode_video(root / "brightness" / "n01" / "a.mp4")
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames, decode_video(root / "brightness" / "n01" / "a.mp4", "cv2"))
    base = {"source": "test values", "flip_probability": {"brightness": 0.5, "gaussian_noise": 0.25},
            "top5_distance": {"brightness": 2.0, "gaussian_noise": 4.0}}
    (tmp_path / "alexnet.json").write_text(json.dumps(base))
    out = run_analyses(RedLevel(), {"imagenet_p": {"root": str(root), "perturbations": ["brightness", "gaussian_noise"],
                                                   "baselines_path": str(tmp_path / "alexnet.json"), "num_workers": 0}},
                       None, CFG)["imagenet_p"]
    per = out["perturbations"]
    assert per["brightness"]["flip_probability"] == (0.5 + 0.0) / 2 and per["brightness"]["videos"] == 2
    assert per["gaussian_noise"]["flip_probability"] == 0.5
    model = RedLevel()
    with torch.no_grad():
        t5 = top5_distance(model(frames.permute(0, 3, 1, 2).float() / 255), noise=False)
    assert per["brightness"]["top5_distance"] == pytest.approx(t5 / 2)
    assert per["brightness"]["FR"] == pytest.approx(100 * 0.25 / 0.5)
    assert out["mFR"] == pytest.approx((50.0 + 200.0) / 2)
    assert out["mT5D"] == pytest.approx((per["brightness"]["T5D"] + per["gaussian_noise"]["T5D"]) / 2)
    assert out["baselines_source"] == "test values"


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="root"):
        section_config("imagenet_p", {})
    with pytest.raises(ConfigError, match="unknown"):
        section_config("imagenet_p", {"root": "x", "perturbations": ["fog"]})
    with pytest.raises(DataError, match="not found"):
        VideoFolder(tmp_path / "missing")
    (tmp_path / "b.json").write_text(json.dumps({"source": "s", "flip_probability": {}, "top5_distance": {}}))
    with pytest.raises(ConfigError, match="no AlexNet values"):
        run_analyses(RedLevel(), {"imagenet_p": {"root": str(tmp_path), "perturbations": ["tilt"],
                                                 "baselines_path": str(tmp_path / "b.json")}}, None, CFG)
