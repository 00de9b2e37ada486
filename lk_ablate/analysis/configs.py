"""The analyses' config sections, and their catalogue: what ``lk_ablate analyze`` parses, without importing torch.

Every section is a dataclass that jsonargparse reads as one group of ``lk_ablate analyze NAME`` (``--occlusion.levels
[0.1,0.5]``, an ``occlusion:`` section of a --config / --preset file). They live here, apart from the analyses'
code, so that ``lk_ablate analyze NAME --help`` and the parser need neither torch nor the models: a method that
needs torch imports it when called. :data:`CATALOGUE` names each analysis with its section, its one-line help and
the module holding its ``run``/``plot``/``summary`` (imported by :mod:`.runner` only).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ..base.errors import ConfigError
from ..base.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..base.jsonable import to_jsonable


# --- config sections ------------------------------------------------------------------------------------
@dataclasses.dataclass
class SectionConfig:
    """Base of every analysis config: a dataclass that jsonargparse parses as one group of ``lk_ablate analyze``
    (``--occlusion.levels [0.1,0.5]``, a ``occlusion:`` section of a --config / --preset file), and that
    :func:`lk_ablate.analysis.runner.parse_sections` builds from mappings (the Python API) with the same parser.

    Constructing one validates it (``__post_init__``: lists of tuple-typed fields become tuples, then
    ``validate`` raises a one-line ConfigError for a value out of range). Named settings (the paper's) are shipped
    YAML presets (lk_ablate/analysis/presets/), not code.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            # YAML and the Python API give lists; sequences are stored as tuples so configs stay hashable.
            if isinstance(v, list) and "tuple" in str(f.type):
                setattr(self, f.name, tuple(v))
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden where there is something to check
        pass

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self, nonfinite_to_none=True)


def check_levels(name: str, values: Sequence[float], lo: float, hi: float, *, strict_lo: bool = False) -> None:
    """ConfigError unless every value lies in [lo, hi] (or (lo, hi] with ``strict_lo``) and there is one at least."""
    if not values:
        raise ConfigError(f"{name} must list at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v <= hi if strict_lo else lo <= v <= hi):
            rng = f"({lo}, {hi}]" if strict_lo else f"[{lo}, {hi}]"
            raise ConfigError(f"{name} values must be numbers in {rng}, got {v!r} in {list(values)}")


# --- attacks --------------------------------------------------------------------------------------------------


ATTACK_SPACES = ("pixel", "normalized")


SURROGATE_NORMS = ("imagenet", "model")


TARGET_TRANSFORMS = ("resize_crop", "none")


@dataclasses.dataclass
class FGSMConfig(SectionConfig):
    """``eps``: l_inf budgets (pixel units in [0, 1] for ``space: pixel``); the paper: 0.1..0.4 (preset ``paper``)."""

    eps: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    space: str = "pixel"
    max_images: int | None = None

    def validate(self) -> None:
        check_levels("fgsm.eps", self.eps, 0.0, 10.0)
        if self.space not in ATTACK_SPACES:
            raise ConfigError(f"fgsm.space must be one of {ATTACK_SPACES}, got {self.space!r}")


@dataclasses.dataclass
class PGDConfig(SectionConfig):
    """Every (eps, steps) pair is run. ``alpha``: step size (None: ``alpha_ratio * eps``, released code 1/4).

    Shipped presets (``--preset NAME``): ``paper_pgd_eps`` (5 steps, eps 0.002..0.008), ``paper_pgd_steps`` (eps
    0.006, 1..10 steps; the paper's exact step counts are not in its released code) and ``paper`` (both: every eps
    with 1..10 steps; iterates 1..10 of every eps cost 10 gradients per eps)."""

    eps: tuple[float, ...] = (0.002, 0.004, 0.006, 0.008)
    steps: tuple[int, ...] = (5,)
    alpha: float | None = None
    alpha_ratio: float = 0.25
    random_start: bool = True
    space: str = "pixel"
    seed: int = 0
    max_images: int | None = None

    def validate(self) -> None:
        check_levels("pgd.eps", self.eps, 0.0, 10.0)
        if not self.steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.steps):
            raise ConfigError(f"pgd.steps must be positive ints, got {list(self.steps)}")
        if self.space not in ATTACK_SPACES:
            raise ConfigError(f"pgd.space must be one of {ATTACK_SPACES}, got {self.space!r}")
        if (self.alpha is not None and self.alpha <= 0) or self.alpha_ratio <= 0:
            raise ConfigError("pgd.alpha and pgd.alpha_ratio must be > 0")

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else self.alpha_ratio * eps


