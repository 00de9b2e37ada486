"""FFCV reading with an order we control: seeded decoders and augmentation, and an epoch iterator.

FFCV compiles a pipeline per field ("image": decode -> augment -> torch, "label": int -> torch) into numba
stages. We keep that (the speed) and replace the parts that break exact resume and DDP sharding:

- Order: the batches come from a ``ShardedBatchSampler`` (a function of seed and epoch; rank r reads its own
  shard; a resume skips the batches already trained), not from FFCV's traversal orders.
- Randomness: the crop decoder and the augmentation op seed each sample from (epoch key, sample index); the
  epoch key, ``derive_seed(seed, STREAM_SAMPLE, epoch)``, is written into a one-value buffer of each seeded
  op before the epoch starts (the compiled code reads it; recompiling per epoch would cost seconds).
- Buffers: FFCV writes batch i into one of a ring of slots. Lightning holds two batches at once (it fetches
  one ahead), so the ring has ``batches_ahead + 3`` slots: a batch stays valid until two more are taken.
- Threads: one producer thread per epoch, closed (and joined) when the epoch ends, when the consumer stops
  early (the generator is closed) or when the next epoch starts; an error in it is raised in the consumer.
- Torch threads: FFCV's ``Compiler.set_num_threads`` also sets torch's; we restore torch's count.

Relies on FFCV 1.0's pipeline calling convention (``Loader.code``, ``Graph.allocate_memory``), as FFCV's own
``EpochIterator`` does.
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from .ffcv_import import require_ffcv

require_ffcv()  # first: keeps torch's thread count, which importing FFCV sets to 1
from ffcv.fields.basics import IntDecoder  # noqa: E402
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder  # noqa: E402
from ffcv.libffcv import imdecode  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.pipeline.operation import Operation  # noqa: E402
from ffcv.pipeline.state import State  # noqa: E402
from ffcv.traversal_order.quasi_random import generate_order_inner  # noqa: E402
from numba import njit, prange  # noqa: E402

from .ffcv_augment import (STREAM_CROP, augment_batch, augment_batch_basic, augment_batch_basic_parallel,
                           augment_batch_parallel, needs_full_kernel, random_resized_crop_params, seed_state)
from .ffcv_resize import resize_crop_area
from .sampler import LoaderPosition, ShardedBatchSampler
from .seeding import STREAM_ORDER, STREAM_SAMPLE, derive_seed

_KEY = AllocationQuery((1,), np.dtype("<u8"))
_JPG = IMAGE_MODES["jpg"]
# numba's default 'workqueue' threading layer aborts when two threads launch parallel kernels at once
# (a train and a val iterator alive together); batches are short, so one lock costs nothing.
_PIPELINE_LOCK = threading.Lock()
CROP_RANDOM, CROP_CENTER, CROP_SQUASH = 0, 1, 2  # the decoders' crop rules



def _readonly_state_types() -> None:
    """Work around an FFCV 1.0 bug: its memory managers' ``state_type`` sets ``mutable = False`` on numba's
    shared (interned) array types such as ``uint8[::1]``. That changes their hash, so numba's compiled-function
    tables keyed by them break (KeyError while compiling) once a second loader compiles in the process. Same
    types, built as new readonly types instead of mutating the shared ones (the OS-cache reader, compiled
    with an explicit signature, is rebuilt with it)."""
    from ffcv.memory_managers import OSCacheManager, ProcessCacheManager

    def ro(dtype: Any, ndim: int) -> Any:
        return numba.types.Array(dtype, ndim, "C", readonly=True)

    def os_cache_reader(self: OSCacheManager) -> Callable:
        def read(address, mem_state):  # the sample's bytes in the memory-mapped file
            size = mem_state[2][np.searchsorted(mem_state[1], address)]
            return mem_state[0][address:address + size]

        return Compiler.compile(read, ro(numba.uint8, 1)(numba.uint64, self.state_type))

    OSCacheManager.state_type = property(
        lambda self: numba.types.Tuple([ro(numba.uint8, 1), numba.uint64[::1], numba.uint64[::1]]))
    OSCacheManager.compile_reader = os_cache_reader
    ProcessCacheManager.state_type = property(
        lambda self: numba.types.Tuple([ro(numba.uint8, 2), ro(numba.uint64, 1), ro(numba.uint64, 1),
                                        ro(numba.uint32, 1)]))


_readonly_state_types()
_imdecode = njit(nogil=True)(imdecode)


@njit(nogil=True)
def _decode_full(image_data, mode, height, width, temp):
    if mode == _JPG:
        _imdecode(image_data, temp, height, width, height, width, 0, 0, 1, 1, False, False)
        return temp.reshape(-1)[:3 * height * width].reshape(height, width, 3)
    return image_data.reshape(height, width, 3)


@njit(nogil=True)
def _read_os_cache(address, state, page_log2):
    """A sample's bytes with the OS cache: a slice of the memory-mapped file (FFCV's OS-cache reader)."""
    size = state[2][np.searchsorted(state[1], address)]
    return state[0][address:address + size]


@njit(nogil=True)
def _read_process_cache(address, state, page_log2):
    """A sample's bytes with FFCV's process cache: its page's slot in the loaded pages."""
    size = state[2][np.searchsorted(state[1], address)]
    page = address >> page_log2
    offset = address - (page << page_log2)
    return state[0][state[3][page], offset:offset + size]


