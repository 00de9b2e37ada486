"""ImageNet-P (Hendrycks & Dietterich, ICLR 2019): flip probability and top-5 distance on perturbation videos.

Formulas as in hendrycks/robustness ``ImageNet-P/test.py`` (difficulty 1, as recorded by Paul & Chen):

- flip probability FP: per video, the fraction of frames whose top-1 prediction differs from the previous frame's
  (from frame 0's for the noise sequences, whose frames are independent draws); mean over videos. At difficulty
  d > 1 the non-noise sequences compare frame j with frame j - d (``test.py:234-270``: ``step_size =
  difficulty``, chains ``i, i + d, ...``), reading the same videos; the noise sequences read ``<p>_<d>/``.
- top-5 distance T5D: per compared frame pair, with ``sigma_i`` the rank (1-based, ties in class order) in the
  later frame of the class ranked i-th in the reference frame, ``d = sum_{i=1..5} |(i - 1) - min(sigma_i - 1, 5)|``;
  mean over pairs per video, then over videos.
- FR_p = FP_p / FP_p(AlexNet), T5D_p / T5D_p(AlexNet); mFR, mT5D = 100 x their means over the perturbations.

The AlexNet values are not in any released code we could read (Hendrycks keeps them in a spreadsheet linked from
hendrycks/robustness issue #49); give them in a JSON file (``baselines_path``, format in docs/analyses.md). Without
it, FP and T5D are reported unnormalised and mFR / mT5D are absent.

Layout: ``<root>/<perturbation>[_<difficulty>]/<wnid>/*.mp4`` (224 x 224 frames). Frames are decoded with PyAV
(``decoder: av``; ``cv2`` is OpenCV's FFmpeg reader, which the official script uses), scaled to [0, 1] and
normalised with the model's mean/std (resized only when the model's input size is not 224).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base.figures import new_figure, save_figure
from ..base.progress import advance
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, DataError
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from ..base.results import read_json
from .common import model_device
from .configs import DECODERS, ImageNetPConfig


def is_noise(perturbation: str) -> bool:
    return "noise" in perturbation


# --- metrics --------------------------------------------------------------------------------------------
def paper_eval_spec(cfg: ModelConfig) -> EvalSpec:
    """Hendrycks' ``ImageNet-P/test.py:195-207``: the 224 px frames as they are (ToTensor), ImageNet mean/std for
    every model; a model whose input is not 224 px gets the frames resized to it (bilinear)."""
    return EvalSpec(crop=tuple(int(v) for v in cfg.input_size[-2:]), resize=None, interpolation="bilinear",
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


def flip_rate(preds: torch.Tensor, noise: bool, stride: int = 1) -> float:
    """Fraction of flips in one video's top-1 predictions (T,): vs frame 0 (noise) or vs the frame ``stride``
    before (the difficulty, for the non-noise sequences)."""
    if preds.numel() < 1 + (1 if noise else stride):
        raise DataError(f"a perturbation sequence needs at least {1 + (1 if noise else stride)} frames")
    if noise:
        return float((preds[1:] != preds[:1]).double().mean())
    return float((preds[stride:] != preds[:-stride]).double().mean())


def ranks(logits: torch.Tensor) -> torch.Tensor:
    """1-based rank of every class per row (rank 1 = largest logit; ties ranked in class order, like
    scipy ``rankdata(-x, method='ordinal')``)."""
    order = torch.argsort(-logits, dim=-1, stable=True)
    r = torch.empty_like(order)
    r.scatter_(-1, order, torch.arange(1, logits.shape[-1] + 1, device=logits.device).expand_as(order))
    return r


def top5_distances(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Top-5 rank distance of each row of ``logits`` (N, K) from the matching row of ``ref_logits`` (N, K)."""
    if logits.shape[-1] < 5:
        raise ConfigError("the top-5 distance needs at least 5 classes")
    top = torch.argsort(-ref_logits, dim=-1, stable=True)[:, :5]  # classes ranked 1..5 in the reference frame
    sigma = ranks(logits).gather(1, top)  # their ranks in the later frame
    i = torch.arange(5, device=logits.device)
    return (i - (sigma - 1).clamp(max=5)).abs().sum(dim=1)


def top5_distance(logits: torch.Tensor, noise: bool, stride: int = 1) -> float:
    """Mean top-5 distance over one video's frames (T, K): vs frame 0 (noise) or vs the frame ``stride`` before."""
    if logits.shape[0] < 1 + (1 if noise else stride):
        raise DataError(f"a perturbation sequence needs at least {1 + (1 if noise else stride)} frames")
    if noise:
        return float(top5_distances(logits[:1].expand(logits.shape[0] - 1, -1), logits[1:]).double().mean())
    return float(top5_distances(logits[:-stride], logits[stride:]).double().mean())


# --- data -----------------------------------------------------------------------------------------------
def decode_video(path: str | os.PathLike, decoder: str = "av") -> torch.Tensor:
    """All frames of a video as uint8 (T, H, W, 3) RGB."""
    import numpy as np

    frames = []
    if decoder == "av":
        import av

        try:
            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except av.error.FFmpegError as e:
            raise DataError(f"cannot decode {path}: {e}") from e
    elif decoder == "cv2":
        import cv2

        cap = cv2.VideoCapture(str(path))
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        cap.release()
    else:
        raise ConfigError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if not frames:
        raise DataError(f"no frames decoded from {path}")
    return torch.from_numpy(np.stack(frames))


