"""Every field of the training augmentation, through both DataModules (ImageFolder and FFCV), tested by its effect.

Images are built so that an augmentation can be read back from the sample the DataModule's own train pipeline
returns (normalisation undone): coordinate ramps give each crop's size and aspect and each flip, a two-level grey
image gives the brightness and contrast factors of colour jitter, a constant image shows every random-erasing box.
Each knob is set to a value that is neither its default nor neutral; the statistics are compared with the recipe's
definition (bounds > 4 binomial sd from the expected value and from the default's). RandAugment is checked sample
by sample: the FFCV path against a reference written here (the per-sample generator, the op and magnitude draws,
timm's level -> argument maps and Pillow's ops), the ImageFolder path against timm's own transforms built from the
expected values under the same per-sample seeds. scripts/mutants.py replaces each knob's use by a neutral constant.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment as T
from timm.data import create_transform

from lk_ablate.data import ImageFolderDataModule
from lk_ablate.data.seeding import STREAM_SAMPLE, derive_seed, seeded_rng

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)  # not the model's: the DataModules' mean/std overrides must apply
SIZE = 32  # the model input (input_size override)
BATCH = 20
PATHS = ["folder", pytest.param("ffcv", marks=pytest.mark.ffcv)]
# the FFCV twin in the slow tier where the fast tier already reaches the same FFCV kernels
PATHS_FFCV_SLOW = ["folder", pytest.param("ffcv", marks=[pytest.mark.ffcv, pytest.mark.slow])]
NO_AUG = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, auto_augment=None, color_jitter=0.0, re_prob=0.0)


def write_tree(root: Path, images: list[np.ndarray]) -> Path:
    """train/ and val/ with one image per class folder: sample i has label i (both DataModules sort classes)."""
    for split in ("train", "val"):
        for i, img in enumerate(images):
            d = root / split / f"c{i:04d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / "0.png")
    return root


def train_samples(kind: str, tmp_path: Path, images: list[np.ndarray], epochs: int, seed: int = 3,
                  **aug) -> dict[tuple[int, int], torch.Tensor]:
    """(sample index, epoch) -> the normalised CHW float32 tensor the DataModule's train pipeline gives."""
    root = write_tree(tmp_path / "tree", images)
    common = dict(batch_size=BATCH, input_size=SIZE, mean=MEAN, std=STD, seed=seed)
    if kind == "folder":
        dm = ImageFolderDataModule(str(root), num_workers=0, persistent_workers=False, **common, **aug)
        dm.setup("fit")
        ds = dm.datasets["train"]  # the SeededDataset the train loader reads with (index, epoch) keys
        return {(i, e): ds[(i, e)][0] for e in range(epochs) for i in range(len(images))}
    from lk_ablate.data.ffcv_writer import WriterConfig, write_ffcv
    from lk_ablate.data import FFCVDataModule

    res = write_ffcv(root, tmp_path / "ffcv", cfg=WriterConfig(write_mode="raw", num_workers=1, max_resolution=None))
    dm = FFCVDataModule(res["train"]["path"], res["val"]["path"], order="random", num_workers=1, **common, **aug)
    dm.setup("fit")
    loader = dm.train_dataloader()
    out = {}
    for e in range(epochs):
        loader.set_epoch(e)
        for x, y in loader:
            out.update({(int(label), e): sample.clone() for sample, label in zip(x, y)})
    dm.teardown("fit")
    assert len(out) == epochs * len(images)
    return out


def levels(x: torch.Tensor) -> np.ndarray:
    """Normalisation undone: HWC pixel levels (float64; integers within float32 rounding where nothing erased)."""
    mean, std = np.array(MEAN), np.array(STD)
    return (x.double().permute(1, 2, 0).numpy() * std + mean) * 255.0


def ramp(side: int, step: int) -> np.ndarray:
    """R = step * column, G = step * row, B = 100: a crop's size and a flip read back from the slopes."""
    y, x = np.mgrid[:side, :side]
    return np.stack([step * x, step * y, np.full_like(x, 100)], -1).astype(np.uint8)


def within(count: int, n: int, p: float, sds: float = 4.5) -> bool:
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


