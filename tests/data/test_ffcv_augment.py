"""The FFCV pipeline's numba augmentations against timm's rand-m9-mstd0.5-inc1 (Pillow) and timm's erasing."""
import math
import random

import numpy as np
import pytest
from PIL import Image
from timm.data import auto_augment as T

from helpers import LazyModule

A = LazyModule("lk_ablate.data.ffcv_augment")  # numba: imported by the first test that uses it
pytestmark = pytest.mark.ffcv

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean
KW = dict(fillcolor=FILL, resample=Image.BICUBIC)


def images():
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    flat = np.zeros((41, 30, 3), np.uint8)  # flat regions, few levels, saturated values
    flat[:20] = 250
    flat[20:, 10:] = (3, 128, 255)
    flat[::7, ::5] = 17
    return [noisy, flat]


def run(fn, x, *args):
    out = np.empty_like(x)
    fn(x, out, *args)
    return out


F = np.array(FILL, np.uint8)
CASES = {
    "autocontrast": (lambda x: run(A.apply_lut, x, A.autocontrast_lut(x)), lambda p: T.auto_contrast(p)),
    "equalize": (lambda x: run(A.apply_lut, x, A.equalize_lut(x)), lambda p: T.equalize(p)),
    "invert": (lambda x: run(A.apply_lut, x, A.value_lut(0, 0)), lambda p: T.invert(p)),
    "posterize2": (lambda x: run(A.apply_lut, x, A.value_lut(1, 2)), lambda p: T.posterize(p, 2)),
    "solarize77": (lambda x: run(A.apply_lut, x, A.value_lut(2, 77)), lambda p: T.solarize(p, 77)),
    "solarize_add99": (lambda x: run(A.apply_lut, x, A.value_lut(3, 99)), lambda p: T.solarize_add(p, 99)),
    "brightness1.63": (lambda x: run(A.brightness, x, 1.63), lambda p: T.brightness(p, 1.63)),
    "brightness0.37": (lambda x: run(A.brightness, x, 0.37), lambda p: T.brightness(p, 0.37)),
    "color1.81": (lambda x: run(A.color, x, 1.81), lambda p: T.color(p, 1.81)),
    "color0.1": (lambda x: run(A.color, x, 0.1), lambda p: T.color(p, 0.1)),
    "contrast1.45": (lambda x: run(A.contrast, x, 1.45), lambda p: T.contrast(p, 1.45)),
    "contrast0.55": (lambda x: run(A.contrast, x, 0.55), lambda p: T.contrast(p, 0.55)),
    "sharpness1.9": (lambda x: run(A.sharpness, x, 1.9), lambda p: T.sharpness(p, 1.9)),
    "sharpness0.28": (lambda x: run(A.sharpness, x, 0.28), lambda p: T.sharpness(p, 0.28)),
    "rotate-27.3": (lambda x: run(A.rotate, x, -27.3, F), lambda p: T.rotate(p, -27.3, **KW)),
    "rotate13.5": (lambda x: run(A.rotate, x, 13.5, F), lambda p: T.rotate(p, 13.5, **KW)),
    "rotate8-bilinear": (lambda x: run(A.rotate, x, 8.0, F, False),
                         lambda p: T.rotate(p, 8.0, fillcolor=FILL, resample=Image.BILINEAR)),
    "shear_x-0.27": (lambda x: run(A.affine, x, 1.0, -0.27, 0.0, 0.0, 1.0, 0.0, F), lambda p: T.shear_x(p, -0.27, **KW)),
    "shear_y0.3": (lambda x: run(A.affine, x, 1.0, 0.0, 0.0, 0.3, 1.0, 0.0, F), lambda p: T.shear_y(p, 0.3, **KW)),
    "translate_x0.405": (lambda x: run(A.affine, x, 1.0, 0.0, 0.405 * x.shape[1], 0.0, 1.0, 0.0, F),
                         lambda p: T.translate_x_rel(p, 0.405, **KW)),
    "translate_y-0.33": (lambda x: run(A.affine, x, 1.0, 0.0, 0.0, 0.0, 1.0, -0.33 * x.shape[0], F),
                         lambda p: T.translate_y_rel(p, -0.33, **KW)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_is_bit_identical_to_pillow(case):
    mine, ref = CASES[case]
    for x in images():
        np.testing.assert_array_equal(mine(x), np.asarray(ref(Image.fromarray(x))), err_msg=case)


def test_rand_augment_config_matches_timm():
    hp = dict(translate_const=100, img_mean=FILL, interpolation=Image.BICUBIC)
    ra = T.rand_augment_transform("rand-m9-mstd0.5-inc1", hp)
    names = [op.name for op in ra.ops]
    inc = {"Posterize": "PosterizeIncreasing", "Solarize": "SolarizeIncreasing", "Color": "ColorIncreasing",
           "Contrast": "ContrastIncreasing", "Brightness": "BrightnessIncreasing", "Sharpness": "SharpnessIncreasing"}
    assert names == [inc.get(n, n) for n in A.RAND_OPS]
    assert ra.num_layers == 2 and ra.choice_weights is None
    assert {(op.prob, op.magnitude, op.magnitude_std, op.magnitude_max) for op in ra.ops} == {(0.5, 9, 0.5, None)}
    mine = A.parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert mine == {"magnitude": 9.0, "layers": 2, "prob": 0.5, "mstd": 0.5, "mmax": 10.0, "increasing": True}
    assert A.parse_rand_augment("rand-m7-n3-p0.8-mstd101-mmax12") == {
        "magnitude": 7.0, "layers": 3, "prob": 0.8, "mstd": math.inf, "mmax": 12.0, "increasing": False}


def _timm_args(name, level, sign):
    """timm's level -> argument map with the random sign forced (+1: kept, -1: negated)."""
    state, original = random.getstate(), random.random
    random.random = (lambda: 0.0) if sign > 0 else (lambda: 1.0)
    try:
        fn = T.LEVEL_TO_ARG[name]
        return fn(level, {"translate_pct": 0.45}) if fn is not None else ()
    finally:
        random.random = original  # `del` would remove the module's function for the rest of the session
        random.setstate(state)


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("level", [0.0, 3.7, 9.0, 10.0])
def test_every_op_at_a_level_matches_timm(level, increasing):
    """apply_op(op, level) equals timm's AugmentOp at that magnitude, for one of the two random signs."""
    x = images()[0]
    pil = Image.fromarray(x)
    rename = {"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"}
    for op, base in enumerate(A.RAND_OPS):
        name = base + "Increasing" if increasing and base in rename else base
        out = np.empty_like(x)
        A.apply_op(op, level, increasing, x, out, F, A.seed_state(5, op, 0), 1)
        refs = []
        for sign in (1, -1):
            args = _timm_args(name, level, sign)
            if name.startswith("Posterize") and args[0] == 0:  # Pillow >= 11 refuses 0 bits; older Pillow: black
                refs.append(np.zeros_like(x))
                continue
            refs.append(np.asarray(T.NAME_TO_OP[name](pil, *args, **KW)))
        assert any(np.array_equal(out, r) for r in refs), f"{name} at level {level}"


def test_samples_of_a_batch_get_independent_augmentations():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    params, ops = A.build_params((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), True, auto_augment="rand-m9-mstd0.5-inc1",
                                 re_prob=0.25)

    def batch(key, indices):
        imgs = np.repeat(base[None], len(indices), 0)
        out = np.zeros(imgs.shape, np.float32)
        A.augment_batch(imgs, np.empty_like(imgs[:1]), out, np.uint64(key), np.asarray(indices, np.uint64), params,
                        ops)
        return out

    n = 200
    a = batch(11, range(n))
    plain = batch(11, [])  # placeholder for shape; the unaugmented references follow
    lut = A.normalize_lut(params[A.P_MEAN:A.P_MEAN + 3], params[A.P_STD:A.P_STD + 3])
    untouched = [lut[np.arange(3), base], lut[np.arange(3), base[:, ::-1]]]  # as is, or only flipped
    same = sum(any(np.array_equal(s, u) for u in untouched) for s in a)
    # Per sample: no RandAugment op with p 0.25 (two layers at p 0.5) and no erasing with p 0.75: ~37.5 of 200
    # samples stay as they were (sd 5.5); a per-batch draw would leave all 200 or none.
    assert 20 <= same <= 56
    # Deterministic ops (invert, autocontrast, equalize, ...) give equal outputs when two samples draw the
    # same ones, so not all differ; one draw per batch would give a single distinct output.
    assert len({s.tobytes() for s in a}) >= n // 2
    np.testing.assert_array_equal(batch(11, range(n)), a)  # (key, index) -> the same sample, bit for bit
    np.testing.assert_array_equal(batch(11, [5, 9])[1], a[9])  # independent of the batch it is in
    assert not np.array_equal(batch(12, range(n)), a)  # another epoch key -> other draws
    assert plain.shape == (0, 32, 32, 3)


def test_random_erasing_rate_and_sizes():
    h = w = 40
    n = 4000
    out = np.zeros((h, w, 3), np.float32)
    erased, areas = 0, []
    for i in range(n):
        out[:] = 100.0
        A.random_erasing(out, A.seed_state(1, i, 9), 0.25, 2, 1, 1)
        mask = out[..., 0] != 100.0
        if mask.any():
            erased += 1
            rows, cols = np.nonzero(mask)
            areas.append((np.ptp(rows) + 1) * (np.ptp(cols) + 1) / (h * w))
    assert abs(erased / n - 0.25) < 0.025  # binomial sd 0.007
    assert 0.015 < min(areas) and max(areas) < 0.36  # timm: area 0.02-1/3 of the image, rounded sides


def test_random_resized_crop_params_follow_torchvision():
    import torch
    from torchvision.transforms import RandomResizedCrop

    lo, hi = math.log(3 / 4), math.log(4 / 3)
    mine, ref = [], []
    torch.manual_seed(0)
    dummy = torch.zeros(3, 300, 400)
    for i in range(3000):
        top, left, h, w = A.random_resized_crop_params(A.seed_state(2, i, 1), 300, 400, 0.08, 1.0, lo, hi)
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        mine.append((h * w / 120000, w / h))
        t, l, th, tw = RandomResizedCrop.get_params(dummy, [0.08, 1.0], [3 / 4, 4 / 3])
        ref.append((th * tw / 120000, tw / th))
    mine, ref = np.array(mine), np.array(ref)
    assert mine[:, 0].min() > 0.075 and mine[:, 0].max() <= 1.0
    for q in (0.1, 0.5, 0.9):  # same area and aspect distributions (3000 draws each: sd of a quantile ~0.01)
        assert abs(np.quantile(mine[:, 0], q) - np.quantile(ref[:, 0], q)) < 0.04
        assert abs(np.quantile(mine[:, 1], q) - np.quantile(ref[:, 1], q)) < 0.04
    # impossible ratio range -> torchvision's fallback: the centred crop of the clamped ratio
    assert A.random_resized_crop_params(A.seed_state(0, 0, 1), 100, 400, 1.0, 1.0, 0.0, 0.0) == (0, 150, 100, 100)
