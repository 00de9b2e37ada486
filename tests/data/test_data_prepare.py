"""`lk_ablate data prepare-imagenet-val`: the shipped labels and the flat val folder -> 1000 x 50 class folders."""
import os
from collections import Counter

import pytest
import yaml

from lk_ablate.cli import main
from lk_ablate.data.imagenet_val import (LABELS_FILE, WNIDS_FILE, imagenet_wnids, prepare_imagenet_val, val_file_name,
                                         val_labels)
from lk_ablate.base.errors import DataError


def test_shipped_labels_and_wnids():
    labels, wnids = val_labels(), imagenet_wnids()
    assert len(labels) == 50_000 and set(Counter(labels).values()) == {50} and len(set(labels)) == 1000
    # The devkit's ground truth for the first validation images, as wnids: sea snake, alp, Shetland sheepdog,
    # soup bowl, cradle (the well-known 65, 970, 230, 809, 516 of torchvision's numbering).
    assert [wnids[i] for i in labels[:5]] == ["n01751748", "n09193705", "n02105855", "n04263257", "n03125729"]
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141" and wnids == sorted(wnids)
    assert WNIDS_FILE.is_file() and "lk_ablate/robustness/wnids" in WNIDS_FILE.as_posix()  # one shared copy
    assert "MIT" in LABELS_FILE.with_name("imagenet_val_labels_LICENSE.txt").read_text()


@pytest.fixture(scope="module")
def flat_val(tmp_path_factory):
    src = tmp_path_factory.mktemp("val_flat")
    for n in range(1, 50_001):
        (src / val_file_name(n)).write_bytes(b"")  # contents are not read: files are only sorted
    (src / "LOC_synset_mapping.txt").write_text("other files are ignored")
    return src


@pytest.mark.slow
def test_prepare_sorts_1000_classes_of_50_and_can_be_repeated(flat_val, tmp_path, capsys):
    out = tmp_path / "val"
    assert main(["data", "prepare-imagenet-val", "--root", str(flat_val), "--output_dir", str(out)]) == 0
    assert "1000 classes x 50 images; 50000 placed, 0 already there" in capsys.readouterr().out
    dirs = sorted(os.listdir(out))
    assert dirs == imagenet_wnids() and {len(os.listdir(out / d)) for d in dirs} == {50}
    first = out / "n01751748" / val_file_name(1)
    assert first.is_symlink() and first.resolve() == (flat_val / val_file_name(1)).resolve()
    again = prepare_imagenet_val(flat_val, out)  # idempotent: an interrupted run can be repeated
    assert again["placed"] == 0 and again["already_there"] == 50_000


@pytest.mark.slow
def test_prepare_errors(flat_val, tmp_path, capsys):
    with pytest.raises(DataError, match="ImageNet val folder not found"):
        prepare_imagenet_val(tmp_path / "nope", tmp_path / "out")
    partial = tmp_path / "partial"
    partial.mkdir()
    for n in range(1, 50_001, 2):
        (partial / val_file_name(n)).symlink_to(flat_val / val_file_name(n))
    with pytest.raises(DataError, match=r"25000 of the 50,000 official val images are missing .*ILSVRC2012_val_00000002"):
        prepare_imagenet_val(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    prepared = tmp_path / "prepared"
    prepare_imagenet_val(flat_val, prepared, mode="hardlink")
    with pytest.raises(DataError, match="already has class folders"):
        prepare_imagenet_val(prepared, tmp_path / "out2")
    assert main(["data", "prepare-imagenet-val", "--root", str(tmp_path / "nope"), "--output_dir",
                 str(tmp_path / "o")]) == 2
    assert "lk_ablate: error: ImageNet val folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["prepare-imagenet-val", "--root", "/flat", "--output_dir", "/val", "--mode", "copy"],
    ["write-ffcv", "--root", "/data", "--output_dir", "/ffcv", "--splits", "[train]", "--num_workers", "2",
     "--verify", "false", "--writer.max_resolution", "256", "--writer.jpeg_quality", "80"],
    ["check", "--root", "/data", "--num_workers", "3", "--progress", "false"],
])
def test_data_commands_print_config_round_trip(argv, tmp_path, capsys):
    def printed(*args):
        with pytest.raises(SystemExit) as e:
            main(["data", argv[0], *args, "--print_config"])
        assert e.value.code in (0, None)
        return capsys.readouterr().out

    first = printed(*argv[1:])
    cfg = yaml.safe_load(first)
    if argv[0] == "write-ffcv":
        assert cfg["splits"] == ["train"] and cfg["verify"] is False and cfg["writer"]["max_resolution"] == 256
    (tmp_path / "c.yaml").write_text(first)
    assert printed("--config", str(tmp_path / "c.yaml")) == first


@pytest.mark.parametrize("argv,message", [
    (["write-ffcv", "--root", "/d", "--output_dir", "/o", "--max-resolution", "0"],
     "unrecognized arguments: --max-resolution 0 (see `lk_ablate data write-ffcv --help`)"),
    (["write-ffcv", "--root", "/d"], "missing required option(s): --output_dir (see `lk_ablate data write-ffcv --help`)"),
    (["check", "/d"], "(see `lk_ablate data check --help`)"),
    (["nope"], "invalid choice: 'nope' (choose from 'prepare-imagenet-val', 'write-ffcv', 'check')"),
])
def test_data_bad_options_and_unknown_command_give_one_line(argv, message, capsys):
    assert main(["data", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lk_ablate: error: ") and message in err[0], err