class VideoFolder(torch.utils.data.Dataset):
    """``<dir>/<class>/*.mp4`` sorted like torchvision's DatasetFolder; items are (uint8 frames, class index)."""

    def __init__(self, directory: str | os.PathLike, decoder: str = "av") -> None:
        d = Path(directory)
        if not d.is_dir():
            raise DataError(f"ImageNet-P folder not found: {d}\n  expected {d}/<wnid>/*.mp4 (download ImageNet-P "
                            "from github.com/hendrycks/robustness)")
        classes = sorted(e.name for e in os.scandir(d) if e.is_dir())
        self.samples = [(str(p), i) for i, c in enumerate(classes) for p in sorted((d / c).glob("*.mp4"))]
        if not self.samples:
            raise DataError(f"no .mp4 videos under {d}/<wnid>/")
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        return decode_video(path, self.decoder), target


def _frames_to_input(frames: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    size = tuple(cfg.input_size[-2:])
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (x - mean) / std


def load_baselines(path: str | os.PathLike) -> dict[str, Any]:
    """{"source": str, "flip_probability": {perturbation: FP}, "top5_distance": {perturbation: T5D}}."""
    p = Path(path)
    data = read_json(p, "ImageNet-P baselines file")
    for key in ("flip_probability", "top5_distance"):
        if not isinstance(data.get(key), dict):
            raise DataError(f"{p} needs a '{key}' object mapping perturbation -> AlexNet value")
    if not data.get("source"):
        raise DataError(f"{p} needs a 'source' entry saying where the AlexNet values come from")
    return data


# --- run ------------------------------------------------------------------------------------------------
@torch.no_grad()
def perturbation_metrics(model: nn.Module, videos: Any, cfg: ModelConfig, noise: bool,
                         batch_frames: int = 128, stride: int = 1) -> dict[str, float]:
    """FP and T5D over an iterable of uint8 videos (T, H, W, 3); ``stride``: the frame step of the non-noise
    comparisons (the difficulty)."""
    device = model_device(model)
    fps, t5ds = [], []
    for frames in videos:
        x = _frames_to_input(frames, cfg)
        logits = torch.cat([model(c.to(device)).float().cpu() for c in x.split(batch_frames)])
        advance(len(x))
        fps.append(flip_rate(logits.argmax(dim=1), noise, stride))
        t5ds.append(top5_distance(logits, noise, stride))
    if not fps:
        raise DataError("no videos were evaluated")
    return {"flip_probability": sum(fps) / len(fps), "top5_distance": sum(t5ds) / len(t5ds), "videos": len(fps)}


def run(model: nn.Module, cfg: ImageNetPConfig, data: Any = None, model_config: ModelConfig | None = None,
        videos: dict[str, Any] | None = None) -> dict[str, Any]:
    """``videos``: perturbation -> iterable of uint8 videos, instead of reading ``cfg.root``."""
    baselines = load_baselines(cfg.baselines_path) if cfg.baselines_path else None
    if baselines is not None:
        missing = [p for p in cfg.perturbations
                   if p not in baselines["flip_probability"] or p not in baselines["top5_distance"]]
        if missing:
            raise ConfigError(f"{cfg.baselines_path} has no AlexNet values for {missing}")
    per: dict[str, dict[str, float]] = {}
    for p in cfg.perturbations:
        if videos is not None and p in videos:
            source = videos[p]
        else:
            folder = Path(cfg.root) / (p if cfg.difficulty == 1 or not is_noise(p) else f"{p}_{cfg.difficulty}")
            ds = VideoFolder(folder, cfg.decoder)
            if cfg.max_videos is not None:
                ds = torch.utils.data.Subset(ds, range(min(cfg.max_videos, len(ds))))
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.num_workers)
            source = (frames for frames, _ in loader)
        per[p] = perturbation_metrics(model, source, model_config, is_noise(p), cfg.batch_frames,
                                      1 if is_noise(p) else cfg.difficulty)
    out: dict[str, Any] = {"analysis": "imagenet_p", "config": cfg.to_dict(), "perturbations": per}
    if baselines is not None:
        for p, m in per.items():
            m["FR"] = 100.0 * m["flip_probability"] / baselines["flip_probability"][p]
            m["T5D"] = 100.0 * m["top5_distance"] / baselines["top5_distance"][p]
        out["mFR"] = sum(m["FR"] for m in per.values()) / len(per)
        out["mT5D"] = sum(m["T5D"] for m in per.values()) / len(per)
        out["baselines_source"] = baselines["source"]
    return out


def plot(result: dict[str, Any], path: Any) -> Any:
    per = result["perturbations"]
    names = list(per)
    normalised = "FR" in next(iter(per.values()))
    k1, k2 = ("FR", "T5D") if normalised else ("flip_probability", "top5_distance")
    fig, axes = new_figure(2, size=(max(4.0, 0.55 * len(names)), 3.6))
    for ax, key in zip(axes[0], (k1, k2)):
        ax.bar(range(len(names)), [per[n][key] for n in names])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(key + (" (% of AlexNet)" if normalised else ""))
    if normalised:
        fig.suptitle(f"mFR {result['mFR']:.1f}, mT5D {result['mT5D']:.1f}")
    return save_figure(fig, path)


def summary(result: dict[str, Any]) -> dict[str, float]:
    if "mFR" in result:
        return {"imagenet_p.mFR": result["mFR"], "imagenet_p.mT5D": result["mT5D"]}
    per = result["perturbations"].values()
    return {"imagenet_p.mean_FP": sum(m["flip_probability"] for m in per) / len(per),
            "imagenet_p.mean_T5D": sum(m["top5_distance"] for m in per) / len(per)}
