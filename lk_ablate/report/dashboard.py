"""The W&B dashboard of a kernel-size ablation, as code: a saved workspace view and a W&B Report.

Both are built with W&B's own ``wandb-workspaces`` library from the keys in :mod:`lk_ablate.base.metric_keys`, so
every panel names a key the framework logs. Sections (the Report has the same panels, one panel grid per section,
with short text and the ablation report's table):

- **Training**: ``val/top1``, ``val/ema_top1``, ``train/loss``, ``train/lr`` against ``trainer/global_step``;
- **Robustness vs kernel size** (EMA weights, then raw weights): one scatter chart per benchmark metric, x the run
  config's ``kernel_max`` (the largest stage kernel, so per-stage kernels have a place on the axis), with the mean
  line over runs;
- **<benchmark> by corruption** (ImageNet-C, Fashion-MNIST-C): one bar chart per corruption (top-1, mean over the
  scored severities);
- **Analyses**: one scatter chart per ``analysis/<name>/<scalar>`` key the selected runs have (looked up online);
- **Runs**: parallel coordinates (kernel, seed -> headline metrics) and a run comparer.

The runs are the project's training runs (job type ``train``; optionally only some W&B groups or tags), grouped by
W&B group (one per ablation family, ``<family>-kernel``) and then ``kernel_label``: the seeds of one kernel size of
one family are one group, drawn as one line with a min-max band (training curves) or one bar (corruptions).

:func:`spec` is what would be sent, as JSON, with the values only the W&B API knows (the project's internal id, the
ids of an existing view and report, the analysis keys) as placeholders; ``report/dashboard_wandb.py`` fills them in
and saves. Panel and run-set ids are derived from the dashboard's name, so the spec is the same on every call.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr
from wandb_workspaces.reports.v2 import internal

from ..base.errors import ConfigError
from ..base.metric_keys import (BENCHMARK_METRICS, CONFIG_KERNEL_LABEL, CONFIG_KERNEL_MAX, CONFIG_SEED,
                                CORRUPTION_BENCHMARKS, IMAGENET_BENCHMARKS, STEP, TRAIN_LOSS, TRAIN_LR, VAL_EMA_TOP1,
                                VAL_TOP1, corruption_key, robust_key)
from ..robustness.names import ALL_CORRUPTIONS, CORRUPTIONS
from .labels import DASHBOARD_NAME, bench_label, metric_label

__all__ = ["DEFAULT_NAME", "IMAGENET_BENCHMARKS", "PLACEHOLDERS", "Dashboard", "DashboardOptions",
           "build_dashboard", "listing", "referenced_keys", "spec", "view_name"]

DEFAULT_NAME = DASHBOARD_NAME
# Each benchmark's headline metric (the parallel-coordinates axes): the paper's ImageNet-C number is the mean top-1
# over the 19 corruptions at severity 5.
HEADLINE = {"imagenet_c": "severity5_mean_top1"}
CORRUPTION_NAMES = {"imagenet_c": ALL_CORRUPTIONS, "fashion_mnist_c": CORRUPTIONS}
# Values the dry run cannot know; the online path looks them up.
PLACEHOLDERS = {"project_id": "<project internal id: looked up online>",
                "view_id": "<id of the saved view of this name, if one exists: looked up online>",
                "report_id": "<id of the report with this title, if one exists: looked up online>",
                "entity": "<your default W&B entity: looked up online>"}
GROUP_BY = ("Group", CONFIG_KERNEL_LABEL)  # run attribute, config key
MAX_RUNS = 200  # W&B draws 10 runs/groups per panel unless told otherwise
_PANELS_PER_ROW = 3


@dataclass
class DashboardOptions:
    """What the dashboard shows.

    Args:
        entity, project: where the runs are (and where the view and report are saved).
        name: the view's name and the report's title; the view's internal name is derived from it.
        groups: only runs of these W&B groups (default: every group).
        tags: only runs carrying at least one of these tags (default: no tag filter).
        job_type: only runs of this job type (default ``train``, the framework's training runs; None: every run).
        benchmarks: the benchmarks whose robustness panels are drawn (names of ``metric_keys.BENCHMARK_METRICS``).
        weights: ``both`` (EMA and raw sections), ``ema`` or ``raw``; the corruption and parallel-coordinates
            panels use EMA unless ``raw``.
        report: also build the W&B Report.
        report_markdown: the ablation report's Markdown (``report.md`` of ``lk_ablate report``), shown as a block.
        analysis_keys: the ``analysis/...`` summary keys to chart; None: not looked up (the dry run).
    """

    entity: str
    project: str
    name: str = DEFAULT_NAME
    groups: Sequence[str] = ()
    tags: Sequence[str] = ()
    job_type: str | None = "train"
    benchmarks: Sequence[str] = IMAGENET_BENCHMARKS
    weights: str = "both"
    report: bool = True
    report_markdown: str | None = None
    analysis_keys: Sequence[str] | None = None

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARK_METRICS]
        if unknown:
            raise ConfigError(f"unknown benchmark(s) {unknown} in --benchmarks; choose from "
                              f"{', '.join(BENCHMARK_METRICS)}")
        if self.weights not in ("both", "ema", "raw"):
            raise ConfigError(f"--weights {self.weights}: a dashboard shows both, ema or raw weights")
        if not self.name.strip():
            raise ConfigError("--name is empty: give the dashboard a name (the view's name and the report's title)")
        if len(self.name) > 128:
            raise ConfigError(f"--name is {len(self.name)} characters; W&B report titles take at most 128")
        self.groups, self.tags, self.benchmarks = tuple(self.groups), tuple(self.tags), tuple(self.benchmarks)
        if self.analysis_keys is not None:
            self.analysis_keys = tuple(self.analysis_keys)


@dataclass
class Dashboard:
    options: DashboardOptions
    workspace: ws.Workspace
    report: wr.Report | None
    sections: list[tuple[str, str]] = field(default_factory=list)  # (section name, its text in the report)


# --- names and ids -------------------------------------------------------------------------------------------------
def _digest(*parts: str) -> int:
    return int(hashlib.sha1("\x1f".join(parts).encode()).hexdigest(), 16)


def _stable_id(*parts: str, length: int = 11) -> str:
    """A panel / run-set id like the library's random ones (base 36), derived from ``parts``."""
    n, digits = _digest(*parts), "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while len(out) < length:
        n, r = divmod(n, 36)
        out += digits[r]
    return out


def view_name(name: str) -> str:
    """The saved view's internal name (``nw-<id>-v``, the ``?nw=<id>`` of its URL), derived from the dashboard's name:
    the same name finds the same view on every call."""
    return f"nw-lk{_stable_id('view', name, length=9)}-v"


# --- panels --------------------------------------------------------------------------------------------------------
def _weight_sets(weights: str) -> list[bool]:
    return {"both": [True, False], "ema": [True], "raw": [False]}[weights]


def _weights_name(ema: bool) -> str:
    return "EMA" if ema else "raw"


def _training_panels(weights: str) -> list[Any]:
    def line(key: str, title: str) -> wr.LinePlot:
        return wr.LinePlot(title=title, x=STEP, y=[key], groupby_aggfunc="mean", groupby_rangefunc="minmax",
                           max_runs_to_show=MAX_RUNS)

    ema = [line(VAL_EMA_TOP1, "val top-1 (%), EMA weights")] if weights != "raw" else []  # runs without EMA
    return [line(VAL_TOP1, "val top-1 (%), raw weights"), *ema, line(TRAIN_LOSS, "training loss"),
            line(TRAIN_LR, "learning rate")]


def _kernel_scatter(y: str, title: str) -> wr.ScatterPlot:
    return wr.ScatterPlot(title=title, x=wr.Config(CONFIG_KERNEL_MAX), y=wr.SummaryMetric(y), running_ymean=True)


def _robustness_panels(benchmarks: Sequence[str], ema: bool) -> list[Any]:
    return [_kernel_scatter(robust_key(b, m, ema), f"{metric_label(b, m)} ({_weights_name(ema)})")
            for b in benchmarks for m in BENCHMARK_METRICS[b]]


def _corruption_panels(bench: str, ema: bool) -> list[Any]:
    return [wr.BarPlot(title=f"{bench_label(bench)} {c}: top-1 (%), mean over severities ({_weights_name(ema)})",
                       metrics=[corruption_key(bench, c, None, ema)], groupby_aggfunc="mean",
                       groupby_rangefunc="minmax", max_runs_to_show=MAX_RUNS)
            for c in CORRUPTION_NAMES[bench]]


def _analysis_panels(keys: Sequence[str] | None) -> list[Any]:
    if keys is None:
        return [wr.MarkdownPanel(markdown="Filled in online: one chart against `kernel_max` per `analysis/<name>/"
                                          "<scalar>` summary key of the selected runs (`lk_ablate analyze ... "
                                          "--wandb` logs them).")]
    if not keys:
        return [wr.MarkdownPanel(markdown="No selected run has analysis scalars yet: run `lk_ablate analyze NAME "
                                          "--ckpt_path CKPT --wandb` on the runs' checkpoints, then `lk_ablate "
                                          "dashboard` again.")]
    return [_kernel_scatter(k, k.removeprefix("analysis/")) for k in keys]


def _runs_panels(benchmarks: Sequence[str], ema: bool) -> list[Any]:
    cols = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(CONFIG_KERNEL_MAX), display_name="kernel (largest)"),
            wr.ParallelCoordinatesPlotColumn(metric=wr.Config(CONFIG_SEED), display_name="seed"),
            wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(VAL_EMA_TOP1 if ema else VAL_TOP1),
                                             display_name=f"val top-1 ({_weights_name(ema)})")]
    for b in benchmarks:
        m = HEADLINE.get(b, BENCHMARK_METRICS[b][0])
        cols.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(robust_key(b, m, ema)),
                                                     display_name=metric_label(b, m)))
    return [wr.ParallelCoordinatesPlot(title="kernel, seed -> headline metrics", columns=cols,
                                       layout=wr.Layout(w=24, h=8)),
            wr.RunComparer(diff_only="split", layout=wr.Layout(w=24, h=10))]


