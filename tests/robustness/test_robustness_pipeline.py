"""The scoring input pipeline (lk_ablate.robustness.pipeline): what the model sees equals the per-sample PIL path
bit for bit on the CPU, the bad-image policy (error at the first unreadable image, or skip and list), the
device-decode path (checked against PIL on the CPU here, on CUDA when a GPU is present), bf16 scoring, DDP."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from test_robustness_support import ORACLE_CONFIG, OracleNet, benchmark_wnids, encode, imagenet_wnids, write_tree
from torch.utils.data import DataLoader, default_collate

from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.models.registry import ModelConfig
from lk_ablate.robustness.benchmarks import Benchmark, Part
from lk_ablate.robustness.evaluate import evaluate
from lk_ablate.robustness.pipeline import BatchImages, device_decode, normalize_nhwc

from helpers import test_pythonpath

HERE = Path(__file__).resolve()
gpu = pytest.mark.gpu  # deselected where CUDA is absent (tests/conftest.py)
BICUBIC_CONFIG = ModelConfig(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic", num_classes=1000)


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like content: a smooth colour field (bicubic upsampling of coarse noise) plus mild noise."""
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)


def photo_tree(root: Path, classes: list[str], sizes: list[tuple[int, int]], seed: int = 0,
               odd_formats: bool = True) -> Path:
    """root/<class>/<k>.JPEG, photo-like, one size per image (w, h) cycling over ``sizes``; with ``odd_formats``
    also a grayscale JPEG, a CMYK JPEG, a palette PNG and an RGBA PNG (what ImageNet folders really hold)."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        w, h = sizes[k % len(sizes)]
        Image.fromarray(photo(rng, h, w)).save(d / f"{k}.JPEG", quality=90)
    if odd_formats:
        w, h = sizes[0]
        img = Image.fromarray(photo(rng, h, w))
        img.convert("L").save(root / classes[0] / "gray.JPEG", quality=90)
        img.convert("CMYK").save(root / classes[1 % len(classes)] / "cmyk.JPEG", quality=90)
        img.convert("P").save(root / classes[2 % len(classes)] / "palette.png")
        img.convert("RGBA").save(root / classes[3 % len(classes)] / "rgba.png")
    return root


class Recorder(nn.Module):
    """Keeps every input it sees; logits from the input's mean so that scoring runs end to end."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.float().mean(dim=(2, 3)).repeat(1, 334)[:, :1000] + self.p


def reference_batches(part: Part, cfg: ModelConfig, batch_size: int) -> list[torch.Tensor]:
    """Today's PIL path: Part.dataset (per-sample eval transform) and the default collate."""
    loader = DataLoader(part.dataset(cfg), batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=default_collate)
    return [x for x, _ in loader]


@pytest.mark.parametrize("cfg", [ORACLE_CONFIG, BICUBIC_CONFIG], ids=["bilinear", "bicubic"])
@pytest.mark.parametrize("workers", [0, 2])
def test_model_input_is_bit_identical_to_the_pil_path(tmp_path, cfg, workers):
    wnids = benchmark_wnids("a")[:12]
    photo_tree(tmp_path / "a", wnids, [(50, 40), (37, 61), (64, 64), (33, 32)])
    # Only 12 class folders exist: score them as a part of their own (labels 0..11, no mask).
    part = Part("a", str(tmp_path / "a"), tuple(wnids), True)
    bench = Benchmark("imagenet_a", "masked_top1", (part,), mask=None)
    model = Recorder()
    results, errors = evaluate({"raw": model}, cfg, [bench], batch_size=5, num_workers=workers)
    assert errors == [] and results["raw"]["imagenet_a"]["n"] == 16
    expected = reference_batches(part, cfg, 5)
    assert [x.shape for x in model.seen] == [x.shape for x in expected]
    for seen, ref in zip(model.seen, expected):
        assert seen.dtype == torch.float32 and seen.is_contiguous()
        assert torch.equal(seen, ref)


