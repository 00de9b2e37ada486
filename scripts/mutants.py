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
    .venv/bin/python scripts/mutants.py --only 'recipe-*' --only 'augment-*' --only 'eval-*'

Adding a mutant with a new feature: see docs/testing.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
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
TR = "tests/training/test_recipe_effects.py::"
TA = "tests/data/test_augment_effects.py::"
TE = "tests/data/test_eval_effects.py::"
MUTANTS: list[Mutant] = [
    # --- sanity: the scratch copy is what gets imported, also in subprocesses started by a test ---------------
    M("sanity-subprocess-import", "lk_ablate/__init__.py",
      '"list_models"]}, globals())\n',
      '"list_models"]}, globals())\nimport lk_ablate.analysis  # noqa: E402\n',
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
    # --- the training recipe's knobs, each use replaced by a neutral constant (issue 26) -------------------------
    M("recipe-drop-path-rate-unused", "lk_ablate/training/module.py",
      "drop_path_rate=drop_path_rate, **(model_kwargs or {}))", "drop_path_rate=0.0, **(model_kwargs or {}))",
      (TR + "test_drop_path_rate_reaches_every_block_by_the_linear_rule",),
      "model.drop_path_rate never reaches the network (trains without stochastic depth)"),
    M("recipe-drop-path-uniform-convnext", "lk_ablate/models/convnext.py",
      "rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()", "rates = [drop_path_rate] * sum(depths)",
      (TR + "test_drop_path_rate_reaches_every_block_by_the_linear_rule",),
      "every ConvNeXt block at the full drop rate instead of the linear rule"),
    M("recipe-drop-path-uniform-replknet", "lk_ablate/models/replknet.py",
      'rates = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()',
      "rates = [drop_path_rate] * sum(layers)",
      (TR + "test_replknet_drop_path_pairs_share_the_linear_rate",),
      "every RepLKNet unit at the full drop rate instead of the linear rule"),
    M("recipe-label-smoothing-off-with-mixup", "lk_ablate/training/module.py",
      'mode="batch", label_smoothing=label_smoothing,', 'mode="batch", label_smoothing=0.0,',
      (TR + "test_mixup_and_cutmix_draws_and_soft_targets_follow_the_knobs",
       TR + "test_training_loss_is_the_soft_target_cross_entropy[mixup-cutmix]"),
      "the mixup/cutmix soft targets without label smoothing (the 120-epoch recipe's path)"),
    M("recipe-label-smoothing-off-without-mixup", "lk_ablate/training/module.py",
      "y, label_smoothing=self.hparams.label_smoothing)", "y, label_smoothing=0.0)",
      (TR + "test_training_loss_is_the_soft_target_cross_entropy[no-mixup]",),
      "plain cross-entropy without label smoothing (the fine-tuning recipe's path)"),
    M("recipe-mixup-alpha-off", "lk_ablate/training/module.py",
      "Mixup(mixup_alpha=mixup_alpha,", "Mixup(mixup_alpha=0.0,",
      (TR + "test_mixup_and_cutmix_draws_and_soft_targets_follow_the_knobs",),
      "model.mixup_alpha ignored: only cutmix"),
    M("recipe-cutmix-alpha-off", "lk_ablate/training/module.py",
      "cutmix_alpha=cutmix_alpha, prob=", "cutmix_alpha=0.0, prob=",
      (TR + "test_mixup_and_cutmix_draws_and_soft_targets_follow_the_knobs",),
      "model.cutmix_alpha ignored: only mixup"),
    M("recipe-mixup-prob-ignored", "lk_ablate/training/module.py",
      "prob=mixup_prob,", "prob=1.0,",
      (TR + "test_mixup_and_cutmix_draws_and_soft_targets_follow_the_knobs",),
      "model.mixup_prob ignored: every batch mixed"),
    M("recipe-switch-prob-ignored", "lk_ablate/training/module.py",
      "switch_prob=mixup_switch_prob,", "switch_prob=0.5,",
      (TR + "test_mixup_and_cutmix_draws_and_soft_targets_follow_the_knobs",),
      "model.mixup_switch_prob ignored (timm's default 0.5)"),
    M("recipe-ema-decay-zero", "lk_ablate/training/module.py",
      "ModelEmaV3(self.model, decay=ema_decay)", "ModelEmaV3(self.model, decay=0.0)",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "model.ema_decay ignored: the EMA is the raw weights"),
    M("recipe-ema-first-steps-copied", "lk_ablate/training/module.py",
      "            self.ema.update(self.model)\n", "            self.ema.update(self.model, step=self.global_step)\n",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "ModelEmaV3 decay 0 at Lightning's steps 0 and 1: the EMA restarts from the second step's weights (the bug "
      "fixed with issue 26)"),
    M("recipe-layer-decay-ignored", "lk_ablate/training/module.py",
      '"lr_scale": hp.layer_decay ** (n_ids - 1 - lid)}', '"lr_scale": 1.0}',
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[0.5]",),
      "model.layer_decay ignored: one lr for every layer of a fine-tune"),
    M("recipe-layer-decay-off-by-one", "lk_ablate/training/module.py",
      '"lr_scale": hp.layer_decay ** (n_ids - 1 - lid)}', '"lr_scale": hp.layer_decay ** (n_ids - lid)}',
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[0.5]",),
      "layer decay one power too many: the head trains at decay x lr"),
    M("recipe-betas-default", "lk_ablate/training/module.py",
      "betas=tuple(hp.betas))", "betas=(0.9, 0.999))",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "model.betas ignored (AdamW's defaults)"),
    M("recipe-weight-decay-zero", "lk_ablate/training/module.py",
      "return param_groups_weight_decay(self.model, hp.weight_decay)",
      "return param_groups_weight_decay(self.model, 0.0)",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "model.weight_decay ignored: no decay at all"),
    M("recipe-weight-decay-zero-with-layer-decay", "lk_ablate/training/module.py",
      '"weight_decay": 0.0 if no_wd else hp.weight_decay,', '"weight_decay": 0.0,',
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[0.5]",),
      "model.weight_decay ignored in the layer-decay groups (fine-tuning)"),
    M("recipe-lr-ignores-accumulation", "lk_ablate/training/module.py",
      "self.trainer.world_size * self.trainer.accumulate_grad_batches", "self.trainer.world_size",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "the lr scaled to the per-step batch without gradient accumulation (4x too small on the paper's node)"),
    M("recipe-lr-ignores-devices", "lk_ablate/training/module.py",
      "return dm.batch_size * self.trainer.world_size *", "return dm.batch_size *",
      ("tests/training/test_ddp.py::test_ddp_two_processes_same_weights_and_global_batch",),
      "the lr scaled to one device's batch under DDP (8x too small on the paper's node)"),
    M("recipe-warmup-ignored", "lk_ablate/training/module.py",
      "warmup = int(round(self.hparams.warmup_epochs * steps_per_epoch))", "warmup = 0",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "model.warmup_epochs ignored: the cosine starts at the peak"),
    M("recipe-warmup-counts-batches", "lk_ablate/training/module.py",
      "per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))", "per_epoch = max(1, batches)",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "warmup counted in batches, not optimizer steps: accumulation stretches it"),
    M("recipe-min-lr-zero", "lk_ablate/training/module.py",
      "peak_lr=lr, min_lr=hp.min_lr))", "peak_lr=lr, min_lr=0.0))",
      (TR + "test_adamw_steps_lr_schedule_and_ema_equal_the_recipe[None]",),
      "model.min_lr ignored: the cosine ends at 0"),
    M("recipe-channels-last-weights-not-converted", "lk_ablate/training/module.py",
      "            self.to(memory_format=torch.channels_last)\n", "            pass\n",
      (TR + "test_channels_last_is_the_memory_format_of_weights_and_inputs[True]",),
      "model.channels_last leaves the weights contiguous"),
    M("recipe-channels-last-inputs-not-converted", "lk_ablate/training/module.py",
      "return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x", "return x",
      (TR + "test_channels_last_is_the_memory_format_of_weights_and_inputs[True]",),
      "model.channels_last leaves the inputs contiguous"),
    M("recipe-pretrained-not-loaded", "lk_ablate/training/module.py",
      "            load_checkpoint(self.model, pretrained_path, drop_head=True)\n", "            pass\n",
      (TR + "test_pretrained_path_loads_the_body_drops_a_mismatched_head_and_seeds_the_ema",),
      "model.pretrained_path ignored: the fine-tune starts from random weights"),
    M("recipe-model-seed-ignored", "lk_ablate/training/module.py",
      "return self.hparams.seed if self.hparams.seed is not None else global_seed()", "return global_seed()",
      (TR + "test_seeds_decide_initial_weights_first_batches_and_step_draws",),
      "model.seed ignored: the step draws follow seed_everything"),
    M("recipe-run-seed-fixed", "lk_ablate/training/module.py",
      "return self.hparams.seed if self.hparams.seed is not None else global_seed()",
      "return self.hparams.seed if self.hparams.seed is not None else 0",
      (TR + "test_seeds_decide_initial_weights_first_batches_and_step_draws",),
      "seed_everything ignored by mixup/cutmix/drop path: every run draws the same"),
    M("augment-data-seed-fixed", "lk_ablate/data/base.py",
      "return self._seed if self._seed is not None else global_seed()", "return 0",
      (TR + "test_seeds_decide_initial_weights_first_batches_and_step_draws",),
      "the data order and augmentations ignore every seed"),
    # --- the augmentation config of both DataModules, each use replaced by a neutral constant (issue 26) ---------
    M("augment-folder-scale-default", "lk_ablate/data/transforms.py",
      "scale=aug.scale, ratio=aug.ratio,", "scale=(0.08, 1.0), ratio=aug.ratio,",
      (TA + "test_random_resized_crop_follows_scale_and_ratio[folder]",),
      "ImageFolder: data.scale ignored"),
    M("augment-folder-ratio-default", "lk_ablate/data/transforms.py",
      "ratio=aug.ratio,", "ratio=(3 / 4, 4 / 3),",
      (TA + "test_random_resized_crop_follows_scale_and_ratio[folder]",),
      "ImageFolder: data.ratio ignored"),
    M("augment-folder-ratio-not-passed", "lk_ablate/data/folder.py",
      "ratio=tuple(ratio), hflip=hflip,", "hflip=hflip,",
      (TA + "test_random_resized_crop_follows_scale_and_ratio[folder]",),
      "ImageFolderDataModule drops its ratio before the transform"),
    M("augment-folder-hflip-default", "lk_ablate/data/transforms.py",
      "hflip=aug.hflip,", "hflip=0.5,",
      (TA + "test_flip_probability_and_normalisation[folder]",),
      "ImageFolder: data.hflip ignored"),
    M("augment-folder-color-jitter-off", "lk_ablate/data/transforms.py",
      "color_jitter=aug.color_jitter,", "color_jitter=0.0,",
      (TA + "test_colour_jitter_strength[folder]",),
      "ImageFolder: data.color_jitter ignored"),
    M("augment-folder-rand-augment-off", "lk_ablate/data/transforms.py",
      "auto_augment=aug.auto_augment,", "auto_augment=None,",
      (TA + "test_imagefolder_train_samples_equal_timm_transforms_of_the_expected_values[randaugment]",),
      "ImageFolder: data.auto_augment ignored (no RandAugment)"),
    M("augment-folder-re-prob-off", "lk_ablate/data/transforms.py",
      "re_prob=aug.re_prob,", "re_prob=0.0,",
      (TA + "test_random_erasing_probability[folder]",),
      "ImageFolder: data.re_prob ignored (no random erasing)"),
    M("augment-folder-mean-std-default", "lk_ablate/data/transforms.py",
      "mean=cfg.mean, std=cfg.std, re_prob", "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), re_prob",
      (TA + "test_flip_probability_and_normalisation[folder]",),
      "ImageFolder training normalised with ImageNet's mean/std whatever the model's"),
    M("augment-data-mean-override-ignored", "lk_ablate/data/base.py",
      "crop_pct=crop_pct, mean=mean, std=std,", "crop_pct=crop_pct, mean=None, std=std,",
      (TA + "test_flip_probability_and_normalisation[folder]",),
      "data.mean ignored: the model's mean"),
    M("augment-ffcv-scale-default", "lk_ablate/data/ffcv.py",
      "SeededRandomResizedCrop((size, size), self.scale, self.ratio)",
      "SeededRandomResizedCrop((size, size), (0.08, 1.0), self.ratio)",
      (TA + "test_random_resized_crop_follows_scale_and_ratio[ffcv]",),
      "FFCV: data.scale ignored"),
    M("augment-ffcv-ratio-default", "lk_ablate/data/ffcv.py",
      "SeededRandomResizedCrop((size, size), self.scale, self.ratio)",
      "SeededRandomResizedCrop((size, size), self.scale, (3 / 4, 4 / 3))",
      (TA + "test_random_resized_crop_follows_scale_and_ratio[ffcv]",),
      "FFCV: data.ratio ignored"),
    M("augment-ffcv-hflip-default", "lk_ablate/data/ffcv_augment.py",
      "    p[P_HFLIP] = hflip\n", "    p[P_HFLIP] = 0.5\n",
      (TA + "test_flip_probability_and_normalisation[ffcv]",),
      "FFCV: data.hflip ignored"),
    M("augment-ffcv-color-jitter-off", "lk_ablate/data/ffcv_augment.py",
      "p[P_CJ_B] = p[P_CJ_C] = p[P_CJ_S] = color_jitter", "p[P_CJ_B] = p[P_CJ_C] = p[P_CJ_S] = 0.0",
      (TA + "test_colour_jitter_strength[ffcv]",),
      "FFCV: data.color_jitter ignored"),
    M("augment-ffcv-saturation-dropped", "lk_ablate/data/ffcv_augment.py",
      "p[P_CJ_B] = p[P_CJ_C] = p[P_CJ_S] = color_jitter", "p[P_CJ_B] = p[P_CJ_C] = color_jitter",
      (TA + "test_colour_jitter_strength[ffcv]",),
      "FFCV colour jitter without its saturation factor"),
    M("augment-ffcv-erasing-test-flipped", "lk_ablate/data/ffcv_augment.py",
      "    if uniform(st) > prob:\n", "    if uniform(st) < prob:\n",
      (TA + "test_random_erasing_probability[ffcv]",),
      "FFCV erases with probability 1 - re_prob"),
    M("augment-ffcv-re-prob-off", "lk_ablate/data/ffcv_augment.py",
      "p[P_RE_PROB], p[P_RE_MODE] = re_prob,", "p[P_RE_PROB], p[P_RE_MODE] = 0.0,",
      (TA + "test_random_erasing_probability[ffcv]",),
      "FFCV: data.re_prob ignored (no random erasing)"),
    M("augment-ffcv-rand-augment-off", "lk_ablate/data/ffcv_augment.py",
      "    if auto_augment:\n", "    if False:\n",
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[recipe]",),
      "FFCV: data.auto_augment ignored (no RandAugment)"),
    M("augment-ffcv-magnitude-default", "lk_ablate/data/ffcv_augment.py",
      'ra["layers"], ra["magnitude"], ra["mstd"]', 'ra["layers"], 10.0, ra["mstd"]',
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[recipe]",),
      "FFCV: RandAugment's m9 ignored (timm's default magnitude 10)"),
    M("augment-ffcv-magnitude-noise-off", "lk_ablate/data/ffcv_augment.py",
      'ra["layers"], ra["magnitude"], ra["mstd"]', 'ra["layers"], ra["magnitude"], 0.0',
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[recipe]",),
      "FFCV: RandAugment's mstd0.5 ignored (no magnitude noise)"),
    M("augment-ffcv-layers-default", "lk_ablate/data/ffcv_augment.py",
      'ra["layers"], ra["magnitude"], ra["mstd"]', '2, ra["magnitude"], ra["mstd"]',
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[m6-n3-p0.8-mstd1-mmax8]",),
      "FFCV: RandAugment's n ignored (2 ops)"),
    M("augment-ffcv-op-prob-default", "lk_ablate/data/ffcv_augment.py",
      'ra["mmax"], ra["prob"], float(ra["increasing"])', 'ra["mmax"], 0.5, float(ra["increasing"])',
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[m6-n3-p0.8-mstd1-mmax8]",),
      "FFCV: RandAugment's p ignored (0.5)"),
    M("augment-ffcv-magnitude-max-default", "lk_ablate/data/ffcv_augment.py",
      'ra["mmax"], ra["prob"], float(ra["increasing"])', '10.0, ra["prob"], float(ra["increasing"])',
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[m6-n3-p0.8-mstd1-mmax8]",),
      "FFCV: RandAugment's mmax ignored (10)"),
    M("augment-ffcv-increasing-off", "lk_ablate/data/ffcv_augment.py",
      'ra["mmax"], ra["prob"], float(ra["increasing"])', 'ra["mmax"], ra["prob"], 0.0',
      (TA + "test_ffcv_rand_augment_equals_the_reference_sample_by_sample[recipe]",),
      "FFCV: RandAugment's inc1 ignored (the non-increasing ops)"),
    M("augment-ffcv-mean-default", "lk_ablate/data/ffcv_augment.py",
      "    p[P_MEAN:P_MEAN + 3] = mean\n", "    p[P_MEAN:P_MEAN + 3] = (0.485, 0.456, 0.406)\n",
      (TA + "test_flip_probability_and_normalisation[ffcv]",),
      "FFCV normalised with ImageNet's mean whatever the model's"),
    # --- the evaluation transform's options (issue 26) ----------------------------------------------------------
    M("eval-resize-ignored", "lk_ablate/data/transforms.py",
      "size: int | list[int] = [s.resize, s.resize] if s.squash else s.resize",
      "size: int | list[int] = [256, 256] if s.squash else 256",
      (TE + "test_each_eval_option_changes_the_tensor_as_the_reference_says[resize=64]",),
      "EvalSpec.resize ignored (always 256)"),
    M("eval-squash-ignored", "lk_ablate/data/transforms.py",
      "size: int | list[int] = [s.resize, s.resize] if s.squash else s.resize", "size: int | list[int] = s.resize",
      (TE + "test_each_eval_option_changes_the_tensor_as_the_reference_says[squash=True]",),
      "EvalSpec.squash ignored (crop_mode squash evaluates with a centre crop)"),
    M("eval-crop-ignored", "lk_ablate/data/transforms.py",
      "img = TF.center_crop(img, list(s.crop))", "img = TF.center_crop(img, [224, 224])",
      (TE + "test_each_eval_option_changes_the_tensor_as_the_reference_says[crop=(40, 48)]",),
      "EvalSpec.crop ignored (always 224)"),
    M("eval-interpolation-ignored", "lk_ablate/data/transforms.py",
      "self.interp = InterpolationMode(spec.interpolation)", 'self.interp = InterpolationMode("bicubic")',
      (TE + "test_each_eval_option_changes_the_tensor_as_the_reference_says[interpolation=bilinear]",),
      "EvalSpec.interpolation ignored (always bicubic)"),
    M("eval-mean-ignored", "lk_ablate/data/transforms.py",
      "mean = torch.as_tensor(self.mean,", "mean = torch.as_tensor((0.0, 0.0, 0.0),",
      (TE + "test_each_eval_option_changes_the_tensor_as_the_reference_says[mean=(0.3, 0.5, 0.7)]",),
      "EvalSpec.mean ignored"),
    M("eval-std-ignored", "lk_ablate/data/transforms.py",
      "std = torch.as_tensor(self.std,", "std = torch.as_tensor((1.0, 1.0, 1.0),",
      (TE + "test_each_eval_option_changes_the_tensor_as_the_reference_says[std=(0.2, 0.3, 0.4)]",),
      "EvalSpec.std ignored"),
    M("eval-scoring-mean-ignored", "lk_ablate/robustness/pipeline.py",
      "mean = torch.as_tensor(spec.mean,", "mean = torch.as_tensor((0.485, 0.456, 0.406),",
      ("tests/evaluation/test_scoring_input_effects.py::"
       "test_scoring_input_follows_every_eval_option_of_the_model_config",),
      "robustness scoring normalises with ImageNet's mean whatever the model's"),
    M("eval-crop-pct-ignored", "lk_ablate/models/model_config.py",
      "math.floor(self.image_size / self.crop_pct)", "math.floor(self.image_size / 0.875)",
      (TE + "test_crop_pct_sets_the_resize_of_the_model_config[0.8-60]",),
      "a model's crop_pct ignored (ConvNeXt's 0.875)"),
    M("eval-crop-pct-override-ignored", "lk_ablate/data/base.py",
      "input_size=input_size, crop_pct=crop_pct,", "input_size=input_size, crop_pct=None,",
      (TE + "test_imagefolder_validation_applies_the_data_overrides[center]",),
      "data.crop_pct ignored: the model's"),
    M("eval-input-size-override-ignored", "lk_ablate/data/base.py",
      "dict(input_size=input_size,", "dict(input_size=None,",
      (TE + "test_imagefolder_validation_applies_the_data_overrides[center]",),
      "data.input_size ignored: the model's"),
    M("eval-interpolation-override-ignored", "lk_ablate/data/base.py",
      "interpolation=interpolation, crop_mode=crop_mode)", "interpolation=None, crop_mode=crop_mode)",
      (TE + "test_imagefolder_validation_applies_the_data_overrides[center]",),
      "data.interpolation ignored: the model's"),
    M("eval-crop-mode-override-ignored", "lk_ablate/data/base.py",
      "interpolation=interpolation, crop_mode=crop_mode)", "interpolation=interpolation, crop_mode=None)",
      (TE + "test_imagefolder_validation_applies_the_data_overrides[squash]",),
      "data.crop_mode ignored: the model's"),
    M("eval-ffcv-crop-ratio-ignored", "lk_ablate/data/ffcv.py",
      "CenterCrop((size, size), val_crop_ratio(cfg), squash", "CenterCrop((size, size), 0.875, squash",
      (TE + "test_ffcv_validation_applies_the_data_overrides[center]",),
      "FFCV validation crops 0.875 of the side whatever the crop_pct"),
    M("eval-ffcv-squash-ignored", "lk_ablate/data/ffcv.py",
      'squash=cfg.crop_mode == "squash")', "squash=False)",
      (TE + "test_ffcv_validation_applies_the_data_overrides[squash]",),
      "FFCV validation: crop_mode squash ignored"),
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
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this mutant, or those matching a glob such as 'recipe-*' (repeatable)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = p.parse_args(argv)

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        sys.exit("mutants: duplicate mutant names")
    unknown = [n for n in args.only if not fnmatch.filter(names, n)]
    if unknown:
        sys.exit(f"mutants: unknown mutant(s) {unknown}; see --list")
    chosen = [m for m in MUTANTS if not args.only or any(fnmatch.fnmatchcase(m.name, n) for n in args.only)]
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
