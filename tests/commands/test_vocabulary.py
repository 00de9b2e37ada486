"""docs/cli.md's option table is the command line's one vocabulary: every option of every parser (Lightning's four
through LightningCLI, lk_ablate's own commands and subcommands, every benchmarks/*.py) has its row, each concept one
row, each row's options exist where it says, with the default it states."""
from __future__ import annotations

import fnmatch
import math

import pytest
import yaml

from cli_parsers import commands, expand, option_keys, table

ACTIONS = {"print_config", "help"}  # options that do something rather than hold a value: not in get_defaults()


def _patterns(spelling: str) -> list[str]:
    """The fnmatch patterns of a row's spelling (``<analysis>`` is any analysis; ``x.*`` also matches ``x``)."""
    from lk_ablate.analysis.configs import CATALOGUE

    names = list(CATALOGUE) if "<analysis>" in spelling else [None]
    pats = [spelling.replace("<analysis>", n) if n else spelling for n in names]
    return pats + [p[:-2] for p in pats if p.endswith(".*")]


def _row_for(command: str, key: str, rows: list[dict]) -> dict | None:
    mine = [r for r in rows if command in expand(r["commands"])]
    exact = [r for r in mine if r["spelling"] == key]
    if exact:
        return exact[0]
    matched = [r for r in mine if any(fnmatch.fnmatchcase(key, p) for p in _patterns(r["spelling"]))]
    return max(matched, key=lambda r: len(r["spelling"])) if matched else None


def _default_for(cell: str, command: str) -> str | None:
    """The default a row states for ``command`` (None: not one value)."""
    if cell == "—":
        return None
    if "; " in cell or (": " in cell and not cell.startswith("[")):
        for part in cell.split("; "):
            who, _, value = part.partition(": ")
            if command in expand(who):
                return None if value == "—" else value
        raise AssertionError(f"default cell {cell!r} names no value for {command}")
    return cell


def _same(stated: str, actual) -> bool:
    if stated == "required":
        return actual is None
    want = yaml.safe_load(stated)
    got = list(actual) if isinstance(actual, tuple) else actual
    if isinstance(want, float) and isinstance(got, float) and math.isinf(want):
        return math.isinf(got)
    return want == got


@pytest.fixture(scope="module")
def rows():
    return table()


def test_every_option_of_every_parser_has_its_row(rows):
    missing = [f"{c}: --{k}" for c in commands() for k in option_keys(c) if _row_for(c, k, rows) is None]
    assert not missing, f"options missing from docs/cli.md's table: {missing}"


def test_one_row_per_concept_and_per_option(rows):
    concepts = [r["concept"] for r in rows]
    assert len(concepts) == len(set(concepts)), [c for c in concepts if concepts.count(c) > 1]
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        for c in expand(r["commands"]):
            assert (c, r["spelling"]) not in seen, f"{c} --{r['spelling']} in two rows: {seen[(c, r['spelling'])]}, " \
                                                   f"{r['concept']}"
            seen[(c, r["spelling"])] = r["concept"]


def test_every_row_names_options_that_exist_with_their_defaults(rows):
    known = set(commands())
    wrong = []
    for r in rows:
        if any(ch in r["spelling"] for ch in "*<"):  # a pattern: some command it lists has such options
            if not any(fnmatch.fnmatchcase(k, p) for c in expand(r["commands"]) for k in option_keys(c)
                       for p in _patterns(r["spelling"])):
                wrong.append(f"no command of {r['commands']} has an option matching {r['spelling']}")
            continue
        for c in expand(r["commands"]):
            assert c in known, f"row {r['concept']!r} names an unknown command {c!r}"
            keys = option_keys(c)
            if r["spelling"] in ACTIONS:
                continue
            if r["spelling"] not in keys:
                wrong.append(f"{c} has no --{r['spelling']}")
                continue
            stated = _default_for(r["default"], c)
            if stated is not None and not _same(stated, keys[r["spelling"]]):
                wrong.append(f"{c} --{r['spelling']}: docs/cli.md says {stated}, the parser {keys[r['spelling']]!r}")
    assert not wrong, wrong


def test_the_table_catches_an_option_it_lacks(rows):
    """The check itself: a parser with one more option, or a row removed, is reported."""
    assert _row_for("robustness", "batch-size", rows) is None
    assert _row_for("robustness", "data.batch_size", rows)["concept"] == "DataLoader batch size"
    assert _row_for("analyze fgsm", "fgsm.eps", rows)["spelling"] == "<analysis>.*"
    assert _row_for("analyze occlusion", "occlusion.dino_path", rows)["spelling"] == "<analysis>.*_path"
    assert _row_for("fit", "trainer.max_epochs", rows)["spelling"] == "trainer.*"
    assert _row_for("fit", "model.kernel_size", rows)["spelling"] == "model.kernel_size"  # exact beats model.*
    fewer = [r for r in rows if r["spelling"] != "data.subset_seed"]
    assert _row_for("analyze lesion", "data.subset_seed", fewer) is None
