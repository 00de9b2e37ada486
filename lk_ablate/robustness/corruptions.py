"""ImageNet-C corruptions computed on the fly, for data that has no released -C version (e.g. Fashion-MNIST-C).

The 19 corruptions come from ``imagecorruptions`` (pip ``imagecorruptions-imaug``, the maintained drop-in of
Hendrycks' code; any image of at least 32x32 pixels). Determinism: every (corruption, severity, image) gets
its own seed derived from (seed, corruption, severity, image index) with ``numpy.random.SeedSequence``; the
global NumPy RNG is seeded with it and it is passed as ``seed`` to the two corruptions that otherwise draw
fresh OS entropy (glass_blur, impulse_noise). Results therefore do not depend on batching, worker count or
order. ``frost`` is re-implemented here with its six frost textures read once per process instead of once
per image (4.4 of its 4.7 ms at 32 px); it is checked bit-identical to ``imagecorruptions`` (tests).

Machine independence: OpenCV picks its kernels at run time from the CPU (AVX2, AVX-512, Intel IPP), and its AVX2
kernels change defocus_blur's output in the last bit of some pixels (docs/reproducibility.md). Corrupting therefore
runs with OpenCV's optimisations off (``cv2.setUseOptimized(False)``: its baseline code, no IPP), the same
instructions on every x86-64 CPU, so a cache is byte-identical across machines (at 32 px this costs nothing
measurable); numpy, OpenBLAS and numba were measured not to change any corrupted image.

Note that the corruption parameters are absolute pixel sizes tuned for 224 px images: at 32 px the blurs are
far harsher, and on white-on-black images fog/frost/brightness/contrast sit near chance for any model.

For the demo: ``corrupt_images`` corrupts a fixed subset once (parallel, cached on disk per corruption and
severity, keyed by the images' hash and the seed), ``score_corruptions`` scores a model on the cached arrays,
``relative_corruption_errors`` gives the mCE-style ratio against another run (e.g. the smallest kernel).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base.progress import Progress
from ..base.files import atomic_path, atomic_write_text
from ..base.errors import ConfigError
from ..models.registry import ModelConfig
from .metrics import ALL_CORRUPTIONS, CORRUPTIONS, SEVERITIES

__all__ = ["CorruptedImages", "corrupt", "corrupt_images", "evaluate_corruptions", "image_seed",
           "machine_independent_opencv", "relative_corruption_errors", "score_corruptions", "stratified_subset",
           "top1_flags"]

# Bump when the output of corrupt() changes, so stale caches are not reused (2: OpenCV's baseline kernels).
IMPL_VERSION = 2
MIN_SIZE = 32
_SEEDED_KWARG = ("glass_blur", "impulse_noise")  # these take a seed and otherwise draw fresh OS entropy


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of one corrupted image: a 32-bit draw from SeedSequence(seed, (corruption, severity, index))."""
    if corruption not in ALL_CORRUPTIONS:
        raise ConfigError(f"unknown corruption {corruption!r}; choose from {list(ALL_CORRUPTIONS)}")
    ss = np.random.SeedSequence(int(seed), spawn_key=(ALL_CORRUPTIONS.index(corruption), int(severity), int(index)))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError("corruptions take uint8 RGB images of shape (H, W, 3)")
    if min(image.shape[:2]) < MIN_SIZE:
        raise ConfigError(f"corruptions need images of at least {MIN_SIZE}x{MIN_SIZE} pixels (imagecorruptions); "
                          f"got {image.shape[0]}x{image.shape[1]}: upsample them first (e.g. 28 -> 32)")