def _decode_kernel(read: Callable, parallel: bool) -> Callable:
    loop = prange if parallel else range

    @njit(parallel=parallel, nogil=True)
    def decode(batch_indices, metadata, state, page_log2, temp, resize_temp, destination, key, crop, ratio,
               s_lo, s_hi, r_lo, r_hi):
        for i in loop(len(batch_indices)):
            field = metadata[batch_indices[i]]
            height, width = np.uint32(field["height"]), np.uint32(field["width"])
            image = _decode_full(read(field["data_ptr"], state, page_log2), field["mode"], height, width,
                                 temp[i % temp.shape[0]])
            if crop == CROP_CENTER:
                c = max(np.int64(ratio * min(height, width)), 1)  # a 1-pixel side still gives a crop
                top, left, h, w = (np.int64(height) - c) // 2, (np.int64(width) - c) // 2, c, c
            elif crop == CROP_SQUASH:  # the centred ratio of each side, then resized to the output square
                h, w = max(np.int64(ratio * height), 1), max(np.int64(ratio * width), 1)
                top, left = (np.int64(height) - h) // 2, (np.int64(width) - w) // 2
            else:
                st = seed_state(key, batch_indices[i], STREAM_CROP)
                top, left, h, w = random_resized_crop_params(st, np.int64(height), np.int64(width), s_lo, s_hi,
                                                             r_lo, r_hi)
            resize_crop_area(image, top, h, left, w, destination[i], resize_temp[i % resize_temp.shape[0]])

    return decode


# Compiled once per process, on first use (they call FFCV's C decoder through ctypes, so numba cannot cache
# them on disk). Serial: one batch per thread (OS cache); parallel: one batch over threads (process cache).
_DECODE_KERNELS = {(reader, parallel): _decode_kernel(fn, parallel)
                   for reader, fn in (("os", _read_os_cache), ("process", _read_process_cache))
                   for parallel in (False, True)}
