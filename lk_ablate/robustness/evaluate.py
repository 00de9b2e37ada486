"""Score one or more weight sets (raw, EMA) of a model on benchmarks, sharded over ranks, gathered once.

Each rank reads every ``world_size``-th batch of each benchmark (no padding, so an odd-sized set is counted
exactly once; batches are the same as in a one-process run, so results are bit-identical to it), decodes
each image once and runs it through every weight set. Per-rank partial results (counts, and
per-image scores for ImageNet-O) are exchanged in ONE ``gather`` call, then every rank computes the same
metrics. A failure while scoring is caught per (weights, benchmark) and travels in the same gather, so no
rank waits on a collective that another rank never reaches; the failed entries come back as None with the
error recorded. An unreadable image is a data problem, not a model failure: under ``on_bad_image: error`` the
rank that meets it stops scoring at once and, after the gather, every rank raises the same one-line DataError
(the first bad image in one-process order); ``skip`` scores the rest and lists the skipped files.

The input pipeline (lk_ablate.robustness.pipeline): workers read whole batches into one uint8 tensor; the
normalisation runs here, on the scoring device, and the model gets a channels_last float32 batch whose values
equal the per-sample PIL path (``Part.dataset``) bit for bit (``decode: cpu``).
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..base.errors import DataError
from ..base.jsonable import to_jsonable
from ..base.progress import progress_iter
from ..base.provenance import Fingerprint
from ..base.results import pack_bits
from ..models.registry import ModelConfig
from .benchmarks import Benchmark
from .metrics import masked_logits, msp_score, ood_aupr, summarize_imagenet_c, topk_correct
from .pipeline import BadImage, ScoringInputs, check_options

__all__ = ["evaluate", "Gather", "PER_IMAGE"]

Gather = Callable[[Any], list[Any]]
PER_IMAGE = "__per_image__"  # the key of the per-image top-1 flags among a rank's partial results


def _local_scores(models: Mapping[str, nn.Module], bench: Benchmark, cfg: ModelConfig, rank: int, world_size: int,
                  batch_size: int, num_workers: int, device: torch.device, progress: bool, decode: str,
                  precision: str, on_bad_image: str, skipped: list[tuple[int, str]],
                  ) -> tuple[dict[str, dict], dict[str, str], ScoringInputs]:
    """This rank's partial results for every weight set: {weights: {part: counts or (indices, scores)}} (and, under
    ``PER_IMAGE``, {part: top-1 correct flags of every image of the part, False where another rank scores it}).

    Images that cannot be read are appended to ``skipped`` as (dataset index, path) under ``on_bad_image:
    skip``; under ``error`` the first one raises ``BadImage`` with a one-line message naming it.
    """
    inputs = ScoringInputs(bench, cfg, batch_size=batch_size, num_workers=num_workers, device=device, rank=rank,
                           world_size=world_size, decode=decode, on_bad_image=on_bad_image, skipped=skipped)
    data = inputs.data
    mask = bench.mask_tensor
    mask = None if mask is None else mask.to(device)
    keys = [p.key for p in bench.parts]
    part_sizes = np.bincount(data.part, minlength=len(keys))
    acc: dict[str, dict] = {}
    for w in models:
        if bench.kind == "ood":
            acc[w] = {k: ([], []) for k in keys}
        else:
            acc[w] = {k: np.zeros(3 if bench.kind == "topk" else 2, dtype=np.int64) for k in keys}
            acc[w][PER_IMAGE] = {k: np.zeros(int(n), dtype=bool) for k, n in zip(keys, part_sizes)}
    errors: dict[str, str] = {}
    it = progress_iter(inputs, f"{bench.name} ({'+'.join(models)} weights)", len(inputs), "batches", progress)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with torch.inference_mode():
        for x, index in it:
            y = torch.from_numpy(data.labels[index]).to(device, non_blocking=True)
            part_np, idx_np = data.part[index], data.index_in_part[index]
            for w, model in models.items():
                if w in errors:
                    continue
                try:
                    with autocast:
                        out = model(x)
                    logits = masked_logits(out.float(), mask)
                    _accumulate(acc[w], bench.kind, keys, logits, y, part_np, idx_np)
                except Exception:  # recorded and reported; the other weight sets go on
                    errors[w] = traceback.format_exc(limit=4)
    return acc, errors, inputs


def _accumulate(acc: dict, kind: str, keys: list[str], logits: torch.Tensor, y: torch.Tensor, part: np.ndarray,
                idx: np.ndarray) -> None:
    if kind == "ood":
        scores = msp_score(logits).cpu().numpy()
        for p in np.unique(part):
            sel = part == p
            acc[keys[p]][0].append(idx[sel])
            acc[keys[p]][1].append(scores[sel])
        return
    ks = (1, 5) if kind == "topk" else (1,)
    correct = {k: v.cpu().numpy() for k, v in topk_correct(logits, y, ks).items()}
    for p in np.unique(part):
        sel = part == p
        row = [int(correct[k][sel].sum()) for k in ks] + [int(sel.sum())]
        acc[keys[p]] += np.asarray(row, dtype=np.int64)
        acc[PER_IMAGE][keys[p]][idx[sel]] = correct[1][sel]


def _merge(kind: str, pieces: list[dict]) -> dict:
    """Combine the ranks' partial results of one (weights, benchmark)."""
    pieces = [{k: v for k, v in p.items() if k != PER_IMAGE} for p in pieces]
    if kind == "ood":
        out = {}
        for key in pieces[0]:
            idx = np.concatenate([np.concatenate(p[key][0]) if p[key][0] else np.zeros(0, np.int64) for p in pieces])
            sc = np.concatenate([np.concatenate(p[key][1]) if p[key][1] else np.zeros(0) for p in pieces])
            out[key] = sc[np.argsort(idx, kind="stable")]
        return out
    return {key: sum(p[key] for p in pieces) for key in pieces[0]}


