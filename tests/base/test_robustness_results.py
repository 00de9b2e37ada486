"""The versioned results file: schema checks, atomic writes, update_results merges (also concurrent)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lk_ablate.base.errors import DataError
from lk_ablate.base.results import (SCHEMA_VERSION, flatten_metrics, make_results, read_results, results_path,
                                          update_results, write_results)


def _results(**over):
    kw = dict(model_name="convnext_tiny", kernel_sizes=(7, 7, 7, 7), num_params=28589128,
              model_config={"input_size": (3, 224, 224), "crop_pct": 0.875, "resize_size": 256},
              weights={"raw": {"imagenet_a": {"top1": 10.5, "correct": 21, "n": 200}, "imagenet_o": None},
                       "ema": {"imagenet_a": {"top1": 11.0, "correct": 22, "n": 200}, "imagenet_o": None}},
              settings={"benchmarks": {"imagenet_a": "/data/imagenet-a"}},
              errors=[{"weights": "raw", "benchmark": "imagenet_o", "rank": 1, "error": "boom"}],
              checkpoint_path="ckpts/epoch=3-step=40.ckpt", epoch=3, global_step=40, checkpoint_format="lightning")
    kw.update(over)
    return make_results(**kw)


def test_make_write_read_roundtrip(tmp_path):
    data = _results()
    assert data["schema_version"] == SCHEMA_VERSION == 1 and data["primary"] == "ema"
    assert data["model"]["kernel_sizes"] == [7, 7, 7, 7] and data["model"]["config"]["input_size"] == [3, 224, 224]
    assert data["checkpoint"] == {"path": str(Path("ckpts/epoch=3-step=40.ckpt").absolute()), "epoch": 3,
                                  "global_step": 40, "format": "lightning"}
    path = write_results(tmp_path / "r.json", data)
    assert read_results(path) == data
    assert _results(weights={"raw": {"imagenet_a": None}})["primary"] == "raw"


@pytest.mark.parametrize("ckpt,expected", [("a/epoch=3-step=40.ckpt", "a/epoch=3-step=40.robustness.json"),
                                           ("a/last.ckpt", "a/last.robustness.json"),
                                           ("RepLKNet-31B.pth", "RepLKNet-31B.robustness.json"),
                                           ("weights", "weights.robustness.json")])
def test_results_path_beside_checkpoint(ckpt, expected):
    assert results_path(ckpt) == Path(expected)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema="other"), "not an lk_ablate robustness results file"),
    (lambda d: d.update(schema_version=2), "schema_version 2"),
    (lambda d: d.pop("checkpoint"), "'checkpoint' is missing"),
    (lambda d: d["weights"].update(swa={}), "'weights' must hold"),
    (lambda d: d.update(primary="raw") or d["weights"].pop("raw"), "primary weights 'raw' were not scored"),
])
def test_invalid_files_are_rejected(tmp_path, mutate, match):
    data = _results()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=match):
        read_results(path)


def test_update_results_merges_sections(tmp_path):
    path = write_results(tmp_path / "r.json", _results())
    update_results(path, "analyses.occlusion", {"random": {"10": 70.0}})
    update_results(path, "analyses.occlusion", {"salient": {"10": 60.0}})
    update_results(path, "analyses", {"lesion": [1, 2]})
    data = update_results(path, "analyses.occlusion.random", {"20": 50.0})
    assert data["analyses"] == {"occlusion": {"random": {"10": 70.0, "20": 50.0}, "salient": {"10": 60.0}},
                                "lesion": [1, 2]}
    update_results(path, "analyses.lesion", [3])  # non-dicts replace
    after = read_results(path)
    assert after["analyses"]["lesion"] == [3] and after["weights"] == _results()["weights"]
    with pytest.raises(ValueError):
        update_results(path, "schema_version", 2)
    with pytest.raises(DataError, match="not found"):
        update_results(tmp_path / "missing.json", "analyses.x", {})


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_results(tmp_path / "r.json", _results())
    before = path.read_text()
    with pytest.raises(DataError, match=r"analyses.bad.x is nan \(not finite\)"):  # refused before writing
        update_results(path, "analyses.bad", {"x": float("nan")})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary, no lock file left behind


_WRITER = """
import os, sys, time
from lk_ablate.base.results import update_results
path, worker, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
open(os.path.join(folder, f"ready{worker}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.01)
for i in range(20):
    update_results(path, f"analyses.w{worker}", {f"k{i}": i})
"""


@pytest.mark.slow
def test_concurrent_updates_lose_nothing(tmp_path):
    # Fresh interpreters, not fork: forking a process that already runs torch's and other tests' threads can
    # deadlock the children (seen as a CI hang). The barrier makes the two writers start together.
    path = write_results(tmp_path / "r.json", _results())
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), str(tmp_path)]) for w in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{w}").exists() for w in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a writer did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert read_results(path)["analyses"] == {f"w{w}": {f"k{i}": i for i in range(20)} for w in range(2)}


def test_flatten_metrics_names():
    c = {"top1": {"fog": {"5": 30.0}}, "n": {"fog": {"5": 50}}, "correct": {"fog": {"5": 15}}, "mean_top1": 30.0,
         "corruption_top1": {"fog": 30.0}, "ce": {}, "mce": None, "relative_mce": None, "severity5_mean_top1": None,
         "severity5_mean_top1_15": None, "n_total": 50}
    data = _results(weights={"raw": {"imagenet_a": {"top1": 10.5, "correct": 21, "n": 200}, "imagenet_c": c},
                             "ema": {"imagenet_a": {"top1": 11.0, "correct": 22, "n": 200}, "imagenet_c": None}})
    assert flatten_metrics(data) == {"robust/imagenet_a/top1": 10.5, "robust/imagenet_a/top1_ema": 11.0,
                                     "robust/imagenet_c/mean_top1": 30.0, "robust/imagenet_c/top1_fog": 30.0,
                                     "robust/imagenet_c/top1_fog_5": 30.0}
    # Fashion-MNIST-C (the demo's) has the same nested cells and per-corruption means.
    demo = _results(weights={"raw": {"fashion_mnist_c": {"top1": {"fog": {"1": 40.0, "5": 20.0}},
                                                         "corruption_top1": {"fog": 30.0}, "mean_top1": 30.0,
                                                         "relative_mce": 100.0, "relative_ce": {"fog": 100.0},
                                                         "n": 500}}})
    assert flatten_metrics(demo) == {"robust/fashion_mnist_c/mean_top1": 30.0,
                                     "robust/fashion_mnist_c/relative_mce": 100.0,
                                     "robust/fashion_mnist_c/top1_fog": 30.0, "robust/fashion_mnist_c/top1_fog_1": 40.0,
                                     "robust/fashion_mnist_c/top1_fog_5": 20.0}