def test_worker_slots_are_reused_without_overwriting_a_batch_in_use(tmp_path):
    """20 batches through 6 shared slots (2 workers), a consumer slower than the workers: every batch the model
    sees is still the reference batch (a slot reused too early would hold a later batch's images)."""
    import time

    wnids = benchmark_wnids("a")[:40]
    photo_tree(tmp_path / "a", wnids, [(40, 36), (36, 44)], odd_formats=False)
    part = Part("a", str(tmp_path / "a"), tuple(wnids), True)

    class Slow(Recorder):
        def forward(self, x):
            time.sleep(0.01)
            return super().forward(x)

    model = Slow()
    evaluate({"raw": model}, ORACLE_CONFIG, [Benchmark("a", "masked_top1", (part,))], batch_size=2, num_workers=2)
    expected = reference_batches(part, ORACLE_CONFIG, 2)
    assert len(model.seen) == len(expected) == 20
    assert all(torch.equal(a, b) for a, b in zip(model.seen, expected))


def test_imagenet_c_no_resize_is_bit_identical_and_shared_by_ema(tmp_path):
    wnids = imagenet_wnids()[:9]
    # Released ImageNet-C images are all one size; larger ones are centre-cropped like the reference.
    photo_tree(tmp_path / "fog" / "5", wnids, [(40, 40), (44, 41)], odd_formats=False)
    part = Part("fog/5", str(tmp_path / "fog" / "5"), tuple(wnids), False)
    bench = Benchmark("imagenet_c", "corruption", (part,))
    raw, ema = Recorder(), Recorder()
    results, errors = evaluate({"raw": raw, "ema": ema}, ORACLE_CONFIG, [bench], batch_size=4, num_workers=0)
    assert errors == [] and results["raw"]["imagenet_c"]["n_total"] == 9
    expected = reference_batches(part, ORACLE_CONFIG, 4)
    assert len(raw.seen) == len(expected) == 3
    for a, b, ref in zip(raw.seen, ema.seen, expected):
        assert torch.equal(a, ref) and torch.equal(b, ref)


def test_normalize_equals_eval_spec_normalize():
    from lk_ablate.data.transforms import EvalSpec

    spec = EvalSpec(mean=(0.1, 0.5, 0.9), std=(0.3, 0.2, 0.7))
    u8 = torch.arange(256, dtype=torch.uint8).repeat(2 * 7 * 3).view(2, 3, 16, 112)  # every value, every channel
    nhwc = u8.permute(0, 2, 3, 1).contiguous()
    out = torch.full((nhwc.numel() + 5,), float("nan"))
    for channels_last in (False, True):
        x = normalize_nhwc(nhwc, spec, out, channels_last)
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.equal(x, spec.normalize(u8))


# --- bad images ------------------------------------------------------------------------------------------------
def _tree_with_bad(tmp_path: Path, n_classes: int = 10) -> tuple[Benchmark, list[Path]]:
    """Class j holds two oracle images (labels 0..n-1, no mask): j/0 is right, j/1 right unless j % 3 == 0.
    Returns the benchmark and the two bad files: 1/1 (truncated JPEG, image 3) and 3/1 (not an image, image 7)."""
    wnids = benchmark_wnids("r")[:n_classes]
    root = write_tree(tmp_path / "r", {w: [encode(j), encode(j if j % 3 else j + 1)] for j, w in enumerate(wnids)})
    bad = []
    for j in (1, 3):
        f = root / wnids[j] / f"{wnids[j]}_1.JPEG"
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 3] if j == 1 else b"not an image")
        bad.append(f)
    return Benchmark("imagenet_r", "masked_top1", (Part("r", str(root), tuple(wnids), True),)), bad


class Counting(OracleNet):
    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def forward(self, x):
        self.batches += 1
        return super().forward(x)


def test_bad_image_error_stops_at_the_first_one_naming_it(tmp_path):
    bench, bad = _tree_with_bad(tmp_path)
    model = Counting()
    with pytest.raises(DataError) as e:
        evaluate({"raw": model}, ORACLE_CONFIG, [bench, bench], batch_size=2, num_workers=0)
    msg = str(e.value)
    assert "\n" not in msg and str(bad[0]) in msg and str(bad[1]) not in msg
    assert "on_bad_image: skip" in msg and msg.startswith("imagenet_r: cannot read image")
    assert model.batches == 1  # the batch of images 0-1 was scored; the one holding image 3 stopped everything
    assert model.training  # modes restored


