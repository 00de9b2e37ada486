"""Help is fast and complete: `lk_ablate --help`, `--version`, an unknown command and every own command's `--help`
run without importing torch (a fresh interpreter each, as a user starts them; benchmarks/bench_startup.py times
them); the package API is still there on first use; shell completion comes from jsonargparse's shtab support."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lk_ablate.cli import main

from cli_parsers import REPO
from helpers import test_pythonpath

PROBE = ("import sys\nfrom lk_ablate.cli import main\n"
         "for argv in {argvs!r}:\n"
         "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
         "bad = [m for m in sys.modules if m.split('.')[0] in {banned!r}]\n"
         "print('IMPORTED', sorted(bad)[:5]) if bad else print('CLEAN')\n")
HEAVY = ("torch", "lightning", "timm", "numba", "ffcv")
HELPS = [["--help"], ["--version"], ["bogus"], ["demo", "--help"], ["reparam", "--help"], ["robustness", "--help"],
         ["analyze", "--help"], ["analyze", "fgsm", "--help"], ["analyze", "all", "--help"], ["data", "--help"],
         ["data", "write-ffcv", "--help"], ["data", "check", "--help"], ["report", "--help"],
         ["dashboard", "--help"]]


def _probe(argvs: list[list[str]], banned: tuple[str, ...] = HEAVY) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs, banned=banned)], capture_output=True,
                          text=True, cwd=REPO, env={"PYTHONPATH": test_pythonpath(), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    return done.stdout.strip().splitlines()[-1]


def test_help_version_and_every_own_command_help_import_no_torch():
    assert _probe(HELPS) == "CLEAN"


def test_the_probe_sees_an_import():
    """The check itself: a module the help does import (jsonargparse) is reported."""
    assert _probe([["robustness", "--help"]], banned=("jsonargparse",)).startswith("IMPORTED ['jsonargparse'")


def test_the_package_api_is_there_on_first_use():
    """The lazy namespaces still give every name (``import lk_ablate`` itself imports no torch: the probe above)."""
    import lk_ablate
    from lk_ablate.analysis import CATALOGUE, run_analyses  # noqa: F401
    from lk_ablate.data import ImageFolderDataModule  # noqa: F401
    from lk_ablate.evaluation import ModelOptions, load_for_eval  # noqa: F401

    assert {"create_model", "list_models", "get_model_config", "ModelConfig", "__version__"} <= set(dir(lk_ablate))
    m = lk_ablate.create_model("convnext_demo", kernel_size=3)
    assert type(m).__name__ == "ConvNeXt" and "convnext_demo" in lk_ablate.list_models()
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        lk_ablate.nope  # noqa: B018


def test_usage_lists_every_command(capsys):
    from lk_ablate.cli import EXTRA_COMMANDS, LIGHTNING_COMMANDS

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]:
        assert f"  {cmd} " in out
    assert "--version" in out and "--print_completion" in out and "docs/cli.md" in out


def test_data_help_lists_its_commands_and_each_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("prepare-imagenet-val", "write-ffcv", "check"))
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    out = capsys.readouterr().out
    assert "--root" in out and "--num_workers" in out and "--writer." not in out


def test_shell_completion_script_names_commands_subcommands_and_options(capsys):
    """jsonargparse's shtab support over the whole program (shtab is a dependency, pyproject.toml)."""
    assert main(["--print_completion", "bash"]) == 0
    script = capsys.readouterr().out
    for word in ("robustness", "write-ffcv", "kernel_distance", "--ckpt_path", "--data.imagenet_val",
                 "--trainer.max_epochs", "--fgsm.eps"):
        assert word in script, word
    assert main(["--print_completion", "fish?"]) == 2
    assert "one of bash, zsh, tcsh" in capsys.readouterr().err


@pytest.mark.slow
def test_one_parser_for_the_whole_program(monkeypatch):
    monkeypatch.chdir(REPO)
    """What completion is made from: every command (Lightning's four, analyze NAME, data CMD) under one parser."""
    from lk_ablate.cli import full_parser

    p = full_parser()
    assert p.parse_args(["analyze", "fgsm", "--fgsm.eps", "[0.1]"]).analyze.fgsm.fgsm.eps == (0.1,)
    assert p.parse_args(["data", "check", "--root", "r"]).data.check.root == "r"
    assert p.parse_args(["robustness", "--weights", "raw"]).robustness.weights == "raw"
    fit = p.parse_args(["fit", "--config", "configs/convnext_k31.yaml", "--model.kernel_size", "7"]).fit
    assert fit.model.kernel_size == 7 and fit.trainer.max_epochs == 120
