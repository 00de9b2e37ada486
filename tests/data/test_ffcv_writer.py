"""`lk_ablate data write-ffcv`: exact round trip, ffcv-imagenet defaults, bad input, atomic writes."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder
from lk_ablate.cli import main
from lk_ablate.data import ffcv_writer
from lk_ablate.data.ffcv_writer import WriterConfig, read_meta, write_ffcv
from lk_ablate.base.errors import DataError

pytestmark = pytest.mark.ffcv


def read_all(path):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = zip(*[(x.copy(), y[:, 0].copy()) for x, y in loader])
    return np.concatenate(images), np.concatenate(labels), loader.reader.metadata["f0"]["mode"]


@pytest.mark.slow
def test_raw_round_trip_is_exact(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=5, size=24)
    res = write_ffcv(root, tmp_path / "out", cfg=WriterConfig(write_mode="raw", num_workers=2))
    for split in ("train", "val"):
        files = sorted((root / split).glob("*/*.png"))
        images, labels, modes = read_all(res[split]["path"])
        np.testing.assert_array_equal(images, np.stack([np.asarray(Image.open(f)) for f in files]))
        np.testing.assert_array_equal(labels, [int(f.parent.name[1:]) for f in files])
        assert (modes == 1).all()  # raw
    meta = read_meta(res["train"]["path"])
    assert meta["classes"] == ["n00000000", "n00000001", "n00000002"] and meta["num_per_class"] == [5, 5, 5]
    assert meta["skipped"] == [] and meta["writer"]["max_resolution"] == 500


@pytest.mark.slow
def test_ffcv_imagenet_defaults_and_seeded_jpeg_choice(tmp_path):
    cfg = WriterConfig()
    assert (cfg.max_resolution, cfg.write_mode, cfg.compress_probability, cfg.jpeg_quality, cfg.chunk_size) == \
        (500, "proportion", 0.5, 90, 100)
    assert cfg.file_name("train") == "train_500_0.50_90.beton"
    root = tmp_path / "data"
    for i in range(40):  # 40 images of 600 x 300 px: stored at 500 x 250
        d = root / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((300, 600, 3), i * 5, np.uint8)).save(d / f"{i}.png")
    a = write_ffcv(root, tmp_path / "a", splits=("train",), cfg=WriterConfig(num_workers=2))["train"]["path"]
    b = write_ffcv(root, tmp_path / "b", splits=("train",), cfg=WriterConfig(num_workers=1))["train"]["path"]
    from ffcv.reader import Reader

    ma, mb = Reader(a).metadata["f0"], Reader(b).metadata["f0"]
    assert (ma["width"] == 500).all() and (ma["height"] == 250).all()
    np.testing.assert_array_equal(ma["mode"], mb["mode"])  # which images are JPEG: seeded per sample
    assert 8 <= (ma["mode"] == 0).sum() <= 32  # about half (binomial sd 3.2)


def test_unreadable_and_truncated_files_are_skipped_and_counted(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=30, splits=("train",), ext="jpg")
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "JPEG")
    (root / "train" / "n00000000" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "train" / "n00000001" / "text.jpg").write_text("not an image")
    (root / "train" / "n00000001" / "notes.txt").write_text("ignored: not an image extension")
    res = write_ffcv(root, tmp_path / "out", splits=("train",), cfg=WriterConfig(num_workers=2))["train"]
    assert res["num_samples"] == 8 and res["ignored_non_images"] == 1
    assert sorted(s["file"].rsplit("/", 1)[1] for s in res["skipped"]) == ["text.jpg", "truncated.jpg"]
    assert any("truncated" in s["error"] for s in res["skipped"])
    assert "skipping 2 unreadable file(s)" in capsys.readouterr().out
    assert json.loads(ffcv_writer.meta_path(res["path"]).read_text())["skipped"] == res["skipped"]


def test_bad_input_gets_clear_errors_and_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        write_ffcv(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "train" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="has no class sub-folders"):
        write_ffcv(tmp_path / "flat", tmp_path / "out", splits=("train",))
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "cls" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"no image files \(.jpg"):
        write_ffcv(tmp_path / "empty", tmp_path / "out", splits=("train",))
    bad = make_image_folder(tmp_path / "bad", classes=2, per_class=2, size=20, splits=("train",), ext="jpg")
    for f in (bad / "train").glob("*/*.jpg"):
        f.write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 4 image files could be read"):
        write_ffcv(bad, tmp_path / "out", splits=("train",))
    mixed = make_image_folder(tmp_path / "mixed", classes=3, per_class=1, size=20)
    (mixed / "val" / "n00000002").rename(mixed / "val" / "n00000009")
    with pytest.raises(DataError, match=r"class folders of 'train' \(3\) and 'val' \(3\) differ.*n00000002.*n00000009"):
        write_ffcv(mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything was written


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=2, size=20, splits=("train",))
    from ffcv.writer import DatasetWriter

    def boom(self, *args, **kwargs):
        open(self.fname, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "from_indexed_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        write_ffcv(root, tmp_path / "out", splits=("train",), cfg=WriterConfig(num_workers=1))
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    write_ffcv(root, tmp_path / "out", splits=("train",), cfg=WriterConfig(num_workers=1))
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        write_ffcv(root, tmp_path / "out", splits=("train",))


def test_cli(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=2, size=20)
    assert main(["data", "write-ffcv", "--root", str(root), "--output_dir", str(tmp_path / "out"),
                 "--num_workers", "1", "--writer.max_resolution", "64", "--writer.compress_probability", "0.25",
                 "--writer.jpeg_quality", "80"]) == 0
    out = capsys.readouterr().out
    assert "train_64_0.25_80.beton" in out and "val_64_0.25_80.beton" in out
    assert main(["data", "write-ffcv", "--root", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "lk_ablate: error: dataset folder not found" in capsys.readouterr().err
