"""The scoring input pipeline: whole batches read in DataLoader workers as uint8, finished on the scoring device.

Workers never ship float32 (600 KB per 224 px image) or per-image tensors: each batch is one uint8 NHWC tensor
(150 KB per image) written by the worker straight into shared memory (``decode="cpu"``: PIL decode and the
EvalSpec geometry, the exact per-sample path of ``Part.dataset``), or, for ``decode="gpu"``, the JPEG files'
bytes in one tensor (decoded on the device with torchvision's batched ``decode_jpeg``, resized and cropped
there). The scoring process moves the batch to the device (pinned memory, non-blocking on CUDA), normalises it
there in float32 with ToTensor + Normalize's operations, and hands the model a channels_last batch on CUDA (NHWC
memory is channels_last NCHW: no transpose) and a contiguous NCHW one on the CPU (faster to normalise there).

An image that cannot be read is not an exception inside a worker: the batch carries ``bad`` entries
(position, one-line reason) and the scoring loop applies the ``on_bad_image`` policy.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..data.transforms import EvalSpec
from ..base.errors import ConfigError
from ..models.registry import ModelConfig
from .benchmarks import Benchmark, Part

__all__ = ["BAD_IMAGE_POLICIES", "DECODERS", "PRECISIONS", "BadImage", "BatchImages", "ScoringInputs", "ShardBatches",
           "check_options", "device_decode", "normalize_nhwc"]

BAD_IMAGE_POLICIES = ("error", "skip")
DECODERS = ("cpu", "gpu")
PRECISIONS = ("32-true", "bf16-mixed")  # Lightning's spellings (trainer.precision)


def check_options(decode: str, precision: str, on_bad_image: str, device: torch.device | None = None) -> None:
    """Raise ConfigError naming a bad scoring option and its choices."""
    for name, value, choices in (("decode", decode, DECODERS), ("precision", precision, PRECISIONS),
                                 ("on_bad_image", on_bad_image, BAD_IMAGE_POLICIES)):
        if value not in choices:
            raise ConfigError(f"robustness {name} must be one of {', '.join(choices)}, got {value!r}")
    if decode == "gpu" and device is not None and device.type != "cuda":
        raise ConfigError(f"robustness decode: gpu decodes JPEGs on a CUDA device, but scoring runs on {device}; "
                          f"use decode: cpu (the default) or score on a GPU")


class ShardBatches(Sampler[list[int]]):
    """Rank ``rank``'s batches of a set of ``n`` images: batches ``rank, rank + world_size, ...`` in order.

    Sharding by batch, not by image, keeps every image in the same batch (same size, same neighbours) whatever
    the number of ranks, so the logits, and therefore the results, are bit-identical to a one-process run
    with the same batch size. The last batch may be short; no image is padded or repeated.
    """

    def __init__(self, n: int, rank: int, world_size: int, batch_size: int) -> None:
        self.batches = [list(range(s, min(s + batch_size, n))) for s in range(rank * batch_size, n,
                                                                            world_size * batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _open_rgb(f: Any) -> Image.Image:
    """torchvision's ``pil_loader``: the decoded image in RGB (an RGB image is used as decoded, not copied)."""
    img = Image.open(f)
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


def _hwc(spec_geometry: Any, img: Image.Image) -> torch.Tensor:
    # EvalSpec's geometry returns a CHW view of an HWC array: permuting back gives the contiguous HWC pixels.
    return spec_geometry(img).permute(1, 2, 0)