def _sections(opts: DashboardOptions) -> list[tuple[str, str, list[Any], bool]]:
    """(name, text for the report, panels, open in the workspace) of every section."""
    primary = opts.weights != "raw"
    out = [("Training", "Validation top-1 of the raw and the EMA weights, training loss and learning rate against "
                        "the optimizer step; the seeds of one kernel size form one line (mean) with a min-max band.",
            _training_panels(opts.weights), True)]
    for ema in _weight_sets(opts.weights):
        out.append((f"Robustness vs kernel size ({_weights_name(ema)} weights)",
                    f"Every benchmark metric of the {_weights_name(ema)} weights (accuracies, mCE and AUPR in %) "
                    "against the largest stage kernel (`kernel_max`), one point per run, with the mean line.",
                    _robustness_panels(opts.benchmarks, ema), ema == primary))
    for bench in (b for b in CORRUPTION_BENCHMARKS if b in opts.benchmarks):
        out.append((f"{bench_label(bench)} by corruption",
                    f"Top-1 per corruption (mean over the scored severities, {_weights_name(primary)} weights), "
                    "one bar per (family, kernel size) group, min-max over seeds.",
                    _corruption_panels(bench, primary), False))
    out.append(("Analyses", "The analyses' scalar summaries (docs/analyses.md) against the largest stage kernel.",
                _analysis_panels(opts.analysis_keys), True))
    out.append(("Runs", "Kernel and seed against the headline metrics, and every run's config and summary side by "
                        "side.", _runs_panels(opts.benchmarks, primary), False))
    return out


