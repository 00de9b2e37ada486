"""``lk_ablate report``: results files -> Table-7-shaped Markdown/CSV with seed statistics, plots, W&B table."""
import csv
import math
import struct
from pathlib import Path

import pytest

from lk_ablate.cli import main
from lk_ablate.models.registry import kernel_label
from lk_ablate.report import Metric, benchmark_metrics, build_report, summarize
from lk_ablate.robustness.metrics import ALL_CORRUPTIONS, CORRUPTIONS, summarize_imagenet_c
from lk_ablate.base.results import make_results, read_results, write_results

# Student's t 97.5% quantiles (statistical tables), independent of scipy which the report uses.
T975 = {1: 12.706204736174705, 2: 4.302652729911275}
# The paper's Table 7 (ConvNeXt-T, 120 epochs): ImageNet, IN-A, IN-R top-1.
TABLE7 = {3: (79.4, 5.20, 28.87), 7: (80.7, 7.76, 29.86), 31: (81.4, 10.20, 31.34)}
SEED_OFFSETS = {0: -0.1, 1: 0.0, 2: 0.1}  # mean over seeds = the paper's value, sd = 0.1


def binom_se(p_percent: float, n: int) -> float:
    p = p_percent / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def write_run(folder: Path, stem: str, model: str, kernel_sizes: list[int], benches: dict, seed: int | None = None,
              step: int = 100, weights: str = "ema") -> Path:
    res = make_results(model_name=model, kernel_sizes=kernel_sizes, num_params=1, model_config={},
                       weights={weights: benches}, settings={} if seed is None else {"seed": seed}, errors=[],
                       checkpoint_path=folder / f"{stem}.ckpt", epoch=step // 10, global_step=step)
    return write_results(folder / f"{stem}.robustness.json", res)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("kernel,label", [(31, "31"), ([7, 7, 7, 7], "7"), ((31, 29, 27, 13), "31-29-27-13"),
                                          ([13, 11, 9, 7], "13-11-9-7"), (None, "default")])
def test_kernel_label(kernel, label):
    assert kernel_label(kernel) == label


@pytest.mark.parametrize("values", [[81.2, 81.4, 81.9], [10.0, 10.5]])
def test_seed_statistics_use_student_t(values):
    s = summarize([Metric(v, se=0.2) for v in values])
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    assert (s.n, s.se_binom) == (n, None)
    assert abs(s.mean - mean) < 1e-12 and abs(s.sd - sd) < 1e-12
    assert abs(s.ci95[0] - (mean - half)) < 1e-9 and abs(s.ci95[1] - (mean + half)) < 1e-9


def test_single_run_carries_its_wilson_interval():
    from scipy.stats import binomtest

    m = benchmark_metrics("imagenet_a", {"top1": 10.2, "correct": 765, "n": 7500})["imagenet_a/top1"]
    assert (m.value, m.n) == (10.2, 7500) and abs(m.se - binom_se(10.2, 7500)) < 1e-12
    s = summarize([m])
    ref = binomtest(765, 7500).proportion_ci(0.95, method="wilson")
    assert (s.n, s.sd, s.se_binom, s.kind) == (1, None, m.se, "wilson")
    assert abs(s.ci95[0] - 100 * ref.low) < 1e-9 and abs(s.ci95[1] - 100 * ref.high) < 1e-9
    assert s.error_bar == (s.mean - s.ci95[0], s.ci95[1] - s.mean)


def test_corruption_means_combine_the_cells_binomial_variances():
    # 19 corruptions x 5 severities with different counts and accuracies, through the real ImageNet-C summary.
    total = {c: {s: 40 + 3 * i + s for s in range(1, 6)} for i, c in enumerate(ALL_CORRUPTIONS)}
    correct = {c: {s: (7 * i + 11 * s) % total[c][s] for s in range(1, 6)} for i, c in enumerate(ALL_CORRUPTIONS)}
    entry = summarize_imagenet_c(correct, total, clean_top1=80.0)
    got = benchmark_metrics("imagenet_c", entry)

    def se(cells):
        var = sum((k / n) * (1 - k / n) / n for k, n in cells)
        return 100 * math.sqrt(var) / len(cells)

    cells = {(c, s): (correct[c][s], total[c][s]) for c in ALL_CORRUPTIONS for s in range(1, 6)}
    assert abs(got["imagenet_c/mean_top1"].se - se(list(cells.values()))) < 1e-12
    assert abs(got["imagenet_c/severity5_mean_top1"].se - se([cells[c, 5] for c in ALL_CORRUPTIONS])) < 1e-12
    assert abs(got["imagenet_c/severity5_mean_top1_15"].se - se([cells[c, 5] for c in CORRUPTIONS])) < 1e-12
    assert abs(got["imagenet_c/corruption_top1/fog"].se - se([cells["fog", s] for s in range(1, 6)])) < 1e-12
    assert got["imagenet_c/top1/fog/3"].n == total["fog"][3]
    assert got["imagenet_c/mce"].se is None and got["imagenet_c/relative_mce"].se is None  # not proportions
    assert got["imagenet_c/mean_top1"].value == entry["mean_top1"]
    assert not any(k.startswith("imagenet_c/n") or k.startswith("imagenet_c/correct") for k in got)


def table7_runs(root: Path) -> None:
    for k, (val, a, r) in TABLE7.items():
        for seed, off in SEED_OFFSETS.items():
            benches = {"imagenet_val": {"top1": val + off, "top5": 95.0, "n": 50000},
                       "imagenet_a": {"top1": a + off, "n": 7500},
                       "imagenet_r": {"top1": r + off, "n": 30000}}
            folder = root / f"convnext_k{k}_s{seed}"
            write_run(folder, "last", "convnext_tiny", [k] * 4, benches, seed)
            write_run(folder, "epoch009-step0000100", "convnext_tiny", [k] * 4, benches, seed)  # same step
            if k == 31 and seed == 0:  # an earlier scoring of the same run: superseded
                write_run(folder, "epoch004-step0000050", "convnext_tiny", [k] * 4,
                          {"imagenet_val": {"top1": 50.0, "n": 50000}}, seed, step=50)
    # The paper's Table 5 pair, one run each, no seed recorded, RepLKNet-3B is RepLKNet-31B's family.
    write_run(root / "replknet_31b", "last", "replknet_31b", [31, 29, 27, 13],
              {"imagenet_val": {"top1": 83.5, "n": 50000}, "imagenet_a": {"top1": 29.4, "n": 7500},
               "imagenet_o": {"aupr": 78.9, "n_in": 10000, "n_out": 2000, "n": 12000}})
    write_run(root / "replknet_3b", "last", "replknet_3b", [3, 3, 3, 3],
              {"imagenet_val": {"top1": 80.0, "n": 50000}, "imagenet_a": {"top1": 14.6, "n": 7500},
               "imagenet_o": {"aupr": 51.6, "n_in": 10000, "n_out": 2000, "n": 12000}})


def test_report_table7_end_to_end(tmp_path, capsys):
    from scipy.stats import binomtest

    table7_runs(tmp_path / "runs")
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--output_dir", str(out), "--wandb.project", "null"]) == 0
    assert "5 (model, kernel) row(s)" in capsys.readouterr().out

    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["kernel"], r["n_runs"], r["seeds"]) for r in rows] == [
        ("convnext_tiny", "3", "3", "0 1 2"), ("convnext_tiny", "7", "3", "0 1 2"), ("convnext_tiny", "31", "3", "0 1 2"),
        ("replknet_3b", "3", "1", ""), ("replknet_31b", "31-29-27-13", "1", "")]
    assert rows[3]["family"] == rows[4]["family"] == "replknet_31b"
    half = T975[2] * 0.1 / math.sqrt(3)
    for row, (k, paper) in zip(rows, TABLE7.items()):
        for col, value in zip(("imagenet_val/top1", "imagenet_a/top1", "imagenet_r/top1"), paper):
            assert abs(float(row[col]) - value) < 1e-9 and abs(float(row[col + "_sd"]) - 0.1) < 1e-9
            assert abs(float(row[col + "_ci95_lo"]) - (value - half)) < 1e-9
            assert abs(float(row[col + "_ci95_hi"]) - (value + half)) < 1e-9
            assert (row[col + "_se_binom"], row[col + "_n"]) == ("", "3")
        assert row["imagenet_o/aupr_n"] == "0" and row["imagenet_o/aupr"] == ""
    r31b = rows[4]
    assert float(r31b["imagenet_val/top1"]) == 83.5 and r31b["imagenet_val/top1_sd"] == ""
    assert abs(float(r31b["imagenet_a/top1_se_binom"]) - binom_se(29.4, 7500)) < 1e-12
    assert float(r31b["imagenet_o/aupr"]) == 78.9 and r31b["imagenet_o/aupr_se_binom"] == ""

    md = (out / "report.md").read_text()
    assert "| model | kernel | seeds | ImageNet top-1 | ImageNet top-5 | IN-A top-1 | IN-R top-1 | IN-O AUPR |" in md
    assert (f"| convnext_tiny | 31 | 0, 1, 2 | 81.40 ± 0.10 [{81.4 - half:.2f}, {81.4 + half:.2f}] | 95.00 ± 0.00 "
            f"[95.00, 95.00] | 10.20 ± 0.10 [{10.2 - half:.2f}, {10.2 + half:.2f}] | 31.34 ± 0.10 "
            f"[{31.34 - half:.2f}, {31.34 + half:.2f}] | – |") in md
    val, a = (binomtest(k, n).proportion_ci(0.95, method="wilson") for k, n in ((41750, 50000), (2205, 7500)))
    assert (f"| replknet_31b | 31-29-27-13 | ? | 83.50 [{100 * val.low:.2f}, {100 * val.high:.2f}] | – | "
            f"29.40 [{100 * a.low:.2f}, {100 * a.high:.2f}] | – | 78.90 |") in md
    assert "epoch004-step0000050.robustness.json: superseded by the later" in md
    runs_section = md.split("## Runs")[1].split("## Notes")[0]
    assert runs_section.count("convnext_k31_s0/") == 1  # one file per run: the named one of two at the same step
    assert "convnext_k31_s0/epoch009-step0000100.robustness.json" in runs_section

    for name in ("imagenet_val_top1", "imagenet_val_top5", "imagenet_a_top1", "imagenet_r_top1", "imagenet_o_aupr"):
        assert png_size(out / f"{name}.png") == (600, 432)  # 5 x 3.6 in at 120 dpi
        assert f"]({name}.png)" in md
    with open(out / "runs.csv") as f:
        per_run = list(csv.DictReader(f))
    assert len(per_run) == 9 * 4 + 2 * 3  # 9 ConvNeXt runs x 4 metrics (val top-1, top-5, A, R), 2 RepLKNet x 3
    one = next(r for r in per_run if r["model"] == "replknet_3b" and r["metric"] == "imagenet_a/top1")
    assert float(one["value"]) == 14.6 and one["n"] == "7500" and abs(float(one["se_binom"]) - binom_se(14.6, 7500)) < 1e-12