def test_bad_image_skip_scores_the_rest_and_lists_the_files(tmp_path):
    bench, bad = _tree_with_bad(tmp_path)
    results, errors = evaluate({"raw": OracleNet(), "ema": OracleNet()}, ORACLE_CONFIG, [bench], batch_size=4,
                               num_workers=2, on_bad_image="skip")
    assert errors == []
    for w in ("raw", "ema"):
        entry = results[w]["imagenet_r"]
        # 18 scored: 10 right first images, 8 second ones of which j = 0, 6, 9 are wrong.
        assert entry == {"top1": 100 * 15 / 18, "correct": 15, "n": 18, "skipped_images": [str(p) for p in bad],
                         "n_skipped": 2}


def test_bad_options_are_config_errors():
    bench = Benchmark("imagenet_r", "masked_top1", (Part("r", "/nowhere", ("x",), True),))
    for kw, word in (({"on_bad_image": "ignore"}, "on_bad_image"), ({"precision": "fp16"}, "precision"),
                     ({"decode": "nvjpeg"}, "decode"), ({"decode": "gpu"}, "needs a CUDA device|CUDA device")):
        with pytest.raises(ConfigError, match=word):
            evaluate({"raw": OracleNet()}, ORACLE_CONFIG, [bench], device="cpu", **kw)


# --- bf16 ---------------------------------------------------------------------------------------------------------
def test_bf16_scoring_runs_autocast_and_matches_fp32_on_the_oracle(tmp_path):
    wnids = benchmark_wnids("a")[:6]
    photo_tree(tmp_path / "a", wnids, [(40, 36)], odd_formats=False)
    bench = Benchmark("imagenet_a", "masked_top1", (Part("a", str(tmp_path / "a"), tuple(wnids), True),))

    class Dtype(OracleNet):
        dtypes: list = []

        def forward(self, x):
            self.dtypes.append(torch.mm(x[:, 0, 0, :2], x[:, 0, 0, :2].t()).dtype)  # an autocast op
            return super().forward(x)

    fp32, _ = evaluate({"raw": Dtype()}, ORACLE_CONFIG, [bench], batch_size=4, num_workers=0)
    assert set(Dtype.dtypes) == {torch.float32}
    Dtype.dtypes.clear()
    bf16, _ = evaluate({"raw": Dtype()}, ORACLE_CONFIG, [bench], batch_size=4, num_workers=0, precision="bf16-mixed")
    assert set(Dtype.dtypes) == {torch.bfloat16}
    assert bf16 == fp32


# --- decode: gpu (its device path, run on the CPU here: torchvision's decode_jpeg + v2 geometry) ---------------
def _device_path(bench: Benchmark, cfg: ModelConfig, device: torch.device, batch_size: int = 6):
    spec = bench.parts[0].spec(cfg)
    data = BatchImages(bench.parts, spec, decode="gpu")
    out, bads = [], []
    for s in range(0, len(data), batch_size):
        batch = data.__getitems__(list(range(s, min(s + batch_size, len(data)))))
        pixels, bad = device_decode(batch, spec, device, data.paths)
        out.append(pixels.cpu())
        bads += [(s + pos, why) for pos, why in bad]
    return data, out, bads


@pytest.mark.parametrize("cfg", [ORACLE_CONFIG, BICUBIC_CONFIG], ids=["bilinear", "bicubic"])
def test_device_decode_path_is_close_to_pil_on_the_cpu(tmp_path, cfg):
    wnids = benchmark_wnids("a")[:10]
    photo_tree(tmp_path / "a", wnids, [(120, 90), (75, 100), (64, 64)])
    part = Part("a", str(tmp_path / "a"), tuple(wnids), True)
    data, got, bad = _device_path(Benchmark("imagenet_a", "masked_top1", (part,)), cfg, torch.device("cpu"))
    assert bad == []
    ref = torch.cat([x for x in reference_batches(part, cfg, 6)])
    spec = part.spec(cfg)
    x = normalize_nhwc(torch.cat(got), spec)
    rel = ((x - ref).norm() / ref.norm()).item()
    # Same libjpeg decode; torch's antialiased resize vs PIL's differs by at most a few grey levels.
    assert rel < 0.02, rel
    u8_ref = torch.cat([torch.stack([spec.geometry()(Image.open(p).convert("RGB")) for p in data.paths])])
    diff = (torch.cat(got).permute(0, 3, 1, 2).int() - u8_ref.int()).abs()
    assert diff.float().mean() < 1.5 and diff.max() <= 40
    # Non-JPEG and non-RGB files (PNG, grayscale, CMYK) go through PIL exactly.
    for name in ("gray.JPEG", "cmyk.JPEG", "palette.png", "rgba.png"):
        k = next(i for i, p in enumerate(data.paths) if p.endswith(name))
        assert torch.equal(torch.cat(got)[k].permute(2, 0, 1), u8_ref[k]), name


