"""The embedded default: real Fashion-MNIST (Debian's dataset-fashion-mnist), both DataModules, the demo command."""
import json

import numpy as np
import pytest
import torch
import yaml

from lk_ablate.cli import main as cli_main
from lk_ablate.data.fashion_mnist import FashionMNISTDataModule, GreyTransform, load_fashion_mnist, resize_grey
from lk_ablate.data.fashion_mnist_ffcv import FashionMNISTFFCVDataModule

MEAN, STD = 0.286, 0.353  # convnext_demo's config


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_fashion_mnist_is_the_real_dataset():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [n // 10] * 10
        assert labels[0] == 9  # the first image of both splits is an ankle boot


def test_grey_transform_flips_and_pad_crops():
    img = torch.randint(0, 256, (32, 32), dtype=torch.uint8)
    plain = ((img.float() / 255 - MEAN) / STD).expand(3, -1, -1)
    torch.manual_seed(0)
    outs = [GreyTransform(MEAN, STD, train=True)(img) for _ in range(40)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert any(torch.equal(o, plain.flip(-1)) for o in outs) and any(torch.equal(o, plain) for o in outs)
    assert torch.equal(GreyTransform(MEAN, STD, train=False)(img), plain)
    # pad 2: a window of the zero-padded image; the background (value 0) fills what moved in
    padded = torch.nn.functional.pad(img.float()[None], (2, 2, 2, 2))[0]
    for o in (GreyTransform(MEAN, STD, train=True, pad_crop=2)(img) for _ in range(20)):
        raw = (o[0] * STD + MEAN) * 255
        assert any(rel(raw, w) < 1e-5 or rel(raw, w.flip(-1)) < 1e-5
                   for i in range(5) for j in range(5) for w in [padded[i:i + 32, j:j + 32]])


@pytest.mark.slow
@pytest.mark.ffcv
def test_ffcv_and_in_memory_validation_batches_are_equal(tmp_path):
    """The .beton stores the same bilinear 32 px images raw: validation batches agree to float rounding."""
    images, labels = load_fashion_mnist("test")
    ffcv = FashionMNISTFFCVDataModule(cache_dir=str(tmp_path / "cache"), batch_size=250, num_workers=2)
    mem = FashionMNISTDataModule(batch_size=250, num_workers=0)
    for dm in (ffcv, mem):
        dm.setup("fit")
    assert len(ffcv.val_dataloader()) == len(mem.val_dataloader()) == 40
    (xf, yf), (xm, ym) = next(iter(ffcv.val_dataloader())), next(iter(mem.val_dataloader()))
    assert torch.equal(yf, ym) and torch.equal(yf, torch.from_numpy(labels[:250]))
    assert xf.shape == xm.shape == (250, 3, 32, 32)
    assert rel(xf, xm) < 1e-6
    expected = (resize_grey(images[:250], 32).float() / 255 - MEAN) / STD
    assert rel(xf[:, 0], expected) < 1e-6
    assert ffcv.train_batches_per_epoch() == 60000 // 250


@pytest.mark.slow
@pytest.mark.ffcv
def test_demo_end_to_end(tmp_path, capsys):
    """`lk_ablate demo`, shortened: two kernel sizes, a few steps, 20 corrupted images; table, JSONs, report."""
    rc = cli_main(["demo", "--kernel_sizes", "[5,3]", "--max_epochs", "1", "--subset_size", "20", "--output_dir",
                   str(tmp_path), "--", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    table = out[out.index("Fashion-MNIST, clean top-1"):]
    rows = [line.split() for line in table.splitlines()[2:4]]
    assert [r[0] for r in rows] == ["3", "5"] and all(len(r) == 4 + 15 for r in rows)
    results = {k: json.loads((tmp_path / f"k{k}" / "last.robustness.json").read_text())["weights"]["raw"]
               for k in (3, 5)}
    # rel. mCE of k=5, from its and the baseline's per-cell top-1: mean over c of sum_s E5 / sum_s E3, in %
    t5, t3 = (results[k]["fashion_mnist_c"]["top1"] for k in (5, 3))
    ce = [sum(100 - t5[c][s] for s in t5[c]) / sum(100 - t3[c][s] for s in t3[c]) for c in t3]
    assert len(ce) == 15 and rows[1][3] == f"{100 * sum(ce) / 15:.1f}"
    for row, k in zip(rows, (3, 5)):  # clean and mean-C columns are the JSON's numbers
        cells = [v for by in results[k]["fashion_mnist_c"]["top1"].values() for v in by.values()]
        assert len(cells) == 75 and row[2] == f"{sum(cells) / 75:.2f}"
        assert row[1] == f"{results[k]['fashion_mnist']['top1']:.2f}"
    for name in ("train convnext_demo k=3", "train convnext_demo k=5", "Fashion-MNIST-C", "ablation report", "total"):
        assert name in out[out.index("stage times:"):]
    for k in (3, 5):
        data = json.loads((tmp_path / f"k{k}" / "last.robustness.json").read_text())
        assert data["model"]["kernel_sizes"] == [k] * 4
        fm = data["weights"]["raw"]
        # each corrupted cell's top-1 is a count of its 20 images, in %
        assert fm["fashion_mnist_c"]["n"] == 20
        assert all(float(v / 5).is_integer() for by in fm["fashion_mnist_c"]["top1"].values() for v in by.values())
        assert len(fm["fashion_mnist_c"]["top1"]) == 15
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "report.csv").is_file()


def test_demo_print_config_round_trip_and_fit_options(tmp_path, capsys):
    """--print_config shows the demo's options and the `fit` options it passes on; the printed YAML reads back."""
    def printed(*args):
        with pytest.raises(SystemExit) as e:
            cli_main(["demo", "--print_config", *args])  # before `--`: what follows it goes to fit
        assert e.value.code in (0, None)
        return capsys.readouterr().out

    first = printed("--kernel_sizes", "[5,3]", "--max_epochs", "1", "--output_dir", str(tmp_path / "demo"),
                    "--num_threads", "2", "--", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches=3")
    cfg = yaml.safe_load(first)
    assert cfg["kernel_sizes"] == [5, 3] and cfg["max_epochs"] == 1 and cfg["num_threads"] == 2
    assert cfg["subset_size"] == 500 and cfg["progress"] is True
    assert cfg["fit"] == ["--trainer.limit_train_batches", 6, "--trainer.limit_val_batches=3"]
    (tmp_path / "c.yaml").write_text(first)
    assert printed("--config", str(tmp_path / "c.yaml")) == first
    from lk_ablate.commands.demo import DEMO_CONFIG, parse_args

    assert DEMO_CONFIG.is_file()
    assert parse_args(["--config", str(tmp_path / "c.yaml"), "--", "--trainer.max_steps", "2"]).fit[-2:] == \
        ["--trainer.max_steps", 2]


def test_demo_fit_options_go_after_the_separator(capsys):
    """An option the demo does not have is an error naming it; fit's options go after `--`."""
    assert cli_main(["demo", "--trainer.max_steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments: --trainer.max_steps 2 (see `lk_ablate demo --help`)" in err[0]