def demo_runs(root: Path) -> list[tuple[Path, object]]:
    """Results in the embedded demo's format (Fashion-MNIST, Fashion-MNIST-C per corruption and severity),
    with the real kernel-distance analysis of the real models stored under "analyses"."""
    from lk_ablate import create_model
    from lk_ablate.analysis import run_analyses

    n = 500
    out = []
    for i, kernels in enumerate(([3, 3, 3, 3], [13, 11, 9, 7])):
        correct = {c: {s: n - 20 * s - 7 * j - 50 * i for s in range(1, 6)} for j, c in enumerate(CORRUPTIONS)}
        top1 = {c: {str(s): 100 * k / n for s, k in by.items()} for c, by in correct.items()}
        benches = {"fashion_mnist": {"top1": 88.5 - i, "n": 10000},
                   "fashion_mnist_c": {"mean_top1": sum(v for by in top1.values() for v in by.values()) / 75,
                                       "corruption_top1": {c: sum(by.values()) / 5 for c, by in top1.items()},
                                       "top1": top1, "clean_top1_subset": 89.0, "relative_mce": 100.0 - 5 * i,
                                       "relative_ce": {c: 100.0 for c in CORRUPTIONS}, "n": n}}
        path = write_run(root / f"k{kernels[0]}", "last", "convnext_demo", kernels, benches, seed=0, weights="raw")
        model = create_model("convnext_demo", kernel_size=kernels, num_classes=10)
        run_analyses(model, {"kernel_distance": {}}, results_path=path)
        out.append((path, model))
    return out