# --- crop scale and ratio ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PATHS_FFCV_SLOW)
def test_random_resized_crop_follows_scale_and_ratio(kind, tmp_path):
    """64 px ramps (R = 4 x column, G = 4 x row) cropped and resized to 32: the output's slopes give the crop,
    w = 8 x R slope, h = 8 x G slope (interior columns/rows 8..24; linear ramps survive bicubic and area resizing).
    With scale (0.25, 0.5) and ratio (0.5, 2), 200 crops keep 0.24 <= area <= 0.51 of the image and
    0.47 <= w / h <= 2.1 (rounding of the integer box), and span the ranges (area < 0.28 and > 0.47, aspect < 0.6
    and > 1.7: each end has >= 10% of the draws). The default scale (0.08, 1) and ratio (3/4, 4/3) fail."""
    samples = train_samples(kind, tmp_path, [ramp(64, 4)] * 40, epochs=5,
                            **{**NO_AUG, "scale": (0.25, 0.5), "ratio": (0.5, 2.0)})
    areas, aspects = [], []
    for x in samples.values():
        lv = levels(x)
        w = 8 * np.mean(lv[8:24, 24, 0] - lv[8:24, 8, 0]) / 16
        h = 8 * np.mean(lv[24, 8:24, 1] - lv[8, 8:24, 1]) / 16
        areas.append(w * h / 64**2)
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert 0.24 <= areas.min() and areas.max() <= 0.51, (areas.min(), areas.max())
    assert 0.47 <= aspects.min() and aspects.max() <= 2.1, (aspects.min(), aspects.max())
    assert areas.min() < 0.28 and areas.max() > 0.47
    assert aspects.min() < 0.6 and aspects.max() > 1.7


# --- flip and normalisation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PATHS)
def test_flip_probability_and_normalisation(kind, tmp_path):
    """32 px ramps at scale (1, 1), ratio (1, 1) (the crop is the whole image): each of 600 samples is the image or
    its mirror, bit for bit in float32: ToTensor + Normalize with the DataModule's mean/std, (v / 255 - mean) / std.
    hflip 0.3: Binomial(600, 0.3) mirrored (180, sd 11.2; the default 0.5 gives 300)."""
    img = ramp(SIZE, 8)
    samples = train_samples(kind, tmp_path, [img] * 100, epochs=6, **{**NO_AUG, "hflip": 0.3})

    def normalised(a: np.ndarray) -> torch.Tensor:
        v = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(255)
        return (v - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)

    plain, mirrored = normalised(img), normalised(img[:, ::-1])
    flips = 0
    for x in samples.values():
        assert torch.equal(x, plain) or torch.equal(x, mirrored)
        flips += torch.equal(x, mirrored)
    assert within(flips, 600, 0.3), flips


