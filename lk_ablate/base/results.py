"""The robustness results file: one versioned JSON per scored checkpoint, written beside it.

Everything downstream (``lk_ablate report``, the analyses) reads only these files. Schema version 1::

    {
      "schema": "lk_ablate.robustness", "schema_version": 1, "created": "<UTC ISO time>", "lk_ablate_version": "...",
      "model": {"name": str, "kernel_sizes": [int, ...] | null, "num_params": int, "source": "lk_ablate" | "timm",
                "config": {input_size, crop_pct, mean, std, interpolation, num_classes, crop_mode}},
      "checkpoint": {"path": abs path | null, "epoch": int | null, "global_step": int | null,
                     "format": "lightning" | "official" | "timm" | "pretrained" | null},
      "weights": {"raw": {<benchmark>: {...} | null, ...}, "ema": {...}},   # the weight sets that were scored
      "primary": "ema" | "raw",            # the set headline numbers use: EMA when it was scored
      "settings": {"benchmarks": {<benchmark>: path}, "imagenet_c": {"corruptions": [...], "severities": [...]},
                   "protocol": "model" | "paper",   # the benchmarks' eval protocol; missing = "model"
                   "scoring": {"decode": "cpu" | "gpu", "precision": "32-true" | "bf16-mixed",
                               "on_bad_image": "error" | "skip"}},   # missing = cpu / 32-true / error
      "errors": [{"weights", "benchmark", "rank", "error"}, ...],
      "analyses": {<name>: {..., "protocol": "model" | "paper"}},  # added later with update_results(path,
                                           # "analyses.<name>", {...}); each analysis's protocol, missing = "model"
      "provenance": {...},                 # what produced the file (lk_ablate.base.provenance); missing in files
                                           # written before it existed: read as "no provenance"
      "per_image": {<weights>: {<benchmark>: {<part>: {"n": int, "top1": str}}}}   # optional, see below
    }

Analysis entries are each analysis's own (docs/analyses.md), with ``summary_scalars``; large arrays live beside the
file, ``<results stem>.<name>.npz``, named by the entry's ``arrays_file``. ``erf``: {images, images_read, skipped,
image_size, stage, stage_name, feature_size, centre, map_max, map_min, thresholds: [{threshold, side | null,
area_ratio | null}], arrays_file}; ``shape_bias``: {images, conflict_images, excluded_same_category, shape_hits,
texture_hits, shape_bias, shape_accuracy, texture_accuracy (%, null without hits), categories: {<category>: the same
counts}, decisions: {<category>: count}}.
``per_image`` holds each image's top-1 correctness, bit-packed (``pack_bits``: numpy ``packbits``, big-endian
bit order, base64), in the order of the benchmark's data fingerprint (``provenance.data.<benchmark>``; per part
``parts.<part>``): what paired comparisons between two models scored on the same images need.

Benchmark entries (accuracies, mCE and AUPR in %, counts are numbers of images):
``imagenet_val`` {top1, top5, correct_top1, correct_top5, n}; ``imagenet_a`` / ``imagenet_r`` {top1, correct, n};
``imagenet_c`` {top1[c][s], n[c][s], correct[c][s], mean_top1, corruption_top1[c], ce[c], mce, relative_mce,
severity5_mean_top1, severity5_mean_top1_15, n_total}; ``imagenet_o`` {aupr, n_in, n_out, n}. With
``on_bad_image: skip`` every entry of a benchmark with unreadable images also holds ``skipped_images`` (paths) and
``n_skipped``; such an entry is scored on fewer images than the benchmark and is not comparable with full runs.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write_text, locked
from .errors import DataError, WriteError
from .jsonable import to_jsonable
from .metric_keys import corruption_key, robust_key
from .version import __version__

__all__ = ["RESULTS_SPACE", "SCHEMA", "SCHEMA_VERSION", "flatten_metrics", "make_results", "pack_bits", "read_results",
           "results_path", "unpack_bits", "update_results", "validate_results", "value_problems", "write_results",
           "write_results_or_keep"]

SCHEMA = "lk_ablate.robustness"
SCHEMA_VERSION = 1
# Free space a results file is checked for before the work that fills it: results files are kilobytes (one analysis
# of convnext_demo: 35 KiB) to a few MiB (per-image records); less than this free means the disk is all but full.
RESULTS_SPACE = 16 * 1024 * 1024
WEIGHT_SETS = ("raw", "ema")
_COUNT_KEYS = {"n", "n_in", "n_out", "n_total"}
_REQUIRED = {"schema": str, "schema_version": int, "created": str, "model": dict, "checkpoint": dict,
             "weights": dict, "primary": str, "settings": dict, "errors": list}


def results_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the results of a checkpoint go: beside it, ``<name>.robustness.json`` (``x.ckpt`` -> ``x.robustness.json``)."""
    p = Path(checkpoint_path)
    return p.with_name(p.stem + ".robustness.json") if p.suffix else p.with_name(p.name + ".robustness.json")