class BatchImages(Dataset):
    """The images of a benchmark's parts as one dataset, read a whole batch at a time (``__getitems__``).

    Every part must have the same ``EvalSpec`` (the parts of one benchmark do). A batch is a dict:

    - ``index``: int64 (n,) positions in this dataset (parts concatenated in order);
    - ``pixels``: uint8 (n, H, W, 3); with ``decode="gpu"`` only the rows of images that are not RGB JPEGs
      (decoded here with PIL), at positions ``pil_pos``;
    - ``jpeg``, ``offsets``, ``jpeg_pos`` (``decode="gpu"``): the RGB JPEG files' bytes, concatenated;
    - ``sizes``: int64 (n,) the files' sizes in bytes, read from the open file (-1: could not be opened), for the
      data fingerprint (``lk_ablate.base.provenance``) without another pass over the files;
    - ``bad``: [(position, "<path>: <reason>")] for images that could not be read (their rows are garbage).
    """

    def __init__(self, parts: Sequence[Part], spec: EvalSpec, decode: str = "cpu") -> None:
        self.spec, self.decode = spec, decode
        self._geometry = spec.geometry()
        paths: list[str] = []
        labels, part_of, index_in_part = [], [], []
        for p, part in enumerate(parts):
            # The same file list, in the same order, as Part.dataset (torchvision's ImageFolder scan).
            samples = part.dataset(spec, transform=lambda x: x).samples
            paths += [s for s, _ in samples]
            labels += [c for _, c in samples]
            part_of += [p] * len(samples)
            index_in_part += range(len(samples))
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.part = np.asarray(part_of, dtype=np.int64)
        self.index_in_part = np.asarray(index_in_part, dtype=np.int64)
        self._ring: SlotRing | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self._pixels(indices) if self.decode == "cpu" else self._bytes(indices)

    # -- decode: cpu ----------------------------------------------------------------------------------------
    def _decode_rows(self, indices: Sequence[int], read: Any, sizes: np.ndarray,
                     ) -> tuple[list[tuple[int, torch.Tensor]], list]:
        rows, bad = [], []
        # With a resize every image ends at the crop size; without (ImageNet-C) the batch's first image sets it.
        size = self.spec.crop if self.spec.resize is not None else None
        for pos, i in enumerate(indices):
            path = self.paths[i]
            try:
                hwc = read(i, sizes, pos)
            except Exception as e:  # any failure to read one image is that image's problem, handled by policy
                bad.append((pos, f"{path}: {_one_line(e)}"))
                continue
            size = size or (int(hwc.shape[0]), int(hwc.shape[1]))
            if tuple(hwc.shape[:2]) != tuple(size):
                bad.append((pos, f"{path}: is {hwc.shape[1]}x{hwc.shape[0]} px after the eval geometry, the "
                                 f"batch's images are {size[1]}x{size[0]} (ImageNet-C images are read without "
                                 f"resize: they must all have the released size)"))
                continue
            rows.append((pos, hwc))
        return rows, bad

    def _read_pixels(self, i: int, sizes: np.ndarray, pos: int) -> torch.Tensor:
        with open(self.paths[i], "rb") as f:
            sizes[pos] = os.fstat(f.fileno()).st_size
            return _hwc(self._geometry, _open_rgb(f))

    def use_ring(self, ring: "SlotRing") -> None:
        """In loader workers, write batches into ``ring``'s shared slots instead of new shared memory."""
        self._ring = ring

    def _pixels(self, indices: Sequence[int]) -> dict[str, Any]:
        sizes = np.full(len(indices), -1, dtype=np.int64)
        rows, bad = self._decode_rows(indices, self._read_pixels, sizes)
        h, w = (rows[0][1].shape[:2]) if rows else self.spec.crop
        shape = (len(indices), int(h), int(w), 3)
        ring = self._ring
        slot = ring.slot_of(indices) if ring is not None and get_worker_info() is not None else None
        out = ring.view(slot, shape) if slot is not None else _uint8_buffer(shape)
        for pos, hwc in rows:
            out[pos].copy_(hwc)
        batch = {"index": torch.as_tensor(np.asarray(indices, dtype=np.int64)), "sizes": torch.as_tensor(sizes),
                 "bad": bad}
        return dict(batch, slot=slot, shape=shape) if slot is not None else dict(batch, pixels=out)

    # -- decode: gpu (the worker reads bytes; non-JPEG or non-RGB images are decoded here with PIL) ----------
    def _bytes(self, indices: Sequence[int]) -> dict[str, Any]:
        blobs, jpeg_pos, pil_rows, bad = [], [], [], []
        sizes = np.full(len(indices), -1, dtype=np.int64)
        for pos, i in enumerate(indices):
            path = self.paths[i]
            try:
                with open(path, "rb") as f:
                    data = f.read()
                sizes[pos] = len(data)
                with Image.open(io.BytesIO(data)) as head:  # the header only: format and colour mode
                    device_ok = head.format == "JPEG" and head.mode == "RGB"
                if device_ok:
                    blobs.append(data)
                    jpeg_pos.append(pos)
                else:
                    pil_rows.append((pos, _hwc(self._geometry, _open_rgb(io.BytesIO(data)))))
            except Exception as e:
                bad.append((pos, f"{path}: {_one_line(e)}"))
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        jpeg = _uint8_buffer((int(offsets[-1]),))
        if blobs:
            jpeg.numpy()[:] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        shapes = {tuple(r.shape[:2]) for _, r in pil_rows}
        h, w = next(iter(shapes)) if len(shapes) == 1 else self.spec.crop
        pixels = _uint8_buffer((len(pil_rows), int(h), int(w), 3))
        keep = []
        for k, (pos, hwc) in enumerate(pil_rows):
            if tuple(hwc.shape[:2]) == (h, w):
                pixels[k].copy_(hwc)
                keep.append(pos)
            else:
                bad.append((pos, f"{self.paths[indices[pos]]}: is {hwc.shape[1]}x{hwc.shape[0]} px after the "
                                 f"eval geometry, other images of the batch {w}x{h}"))
        return {"index": torch.as_tensor(np.asarray(indices, dtype=np.int64)), "jpeg": jpeg,
                "offsets": torch.as_tensor(offsets), "jpeg_pos": torch.as_tensor(np.asarray(jpeg_pos, np.int64)),
                "pixels": pixels, "pil_pos": torch.as_tensor(np.asarray([p for p, _ in pil_rows], np.int64)),
                "sizes": torch.as_tensor(sizes), "bad": sorted(bad)}


