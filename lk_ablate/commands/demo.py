"""``lk_ablate demo``: the embedded default, real, small and offline.

Writes real Fashion-MNIST to FFCV .beton files once (cached), trains the reduced ConvNeXt
(``convnext_demo``) from them at two kernel sizes through the same CLI, config and recipe code as the
ImageNet runs, scores each on the full 10,000-image test set and on
Fashion-MNIST-C (15 corruptions x 5 severities on a fixed test subset, corrupted once and cached), writes a
results JSON per run and ends with the ablation report.

    lk_ablate demo                                   # kernel sizes [3,13], 3 epochs (what `make demo` runs)
    lk_ablate demo --kernel_sizes [3,7,13] --max_epochs 1 -- --trainer.limit_train_batches 50

Everything after ``--`` goes to each ``lk_ablate fit`` run (``--trainer.*``, ``--model.*``, ...); it is kept in
``--fit`` (``--print_config`` shows it, a ``--config`` file may list it).

Same command, same numbers: the demo runs with 2 torch threads and, on x86-64 CPUs with AVX2, with the CPU
kernels pinned (lk_ablate/base/cpu_kernels.py; the process re-executes itself once to set them before torch
loads), so its table is bit-identical on every such machine (docs/reproducibility.md). ``--num_threads null
--cpu_kernels native`` is faster on large machines and gives other numbers in single images.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..base.metric_keys import VAL_TOP1
from ._common import PROGRESS_HELP, command_parser, parse

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "demo_fashion_mnist.yaml"


class Stages:
    """Wall-clock time of each stage, printed as it ends and summed at the end."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        self.times.append((name, dt))
        print(f"== {name}: {dt:.1f} s", flush=True)
        return out

    def table(self) -> str:
        rows = [f"  {n:<48} {t:7.1f} s" for n, t in self.times]
        return "\n".join(["stage times:", *rows, f"  {'total':<48} {sum(t for _, t in self.times):7.1f} s"])


def train(kernel: int, epochs: int, out: Path, extra: list[str]):
    """`lk_ablate fit --config configs/demo_fashion_mnist.yaml --model.kernel_size K` in-process."""
    from ..lightning_cli import build_cli

    # A rerun trains afresh: the previous demo run's checkpoints and scores in its own folder go first (a fit does
    # not start from scratch in a folder that holds another run's last.ckpt).
    for old in [*(out / f"k{kernel}").glob("*.ckpt"), *(out / f"k{kernel}").glob("*.robustness.json")]:
        old.unlink()
    args = ["fit", "--config", str(DEMO_CONFIG), "--model.kernel_size", str(kernel),
            "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(out / f"k{kernel}"),
            "--checkpoint.dirpath", str(out / f"k{kernel}"), "--trainer.logger.init_args.save_dir",
            str(out / f"k{kernel}"), *extra]
    cli = build_cli(args)
    ckpt = cli.trainer.checkpoint_callback.last_model_path or cli.trainer.checkpoint_callback.best_model_path
    acc = float(cli.trainer.callback_metrics[VAL_TOP1])  # in percent
    return cli.model, ckpt, acc, cli.trainer


def _parser() -> Any:
    p = command_parser("lk_ablate demo", __doc__.split("\n\n")[0])
    p.add_argument("--kernel_sizes", type=list[int], default=[3, 13],
                   help="depthwise kernel sizes, one fit each, e.g. [3,13]")
    p.add_argument("--max_epochs", type=int, default=3, help="training epochs of each fit (trainer.max_epochs)")
    p.add_argument("--output_dir", type=str, default="checkpoints/demo",
                   help="run folders, results JSON and the report")
    p.add_argument("--subset_size", type=int, default=500, help="test images corrupted for Fashion-MNIST-C")
    p.add_argument("--subset_seed", type=int, default=0, help="the seed of that subset and of its corruptions")
    p.add_argument("--num_threads", type=int | None, default=2,
                   help="torch threads (null: all cores); the README's table was made with 2, and training results "
                        "depend on the thread count in the last bits")
    p.add_argument("--cpu_kernels", type=Literal["avx2", "native"], default="avx2",
                   help="avx2: the same CPU kernels on every x86-64 machine with AVX2 (bit-identical results); "
                        "native: the libraries choose by CPU (faster with AVX-512, other numbers in single images)")
    p.add_argument("--progress", type=bool, default=True, help=PROGRESS_HELP)
    p.add_argument("--fit", type=list[Any], default=[],
                   help="options for each `lk_ablate fit` run, e.g. [--trainer.limit_train_batches,6]; on the "
                        "command line: everything after --")
    return p


def parse_args(argv: Sequence[str]) -> Any:
    """The demo's options; the words after ``--`` are appended to ``--fit`` (so --print_config shows them)."""
    argv = list(argv)
    own, fit = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    return parse(_parser(), own + [f"--fit+={a}" for a in fit])