@dataclasses.dataclass
class TAIGConfig(SectionConfig):
    """Surrogate: a timm architecture (``surrogate_timm``, the paper uses ViT-B for ConvNets) or a registered
    model (``surrogate_model`` + ``surrogate_kernel_size``; RepLKNet-31B for ViTs), weights from
    ``surrogate_path`` (required: nothing is downloaded). ``eps`` in [0, 1] pixel units.
    ``variant``: "R" (random path, the released code's default) or "S" (straight path).

    - ``surrogate_norm``: ``imagenet`` (ImageNet mean/std for every surrogate, as the released code) or ``model``
      (the surrogate's own config, e.g. 0.5/0.5 for timm's ViT-B).
    - ``imagenet_val``: the ImageNet val folder (``<wnid>/<images>``). Set: TAIG attacks its own fixed image list
      (``image_list_path``: path of LKRobust's ``selected_images.csv``; unset: the project's seeded list of
      ``images_per_class`` per class, seed ``list_seed``) read with the released attack transform, in batches of
      ``batch_size`` with ``num_workers`` workers. Unset: it attacks the run's validation batches.
    - ``target_transform``: ``resize_crop`` (the target sees the adversarial image resized to 256 bicubic and
      centre-cropped to 224, ``TAIG_test.py``) or ``none`` (as it is).
    """

    eps: tuple[float, ...] = (8 / 255, 16 / 255, 0.1)
    iterations: int = 20
    step_size: float = 1 / 255
    ig_steps: int = 20
    variant: str = "R"
    targeted: bool = False
    quantize: bool = True
    surrogate_timm: str | None = "vit_base_patch16_224"
    surrogate_model: str | None = None
    surrogate_kernel_size: Any = None
    surrogate_path: str | None = None
    surrogate_norm: str = "model"
    imagenet_val: str | None = None
    image_list_path: str | None = None
    images_per_class: int = 5
    list_seed: int = 0
    target_transform: str = "none"
    batch_size: int = 50
    num_workers: int = 4
    chunk: int = 64
    seed: int = 0
    max_images: int | None = None

    def validate(self) -> None:
        check_levels("taig.eps", self.eps, 0.0, 1.0, strict_lo=True)
        if self.surrogate_norm not in SURROGATE_NORMS:
            raise ConfigError(f"taig.surrogate_norm must be one of {SURROGATE_NORMS}, got {self.surrogate_norm!r}")
        if self.target_transform not in TARGET_TRANSFORMS:
            raise ConfigError(f"taig.target_transform must be one of {TARGET_TRANSFORMS}, got "
                              f"{self.target_transform!r}")
        if self.image_list_path is not None and self.imagenet_val is None:
            raise ConfigError("taig.image_list_path needs taig.imagenet_val: the ImageNet val folder its images are in")
        if self.images_per_class < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("taig.images_per_class and batch_size must be >= 1, num_workers >= 0")
        if self.variant not in ("R", "S"):
            raise ConfigError(f"taig.variant must be 'R' or 'S', got {self.variant!r}")
        if self.iterations < 1 or self.ig_steps < 1 or self.step_size <= 0 or self.chunk < 1:
            raise ConfigError("taig.iterations, ig_steps, chunk must be >= 1 and step_size > 0")
        if self.surrogate_model is None and self.surrogate_timm is None:
            raise ConfigError("taig needs a surrogate: set surrogate_timm or surrogate_model")


# --- features -------------------------------------------------------------------------------------------------


REDUCTIONS = ("per_image", "batch_mean")


SAMPLINGS = ("consecutive", "permutations")