def make_results(*, model_name: str, kernel_sizes: list[int] | None, num_params: int, model_config: Mapping,
                 weights: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any], errors: list[dict],
                 checkpoint_path: str | os.PathLike | None = None, epoch: int | None = None,
                 global_step: int | None = None, checkpoint_format: str | None = None,
                 model_source: str = "lk_ablate", provenance: Mapping[str, Any] | None = None,
                 per_image: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a schema-v1 results dict (validated). ``provenance`` defaults to what this process can say by
    itself (``provenance.collect()``: code, versions, machine, threads); scoring code passes the full record."""
    if provenance is None:
        from .provenance import collect  # lazy: it reads torch's settings

        provenance = collect()
    data = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lk_ablate_version": __version__,
        "model": {"name": model_name, "kernel_sizes": None if kernel_sizes is None else [int(k) for k in kernel_sizes],
                  "num_params": int(num_params), "source": model_source, "config": to_jsonable(dict(model_config))},
        "checkpoint": {"path": None if checkpoint_path is None else os.path.abspath(checkpoint_path),
                       "epoch": None if epoch is None else int(epoch),
                       "global_step": None if global_step is None else int(global_step),
                       "format": checkpoint_format},
        "weights": to_jsonable(dict(weights)),
        "primary": "ema" if "ema" in weights else "raw",
        "settings": to_jsonable(dict(settings)),
        "errors": to_jsonable(list(errors)),
        "analyses": {},
        "provenance": to_jsonable(dict(provenance)),
    }
    if per_image:
        data["per_image"] = to_jsonable(dict(per_image))
    return validate_results(data)


def validate_results(data: Any, source: str = "results") -> dict[str, Any]:
    """Check the schema name, version and top-level fields; raise DataError naming what is wrong."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DataError(f"{source} is not an lk_ablate robustness results file (schema {SCHEMA!r} expected)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{source} has schema_version {data.get('schema_version')!r}; this lk_ablate reads "
                        f"version {SCHEMA_VERSION}: re-score the checkpoint with `lk_ablate robustness`")
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise DataError(f"{source}: field {key!r} is missing or not a {typ.__name__}")
    unknown = set(data["weights"]) - set(WEIGHT_SETS)
    if unknown or not data["weights"]:
        raise DataError(f"{source}: 'weights' must hold some of {WEIGHT_SETS}, got {sorted(data['weights'])}")
    if data["primary"] not in data["weights"]:
        raise DataError(f"{source}: primary weights {data['primary']!r} were not scored")
    problems = value_problems(data)
    if problems:  # one line: the report lists one line per bad file
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"{source}: {'; '.join(problems[:3])}{more}")
    return data


