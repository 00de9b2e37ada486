"""The test counts README.md and docs/testing.md quote, from a collection of the suite: checked (default) or
written (``--write``). tests/test_docs.py runs the check, so a count in the docs is never stale.

    .venv/bin/python scripts/doc_counts.py            # exit 1 and the differences when a quoted count is stale
    .venv/bin/python scripts/doc_counts.py --write    # put the collected counts into the docs
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (file, pattern with one group per count, the counts' names in order)
QUOTES = [
    ("README.md", r"`make test` runs `pytest tests` in `\.venv` \((\d+) tests", ("cpu",)),
    ("README.md", r"`make fast` \(`pytest tests -m \"not slow\"`: (\d+) tests", ("fast",)),
    ("docs/testing.md", r"\| (\d+) tests: at least one of each feature", ("fast",)),
    ("docs/testing.md", r"(\d+) of the (\d+) tests on a CPU machine \((\d+) `gpu` deselected\)", ("cpu", "total", "gpu")),
]


def collect() -> dict[str, int]:
    """Counts of a collection of tests/ (as `make test` and `make fast` select them on a CPU machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        env = {**os.environ, "LK_ABLATE_COUNTS_FILE": str(out), "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "pytest", "tests", "--collect-only", "-q", "-p", "no:cacheprovider"],
                       cwd=REPO, env=env, check=True, capture_output=True, text=True)
        counts = json.loads(out.read_text())
    counts["cpu"] = counts["total"] - counts["gpu"]
    return counts


def differences(counts: dict[str, int], write: bool = False) -> list[str]:
    out = []
    for rel, pattern, names in QUOTES:
        path = REPO / rel
        text = path.read_text()
        m = re.search(pattern, text)
        if m is None:
            out.append(f"{rel}: the quoted count /{pattern}/ is gone (update scripts/doc_counts.py)")
            continue
        for i, name in enumerate(names, start=1):
            if int(m.group(i)) != counts[name]:
                out.append(f"{rel}: says {m.group(i)} ({name}), the suite has {counts[name]}")
        if write:
            new = m.group(0)
            for i, name in reversed(list(enumerate(names, start=1))):
                a, b = m.start(i) - m.start(0), m.end(i) - m.start(0)
                new = new[:a] + str(counts[name]) + new[b:]
            path.write_text(text[:m.start()] + new + text[m.end():])
    return out


def main(argv: list[str] | None = None) -> int:
    write = "--write" in (sys.argv[1:] if argv is None else argv)
    counts = collect()
    diffs = differences(counts, write)
    print(f"collected: {counts}")
    for d in diffs:
        print(("written: " if write else "stale: ") + d)
    return 1 if diffs and not write else 0


if __name__ == "__main__":
    raise SystemExit(main())