def test_device_decode_path_reports_unreadable_files(tmp_path):
    bench, bad = _tree_with_bad(tmp_path)
    data, _, found = _device_path(bench, ORACLE_CONFIG, torch.device("cpu"), batch_size=4)
    assert [why.split(":")[0] for _, why in found] == [str(p) for p in bad]
    assert [data.paths[i] for i, _ in found] == [str(p) for p in bad]


@gpu
@pytest.mark.parametrize("cfg", [ORACLE_CONFIG, BICUBIC_CONFIG], ids=["bilinear", "bicubic"])
def test_cuda_scoring_matches_the_cpu_path(tmp_path, cfg):
    """decode: cpu on CUDA: the same uint8 pixels, normalised on the GPU (equal within float rounding: the
    tolerance is 2 ulp of the largest value, |x| < 3); decode: gpu (nvJPEG + GPU resize): within 2% norm-wise."""
    wnids = benchmark_wnids("a")[:10]
    photo_tree(tmp_path / "a", wnids, [(120, 90), (75, 100), (64, 64)])
    part = Part("a", str(tmp_path / "a"), tuple(wnids), True)
    bench = Benchmark("imagenet_a", "masked_top1", (part,))
    ref = torch.cat(reference_batches(part, cfg, 5))
    for decode, tol in (("cpu", None), ("gpu", 0.02)):
        model = Recorder().cuda()
        results, errors = evaluate({"raw": model}, cfg, [bench], batch_size=5, num_workers=2, device="cuda",
                                   decode=decode)
        assert errors == [] and results["raw"]["imagenet_a"]["n"] == len(ref)
        seen = torch.cat([x.cpu() for x in model.seen])
        if tol is None:
            assert all(x.is_contiguous(memory_format=torch.channels_last) for x in model.seen)
            assert (seen - ref).abs().max().item() <= 2 * torch.finfo(torch.float32).eps * 4
        else:
            assert ((seen - ref).norm() / ref.norm()).item() < tol


# --- DDP: a bad image on one rank stops every rank with the same line, nobody hangs -------------------------------
def _ddp_main(rank: int, world: int, root: str, port: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    wnids = sorted(os.listdir(root))
    bench = Benchmark("imagenet_r", "masked_top1", (Part("r", root, tuple(wnids), True),))

    def gather(obj):
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out

    for policy in ("skip", "error"):
        try:
            res, _ = evaluate({"raw": OracleNet()}, ORACLE_CONFIG, [bench], batch_size=2, num_workers=0, rank=rank,
                              world_size=world, gather=gather, on_bad_image=policy)
            msg = repr(res["raw"]["imagenet_r"])
        except DataError as e:
            msg = f"DataError: {e}"
        Path(out_dir, f"{policy}.{rank}").write_text(msg)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_bad_image_on_one_rank_raises_everywhere_without_hanging(tmp_path):
    bench, bad = _tree_with_bad(tmp_path)  # batch size 2: image 3 is in batch 1 (rank 1), image 7 in batch 3 (rank 1)
    single = evaluate({"raw": OracleNet()}, ORACLE_CONFIG, [bench], batch_size=2, num_workers=0,
                      on_bad_image="skip")[0]["raw"]["imagenet_r"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=test_pythonpath())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code = (f"import sys, torch.multiprocessing as mp; sys.path.insert(0, {str(HERE.parent)!r}); "
            f"from test_robustness_pipeline import _ddp_main; "
            f"mp.start_processes(_ddp_main, args=(2, {bench.parts[0].root!r}, {port!r}, {str(tmp_path)!r}), nprocs=2, "
            f"start_method='fork')")  # fork: the children reuse the parent's imports
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    errors = {Path(tmp_path, f"error.{r}").read_text() for r in (0, 1)}
    assert len(errors) == 1  # the same line on both ranks
    (line,) = errors
    assert line.startswith("DataError: imagenet_r: cannot read image") and str(bad[0]) in line and "\n" not in line
    for r in (0, 1):  # skip: bit-identical to one process, the skipped files listed on every rank
        assert Path(tmp_path, f"skip.{r}").read_text() == repr(single)
    assert single["skipped_images"] == [str(p) for p in bad]