# --- the runs ------------------------------------------------------------------------------------------------------
def _filters(opts: DashboardOptions) -> expr.And | str:
    items = []
    if opts.job_type:
        items.append(expr.Metric("JobType") == opts.job_type)
    if opts.groups:
        items.append(expr.Metric("Group").isin(list(opts.groups)))
    if opts.tags:
        items.append(expr.Tags().isin(list(opts.tags)))
    return expr.And(*items) if items else ""


def _grid_layout(panels: Sequence[Any]) -> None:
    """Rows of three 8x6 panels (full-width panels keep their width), so report grids need no collision fixing."""
    x = y = row_h = 0
    for p in panels:
        w, h = p.layout.w, p.layout.h
        if x + w > 8 * _PANELS_PER_ROW:
            x, y, row_h = 0, y + row_h, 0
        p.layout = wr.Layout(x=x, y=y, w=w, h=h)
        x, row_h = x + w, max(row_h, h)


def _fix_ids(panels: Sequence[Any], *parts: str) -> None:
    for i, p in enumerate(panels):
        object.__setattr__(p, "_id", _stable_id(*parts, str(i)))


def build_dashboard(opts: DashboardOptions) -> Dashboard:
    """The workspace view and (``opts.report``) the Report, with stable ids; nothing is sent."""
    sections = _sections(opts)
    ws_sections = []
    for name, _, panels, is_open in sections:
        _fix_ids(panels, opts.name, "workspace", name)
        ws_sections.append(ws.Section(name=name, panels=panels, is_open=is_open))
    workspace = ws.Workspace(
        entity=opts.entity, project=opts.project, name=opts.name, sections=ws_sections,
        settings=ws.WorkspaceSettings(x_axis=STEP, max_runs=MAX_RUNS),
        runset_settings=ws.RunsetSettings(filters=_filters(opts),
                                          groupby=[expr.Metric(GROUP_BY[0]), expr.Config(GROUP_BY[1])]))
    object.__setattr__(workspace, "_internal_name", view_name(opts.name))
    report = _report(opts) if opts.report else None
    return Dashboard(opts, workspace, report, [(n, t) for n, t, _, _ in sections])


