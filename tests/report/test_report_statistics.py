"""The report's row rule (data fingerprints, class counts, provenance), its statistics (Wilson, clipped seed
intervals, decimals) and paired comparisons (exact McNemar, paired bootstrap), against scipy."""
from __future__ import annotations

import copy
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap
from scipy.stats import t as student_t

from lk_ablate.base.errors import DataError
from lk_ablate.base.provenance import collect, fingerprint
from lk_ablate.base.results import make_results, pack_bits, write_results
from lk_ablate.cli import main
from lk_ablate.report import Metric, build_report, summarize
from lk_ablate.report.stats import mcnemar_exact, paired_bootstrap, paired_comparison, wilson

BASE = collect(device="cpu", precision="fp32")
A_FULL = fingerprint([(f"n{c:02d}/{i}.jpg", 1000 + i) for c in range(200) for i in range(3)], 200)


def prov(**changes) -> dict:
    p = copy.deepcopy(BASE)
    p["data"] = {"imagenet_a": dict(A_FULL)}
    for dotted, value in changes.items():
        node = p
        *head, last = dotted.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    return p


def write(folder: Path, model: str, kernel: int, seed: int, top1: float, n: int = 600, provenance: dict | None = None,
          flags: np.ndarray | None = None, classes: int = 1000, old: bool = False) -> Path:
    res = make_results(model_name=model, kernel_sizes=[kernel] * 4, num_params=1, model_config={"num_classes": classes},
                       weights={"raw": {"imagenet_a": {"top1": top1, "correct": round(top1 * n / 100), "n": n}}},
                       settings={"seed": seed}, errors=[], checkpoint_path=folder / "last.ckpt", epoch=1,
                       global_step=10, provenance=provenance or prov(),
                       per_image=None if flags is None else {"raw": {"imagenet_a": {"a": {
                           "n": len(flags), "top1": pack_bits(flags)}}}})
    if old:
        del res["provenance"]
    folder.mkdir(parents=True, exist_ok=True)
    return write_results(folder / "last.robustness.json", res)


# --- statistics -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(0, 20), (20, 20), (1, 3), (765, 7500), (41750, 50000)])
def test_wilson_interval_equals_scipy_and_stays_in_range(k, n):
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert abs(lo - 100 * ref.low) < 1e-9 and abs(hi - 100 * ref.high) < 1e-9
    assert 0.0 <= lo <= 100 * k / n <= hi <= 100.0
    s = summarize([Metric(100 * k / n, math.sqrt((k / n) * (1 - k / n) / n) * 100, n, (0.0, 100.0))])
    assert s.kind == "wilson" and abs(s.ci95[0] - lo) < 1e-9 and abs(s.ci95[1] - hi) < 1e-9


def test_seed_intervals_are_clipped_to_the_metrics_range_and_say_so():
    values = [99.2, 100.0, 100.0]
    s = summarize([Metric(v, None, 1000, (0.0, 100.0)) for v in values])
    mean, sd = np.mean(values), np.std(values, ddof=1)
    half = student_t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert s.kind == "t" and s.clipped and s.ci95 == (pytest.approx(mean - half, abs=1e-9), 100.0)
    inside = summarize([Metric(v, None, 1000, (0.0, 100.0)) for v in (50.0, 51.0)])
    assert not inside.clipped
    mce = summarize([Metric(v, None, None, (0.0, None)) for v in (0.5, 0.1, 3.0)])  # mCE: >= 0, no upper bound
    assert mce.clipped and mce.ci95[0] == 0.0 and mce.ci95[1] > 3.0


def test_mcnemar_exact_equals_scipys_binomial_test():
    for b, c in ((0, 0), (0, 7), (12, 3), (40, 41), (150, 210)):
        ref = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
        assert abs(mcnemar_exact(b, c) - ref) < 1e-12