def _uint8_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a DataLoader worker, in shared memory from the start (as
    ``default_collate`` does), so handing it to the main process copies nothing."""
    n = int(np.prod(shape))
    if get_worker_info() is None or n == 0:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def first_batch(batch: Any) -> Any:
    """collate_fn for batches that are already assembled by ``BatchImages.__getitems__``."""
    return batch


def normalize_nhwc(pixels: torch.Tensor, spec: EvalSpec, out: torch.Tensor | None = None,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float32 (n, 3, H, W), ``(x / 255 - mean) / std``, written into the flat float32
    ``out`` (at least as many elements) when given; memory channels_last or contiguous NCHW.

    The operations, and so every value, are those of ToTensor + Normalize (``EvalSpec.normalize``). Contiguous
    NCHW is the CPU's choice: there the per-channel ops run vectorised along rows, 3x faster than along the
    3-element channel axis of NHWC (0.19 vs 0.58 ms per 224 px image on one core).
    """
    if out is None:
        out = torch.empty(pixels.numel(), dtype=torch.float32, device=pixels.device)
    n, h, w, c = pixels.shape
    mean = torch.as_tensor(spec.mean, dtype=torch.float32, device=pixels.device)
    std = torch.as_tensor(spec.std, dtype=torch.float32, device=pixels.device)
    if channels_last:
        buf = out[: pixels.numel()].view(n, h, w, c)
        buf.copy_(pixels).div_(255).sub_(mean).div_(std)
        return buf.permute(0, 3, 1, 2)
    buf = out[: pixels.numel()].view(n, c, h, w)
    buf.copy_(pixels.permute(0, 3, 1, 2)).div_(255).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
    return buf


