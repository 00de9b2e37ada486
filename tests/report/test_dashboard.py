"""``lk_ablate dashboard`` without network: the dry-run spec (stable, what docs/report.md shows), what is sent to W&B
(every GraphQL request intercepted by wandb_fake.FakeBackend: entity, project, view and report names, sections, panel
types, metric keys, grouping, filters), create-then-update in place, and the one-line failures."""
import copy
import json

import pytest
import wandb

from lk_ablate.base.errors import ConfigError
from lk_ablate.cli import main
from lk_ablate.report.dashboard import (DEFAULT_NAME, PLACEHOLDERS, DashboardOptions, build_dashboard, listing, spec,
                                        view_name)

from wandb_fake import FakeBackend, install, run_node

IMAGENET_PANELS = [  # (benchmark, metric) of the robustness sections, in order
    ("imagenet_val", "top1"), ("imagenet_val", "top5"), ("imagenet_a", "top1"), ("imagenet_r", "top1"),
    ("imagenet_c", "mean_top1"), ("imagenet_c", "severity5_mean_top1"), ("imagenet_c", "mce"),
    ("imagenet_c", "relative_mce"), ("imagenet_o", "aupr")]
C_19 = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
        "speckle_noise", "gaussian_blur", "spatter", "saturate"]
GROUPING = [{"section": "run", "name": "group"}, {"section": "config", "name": "kernel_label.value"}]