def test_paired_bootstrap_agrees_with_scipys_resampling_of_images():
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.6
    b = np.where(rng.random(2000) < 0.9, a, ~a) | (rng.random(2000) < 0.05)
    ours = paired_bootstrap([b.astype(float) - a.astype(float)], samples=10_000, seed=1)
    ref = bootstrap((a.astype(float), b.astype(float)), lambda x, y: 100 * (np.mean(y) - np.mean(x)), paired=True,
                    n_resamples=10_000, method="percentile", random_state=2).confidence_interval
    # Two Monte-Carlo estimates of the same percentiles (steps of 0.05 points): agree within 0.15 points.
    assert abs(ours[0] - ref.low) < 0.15 and abs(ours[1] - ref.high) < 0.15
    p = paired_comparison([a], [b], samples=10_000, seed=1)
    assert p.discordant == (int((a & ~b).sum()), int((~a & b).sum()))
    assert abs(p.diff - 100 * (b.mean() - a.mean())) < 1e-9 and p.ci95 == ours
    assert abs(p.p_value - binomtest(min(p.discordant), sum(p.discordant), 0.5).pvalue) < 1e-12
    # strata (corruption cells): each resampled within itself, the difference is the mean over cells
    cells = paired_comparison([a[:500], a[500:]], [b[:500], b[500:]], samples=2000)
    assert abs(cells.diff - 100 * np.mean([b[:500].mean() - a[:500].mean(), b[500:].mean() - a[500:].mean()])) < 1e-9


# --- the row rule ---------------------------------------------------------------------------------------------
def test_runs_with_other_data_or_classes_get_rows_of_their_own_with_a_note(tmp_path, capsys):
    root = tmp_path / "runs"
    write(root / "s0", "convnext_tiny", 31, 0, 10.0)
    write(root / "s1", "convnext_tiny", 31, 1, 10.5)
    partial = fingerprint([(f"n{c:02d}/{i}.jpg", 1000 + i) for c in range(200) for i in range(2)], 200)
    write(root / "partial", "convnext_tiny", 31, 2, 30.0, n=400, provenance=prov(**{"data.imagenet_a": partial}))
    write(root / "toy", "convnext_tiny", 31, 3, 50.0, classes=4)
    write(root / "old", "convnext_tiny", 31, 4, 11.0, old=True)
    out = build_report([root], tmp_path / "rep")
    rows = out["rows"]
    assert [(r.group, [x.seed for x in r.runs]) for r in rows] == [
        ("", [0, 1]), ("data 2", [2]), ("data 3", [3]), ("no provenance", [4])]
    assert rows[0].stats["imagenet_a/top1"].mean == 10.25  # never averaged with the partial or 4-class runs
    notes = "\n".join(out["notes"])
    assert (f"{root / 'partial' / 'last.robustness.json'} is in a row of its own, not with "
            f"{root / 's0' / 'last.robustness.json'}: imagenet_a: 400 images, 200 classes, fingerprint "
            f"{partial['sha256'][:12]} vs 600 images, 200 classes, fingerprint {A_FULL['sha256'][:12]}") in notes
    assert "toy/last.robustness.json is in a row of its own" in notes and "the model's classes: 4 vs 1000" in notes
    assert "old/last.robustness.json records no provenance" in notes
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| convnext_tiny | 31 (data 2) | 2 |" in md and "| convnext_tiny | 31 (no provenance) | 4 |" in md
    assert "## Provenance" in md and "| no provenance | convnext_tiny k31 s4 |" in md
    with open(tmp_path / "rep" / "report.csv") as f:
        assert [r["group"] for r in csv.DictReader(f)] == ["", "data 2", "data 3", "no provenance"]
    # --strict stops, naming every split
    assert main(["report", str(root), "--output_dir", str(tmp_path / "strict"), "--strict", "true",
                 "--wandb.project", "null"]) == 2
    err = capsys.readouterr().err
    assert "3 run(s) not comparable with the other runs of their row (--strict)" in err
    assert "partial/last.robustness.json is in a row of its own" in err


