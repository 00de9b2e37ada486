"""``lk_ablate analyze --wandb``: the analyses' scalar summaries under ``analysis/<name>[@<protocol>]/<scalar>`` in the
checkpoint's W&B run (the full path, a real fit and W&B offline, is tests/report/test_dashboard_keys.py)."""
import pytest

from lk_ablate.base.errors import ConfigError
from lk_ablate.cli import main
from lk_ablate.training.wandb import analysis_summary

from helpers import write_demo_checkpoint


def test_analysis_summary_keys():
    """Every analysis with summary_scalars, whatever its name (later analyses too); dots become ``_`` (W&B reads a dot
    as nesting); another protocol is its own key; a scalar that could not be computed (None) is left out."""
    results = {"occlusion": {"protocol": "model", "summary_scalars": {"occlusion.random.mean": 51.5,
                                                                      "occlusion.salient.mean": None}},
               "fgsm": {"protocol": "paper", "summary_scalars": {"fgsm.eps0.002": 12.0}},
               "erf": {"summary_scalars": {"erf.high_contribution_area_ratio": 0.42}}}
    assert analysis_summary(results) == {"analysis/occlusion/random_mean": 51.5, "analysis/fgsm@paper/eps0_002": 12.0,
                                         "analysis/erf/high_contribution_area_ratio": 0.42}


def test_wandb_without_a_run_fails_before_the_analyses(tmp_path, capsys):
    ckpt = tmp_path / "plain.ckpt"
    write_demo_checkpoint(ckpt)  # never logged to W&B
    assert main(["analyze", "kernel_distance", "--ckpt_path", str(ckpt), "--device", "cpu", "--wandb", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wandb: " in err[0] and "records no W&B run" in err[0], err
    assert not (tmp_path / "plain.robustness.json").exists()  # nothing ran