@dataclasses.dataclass
class FeatureVarianceConfig(SectionConfig):
    """Options (module docstring for the formulas):

    - ``reduction``: ``batch_mean`` (released script) or ``per_image`` (Park & Kim).
    - ``sampling``: ``consecutive`` (the first ``max_images`` images) or ``permutations`` (released script).
    - ``max_images``: images used by ``consecutive`` (Park & Kim: one batch).
    - ``batch_mean_size``: images per group (released: 128).
    - ``pool_size``, ``sweeps``, ``seed``: ``permutations``: the pool of the first images (1280), the number of
      permutations (10), the seed of ``torch.manual_seed`` before drawing them (0, as the script).
    - ``drop_final_block``: leave out the final block's output of lk_ablate models (released script, RepLKNet).
    - ``modules``: explicit module names whose outputs are recorded (default: found from the architecture).
    """

    max_images: int = 128
    reduction: str = "per_image"
    batch_mean_size: int = 128
    sampling: str = "consecutive"
    pool_size: int = 1280
    sweeps: int = 10
    seed: int = 0
    drop_final_block: bool = False
    modules: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"feature_variance.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"feature_variance.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.max_images < 2 or self.batch_mean_size < 1:
            raise ConfigError("feature_variance.max_images must be >= 2 and batch_mean_size >= 1")
        if self.pool_size < 2 or self.sweeps < 1:
            raise ConfigError("feature_variance.pool_size must be >= 2 and sweeps >= 1")

    def groups(self) -> list[list[int]]:
        """``permutations``: the image indices (into the pool) of each permutation's last batch, as drawn by the
        released script (``torch.manual_seed(seed)``; ``[torch.randperm(pool_size) for _ in range(sweeps)]``)."""
        import torch

        g = torch.Generator().manual_seed(int(self.seed))  # same stream as the default CPU generator after manual_seed
        perms = [torch.randperm(self.pool_size, generator=g) for _ in range(self.sweeps)]
        last = ((self.pool_size - 1) // self.batch_mean_size) * self.batch_mean_size
        return [p[last:].tolist() for p in perms]


# --- frequency ------------------------------------------------------------------------------------------------


SCALES = ("pre_filter", "rms")


FREQUENCY_SPACES = ("normalized", "pixel")


LAYOUTS = ("centered", "consecutive")


PAPER_CENTERS = tuple(round(0.1 * i, 10) for i in range(11))


@dataclasses.dataclass
class FrequencyNoiseConfig(SectionConfig):
    """``amplitude``: noise size (see ``scale``), in the units of ``space`` (0.1: project choice); ``window``: band
    width in units of pi; ``layout``: ``centered`` (Park & Kim, bands ``center +- window / 2``) or
    ``consecutive``; ``centers``: the band centres of ``centered`` (units of pi); ``repeats``: noise draws per
    image; ``seed``: of the noise generator."""

    amplitude: float = 0.1
    window: float = 0.1
    layout: str = "consecutive"
    centers: tuple[float, ...] = PAPER_CENTERS
    scale: str = "pre_filter"
    space: str = "normalized"
    repeats: int = 1
    seed: int = 0
    max_images: int | None = None

    def validate(self) -> None:
        if not 0 < self.window <= 1:
            raise ConfigError(f"frequency.window must be in (0, 1] (units of pi), got {self.window}")
        if self.amplitude < 0:
            raise ConfigError(f"frequency.amplitude must be >= 0, got {self.amplitude}")
        if self.scale not in SCALES or self.space not in FREQUENCY_SPACES:
            raise ConfigError(f"frequency.scale must be one of {SCALES} and space one of {FREQUENCY_SPACES}")
        if self.repeats < 1:
            raise ConfigError("frequency.repeats must be >= 1")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"frequency.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "centered":
            check_levels("frequency.centers", self.centers, 0.0, 1.0)

    def bands(self) -> list[tuple[float, float]]:
        """(low, high) of each band in units of pi (``centered``: ``center -+ window / 2``, may pass 0 and 1)."""
        if self.layout == "centered":
            return [(round(c - self.window / 2, 10), round(c + self.window / 2, 10)) for c in self.centers]
        n = max(1, math.ceil(1.0 / self.window - 1e-9))
        return [(round(i * self.window, 10), round(min(1.0, (i + 1) * self.window), 10)) for i in range(n)]


# --- imagenet9 ------------------------------------------------------------------------------------------------


VARIATIONS = ("original", "mixed_same", "mixed_rand", "mixed_next", "only_fg", "no_fg", "only_bg_b", "only_bg_t")


@dataclasses.dataclass
class ImageNet9Config(SectionConfig):
    """``root``: the folder holding the unzipped variations; ``num_outputs``: 1000 (ImageNet model, mapped) or 9."""

    root: str = ""
    variations: tuple[str, ...] = ("original", "mixed_same", "mixed_rand")
    num_outputs: int = 1000
    batch_size: int = 64
    num_workers: int = 4
    max_images: int | None = None

    def validate(self) -> None:
        if not self.root:
            raise ConfigError("imagenet9.root is required: the folder with original/, mixed_same/, mixed_rand/ "
                              "(from github.com/MadryLab/backgrounds_challenge/releases)")
        bad = [v for v in self.variations if v not in VARIATIONS]
        if bad:
            raise ConfigError(f"imagenet9.variations {bad} unknown; choose from {VARIATIONS}")
        if self.num_outputs not in (9, 1000):
            raise ConfigError(f"imagenet9.num_outputs must be 1000 or 9, got {self.num_outputs}")


# --- imagenet_p -----------------------------------------------------------------------------------------------


PERTURBATIONS = ("gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow", "brightness", "translate",
                 "rotate", "tilt", "scale")


EXTRA_PERTURBATIONS = ("speckle_noise", "gaussian_blur", "spatter", "shear")


DECODERS = ("av", "cv2")


@dataclasses.dataclass
class ImageNetPConfig(SectionConfig):
    """``perturbations``: the 10 of the benchmark by default; ``difficulty``: 1..3 (noise: the ``<p>_<d>``
    videos; the others: frame stride d);
    ``baselines_path``: JSON with AlexNet's FP and T5D per perturbation; ``max_videos``: per perturbation."""

    root: str = ""
    perturbations: tuple[str, ...] = PERTURBATIONS
    difficulty: int = 1
    baselines_path: str | None = None
    decoder: str = "av"
    batch_frames: int = 128
    num_workers: int = 4
    max_videos: int | None = None

    def validate(self) -> None:
        if not self.root:
            raise ConfigError("imagenet_p.root is required: the ImageNet-P folder (gaussian_noise/, brightness/, ...)")
        bad = [p for p in self.perturbations if p not in PERTURBATIONS + EXTRA_PERTURBATIONS]
        if bad or not self.perturbations:
            raise ConfigError(f"imagenet_p.perturbations {bad} unknown; choose from "
                              f"{PERTURBATIONS + EXTRA_PERTURBATIONS}")
        if self.difficulty not in (1, 2, 3):
            raise ConfigError(f"imagenet_p.difficulty must be 1, 2 or 3, got {self.difficulty}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"imagenet_p.decoder must be one of {DECODERS}, got {self.decoder!r}")


# --- kernel_distance ------------------------------------------------------------------------------------------


SELECTIONS = ("auto", "large_kernel", "depthwise")


@dataclasses.dataclass
class KernelDistanceConfig(SectionConfig):
    """``modules``: "large_kernel" (every LargeKernelDWConv: the study's kernels), "depthwise" (every conv with
    groups == in == out channels and a kernel > 1, e.g. timm models), "auto" (large_kernel if the model has any,
    else depthwise). ``include``: glob on module names (e.g. "stages.2.*")."""

    modules: str = "auto"
    include: str = "*"
    normalize_weights: bool = True
    reparameterize: bool = False

    def validate(self) -> None:
        if self.modules not in SELECTIONS:
            raise ConfigError(f"kernel_distance.modules must be one of {SELECTIONS}, got {self.modules!r}")


# --- lesion ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LesionConfig(SectionConfig):
    """``ns``: numbers of units removed (empty: 0..len(candidates)); ``samples`` random draws per n;
    ``candidates``: unit indices that may be removed (empty: all); ``candidate_stages``: only the units of these
    stage indices (empty: all; models without stages: all); ``seed``: of ``random.Random`` drawing the units;
    ``max_images``: evaluate on the first N; ``cache_images``: keep those images in memory between the many
    evaluations."""

    ns: tuple[int, ...] = ()
    samples: int = 10
    candidates: tuple[int, ...] = ()
    candidate_stages: tuple[int, ...] = ()
    seed: int = 0
    max_images: int | None = None
    cache_images: bool = False

    def validate(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"lesion.samples must be >= 1, got {self.samples}")
        if any(n < 0 for n in self.ns):
            raise ConfigError(f"lesion.ns must be >= 0, got {list(self.ns)}")
        if self.candidates and self.candidate_stages:
            raise ConfigError("give lesion.candidates or lesion.candidate_stages, not both")


# --- occlusion ------------------------------------------------------------------------------------------------


MODES = ("random", "salient", "non_salient")


@dataclasses.dataclass
class OcclusionConfig(SectionConfig):
    """``levels``: fractions (of patches for ``random``, of DINO attention mass otherwise); ``repeats``: random
    draws per level (the released script's ``exp_count``)."""

    modes: tuple[str, ...] = MODES
    levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    patch_size: int = 16
    repeats: int = 1
    seed: int = 0
    dino_path: str | None = None
    dino_arch: str = "vit_small_patch16_224"
    dino_img_size: int = 224
    dino_head: int | None = 1
    dino_mean: tuple[float, ...] = IMAGENET_MEAN
    dino_std: tuple[float, ...] = IMAGENET_STD
    max_images: int | None = None

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"occlusion.modes must be a non-empty subset of {MODES}, got {list(self.modes)}")
        check_levels("occlusion.levels", self.levels, 0.0, 1.0)
        if self.patch_size < 1 or self.repeats < 1:
            raise ConfigError("occlusion.patch_size and occlusion.repeats must be >= 1")
        if any(m != "random" for m in self.modes) and not self.dino_path:
            raise ConfigError("occlusion.dino_path is required for salient / non_salient patch drop: the path "
                              "of the DINO ViT-S/16 weights (e.g. dino_deitsmall16_pretrain.pth)")


# --- the catalogue --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
    """One analysis as the command line knows it: its config section, its one-line help, whether it reads labelled
    validation batches, and the module (``lk_ablate.analysis.<module>``) with its ``run``, ``plot`` and
    ``summary`` functions (named in :mod:`.runner`)."""

    name: str
    config: type[SectionConfig]
    help: str
    needs_val: bool
    module: str


CATALOGUE: dict[str, Entry] = {e.name: e for e in (
    Entry("imagenet_p", ImageNetPConfig,
          "ImageNet-P flip probability / top-5 distance (mFR, mT5D with AlexNet baselines)", False, "imagenet_p"),
    Entry("imagenet9", ImageNet9Config, "ImageNet-9 backgrounds: Original / Mixed-Same / Mixed-Rand / BG-Gap", False,
          "imagenet9"),
    Entry("occlusion", OcclusionConfig, "random / salient / non-salient 16x16 patch drop (DINO saliency)", True,
          "occlusion"),
    Entry("fgsm", FGSMConfig, "FGSM accuracy vs eps", True, "attacks"),
    Entry("pgd", PGDConfig, "PGD accuracy vs eps and steps", True, "attacks"),
    Entry("taig", TAIGConfig, "TAIG transfer attack success rate from a surrogate", True, "attacks"),
    Entry("lesion", LesionConfig, "accuracy with n residual blocks removed", True, "lesion"),
    Entry("frequency", FrequencyNoiseConfig, "accuracy drop under band-limited noise", True, "frequency"),
    Entry("kernel_distance", KernelDistanceConfig, "per-channel attention distance of every depthwise kernel", False,
          "kernel_distance"),
    Entry("feature_variance", FeatureVarianceConfig, "feature-map variance per layer vs normalised depth", True,
          "features"),
)}

PRESETS_PACKAGE = "lk_ablate.analysis.presets"


def preset_names() -> list[str]:
    """The presets shipped in lk_ablate/analysis/presets/ (``--preset NAME``)."""
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def add_section_arguments(parser: Any, names: Any = None) -> None:
    """One jsonargparse group per analysis (``--occlusion.levels [0.1,0.5]``), from its config dataclass."""
    for n in names if names is not None else CATALOGUE:
        e = CATALOGUE[n]
        parser.add_class_arguments(e.config, e.name, help=e.help)
