"""Benchmarks end to end: generated trees in each released layout, an oracle model whose predictions are
known, the exact numbers expected by construction; sharding over simulated ranks; layout errors."""
from __future__ import annotations

import shutil
import threading

import pytest
import torch
from PIL import Image
from test_robustness_support import (ORACLE_CONFIG, OracleNet, benchmark_wnids, encode, imagenet_wnids,
                                     masked_rule_tree, official_indices, write_tree)

from lk_ablate.base.errors import ConfigError, DataError
from lk_ablate.models.registry import ModelConfig
from lk_ablate.data.transforms import EvalSpec
from lk_ablate.robustness.benchmarks import build_benchmarks, eval_transform
from lk_ablate.robustness.evaluate import evaluate

C_CELLS = [("gaussian_noise", 1), ("gaussian_noise", 5), ("fog", 1), ("fog", 5)]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Every layout once per module; returns paths and the expected numbers worked out by construction."""
    root = tmp_path_factory.mktemp("bench")
    all_1k = imagenet_wnids()
    exp = {}
    a_imgs, a_ok, a_n = masked_rule_tree("a", extra={199: 1})
    write_tree(root / "imagenet-a", a_imgs)
    exp["a"] = (a_ok, a_n)
    r_imgs, r_ok, r_n = masked_rule_tree("r", extra={5: 2})
    write_tree(root / "imagenet-r", r_imgs)
    (root / "imagenet-r" / "README.txt").write_text("files beside the class folders are ignored\n")
    exp["r"] = (r_ok, r_n)

    # Clean val, scored with the top-5 oracle: i%5==1 -> right only in top-5, i%5==2 -> wrong; one extra right.
    val = {}
    for i, w in enumerate(all_1k):
        code = {1: (i - 2) % 1000, 2: (i + 7) % 1000}.get(i % 5, i)
        val[w] = [encode(code)]
    val[all_1k[0]].append(encode(0))
    write_tree(root / "val", val)
    exp["val"] = (601, 801, 1001)

    # ImageNet-O: in = val images of O's classes, confidence level 1; out: 195 images outside the mask (most
    # anomalous, precision 1 whatever their order), then after all 200 in-distribution images one image at
    # each level 2..7 (less anomalous, distinct scores). Tied scores never straddle a label change.
    o_idx, o_wnids = official_indices("o"), benchmark_wnids("o")
    outside = min(set(range(1000)) - set(o_idx))
    write_tree(root / "val_o", {w: [encode(o_idx[j], level=1)] for j, w in enumerate(o_wnids)})
    out = {w: [encode(outside) if j < 194 else encode(o_idx[j], level=j - 192)] for j, w in enumerate(o_wnids)}
    out[o_wnids[0]].append(encode(outside))
    write_tree(root / "imagenet-o", out)
    exp["o"] = 100 * (195 + sum((195 + i) / (395 + i) for i in range(1, 7))) / 201

    # ImageNet-C: cell t right unless i % (t + 2) == 0; gaussian_noise under the tars' category folder.
    exp["c"] = {}
    for t, (c, s) in enumerate(C_CELLS):
        base = root / "imagenet-c" / ("noise" if c == "gaussian_noise" else "") / c / str(s)
        imgs = {w: [encode(i if i % (t + 2) else (i + 1) % 1000)] for i, w in enumerate(all_1k)}
        extra = int(t == 0)
        if extra:
            imgs[all_1k[1]].append(encode(1))
        write_tree(base, imgs, size=(36, 36))
        wrong = len(range(0, 1000, t + 2))
        exp["c"][(c, s)] = (1000 - wrong + extra, 1000 + extra)
    return root, exp


def _only_o(val, o):
    """ImageNet-O alone (its in-distribution val tree here holds only O's 200 classes, not all 1000)."""
    return [b for b in build_benchmarks(imagenet_val=val, imagenet_o=o) if b.name == "imagenet_o"]


def _score(model, benches, **kw):
    return evaluate({"raw": model}, ORACLE_CONFIG, benches, batch_size=64, num_workers=0, **kw)


@pytest.mark.slow
def test_imagenet_a_and_r_masked_top1(trees):
    root, exp = trees
    benches = build_benchmarks(imagenet_a=root / "imagenet-a", imagenet_r=root / "imagenet-r")
    for b in benches:
        b.check()
    results, errors = _score(OracleNet(), benches)
    assert errors == []
    for name, key in (("imagenet_a", "a"), ("imagenet_r", "r")):
        ok, n = exp[key]
        assert results["raw"][name] == {"top1": 100 * ok / n, "correct": ok, "n": n}
    assert exp["a"] == (151, 201) and exp["r"] == (152, 202)


def test_clean_val_top1_top5(trees):
    root, exp = trees
    results, errors = _score(OracleNet(top5_tail=True), build_benchmarks(imagenet_val=root / "val"))
    top1, top5, n = exp["val"]
    assert errors == [] and results["raw"]["imagenet_val"] == {
        "top1": 100 * top1 / n, "top5": 100 * top5 / n, "correct_top1": top1, "correct_top5": top5, "n": n}


def test_imagenet_o_aupr(trees):
    root, exp = trees
    benches = _only_o(root / "val_o", root / "imagenet-o")
    benches[0].check()
    results, errors = _score(OracleNet(), benches)
    o = results["raw"]["imagenet_o"]
    assert errors == [] and (o["n_in"], o["n_out"], o["n"]) == (200, 201, 401)
    assert o["aupr"] == pytest.approx(exp["o"], abs=1e-9)


def test_imagenet_c_subset_per_cell(trees):
    root, exp = trees
    benches = build_benchmarks(imagenet_c=root / "imagenet-c", corruptions=["fog", "gaussian_noise"], severities=[1, 5])
    (bench,) = benches
    bench.check()
    assert [p.key for p in bench.parts] == [f"{c}/{s}" for c, s in C_CELLS]
    results, errors = _score(OracleNet(), benches)
    c = results["raw"]["imagenet_c"]
    assert errors == []
    cells = {(cc, s): 100 * ok / n for (cc, s), (ok, n) in exp["c"].items()}
    for (cc, s), (ok, n) in exp["c"].items():
        assert c["top1"][cc][str(s)] == pytest.approx(cells[(cc, s)], abs=1e-12)
        assert (c["correct"][cc][str(s)], c["n"][cc][str(s)]) == (ok, n)
    assert c["mean_top1"] == pytest.approx(sum(cells.values()) / 4, abs=1e-12)
    assert c["corruption_top1"]["fog"] == pytest.approx((cells[("fog", 1)] + cells[("fog", 5)]) / 2, abs=1e-12)
    assert c["n_total"] == 4001 and c["mce"] is None and c["relative_mce"] is None
    assert c["severity5_mean_top1"] is None and c["ce"] == {}


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_sharded_ranks_equal_one_process_and_a_failing_rank_is_reported(trees, world):
    root, _ = trees
    benches = [b for b in build_benchmarks(imagenet_val=root / "val_o", imagenet_a=root / "imagenet-a",
                                           imagenet_o=root / "imagenet-o") if b.name != "imagenet_val"]
    single, _ = evaluate({"raw": OracleNet(), "ema": OracleNet()}, ORACLE_CONFIG, benches, batch_size=16,
                         num_workers=0)

    class Broken(OracleNet):
        def forward(self, x):
            raise RuntimeError("simulated failure on one rank")

    slots, barrier, calls = [None] * world, threading.Barrier(world), []
    out = [None] * world

    def run(rank):
        def gather(obj):
            calls.append(rank)
            slots[rank] = obj
            barrier.wait()
            return list(slots)

        raw = Broken() if rank == world - 1 else OracleNet()
        out[rank] = evaluate({"raw": raw, "ema": OracleNet()}, ORACLE_CONFIG, benches, batch_size=16, num_workers=0,
                             rank=rank, world_size=world, gather=gather)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(calls) == list(range(world))  # one gather per rank
    for results, errors in out:  # identical on every rank
        assert results["ema"] == single["ema"]
        assert results["raw"] == {"imagenet_a": None, "imagenet_o": None}
        assert sorted((e["weights"], e["benchmark"], e["rank"]) for e in errors) == [
            ("raw", "imagenet_a", world - 1), ("raw", "imagenet_o", world - 1)]
        assert "simulated failure on one rank" in errors[0]["error"]


# --- transforms from the model's config ------------------------------------------------------------------
def test_eval_transform_follows_model_config():
    convnext = ModelConfig()  # 224, crop 0.875, bicubic: the authors' Resize(256) + CenterCrop(224)
    spec = EvalSpec.from_model_config(convnext)
    assert (spec.resize, spec.interpolation, spec.crop, spec.squash) == (256, "bicubic", (224, 224), False)
    tf = eval_transform(convnext)
    img = Image.new("RGB", (500, 375), (255, 128, 0))
    x = tf(img)
    assert x.shape == (3, 224, 224)
    expected = torch.tensor([(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    demo = ModelConfig(input_size=(3, 32, 32), crop_pct=1.0, mean=(0.286,) * 3, std=(0.353,) * 3,
                       interpolation="bilinear", num_classes=10)
    spec = EvalSpec.from_model_config(demo)
    assert (spec.resize, spec.interpolation, spec.crop) == (32, "bilinear", (32, 32))
    # timm's floor rule: 320 / 0.875 = 365.7 -> 365 (RepLKNet-XL), not 366.
    assert EvalSpec.from_model_config(ModelConfig(input_size=(3, 320, 320), crop_pct=0.875)).resize == 365
    # ImageNet-C: no resize; only images larger than the input are centre-cropped to it.
    c_tf = eval_transform(convnext, resize=False)
    assert c_tf(Image.new("RGB", (224, 224))).shape == (3, 224, 224)
    assert c_tf(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
    assert c_tf(Image.new("RGB", (100, 80))).shape == (3, 80, 100)


# --- layout errors ------------------------------------------------------------------------------------------
def _copy(trees, name, tmp_path):
    root, _ = trees
    dst = tmp_path / name
    shutil.copytree(root / name, dst)
    return dst


def test_missing_root(tmp_path):
    (bench,) = build_benchmarks(imagenet_a=tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"ImageNet-A: wrong or partial layout(.|\n)*nowhere does not exist"):
        bench.check()


def test_missing_and_empty_class_folders(trees, tmp_path):
    dst = _copy(trees, "imagenet-r", tmp_path)
    wnids = benchmark_wnids("r")
    shutil.rmtree(dst / wnids[3])
    for f in (dst / wnids[10]).iterdir():
        f.unlink()
    (bench,) = build_benchmarks(imagenet_r=dst)
    with pytest.raises(DataError) as e:
        bench.check()
    msg = str(e.value)
    assert f"lacks 1 of its 200 class folders: {wnids[3]}" in msg
    assert f"1 class folders without images: {wnids[10]}" in msg
    assert "imagenet-r.tar" in msg


def test_extra_folder_level_gets_a_hint(trees, tmp_path):
    dst = _copy(trees, "imagenet-a", tmp_path / "outer")
    (bench,) = build_benchmarks(imagenet_a=tmp_path / "outer")
    with pytest.raises(DataError, match="it holds one folder, 'imagenet-a': point to that folder instead"):
        bench.check()
    assert dst.is_dir()


def test_imagenet_c_missing_severity_and_flat_val(trees, tmp_path):
    root, _ = trees
    (bench,) = build_benchmarks(imagenet_c=root / "imagenet-c", corruptions=["fog"], severities=[1, 3, 5])
    with pytest.raises(DataError, match=r"ImageNet-C(.|\n)*fog/3 does not exist"):
        bench.check()
    flat = tmp_path / "flat_val"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "ILSVRC2012_val_00000001.JPEG")
    (bench,) = build_benchmarks(imagenet_val=flat)
    with pytest.raises(DataError, match=r"lacks 1000 of its 1000 class folders(.|\n)*prepare-imagenet-val"):
        bench.check()


def test_imagenet_o_needs_val_with_its_classes(trees, tmp_path):
    root, _ = trees
    with pytest.raises(ConfigError, match="ImageNet-O needs imagenet_val"):
        build_benchmarks(imagenet_o=root / "imagenet-o")
    partial_val = tmp_path / "val"
    write_tree(partial_val, {w: [encode(0)] for w in benchmark_wnids("o")[:150]})
    benches = _only_o(partial_val, root / "imagenet-o")
    with pytest.raises(DataError, match=r"ImageNet-O(.|\n)*lacks 50 of its 200 class folders"):
        benches[0].check()