@pytest.mark.slow
def test_report_demo_format_with_analyses(tmp_path):
    import json

    runs = demo_runs(tmp_path / "runs")
    written = build_report([tmp_path / "runs"], tmp_path / "report")
    rows = written["rows"]
    assert [(r.model, r.kernel) for r in rows] == [("convnext_demo", "3"), ("convnext_demo", "13-11-9-7")]
    md = (tmp_path / "report" / "report.md").read_text()
    assert ("| model | kernel | seeds | Fashion-MNIST top-1 | Fashion-MNIST-C clean top-1 (subset) | Fashion-MNIST-C "
            "mean top-1 | Fashion-MNIST-C rel. mCE |") in md
    # Fashion-MNIST-C: the mean over 75 cells of 500 images combines their binomial variances.
    cells = [(100 * (500 - 20 * s - 7 * j - 50) / 500, 500) for j in range(15) for s in range(1, 6)]
    se = 100 * math.sqrt(sum((p / 100) * (1 - p / 100) / n for p, n in cells)) / 75
    stat = rows[1].stats["fashion_mnist_c/mean_top1"]
    assert abs(stat.se_binom - se) < 1e-12 and stat.n == 1
    assert abs(rows[0].stats["fashion_mnist/top1"].se_binom - binom_se(88.5, 10000)) < 1e-12
    assert "## Fashion-MNIST-C: top-1 per corruption" in md and "| model | kernel | gaussian_noise | shot_noise |" in md
    assert f"| convnext_demo | 3 | {100 * (500 - 60) / 500:.2f} |" in md  # gaussian_noise: mean of 5 severities
    # The analyses' scalar summaries, read back from the JSON the analysis wrote.
    for (path, _), row in zip(runs, rows):
        expected = json.loads(path.read_text())["analyses"]["kernel_distance"]["summary"]["mean_distance"]
        assert row.stats["analysis/kernel_distance.mean"].mean == expected
    assert "## Analyses (scalar summaries)" in md and "| kernel_distance.mean |" in md
    for name in ("fashion_mnist_top1", "fashion_mnist_c_mean_top1", "fashion_mnist_c_corruptions",
                 "analysis_kernel_distance", "analysis_kernel_distance_mean"):
        w, h = png_size(tmp_path / "report" / f"{name}.png")
        assert w >= 600 and h >= 400


