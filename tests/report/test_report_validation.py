"""``lk_ablate report`` never half-counts a bad results file: values are checked (type, range, finite), a bad file is
left out whole with one line naming it (``--strict``: an error), and results files get the umask's permissions."""
from __future__ import annotations

import csv
import json
import re
import os
import stat
from pathlib import Path

import pytest

from lk_ablate.cli import main
from lk_ablate.base.errors import DataError
from lk_ablate.report import load_runs
from lk_ablate.base.results import make_results, read_results, write_results


def _write(folder: Path, stem: str, seed: int, top1: float) -> Path:
    res = make_results(model_name="convnext_tiny", kernel_sizes=[7, 7, 7, 7], num_params=1, model_config={},
                       weights={"ema": {"imagenet_a": {"top1": top1, "correct": round(top1 * 10), "n": 1000}}},
                       settings={"seed": seed}, errors=[], checkpoint_path=folder / f"{stem}.ckpt", epoch=1,
                       global_step=10)
    return write_results(folder / f"{stem}.robustness.json", res)


BAD = {  # what a corrupted / hand-edited file holds -> the problem the line names
    "string_metric": (lambda d: d["weights"]["ema"]["imagenet_a"].update(top1="81.2"),
                      "weights.ema.imagenet_a.top1 is str '81.2', expected a number"),
    "nan_metric": (lambda d: d["weights"]["ema"]["imagenet_a"].update(top1=float("nan")),
                   "weights.ema.imagenet_a.top1 is nan (not finite)"),
    "huge_metric": (lambda d: d["weights"]["ema"]["imagenet_a"].update(top1=1e300),
                    "weights.ema.imagenet_a.top1 is 1e+300, outside [0, 100]"),
    "string_kernels": (lambda d: d["model"].update(kernel_sizes="7"),
                       "model.kernel_sizes is '7', expected null or a list of kernel sizes"),
    "fractional_count": (lambda d: d["weights"]["ema"]["imagenet_a"].update(n=10.5),
                         "weights.ema.imagenet_a.n is 10.5, expected a count"),
}


@pytest.fixture()
def runs(tmp_path) -> tuple[Path, dict[str, Path]]:
    for seed, top1 in ((0, 10.0), (1, 12.0)):
        _write(tmp_path / f"good{seed}", "last", seed, top1)
    bad = {}
    for i, (name, (edit, _)) in enumerate(BAD.items()):
        path = _write(tmp_path / name, "last", 10 + i, 50.0)
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))  # json writes NaN / 1e300 as Python reads them back
        bad[name] = path
    return tmp_path, bad


def test_bad_files_are_skipped_whole_and_named(runs):
    root, bad = runs
    with pytest.warns(UserWarning, match=r"skipped 5 bad results file\(s\)"):
        loaded, notes = load_runs([root])
    assert sorted(r.seed for r in loaded) == [0, 1]  # the good runs only: nothing half-counted
    skipped = [n for n in notes if n.startswith("skipped, bad results file: ")]
    assert len(skipped) == len(BAD)
    for name, (_, problem) in BAD.items():
        line = next(n for n in skipped if str(bad[name]) in n)
        assert problem in line and "\n" not in line, line


