"""Bad input gets one line naming the file and the fix (issue 13): unreadable training images (never skipped),
``lk_ablate data check``, empty class folders, YAML syntax errors; and the minor items: stale top-k files after a
killed start, ``reparam --output_path`` overwrite, ``limit_val_batches: 1`` staying one batch."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lk_ablate.cli import main
from lk_ablate.lightning_cli import build_cli

from helpers import make_image_folder

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "configs" / "cluster_tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=4, per_class=7, size=36)


def _truncated_jpeg(path: Path) -> None:
    import numpy as np
    from PIL import Image

    full = path.with_suffix(".full.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(full, quality=90)
    blob = full.read_bytes()
    full.unlink()
    path.write_bytes(blob[: len(blob) // 2])


def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_unreadable_training_image_stops_with_one_line_and_data_check_lists_it(data, tmp_path, capsys):
    root = tmp_path / "bad"
    shutil.copytree(data, root)
    broken = root / "train" / "n00000002" / "broken.jpg"
    _truncated_jpeg(broken)
    rc = main(["fit", "--config", TINY, "--data.init_args.root", str(root), "--trainer.logger", "false",
               "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1"])
    line = _last_error(capsys)
    assert rc == 2 and line.startswith(f"lk_ablate: error: cannot read image {broken} (OSError: image file is "
                                       "truncated"), line
    assert f"`lk_ablate data check --root {root / 'train'}`" in line and "never skips" in line
    assert main(["data", "check", "--root", str(root), "--num_workers", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"bad: {broken}: OSError: image file is truncated")
    assert out[1:] == [f"{root / 'train'}: 29 images in 4 classes, 1 unreadable",
                       f"{root / 'val'}: 28 images in 4 classes, 0 unreadable"]
    broken.unlink()
    assert main(["data", "check", "--root", str(root / "train"), "--num_workers", "1"]) == 0


def test_empty_class_folder_and_yaml_syntax_error_name_the_culprit(data, tmp_path, capsys):
    root = tmp_path / "empty"
    shutil.copytree(data, root)
    for split in ("train", "val"):
        (root / split / "n00000009").mkdir()
    rc = main(["fit", "--config", TINY, "--data.init_args.root", str(root), "--trainer.logger", "false"])
    line = _last_error(capsys)
    assert rc == 2 and f"training folder {root / 'train'}: 1 class folder(s) hold no image files" in line, line
    assert str(root / "train" / "n00000009") in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 2\n model: [\n")
    for cmd in (["fit", "--config", TINY, "--config", str(bad)], ["robustness", f"--config={bad}"]):
        assert main(cmd) == 2
        assert _last_error(capsys) == (f"lk_ablate: error: YAML syntax error in {bad} line 3, column 2: did not find "
                                       f"expected key (see `lk_ablate {cmd[0]} --help`)")


@pytest.mark.parametrize("value,parsed", [(1, 1), (1.0, 1.0), (0.25, 0.25), (3, 3)])
def test_limit_batches_keep_int_and_fraction_apart(data, tmp_path, value, parsed):
    """Trainer's limit_*_batches: an int is a number of batches, a float a fraction; `1` is one batch, `1.0` all of
    them, from a YAML file (val) and from the command line (train) alike (jsonargparse's Optional[Union[int, float]]
    tries int first; no patch of its private typehints)."""
    cfg = tmp_path / "limits.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"limit_val_batches": value}}))
    cli = build_cli(["--config", TINY, "--config", str(cfg), "--data.init_args.root", str(data),
                     "--trainer.logger", "false", "--trainer.limit_train_batches", str(value)], run=False)
    for got in (cli.trainer.limit_val_batches, cli.trainer.limit_train_batches):
        assert type(got) is type(parsed) and got == parsed


def test_reparam_out_needs_force_to_overwrite(tmp_path, capsys):
    from test_replknet import small_replknet

    src = tmp_path / "official.pth"
    torch.save({"model": small_replknet(7, 5).state_dict()}, src)
    out = tmp_path / "deploy.pth"
    out.write_bytes(b"precious")
    assert main(["reparam", "--ckpt_path", str(src), "--output_path", str(out), "--check", "false"]) == 2
    assert _last_error(capsys) == f"lk_ablate: error: --output_path {out} exists; pass --force true to overwrite " \
                                  "it, or choose another file"
    assert out.read_bytes() == b"precious"
    assert main(["reparam", "--ckpt_path", str(src), "--output_path", str(out), "--check", "false", "--force", "true"]) == 0
    assert "model" in torch.load(out, weights_only=True)


@pytest.mark.slow
def test_top_k_files_of_a_killed_start_are_removed_on_resume(data, tmp_path, capsys):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    args = ["fit", "--config", TINY, "--data.init_args.root", str(data), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(run), "--checkpoint.dirpath", str(ckpts), "--ckpt_path", "auto"]
    assert main([*args, "--trainer.max_epochs", "1"]) == 0
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["epoch000-step0000007.ckpt", "last.ckpt"]
    # A start that was killed after writing its epoch-1 top-k file (step 12, newer than the last.ckpt the next start
    # resumes), before its next last.ckpt:
    orphan = ckpts / "epoch001-step0000012.ckpt"
    state = torch.load(ckpts / "last.ckpt", weights_only=True)
    torch.save({**state, "global_step": 12}, orphan)
    other = ckpts / "notes-epoch001.ckpt"  # not this callback's naming: never touched
    other.write_bytes(b"x")
    assert main([*args, "--trainer.max_epochs", "2"]) == 0
    # save_top_k=1: exactly one top-k file (the better of epochs 0 and 1 of this run), the orphan is gone
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert names[1:] == ["last.ckpt", "notes-epoch001.ckpt"] and names[0] in ("epoch000-step0000007.ckpt",
                                                                              "epoch001-step0000014.ckpt"), names
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 14