def test_differences_that_keep_runs_comparable_are_notes_and_the_provenance_section_lists_them(tmp_path):
    root = tmp_path / "runs"
    write(root / "a", "convnext_tiny", 31, 0, 10.0)
    write(root / "b", "convnext_tiny", 31, 1, 10.5, provenance=prov(**{"packages.torch": "2.13.0", "threads": 16,
                                                                        "device.name": "NVIDIA H100"}))
    out = build_report([root], tmp_path / "rep")
    assert len(out["rows"]) == 1 and out["rows"][0].stats["imagenet_a/top1"].n == 2
    notes = "\n".join(out["notes"])
    torch_v = BASE["packages"]["torch"]
    assert (f"runs differ in torch version: {torch_v} (convnext_tiny k31 s0); 2.13.0 (convnext_tiny k31 s1)") in notes
    assert "runs differ in torch threads:" in notes and "runs differ in device name:" in notes
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## Provenance")[1].split("## Notes")[0]
    assert section.count("| lk_ablate ") == 2 and "torch 2.13.0, cpu NVIDIA H100" in section


def test_numbers_in_one_column_have_one_number_of_decimals(tmp_path):
    root = tmp_path / "runs"
    for seed, v in enumerate((99.9, 100.0, 100.0)):  # of 1,000 images: counts that agree with the accuracies
        write(root / f"k3s{seed}", "convnext_tiny", 3, seed, v, n=1000)
    write(root / "k7", "convnext_tiny", 7, 0, 0.5, n=1000)
    build_report([root], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md.split("## Benchmarks by kernel size")[1].split("\n\n")[1].splitlines()
    column = [line.split("|")[4] for line in table[2:]]
    decimals = {len(x.split(".")[1]) for cell in column for x in re.findall(r"-?\d+\.\d+", cell)}
    assert decimals == {2}, column
    assert column[0].strip().endswith("100.00]†")  # the clipped seed interval is marked


# --- paired comparisons ---------------------------------------------------------------------------------------
def test_report_compares_adjacent_kernels_and_requested_pairs_image_by_image(tmp_path, capsys):
    rng = np.random.default_rng(3)
    base = rng.random(600) < 0.3
    flags = {3: base, 7: base | (rng.random(600) < 0.05), 13: base | (rng.random(600) < 0.12)}
    root = tmp_path / "runs"
    for k, f in flags.items():
        write(root / f"k{k}", "convnext_tiny", k, 0, 100 * f.mean(), flags=f)
    assert main(["report", str(root), "--output_dir", str(tmp_path / "rep"), "--pairs", "[[3,13]]",
                 "--bootstrap_samples", "2000", "--wandb.project", "null"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## Paired comparisons (the same images)")[1].split("## Runs")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| IN-A")]
    assert [ln.split("|")[2:4] for ln in lines] == [[" convnext_tiny k3 ", " convnext_tiny k7 "],
                                                    [" convnext_tiny k7 ", " convnext_tiny k13 "],
                                                    [" convnext_tiny k3 ", " convnext_tiny k13 "]]
    for line, (ka, kb) in zip(lines, ((3, 7), (7, 13), (3, 13))):
        a, b = flags[ka], flags[kb]
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[3] == "600" and cells[6] == f"{100 * (b.mean() - a.mean()):+.2f}"
        assert cells[8] == f"{only_a:,} / {only_b:,}"
        assert cells[9] == ("< 0.0001" if p < 1e-4 else f"{p:.4f}")
        lo, hi = (float(x) for x in cells[7].strip("[]").split(","))
        assert lo <= float(cells[6]) <= hi
    # a pair that names no row: one line listing the rows, before anything is written
    assert main(["report", str(root), "--output_dir", str(tmp_path / "bad"), "--pairs", "[[3,31]]",
                 "--wandb.project", "null"]) == 2
    err = capsys.readouterr().err
    assert "--pairs [3,31]: '31' matches no row; rows: convnext_tiny/3, convnext_tiny/7, convnext_tiny/13" in err
    assert not (tmp_path / "bad").exists()


def test_paired_comparison_needs_the_same_images(tmp_path):
    root = tmp_path / "runs"
    f = np.ones(600, dtype=bool)
    write(root / "k3", "convnext_tiny", 3, 0, 100.0, flags=f)
    other = fingerprint([(f"x{i}.jpg", i) for i in range(600)], 200)
    write(root / "k7", "convnext_tiny", 7, 0, 100.0, flags=f, provenance=prov(**{"data.imagenet_a": other}))
    assert build_report([root], tmp_path / "rep")["pairs"] == []  # other images: nothing to pair
    assert json.loads((root / "k3" / "last.robustness.json").read_text())["per_image"]