def test_report_cli_counts_good_runs_and_strict_is_fatal(runs, tmp_path, capsys):
    root, bad = runs
    assert main(["report", str(root), "--output_dir", str(tmp_path / "rep"), "--wandb.project", "null"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("2 run(s) in 1 (model, kernel) row(s)")
    assert sum(line.startswith("note: skipped, bad results file: ") for line in err.splitlines()) == len(BAD)
    with open(tmp_path / "rep" / "report.csv") as f:
        row = next(csv.DictReader(f))
    assert row["n_runs"] == "2" and row["seeds"] == "0 1"
    assert abs(float(row["imagenet_a/top1"]) - 11.0) < 1e-12  # (10 + 12) / 2
    assert main(["report", str(root), "--output_dir", str(tmp_path / "rep2"), "--strict", "true", "--wandb.project", "null"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "lk_ablate: error: 5 bad results file(s) (--strict):"
    assert sorted(line.split(":")[0].strip() for line in err[1:]) == sorted(str(p) for p in bad.values())


def test_read_results_names_the_problem(runs):
    _, bad = runs
    with pytest.raises(DataError, match=r"string_kernels/last.robustness.json: model.kernel_sizes is '7'"):
        read_results(bad["string_kernels"])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_results_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = _write(tmp_path, "r", 0, 10.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.robustness.json"]  # no temporary left


INCONSISTENT = {  # a file whose numbers contradict each other -> the problem the line names
    "top1_vs_counts": (lambda e: e.update(top1=99.0, correct=1, n=200),
                       "weights.ema.imagenet_a.top1 is 99, but correct/n = 1/200 = 0.5%"),
    "no_images": (lambda e: e.update(top1=0.0, correct=0, n=0),
                  "weights.ema.imagenet_a.n is 0: a benchmark scored on no images has no value"),
    "more_correct_than_scored": (lambda e: e.update(top1=100.0, correct=300, n=200),
                                 "weights.ema.imagenet_a.top1: correct 300 of n 200 images (more correct than scored)"),
    "ood_counts": (lambda e: e.update(aupr=50.0, n_in=100, n_out=20, n=100),
                   "weights.ema.imagenet_a.n is 100, but n_in + n_out = 120"),
    "corruption_mean": (lambda e: e.clear() or e.update(top1={"fog": {"4": 40.0, "5": 30.0}}, mean_top1=45.0,
                                                        corruption_top1={"fog": 35.0}),
                        "weights.ema.imagenet_a.mean_top1 is 45, but the mean of its 2 top1 cells is 35"),
    "corruption_cell": (lambda e: e.clear() or e.update(top1={"fog": {"5": 40.0}}, correct={"fog": {"5": 30}},
                                                        n={"fog": {"5": 50}}, n_total=50),
                        "weights.ema.imagenet_a.top1.fog.5 is 40, but correct/n = 30/50 = 60%"),
}


def test_inconsistent_files_are_rejected_and_never_written(tmp_path):
    """Counts and accuracies that disagree (beyond COUNT_TOLERANCE_PP = 0.005 points), or a benchmark of 0 images:
    the report leaves the file out with the line, and the writer refuses to write such a file."""
    _write(tmp_path / "good", "last", 0, 10.0)
    for i, (name, (edit, problem)) in enumerate(INCONSISTENT.items()):
        path = _write(tmp_path / name, "last", 10 + i, 50.0)
        data = json.loads(path.read_text())
        edit(data["weights"]["ema"]["imagenet_a"])
        path.write_text(json.dumps(data))
        with pytest.raises(DataError) as e:
            read_results(path)
        assert problem in str(e.value), (name, str(e.value))
        with pytest.raises(DataError, match=re.escape(problem)):
            write_results(tmp_path / f"{name}.robustness.json", data)
    with pytest.warns(UserWarning, match=rf"skipped {len(INCONSISTENT)} bad results file\(s\)"):
        loaded, notes = load_runs([tmp_path])
    assert [r.seed for r in loaded] == [0]
    # within the tolerance: 100 * 1/3 written with two decimals is accepted
    ok = _write(tmp_path / "rounded", "last", 99, 50.0)
    data = json.loads(ok.read_text())
    data["weights"]["ema"]["imagenet_a"].update(top1=33.33, correct=1, n=3)
    ok.write_text(json.dumps(data))
    assert read_results(ok)["weights"]["ema"]["imagenet_a"]["top1"] == 33.33


def _run_file(folder: Path, stem: str, seed: int | None, top1: float, step: int = 10,
              ckpt: str | None = None) -> Path:
    res = make_results(model_name="convnext_tiny", kernel_sizes=[7, 7, 7, 7], num_params=1, model_config={},
                       weights={"ema": {"imagenet_a": {"top1": top1, "correct": round(top1 * 10), "n": 1000}}},
                       settings={"seed": seed}, errors=[], checkpoint_path=ckpt or folder / f"{stem}.ckpt", epoch=1,
                       global_step=step)
    return write_results(folder / f"{stem}.robustness.json", res)


def test_nothing_is_dropped_or_counted_twice_without_a_note(tmp_path):
    # seed 0: two files of step 10 with different values (one of them is wrong), and a copy of one of them
    a = _run_file(tmp_path / "s0", "epoch009-step0000010", 0, 10.0)
    b = _run_file(tmp_path / "s0", "last", 0, 11.0)
    copy = _run_file(tmp_path / "s0_copy", "epoch009-step0000010", 0, 10.0, ckpt=str(a.with_suffix("")))
    # no seed recorded: official weights scored once, and the same results copied into another folder
    off = _run_file(tmp_path / "official", "official", None, 20.0, ckpt="/weights/convnext_k7.pth")
    off_copy = _run_file(tmp_path / "backup" / "official", "official", None, 20.0, ckpt="/weights/convnext_k7.pth")
    other = _run_file(tmp_path / "official2", "official", None, 21.0, ckpt="/weights/convnext_k7_2.pth")
    runs, notes = load_runs([tmp_path])
    assert sorted((r.seed, r.path) for r in runs if r.seed is not None) == [(0, a)]
    seedless = sorted(r.path for r in runs if r.seed is None)  # the copy counted once; another checkpoint apart
    assert seedless in (sorted([off, other]), sorted([off_copy, other]))
    assert f"{b}: holds step 10 of convnext_tiny k7 s0 like {a}, with other values (imagenet_a/top1); counted once, " \
           f"from {a.name}: remove the file that is wrong" in notes
    assert f"{copy}: the same results as {a} (step 10 of convnext_tiny k7 s0): counted once" in notes
    kept_off = next(r.path for r in runs if r.seed is None and r.checkpoint == "/weights/convnext_k7.pth")
    dropped_off = off_copy if kept_off == off else off
    assert f"{dropped_off}: the same results as {kept_off} (step 10 of convnext_tiny k7): counted once" in notes
    assert len(notes) == 3
