"""The FFCV DataModule and loader: pipelines, per-sample seeding, DDP sharding, buffers, threads, resume, errors."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ffcv_helpers import write_betons, write_indexed_beton
from lk_ablate.data import FFCVDataModule
from lk_ablate.data.ffcv import ProgressiveResolution, require_ffcv
from lk_ablate.base.errors import ConfigError, DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
pytestmark = pytest.mark.ffcv  # numba and FFCV: imported inside the tests and helpers, not at collection


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    return write_betons(tmp_path_factory.mktemp("ffcv"), classes=4, per_class=7, size=40)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    return write_indexed_beton(tmp_path_factory.mktemp("indexed"), n=21, size=36)


def train_loader(path, batch_size=4, epoch=0, seed=0, rank=0, world=1, order="random", train=True, size=32,
                 os_cache=True, **aug):
    from lk_ablate.data.ffcv_augment import build_params
    from lk_ablate.data.ffcv_loader import FFCVLoader, SeededAugment, SeededRandomResizedCrop

    params, ops = build_params(MEAN, STD, train, auto_augment="rand-m9-mstd0.5-inc1" if train else None,
                               re_prob=0.25 if train else 0.0, **aug)
    loader = FFCVLoader(path, SeededRandomResizedCrop((size, size)), SeededAugment(params, ops, train),
                        batch_size=batch_size, train=train, order=order, seed=seed, rank=rank, world_size=world,
                        num_workers=2, os_cache=os_cache)
    loader.set_epoch(epoch)
    return loader


def collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_train_and_val_pipelines(betons):
    dm = FFCVDataModule(*betons, batch_size=4, num_workers=2, input_size=32, crop_pct=1.0, model_name="convnext_demo")
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.classes == [f"n{c:08d}" for c in range(4)]
    assert dm.train_batches_per_epoch() == 7 and len(dm.train_dataloader()) == 7
    for loader, n in ((dm.train_dataloader(), 28), (dm.val_dataloader(), 28)):
        seen = 0
        for x, y in loader:
            assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            seen += len(y)
        assert seen == n
    # val of square images at crop_pct 1 and their own size is the identity: normalisation undone = the PNGs
    dm2 = FFCVDataModule(*betons, batch_size=7, num_workers=1, input_size=40, crop_pct=1.0, mean=MEAN, std=STD)
    dm2.setup("validate")
    x, y = next(iter(dm2.val_dataloader()))
    cfg = dm2.model_config()
    pixels = (x * torch.tensor(cfg.std)[:, None, None] + torch.tensor(cfg.mean)[:, None, None]) * 255
    src = np.array(Image.open(dm2.val_info.path.parents[1] / "data/val/n00000000/val_0_0.png"))
    assert y[0] == 0
    assert torch.equal(pixels[0].round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(src))
    dm.teardown("fit")
    dm2.teardown("validate")


@pytest.mark.slow
def test_batches_are_functions_of_seed_epoch_and_index(betons):
    a = collect(train_loader(betons[0], epoch=0))
    b = collect(train_loader(betons[0], epoch=0))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    c = collect(train_loader(betons[0], epoch=1))
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in c]))
    d = collect(train_loader(betons[0], epoch=0, seed=1))
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in d]))
    # FFCV's process cache (one thread runs batches in order, kernels split each batch over threads): same data
    e = collect(train_loader(betons[0], epoch=0, os_cache=False))
    assert all(torch.equal(xa, xe) and torch.equal(ya, ye) for (xa, ya), (xe, ye) in zip(a, e))


def test_samples_of_one_batch_get_different_random_ops(tmp_path):
    path = write_indexed_beton(tmp_path, n=16, size=36, same_image=True)  # 16 copies of one picture
    x, _ = next(iter(train_loader(path, batch_size=16)))
    assert len({s.numpy().tobytes() for s in x}) >= 14  # crops alone almost never coincide


def test_ddp_sharding_of_an_odd_sized_set(indexed):
    # 21 samples on 2 ranks, batch 4. Train: the tail is dropped so both ranks run 2 full batches of distinct
    # samples. Eval: rank 0 reads positions 0, 2, ..., 20 (11 samples), rank 1 the other 10: all 21 exactly once.
    train = [[int(v) for _, y in train_loader(indexed, rank=r, world=2) for v in y] for r in (0, 1)]
    assert [len(t) for t in train] == [8, 8] and len(set(train[0]) | set(train[1])) == 16
    evals = [[int(v) for _, y in train_loader(indexed, rank=r, world=2, train=False) for v in y] for r in (0, 1)]
    assert evals == [list(range(0, 21, 2)), list(range(1, 21, 2))]
    one = [int(v) for _, y in train_loader(indexed, order="quasi_random") for v in y]
    assert len(one) == 20 and len(set(one)) == 20  # one process: QUASI_RANDOM, tail of 1 dropped


def test_quasi_random_order_is_a_seeded_permutation():
    from lk_ablate.data.ffcv_loader import quasi_random_order

    pages = {0: {0, 1, 2, 3}, 1: {4, 5, 6}, 3: {7, 8, 9, 10, 11}}
    a = quasi_random_order(pages, 12, seed=5, buffer_size=2)
    assert sorted(a.tolist()) == list(range(12))
    np.testing.assert_array_equal(quasi_random_order(pages, 12, seed=5, buffer_size=2), a)  # no hidden state
    assert not np.array_equal(quasi_random_order(pages, 12, seed=6, buffer_size=2), a)


def test_a_batch_stays_valid_while_two_later_ones_are_taken(betons):
    loader = train_loader(betons[0], batch_size=4)
    ref = collect(loader)
    loader.set_epoch(0)
    it = iter(loader)
    held = [next(it)[0], next(it)[0]]  # Lightning holds the current batch and the one fetched ahead
    time.sleep(0.5)  # let the producer fill every free slot
    assert torch.equal(held[0], ref[0][0]) and torch.equal(held[1], ref[1][0])
    it.close()


def test_iterator_threads_end_when_iteration_stops_early(betons):
    before = threading.active_count()
    loader = train_loader(betons[0])
    for _ in range(3):
        it = iter(loader)
        next(it)  # abandoned after one batch, as fast_dev_run or limit_train_batches do
        del it
    loader.close()
    deadline = time.time() + 10
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name == "lk_ablate-ffcv-epoch"]


def test_resume_skips_the_batches_already_trained(betons):
    full = collect(train_loader(betons[0], epoch=1))
    resumed = train_loader(betons[0], epoch=0)
    resumed.load_state_dict({"epoch": 1, "batches_completed": 3, "num_batches": 7})
    assert resumed.epoch == 1
    rest = collect(resumed)
    assert len(rest) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], rest))
    at_end = train_loader(betons[0])
    at_end.load_state_dict({"epoch": 1, "batches_completed": 7, "num_batches": 7})
    assert at_end.epoch == 2 and len(collect(at_end)) == 7


def test_progressive_resolution(betons):
    prog = ProgressiveResolution(min_res=160, max_res=192, start_ramp=65, end_ramp=76)
    # ffcv-imagenet: np.interp between the ramp ends, rounded to a multiple of 32
    assert [prog(e) for e in (0, 65, 66, 70, 71, 75, 76, 87)] == [160, 160, 160, 160, 192, 192, 192, 192]
    assert [ProgressiveResolution(16, 48, 1, 3, step=8)(e) for e in range(5)] == [16, 16, 32, 48, 48]
    dm = FFCVDataModule(*betons, batch_size=4, num_workers=1, input_size=32, model_name="convnext_demo",
                        progressive=ProgressiveResolution(16, 48, 1, 3, step=8))
    dm.setup("fit")
    loader = dm.train_dataloader()
    sizes = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        sizes.append(next(iter(loader))[0].shape[-1])
    assert sizes == [16, 16, 32, 48]
    assert next(iter(dm.val_dataloader()))[0].shape[-1] == 32  # evaluation stays at the model's size
    with pytest.raises(ConfigError, match="min_res"):
        ProgressiveResolution(min_res=200, max_res=100)
    dm.teardown("fit")


def test_missing_or_wrong_files_fail_at_start(betons, tmp_path):
    train, val = betons
    with pytest.raises(DataError, match="train .beton not found: .*nope.beton"):
        FFCVDataModule(str(tmp_path / "nope.beton"), val)
    with pytest.raises(DataError, match="no val .beton given"):
        FFCVDataModule(train, None)
    junk = tmp_path / "junk.beton"
    junk.write_bytes(b"not a beton" * 100)
    with pytest.raises(DataError, match="not a readable FFCV .beton"):
        FFCVDataModule(train, str(junk))
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter

    labels_only = tmp_path / "labels.beton"
    DatasetWriter(str(labels_only), {"label": IntField()}, num_workers=1).from_indexed_dataset([(1,), (2,)])
    with pytest.raises(DataError, match="expected 'image' \\(RGBImageField\\) and 'label'"):
        FFCVDataModule(train, str(labels_only))
    with pytest.raises(ConfigError, match="order"):
        FFCVDataModule(train, val, order="sequential")


@pytest.mark.slow
def test_ffcv_is_imported_lazily_and_its_absence_is_explained(monkeypatch):
    code = "import sys, lk_ablate.data, lk_ablate.commands.data; assert 'ffcv' not in sys.modules, 'ffcv imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "ffcv", None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ffcv\]'"):
        require_ffcv()


@pytest.mark.slow
def test_ffcv_leaves_torch_thread_count_alone(betons):
    """Importing FFCV runs torch.set_num_threads(1) and its Loader sets num_workers: training would run on one
    core. A fresh process: torch's thread count survives the import, a DataModule and a full epoch."""
    code = (
        "import torch; torch.set_num_threads(3)\n"
        "import lk_ablate.data.ffcv_loader\n"
        "from lk_ablate.data import FFCVDataModule\n"
        f"dm = FFCVDataModule({str(betons[0])!r}, {str(betons[1])!r}, batch_size=4, num_workers=2, input_size=32)\n"
        "dm.setup('fit')\n"
        "n = sum(len(y) for _, y in dm.train_dataloader())\n"
        "print(torch.get_num_threads(), n)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["3", "28"]
