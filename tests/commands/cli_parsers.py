"""Every command's parser, built once per test session (the vocabulary, docs-command and completion tests share them),
and the option table of docs/cli.md."""
from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = ("bench_dwconv", "bench_loaders", "bench_models", "bench_robustness", "gpu_bench", "bench_startup",
              "bench_erf", "bench_cpu_kernels", "gpu_determinism")
GROUPS_NOTE = "Command groups:"


def benchmark_module(name: str) -> Any:
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module(name)


@functools.lru_cache(maxsize=1)
def parsers() -> dict[str, Any]:
    """command id (as docs/cli.md names it) -> its jsonargparse parser; ``analyze`` and ``data`` also as a whole."""
    from lk_ablate.analysis.configs import CATALOGUE
    from lk_ablate.commands import analyze, dashboard, data, demo, reparam, report, robustness
    from lk_ablate.lightning_cli import lightning_parsers

    top, subs = lightning_parsers()
    out: dict[str, Any] = {"lightning": top, **subs}
    out.update({"demo": demo._parser(), "reparam": reparam._parser(), "robustness": robustness._parser(),
                "report": report._parser(), "dashboard": dashboard._parser(), "analyze": analyze.parser(),
                "data": data.parser()})
    for name in [*CATALOGUE, analyze.ALL]:
        out[f"analyze {name}"] = analyze._analysis_parser(name)
    for name, build in data.PARSERS.items():
        out[f"data {name}"] = build()
    for name in BENCHMARKS:
        out[name] = benchmark_module(name).parser()
    return out


def option_keys(command: str) -> dict[str, Any]:
    """The options of one command (dotted keys) with their defaults (jsonargparse's public get_defaults)."""
    d = parsers()[command].get_defaults()
    return {k: d[k] for k in d.keys()}


def commands() -> list[str]:
    """Every command id that has options of its own (not the wholes: lightning, analyze, data)."""
    return [c for c in parsers() if c not in ("lightning", "analyze", "data")]


def expand(cell: str) -> list[str]:
    """A commands cell of docs/cli.md -> command ids (groups lightning, evaluation, analyze, data expanded)."""
    from lk_ablate.analysis.configs import CATALOGUE

    analyze = [f"analyze {n}" for n in [*CATALOGUE, "all"]]
    groups = {"lightning": ["fit", "validate", "test", "predict"], "evaluation": ["robustness", *analyze],
              "analyze": analyze, "data": ["data prepare-imagenet-val", "data write-ffcv", "data check"]}
    out: list[str] = []
    for word in (w.strip() for w in cell.split(",")):
        out += groups.get(word, [word])
    return out


def table() -> list[dict[str, str]]:
    """The rows of docs/cli.md's option table: concept, spelling, default, commands, note."""
    text = (REPO / "docs" / "cli.md").read_text()
    body = text[text.index("<!-- vocabulary table"):].splitlines()[1:]
    rows = []
    for line in body:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("concept", "---"):
            continue
        concept, spelling, default, cmds, note = cells
        rows.append({"concept": concept, "spelling": spelling.strip("`"), "default": default, "commands": cmds,
                     "note": note})
    return rows
