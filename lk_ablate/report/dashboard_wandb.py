"""Saving the dashboard (report/dashboard.py) through the W&B API: created on the first call, updated in place on
every later one, never duplicated.

- The saved view has an internal name derived from the dashboard's name (``dashboard.view_name``); it is looked up
  by that name and, when found, saved under its id (``upsertView`` with ``id``), else created under that name.
- The Report is looked up by title among the project's reports (``allViews`` of type ``runs``, the query behind
  ``wandb.Api().reports``); when found it is saved under its id, else created. (Several with the title: the most
  recently updated one is updated, and a note says so.)
- Before that: the project must exist (W&B's answer in one line; a Report save would otherwise create it), and the
  selected runs are read once, for the ``analysis/...`` keys the Analyses section charts and for notes on panels no
  run can fill yet.

Every request goes through ``wandb_workspaces._graphql.execute_graphql`` (the library's own transport), on a
``wandb.Api``: the one seam tests intercept.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..base.errors import ConfigError
from ..base.metric_keys import ANALYSIS_PREFIX, CONFIG_KERNEL_MAX
from .dashboard import Dashboard, DashboardOptions, build_dashboard, referenced_keys, spec, view_name

__all__ = ["OFFLINE_MODES", "SaveResult", "check_online", "connect", "save_dashboard", "settings_defaults"]

OFFLINE_MODES = ("offline", "dryrun", "disabled")
_HINT = "or write the dashboard's spec without W&B with --dry_run true"

VIEW_QUERY = """
query LkAblateView($entityName: String!, $projectName: String!, $viewName: String) {
    project(name: $projectName, entityName: $entityName) {
        allViews(viewType: "project-view", viewName: $viewName) { edges { node { id name displayName } } }
    }
}
"""
REPORTS_QUERY = """
query LkAblateReports($entityName: String!, $projectName: String!, $cursor: String) {
    project(name: $projectName, entityName: $entityName) {
        allViews(viewType: "runs", first: 100, after: $cursor) {
            edges { node { id name displayName updatedAt } }
            pageInfo { endCursor hasNextPage }
        }
    }
}
"""
RUNS_QUERY = """
query LkAblateRuns($entityName: String!, $projectName: String!, $filters: JSONString, $cursor: String) {
    project(name: $projectName, entityName: $entityName) {
        runs(filters: $filters, first: 100, after: $cursor) {
            edges { node { name displayName group jobType config summaryMetrics } }
            pageInfo { endCursor hasNextPage }
        }
    }
}
"""


def settings_defaults() -> dict[str, str | None]:
    """Entity and project from the W&B settings (``WANDB_ENTITY`` / ``WANDB_PROJECT``, the settings files); no
    network."""
    from wandb.sdk import wandb_setup

    s = wandb_setup.singleton().settings
    return {"entity": s.entity or None, "project": s.project or None}


def check_online() -> None:
    """A dashboard is saved through the online API: ``WANDB_MODE=offline`` or ``disabled`` is an error, before any
    work."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in OFFLINE_MODES:
        raise ConfigError(f"WANDB_MODE={mode}: a W&B dashboard is saved through the online W&B API; unset WANDB_MODE "
                          f"(after `wandb login`), {_HINT} (no network needed)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _api_errors() -> tuple[type[BaseException], ...]:
    import wandb

    try:
        from wandb.sdk.lib.service.service_connection import WandbApiFailedError
    except ImportError:  # an SDK without wandb-core's API transport
        return (wandb.errors.Error,)
    return (wandb.errors.Error, WandbApiFailedError)


def connect(timeout: int | None = None) -> Any:
    """A ``wandb.Api``; no credentials, or none W&B accepts, or no network: one line naming ``wandb login`` and
    ``--dry_run``."""
    import wandb

    try:
        return wandb.Api(timeout=timeout)
    except wandb.errors.UsageError as e:
        raise ConfigError(f"no W&B credentials ({_first_line(e)}): run `wandb login` (or set WANDB_API_KEY), "
                          f"{_HINT}") from e
    except _api_errors() as e:
        raise ConfigError(f"W&B is out of reach or refused the credentials ({_first_line(e)}): check the network "
                          f"and `wandb login`, {_HINT}") from e


@dataclass
class SaveResult:
    view_url: str
    view: str  # "created" | "updated"
    report_url: str | None
    report: str | None
    sent: dict[str, Any]  # the spec with the looked-up ids
    runs: int
    notes: list[str] = field(default_factory=list)


class _Client:
    """GraphQL requests on one ``wandb.Api``, W&B's failures as one-line ConfigErrors."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def gql(self, query: str, variables: Mapping[str, Any], what: str) -> dict[str, Any]:
        from wandb_workspaces._graphql import execute_graphql

        try:
            return execute_graphql(self.api, query, variables)
        except _api_errors() as e:
            raise ConfigError(f"W&B answered {what} with: {_first_line(e)}") from e

    def paged(self, query: str, variables: Mapping[str, Any], path: Sequence[str], what: str) -> list[dict]:
        nodes, cursor = [], None
        while True:
            data = self.gql(query, {**variables, "cursor": cursor}, what)
            conn = data.get("project")
            for p in path:
                conn = (conn or {}).get(p)
            nodes += [e["node"] for e in (conn or {}).get("edges") or []]
            page = (conn or {}).get("pageInfo") or {}
            if not page.get("hasNextPage"):
                return nodes
            cursor = page.get("endCursor")


def _run_filters(opts: DashboardOptions) -> str:
    """The dashboard's run filter as the runs query's MongoDB-style filter (as ``wandb.Api().runs(filters=)``)."""
    items: list[dict[str, Any]] = []
    if opts.job_type:
        items.append({"jobType": opts.job_type})
    if opts.groups:
        items.append({"group": {"$in": list(opts.groups)}})
    if opts.tags:
        items.append({"tags": {"$in": list(opts.tags)}})
    return json.dumps({"$and": items} if items else {})


def _json_field(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _runs_notes(runs: Sequence[Mapping[str, Any]], dashboard: Dashboard, opts: DashboardOptions) -> list[str]:
    notes = []
    where = f"{opts.entity}/{opts.project}"
    if not runs:
        notes.append(f"no run of {where} matches the filter yet: the dashboard is saved and fills as runs log")
        return notes
    no_kernel = [r.get("displayName") or r.get("name") for r in runs
                 if CONFIG_KERNEL_MAX not in _json_field(r.get("config"))]
    if no_kernel:
        notes.append(f"{len(no_kernel)} of {len(runs)} run(s) have no kernel_max in their config (logged before "
                     f"lk_ablate wrote it, e.g. {no_kernel[0]}): their training curves appear under an empty "
                     "kernel_label group, and they join the kernel-axis charts once scored or analysed with --wandb")
    have = set().union(*(_json_field(r.get("summaryMetrics")) for r in runs))
    missing = sorted(referenced_keys(spec(dashboard))["summary"] - have)
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        notes.append(f"{len(missing)} panel key(s) are on no selected run yet (their panels stay empty until a run "
                     f"logs them, e.g. after scoring with --wandb): {shown}")
    return notes


def save_dashboard(options: Mapping[str, Any], api: Any | None = None,
                   on_step: Callable[[str], None] | None = None) -> SaveResult:
    """Look up what exists, then create or update the view (and the report). ``options``: the keyword arguments of
    :class:`DashboardOptions`; ``entity`` None is the login's default entity."""
    check_online()
    client = _Client(api if api is not None else connect())
    say = on_step or (lambda _msg: None)
    entity = options.get("entity") or getattr(client.api, "default_entity", None)
    if not entity:
        raise ConfigError("W&B names no default entity for this login: give --wandb.entity E")
    project = options["project"]
    found = client.gql(_project_query(), {"entityName": entity, "projectName": project}, "the project lookup")
    if not found.get("project"):
        raise ConfigError(f"W&B has no project {entity}/{project} (or this login cannot see it): check "
                          "--wandb.entity / --wandb.project; the dashboard shows the runs of an existing project")
    project_id = str(found["project"]["internalId"])
    opts = DashboardOptions(**{**options, "entity": entity})
    say(f"reading the runs of {entity}/{project}")
    runs = client.paged(RUNS_QUERY, {"entityName": entity, "projectName": project, "filters": _run_filters(opts)},
                        ["runs"], "the runs query")
    summaries = [_json_field(r.get("summaryMetrics")) for r in runs]
    analysis_keys = sorted({k for s in summaries for k in s if k.startswith(f"{ANALYSIS_PREFIX}/")})
    opts = replace(opts, analysis_keys=analysis_keys)
    dashboard = build_dashboard(opts)
    notes = _runs_notes(runs, dashboard, opts)

    name = view_name(opts.name)
    views = client.gql(VIEW_QUERY, {"entityName": entity, "projectName": project, "viewName": name},
                       "the saved-view lookup")
    edges = ((views.get("project") or {}).get("allViews") or {}).get("edges") or []
    view_id = edges[0]["node"]["id"] if edges else ""
    report_id = ""
    if opts.report:
        titled = [n for n in client.paged(REPORTS_QUERY, {"entityName": entity, "projectName": project},
                                          ["allViews"], "the report lookup")
                  if n.get("displayName") == opts.name]
        titled.sort(key=lambda n: n.get("updatedAt") or "", reverse=True)
        if len(titled) > 1:
            notes.append(f"{len(titled)} reports of {entity}/{project} are titled {opts.name!r}: updating the most "
                         f"recently updated one ({titled[0]['id']})")
        report_id = titled[0]["id"] if titled else ""

    say(f"saving the view {opts.name!r} ({'update' if view_id else 'new'})")
    object.__setattr__(dashboard.workspace, "_internal_id", view_id)
    _library_call(dashboard.workspace.save, "saving the view")
    report_url = None
    if dashboard.report is not None:
        say(f"saving the report {opts.name!r} ({'update' if report_id else 'new'})")
        dashboard.report.id = report_id
        _library_call(dashboard.report.save, "saving the report")
        report_url = dashboard.report.url
    sent = spec(dashboard, project_id=project_id, view_id=dashboard.workspace._internal_id,
                report_id=dashboard.report.id if dashboard.report is not None else "")
    return SaveResult(view_url=dashboard.workspace.url, view="updated" if view_id else "created",
                      report_url=report_url, report=None if dashboard.report is None else
                      ("updated" if report_id else "created"), sent=sent, runs=len(runs), notes=notes)


def _project_query() -> str:
    from wandb_workspaces.reports.v2 import gql

    return gql.projectInternalId


def _library_call(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except _api_errors() as e:
        raise ConfigError(f"W&B answered {what} with: {_first_line(e)}") from e
    except ValueError as e:  # the library's own "project ... not found" answers
        raise ConfigError(f"{what}: {_first_line(e)}") from e
