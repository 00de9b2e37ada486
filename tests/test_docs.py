"""The docs are checked: every `lk_ablate ...` command shown in README.md and docs/*.md (and every `python
benchmarks/....py ...` line) parses with the real parser, nothing run; a command shown failing fails with the
message shown; the test counts the docs quote are the suite's (scripts/doc_counts.py). The placeholder rule is in
docs/cli.md ("Command lines in the docs")."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_parsers import REPO, benchmark_module, parsers

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OWN = ("demo", "reparam", "robustness", "analyze", "data", "report", "dashboard")
LIGHTNING = ("fit", "validate", "test", "predict")
# What stands in for a placeholder, tried in this order until the option takes it (the option's type decides).
STAND_INS = ("x", "1", "0.5", "true", "[1]")


def _lines(text: str):
    """(line number, logical line, shown error or None, in code) of a markdown file: code-block lines joined over
    trailing backslashes, the next line kept when it shows an error; inline code spans as lines of their own."""
    lines = text.splitlines()
    in_code, i = False, 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            in_code = not in_code
        elif in_code:
            start = i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            yield start + 1, line, nxt if nxt.startswith("lk_ablate: error:") else None, True
        else:
            for m in re.finditer(r"`((?:\.venv/bin/)?lk_ablate [^`]+|python3? benchmarks/[^`]+)`", line):
                yield i + 1, m.group(1), None, False
        i += 1


def doc_commands() -> list[tuple[str, list[str], str | None]]:
    """(where, argv starting with the command or the benchmark script, the error shown or None); ``where`` ends in
    ``(inline)`` for a command quoted in a sentence (a fragment: it may leave out required options)."""
    out = []
    for path in DOCS:
        for no, line, error, in_code in _lines(path.read_text()):
            line = re.sub(r"\s#\s.*$|\s#$", "", line).strip()
            line = re.split(r"\s[|>]\s", line)[0]  # a pipe or redirect ends the command
            try:
                words = shlex.split(line.removeprefix("$ "))
            except ValueError:
                continue
            while words and (re.match(r"^[A-Z_]+=", words[0]) or words[0] in ("srun",)):
                words = words[1:]
            if words[:1] == ["torchrun"] and "-m" in words:
                words = words[words.index("-m") + 1:]
            if words and words[0].endswith("/lk_ablate"):
                words[0] = "lk_ablate"
            if words[:1] in (["python"], ["python3"]) and len(words) > 1 and words[1].startswith("benchmarks/"):
                words = words[1:]
            if not words or not (words[0] == "lk_ablate" and len(words) > 1 or words[0].startswith("benchmarks/")):
                continue
            words = [w.split("|")[0] if "|" in w and not w.startswith(("[", "{")) else w for w in words]  # a|b: a
            out.append((f"{path.name}:{no}" + ("" if in_code else " (inline)"),
                        words[1:] if words[0] == "lk_ablate" else words, error))
    return out


HOLE = re.compile(r"<[^>]+>|\.\.\.|\$\w+|[A-Z][A-Z_]*")
FIRST_SUBCOMMAND = {"analyze": "fgsm", "data": "check"}


def _parser_and_args(argv: list[str]):
    """The parser a documented command line goes to, and the arguments it parses."""
    head = argv[0]
    if head.startswith("benchmarks/"):
        return benchmark_module(Path(head).stem).parser(), argv[1:]
    if head in LIGHTNING:
        return parsers()["lightning"], argv
    if head == "demo" and "--" in argv:  # the demo's own options; what follows `--` is checked as fit's
        cut = argv.index("--")
        _parse(parsers()["lightning"], ["fit", "--config", str(REPO / "configs" / "demo_fashion_mnist.yaml"),
                                        *argv[cut + 1:]])
        argv = argv[:cut]
    args = argv[1:]
    if head in FIRST_SUBCOMMAND and args and HOLE.fullmatch(args[0]):  # `analyze <name> --help`
        args = [FIRST_SUBCOMMAND[head], *args[1:]]
    return parsers()[head], args


def _parse(parser, argv: list[str]) -> None:
    """Parse one documented command line, each placeholder filled with the first stand-in its option takes; a
    --config file that is not in the repository (the user's, or one a previous line writes) is left out."""
    words = list(argv)
    while words and words[-1] == "..." and not (len(words) > 1 and words[-2].startswith("--")):  # "more options"
        words.pop()
    for i in range(len(words) - 2, -1, -1):
        if words[i] == "--config" and not HOLE.fullmatch(words[i + 1]) and not (REPO / words[i + 1]).is_file():
            del words[i:i + 2]
    holes = [i for i, w in enumerate(words) if HOLE.fullmatch(w)]
    filled = ["x" if i in holes else w for i, w in enumerate(words)]
    for i in holes:
        option = words[i - 1].lstrip("-") if i > 0 and words[i - 1].startswith("--") else None
        for stand_in in STAND_INS:
            filled[i] = stand_in
            try:
                _run_parser(parser, filled)
                break
            except argparse.ArgumentError as e:
                if option is None or option not in str(e):  # this one is taken; the error is another word's
                    break
    _run_parser(parser, filled)


def _run_parser(parser, argv: list[str]) -> None:
    import contextlib
    import io

    # --help and --print_config print and exit 0: a documented command that does so parsed
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                raise


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    """The collector finds the commands (a broken collector would make the next test pass on nothing)."""
    where = {w.split(":")[0] for w, _, _ in COMMANDS}
    assert {"README.md", "robustness.md", "analyses.md", "data.md", "cli.md", "benchmarks.md"} <= where
    heads = {argv[0] for _, argv, _ in COMMANDS}
    assert set(LIGHTNING[:2]) | set(OWN) <= heads and any(h.startswith("benchmarks/") for h in heads), heads
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("where,argv,error", COMMANDS, ids=[f"{w} {' '.join(a)[:60]}" for w, a, _ in COMMANDS])
def test_every_documented_command_parses(where, argv, error, monkeypatch):
    monkeypatch.chdir(REPO)  # the docs' paths (configs/...) are relative to the repository
    if argv[0].startswith("-"):  # lk_ablate --help, --version, --print_completion: the dispatcher's own
        assert argv[0] in ("--help", "-h", "--version", "--print_completion"), f"{where}: unknown {argv[0]}"
        return
    if HOLE.fullmatch(argv[0]) or re.fullmatch(r"benchmarks/\.+\.py", argv[0]):  # the rule's own wording
        return
    if argv[0].startswith("benchmarks/"):
        assert (REPO / argv[0]).is_file(), f"{where}: no script {argv[0]}"
    if len(argv) == 1 and where.endswith("(inline)"):  # a sentence naming the command
        assert argv[0] in (*OWN, *LIGHTNING) or argv[0].startswith("benchmarks/"), f"{where}: no command {argv[0]!r}"
        return
    assert argv[0] in (*OWN, *LIGHTNING) or argv[0].startswith("benchmarks/"), f"{where}: no command {argv[0]!r}"
    parser, args = _parser_and_args(argv)
    if error is None:
        try:
            _parse(parser, args)
        except argparse.ArgumentError as e:  # a sentence may quote a fragment: the options it shows must exist
            if not (where.endswith("(inline)") and "arguments are required" in str(e)):
                raise
        return
    # shown failing: either the parser refuses it with that message, or it parses (the error comes later)
    try:
        _parse(parser, args)
    except argparse.ArgumentError as e:
        shown = error.removeprefix("lk_ablate: error: ").split(" (see `")[0]
        assert shown.split(":")[0] in str(e), f"{where}: shown {error!r}, parser says {e}"


def test_a_wrong_option_in_the_docs_is_caught():
    """The check itself: an option a command does not have, in a doc line, fails the parse."""
    parser, args = _parser_and_args(["robustness", "--model.ckpt", "x.ckpt"])
    with pytest.raises(argparse.ArgumentError):
        _parse(parser, args)
    parser, args = _parser_and_args(["data", "check", "<folder>"])
    with pytest.raises(argparse.ArgumentError):  # a positional FOLDER is no longer an option of data check
        _parse(parser, args)


@pytest.mark.slow
def test_quoted_test_counts_are_the_suites():
    """README.md's and docs/testing.md's test counts equal a collection of tests/ (scripts/doc_counts.py --write
    updates them)."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "doc_counts.py")], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