def device_decode(batch: dict[str, Any], spec: EvalSpec, device: torch.device, paths: Sequence[str],
                  ) -> tuple[torch.Tensor, list]:
    """A ``decode="gpu"`` batch of ``BatchImages`` (file ``paths``) -> (uint8 (n, H, W, 3) on ``device``, bad).

    JPEGs are decoded with torchvision's batched ``decode_jpeg(..., device=device)`` (nvJPEG on CUDA), then
    resized (antialiased, the spec's interpolation) and centre-cropped on the device with
    ``torchvision.transforms.v2.functional``; an image the batched decoder rejects is retried alone, then
    decoded with PIL (as on the CPU path) before it counts as bad.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    index = batch["index"]
    n = len(index)
    offsets = batch["offsets"].tolist()
    blobs = [batch["jpeg"][offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
    jpeg_pos = batch["jpeg_pos"].tolist()
    bad = list(batch["bad"])
    images: list[torch.Tensor | None] = []
    if blobs:
        try:
            images = list(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one image spoils the batched call: find it
            images = []
            for k, blob in enumerate(blobs):
                try:
                    images.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
    rows: list[tuple[int, torch.Tensor]] = []
    geometry = spec.geometry()
    for pos, blob, img in zip(jpeg_pos, blobs, images):
        if img is None:
            try:
                hwc = _hwc(geometry, _open_rgb(io.BytesIO(blob.numpy().tobytes()))).to(device)
            except Exception as e:
                bad.append((pos, f"{paths[index[pos]]}: {_one_line(e)}"))
                continue
        else:
            hwc = _device_geometry(img, spec).permute(1, 2, 0)
        rows.append((pos, hwc))
    pil = batch["pixels"]
    if len(pil):
        pil_dev = pil.to(device, non_blocking=True)
        rows += [(pos, pil_dev[k]) for k, pos in enumerate(batch["pil_pos"].tolist())]
    rows.sort(key=lambda r: r[0])
    if rows:
        h, w = rows[0][1].shape[:2]
    else:
        h, w = spec.crop
    out = torch.empty((n, int(h), int(w), 3), dtype=torch.uint8, device=device)
    for pos, hwc in rows:
        if tuple(hwc.shape[:2]) != (h, w):
            bad.append((pos, f"{paths[index[pos]]}: is {hwc.shape[1]}x{hwc.shape[0]} px after the eval geometry, "
                             f"the batch's images {w}x{h}"))
            continue
        out[pos].copy_(hwc)
    return out, sorted(bad)


def _device_geometry(img: torch.Tensor, spec: EvalSpec) -> torch.Tensor:
    """EvalSpec's resize + centre crop on a uint8 CHW tensor (any device), antialiased like PIL."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    if spec.resize is not None:
        size = [spec.resize, spec.resize] if spec.squash else [spec.resize]
        img = F.resize(img, size, interpolation=InterpolationMode(spec.interpolation), antialias=True)
        return F.center_crop(img, list(spec.crop))
    h, w = img.shape[-2:]
    if h > spec.crop[0] or w > spec.crop[1]:
        img = F.center_crop(img, [min(h, spec.crop[0]), min(w, spec.crop[1])])
    return img


PREFETCH = 2  # batches in flight per loader worker (DataLoader's prefetch_factor)
RING_MAX_BYTES = 1 << 30