# --- random erasing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PATHS_FFCV_SLOW)
def test_random_erasing_probability(kind, tmp_path):
    """A constant image: a sample differs from it exactly where an erasing box (per-pixel normal noise) lies. re_prob
    0.4: Binomial(1000, 0.4) samples erased (400, sd 15.5; the default 0.25 gives 250, a flipped test 600); each box
    is a rectangle of 2% to 1/3 of the image (timm's RandomErasing; sides rounded: 1.5% to 36%)."""
    img = np.full((SIZE, SIZE, 3), 120, np.uint8)
    samples = train_samples(kind, tmp_path, [img] * 100, epochs=10, **{**NO_AUG, "re_prob": 0.4})
    plain = (torch.full((3, 1, 1), 120.0).div(255) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    erased = 0
    for x in samples.values():
        box = (x != plain).any(0)
        if box.any():
            erased += 1
            rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
            area = len(rows) * len(cols) / SIZE**2
            assert 0.015 <= area <= 0.36 and int(box.sum()) >= 0.95 * len(rows) * len(cols)
    assert within(erased, 1000, 0.4, sds=4.0), erased


# --- colour jitter ----------------------------------------------------------------------------------------------
GREY, COLOUR = 60, (150, 100, 75)  # the two halves of the jitter image; the colour's luma is about 112


@pytest.mark.parametrize("kind", PATHS_FFCV_SLOW)
def test_colour_jitter_strength(kind, tmp_path):
    """Without RandAugment (timm turns colour jitter off when it is on), color_jitter 0.3 draws brightness f,
    contrast c and saturation s in [0.7, 1.3], applied in random order. They commute (Pillow's enhance ops are
    blends: with black, with the mean luma m, with each pixel's luma), so on an image of a grey half (60) and a
    colour half (150, 100, 75; luma L) the grey half becomes f (c 60 + (1 - c) m), the colour half has luma
    f (c L + (1 - c) m), m = (60 + L) / 2, and a red - blue spread of f s c 75: f, c and s read back to within the
    uint8 rounding of each step (f +- 0.03, c and s +- 0.08). Over 300 samples each stays in its range and spans it
    (< 0.78 and > 1.22); the default 0.4 reaches beyond 1.38, 0 leaves all three at 1, a factor left out stays 1."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:, :SIZE // 2] = GREY
    img[:, SIZE // 2:] = COLOUR
    luma = float(Image.fromarray(img[:1, -1:]).convert("L").getpixel((0, 0)))
    samples = train_samples(kind, tmp_path, [img] * 100, epochs=3, **{**NO_AUG, "color_jitter": 0.3})
    fs, cs, ss = [], [], []
    for x in samples.values():
        lv = np.rint(levels(x))
        grey, colour = lv[:, :SIZE // 2], lv[:, SIZE // 2:]
        assert (grey == grey[0, 0, 0]).all() and (colour == colour[0, 0]).all()  # flat halves, grey stays grey
        a = grey[0, 0, 0]
        r, g, b = colour[0, 0]
        out_luma = 0.299 * r + 0.587 * g + 0.114 * b
        f = (a + out_luma) / (GREY + luma)
        c = (out_luma - a) / (f * (luma - GREY))
        fs.append(f)
        cs.append(c)
        ss.append((r - b) / (f * c * (COLOUR[0] - COLOUR[2])))
    for values in map(np.array, (fs, cs, ss)):
        assert 0.62 <= values.min() and values.max() <= 1.38, (values.min(), values.max())
        assert values.min() < 0.78 and values.max() > 1.22, (values.min(), values.max())
    assert 0.67 <= min(fs) and max(fs) <= 1.33


# --- RandAugment, FFCV path: sample by sample against a reference -------------------------------------------------
MASK = (1 << 64) - 1
GOLDEN, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


class SplitMix:
    """The per-sample generator of the FFCV pipeline (splitmix64 over a hash of (epoch key, sample index, stream);
    docs/data.md), in plain Python."""

    def __init__(self, key: int, index: int, stream: int) -> None:
        self.state = self._mix(key ^ self._mix((index * GOLDEN + stream) & MASK))

    @staticmethod
    def _mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * M1) & MASK
        z = ((z ^ (z >> 27)) * M2) & MASK
        return z ^ (z >> 31)

    def uniform(self) -> float:
        self.state = (self.state + GOLDEN) & MASK
        return (self._mix(self.state) >> 11) * 2.0**-53

    def randint(self, lo: int, hi: int) -> int:
        return lo + min(int(self.uniform() * (hi - lo + 1)), hi - lo)

    def gauss(self, mu: float, sigma: float) -> float:
        u1 = 1.0 - self.uniform()
        u2 = self.uniform()
        return mu + sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


# timm's op order (auto_augment._RAND_INCREASING_TRANSFORMS / _RAND_TRANSFORMS)
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
       "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
FILL = tuple(min(255, round(255 * m)) for m in MEAN)  # timm's img_mean: RandAugment's fill colour
KW = dict(fillcolor=FILL, resample=Image.BICUBIC)


def apply_rand_augment(img: Image.Image, g: SplitMix, m: float, n: int, p: float, std: float, mmax: float,
                       inc: bool, trace: list[str]) -> Image.Image:
    """timm's RandAugment as the recipe defines it: ``n`` ops drawn with replacement, each applied with probability
    ``p`` at magnitude N(m, std) clamped to [0, mmax], timm's level -> argument maps (random sign where timm negates:
    the geometric ops, and the enhance ops of the increasing variants), Pillow's ops; draws in the pipeline's order."""
    for _ in range(n):
        name = OPS[g.randint(0, len(OPS) - 1)]
        if p < 1.0 and g.uniform() > p:
            continue
        level = max(0.0, min(g.gauss(m, std) if std > 0 else m, mmax)) / 10.0
        signed = name in SIGNED or (inc and name in ENHANCE)
        sign = (-1.0 if g.uniform() > 0.5 else 1.0) if signed else 1.0
        trace.append(name)
        if name == "AutoContrast":
            img = T.auto_contrast(img)
        elif name == "Equalize":
            img = T.equalize(img)
        elif name == "Invert":
            img = T.invert(img)
        elif name == "Rotate":
            img = T.rotate(img, sign * level * 30.0, **KW)
        elif name == "Posterize":
            bits = 4 - int(level * 4) if inc else int(level * 4)
            # 0 bits: black (Pillow < 11; Pillow >= 11 raises, which the project's patch avoids: docs/data.md)
            img = img.point(lambda _: 0) if bits <= 0 else ImageOps.posterize(img, bits)
        elif name == "Solarize":
            thresh = min(256, int(level * 256))
            img = T.solarize(img, 256 - thresh if inc else thresh)
        elif name == "SolarizeAdd":
            img = T.solarize_add(img, min(128, int(level * 110)))
        elif name in ENHANCE:
            factor = max(0.1, 1.0 + sign * level * 0.9) if inc else level * 1.8 + 0.1
            img = {"Color": T.color, "Contrast": T.contrast, "Brightness": T.brightness,
                   "Sharpness": T.sharpness}[name](img, factor)
        elif name in ("ShearX", "ShearY"):
            img = (T.shear_x if name == "ShearX" else T.shear_y)(img, sign * level * 0.3, **KW)
        else:
            img = (T.translate_x_rel if name == "TranslateXRel" else T.translate_y_rel)(img, sign * level * 0.45, **KW)
    return img


def noise_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.ffcv
@pytest.mark.parametrize("spec,m,n,p,std,mmax,inc", [
    ("rand-m9-mstd0.5-inc1", 9.0, 2, 0.5, 0.5, 10.0, True),  # the recipe's
    pytest.param("rand-m6-n3-p0.8-mstd1.0-mmax8", 6.0, 3, 0.8, 1.0, 8.0, False, marks=pytest.mark.slow),
], ids=["recipe", "m6-n3-p0.8-mstd1-mmax8"])
def test_ffcv_rand_augment_equals_the_reference_sample_by_sample(spec, m, n, p, std, mmax, inc, tmp_path):
    """Through FFCVDataModule (hflip 0.4 as well, crop = the whole image, no erasing): each of 120 samples (60 noise
    images x 2 epochs) equals, bit for bit, the reference applied to its image: the flip and RandAugment drawn
    from the sample's own generator (epoch key derive_seed(seed, STREAM_SAMPLE, epoch), stream 2) with the
    numbers of ``spec`` written here. Every one of the 15 ops is applied at least once over the samples of the
    recipe's spec, so a wrong op, level map, magnitude, noise, probability, layer count or sign fails."""
    images = noise_images(60)
    samples = train_samples("ffcv", tmp_path, images, epochs=2, seed=7,
                            **{**NO_AUG, "hflip": 0.4, "auto_augment": spec})
    trace: list[str] = []
    for (i, e), x in samples.items():
        g = SplitMix(derive_seed(7, STREAM_SAMPLE, e) & MASK, i, 2)
        img = Image.fromarray(images[i])
        if g.uniform() < 0.4:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        ref = np.asarray(apply_rand_augment(img, g, m, n, p, std, mmax, inc, trace))
        got = np.rint(levels(x)).astype(np.uint8)
        assert np.array_equal(got, ref), (i, e)
    counts = {op: trace.count(op) for op in OPS}
    assert all(counts.values()) if spec.startswith("rand-m9") else sum(counts.values()) > 200, counts


