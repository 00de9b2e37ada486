"""An in-memory W&B backend for the dashboard tests: it answers the GraphQL operations that ``lk_ablate dashboard``
and wandb-workspaces send through ``wandb.Api()._service_api.execute_graphql`` (the one transport of both), records
every request, and keeps the views and reports it was asked to save. No network."""
from __future__ import annotations

import itertools
import json
import re
from types import SimpleNamespace
from typing import Any


class FakeBackend:
    app_url = "https://wandb.test"

    def __init__(self, projects=(("team", "ablation"),), runs=()):
        self.projects = {p: f"internal-{i}" for i, p in enumerate(projects)}
        self.runs = list(runs)
        self.views: dict[str, dict[str, Any]] = {}  # id -> the upsert's variables
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, Exception] = {}  # operation -> the error W&B answers it with
        self._ids = itertools.count(1)

    def ops(self, *names: str) -> list[dict[str, Any]]:
        return [v for op, v in self.calls if op in names]

    def execute_graphql(self, query: str, variables: dict | None = None, **kwargs: Any) -> dict[str, Any]:
        op = re.search(r"(?:query|mutation)\s+(\w+)", query).group(1)
        v = dict(variables or {})
        self.calls.append((op, v))
        if op in self.fail:
            raise self.fail[op]
        key = (v.get("entityName"), v.get("projectName"))
        if op == "ProjectInternalId":
            return {"project": {"id": "UHJvamVjdA==", "internalId": self.projects[key]} if key in self.projects
                    else None}
        if key not in self.projects:
            return {"project": None}
        if op == "LkAblateRuns":
            edges = [{"node": r} for r in self.runs]
            return {"project": {"runs": {"edges": edges, "pageInfo": {"hasNextPage": False}}}}
        if op == "LkAblateView":
            return {"project": {"allViews": {"edges": [
                {"node": {"id": i, "name": x["name"], "displayName": x["displayName"]}}
                for i, x in self.views.items() if x["type"] == "project-view" and x["name"] == v["viewName"]]}}}
        if op == "LkAblateReports":
            return {"project": {"allViews": {"edges": [
                {"node": {"id": i, "name": x["name"], "displayName": x["displayName"], "updatedAt": x["updatedAt"]}}
                for i, x in self.views.items() if x["type"] == "runs"], "pageInfo": {"hasNextPage": False}}}}
        if op in ("UpsertView2", "upsertView"):  # the view (workspaces) and the report (reports.v2) mutations
            vid = v.get("id") or f"view-{next(self._ids)}"
            inserted = vid not in self.views
            self.views[vid] = {**v, "updatedAt": f"2026-12-07T00:00:{len(self.calls):02d}"}
            view = {"id": vid, "name": v["name"], "type": v["type"], "displayName": v["displayName"],
                    "description": v.get("description", ""), "spec": v["spec"], "updatedAt": "2026-12-07T00:00:00",
                    "project": {"id": "UHJvamVjdA==", "name": v["projectName"], "entityName": v["entityName"]}}
            return {"upsertView": {"view": view, "inserted": inserted}}
        raise AssertionError(f"unexpected W&B operation {op}")


class FakeApi:
    """``wandb.Api()`` on the fake backend (what wandb-workspaces and lk_ablate call on it)."""

    def __init__(self, backend: FakeBackend, default_entity: str = "team") -> None:
        self._service_api = backend
        self.default_entity = default_entity

    def projects(self, entity: str) -> list[Any]:
        return [SimpleNamespace(name=p) for e, p in self._service_api.projects if e == entity]

    def create_project(self, name: str, entity: str) -> None:
        raise AssertionError(f"the dashboard created a W&B project: {entity}/{name}")


def install(monkeypatch, backend: FakeBackend, **kwargs: Any) -> None:
    """Every ``wandb.Api(...)`` returns a FakeApi on ``backend``; the online mode is on."""
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: FakeApi(backend, **kwargs))


def run_node(name: str, group: str, config: dict, summary: dict, job_type: str = "train") -> dict[str, Any]:
    """A run as the runs query returns it (config values wrapped as W&B stores them)."""
    return {"name": name, "displayName": name, "group": group, "jobType": job_type,
            "config": json.dumps({k: {"value": v, "desc": None} for k, v in config.items()}),
            "summaryMetrics": json.dumps(summary)}