class SlotRing:
    """Shared-memory slots that loader workers write batches into, reused round-robin (decode cpu, CPU scoring).

    A fresh shared-memory tensor per batch costs page faults on both sides (a tenth of a 224 px decode); these
    slots stay mapped. Batch b of the shard goes to slot ``b % n_slots``. The DataLoader has at most
    ``PREFETCH * workers`` batches in flight and asks for batch b + PREFETCH * workers only when it hands out
    batch b, after the consumer is done with batch b - 1, so with ``n_slots >= PREFETCH * workers + 2`` a worker
    never writes a slot the consumer still reads (``ScoringInputs.finish`` copies each batch out at once).
    """

    def __init__(self, n_slots: int, slot_bytes: int, batch_size: int, rank: int, world_size: int) -> None:
        self.n_slots, self.slot_bytes = n_slots, slot_bytes
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.nbytes = n_slots * slot_bytes
        self.slots: list[torch.Tensor] = []

    def allocate(self) -> "SlotRing":
        self.slots = [torch.empty(self.slot_bytes, dtype=torch.uint8).share_memory_() for _ in range(self.n_slots)]
        return self

    def slot_of(self, indices: Sequence[int]) -> int:
        """The slot of the shard batch that starts at dataset index ``indices[0]`` (see ShardBatches)."""
        b = (indices[0] // self.batch_size - self.rank) // self.world_size
        return b % self.n_slots

    def view(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self.slots[slot][: int(np.prod(shape))].view(shape)


class BadImage(Exception):
    """An unreadable image under ``on_bad_image: error``; ``index`` is its position in the benchmark."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class ScoringInputs:
    """One rank's model inputs for one benchmark: iterate to get (x, index) batches.

    ``x``: float32 (n, 3, H, W) on ``device``, normalised there (channels_last on CUDA, where convolutions
    prefer it and the normalisation is free; contiguous on the CPU, see ``normalize_nhwc``); ``index``: the images' positions
    in ``self.data`` (labels, parts). ``x`` lives in a float buffer that the next batch reuses: clone what you
    keep. Batches are ``ShardBatches``; bad images follow ``on_bad_image``: "error"
    raises ``BadImage`` at the first one, "skip" drops them from the batch and appends (position, path) to
    ``skipped``.
    """

    def __init__(self, bench: Benchmark, cfg: ModelConfig, *, batch_size: int, num_workers: int,
                 device: torch.device, rank: int = 0, world_size: int = 1, decode: str = "cpu",
                 on_bad_image: str = "error", skipped: list[tuple[int, str]] | None = None) -> None:
        specs = {p.spec(cfg) for p in bench.parts}
        if len(specs) != 1:
            raise ValueError(f"{bench.name}: its parts have different eval transforms {specs}")
        self.name, self.spec, self.device = bench.name, specs.pop(), device
        self.decode, self.on_bad_image = decode, on_bad_image
        self.skipped = skipped if skipped is not None else []
        self.data = BatchImages(bench.parts, self.spec, decode=decode)
        # File sizes as the loader reads them (-1: not read by this rank), for the data fingerprint.
        self.sizes = np.full(len(self.data), -1, dtype=np.int64)
        self.ring: SlotRing | None = None
        if decode == "cpu" and device.type == "cpu" and num_workers > 0:
            ring = SlotRing(PREFETCH * num_workers + 2, batch_size * self.spec.crop[0] * self.spec.crop[1] * 3,
                            batch_size, rank, world_size)
            if ring.nbytes <= RING_MAX_BYTES:
                self.ring = ring.allocate()
                self.data.use_ring(self.ring)
        # The shard's batches are full batches of the whole set (plus at most one short last batch), so the batch
        # boundaries coincide with the one-process run's; each batch is read by one worker into one uint8 tensor.
        self.loader = DataLoader(self.data, batch_sampler=ShardBatches(len(self.data), rank, world_size, batch_size),
                                 collate_fn=first_batch, num_workers=num_workers, pin_memory=device.type == "cuda",
                                 prefetch_factor=PREFETCH if num_workers else None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        buffer: torch.Tensor | None = None  # the float32 input, reused from batch to batch
        for batch in self.loader:
            x, index, buffer = self.finish(batch, buffer)
            if len(index):
                yield x, index

    def finish(self, batch: dict[str, Any], buffer: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """A loader batch -> (normalised x on the device, kept positions, the float buffer to reuse)."""
        index = batch["index"].numpy()
        self.sizes[index] = batch["sizes"].numpy()
        if self.decode == "gpu":
            pixels, bad = device_decode(batch, self.spec, self.device, self.data.paths)
        else:
            pixels = batch["pixels"] if batch.get("slot") is None else self.ring.view(batch["slot"], batch["shape"])
            pixels, bad = pixels.to(self.device, non_blocking=True), batch["bad"]
        if bad:
            if self.on_bad_image == "error":
                pos, reason = bad[0]
                raise BadImage(int(index[pos]), f"{self.name}: cannot read image {reason}; replace or delete the "
                                                f"file, or set on_bad_image: skip to score without it (the "
                                                f"results then list it)")
            self.skipped += [(int(index[pos]), self.data.paths[index[pos]]) for pos, _ in bad]
            keep = np.setdiff1d(np.arange(len(index)), [pos for pos, _ in bad])
            pixels, index = pixels[torch.as_tensor(keep, device=pixels.device)], index[keep]
        if buffer is None or buffer.numel() < pixels.numel():
            buffer = torch.empty(pixels.numel(), dtype=torch.float32, device=self.device)
        return normalize_nhwc(pixels, self.spec, buffer, self.device.type == "cuda"), index, buffer