def corrupt(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One corrupted image (uint8, same shape), deterministic in ``seed``; equals ``imagecorruptions.corrupt``
    under ``np.random.seed(seed)`` (and ``seed=seed`` for glass_blur / impulse_noise)."""
    _check_image(image)
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity}")
    np.random.seed(seed)
    if corruption == "frost":
        out = _frost(image, severity)
    else:
        import imagecorruptions

        kwargs = {"seed": seed} if corruption in _SEEDED_KWARG else {}
        # imagecorruptions.corrupt casts with np.uint8(...) (truncation), as the ImageNet-C scripts do.
        return imagecorruptions.corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
    return np.uint8(out)


@functools.lru_cache(maxsize=None)
def _frost_textures() -> tuple[np.ndarray, ...]:
    import importlib.resources

    import cv2

    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
    out = []
    for name in names:
        with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as p:
            img = cv2.imread(str(p))  # BGR, as in the original
        if img is None:
            raise FileNotFoundError(f"frost texture {name} missing from the imagecorruptions package")
        out.append(img)
    return tuple(out)


def _frost(image: np.ndarray, severity: int) -> np.ndarray:
    """ImageNet-C frost: blend with a random crop of one of six frost textures, rescaled to cover the image."""
    import cv2

    a, b = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    tex = _frost_textures()[np.random.randint(6)]
    h, w = image.shape[:2]
    th, tw = tex.shape[:2]
    # Scale only when the texture is smaller than the image (by the larger factor), then 10% extra.
    scale = 1.0
    if th < h and tw >= w:
        scale = h / th
    elif th >= h and tw < w:
        scale = w / tw
    elif th < h and tw < w:
        scale = max(h / th, w / tw)
    scale *= 1.1
    tex = cv2.resize(tex, dsize=(int(np.ceil(tw * scale)), int(np.ceil(th * scale))), interpolation=cv2.INTER_CUBIC)
    y0 = np.random.randint(0, tex.shape[0] - h)
    x0 = np.random.randint(0, tex.shape[1] - w)
    crop = tex[y0:y0 + h, x0:x0 + w][..., [2, 1, 0]]
    return np.clip(a * image + b * crop, 0, 255)


# ---------------------------------------------------------------------------------------------------------
# Corrupting a whole set once, in parallel, cached on disk.

_WORKER_IMAGES: np.ndarray | None = None


def _init_worker(images: np.ndarray) -> None:
    global _WORKER_IMAGES
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    cv2.setUseOptimized(False)  # the same kernels on every CPU (module doc)
    _WORKER_IMAGES = images


@contextlib.contextmanager
def machine_independent_opencv() -> Iterator[None]:
    """OpenCV's baseline kernels (no CPU dispatch, no IPP) inside the block, the previous setting after it."""
    import cv2

    before = cv2.useOptimized()
    cv2.setUseOptimized(False)
    try:
        yield
    finally:
        cv2.setUseOptimized(before)


def _corrupt_all(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    out = np.empty_like(images)
    for i in range(len(images)):
        out[i] = corrupt(images[i], corruption, severity, image_seed(seed, corruption, severity, i))
    return out


def _worker_task(corruption: str, severity: int, seed: int) -> np.ndarray:
    assert _WORKER_IMAGES is not None
    return _corrupt_all(_WORKER_IMAGES, corruption, severity, seed)


@dataclass
class CorruptedImages:
    """Corrupted copies of a fixed image set: ``arrays[corruption][severity]`` is (N, H, W, 3) uint8."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    seed: int
    arrays: dict[str, dict[int, np.ndarray]] = field(repr=False)
    cache_dir: Path | None = None

    @property
    def num_images(self) -> int:
        return len(next(iter(next(iter(self.arrays.values())).values())))


def images_key(images: np.ndarray) -> str:
    """Content hash of an image set (shape, dtype and bytes)."""
    h = hashlib.sha256()
    h.update(f"{images.shape}|{images.dtype}|v{IMPL_VERSION}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:20]


def corrupt_images(images: np.ndarray, corruptions: Sequence[str] = CORRUPTIONS,
                   severities: Sequence[int] = SEVERITIES, seed: int = 0, workers: int = 1,
                   cache_dir: str | os.PathLike | None = None, progress: bool = False) -> CorruptedImages:
    """Corrupt ``images`` (N, H, W, 3) uint8 with every (corruption, severity); reuse cached results.

    Cache layout: ``cache_dir/<images hash>-seed<seed>/<corruption>_s<severity>.npy`` (memory-mapped on load),
    so any subset of corruptions and severities reuses what an earlier call computed. ``workers`` > 1 splits the
    (corruption, severity) pairs over that many spawned processes; each pays ~5 s of imports and numba
    compilation, so on 2 cores (500 images at 32 px: ~18 s of work) one in-process worker is as fast.
    ``progress``: report the (corruption, severity) sets still to compute (base/progress.py).
    """
    images = np.ascontiguousarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ConfigError(f"images must be a non-empty uint8 array (N, H, W, 3), got {images.dtype} {images.shape}")
    _check_image(images[0])
    bad = [c for c in corruptions if c not in ALL_CORRUPTIONS]
    if bad or any(s not in SEVERITIES for s in severities):
        raise ConfigError(f"unknown corruptions {bad} or severities {list(severities)}; choose from "
                          f"{list(ALL_CORRUPTIONS)} and {list(SEVERITIES)}")
    corruptions, severities = tuple(corruptions), tuple(int(s) for s in severities)
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"{images_key(images)}-seed{int(seed)}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"shape": list(images.shape), "seed": int(seed),
                                                "impl_version": IMPL_VERSION,
                                                "imagecorruptions": _package_version()}) + "\n")
    arrays: dict[str, dict[int, np.ndarray]] = {c: {} for c in corruptions}
    todo = []
    for c in corruptions:
        for s in severities:
            path = None if folder is None else folder / f"{c}_s{s}.npy"
            if path is not None and path.exists():
                arr = np.load(path, mmap_mode="r")
                if arr.shape == images.shape:
                    arrays[c][s] = arr
                    continue
            todo.append((c, s, path))
    workers = max(1, min(int(workers), len(todo)))
    bar = Progress(f"corrupt {len(images)} images", len(todo), "sets", enabled=progress and bool(todo))
    if todo and workers == 1:
        with machine_independent_opencv():
            _store(todo, (_corrupt_all(images, c, s, seed) for c, s, _ in todo), arrays, bar)
    elif todo:
        import multiprocessing as mp

        # Heaviest first (glass_blur, zoom_blur at high severity) so the pool stays balanced.
        order = sorted(todo, key=lambda t: (t[0] not in ("glass_blur", "frost", "zoom_blur"), -t[1]))
        # spawn, not fork: a forked child deadlocks in OpenCV when the parent has already used its thread pool
        # (seen here in cv2.setNumThreads). multiprocessing does not re-run package __main__ modules
        # (`python -m lk_ablate`) or guarded scripts in the children.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(images,)) as pool:
            futures = [pool.submit(_worker_task, c, s, int(seed)) for c, s, _ in order]
            _store(order, (f.result() for f in futures), arrays, bar)
    bar.close()
    return CorruptedImages(corruptions, severities, int(seed), arrays, folder)


def _store(todo: list, results: Any, arrays: dict, bar: Progress) -> None:
    for (c, s, path), arr in zip(todo, results):
        if path is not None:  # the one atomic writer (base/files.py): fsync, rename, umask permissions
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, arr)
        arrays[c][s] = arr
        bar.update(1)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagecorruptions-imaug")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# ---------------------------------------------------------------------------------------------------------
# Scoring models on corrupted arrays.

def _to_input(batch: np.ndarray, cfg: ModelConfig, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, h, w) at the model's input size."""
    x = torch.from_numpy(np.array(batch)).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # copy: memmaps are read-only
    size = tuple(cfg.input_size[-2:])
    if tuple(x.shape[-2:]) != size:
        mode = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        x = F.interpolate(x, size=size, mode=mode, antialias=mode != "nearest",
                          **({} if mode == "nearest" else {"align_corners": False}))
    mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1)
    return (x - mean) / std


def _correct(model: nn.Module, images: np.ndarray, labels: torch.Tensor, cfg: ModelConfig, batch_size: int,
             device: torch.device) -> np.ndarray:
    """Top-1 correctness of every image (bool, in order)."""
    flags = []
    for i in range(0, len(images), batch_size):
        logits = model(_to_input(images[i:i + batch_size], cfg, device))
        flags.append((logits.argmax(1) == labels[i:i + batch_size]).cpu().numpy())
    return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)