def _report(opts: DashboardOptions) -> wr.Report:
    runs = ", ".join(filter(None, [f"job type `{opts.job_type}`" if opts.job_type else "every job type",
                                   f"groups {', '.join(f'`{g}`' for g in opts.groups)}" if opts.groups else "",
                                   f"tags {', '.join(f'`{t}`' for t in opts.tags)}" if opts.tags else ""]))
    blocks: list[Any] = [wr.MarkdownBlock(
        text=f"The kernel-size ablation of `{opts.entity}/{opts.project}`: runs of {runs}, grouped by W&B group "
             "(one per model family) and kernel size (`kernel_label`); every kernel axis is the largest stage kernel "
             "(`kernel_max`). Built by `lk_ablate dashboard`; run it again to update this report in place.")]
    for name, text, panels, _ in _sections(opts):
        _fix_ids(panels, opts.name, "report", name)
        _grid_layout(panels)
        runset = wr.Runset(entity=opts.entity, project=opts.project, name="ablation runs", filters=_filters(opts),
                           groupby=["group", f"config.{GROUP_BY[1]}"])
        object.__setattr__(runset, "_id", _stable_id(opts.name, "report", name, "runset"))
        blocks += [wr.H1(text=name), wr.MarkdownBlock(text=text), wr.PanelGrid(runsets=[runset], panels=panels)]
    blocks += [wr.H1(text="Ablation table"), wr.MarkdownBlock(text=_table_text(opts.report_markdown))]
    return wr.Report(entity=opts.entity, project=opts.project, title=opts.name,
                     description="Kernel-size ablation: training, robustness, analyses (lk_ablate dashboard)",
                     blocks=blocks, width="fluid")


def _table_text(markdown: str | None) -> str:
    """The ablation report's Markdown without its title and image lines (the PNGs are not on W&B; the charts above
    draw the same numbers)."""
    if not markdown:
        return ("Not added yet: `lk_ablate report RUNS_DIR --wandb.project P --wandb.dashboard true` (or `lk_ablate "
                "dashboard --report_path report.md`) puts the table of `lk_ablate report` here.")
    lines = [ln for ln in markdown.splitlines() if not ln.startswith("![")]
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip()