def _combined(parts: dict[str, dict[str, Any]]) -> str:
    """One SHA-256 over the parts' fingerprints (in order): the fingerprint of a benchmark made of several sets."""
    import hashlib

    return hashlib.sha256("".join(f"{k}\t{v['sha256']}\n" for k, v in parts.items()).encode()).hexdigest()


def _pin_cpu_kernels(argv: Sequence[str]) -> str:
    """Pin the CPU kernels (base/cpu_kernels.py) for this process; re-executes the command line when torch is
    already loaded and this is the process's own command (never when the demo is called from Python)."""
    from ..base.cpu_kernels import pin

    own = list(sys.argv[1:]) == ["demo", *argv]
    return pin([sys.executable, *sys.orig_argv[1:]] if own else None)


def _as_arg(value: Any) -> str:
    """A --fit list item as a command-line word (YAML gives 6, true, null for the words 6, true, null)."""
    return value if isinstance(value, str) else json.dumps(value)


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    extra = [_as_arg(a) for a in args.fit]
    kernels = _pin_cpu_kernels(argv) if args.cpu_kernels == "avx2" else "CPU kernels: native (--cpu_kernels native)"

    import numpy as np
    import torch

    from ..base.provenance import array_fingerprint, collect
    from ..base.results import make_results, pack_bits, results_path, write_results
    from ..data.fashion_mnist import load_fashion_mnist, resize_grey
    from ..models.layers import dwconv_info
    from ..robustness.corruptions import (CORRUPTIONS, corrupt_images, evaluate_corruptions, stratified_subset,
                                          top1_flags)

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    print(f"{kernels}; {torch.get_num_threads()} torch threads", flush=True)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    from ..data.fashion_mnist_ffcv import ensure_fashion_mnist_betons
    from ..models.registry import get_model_config

    size = get_model_config("convnext_demo").image_size
    stages.run(f"Fashion-MNIST -> .beton ({size} px RGB; written once, then cached)", ensure_fashion_mnist_betons,
               "data_cache/fashion_mnist_ffcv", size)
    runs = {}
    for k in sorted(args.kernel_sizes):
        runs[k] = stages.run(f"train convnext_demo k={k} ({args.max_epochs} epochs, 60k images)", train, k,
                             args.max_epochs, out, extra)

    images, labels = load_fashion_mnist("test")
    size = next(iter(runs.values()))[0].model_config.image_size
    test_rgb = np.repeat(resize_grey(images, size).numpy()[..., None], 3, axis=-1)
    idx = stratified_subset(labels, args.subset_size, seed=args.subset_seed)
    models = {k: r[0].model.eval() for k, r in runs.items()}

    def corrupt_and_score():
        scores = evaluate_corruptions(models, test_rgb[idx], labels[idx], corruptions=CORRUPTIONS,
                                      seed=args.subset_seed, cache_dir=out / "fashion_mnist_c_cache",
                                      baseline=min(runs), progress=args.progress)
        # Clean top-1 on the full test set, image by image, through the same input path as the corrupted images
        # (the per-image flags are what the report's paired comparisons need; val/top1 is training's monitor).
        for k, m in models.items():
            scores[k]["clean_full_per_image"] = top1_flags(m, test_rgb, labels)
        return scores

    scores = stages.run(f"Fashion-MNIST-C: {len(CORRUPTIONS)} corruptions x 5 severities on {args.subset_size} "
                        "test images", corrupt_and_score)
    corrupted = corrupt_images(test_rgb[idx], CORRUPTIONS, seed=args.subset_seed,
                               cache_dir=out / "fashion_mnist_c_cache")
    c_parts = {f"{c}/{s}": array_fingerprint(corrupted.arrays[c][s], labels[idx], 10)
               for c in CORRUPTIONS for s in corrupted.severities}
    data_fp = {"fashion_mnist": array_fingerprint(test_rgb, labels, 10),
               "fashion_mnist_c": {"num_images": len(idx) * len(c_parts), "sha256": _combined(c_parts),
                                   "num_classes": 10, "parts": c_parts}}
    cfg = next(iter(models.values())).model_config
    eval_transform = {"fashion_mnist": {"resize": f"bilinear 28 -> {size} px (Fashion-MNIST)", "grey_to_rgb": True,
                                        "mean": list(cfg.mean), "std": list(cfg.std)}}
    eval_transform["fashion_mnist_c"] = dict(eval_transform["fashion_mnist"], corruption_seed=args.subset_seed)

    paths = []
    wandb_project = None
    for k, (module, ckpt, _val_top1, trainer) in runs.items():
        s = scores[k]
        clean_flags = s["clean_full_per_image"]
        clean = 100.0 * int(clean_flags.sum()) / len(clean_flags)
        runs[k] = (module, ckpt, clean, trainer)
        metrics = {"fashion_mnist": {"top1": clean, "correct": int(clean_flags.sum()), "n": len(clean_flags)},
                   "fashion_mnist_c": {"mean_top1": s["mean_top1"], "corruption_top1": s["corruption_top1"],
                                       "top1": {c: {str(v): t for v, t in by.items()} for c, by in s["top1"].items()},
                                       "clean_top1_subset": s["clean_top1"], "relative_mce": s["relative"]["mce"],
                                       "relative_ce": s["relative"]["ce"], "n": s["n"]}}
        res = make_results(model_name=module.hparams.model_name, kernel_sizes=list(module.model.kernel_sizes),
                           num_params=sum(p.numel() for p in module.model.parameters()),
                           model_config=module.model_config.to_dict(), weights={"raw": metrics},
                           settings={"demo": True, "epochs": args.max_epochs, "subset": args.subset_size,
                                     "seed": args.subset_seed},
                           errors=[], checkpoint_path=ckpt, epoch=trainer.current_epoch,
                           global_step=trainer.global_step, checkpoint_format="lightning",
                           provenance=collect(device="cpu", precision=str(trainer.precision),
                                              dwconv=dwconv_info(module.model), eval_transform=eval_transform,
                                              config={"demo": args.as_dict(), "kernel": k}, data=data_fp),
                           per_image={"raw": {
                               "fashion_mnist": {"test": {"n": len(clean_flags), "top1": pack_bits(clean_flags)}},
                               "fashion_mnist_c": {p: {"n": len(f), "top1": pack_bits(f)}
                                                   for p, f in s["per_image"].items()}}})
        paths.append(write_results(results_path(ckpt), res))
        wandb_project = log_to_the_fit_run(res, ckpt) or wandb_project

    print("\nFashion-MNIST, clean top-1 on the full test set (10,000) and Fashion-MNIST-C top-1 "
          f"({args.subset_size} images x 15 corruptions x 5 severities):")
    base = min(runs)
    head = f"{'kernel':>6} {'clean':>7} {'mean-C':>7} {'rel.mCE':>8}  " + " ".join(f"{c[:8]:>8}" for c in CORRUPTIONS)
    print(head)
    for k in runs:
        s = scores[k]
        print(f"{k:>6} {runs[k][2]:7.2f} {s['mean_top1']:7.2f} {s['relative']['mce']:8.1f}  "
              + " ".join(f"{s['corruption_top1'][c]:8.2f}" for c in CORRUPTIONS))
    print(f"(rel.mCE: corruption error relative to kernel {base}, in %, as mCE is relative to AlexNet)")

    from ..analysis.demo_erf import DEMO_IMAGES, DEMO_SIZE, demo_erf

    erf_name = f"ERF: first {DEMO_IMAGES} Fashion-MNIST test images upsampled to {DEMO_SIZE} px"
    _, erf_table = stages.run(erf_name, demo_erf, {k: r[0].model.eval() for k, r in runs.items()},
                              load_fashion_mnist("test")[0], dict(zip(runs, paths)))
    print(f"\nEffective receptive field (RepLKNet's high-contribution area ratio; {erf_name}):\n{erf_table}")

    def report():
        from .report import cli_main as report_main

        return report_main([str(out), "--output_dir", str(out / "report")])

    stages.run("ablation report", report)
    print("\n" + stages.table())
    print(f"\nresults: {', '.join(str(p) for p in paths)}\nreport: {out / 'report'}")
    print("\n" + wandb_hint(out, wandb_project))
    return 0