def top1_flags(model: nn.Module, images: np.ndarray, labels: np.ndarray | torch.Tensor, batch_size: int = 256,
               model_config: ModelConfig | None = None) -> np.ndarray:
    """Top-1 correctness (bool, in order) of ``model`` on uint8 (N, H, W, 3) ``images``, the input path of
    ``score_corruptions``."""
    cfg = model_config or getattr(model, "model_config", None)
    if cfg is None:
        raise ConfigError("top1_flags needs the model's ModelConfig (model.model_config or model_config=)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _correct(model, images, torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device), cfg,
                            batch_size, device)
    finally:
        model.train(was_training)


def score_corruptions(model: nn.Module, corrupted: CorruptedImages, labels: np.ndarray | torch.Tensor,
                      clean_images: np.ndarray | None = None, batch_size: int = 256,
                      device: torch.device | str | None = None, model_config: ModelConfig | None = None,
                      ) -> dict[str, Any]:
    """Top-1 (%) of ``model`` per corruption and severity on ``corrupted``, their mean, and clean top-1, with each
    image's top-1 correctness (``per_image``: {"<corruption>/<severity>": bool array}, ``clean_per_image``).

    The model's ``model_config`` (or ``model_config``) gives input size and normalisation.
    """
    cfg = model_config or getattr(model, "model_config", None)
    if cfg is None:
        raise ConfigError("score_corruptions needs the model's ModelConfig (model.model_config or model_config=)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    n = corrupted.num_images
    if labels.numel() != n:
        raise ConfigError(f"{labels.numel()} labels for {n} images")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            flags = {c: {s: _correct(model, corrupted.arrays[c][s], labels, cfg, batch_size, device)
                         for s in corrupted.severities} for c in corrupted.corruptions}
            clean_flags = (None if clean_images is None
                           else _correct(model, clean_images, labels, cfg, batch_size, device))
    finally:
        model.train(was_training)
    top1 = {c: {s: 100.0 * int(f.sum()) / n for s, f in by.items()} for c, by in flags.items()}
    clean = None if clean_flags is None else 100.0 * int(clean_flags.sum()) / n
    return {
        "per_image": {f"{c}/{s}": f for c, by in flags.items() for s, f in by.items()},
        "clean_per_image": clean_flags,
        "top1": top1,
        "corruption_top1": {c: float(np.mean(list(v.values()))) for c, v in top1.items()},
        "mean_top1": float(np.mean([v for by in top1.values() for v in by.values()])),
        "clean_top1": clean,
        "n": n,
        "seed": corrupted.seed,
    }


def relative_corruption_errors(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """mCE-style ratio against another run: CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c} (in %), mCE = mean.

    Both results come from ``score_corruptions`` on the same corrupted images; the baseline plays AlexNet's role.
    """
    ce = {}
    for c, by_sev in result["top1"].items():
        if c not in baseline["top1"]:
            continue
        sev = [s for s in by_sev if s in baseline["top1"][c]]
        den = sum(100.0 - baseline["top1"][c][s] for s in sev)
        ce[c] = 100.0 * sum(100.0 - by_sev[s] for s in sev) / den if den > 0 else float("nan")
    return {"ce": ce, "mce": float(np.mean(list(ce.values()))) if ce else float("nan")}


def evaluate_corruptions(models: Mapping[str, nn.Module], images: np.ndarray, labels: np.ndarray | torch.Tensor,
                         corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                         seed: int = 0, cache_dir: str | os.PathLike | None = None, workers: int = 1,
                         baseline: str | None = None, batch_size: int = 256, include_clean: bool = True,
                         parallel: bool = True, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Corrupt once (cached), score every model, and add ``relative`` (CE vs ``baseline``'s run) to each result.

    ``parallel``: score the models at the same time, one per Python thread with one intra-op thread each
    (PyTorch releases the GIL). On a few busy CPU cores this is much faster than one model after the other
    with all cores, where intra-op threading collapses when another process competes.
    """
    corrupted = corrupt_images(images, corruptions, severities, seed=seed, workers=workers, cache_dir=cache_dir,
                               progress=progress)
    if baseline is not None and baseline not in models:
        raise ConfigError(f"baseline {baseline!r} is not one of the models {list(models)}")

    def run(m: nn.Module) -> dict[str, Any]:
        return score_corruptions(m, corrupted, labels, images if include_clean else None, batch_size)

    on_cpu = all(next(m.parameters()).device.type == "cpu" for m in models.values())
    if parallel and on_cpu and len(models) > 1:
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(len(models)) as pool:
                futures = {name: pool.submit(run, m) for name, m in models.items()}
                out = {name: f.result() for name, f in futures.items()}
        finally:
            torch.set_num_threads(threads)
    else:
        out = {name: run(m) for name, m in models.items()}
    if baseline is not None:
        for r in out.values():
            r["relative"] = relative_corruption_errors(r, out[baseline])
    return out


def stratified_subset(labels: np.ndarray | Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices with classes as balanced as possible, chosen under ``seed``, sorted (a fixed test subset)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if not 0 < n <= len(labels):
        raise ConfigError(f"subset size must be in 1..{len(labels)}, got {n}")
    rng = np.random.default_rng(seed)
    per = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    take, k = [], 0
    while len(take) < n:  # round-robin over classes
        for c in classes:
            if k < len(per[c]) and len(take) < n:
                take.append(per[c][k])
        k += 1
    return np.sort(np.asarray(take))