# --- what is sent --------------------------------------------------------------------------------------------------
def _json(model: Any) -> Any:
    return json.loads(model.model_dump_json(by_alias=True, exclude_none=True))


def spec(dashboard: Dashboard, project_id: str = PLACEHOLDERS["project_id"], view_id: str = PLACEHOLDERS["view_id"],
         report_id: str = PLACEHOLDERS["report_id"]) -> dict[str, Any]:
    """The view and the report as the W&B API receives them (``upsertView`` variables, ``spec`` parsed), with the
    values only the API knows as the given ids (placeholders by default). No network."""
    opts, view = dashboard.options, dashboard.workspace._to_model()
    out: dict[str, Any] = {
        "workspace": {"entity": view.entity, "project": view.project, "name": view.name,
                      "displayName": view.display_name, "id": view_id, "type": "project-view",
                      "spec": _json(view.spec)}}
    if dashboard.report is not None:
        # Run sets without entity/project serialise without the API; the project (with its internal id) is put back
        # as the library's own lookup (Runset._to_model) would.
        report = copy.deepcopy(dashboard.report)
        for block in report.blocks:
            if isinstance(block, wr.PanelGrid):
                for rs in block.runsets:
                    object.__setattr__(rs, "entity", "")
                    object.__setattr__(rs, "project", "")
        model = report._to_model()
        for block in model.spec.blocks:
            for rs in getattr(getattr(block, "metadata", None), "run_sets", None) or []:
                rs.project = internal.Project(entity_name=opts.entity, name=opts.project, id=project_id)
        out["report"] = {"entity": opts.entity, "project": opts.project, "displayName": model.display_name,
                         "description": model.description, "id": report_id, "type": "runs",
                         "spec": _json(model.spec)}
    return out


# --- reading a spec ------------------------------------------------------------------------------------------------
def _config_path(name: str) -> str:
    """Backend config name (``model.value.kernel_size``, ``kernel_max.value``) -> the logged path."""
    return ".".join(p for p in name.split(".") if p != "value")


def _accessor(acc: str, keys: dict[str, set[str]]) -> None:
    section, _, name = acc.partition(":")
    if section == "config":
        keys["config"].add(_config_path(name))
    elif section == "summary":
        keys["summary"].add(name)


def _panel_keys(panel: Mapping[str, Any], keys: dict[str, set[str]]) -> None:
    cfg = panel.get("config") or {}
    kind = panel.get("viewType")
    if kind == "Run History Line Plot":
        keys["history"].update(cfg.get("metrics") or [])
        if cfg.get("xAxis"):
            keys["history"].add(cfg["xAxis"])
    elif kind == "Scatter Plot":
        for axis in ("xAxis", "yAxis", "zAxis"):
            if cfg.get(axis):
                _accessor(cfg[axis], keys)
    elif kind == "Bar Chart":
        keys["summary"].update(m.removeprefix("summary_metrics.") for m in cfg.get("metrics") or [])
    elif kind == "Parallel Coordinates Plot":
        for col in cfg.get("columns") or []:
            _accessor(col["accessor"], keys)


def _runset_keys(runset: Mapping[str, Any], keys: dict[str, set[str]]) -> None:
    for g in runset.get("grouping") or []:
        if g["section"] == "config":
            keys["config"].add(_config_path(g["name"]))
    for f in (runset.get("filters") or {}).get("filters") or []:
        if (f.get("key") or {}).get("section") == "config":
            keys["config"].add(_config_path(f["key"]["name"]))