def _summarize(bench: Benchmark, merged: dict, clean_top1: float | None) -> dict:
    if bench.kind == "topk":
        top1, top5, n = (int(v) for v in merged["val"])
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "correct_top1": top1, "correct_top5": top5,
                "n": n}
    if bench.kind == "masked_top1":
        (correct, n), = ((int(a), int(b)) for a, b in merged.values())
        return {"top1": 100.0 * correct / n, "correct": correct, "n": n}
    if bench.kind == "corruption":
        correct: dict[str, dict[int, int]] = {}
        total: dict[str, dict[int, int]] = {}
        for key, (c, n) in merged.items():
            name, sev = key.split("/")
            correct.setdefault(name, {})[int(sev)] = int(c)
            total.setdefault(name, {})[int(sev)] = int(n)
        out = summarize_imagenet_c(correct, total, clean_top1)
        out["correct"] = {c: {str(s): v for s, v in by.items()} for c, by in correct.items()}
        out["n_total"] = int(sum(sum(by.values()) for by in total.values()))
        return out
    if bench.kind == "ood":
        return {"aupr": ood_aupr(merged["in"], merged["out"]), "n_in": int(merged["in"].size),
                "n_out": int(merged["out"].size), "n": int(merged["in"].size + merged["out"].size)}
    raise ValueError(f"unknown benchmark kind {bench.kind!r}")


def evaluate(models: Mapping[str, nn.Module], cfg: ModelConfig, benchmarks: Sequence[Benchmark], *,
             batch_size: int = 64, num_workers: int = 4, device: torch.device | str | None = None, rank: int = 0,
             world_size: int = 1, gather: Gather | None = None, progress: bool = False, decode: str = "cpu",
             precision: str = "32-true", on_bad_image: str = "error", details: dict[str, Any] | None = None,
             ) -> tuple[dict[str, dict[str, dict | None]], list[dict]]:
    """Score every weight set in ``models`` ({"raw": model, "ema": model}) on ``benchmarks``.

    ``gather(obj)`` returns the list of every rank's ``obj`` (``torch.distributed.all_gather_object``); it is
    called exactly once. Returns ({weights: {benchmark: metrics or None}}, errors), identical on all ranks.

    - ``decode``: "cpu" (PIL in the loader workers, the reference) or "gpu" (JPEGs decoded, resized and cropped
      on the CUDA device: faster, not bit-identical to PIL; see docs/robustness.md).
    - ``precision``: "32-true" (the paper's evaluation) or "bf16-mixed" (autocast; logits differ slightly).
    - ``on_bad_image``: "error" raises DataError at the first image that cannot be read, naming it, with no
      results (on every rank: the failure travels in the gather); "skip" scores the other images and adds
      ``skipped_images`` (paths) and ``n_skipped`` to every entry of the benchmark (then not comparable with
      complete runs).
    - ``details``: a dict to fill (on every rank) with what the results files record besides the metrics:
      ``fingerprints`` ({benchmark: data fingerprint, lk_ablate.base.provenance}), ``eval_transform``
      ({benchmark: the EvalSpec}) and ``per_image`` ({weights: {benchmark: {part: {"n", "top1"}}}}, the packed
      top-1 flags in fingerprint order; not for ImageNet-O, scored by AUPR).
    """
    if device is None:
        device = next(next(iter(models.values())).parameters()).device
    device = torch.device(device)
    check_options(decode, precision, on_bad_image, device)
    # Restored module by module afterwards: a submodule may be in eval mode on purpose (frozen norms, EMA).
    was_training = {w: [mod.training for mod in m.modules()] for w, m in models.items()}
    local: dict[str, Any] = {"scores": {}, "errors": [], "skipped": {}, "fatal": None, "sizes": {}}
    listings: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    try:
        for m in models.values():
            m.eval()
        for b, bench in enumerate(benchmarks):
            skipped: list[tuple[int, str]] = []
            try:
                acc, errs, inputs = _local_scores(models, bench, cfg, rank, world_size, batch_size, num_workers,
                                                  device, progress, decode, precision, on_bad_image, skipped)
                # Packed before the gather: 1 bit per image and weight set instead of a byte.
                for w in acc:
                    if PER_IMAGE in acc[w]:
                        acc[w][PER_IMAGE] = {k: np.packbits(v) for k, v in acc[w][PER_IMAGE].items()}
                local["sizes"][bench.name] = inputs.sizes
                listings[bench.name] = (inputs.data.paths, inputs.data.part, inputs.data.labels)
            except BadImage as e:  # stop now; every rank raises it after the gather
                local["fatal"] = (b, e.index, str(e))
                break
            except Exception:  # e.g. a loader failure: every weight set of this benchmark fails
                acc, errs = {}, {w: traceback.format_exc(limit=4) for w in models}
            local["skipped"][bench.name] = skipped
            for w in models:
                if w in errs:
                    local["errors"].append({"weights": w, "benchmark": bench.name, "rank": rank, "error": errs[w]})
                else:
                    local["scores"][(w, bench.name)] = acc[w]
    finally:
        for w, m in models.items():
            for mod, flag in zip(m.modules(), was_training[w]):
                mod.training = flag
    gathered = gather(local) if gather is not None else [local]
    fatal = [g["fatal"] for g in gathered if g["fatal"] is not None]
    if fatal:  # each rank stopped at its own first bad image: report the first in one-process order
        raise DataError(min(fatal)[2])
    errors = [e for g in gathered for e in g["errors"]]
    failed = {(e["weights"], e["benchmark"]) for e in errors}
    results: dict[str, dict[str, dict | None]] = {}
    for w in models:
        results[w] = {}
        clean_top1 = None
        for bench in benchmarks:
            if (w, bench.name) in failed:
                results[w][bench.name] = None
                continue
            merged = _merge(bench.kind, [g["scores"][(w, bench.name)] for g in gathered])
            try:
                results[w][bench.name] = _summarize(bench, merged, clean_top1)
            except Exception:
                results[w][bench.name] = None
                errors.append({"weights": w, "benchmark": bench.name, "rank": None,
                               "error": traceback.format_exc(limit=4)})
            if bench.kind == "topk" and results[w][bench.name] is not None:
                clean_top1 = results[w][bench.name]["top1"]
            if on_bad_image == "skip" and results[w][bench.name] is not None:
                paths = [p for _, p in sorted(s for g in gathered for s in g["skipped"][bench.name])]
                results[w][bench.name].update(skipped_images=paths, n_skipped=len(paths))
    if details is not None:
        details.update(_details(models, benchmarks, cfg, gathered, listings, failed))
    return results, errors


