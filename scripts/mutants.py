#!/usr/bin/env python
"""Mutation check: the test suite must catch each of a curated list of realistic one-line bugs.

Each mutant replaces one exact snippet of one file (it must occur exactly once) and names the tests that must
fail because of it. The script copies the working tree (every file git tracks or would track) to a scratch
folder, checks that Python there imports the scratch copy (in pytest and in the subprocesses tests start),
runs the named tests once unmutated (they must pass), then applies one mutant at a time, runs only its tests
and restores the file. It prints a table (mutant | tests | result | seconds) and exits non-zero when a mutant
survives, a snippet is missing or ambiguous, or a baseline test fails: it never silently tests nothing.

    make mutants                                    # every mutant
    .venv/bin/python scripts/mutants.py --list      # the list, without running anything
    .venv/bin/python scripts/mutants.py --only convnext-gelu-relu --only sev5-mean-over-15

Adding a mutant with a new feature: see docs/testing.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # exact snippet, must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids (file or file::test) that must fail
    why: str  # the bug it stands for


M = Mutant
MUTANTS: list[Mutant] = [
    # --- sanity: the scratch copy is what gets imported, also in subprocesses started by a test ---------------
    M("sanity-subprocess-import", "lk_ablate/__init__.py",
      "from .models import ModelConfig, create_model, get_model_config, list_models\n",
      "from .models import ModelConfig, create_model, get_model_config, list_models\nimport lk_ablate.analysis\n",
      ("tests/commands/test_cli.py::test_commands_import_only_what_they_use",),
      "an eager import: seen only by the test's `python -c` subprocess, so it proves subprocesses import the copy"),
    # --- models ----------------------------------------------------------------------------------------------
    M("convnext-gelu-relu", "lk_ablate/models/convnext.py",
      "self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)",
      "self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.ReLU)",
      ("tests/models/test_guard_models.py::test_convnext_with_random_layer_scale_equals_timm",),
      "ReLU instead of GELU in the ConvNeXt block"),
    M("convnext-layer-scale-skipped", "lk_ablate/models/convnext.py",
      "            x = x * self.gamma\n", "            x = x\n",
      ("tests/models/test_guard_models.py::test_convnext_with_random_layer_scale_equals_timm",),
      "layer scale never applied (invisible at init, where gamma is 1e-6)"),
    M("replknet-lk-nonlinear-gelu", "lk_ablate/models/replknet.py",
      "self.lk_nonlinear = nn.ReLU()", "self.lk_nonlinear = nn.GELU()",
      ("tests/models/test_guard_models.py::test_replknet_blocks_equal_the_official_formula",),
      "GELU after the large kernel (the official code uses ReLU)"),
    M("replknet-small-kernel-dropped", "lk_ablate/models/replknet.py",
      "            out = out + self.small_conv(x)\n", "            out = out\n",
      ("tests/models/test_guard_models.py::test_replknet_blocks_equal_the_official_formula",),
      "the parallel 5x5 branch is built but not added"),
    M("dwconv-crop-too-small", "lk_ablate/models/layers.py",
      "ch, cw = min(kh, 2 * height - 1), min(kw, 2 * width - 1)",
      "ch, cw = min(kh, 2 * height - 3), min(kw, 2 * width - 3)",
      ("tests/models/test_layers.py::test_crop_is_exact",),
      "the kernel crop drops taps that still touch the map"),
    # --- data ------------------------------------------------------------------------------------------------
    M("resume-epoch-end-replays-epoch-0", "lk_ablate/data/base.py",
      "        return self.trainer.fit_loop.epoch_progress.current.processed\n", "        return 0\n",
      ("tests/training/test_guard_training.py::test_epoch_end_resume_is_exact",),
      "after an epoch-end resume the train loader starts at epoch 0's order"),
    M("resume-mid-epoch-no-skip", "lk_ablate/data/sampler.py",
      '            sampler.skip_batches = state["batches_completed"]\n', "            sampler.skip_batches = 0\n",
      ("tests/training/test_resume.py::test_mid_epoch_resume_is_exact",),
      "a mid-epoch resume trains the epoch's first batches again"),
    M("order-ignores-epoch", "lk_ablate/data/sampler.py",
      "derive_seed(self.seed, STREAM_ORDER, self.epoch)", "derive_seed(self.seed, STREAM_ORDER, 0)",
      ("tests/training/test_training.py::test_train_shards_are_disjoint_equal_and_depend_on_epoch",),
      "the same batch order every epoch"),
    M("imagefolder-augment-ignores-epoch", "lk_ablate/data/base.py",
      "with seeded_rng(derive_seed(self.seed, STREAM_SAMPLE, epoch, index)):",
      "with seeded_rng(derive_seed(self.seed, STREAM_SAMPLE, index)):",
      ("tests/training/test_guard_training.py::test_imagefolder_augmentations_differ_across_epochs",),
      "each image gets the same augmentation every epoch (ImageFolder)"),
    M("ffcv-augment-ignores-epoch", "lk_ablate/data/ffcv_loader.py",
      "key = derive_seed(self.seed, STREAM_SAMPLE, epoch) & (2**64 - 1)",
      "key = derive_seed(self.seed, STREAM_SAMPLE, 0) & (2**64 - 1)",
      ("tests/training/test_guard_training.py::test_ffcv_augmentations_differ_across_epochs",),
      "each image gets the same crop and ops every epoch (FFCV)"),
    M("randaugment-always-negates", "lk_ablate/data/ffcv_augment.py",
      "    return -v if uniform(st) > 0.5 else v\n", "    return -v\n",
      ("tests/data/test_guard_ffcv_augment.py::test_random_sign_is_balanced",),
      "RandAugment's random sign always negative"),
    M("randaugment-ignores-mstd", "lk_ablate/data/ffcv_augment.py",
      "            m = gauss(st, magnitude, mag_std)\n", "            m = magnitude\n",
      ("tests/data/test_guard_ffcv_augment.py::test_magnitude_noise_follows_mstd",),
      "no magnitude noise (mstd0.5 ignored)"),
    M("shear-x-row-fraction", "lk_ablate/data/ffcv_augment.py",
      "            u = (((x + 0.5) + q) + a2) - 0.5\n", "            u = (((lo + 0.5) + q) + a2) - 0.5 + (x - lo)\n",
      ("tests/data/test_guard_ffcv_augment.py::test_shear_and_translate_bit_identical_to_pillow_over_the_range",),
      "one source fraction per row (one grey level off Pillow at shear +-0.2 / +0.3)"),
    M("shear-x-magnitude", "lk_ablate/data/ffcv_augment.py",
      "affine(src, dst, 1.0, _negate(st, level / 10.0 * 0.3), 0.0, 0.0, 1.0, 0.0, fill, bicubic)",
      "affine(src, dst, 1.0, _negate(st, level / 10.0 * 0.03), 0.0, 0.0, 1.0, 0.0, fill, bicubic)",
      ("tests/data/test_ffcv_augment.py::test_every_op_at_a_level_matches_timm",),
      "ShearX level -> argument map off by 10x"),
    M("ffcv-resize-truncates", "lk_ablate/data/ffcv_resize.py",
      "s0 = s1 = s2 = np.float32(0.5)", "s0 = s1 = s2 = np.float32(0.0)",
      ("tests/data/test_ffcv_resize.py::test_equals_ffcv_resize_within_one_level",),
      "weighted sums truncated instead of rounded (half the values one grey level low)"),
    # --- training --------------------------------------------------------------------------------------------
    M("weight-decay-on-everything", "lk_ablate/training/module.py",
      "            return param_groups_weight_decay(self.model, hp.weight_decay)\n",
      '            return [{"params": list(self.model.parameters()), "weight_decay": hp.weight_decay}]\n',
      ("tests/training/test_guard_training.py::test_image_classifier_optimizer_groups",),
      "weight decay on norms, biases and layer scale"),
    M("warmup-starts-at-zero", "lk_ablate/training/schedule.py",
      "        return (step + 1) / warmup_steps\n", "        return step / warmup_steps\n",
      ("tests/training/test_training.py::test_warmup_then_cosine_values",),
      "the first step runs at lr 0"),
    M("lr-not-scaled", "lk_ablate/training/schedule.py",
      "    return base_lr * global_batch_size / base_batch_size\n", "    return base_lr\n",
      ("tests/training/test_training.py::test_linear_lr_scaling",),
      "no linear lr scaling with the global batch"),
    # --- robustness ------------------------------------------------------------------------------------------
    M("sev5-mean-over-15", "lk_ablate/robustness/metrics.py",
      '"severity5_mean_top1": float(np.mean(sev5)) if',
      '"severity5_mean_top1": float(np.mean(sev5[:15])) if',
      ("tests/robustness/test_guard_robustness.py::test_severity5_mean_over_19_distinct_corruptions",),
      "the paper's ImageNet-C number averaged over the first 15 of the 19 corruptions"),
    M("mce-over-19", "lk_ablate/robustness/metrics.py",
      "def mce(errors: Mapping[str, Mapping[int, float]], corruptions: Sequence[str] = CORRUPTIONS,",
      "def mce(errors: Mapping[str, Mapping[int, float]], corruptions: Sequence[str] = ALL_CORRUPTIONS,",
      ("tests/robustness/test_guard_robustness.py::test_mce_and_relative_mce_over_the_15_with_distinct_cells",),
      "mCE over all 19 corruptions instead of the 15"),
    M("relative-mce-no-clean", "lk_ablate/robustness/metrics.py",
      "        den = sum(ref[c][s - 1] - reference_clean_error for s in SEVERITIES)\n",
      "        den = sum(ref[c][s - 1] for s in SEVERITIES)\n",
      ("tests/robustness/test_robustness_metrics.py::test_mce_and_relative_mce_with_a_hand_made_reference",),
      "relative mCE without subtracting AlexNet's clean error"),
    M("aupr-in-distribution-positive", "lk_ablate/robustness/metrics.py",
      "    labels[:pos.size] = 1\n", "    labels[pos.size:] = 1\n",
      ("tests/robustness/test_robustness_metrics.py::test_aupr_hand_made",),
      "ImageNet-O AUPR with in-distribution as the positive class"),
    M("msp-sign", "lk_ablate/robustness/metrics.py",
      "    return -torch.softmax(logits.double(), dim=1).amax(dim=1)\n",
      "    return torch.softmax(logits.double(), dim=1).amax(dim=1)\n",
      ("tests/robustness/test_robustness_metrics.py::test_msp_score_hand_made",),
      "anomaly score = +max softmax (confident images ranked anomalous)"),
    # --- analysis --------------------------------------------------------------------------------------------
    M("non-salient-uses-salient-mask", "lk_ablate/analysis/occlusion.py",
      "        drop_sorted = cum <= level + eps\n", "        drop_sorted = cum > 1 - level + eps\n",
      ("tests/analysis/test_guard_analysis.py::test_occlusion_curves_equal_an_independent_count",),
      "non-salient occlusion drops the salient patches"),
    M("frequency-drop-sign", "lk_ablate/analysis/frequency.py",
      '"drop": clean_acc - acc', '"drop": acc - clean_acc',
      ("tests/analysis/test_guard_analysis.py::test_frequency_drops_equal_a_recount_with_the_same_noise",),
      "accuracy drop reported with the wrong sign"),
    M("frequency-nyquist-dropped", "lk_ablate/analysis/frequency.py",
      "upper = f <= hi + eps if hi >= 1.0 else f < hi - eps", "upper = f < hi - eps",
      ("tests/analysis/test_guard_analysis.py::test_band_noise_equals_a_numpy_filter",),
      "the top band leaves out the Nyquist frequency"),
    M("taig-surrogate-random-init", "lk_ablate/analysis/attacks.py",
      "        lm = create_timm_model(cfg.surrogate_timm, cfg.surrogate_path)\n",
      "        lm = create_timm_model(cfg.surrogate_timm)\n",
      ("tests/analysis/test_guard_analysis.py::test_taig_timm_surrogate_carries_the_checkpoint_weights",),
      "the TAIG surrogate keeps its random init (checkpoint not loaded)"),
    M("kernel-distance-unnormalised-taps", "lk_ablate/analysis/kernel_distance.py",
      "    return torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / radius\n",
      "    return torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)\n",
      ("tests/analysis/test_analysis_kernels.py",),
      "tap distances not divided by the corner's"),
    M("feature-variance-counts-class-token", "lk_ablate/analysis/features.py",
      "        return z[:, prefix_tokens:].transpose(1, 2)\n", "        return z.transpose(1, 2)\n",
      ("tests/analysis/test_analysis_kernels.py::test_feature_variance_on_timm_vit_tokens",),
      "a ViT's class token counted in the spatial variance"),
    # --- report ----------------------------------------------------------------------------------------------
    M("report-t-dof", "lk_ablate/report/runs.py",
      "half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)", "half = float(t.ppf(0.975, n)) * sd / math.sqrt(n)",
      ("tests/report/test_report.py::test_seed_statistics_use_student_t",),
      "95% interval with n instead of n - 1 degrees of freedom"),
    M("report-population-sd", "lk_ablate/report/runs.py",
      "    sd = statistics.stdev(values)\n", "    sd = statistics.pstdev(values)\n",
      ("tests/report/test_report.py::test_seed_statistics_use_student_t",),
      "population sd (ddof 0) instead of the sample sd"),
    M("report-sev5-se-all-cells", "lk_ablate/report/runs.py",
      'se = _se_of_mean(v5 for (c, s), v5 in cells.items() if s == "5")',
      "se = _se_of_mean(v5 for (c, s), v5 in cells.items())",
      ("tests/robustness/test_guard_robustness.py::test_report_standard_errors_of_the_corruption_means",),
      "the severity-5 mean's SE computed over every severity's cells"),
]


def tree_files(repo: Path) -> list[str]:
    """Files of the working tree git tracks or would track (untracked but not ignored), that exist."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (repo / f).is_file()})


