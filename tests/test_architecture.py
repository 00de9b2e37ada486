"""The layering contract (pyproject.toml [tool.importlinter], docs/architecture.md), checked by import-linter.

Two contracts: the layers (commands > report > analysis > robustness > evaluation > training > data > models >
base) import only downward, and no two modules of one package import each other in a cycle (``acyclic_siblings``:
e.g. models.reparam <-> models.replknet, the FFCV modules of lk_ablate/data). There is no exceptions list: a
broken contract is fixed by moving the code or the fact to the layer where it belongs.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers_and_have_no_cycles():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.is_file(), f"{lint} not found: install the dev extra (make setup, or pip install -e '.[dev]')"
    proc = subprocess.run([str(lint), "--no-cache", "--no-logo", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"import contracts broken (lint-imports):\n{proc.stdout}\n{proc.stderr}"