# Value rules (type, range, finite). Percentages: accuracies and AUPR; counts: images.
_PERCENT_KEYS = {"aupr"}
_INT_KEYS = _COUNT_KEYS | {"correct", "correct_top1", "correct_top5"}
_NUMBER_KEYS = {"ce", "mce", "relative_mce"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_leaves(value: Any, where: str, rule: str, out: list[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_leaves(v, f"{where}.{k}", rule, out)
        return
    if rule == "any":
        if _is_number(value) and not math.isfinite(value):
            out.append(f"{where} is {value} (not finite)")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                _check_leaves(v, f"{where}[{i}]", rule, out)
        return
    if value is None:
        return  # a metric that could not be computed (e.g. no images of that class) is recorded as null
    if not _is_number(value):
        out.append(f"{where} is {type(value).__name__} {value!r:.40}, expected a number")
    elif not math.isfinite(value):
        out.append(f"{where} is {value} (not finite)")
    elif rule == "percent" and not 0.0 <= value <= 100.0:
        out.append(f"{where} is {value:.6g}, outside [0, 100]")
    elif rule == "count" and (not float(value).is_integer() or value < 0):
        out.append(f"{where} is {value!r}, expected a count (integer >= 0)")
    elif rule == "count" and value > 1e12:
        out.append(f"{where} is {value:.6g}, not a plausible number of images")


def _metric_rule(key: str) -> str:
    if key in _INT_KEYS:
        return "count"
    if key in _PERCENT_KEYS or "top1" in key or "top5" in key:
        return "percent"
    if key in _NUMBER_KEYS:
        return "number"
    return "any"


# An accuracy must equal 100 * correct / n within this many percentage points (half of the last digit of a value
# written with two decimals; scorers write the exact quotient, so a real file is off by float rounding only).
COUNT_TOLERANCE_PP = 0.005
# (accuracy key, count-of-correct key) pairs that hold the same measurement twice; ``n`` is the number of images.
_ACCURACY_COUNTS = (("top1", "correct"), ("top1", "correct_top1"), ("top5", "correct_top5"))


def _check_counts(entry: Mapping[str, Any], where: str, out: list[str]) -> None:
    """The numbers of one benchmark entry agree with each other: an accuracy with its counts (``top1`` = 100 *
    ``correct`` / ``n``, per cell for corruption benchmarks), ``correct`` <= ``n``, no entry scored on 0 images,
    the means of a corruption benchmark with its cells (``mean_top1``, ``corruption_top1``), ``n`` = ``n_in`` +
    ``n_out`` (OOD), ``n_total`` = the sum of the cells' ``n``."""
    def num(v: Any) -> bool:
        return _is_number(v) and math.isfinite(v)

    for key in _COUNT_KEYS:
        if isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool) and entry[key] == 0:
            out.append(f"{where}.{key} is 0: a benchmark scored on no images has no value")
    n = entry.get("n")
    for acc_key, count_key in _ACCURACY_COUNTS:
        acc, correct = entry.get(acc_key), entry.get(count_key)
        if isinstance(acc, Mapping) and isinstance(correct, Mapping):  # corruption cells: top1[c][s], correct[c][s]
            for c, by_sev in acc.items():
                for s, v in (by_sev.items() if isinstance(by_sev, Mapping) else ()):
                    cell_n = n.get(c, {}).get(s) if isinstance(n, Mapping) and isinstance(n.get(c), Mapping) else n
                    k = (correct.get(c) or {}).get(s) if isinstance(correct.get(c), Mapping) else None
                    _check_accuracy(v, k, cell_n, f"{where}.{acc_key}.{c}.{s}", out)
        elif num(acc) and num(correct) and num(n):
            _check_accuracy(acc, correct, n, f"{where}.{acc_key}", out, count_key)
    cells = entry.get("top1")
    if isinstance(cells, Mapping):  # corruption benchmarks: the means are means of the cells
        rows = {c: [v for v in by_sev.values() if num(v)] for c, by_sev in cells.items() if isinstance(by_sev, Mapping)}
        every = [v for vs in rows.values() for v in vs]
        if num(entry.get("mean_top1")) and every and abs(entry["mean_top1"] - sum(every) / len(every)) > \
                COUNT_TOLERANCE_PP:
            out.append(f"{where}.mean_top1 is {entry['mean_top1']:.6g}, but the mean of its {len(every)} top1 cells is "
                       f"{sum(every) / len(every):.6g}")
        per = entry.get("corruption_top1")
        for c, vs in rows.items():
            v = per.get(c) if isinstance(per, Mapping) else None
            if num(v) and vs and abs(v - sum(vs) / len(vs)) > COUNT_TOLERANCE_PP:
                out.append(f"{where}.corruption_top1.{c} is {v:.6g}, but the mean of its top1 cells is "
                           f"{sum(vs) / len(vs):.6g}")
    if all(num(entry.get(k)) for k in ("n", "n_in", "n_out")) and entry["n"] != entry["n_in"] + entry["n_out"]:
        out.append(f"{where}.n is {entry['n']}, but n_in + n_out = {entry['n_in'] + entry['n_out']}")
    if num(entry.get("n_total")) and isinstance(n, Mapping):
        cells = [v for by_sev in n.values() if isinstance(by_sev, Mapping) for v in by_sev.values() if num(v)]
        if cells and entry["n_total"] != sum(cells):
            out.append(f"{where}.n_total is {entry['n_total']}, but the cells' n add up to {sum(cells):g}")


def _check_accuracy(acc: Any, correct: Any, n: Any, where: str, out: list[str], count_key: str = "correct") -> None:
    if not all(_is_number(v) and math.isfinite(v) for v in (acc, correct, n)) or n <= 0:
        return  # types, ranges and n = 0 are reported by the other rules
    if correct > n:
        out.append(f"{where}: {count_key} {correct:g} of n {n:g} images (more correct than scored)")
    elif abs(acc - 100.0 * correct / n) > COUNT_TOLERANCE_PP:
        out.append(f"{where} is {acc:.6g}, but {count_key}/n = {correct:g}/{n:g} = {100.0 * correct / n:.4g}%")


def value_problems(data: Mapping[str, Any]) -> list[str]:
    """Every value a reader computes with, checked for type, range and finiteness ("where: what" each)."""
    out: list[str] = []
    model, ckpt = data["model"], data["checkpoint"]
    if not isinstance(model.get("name"), str) or not model.get("name"):
        out.append(f"model.name is {model.get('name')!r}, expected a model name")
    ks = model.get("kernel_sizes")
    if ks is not None and not (isinstance(ks, list) and ks and all(
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 10_000 for k in ks)):
        out.append(f"model.kernel_sizes is {ks!r:.60}, expected null or a list of kernel sizes")
    n_params = model.get("num_params")
    if n_params is not None and not (isinstance(n_params, int) and not isinstance(n_params, bool) and n_params >= 0):
        out.append(f"model.num_params is {n_params!r:.40}, expected an integer >= 0")
    for key in ("epoch", "global_step"):
        v = ckpt.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            out.append(f"checkpoint.{key} is {v!r:.40}, expected null or an integer >= 0")
    seed = (data.get("settings") or {}).get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        out.append(f"settings.seed is {seed!r:.40}, expected null or an integer")
    for w, benches in data["weights"].items():
        if not isinstance(benches, Mapping):
            out.append(f"weights.{w} is {type(benches).__name__}, expected an object of benchmarks")
            continue
        for bench, entry in benches.items():
            if entry is None:
                continue  # failed benchmark (listed in errors)
            if not isinstance(entry, Mapping):
                out.append(f"weights.{w}.{bench} is {type(entry).__name__}, expected an object of metrics")
                continue
            for k, v in entry.items():
                _check_leaves(v, f"weights.{w}.{bench}.{k}", _metric_rule(k), out)
            _check_counts(entry, f"weights.{w}.{bench}", out)
    prov = data.get("provenance")
    if prov is not None and not (isinstance(prov, Mapping) and isinstance(prov.get("schema"), int)):
        out.append("provenance is not a provenance record (an object with an integer 'schema')")
    out += _per_image_problems(data)
    analyses = data.get("analyses")
    if analyses is not None and not isinstance(analyses, Mapping):
        out.append(f"analyses is {type(analyses).__name__}, expected an object")
    elif analyses:
        _check_leaves(analyses, "analyses", "any", out)
    return out


def _per_image_problems(data: Mapping[str, Any]) -> list[str]:
    per_image = data.get("per_image")
    if per_image is None:
        return []
    if not isinstance(per_image, Mapping):
        return [f"per_image is {type(per_image).__name__}, expected an object"]
    out = []
    for w, benches in per_image.items():
        for bench, parts in (benches.items() if isinstance(benches, Mapping) else [(None, None)]):
            for part, entry in (parts.items() if isinstance(parts, Mapping) else [(None, None)]):
                where = f"per_image.{w}.{bench}.{part}"
                n = entry.get("n") if isinstance(entry, Mapping) else None
                bits = entry.get("top1") if isinstance(entry, Mapping) else None
                if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0 and isinstance(bits, str)):
                    out.append(f"{where} is not {{'n': count, 'top1': packed bits}}")
                elif len(bits) != 4 * (((n + 7) // 8 + 2) // 3):
                    out.append(f"{where}.top1 holds {len(bits)} base64 characters, not the {n} images' bits")
    return out


def pack_bits(flags: Any) -> str:
    """Booleans (one per image, in fingerprint order) -> base64 of numpy ``packbits`` (8 images per byte)."""
    import numpy as np

    return base64.b64encode(np.packbits(np.asarray(flags, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> Any:
    """The inverse of ``pack_bits``: a bool array of ``n`` images."""
    import numpy as np

    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file's content; a missing file or invalid JSON is a DataError naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    return validate_results(read_json(path, "results file"), str(path))


def write_results(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Validate and write atomically (temporary file + rename), so readers never see half a file."""
    path = Path(path)
    validate_results(dict(data), str(path))
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def write_results_or_keep(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Store freshly scored results at ``path`` (``lk_ablate robustness``).

    Analyses already stored there for the same checkpoint state (model, checkpoint path and global step) are kept:
    a re-score replaces the benchmark scores, not the analyses run on those weights. When the environment refuses
    the write (full disk, read-only, ...), the results are not lost: they go to a file in the temporary folder,
    and the WriteError names both paths (move the kept file to ``path`` once it can be written).
    """
    data = dict(data)
    try:
        with locked(path):
            old = None
            if Path(path).is_file():
                try:
                    old = read_results(path)
                except DataError:
                    old = None  # not a valid results file: replaced whole
            if old is not None and old.get("analyses") and _same_state(old, data):
                data["analyses"] = {**old["analyses"], **(data.get("analyses") or {})}
            return write_results(path, data)
    except WriteError as e:
        fd, kept = tempfile.mkstemp(prefix=f"lk_ablate-{Path(path).stem}-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        except OSError:
            raise e from None
        raise WriteError(f"{e}; the results were kept in {kept}: move that file to {path} once it can be "
                         "written") from e


def _same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    ca, cb = a.get("checkpoint") or {}, b.get("checkpoint") or {}
    return (a["model"].get("name"), a["model"].get("kernel_sizes"), ca.get("path"), ca.get("global_step")) == \
        (b["model"].get("name"), b["model"].get("kernel_sizes"), cb.get("path"), cb.get("global_step"))


def update_results(path: str | os.PathLike, key: str, value: Any) -> dict[str, Any]:
    """Merge ``value`` into section ``key`` of an existing results file, atomically; returns the new contents.

    ``key`` may be dotted ("analyses.occlusion"). Dicts are merged recursively (new values win), anything else
    replaces. A lock file serialises concurrent writers (several analyses of one checkpoint at once).
    """
    path = Path(path)
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ValueError("update_results needs a non-empty key")
    if parts[0] in ("schema", "schema_version"):
        raise ValueError(f"{parts[0]!r} cannot be updated")
    with locked(path):
        data = read_results(path)
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        old = node.get(parts[-1])
        node[parts[-1]] = _deep_merge(old, to_jsonable(value)) if isinstance(old, dict) and isinstance(value, Mapping) \
            else to_jsonable(value)
        write_results(path, data)
    return data


def flatten_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics under their logged names (``base.metric_keys.robust_key``): ``robust/<benchmark>/<metric>``,
    ``_ema`` for the EMA weights, ``<benchmark>@<protocol>`` for a protocol other than ``model`` (never logged under
    the model protocol's key). Corruption benchmarks add ``top1_<corruption>`` (mean over the scored severities) and
    ``top1_<corruption>_<severity>`` (each cell)."""
    out: dict[str, float] = {}
    protocol = (results.get("settings") or {}).get("protocol") or "model"
    for w, benches in results["weights"].items():
        ema = w == "ema"
        for name, m in benches.items():
            if not m:
                continue
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _COUNT_KEYS \
                        and not k.startswith("correct"):
                    out[robust_key(name, k, ema, protocol)] = float(v)
            for c, v in (m.get("corruption_top1") or {}).items():
                if _is_number(v):
                    out[corruption_key(name, c, None, ema, protocol)] = float(v)
            if isinstance(m.get("top1"), Mapping):
                for c, by_sev in m["top1"].items():
                    for s, v in by_sev.items():
                        out[corruption_key(name, c, s, ema, protocol)] = float(v)
    return out


def _deep_merge(old: dict, new: Mapping) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out
