"""What scoring records besides the metrics: per-benchmark data fingerprints (from the loader's listing and the
sizes of the files it reads), eval transforms, and each image's top-1 correctness in fingerprint order, the same
with one process or sharded over ranks."""
from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest
import torch
from test_robustness_support import ORACLE_CONFIG, OracleNet, small_trees

from lk_ablate.base.results import unpack_bits
from lk_ablate.robustness.benchmarks import build_benchmarks
from lk_ablate.robustness.evaluate import evaluate
from lk_ablate.robustness.metrics import masked_logits


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return small_trees(tmp_path_factory.mktemp("prov"), a=True, c=True)


def reference_fingerprint(root: str, prefix: str = "") -> tuple[int, str]:
    """Independent of the loader: every file under root's class folders, sorted by (class, file), with its size."""
    lines = []
    for wnid in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, wnid))):
            lines.append(f"{prefix}{wnid}/{name}\t{os.path.getsize(os.path.join(root, wnid, name))}\n")
    return len(lines), hashlib.sha256("".join(lines).encode()).hexdigest()


def test_fingerprints_eval_transforms_and_per_image_flags(trees):
    benches = build_benchmarks(imagenet_a=trees["imagenet_a"], imagenet_c=trees["imagenet_c"],
                               corruptions=["gaussian_noise"], severities=[5])
    details: dict = {}
    results, errors = evaluate({"raw": OracleNet()}, ORACLE_CONFIG, benches, batch_size=64, num_workers=0,
                               details=details)
    assert errors == []
    fa = details["fingerprints"]["imagenet_a"]
    assert (fa["num_images"], fa["sha256"]) == reference_fingerprint(trees["imagenet_a"]) and fa["num_classes"] == 200
    fc = details["fingerprints"]["imagenet_c"]
    c_root = os.path.join(trees["imagenet_c"], "gaussian_noise", "5")
    assert (fc["num_images"], fc["sha256"]) == reference_fingerprint(c_root, "gaussian_noise/5/")
    assert (fc["parts"]["gaussian_noise/5"]["num_images"], fc["parts"]["gaussian_noise/5"]["sha256"]) == \
        reference_fingerprint(c_root)
    assert details["eval_transform"]["imagenet_a"] == {"crop": [32, 32], "resize": 36, "squash": False,
                                                      "interpolation": "bilinear", "mean": [0.5, 0.4, 0.3],
                                                      "std": [0.2, 0.25, 0.3], "protocol": "model"}
    assert details["eval_transform"]["imagenet_c"]["resize"] is None
    # Each image's flag is the per-sample path's verdict (Part.dataset: PIL, eval transform, one image at a time).
    model = OracleNet()
    for bench in benches:
        part = bench.parts[0]
        entry = details["per_image"]["raw"][bench.name][part.key]
        flags = unpack_bits(entry["top1"], entry["n"])
        ds = part.dataset(ORACLE_CONFIG)
        expected = []
        for i in range(min(len(ds), 250)):  # all of A, ImageNet-C's first 250
            x, y = ds[i]
            logits = masked_logits(model(x[None]), bench.mask_tensor)
            expected.append(int(logits.argmax(1)) == y)
        assert flags[:250].tolist() == expected and 0 < sum(expected) < len(expected)
        correct = results["raw"][bench.name]["correct"]
        assert int(flags.sum()) == (correct if isinstance(correct, int) else correct["gaussian_noise"]["5"])


def test_sharded_ranks_record_what_one_process_records(trees):
    benches = build_benchmarks(imagenet_a=trees["imagenet_a"])
    single: dict = {}
    evaluate({"raw": OracleNet(), "ema": OracleNet(top5_tail=True)}, ORACLE_CONFIG, benches, batch_size=16,
             num_workers=0, details=single)
    world = 2
    slots, barrier = [None] * world, threading.Barrier(world)
    out = [{} for _ in range(world)]

    def run(rank):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            return list(slots)

        evaluate({"raw": OracleNet(), "ema": OracleNet(top5_tail=True)}, ORACLE_CONFIG, benches, batch_size=16,
                 num_workers=0, rank=rank, world_size=world, gather=gather, details=out[rank])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for d in out:
        assert d == single
