"""`lk_ablate report`: the ERF heat maps of every run (ordered by kernel size, one colour scale), the area-ratio table
and plot against kernel size, shape bias against kernel size."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lk_ablate
import lk_ablate.report.receptive as receptive
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.common import write_analysis_result
from lk_ablate.analysis.shape_bias import tally
from lk_ablate.base.results import make_results, write_results
from lk_ablate.report.build import build_report


def _run(folder, k, seed, x, shape_rows):
    folder.mkdir(parents=True)
    path = folder / "last.robustness.json"
    write_results(path, make_results(model_name="convnext_demo", kernel_sizes=[k] * 4, num_params=1,
                                     model_config={}, weights={"raw": {}}, settings={"seed": seed}, errors=[],
                                     global_step=100))
    torch.manual_seed(seed)
    model = lk_ablate.create_model("convnext_demo", kernel_size=k).eval()
    erf = run_analyses(model, {"erf": {"image_size": 64, "num_images": 2, "chunk": 2}}, [(x, torch.zeros(2))],
                       model.model_config, results_path=path)["erf"]
    result = {"analysis": "shape_bias", "config": {}, "protocol": "model", **tally(shape_rows)}
    result["summary_scalars"] = lk_ablate.analysis.get_analysis("shape_bias").summary(result)
    write_analysis_result(path, "shape_bias", result)
    return erf, result


@pytest.mark.slow
def test_report_draws_erf_maps_by_kernel_size_and_tabulates_area_and_shape_bias(tmp_path, monkeypatch):
    x = torch.randn(2, 3, 64, 64)
    rows = {13: [("cat", "dog", "cat")] * 3 + [("cat", "dog", "dog")],  # shape bias 75%
            3: [("cat", "dog", "dog")] * 3 + [("cat", "dog", "cat")] + [("dog", "dog", "dog")],  # 25%, one left out
            7: [("cat", "dog", "cat"), ("cat", "dog", "dog")]}  # 50%
    erf = {}
    for k in (13, 3, 7):  # written out of order: the figure and the tables sort by kernel size
        erf[k], _ = _run(tmp_path / "runs" / f"k{k}", k, 0, x, rows[k])
    (tmp_path / "runs" / "k7" / "last.robustness.erf.npz").rename(tmp_path / "moved.npz")
    titles = []
    draw = receptive.draw_map
    monkeypatch.setattr(receptive, "draw_map", lambda ax, m, rescale, title: titles.append(title) or
                        draw(ax, m, rescale, title))
    written = build_report([tmp_path / "runs"], tmp_path / "report")
    assert [t.split("\n")[0] for t in titles] == ["convnext_demo k3 s0", "convnext_demo k13 s0"]  # k7's map is gone
    for name in ("erf_maps.png", "erf_area_ratio.png", "shape_bias.png", "analysis_erf.png", "analysis_shape_bias.png"):
        assert (tmp_path / "report" / name).is_file(), name
    md = (tmp_path / "report" / "report.md").read_text()
    assert any("k7/last.robustness.json: its erf entry's map (last.robustness.erf.npz) is not beside it" in n
               for n in written["notes"])
    section = md[md.index("## Effective receptive field"):md.index("## Shape bias")]
    table = [line for line in section.splitlines() if line.startswith("| convnext_demo")]
    assert [line.split("|")[2].strip() for line in table] == ["3", "7", "13"]
    for line, k in zip(table, (3, 7, 13)):
        cells = [c.strip() for c in line.split("|")[4:-1]]
        want = [f"{p['side']} / {100 * p['area_ratio']:.2f}" for p in erf[k]["thresholds"]]
        assert cells == want
    assert "![ERF heat maps](erf_maps.png)" in section
    assert "![ERF area ratio vs kernel size](erf_area_ratio.png)" in section
    shape = md[md.index("## Shape bias"):md.index("## Runs")]
    cells = re.finditer(r"\| convnext_demo \| (\d+) \| 0 \| ([\d.]+) \|", shape)
    got = {int(m.group(1)): float(m.group(2)) for m in cells}
    assert got == {3: 25.0, 7: 50.0, 13: 75.0}
    assert "![shape bias vs kernel size](shape_bias.png)" in shape
    assert "![shape bias per category](analysis_shape_bias.png)" in shape
    assert "![ERF area ratio vs threshold](analysis_erf.png)" in section
    assert "## Analyses (scalar summaries)" not in md  # erf and shape_bias have their own sections


def test_erf_columns_keep_protocols_apart(tmp_path):
    from lk_ablate.report.runs import aggregate, load_runs

    x = torch.randn(2, 3, 64, 64)
    _run(tmp_path / "a", 3, 0, x, [("cat", "dog", "cat")])
    path = tmp_path / "a" / "last.robustness.json"
    model = lk_ablate.create_model("convnext_demo", kernel_size=3).eval()
    # an entry scored under protocol paper gets its own columns (here it replaces the model-protocol one)
    entry = run_analyses(model, {"erf": {"image_size": 64, "num_images": 2}}, [(x, torch.zeros(2))],
                         model.model_config)["erf"]
    entry.pop("arrays")
    write_analysis_result(path, "erf", dict(entry, protocol="paper"))
    runs, _ = load_runs([tmp_path])
    cols = receptive.erf_columns(aggregate(runs))
    assert list(cols) == ["paper"]
    assert [c[0] for c in cols["paper"]] == ["20", "30", "50", "99"]
    assert cols["paper"][0][1:] == ("analysis/erf@paper.area_t20", "analysis/erf@paper.side_t20")
    assert np.isfinite(aggregate(runs)[0].stats["analysis/erf@paper.area_t20"].mean)


@pytest.mark.slow
def test_erf_and_shape_bias_scalars_are_the_dashboards_analysis_keys():
    """`analyze --wandb` logs the two analyses' scalars under the keys base/metric_keys.py declares, and the
    dashboard's Analyses section charts exactly those keys (nothing else, none left out)."""
    from lk_ablate.analysis import get_analysis
    from lk_ablate.base.metric_keys import erf_keys, shape_bias_keys
    from lk_ablate.report.dashboard import DashboardOptions, build_dashboard, referenced_keys, spec
    from lk_ablate.training.wandb import analysis_summary

    erf = {"protocol": "model", "thresholds": [{"threshold": 0.2, "side": 33, "area_ratio": 0.0010},
                                               {"threshold": 0.3, "side": 41, "area_ratio": 0.0016},
                                               {"threshold": 0.5, "side": 55, "area_ratio": 0.0029},
                                               {"threshold": 0.99, "side": None, "area_ratio": None}]}
    erf["summary_scalars"] = get_analysis("erf").summary(erf)
    shape = {"protocol": "paper", **tally([("cat", "dog", "cat")] * 3 + [("cat", "dog", "dog"), ("dog", "dog", "dog")])}
    shape["summary_scalars"] = get_analysis("shape_bias").summary(shape)
    logged = analysis_summary({"erf": erf, "shape_bias": shape})
    assert logged == {"analysis/erf/area_t20": 0.1, "analysis/erf/side_t20": 33.0, "analysis/erf/area_t30": 0.16,
                      "analysis/erf/side_t30": 41.0, "analysis/erf/area_t50": 0.29, "analysis/erf/side_t50": 55.0,
                      "analysis/shape_bias@paper/shape_bias": 75.0, "analysis/shape_bias@paper/shape_accuracy": 60.0,
                      "analysis/shape_bias@paper/texture_accuracy": 20.0}  # t=0.99 reached no square: not logged
    declared = set(erf_keys()) | set(shape_bias_keys("paper"))
    assert set(logged) | {"analysis/erf/area_t99", "analysis/erf/side_t99"} == declared
    keys = referenced_keys(spec(build_dashboard(DashboardOptions(entity="e", project="p",
                                                                 analysis_keys=sorted(logged)))))
    assert {k for k in keys["summary"] if k.startswith("analysis/")} == set(logged)