def copy_tree(repo: Path, dest: Path) -> int:
    files = tree_files(repo)
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, dest / f)
    # numba's on-disk caches of the FFCV kernels (valid while a source keeps its size and mtime, which copy2
    # keeps): without them every scratch copy compiles the kernels again (minutes on 2 cores)
    for cache in (repo / "lk_ablate").rglob("__pycache__/*.nb[ic]"):
        target = dest / cache.relative_to(repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache, target)
    return len(files)


def env_for(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The package is installed editable from the main checkout: PYTHONPATH puts the copy first (the editable
    # finder sits at the end of sys.meta_path); subprocesses started by tests inherit it.
    env["PYTHONPATH"] = os.pathsep.join([str(scratch), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_copy(scratch: Path) -> None:
    code = "import lk_ablate, lk_ablate.cli; print(lk_ablate.__file__); print(lk_ablate.cli.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=env_for(scratch), capture_output=True,
                         text=True)
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(scratch.resolve())
                                                         for p in paths):
        sys.exit(f"mutants: the scratch copy is not what Python imports ({out.stdout.strip()} {out.stderr.strip()})")


def check_snippets(repo: Path, mutants: list[Mutant]) -> list[str]:
    problems = []
    for m in mutants:
        path = repo / m.path
        if not path.is_file():
            problems.append(f"{m.name}: {m.path} not found")
            continue
        n = path.read_text().count(m.original)
        if n != 1:
            problems.append(f"{m.name}: snippet found {n} times in {m.path} (must be exactly once): {m.original!r}")
    return problems


def run_pytest(scratch: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "-W", "ignore", *tests]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=scratch, env=env_for(scratch), capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stdout + out.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        return None, str(e.stdout or ""), time.perf_counter() - t0


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutant (repeatable)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = p.parse_args(argv)

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        sys.exit("mutants: duplicate mutant names")
    unknown = [n for n in args.only if n not in names]
    if unknown:
        sys.exit(f"mutants: unknown mutant(s) {unknown}; see --list")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:38s} {m.path:34s} {' '.join(m.tests)}\n{'':38s} {m.why}")
        print(f"{len(chosen)} mutants")
        return 0
    problems = check_snippets(REPO, chosen)
    if problems:
        print("mutants: snippets to update (the code moved):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="lk_ablate-mutants-"))
    t_start = time.perf_counter()
    try:
        n = copy_tree(REPO, scratch)
        check_imports_copy(scratch)
        print(f"scratch copy: {scratch} ({n} files); Python imports lk_ablate from it")
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            rc, out, secs = run_pytest(scratch, tests, args.timeout * 2)
            if rc != 0:
                print(f"mutants: the selected tests fail without any mutant ({secs:.0f} s):\n{out[-3000:]}",
                      file=sys.stderr)
                return 2
            print(f"baseline: {len(tests)} test selections pass unmutated ({secs:.0f} s)")
        rows, survived, errors = [], [], []
        for m in chosen:
            target = scratch / m.path
            original_bytes, st = target.read_bytes(), target.stat()
            text = original_bytes.decode()
            target.write_text(text.replace(m.original, m.replacement, 1))
            try:
                rc, out, secs = run_pytest(scratch, m.tests, args.timeout)
            finally:
                target.write_bytes(original_bytes)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # numba's on-disk caches stay valid
            if rc == 0:
                result = "SURVIVED"
                survived.append(m.name)
            elif rc is None:
                result = "caught (timeout)"
            elif rc in (1, 2):
                result = "caught" if rc == 1 else "caught (collection error)"
            else:
                result = f"ERROR (pytest exit {rc})"
                errors.append(f"{m.name}: {last_line(out)}")
            rows.append((m.name, " ".join(t.replace("tests/", "") for t in m.tests), result, secs))
            print(f"  {m.name}: {result} ({secs:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print("| mutant | tests | result | seconds |")
    print("|---|---|---|---:|")
    for name, tests, result, secs in rows:
        print(f"| {name} | {tests} | {result} | {secs:.0f} |")
    caught = sum(r[2].startswith("caught") for r in rows)
    print(f"\n{caught} of {len(rows)} mutants caught, {len(survived)} survived; "
          f"total {time.perf_counter() - t_start:.0f} s")
    if survived:
        print("survived: " + ", ".join(survived), file=sys.stderr)
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