# --- RandAugment and the rest, ImageFolder path: against timm's transforms ----------------------------------------
def _posterize(img, bits_to_keep, **_):
    return img.point(lambda _: 0) if bits_to_keep <= 0 else (img if bits_to_keep >= 8 else
                                                             ImageOps.posterize(img, bits_to_keep))


@pytest.mark.parametrize("aug,interpolation", [
    (dict(scale=(0.3, 0.9), ratio=(0.6, 1.6), hflip=0.3, auto_augment="rand-m7-mstd0.8-inc1", color_jitter=0.2,
          re_prob=0.35), "bilinear"),
    (dict(scale=(0.5, 1.0), ratio=(0.8, 1.25), hflip=0.7, auto_augment=None, color_jitter=0.25, re_prob=0.6),
     "bicubic"),
], ids=["randaugment", "colour-jitter"])
def test_imagefolder_train_samples_equal_timm_transforms_of_the_expected_values(aug, interpolation, tmp_path):
    """Each of 60 ImageFolder samples (30 noise images of 40 x 48, 2 epochs) equals, bit for bit, timm's
    create_transform (the factory the official ConvNeXt code calls) built from the values written here (crop scale
    and ratio, flip, RandAugment or colour jitter, interpolation, mean/std, random erasing in pixel mode), with
    Posterize at 0 bits black, run under the sample's seed derive_seed(seed, STREAM_SAMPLE, epoch, index)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(30)]
    samples = train_samples("folder", tmp_path, images, epochs=2, seed=11, interpolation=interpolation, **aug)
    ref = create_transform(SIZE, is_training=True, scale=aug["scale"], ratio=aug["ratio"], hflip=aug["hflip"],
                           auto_augment=aug["auto_augment"], color_jitter=aug["color_jitter"],
                           interpolation=interpolation, mean=MEAN, std=STD, re_prob=aug["re_prob"], re_mode="pixel",
                           re_count=1)
    for t in ref.transforms:
        for op in getattr(t, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    differ = 0
    for (i, e), x in samples.items():
        with seeded_rng(derive_seed(11, STREAM_SAMPLE, e, i)):
            expect = ref(Image.fromarray(images[i]))
        assert torch.equal(x, expect), (i, e)
        differ += not torch.equal(x, samples[(i, 1 - e)])
    assert differ == 60  # every sample's augmentation changes between the epochs