_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A per-thread scratch array (reused; reallocated when the shape changes)."""
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype)
        setattr(_SCRATCH, name, buf)
    return buf


class SeededOp:
    """Marks an operation whose last memory allocation holds the epoch key (filled by ``FFCVLoader``)."""


class _CropDecoder(ResizedCropRGBImageDecoder, SeededOp):
    """Decode (FFCV's libjpeg-turbo / raw copy), crop, resize (area averaging, FFCV's cv2 INTER_AREA within one
    grey level, 2.2x faster: ``ffcv_resize``) into the output size.

    Its code is a Python step that calls one parallel numba kernel compiled once per process; FFCV would
    otherwise compile a new decoder for every loader (seconds each). ``FFCVLoader`` sets ``reader`` and
    ``page_log2`` from the file's memory manager.
    """

    crop, ratio_c, scale, ratio = CROP_RANDOM, 1.0, (0.08, 1.0), (3 / 4, 4 / 3)
    reader, page_log2, parallel = "os", 0, False

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, Any]:
        # The full-size decode buffer is per thread (scratch), not per batch slot as in FFCV.
        self.max_width = int(self.metadata["width"].max())
        self.max_pixels = self.max_width * int(self.metadata["height"].max())
        shape = (self.output_size[0], self.output_size[1], 3)
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("<u1")),
                (AllocationQuery(shape, np.dtype("<u1")), _KEY))

    def get_crop_generator(self):  # pragma: no cover - the abstract hook; our kernel does the crop
        raise NotImplementedError

    def generate_code(self) -> Callable:
        op = self
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        r_lo, r_hi = math.log(self.ratio[0]), math.log(self.ratio[1])

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, key = my_storage
            n = len(batch_indices)
            temp = scratch("decode", (n if op.parallel else 1, 3 * op.max_pixels), np.uint8)
            resize_temp = scratch("resize", (n if op.parallel else 1, 3 * op.output_size[0] * op.max_width),
                                  np.float32)
            _DECODE_KERNELS[op.reader, op.parallel](batch_indices, metadata, storage_state, np.uint64(op.page_log2),
                                                    temp, resize_temp, destination, key[0, 0], op.crop,
                                                    op.ratio_c, s_lo, s_hi, r_lo, r_hi)
            return destination[:n]

        return decode


class SeededRandomResizedCrop(_CropDecoder):
    """FFCV's RandomResizedCrop decoder (scale, ratio as torchvision) with the crop of each sample drawn from
    its own generator, seeded by (epoch key, sample index)."""

    def __init__(self, output_size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__(output_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)


class CenterCrop(_CropDecoder):
    """FFCV's centre-crop decoder: the centred square of ``ratio`` x the shorter side, resized. With ``squash``
    (timm's crop mode; RepLKNet's evaluation at >= 384 px), the centred ``ratio`` x height by ``ratio`` x width
    box, resized to the output ignoring the aspect ratio (``ratio`` 1: the whole image warped)."""

    def __init__(self, output_size: tuple[int, int], ratio: float, squash: bool = False) -> None:
        super().__init__(output_size)
        self.crop, self.ratio_c = CROP_SQUASH if squash else CROP_CENTER, float(ratio)


class LabelDecoder(IntDecoder):
    """The int 'label' field as an int64 (B, 1) array (vectorised numpy instead of a compiled loop)."""

    def generate_code(self) -> Callable:
        def decode(indices, destination, metadata, storage_state):
            n = len(indices)
            destination[:n, 0] = metadata[indices]
            return destination[:n]

        return decode


class SeededAugment(Operation, SeededOp):
    """uint8 HWC -> normalised float32 HWC; in training the recipe's per-sample augmentations first.

    ``params``/``ops`` come from ``ffcv_augment.build_params``. Runs as a Python step calling one cached,
    parallel numba kernel (``augment_batch``): as a jitted FFCV op it would be recompiled, with all of RandAugment
    inlined, for every loader (tens of seconds).
    """

    def __init__(self, params: np.ndarray, ops: np.ndarray, train: bool) -> None:
        super().__init__()
        self.params, self.ops, self.train = params, ops, train

    parallel = False

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, Any]:
        h, w, _ = previous_state.shape
        return (replace(previous_state, jit_mode=False, dtype=np.dtype("<f4")),
                (AllocationQuery((h, w, 3), np.dtype("<f4")), _KEY))

    def generate_code(self) -> Callable:
        op, params, ops = self, self.params, self.ops
        full = self.train and needs_full_kernel(params)

        def augment(images, memory, indices):
            out, key = memory
            n, h, w, _ = images.shape
            tmp = scratch("augment", (n if op.parallel else 1, h, w, 3), np.uint8)
            if full:
                kernel = augment_batch_parallel if op.parallel else augment_batch
                kernel(images, tmp, out[:n], key[0, 0], indices, params, ops)
            else:  # eval (no flip: hflip is 0) or flip/pad-crop only
                kernel = augment_batch_basic_parallel if op.parallel else augment_batch_basic
                kernel(images, tmp, out[:n], key[0, 0], indices, params)
            return out[:n]

        augment.with_indices = True
        return augment


def quasi_random_order(page_to_samples: dict, num_samples: int, seed: int, buffer_size: int) -> np.ndarray:
    """FFCV's QUASI_RANDOM order (pages in random order, samples drawn from a window of open pages), as a pure
    function of ``seed``: FFCV's own sampler shuffles its page table in place, so its order depends on history."""
    pages = sorted(page_to_samples)
    width = max(len(page_to_samples[p]) for p in pages)
    table = np.zeros((len(pages), width), np.int64)
    sizes = np.zeros(len(pages), np.int64)
    for row, p in enumerate(pages):
        samples = sorted(int(s) for s in page_to_samples[p])
        table[row, :len(samples)] = samples
        sizes[row] = len(samples)
    out = np.zeros(num_samples, np.int64)
    generate_order_inner(seed % 2**32, table, sizes, out, buffer_size)
    return out