@pytest.mark.parametrize("case,message", [
    ("empty", "no *.robustness.json under"),
    ("missing", "runs folder or results file not found"),
    ("old_schema", "has schema_version 0"),
])
def test_report_input_errors_are_one_message(case, message, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    if case == "old_schema":
        (runs / "x.robustness.json").write_text('{"schema": "lk_ablate.robustness", "schema_version": 0}')
    target = runs if case != "missing" else tmp_path / "nowhere"
    assert main(["report", str(target), "--output_dir", str(tmp_path / "out"), "--wandb.project", "null"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("lk_ablate: error:")


def test_report_logs_the_table_to_wandb(tmp_path, monkeypatch):
    import json

    from test_wandb import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    table7_runs(tmp_path / "runs")
    written = build_report([tmp_path / "runs" / "replknet_31b", tmp_path / "runs" / "replknet_3b"],
                           tmp_path / "report", wandb_project="lk_ablate_test", wandb_dir=str(tmp_path))
    (run,) = offline_runs(tmp_path / "wandb")
    assert run["run"].run_id == written["wandb_run_id"]
    assert (run["run"].job_type, run["run"].run_group) == ("report", "replknet_31b-kernel")
    table = run["summary"]["report/table"]
    data = json.loads((run["dir"] / "files" / table["path"]).read_text())
    with open(tmp_path / "report" / "report.csv") as f:
        csv_rows = list(csv.DictReader(f))
    cols = data["columns"]
    assert cols[:4] == ["model", "kernel", "n_runs", "seeds"]
    for line, csv_row in zip(data["data"], csv_rows):
        got = dict(zip(cols, line))
        assert (got["model"], got["kernel"]) == (csv_row["model"], csv_row["kernel"])
        for key in ("imagenet_val/top1", "imagenet_a/top1", "imagenet_o/aupr", "imagenet_a/top1_se_binom"):
            assert got[key] == float(csv_row[key])
    assert {k for k in run["summary"] if k.startswith("report/plots/")} == {
        "report/plots/imagenet_val_top1", "report/plots/imagenet_a_top1", "report/plots/imagenet_o_aupr"}
    # A native W&B line chart per column: metric against the largest stage kernel, one line per family (RepLKNet-3B
    # on RepLKNet-31B's line, as in the PNG), the paper's Table 5 numbers at x = 3 and 31.
    charts = {k: v for k, v in run["summary"].items() if k.startswith("report/charts/")}
    assert set(charts) == {"report/charts/imagenet_val/top1_table", "report/charts/imagenet_a/top1_table",
                           "report/charts/imagenet_o/aupr_table"}
    chart = json.loads((run["dir"] / "files" / charts["report/charts/imagenet_a/top1_table"]["path"]).read_text())
    assert chart == {"columns": ["step", "lineKey", "lineVal"],
                     "data": [[3.0, "replknet_31b", 14.6], [31.0, "replknet_31b", 29.4]]}
    spec = run["config"]["_wandb"]["visualize"]["report/charts/imagenet_a/top1"]["panel_config"]
    assert (spec["panelDefId"], spec["stringSettings"]) == ("wandb/lineseries/v0", {
        "title": "IN-A top-1", "xname": "kernel size (largest stage)"})


def test_report_print_config_round_trip(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("WANDB_PROJECT", "from_env")

    def printed(*args):
        with pytest.raises(SystemExit) as e:
            main(["report", *args, "--print_config"])
        assert e.value.code in (0, None)
        return capsys.readouterr().out

    first = printed("runs/a", "runs/b", "--output_dir", "rep", "--weights", "raw", "--strict", "true", "--wandb.group", "g")
    cfg = yaml.safe_load(first)
    assert cfg["runs"] == ["runs/a", "runs/b"]
    assert (cfg["output_dir"], cfg["weights"], cfg["strict"]) == ("rep", "raw", True)
    # $WANDB_PROJECT is the default
    assert cfg["wandb"] == {"project": "from_env", "entity": None, "group": "g", "dashboard": False}
    (tmp_path / "c.yaml").write_text(first)
    assert printed("--config", str(tmp_path / "c.yaml")) == first
    # a config file runs the report as its options would
    table7_runs(tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"runs": [str(tmp_path / "runs")], "output_dir": str(tmp_path / "rep"),
                                                     "wandb": {"project": None}}))
    assert main(["report", "--config", str(tmp_path / "c.yaml")]) == 0
    assert "5 (model, kernel) row(s)" in capsys.readouterr().out and (tmp_path / "rep" / "report.csv").is_file()


def test_partial_and_inexact_scoring_are_kept_apart(tmp_path):
    """A benchmark scored with unreadable images skipped never enters a mean with complete runs; bf16 or
    GPU-decoded scoring is named in the notes."""
    full = {"imagenet_a": {"top1": 10.0, "correct": 20, "n": 200}, "imagenet_r": {"top1": 30.0, "correct": 60, "n": 200}}
    partial = {"imagenet_a": {"top1": 50.0, "correct": 99, "n": 198, "skipped_images": ["x/a.jpg", "x/b.jpg"],
                              "n_skipped": 2},
               "imagenet_r": {"top1": 40.0, "correct": 80, "n": 200}}
    write_run(tmp_path / "runs" / "s0", "last", "convnext_tiny", [7] * 4, full, seed=0)
    path = write_run(tmp_path / "runs" / "s1", "last", "convnext_tiny", [7] * 4, partial, seed=1)
    data = read_results(path)
    data["settings"]["scoring"] = {"decode": "gpu", "precision": "bf16-mixed", "on_bad_image": "skip"}
    write_results(path, data)
    written = build_report([tmp_path / "runs"], tmp_path / "report")
    (row,) = written["rows"]
    assert row.stats["imagenet_a/top1"].n == 1 and row.stats["imagenet_a/top1"].mean == 10.0  # not (10 + 50) / 2
    assert row.stats["imagenet_r/top1"].n == 2 and row.stats["imagenet_r/top1"].mean == 35.0
    assert written["notes"] == [f"{path}: imagenet_a (2 unreadable images skipped) left out of the tables: scored on "
                                "fewer images than the benchmark, not comparable with complete runs",
                                f"{path}: scored with decode gpu, precision bf16-mixed; differs slightly from "
                                "CPU-decoded 32-true scoring (docs/robustness.md)"]
    assert written["notes"][0] in (tmp_path / "report" / "report.md").read_text()
