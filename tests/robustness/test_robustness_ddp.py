"""RobustnessEvaluation under DDP: 2 CPU processes (gloo), odd-sized benchmark sets.

The callback's JSON equals the standalone command's on the same checkpoint, and a failure on one rank alone
neither hangs nor stops training and is reported. This file is also the script the test runs (Lightning's
DDP launcher starts rank 1 by re-running it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import test_pythonpath

HERE = Path(__file__).resolve()


def _callback_args(trees: dict) -> dict:
    return dict(trees, c_preset=None, corruptions=["gaussian_noise"], severities=[5], batch_size=50, num_workers=0)


def main(workdir: Path) -> None:
    import lightning as L
    import torch
    import torch.nn as nn
    from lightning.pytorch.callbacks import ModelCheckpoint
    from test_robustness_callback import RandomData, make_module

    from lk_ablate.robustness import RobustnessEvaluation

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)  # the same initial weights on both ranks (EMA copies included)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    args = config["trainer"]["callbacks"][0]["init_args"]

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise RuntimeError("rank-local failure")

    class FailOnLastRank(RobustnessEvaluation):
        def _weight_sets(self, pl_module):
            sets = super()._weight_sets(pl_module)
            if pl_module.global_rank == pl_module.trainer.world_size - 1:
                sets["raw"] = Boom()
            return sets

        def _checkpoints_at(self, trainer, step):
            return []  # write to output_dir, not over the good callback's file

    good = RobustnessEvaluation(**args)
    bad = FailOnLastRank(imagenet_a=args["imagenet_a"], batch_size=50, num_workers=0,
                         output_dir=str(workdir / "failed"))
    trainer = L.Trainer(default_root_dir=workdir, accelerator="cpu", devices=2, strategy="ddp", max_epochs=1,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[good, bad, ModelCheckpoint(dirpath=workdir / "ckpts")])
    trainer.fit(make_module(spread=True), datamodule=RandomData())
    if trainer.is_global_zero:
        (workdir / "done.json").write_text(json.dumps({"finished": trainer.state.finished,
                                                       "global_step": trainer.global_step,
                                                       "world_size": trainer.world_size}))


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_gather_equals_standalone_and_survives_a_rank_failure(tmp_path):
    from test_robustness_support import small_trees

    from lk_ablate.base.results import read_results
    from lk_ablate.commands.robustness import cli_main

    trees = small_trees(tmp_path / "trees", val=True, a=True, o=True, c=True)
    config = {"trainer": {"callbacks": [{"class_path": "lk_ablate.robustness.RobustnessEvaluation",
                                         "init_args": _callback_args(trees)}]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=test_pythonpath())
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(HERE), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    done = json.loads((tmp_path / "done.json").read_text())
    assert done == {"finished": True, "global_step": 1, "world_size": 2}

    ckpt = tmp_path / "ckpts" / "epoch=0-step=1.ckpt"
    from_callback = read_results(ckpt.with_suffix(".robustness.json"))
    w = from_callback["weights"]
    assert from_callback["errors"] == [] and set(w) == {"raw", "ema"}
    assert (w["raw"]["imagenet_val"]["n"], w["raw"]["imagenet_a"]["n"], w["raw"]["imagenet_o"]["n"],
            w["raw"]["imagenet_c"]["n_total"]) == (1001, 201, 401, 1001)
    assert w["raw"]["imagenet_o"]["n_in"] == 200 and w["ema"]["imagenet_c"]["n"] == {"gaussian_noise": {"5": 1001}}

    out = tmp_path / "standalone.json"
    assert cli_main(["--ckpt_path", str(ckpt), "--fit_config", str(tmp_path / "config.yaml"), "--results_path", str(out),
                     "--device", "cpu"]) == 0
    standalone = read_results(out)
    for data in (from_callback, standalone):
        data.pop("created")
    # The same images (data fingerprints) and eval transforms; how the runs ran (2 ranks vs one process, threads,
    # the callback's training precision) is what provenance is for, and may differ.
    ran = [data.pop("provenance") for data in (standalone, from_callback)]
    assert ran[0]["data"] == ran[1]["data"] and ran[0]["eval_transform"] == ran[1]["eval_transform"]
    assert standalone == from_callback

    failed = read_results(tmp_path / "failed" / "epoch=0-step=1.robustness.json")
    assert [(e["weights"], e["benchmark"], e["rank"]) for e in failed["errors"]] == [("raw", "imagenet_a", 1)]
    assert "rank-local failure" in failed["errors"][0]["error"]
    assert failed["weights"]["raw"] == {"imagenet_a": None}
    assert failed["weights"]["ema"]["imagenet_a"] == w["ema"]["imagenet_a"]
    assert "imagenet_a failed (rank 1); training goes on" in proc.stderr + proc.stdout


if __name__ == "__main__":
    main(Path(sys.argv[1]))
