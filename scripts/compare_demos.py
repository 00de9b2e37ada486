"""Compare two complete `lk_ablate demo` output folders bit for bit (the manual check of docs/reproducibility.md).

    .venv/bin/lk_ablate demo --output_dir /tmp/demo_a
    (cd /tmp/elsewhere && /path/to/repo/.venv/bin/lk_ablate demo --output_dir /tmp/demo_b)   # its own .beton files
    .venv/bin/python scripts/compare_demos.py /tmp/demo_a /tmp/demo_b

For every kernel size both ran: the trained weights (``torch.equal`` per tensor of ``last.ckpt``'s state dict), the
results (every metric and every image's top-1 flag), and the Fashion-MNIST-C caches (bytes of every .npy); then
what produced each (commit, versions, device, CPU kernels, threads: ``provenance``). Prints one line per item and
exits 0 when everything is identical, 1 otherwise. Not part of ``make test``: it needs two complete demos.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _max_rel(a, b) -> float:
    d = (a.double() - b.double()).norm()
    n = b.double().norm()
    return float(d / n) if n > 0 else float(d)


def compare(a: Path, b: Path) -> int:
    import torch

    from lk_ablate.base.provenance import describe, provenance_differences
    from lk_ablate.base.safe_load import load_torch_file

    problems = 0
    kernels = sorted({p.name for p in a.glob("k*") if p.is_dir()} & {p.name for p in b.glob("k*") if p.is_dir()},
                     key=lambda k: int(k[1:]))
    if not kernels:
        print(f"no common k* run folders in {a} and {b}")
        return 1
    for k in kernels:
        ca, cb = (load_torch_file(str(d / k / "last.ckpt")) for d in (a, b))
        sa, sb = ca["state_dict"], cb["state_dict"]
        differ = [n for n in sa if n not in sb or not torch.equal(sa[n], sb[n])]
        if differ:
            problems += 1
            worst = max(differ, key=lambda n: _max_rel(sa[n], sb[n]) if n in sb else float("inf"))
            print(f"{k}: weights differ in {len(differ)} of {len(sa)} tensors (largest ||a-b||/||b||: "
                  f"{_max_rel(sa[worst], sb[worst]):.2e} in {worst})")
        else:
            print(f"{k}: weights identical ({len(sa)} tensors, torch.equal)")
        ra, rb = (json.loads((d / k / "last.robustness.json").read_text()) for d in (a, b))
        same_metrics = ra["weights"] == rb["weights"]
        same_images = ra.get("per_image") == rb.get("per_image")
        problems += not (same_metrics and same_images)
        print(f"{k}: results {'identical' if same_metrics else 'DIFFER'}; per-image top-1 "
              f"{'identical' if same_images else 'DIFFER'}")
        for side, r in (("a", ra), ("b", rb)):
            print(f"    {side}: {describe(r.get('provenance'))}")
        diff = provenance_differences(ra.get("provenance"), rb.get("provenance"))
        if diff:
            print(f"    provenance differs in: {', '.join(diff)}")
    caches = [sorted((d / "fashion_mnist_c_cache").rglob("*.npy")) for d in (a, b)]
    names = [[p.relative_to(d / "fashion_mnist_c_cache") for p in c] for c, d in zip(caches, (a, b))]
    if names[0] != names[1]:
        problems += 1
        print("Fashion-MNIST-C caches: different files")
    else:
        differ = [str(n) for n, pa, pb in zip(names[0], *caches) if not filecmp.cmp(pa, pb, shallow=False)]
        problems += bool(differ)
        print(f"Fashion-MNIST-C caches: {len(names[0])} files, "
              + (f"{len(differ)} differ ({', '.join(differ[:3])} ...)" if differ else "byte-identical"))
    print("identical" if problems == 0 else f"{problems} difference(s)")
    return 0 if problems == 0 else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args()
    raise SystemExit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