def _sections(sent):
    return {s["name"]: s["panels"] for s in sent["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]}


def _dry_run(tmp_path, capsys, name, *args):
    out = tmp_path / name
    assert main(["dashboard", "--wandb.entity", "team", "--wandb.project", "ablation", "--dry_run", "true",
                 "--output_path", str(out), *args]) == 0
    return out, capsys.readouterr().out


def test_dry_run_spec_is_stable_and_names_every_panel(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: pytest.fail("the dry run used the W&B API"))
    first, printed = _dry_run(tmp_path, capsys, "a.json")
    second, _ = _dry_run(tmp_path, capsys, "b.json")
    assert first.read_bytes() == second.read_bytes()  # panel and run-set ids are derived, not random
    sent = json.loads(first.read_text())
    assert printed == listing(sent) + f"\nspec: {first} (dry run: nothing sent; the values only W&B knows are " \
                                      "placeholders)\n"

    w = sent["workspace"]
    assert (w["entity"], w["project"], w["displayName"], w["name"], w["id"], w["type"]) == \
        ("team", "ablation", DEFAULT_NAME, view_name(DEFAULT_NAME), PLACEHOLDERS["view_id"], "project-view")
    assert view_name(DEFAULT_NAME) == view_name("Kernel-size ablation") != view_name("other")
    section = w["spec"]["section"]
    rs = section["runSets"][0]
    assert rs["grouping"] == GROUPING
    assert [(f["key"], f["op"], f["value"]) for f in rs["filters"]["filters"]] == \
        [({"section": "run", "name": "jobType"}, "=", "train")]
    assert (section["settings"]["xAxis"], section["settings"]["maxRuns"]) == ("trainer/global_step", 200)

    panels = _sections(sent)
    assert list(panels) == ["Training", "Robustness vs kernel size (EMA weights)",
                            "Robustness vs kernel size (raw weights)", "IN-C by corruption", "Analyses", "Runs"]
    training = panels["Training"]
    assert [(p["viewType"], p["config"]["metrics"], p["config"]["xAxis"], p["config"]["groupAgg"],
             p["config"]["groupArea"]) for p in training] == [
        ("Run History Line Plot", [k], "trainer/global_step", "mean", "minmax")
        for k in ("val/top1", "val/ema_top1", "train/loss", "train/lr")]
    for ema, sec in ((True, "Robustness vs kernel size (EMA weights)"),
                     (False, "Robustness vs kernel size (raw weights)")):
        assert [(p["viewType"], p["config"]["xAxis"], p["config"]["yAxis"], p["config"]["showAvgYAxisLine"])
                for p in panels[sec]] == [
            ("Scatter Plot", "config:kernel_max.value", f"summary:robust/{b}/{m}{'_ema' if ema else ''}", True)
            for b, m in IMAGENET_PANELS]
    assert [(p["viewType"], p["config"]["metrics"]) for p in panels["IN-C by corruption"]] == [
        ("Bar Chart", [f"robust/imagenet_c/top1_{c}_ema"]) for c in C_19]
    assert [p["viewType"] for p in panels["Analyses"]] == ["Markdown Panel"]  # filled in online
    coords, comparer = panels["Runs"]
    assert [c["accessor"] for c in coords["config"]["columns"]] == [
        "config:kernel_max.value", "config:seed_everything.value", "summary:val/ema_top1",
        "summary:robust/imagenet_val/top1_ema", "summary:robust/imagenet_a/top1_ema",
        "summary:robust/imagenet_r/top1_ema", "summary:robust/imagenet_c/severity5_mean_top1_ema",
        "summary:robust/imagenet_o/aupr_ema"]
    assert (coords["viewType"], comparer["viewType"], comparer["config"]) == \
        ("Parallel Coordinates Plot", "Run Comparer", {"diffOnly": "split"})

    # The report: the same panels, one grid per section, every run set on the project (its id looked up online).
    r = sent["report"]
    assert (r["entity"], r["project"], r["displayName"], r["id"], r["type"]) == \
        ("team", "ablation", DEFAULT_NAME, PLACEHOLDERS["report_id"], "runs")
    grids = [b for b in r["spec"]["blocks"] if b["type"] == "panel-grid"]
    assert [[p["config"] for p in g["metadata"]["panelBankSectionConfig"]["panels"]] for g in grids] == \
        [[p["config"] for p in ps] for ps in panels.values()]
    for g in grids:
        (runset,) = g["metadata"]["runSets"]
        assert runset["project"] == {"name": "ablation", "entityName": "team", "id": PLACEHOLDERS["project_id"]}
        assert (runset["grouping"], runset["filters"]) == (rs["grouping"], rs["filters"])
    headings = ["".join(c["text"] for c in b["children"]) for b in r["spec"]["blocks"] if b["type"] == "heading"]
    assert headings == [*panels, "Ablation table"]


def test_dry_run_options(tmp_path, capsys, monkeypatch):
    """Groups, tags and job type filter the runs; --benchmarks picks the robustness panels (the demo's); --weights
    ema drops the raw section; the report's table block comes from --report_path; no entity: a placeholder."""
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    report_md = tmp_path / "report.md"
    report_md.write_text("# Kernel-size ablation report\n\n| model | kernel |\n|---|---|\n| convnext_demo | 3 |\n"
                         "![FM top-1](fashion_mnist_top1.png)\n")
    out = tmp_path / "d.json"
    assert main(["dashboard", "--wandb.project", "demo", "--wandb.group", "convnext_demo-kernel",
                 "--wandb.tags", "[k3,k13]", "--wandb.job_type", "null", "--benchmarks",
                 "[fashion_mnist,fashion_mnist_c]", "--weights", "ema", "--name", "Demo", "--report_path",
                 str(report_md), "--dry_run", "true", "--output_path", str(out)]) == 0
    sent = json.loads(out.read_text())
    assert sent["workspace"]["entity"] == PLACEHOLDERS["entity"] and sent["workspace"]["name"] == view_name("Demo")
    filters = sent["workspace"]["spec"]["section"]["runSets"][0]["filters"]["filters"]
    assert [(f["key"]["name"], f["op"], f["value"]) for f in filters] == [
        ("group", "IN", ["convnext_demo-kernel"]), ("tags", "IN", ["k3", "k13"])]
    panels = _sections(sent)
    assert list(panels) == ["Training", "Robustness vs kernel size (EMA weights)", "Fashion-MNIST-C by corruption",
                            "Analyses", "Runs"]
    assert [p["config"]["yAxis"] for p in panels["Robustness vs kernel size (EMA weights)"]] == [
        "summary:robust/fashion_mnist/top1_ema", "summary:robust/fashion_mnist_c/mean_top1_ema",
        "summary:robust/fashion_mnist_c/relative_mce_ema", "summary:robust/fashion_mnist_c/clean_top1_subset_ema"]
    assert len(panels["Fashion-MNIST-C by corruption"]) == 15
    assert [p["config"]["metrics"] for p in panels["Training"]] == [["val/top1"], ["val/ema_top1"], ["train/loss"],
                                                                      ["train/lr"]]
    raw = spec(build_dashboard(DashboardOptions(entity="e", project="p", weights="raw")))  # e.g. the demo: no EMA
    assert [p["config"]["metrics"] for p in _sections(raw)["Training"]] == [["val/top1"], ["train/loss"], ["train/lr"]]
    table = [b for b in sent["report"]["spec"]["blocks"] if b["type"] == "markdown-block"][-1]["content"]
    assert table == "| model | kernel |\n|---|---|\n| convnext_demo | 3 |"  # no title, no image lines


@pytest.mark.parametrize("argv,message", [
    (["--benchmarks", "[imagenet_x]"], "unknown benchmark(s) ['imagenet_x'] in --benchmarks"),
    (["--name", " "], "--name is empty"),
    (["--report_path", "missing.md"], "--report_path missing.md: no such file"),
])
def test_bad_options_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["dashboard", "--wandb.project", "p", "--dry_run", "true", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lk_ablate: error: ") and message in err[0], err
    assert not (tmp_path / "dashboard.json").exists()


def _runs():
    return [run_node("convnext_tiny-k31-s0", "convnext_tiny-kernel", {"kernel_max": 31, "kernel_label": "31"},
                     {"val/top1": 80.1, "robust/imagenet_a/top1_ema": 20.5, "analysis/occlusion/random_mean": 50.0,
                      "analysis/kernel_distance/mean": 0.7}),
            run_node("convnext_tiny-k7-s0", "convnext_tiny-kernel", {}, {"val/top1": 79.0})]  # logged before kernel_max


def _without_analyses(sent):
    """The spec without the Analyses section and grid: the one part the online lookup fills in."""
    sent = copy.deepcopy(sent)
    sec = sent["workspace"]["spec"]["section"]["panelBankConfig"]
    sec["sections"] = [s for s in sec["sections"] if s["name"] != "Analyses"]
    blocks = sent["report"]["spec"]["blocks"]
    i = next(i for i, b in enumerate(blocks) if b["type"] == "heading" and b["children"][0]["text"] == "Analyses")
    del blocks[i:i + 3]
    return sent


def test_online_creates_then_updates_in_place(tmp_path, capsys, monkeypatch):
    backend = FakeBackend(runs=_runs())
    install(monkeypatch, backend)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    dry, _ = _dry_run(tmp_path, capsys, "dry.json")
    sent_path = tmp_path / "sent.json"
    assert main(["dashboard", "--wandb.project", "ablation", "--output_path", str(sent_path)]) == 0
    out, err = capsys.readouterr()
    view_url = f"https://wandb.test/team/ablation?nw={view_name(DEFAULT_NAME)[3:-2]}"
    assert out.splitlines() == [f"view created: {view_url}",
                                "report created: https://wandb.test/team/ablation/reports/Kernel-size-ablation--view-2",
                                "2 run(s) selected", f"spec: {sent_path}"]
    assert "note: 1 of 2 run(s) have no kernel_max in their config" in err
    assert [op for op, _ in backend.calls] == ["ProjectInternalId", "LkAblateRuns", "LkAblateView", "LkAblateReports",
                                               "UpsertView2", *["ProjectInternalId"] * 6, "upsertView"]
    (runs_query,) = backend.ops("LkAblateRuns")
    assert (runs_query["entityName"], runs_query["projectName"], json.loads(runs_query["filters"])) == \
        ("team", "ablation", {"$and": [{"jobType": "train"}]})
    (view,) = backend.ops("UpsertView2")
    assert "id" not in view  # created
    assert (view["entityName"], view["projectName"], view["name"], view["displayName"], view["type"]) == \
        ("team", "ablation", view_name(DEFAULT_NAME), DEFAULT_NAME, "project-view")
    (report,) = backend.ops("upsertView")
    assert (report["id"], report["entityName"], report["projectName"], report["displayName"], report["type"]) == \
        (None, "team", "ablation", DEFAULT_NAME, "runs")

    # What was sent is the spec of the same options with the looked-up values: the project's internal id, and one
    # scatter per analysis key the runs have ...
    expected = spec(build_dashboard(DashboardOptions(entity="team", project="ablation", analysis_keys=[
        "analysis/kernel_distance/mean", "analysis/occlusion/random_mean"])), project_id="internal-0", view_id="",
        report_id="")
    assert json.loads(view["spec"]) == expected["workspace"]["spec"]
    assert json.loads(report["spec"]) == expected["report"]["spec"]
    assert [p["config"]["yAxis"] for p in _sections(expected)["Analyses"]] == [
        "summary:analysis/kernel_distance/mean", "summary:analysis/occlusion/random_mean"]
    saved = json.loads(sent_path.read_text())
    assert (saved["workspace"]["id"], saved["report"]["id"]) == ("view-1", "view-2")
    # ... and, but for the Analyses section, the dry run's spec with its placeholders filled in.
    text = dry.read_text().replace(PLACEHOLDERS["project_id"], "internal-0")
    text = text.replace(PLACEHOLDERS["view_id"], "view-1").replace(PLACEHOLDERS["report_id"], "view-2")
    assert _without_analyses(json.loads(text)) == _without_analyses(saved)

    # The second call finds both by name and title and saves them under their ids: nothing new.
    backend.calls.clear()
    assert main(["dashboard", "--wandb.project", "ablation"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"view updated: {view_url}",
        "report updated: https://wandb.test/team/ablation/reports/Kernel-size-ablation--view-2"]
    assert [v.get("id") for v in backend.ops("UpsertView2", "upsertView")] == ["view-1", "view-2"]
    assert sorted(backend.views) == ["view-1", "view-2"]
    # Another name is another view and report.
    assert main(["dashboard", "--wandb.project", "ablation", "--name", "ConvNeXt only",
                 "--wandb.group", "[convnext_tiny-kernel]"]) == 0
    assert sorted(backend.views) == ["view-1", "view-2", "view-3", "view-4"]
    assert backend.views["view-3"]["name"] == view_name("ConvNeXt only")


def test_report_lookup_takes_the_newest_of_several_titles(capsys, monkeypatch):
    backend = FakeBackend()
    backend.views = {"old": {"type": "runs", "name": "a", "displayName": DEFAULT_NAME, "updatedAt": "2026-01-01"},
                     "new": {"type": "runs", "name": "b", "displayName": DEFAULT_NAME, "updatedAt": "2026-06-01"},
                     "x": {"type": "runs", "name": "c", "displayName": "another report", "updatedAt": "2026-09-01"}}
    install(monkeypatch, backend)
    assert main(["dashboard", "--wandb.entity", "team", "--wandb.project", "ablation", "--weights", "raw"]) == 0
    assert [v.get("id") for v in backend.ops("upsertView")] == ["new"]
    err = capsys.readouterr().err
    assert "2 reports of team/ablation are titled 'Kernel-size ablation': updating the most recently updated one " \
           "(new)" in err
    assert "no run of team/ablation matches the filter yet" in err


def _one_line_error(capsys, argv):
    """The failure is one line (after any "W&B: ..." progress lines), no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("W&B: ")]
    assert len(lines) == 1 and lines[0].startswith("lk_ablate: error: ") and "Traceback" not in err, err
    return lines[0]


def test_offline_mode_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: pytest.fail("the W&B API was used"))
    for mode in ("offline", "disabled"):
        monkeypatch.setenv("WANDB_MODE", mode)
        line = _one_line_error(capsys, ["dashboard", "--wandb.project", "p", "--output_path", "spec.json"])
        assert f"WANDB_MODE={mode}: a W&B dashboard is saved through the online W&B API" in line
        assert "--dry_run" in line
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def test_no_credentials_or_network_name_wandb_login_and_the_dry_run(capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def no_key(*a, **k):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "Api", no_key)
    line = _one_line_error(capsys, ["dashboard", "--wandb.project", "p"])
    assert "no W&B credentials" in line and "`wandb login`" in line and "--dry_run" in line

    def unreachable(*a, **k):
        raise wandb.errors.AuthenticationError("Failed to verify credentials with https://api.wandb.ai: timed out\n"
                                               "more detail")

    monkeypatch.setattr(wandb, "Api", unreachable)
    line = _one_line_error(capsys, ["dashboard", "--wandb.project", "p"])
    assert "W&B is out of reach or refused the credentials (Failed to verify credentials with " \
           "https://api.wandb.ai: timed out)" in line and "`wandb login`" in line and "--dry_run" in line


def test_missing_project_and_wandb_errors_are_one_line(capsys, monkeypatch):
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError

    backend = FakeBackend()
    install(monkeypatch, backend)
    line = _one_line_error(capsys, ["dashboard", "--wandb.entity", "team", "--wandb.project", "nope"])
    assert "W&B has no project team/nope (or this login cannot see it)" in line
    assert backend.ops("UpsertView2", "upsertView") == []  # nothing saved, no project created (FakeApi refuses)

    backend.fail["UpsertView2"] = WandbApiFailedError("403 Forbidden: permission denied on team/ablation\ntrace")
    line = _one_line_error(capsys, ["dashboard", "--wandb.entity", "team", "--wandb.project", "ablation"])
    assert line == "lk_ablate: error: W&B answered saving the view with: 403 Forbidden: permission denied on " \
                   "team/ablation"
    backend.fail = {"ProjectInternalId": WandbApiFailedError("entity 'nobody' not found")}
    line = _one_line_error(capsys, ["dashboard", "--wandb.entity", "nobody", "--wandb.project", "ablation"])
    assert line == "lk_ablate: error: W&B answered the project lookup with: entity 'nobody' not found"


def test_options_are_checked_before_any_request(monkeypatch):
    backend = FakeBackend()
    install(monkeypatch, backend)
    with pytest.raises(ConfigError, match=r"--weights both_raw"):
        DashboardOptions(entity="e", project="p", weights="both_raw")
    assert main(["dashboard", "--wandb.project", "ablation", "--benchmarks", "[imagenet_x]"]) == 2
    assert backend.calls == []


@pytest.mark.slow
def test_report_creates_the_dashboard_with_its_table(tmp_path, capsys, monkeypatch):
    """`lk_ablate report --wandb.project P --wandb.dashboard true`: the report's W&B run (tested offline in
    test_report.py) and the project's dashboard, its robustness panels for the report's benchmarks, its table block
    the report.md just written."""
    from test_report import table7_runs

    import lk_ablate.report.build as build

    logged = []
    monkeypatch.setattr(build, "log_to_wandb", lambda *a, **k: logged.append((a, k)) or "report-run")
    backend = FakeBackend()
    install(monkeypatch, backend)
    table7_runs(tmp_path / "runs")
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs"), "--output_dir", str(out), "--wandb.project", "ablation",
                 "--wandb.entity", "team", "--wandb.dashboard", "true"]) == 0
    assert len(logged) == 1
    lines = capsys.readouterr().out.splitlines()
    view_url = f"https://wandb.test/team/ablation?nw={view_name(DEFAULT_NAME)[3:-2]}"
    assert lines[-2:] == [f"dashboard view created: {view_url}",
                          "dashboard report created: https://wandb.test/team/ablation/reports/"
                          "Kernel-size-ablation--view-2"]
    (view,) = backend.ops("UpsertView2")
    sections = {s["name"]: s["panels"] for s in json.loads(view["spec"])["section"]["panelBankConfig"]["sections"]}
    assert [p["config"]["yAxis"] for p in sections["Robustness vs kernel size (EMA weights)"]] == [
        f"summary:robust/{b}/{m}_ema" for b, m in IMAGENET_PANELS if b != "imagenet_c"]  # Table 7 has no ImageNet-C
    (report,) = backend.ops("upsertView")
    table = [b for b in json.loads(report["spec"])["blocks"] if b["type"] == "markdown-block"][-1]["content"]
    md = (out / "report.md").read_text()
    assert table == "\n".join(ln for ln in md.splitlines()[1:] if not ln.startswith("![")).strip()
    assert "| convnext_tiny | 31 | 0, 1, 2 |" in table


def test_report_dashboard_offline_fails_before_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    line = _one_line_error(capsys, ["report", str(tmp_path), "--output_dir", str(tmp_path / "rep"), "--wandb.project", "p",
                                    "--wandb.dashboard", "true"])
    assert "WANDB_MODE=offline" in line and not (tmp_path / "rep").exists()
