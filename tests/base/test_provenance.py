"""Provenance records (lk_ablate.base.provenance) and the results file's provenance / per-image sections."""
from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from lk_ablate.base.errors import DataError
from lk_ablate.base.provenance import (array_fingerprint, collect, config_sha256, describe, fingerprint,
                                       provenance_differences)
from lk_ablate.base.results import make_results, pack_bits, read_results, unpack_bits, validate_results, write_results

REPO = Path(__file__).resolve().parents[2]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def test_record_says_which_code_versions_machine_and_settings():
    from lk_ablate.base.provenance import code_version

    code_version.cache_clear()  # read once per process: the checkout may have changed since (a developer editing)
    prov = collect(device="cpu", precision="32-true", config={"b": 1, "a": [1, 2]},
                   dwconv={"impl": ["auto"]}, data={"x": {"num_images": 3, "sha256": "0" * 64, "num_classes": 2}})
    assert prov["schema"] == 1
    assert prov["lk_ablate"]["commit"] == git("rev-parse", "HEAD").strip()
    assert prov["lk_ablate"]["dirty"] == bool(git("status", "--porcelain", "--untracked-files=no").strip())
    for name in ("torch", "torchvision", "timm", "lightning", "ffcv", "numpy"):
        assert prov["packages"][name] == version(name)
    assert prov["device"]["type"] == "cpu" and prov["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["device"]["cuda"] == torch.version.cuda
    assert (prov["precision"], prov["threads"]) == ("32-true", torch.get_num_threads())
    assert prov["determinism"]["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert prov["dwconv"] == {"impl": ["auto"]} and prov["data"]["x"]["num_images"] == 3
    # the config's hash: canonical JSON, so key order does not matter and any change does
    assert prov["config_sha256"] == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    assert config_sha256({"a": [1, 2], "b": 1}) == prov["config_sha256"] != config_sha256({"a": [1, 2], "b": 2})
    assert json.loads(json.dumps(prov)) == prov  # plain JSON
    assert describe(prov).startswith(f"lk_ablate {prov['lk_ablate']['commit'][:10]}")
    assert describe(None) == "no provenance"


def test_fingerprint_hashes_paths_and_sizes_in_the_loaders_order():
    entries = [("n01/a.JPEG", 120), ("n01/b.JPEG", 98), ("n02/c.JPEG", 4000)]
    fp = fingerprint(entries, num_classes=2)
    text = "".join(f"{p}\t{s}\n" for p, s in entries)
    assert fp == {"num_images": 3, "sha256": hashlib.sha256(text.encode()).hexdigest(), "num_classes": 2}
    assert fingerprint(entries[:2], 2)["sha256"] != fp["sha256"]  # a partial copy
    assert fingerprint([entries[0], entries[1], ("n02/c.JPEG", 3999)], 2)["sha256"] != fp["sha256"]  # a changed file
    images = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
    a = array_fingerprint(images, np.array([0, 1]), 10)
    assert a["num_images"] == 2 and a != array_fingerprint(images, np.array([1, 1]), 10)


def test_differences_name_the_fields():
    a = collect(device="cpu", precision="fp32")
    b = json.loads(json.dumps(a))
    b["packages"]["torch"] = "0.0"
    b["threads"] = a["threads"] + 1
    assert provenance_differences(a, b) == ["packages.torch", "threads"]
    assert provenance_differences(a, a) == [] and provenance_differences(None, a) == []


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_per_image_bits_round_trip(n):
    flags = np.random.default_rng(n).random(n) < 0.3
    assert np.array_equal(unpack_bits(pack_bits(flags), n), flags)
    assert len(pack_bits(flags)) == 4 * ((((n + 7) // 8) + 2) // 3)  # base64 of ceil(n / 8) bytes


def test_results_carry_provenance_and_per_image_and_old_files_stay_readable(tmp_path):
    flags = np.array([True, False, True, True, False])
    prov = collect(device="cpu", precision="fp32")
    res = make_results(model_name="convnext_demo", kernel_sizes=[3] * 4, num_params=1, model_config={},
                       weights={"raw": {"imagenet_a": {"top1": 60.0, "correct": 3, "n": 5}}}, settings={}, errors=[],
                       provenance=prov, per_image={"raw": {"imagenet_a": {"a": {"n": 5, "top1": pack_bits(flags)}}}})
    path = write_results(tmp_path / "r.robustness.json", res)
    back = read_results(path)
    assert back["provenance"] == prov
    assert np.array_equal(unpack_bits(back["per_image"]["raw"]["imagenet_a"]["a"]["top1"], 5), flags)
    # without provenance given, make_results records what the process knows (code, versions, machine)
    auto = make_results(model_name="m", kernel_sizes=None, num_params=1, model_config={}, weights={"raw": {}},
                        settings={}, errors=[])
    assert auto["provenance"]["lk_ablate"] == prov["lk_ablate"] and auto["provenance"]["device"]["type"] is None
    # a file written before provenance existed is still valid
    old = dict(back)
    del old["provenance"], old["per_image"]
    assert validate_results(old) is old
    # bits that do not match their count are refused, naming the place
    bad = json.loads(json.dumps(back))
    bad["per_image"]["raw"]["imagenet_a"]["a"]["n"] = 40
    with pytest.raises(DataError, match=r"per_image\.raw\.imagenet_a\.a\.top1 holds 4 base64 characters"):
        validate_results(bad)