def referenced_keys(sent: Mapping[str, Any]) -> dict[str, set[str]]:
    """Every key the spec's panels read: ``history`` (line-plot metrics and x axis), ``summary`` (scatter, bar and
    parallel-coordinates values) and ``config`` paths (axes, grouping, filters; ``model.kernel_size`` form)."""
    keys: dict[str, set[str]] = {"history": set(), "summary": set(), "config": set()}
    section = sent["workspace"]["spec"]["section"]
    for s in section["panelBankConfig"]["sections"]:
        for p in s["panels"]:
            _panel_keys(p, keys)
    for rs in section.get("runSets") or []:
        _runset_keys(rs, keys)
    if sent["workspace"]["spec"]["section"]["settings"].get("xAxis"):
        keys["history"].add(section["settings"]["xAxis"])
    for block in (sent.get("report") or {}).get("spec", {}).get("blocks", []):
        meta = block.get("metadata") or {}
        for p in (meta.get("panelBankSectionConfig") or {}).get("panels") or []:
            _panel_keys(p, keys)
        for rs in meta.get("runSets") or []:
            _runset_keys(rs, keys)
    return keys


_KINDS = {"Run History Line Plot": "line plot", "Scatter Plot": "scatter", "Bar Chart": "bar chart",
          "Parallel Coordinates Plot": "parallel coordinates", "Run Comparer": "run comparer",
          "Markdown Panel": "text"}


def _panel_line(panel: Mapping[str, Any]) -> str:
    cfg, kind = panel.get("config") or {}, panel.get("viewType", "?")
    if kind == "Run History Line Plot":
        return f"line plot     {', '.join(cfg.get('metrics') or [])}  (x {cfg.get('xAxis')})"
    if kind == "Scatter Plot":
        return f"scatter       {cfg.get('yAxis', '').removeprefix('summary:')}  (x {cfg.get('xAxis')})"
    if kind == "Bar Chart":
        return f"bar chart     {', '.join(cfg.get('metrics') or [])}"
    if kind == "Parallel Coordinates Plot":
        return "parallel coordinates  " + ", ".join(c["accessor"] for c in cfg.get("columns") or [])
    if kind == "Markdown Panel":
        return f"text          {cfg.get('value', '')[:70]}..."
    return _KINDS.get(kind, kind)


def listing(sent: Mapping[str, Any]) -> str:
    """The sections and panels of a spec, one line each (what ``lk_ablate dashboard --dry_run`` prints)."""
    w = sent["workspace"]
    section = w["spec"]["section"]
    rs = section["runSets"][0]
    lines = [f"workspace view {w['displayName']!r} in {w['entity']}/{w['project']} (saved view {w['name']})",
             f"  runs: {_filters_text(rs)}; grouped by "
             f"{', '.join(_key_text(g) for g in rs.get('grouping') or [])}; x axis {section['settings']['xAxis']}"]
    for s in section["panelBankConfig"]["sections"]:
        lines.append(f"  section {s['name']!r}: {len(s['panels'])} panel(s)")
        lines += [f"    {_panel_line(p)}" for p in s["panels"]]
    report = sent.get("report")
    if report:
        grids = [b for b in report["spec"]["blocks"] if b.get("type") == "panel-grid"]
        heads = [b for b in report["spec"]["blocks"] if b.get("type") == "heading"]
        lines.append(f"report {report['displayName']!r} in {report['entity']}/{report['project']}: "
                     f"{len(heads)} sections ({', '.join(_heading_text(h) for h in heads)}), {len(grids)} panel grids "
                     f"with {sum(len(g['metadata']['panelBankSectionConfig']['panels']) for g in grids)} panels, the "
                     "same as the view's")
    return "\n".join(lines)


def _heading_text(block: Mapping[str, Any]) -> str:
    return "".join(c.get("text", "") for c in block.get("children") or [])


def _key_text(key: Mapping[str, Any]) -> str:
    return f"config {_config_path(key['name'])}" if key["section"] == "config" else key["name"]


def _filters_text(runset: Mapping[str, Any]) -> str:
    parts = []
    for f in (runset.get("filters") or {}).get("filters") or []:
        value = f.get("value")
        parts.append(f"{_key_text(f['key'])} {f['op']} {', '.join(value) if isinstance(value, list) else value}")
    return " and ".join(parts) or "every run"
