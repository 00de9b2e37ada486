"""The layering contract (pyproject.toml [tool.importlinter], docs/architecture.md), checked by import-linter.

Two contracts: the layers (commands > report > analysis > robustness > evaluation > training > data > models >
base) import only downward and every top-level module sits in one (``exhaustive``); no two modules of one package
import each other in a cycle (``acyclic_siblings``: e.g. models.reparam <-> models.replknet, the FFCV modules of
lk_ablate/data). There is no exceptions list: a broken contract is fixed by moving the code or the fact to the
layer where it belongs.
"""
from __future__ import annotations

import os
import shutil
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


def test_the_check_sees_an_upward_import_and_an_unplaced_module(tmp_path):
    """The contracts are read and enforced: a copy of the package with a models -> report import and a top-level
    module in no layer fails, naming both (guards against a config the linter silently ignores)."""
    shutil.copytree(REPO / "lk_ablate", tmp_path / "lk_ablate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "lk_ablate" / "models" / "upward.py").write_text("from ..report import runs  # noqa: F401\n")
    (tmp_path / "lk_ablate" / "unplaced.py").write_text("")
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache", "--no-logo", str(tmp_path / "pyproject.toml")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})  # the copy, not the installed package
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "lk_ablate.models.upward -> lk_ablate.report" in proc.stdout
    assert "- lk_ablate.unplaced" in proc.stdout
