"""``lk_ablate report`` never half-counts a bad results file: values are checked (type, range, finite), a bad file is
left out whole with one line naming it (``--strict``: an error), and results files get the umask's permissions."""
from __future__ import annotations

import csv
import json
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
                       weights={"ema": {"imagenet_a": {"top1": top1, "correct": 3, "n": 10}}},
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