def log_to_the_fit_run(results: dict[str, Any], ckpt: str) -> str | None:
    """When the fit logged to W&B (``-- --trainer.logger`` a WandbLogger), put the run's Fashion-MNIST(-C) scores into
    its W&B run, as ``lk_ablate robustness --wandb true`` does; returns the run's project (None: no W&B run)."""
    from ..training.wandb import log_results_to_run, read_run_info

    info = read_run_info(ckpt)
    if info is None:
        return None
    log_results_to_run(results, info, save_dir=Path(ckpt).parent)
    return info.get("project") or "lk_ablate"


def wandb_hint(out: Path, project: str | None) -> str:
    """How to see the demo's runs on W&B (``project``: the one they logged to; None: they logged to CSV)."""
    dashboard = (f"lk_ablate dashboard --wandb.project {project or 'lk_ablate_demo'} --benchmarks "
                 f"[fashion_mnist,fashion_mnist_c] --weights raw --report_path {out / 'report' / 'report.md'}")
    sync = f"wandb sync {out}/k*/wandb/offline-run-*"
    if project:
        return (f"W&B: each run's scores are in its W&B run (project {project}); if they were logged offline, "
                f"upload them with `{sync}`; then build the dashboard:\n  {dashboard}")
    return ("W&B: this demo logged to CSV. To see its runs on W&B, log them there (offline needs no account), upload "
            "them, then build the dashboard:\n"
            f"  WANDB_MODE=offline lk_ablate demo -- --trainer.logger configs/base/logger_wandb.yaml "
            f"--trainer.logger.init_args.project lk_ablate_demo\n  {sync}\n  {dashboard}")
