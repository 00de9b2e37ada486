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
import contextlib
import datetime as _dt
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .errors import DataError
from .jsonable import to_jsonable
from .version import __version__

__all__ = ["SCHEMA", "SCHEMA_VERSION", "flatten_metrics", "make_results", "pack_bits", "read_results", "results_path",
           "unpack_bits", "update_results", "validate_results", "value_problems", "write_results"]

SCHEMA = "lk_ablate.robustness"
SCHEMA_VERSION = 1
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
    with _locked(path):
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


def flatten_metrics(results: Mapping[str, Any], prefix: str = "robust") -> dict[str, float]:
    """Scalar metrics as ``<prefix>/<benchmark>/<metric>``; EMA weights get the suffix ``_ema``.

    ImageNet-C cells become ``top1_<corruption>_<severity>``. Benchmarks scored under a protocol other than
    ``model`` are named ``<benchmark>@<protocol>`` (never logged under the same key as the model protocol's).
    """
    out: dict[str, float] = {}
    protocol = (results.get("settings") or {}).get("protocol") or "model"
    for w, benches in results["weights"].items():
        suffix = "_ema" if w == "ema" else ""
        for name, m in benches.items():
            if not m:
                continue
            bench = name if protocol == "model" else f"{name}@{protocol}"
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _COUNT_KEYS \
                        and not k.startswith("correct"):
                    out[f"{prefix}/{bench}/{k}{suffix}"] = float(v)
            if name == "imagenet_c":
                for c, by_sev in m["top1"].items():
                    for s, v in by_sev.items():
                        out[f"{prefix}/{bench}/top1_{c}_{s}{suffix}"] = float(v)
    return out


def _deep_merge(old: dict, new: Mapping) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl  # lazy: POSIX only, needed by the read-modify-write of update_results alone

    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