def _details(models: Mapping[str, nn.Module], benchmarks: Sequence[Benchmark], cfg: ModelConfig,
             gathered: list[dict], listings: dict, failed: set) -> dict[str, Any]:
    """Fingerprints, eval transforms and per-image flags of every scored benchmark (see ``evaluate``)."""

    out: dict[str, Any] = {"fingerprints": {}, "eval_transform": {}, "per_image": {w: {} for w in models}}
    for bench in benchmarks:
        if bench.name not in listings or any(bench.name not in g["sizes"] for g in gathered):
            continue
        paths, part, _ = listings[bench.name]
        # Each rank read its own batches: a file's size is the one non-negative entry (-1 where unreadable).
        sizes = np.max(np.stack([g["sizes"][bench.name] for g in gathered]), axis=0)
        whole, per_part = Fingerprint(), [Fingerprint() for _ in bench.parts]
        # Several folders (ImageNet-O's in/out; ImageNet-C's cells, even one: gaussian_noise/5 and shot_noise/5
        # hold the same file names): paths carry the part's key, and each part has its own fingerprint too.
        several = len(bench.parts) > 1 or bench.kind == "corruption"
        for i, (path, p, size) in enumerate(zip(paths, part, sizes)):
            rel = os.path.relpath(path, bench.parts[p].root).replace(os.sep, "/")
            per_part[p].add(rel, int(size))
            whole.add(f"{bench.parts[p].key}/{rel}" if several else rel, int(size))
        fp = whole.result(num_classes=len(bench.parts[0].classes))
        if several:
            fp["parts"] = {pt.key: f.result(num_classes=len(pt.classes)) for pt, f in zip(bench.parts, per_part)}
        out["fingerprints"][bench.name] = fp
        out["eval_transform"][bench.name] = dict(to_jsonable(bench.parts[0].spec(cfg)),
                                                 protocol=bench.parts[0].protocol)
        if bench.kind == "ood":
            continue
        for w in models:
            if (w, bench.name) in failed:
                continue
            packed = [g["scores"][(w, bench.name)][PER_IMAGE] for g in gathered]
            out["per_image"][w][bench.name] = {
                pt.key: {"n": int(n), "top1": pack_bits(np.unpackbits(np.bitwise_or.reduce(
                    [pk[pt.key] for pk in packed]), count=int(n)).astype(bool))}
                for pt, n in zip(bench.parts, np.bincount(part, minlength=len(bench.parts)))}
    out["per_image"] = {w: v for w, v in out["per_image"].items() if v}
    return out
