"""``robustness`` and ``analyze`` before and after their long work (issue 24): a results path that cannot be written
(a folder, a read-only file system, a planted lock link) stops them before any scoring; a write that fails after the
scoring prints the table and keeps the scores; a failed results update leaves no plot; architecture options that
contradict an lk_ablate checkpoint, a pickle named .safetensors and a bad YAML tag in a --fit_config are one line."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

import lk_ablate.base.files as files
from lk_ablate.base.results import read_results
from lk_ablate.cli import main

from helpers import write_demo_checkpoint
from test_robustness_support import small_trees


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, str]:
    return small_trees(tmp_path_factory.mktemp("trees"), a=True)


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    path = tmp_path / "run" / "last.ckpt"
    path.parent.mkdir()
    write_demo_checkpoint(path, kernel_size=3, ema=False)
    return path


@pytest.fixture()
def no_scoring(monkeypatch):
    """Scoring must not start: the checks come first."""
    def score(*args, **kwargs):
        raise AssertionError("scoring started before the results path was checked")

    monkeypatch.setattr("lk_ablate.robustness.score.score", score)  # what `robustness` calls


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_robustness_checks_its_results_path_before_scoring(ckpt, trees, tmp_path, capsys, monkeypatch, no_scoring):
    common = ["robustness", "--ckpt_path", str(ckpt), "--data.imagenet_a", trees["imagenet_a"], "--device", "cpu"]
    assert main([*common, "--results_path", str(tmp_path)]) == 2
    assert last_error(capsys) == (f"lk_ablate: error: cannot write results file {tmp_path}: it is a folder; give a "
                                  "file path; choose another with --results_path FILE")
    link = ckpt.with_name("last.robustness.json.lock")
    link.symlink_to(tmp_path / "victim")
    assert main(common) == 2
    assert f"its lock file {link} is a symbolic link" in last_error(capsys)
    assert not (tmp_path / "victim").exists()
    link.unlink()

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # the checkpoint's folder is read-only
    assert main(common) == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: cannot write results file {ckpt.with_name('last.robustness.json')}: Read-only file "
        f"system in {ckpt.parent} (errno EROFS); choose another with --results_path FILE")


def test_robustness_prints_and_keeps_the_scores_when_the_write_fails(ckpt, trees, tmp_path, capsys, monkeypatch):
    """The disk fills while scoring: the table is printed, the scores are kept in a temporary file the error names."""
    import lk_ablate.robustness.score as scoring

    real_score = scoring.score
    temp = tmp_path / "tmp"
    temp.mkdir()

    def score_then_fill(*args, **kwargs):
        run = real_score(*args, **kwargs)
        real = files.tempfile.mkstemp

        def full(*a, **k):  # the results folder's files are links to /dev/full: the kernel's ENOSPC
            fd, name = real(*a, **k)
            if Path(name).parent != ckpt.parent:
                return fd, name  # the temporary folder still has space
            files.os.close(fd)
            files.os.unlink(name)
            files.os.symlink("/dev/full", name)
            return files.os.open(name, files.os.O_WRONLY), name

        monkeypatch.setattr(files.tempfile, "mkstemp", full)
        return run

    monkeypatch.setattr(scoring, "score", score_then_fill)
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    out = ckpt.with_name("last.robustness.json")
    assert main(["robustness", "--ckpt_path", str(ckpt), "--data.imagenet_a", trees["imagenet_a"], "--device", "cpu",
                 "--data.batch_size", "64", "--data.num_workers", "0"]) == 2
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[1].split() == ["benchmark", "metric", "n", "raw"] and table[2].split()[:3] == ["imagenet_a", "top1",
                                                                                                  "201"]
    (kept,) = temp.iterdir()
    assert captured.err.strip().splitlines()[-1] == (
        f"lk_ablate: error: cannot write {out}: No space left on device (errno ENOSPC); free space on that file "
        f"system or write to another one; the results were kept in {kept}: move that file to {out} once it can be "
        "written")
    data = read_results(kept)
    assert data["weights"]["raw"]["imagenet_a"]["n"] == 201 and f"{data['weights']['raw']['imagenet_a']['top1']:.2f}" \
        == table[2].split()[3]
    assert not out.exists() and sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]


def test_analyze_checks_first_and_leaves_no_plot_when_the_update_fails(ckpt, tmp_path, capsys, monkeypatch):
    common = ["analyze", "kernel_distance", "--ckpt_path", str(ckpt)]
    assert main([*common, "--output_dir", str(ckpt)]) == 2  # a file where the plot folder should be
    assert last_error(capsys) == (
        f"lk_ablate: error: cannot write plot {ckpt / 'last.robustness.kernel_distance.png'}: a part of its folder "
        "path is a file, not a folder; fix the path; choose another folder with --output_dir DIR")
    assert main(common) == 0
    plot = ckpt.with_name("last.robustness.kernel_distance.png")
    before = plot.read_bytes()
    from lk_ablate.base.errors import WriteError

    def fail(path, *args, **kwargs):
        raise WriteError(f"cannot write {path}: No space left on device (errno ENOSPC); free space on that file "
                         "system or write to another one")

    monkeypatch.setattr("lk_ablate.analysis.runner.write_analysis_result", fail)
    plot.unlink()
    assert main(common) == 2
    assert "No space left on device" in last_error(capsys)
    assert not plot.exists(), "no plot of a result that was not stored"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt", "last.robustness.json"]
    assert before  # (the successful run drew it)


def test_architecture_options_must_match_an_lk_ablate_checkpoint(ckpt, trees, capsys):
    for cmd in (["analyze", "kernel_distance"], ["robustness", "--data.imagenet_a", trees["imagenet_a"]]):
        assert main([*cmd, "--ckpt_path", str(ckpt), "--model.kernel_size", "7", "--model.num_classes", "10"]) == 2
        assert last_error(capsys) == (
            f"lk_ablate: error: {ckpt} is an lk_ablate convnext_demo checkpoint, but the model options say "
            "kernel_size 7 (checkpoint: 3), num_classes 10 (checkpoint: 1000); drop those options (the checkpoint "
            "names its architecture; they may come from --model.*, a --config file or --fit_config's model "
            "section), or score the checkpoint they describe")
    # the same facts, spelled per stage: no contradiction
    assert main(["analyze", "kernel_distance", "--ckpt_path", str(ckpt), "--model.kernel_size", "[3,3,3,3]"]) == 0


def test_pickle_named_safetensors_and_bad_yaml_tag_are_one_line(tmp_path, trees, capsys):
    import timm

    fake = tmp_path / "resnet18.safetensors"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), fake)
    assert main(["analyze", "kernel_distance", "--model.timm", "resnet18", "--model.num_classes", "10",
                 "--ckpt_path", str(fake), "--results_path", str(tmp_path / "r.json")]) == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: cannot read {fake} as safetensors (Error while deserializing header: header too large): "
        "a .safetensors file must hold safetensors data; if it is a torch checkpoint, rename it to .pth (it is then "
        "read with the safe loader)")
    fit_config = tmp_path / "fit.yaml"
    fit_config.write_text("trainer:\n  max_epochs: 1\ndata: data.yaml\n")
    (tmp_path / "data.yaml").write_text("init_args: !!python/object:os.system {}\n")
    assert main(["robustness", "--model.timm", "resnet18", "--fit_config", str(fit_config), "--data.imagenet_a",
                 trees["imagenet_a"]]) == 2
    assert last_error(capsys) == (
        f"lk_ablate: error: YAML error in {tmp_path / 'data.yaml'} line 1, column 12: could not determine a "
        "constructor for the tag 'tag:yaml.org,2002:python/object:os.system'")