class QuasiRandomBatchSampler(ShardedBatchSampler):
    """A ``ShardedBatchSampler`` whose shuffled order on one process is FFCV's page-aware QUASI_RANDOM order."""

    def __init__(self, page_to_samples: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.world_size != 1:
            raise ValueError("QUASI_RANDOM order is for one process; DDP uses the RANDOM order")
        self.page_to_samples = page_to_samples

    def shard(self) -> list[int]:
        if not self.shuffle:
            return super().shard()
        order = quasi_random_order(self.page_to_samples, self.num_samples,
                                   derive_seed(self.seed, STREAM_ORDER, self.epoch), 2 * self.batch_size)
        if np.bincount(order, minlength=self.num_samples).max(initial=0) != 1:  # a sample without data pages
            return super().shard()
        if self.drop_last:
            order = order[:self.num_samples // self.batch_size * self.batch_size]
        return order.tolist()


def _select(buffer: Any, slot: int, count: int) -> Any:
    if buffer is None:
        return None
    if isinstance(buffer, tuple):
        return tuple(_select(b, slot, count) for b in buffer)
    return buffer[slot][:count]


def ring_slots(workers: int, batches_ahead: int) -> int:
    """Batch slots so that no batch in use is overwritten: each worker holds up to ``per_worker_queue`` done
    batches and makes one; the consumer holds two (Lightning fetches one ahead)."""
    return workers * (per_worker_queue(workers, batches_ahead) + 1) + 2


def per_worker_queue(workers: int, batches_ahead: int) -> int:
    return max(1, -(-batches_ahead // workers))


class EpochRun:
    """Runs the pipeline over one epoch's batches in ``workers`` threads (batch b in thread b % workers);
    ``get(b)`` returns batch b. With one thread per batch the numba kernels run serially and release the GIL,
    so threads never wait on each other (a parallel kernel would stall on a thread the OS descheduled)."""

    def __init__(self, loader: Loader, batches: list[np.ndarray], key: int, workers: int, batches_ahead: int,
                 memory: dict, kernel_threads: int = 1) -> None:
        self.loader, self.batches, self.workers = loader, batches, workers
        self.kernel_threads = kernel_threads
        self.slots = ring_slots(workers, batches_ahead)
        self.queues = [queue.Queue(per_worker_queue(workers, batches_ahead)) for _ in range(workers)]
        self.stop = threading.Event()
        self.memory = memory
        for node in loader.graph.nodes:
            op = getattr(node, "decoder", None) or getattr(node, "operation", None)
            if isinstance(op, SeededOp):
                self.memory["operation"][node.id][-1][...] = np.uint64(key)
        self.context = loader.memory_manager.schedule_epoch(batches)
        self.context.__enter__()
        self.closed = False
        self.threads = [threading.Thread(target=self._work, args=(w,), daemon=True, name="lk_ablate-ffcv-epoch")
                        for w in range(workers)]
        for t in self.threads:
            t.start()

    def _work(self, w: int) -> None:
        if self.kernel_threads > 1:
            numba.set_num_threads(max(1, min(self.kernel_threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            for b in range(w, len(self.batches), self.workers):
                if self.stop.is_set():
                    return
                if self.workers == 1:
                    self.context.start_batch(b)  # FFCV's process cache loads pages batch by batch, in order
                if self.kernel_threads > 1:
                    with _PIPELINE_LOCK:
                        result = self._run(self.batches[b], b % self.slots)
                else:
                    result = self._run(self.batches[b], b % self.slots)
                if not self._put(w, result):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(w, e)

    def _put(self, w: int, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queues[w].put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, indices: np.ndarray, slot: int) -> tuple:
        code, outputs = self.loader.code
        n = len(indices)
        args = {"batch_indices": indices, "storage_state": self.context.state,
                "metadata": self.loader.reader.metadata,
                **{f"memory_{k}": _select(v, slot, n) for k, v in self.memory["operation"].items()},
                **{f"shared_memory_{k}": _select(v, slot, n) for k, v in self.memory["shared"].items()}}
        for stage_code, defined in code:
            for node_id, result in zip(defined, stage_code(**args)):
                args[f"result_{node_id}"] = result
        return tuple(args[f"result_{x}"] for x in outputs)

    def get(self, b: int) -> Any:
        item = self.queues[b % self.workers].get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self, timeout: float = 30.0) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        for t in self.threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout)
        self.context.__exit__(None, None, None)


class FFCVLoader(LoaderPosition):  # state_dict / load_state_dict: the resumable position
    """An iterable of (images float32 NCHW channels_last, labels int64) batches from a .beton file.

    ``batch_sampler`` (a ``ShardedBatchSampler``, or its QUASI_RANDOM variant for ``order='quasi_random'`` on
    one process) decides the batches; Lightning calls its ``set_epoch``. ``resolution`` (epoch -> side) sets the
    decoder's output size per epoch (progressive resizing). Implements Lightning's stateful-loader protocol
    like ``ResumableDataLoader``.
    """

    def __init__(self, path: str | Path, decoder: Operation, augment: Operation, batch_size: int, train: bool,
                 order: str = "random", seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 1,
                 os_cache: bool = True, batches_ahead: int = 3, progress: Callable[[], tuple[int, int]] | None = None,
                 resolution: Callable[[int], int] | None = None) -> None:
        from ffcv.memory_managers import OSCacheManager
        from ffcv.transforms import ToTensor, ToTorchImage

        self.path, self.decoder = Path(path), decoder
        self.num_workers, self.seed, self.batches_ahead = max(1, num_workers), seed, batches_ahead
        self._progress, self.resolution = progress, resolution
        pipelines = {"image": [decoder, augment, ToTensor(), ToTorchImage(channels_last=True)],
                     "label": [LabelDecoder(), ToTensor()]}
        torch_threads = torch.get_num_threads()
        # Every step is Python calling numba kernels compiled once per process: with FFCV's compiler off, it
        # builds no per-loader numba code (which took seconds per loader).
        Compiler.set_enabled(False)
        try:
            self.ffcv = Loader(str(path), batch_size=batch_size, num_workers=self.num_workers, os_cache=os_cache,
                               order=OrderOption.SEQUENTIAL, pipelines=pipelines, drop_last=False,
                               batches_ahead=batches_ahead)
        finally:
            Compiler.set_enabled(True)
            torch.set_num_threads(torch_threads)
        os_cached = isinstance(self.ffcv.memory_manager, OSCacheManager)
        decoder.reader = "os" if os_cached else "process"
        decoder.page_log2 = int(np.log2(self.ffcv.reader.page_size))
        # OS cache: one batch per thread. FFCV's process cache loads pages for one batch after the other, so
        # there one thread runs the batches in order and the kernels spread each batch over the threads.
        self.workers = self.num_workers if os_cached else 1
        decoder.parallel = augment.parallel = not os_cached and self.num_workers > 1
        n = int(self.ffcv.reader.num_samples)
        args = (n, batch_size, train, train, seed, rank, world_size)
        if order == "quasi_random" and train and world_size == 1:
            self.batch_sampler: ShardedBatchSampler = QuasiRandomBatchSampler(
                self.ffcv.memory_manager.page_to_samples, *args)
        elif order in ("random", "quasi_random"):
            self.batch_sampler = ShardedBatchSampler(*args)
        else:
            raise ValueError(f"unknown order {order!r}")
        self._run: EpochRun | None = None
        self._memory: tuple[tuple, dict] | None = None

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def _buffers(self) -> dict:
        # Allocated once per output size and reused every epoch: fresh buffers would cost a page fault per
        # 4 KiB in the first batches of every epoch (about 0.5 ms per image).
        shape = tuple(getattr(self.decoder, "output_size", ()))
        if self._memory is None or self._memory[0] != shape:
            slots = ring_slots(self.workers, self.batches_ahead)
            self._memory = (shape, self.ffcv.graph.allocate_memory(self.ffcv.batch_size, slots))
        return self._memory[1]

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
            self._run = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.close()  # an iterator the consumer abandoned
        epoch = self.batch_sampler.epoch
        if self.resolution is not None:
            side = int(self.resolution(epoch))
            self.decoder.output_size = (side, side)
        batches = [np.fromiter((i for i, _ in b), np.uint64, len(b)) for b in self.batch_sampler]
        key = derive_seed(self.seed, STREAM_SAMPLE, epoch) & (2**64 - 1)
        torch_threads = torch.get_num_threads()
        run = self._run = EpochRun(self.ffcv, batches, key, self.workers, self.batches_ahead, self._buffers(),
                                   kernel_threads=1 if self.workers > 1 else self.num_workers)
        torch.set_num_threads(torch_threads)
        return self._iterate(run, len(batches))

    @staticmethod
    def _iterate(run: EpochRun, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for b in range(n):
                images, labels = run.get(b)
                yield images, labels.view(-1)
        finally:
            run.close()
