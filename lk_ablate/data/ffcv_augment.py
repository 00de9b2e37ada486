"""The recipe's per-sample random augmentations as numba kernels, seeded by (seed, epoch, sample index).

These run inside the FFCV pipeline (``ffcv_loader``), on uint8 HWC images, one sample at a time, in
parallel over a batch. Every random decision of a sample comes from its own counter-based generator
(splitmix64), whose state is a hash of (epoch key, sample index, stream): the result does not depend on
the batch, the thread or what ran before, so a resumed run reproduces every sample bit for bit.

The ops follow timm's ``rand-m9-mstd0.5-inc1`` (``timm.data.auto_augment``): the same 15 ops, level
functions, magnitude noise and clamp, per-op probability, 2 layers chosen with replacement, bicubic
resampling and the mean-pixel fill. Each op reproduces the Pillow function timm calls (same integer
formulas, float32 blend, PIL's a=-1 bicubic), checked against Pillow in tests/test_ffcv_augment.py.
Random numbers come from our generator, not Python's ``random``, so the draws differ from timm's while
their distributions match. One deliberate difference: PosterizeIncreasing at magnitude 10 keeps 0 bits;
Pillow >= 11 raises for that (timm crashes), older Pillow returned a black image, which we keep.
"""
from __future__ import annotations

import math
import re

import numpy as np
from numba import njit, prange

from ..base.errors import ConfigError

# Streams keep the random numbers of the pipeline's ops apart for the same sample.
STREAM_CROP = 1
STREAM_AUGMENT = 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)

# RandAugment ops, in timm's order (_RAND_INCREASING_TRANSFORMS / _RAND_TRANSFORMS).
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
(OP_AUTOCONTRAST, OP_EQUALIZE, OP_INVERT, OP_ROTATE, OP_POSTERIZE, OP_SOLARIZE, OP_SOLARIZE_ADD, OP_COLOR,
 OP_CONTRAST, OP_BRIGHTNESS, OP_SHARPNESS, OP_SHEAR_X, OP_SHEAR_Y, OP_TRANSLATE_X, OP_TRANSLATE_Y) = range(15)

# Layout of the float64 parameter vector the augment kernel reads (one array, so the jitted signature is fixed).
P_HFLIP, P_PAD = 0, 1
P_RA_LAYERS, P_RA_MAG, P_RA_STD, P_RA_MAX, P_RA_PROB, P_RA_INC = 2, 3, 4, 5, 6, 7
P_CJ_B, P_CJ_C, P_CJ_S = 8, 9, 10
P_RE_PROB, P_RE_MODE, P_RE_MIN_COUNT, P_RE_MAX_COUNT = 11, 12, 13, 14
P_MEAN, P_STD, P_FILL = 15, 18, 21
P_INTERP = 24
N_PARAMS = 25
INTERPOLATIONS = {"bilinear": 0, "bicubic": 1, "random": 2}  # timm's 'random': one of the two per op
RE_MODES = {"const": 0, "rand": 1, "pixel": 2}


# --- generator ---------------------------------------------------------------------------------------
@njit(cache=True)
def _mix64(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def seed_state(key, index, stream):
    """Generator state of one sample: a hash of (epoch key, sample index, stream)."""
    st = np.empty(1, np.uint64)
    st[0] = _mix64(np.uint64(key) ^ _mix64(np.uint64(index) * _GOLDEN + np.uint64(stream)))
    return st


@njit(cache=True)
def next_u64(st):
    st[0] += _GOLDEN
    return _mix64(st[0])


@njit(cache=True)
def uniform(st):
    """Uniform in [0, 1) with 53 random bits."""
    return np.float64(next_u64(st) >> _S11) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def randint(st, lo, hi):
    """Uniform integer in [lo, hi], both ends included (Python's ``random.randint``)."""
    return lo + min(np.int64(uniform(st) * (hi - lo + 1)), hi - lo)


@njit(cache=True)
def uniform_between(st, lo, hi):
    return lo + (hi - lo) * uniform(st)


@njit(cache=True)
def gauss(st, mu, sigma):
    u1 = 1.0 - uniform(st)
    u2 = uniform(st)
    return mu + sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


# --- RandomResizedCrop ---------------------------------------------------------------------------------
@njit(cache=True)
def random_resized_crop_params(st, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """(top, left, h, w) of torchvision's / timm's RandomResizedCrop: 10 tries, then a centred fallback."""
    area = np.float64(height) * np.float64(width)
    for _ in range(10):
        target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(st))
        aspect = math.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * uniform(st))
        w = np.int64(round(math.sqrt(target_area * aspect)))
        h = np.int64(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = randint(st, 0, height - h)
            j = randint(st, 0, width - w)
            return i, j, h, w
    in_ratio = np.float64(width) / np.float64(height)
    r_lo, r_hi = math.exp(log_ratio_lo), math.exp(log_ratio_hi)
    if in_ratio < r_lo:
        w = np.int64(width)
        h = np.int64(round(w / r_lo))
    elif in_ratio > r_hi:
        h = np.int64(height)
        w = np.int64(round(h * r_hi))
    else:
        w, h = np.int64(width), np.int64(height)
    return (np.int64(height) - h) // 2, (np.int64(width) - w) // 2, h, w


# --- point ops (Pillow ImageOps) ----------------------------------------------------------------------
@njit(cache=True)
def apply_lut(src, dst, lut):
    """dst[..., c] = lut[c, src[..., c]] for a (3, 256) table: uint8 (Pillow's ``Image.point``) or float32
    (``normalize_lut``: ToTensor + Normalize into a float image)."""
    hh, ww, _ = src.shape
    for y in range(hh):
        for x in range(ww):
            for c in range(3):
                dst[y, x, c] = lut[c, src[y, x, c]]


@njit(cache=True)
def histogram(img):
    h = np.zeros((3, 256), np.int64)
    hh, ww, _ = img.shape
    for y in range(hh):
        for x in range(ww):
            for c in range(3):
                h[c, img[y, x, c]] += 1
    return h


@njit(cache=True)
def _identity_lut():
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        for i in range(256):
            lut[c, i] = i
    return lut


@njit(cache=True)
def autocontrast_lut(img):
    """``ImageOps.autocontrast(img)`` (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    hist = histogram(img)
    lut = _identity_lut()
    for c in range(3):
        lo = 0
        while lo < 256 and hist[c, lo] == 0:
            lo += 1
        hi = 255
        while hi >= 0 and hist[c, hi] == 0:
            hi -= 1
        if hi <= lo:
            continue
        scale = 255.0 / (hi - lo)
        offset = -lo * scale
        for i in range(256):
            v = np.int64(i * scale + offset)
            lut[c, i] = min(max(v, 0), 255)
    return lut


@njit(cache=True)
def equalize_lut(img):
    """``ImageOps.equalize(img)``: Pillow's per-channel histogram equalisation table."""
    hist = histogram(img)
    lut = _identity_lut()
    for c in range(3):
        nonzero, total, last = 0, 0, 0
        for i in range(256):
            if hist[c, i]:
                nonzero += 1
                total += hist[c, i]
                last = hist[c, i]
        if nonzero <= 1:
            continue
        step = (total - last) // 255
        if step == 0:
            continue
        n = step // 2
        for i in range(256):
            lut[c, i] = min(n // step, 255)
            n += hist[c, i]
    return lut


@njit(cache=True)
def value_lut(kind, arg):
    """Tables of invert (0), posterize to ``arg`` bits (1), solarize at ``arg`` (2), solarize-add ``arg`` (3)."""
    lut = np.empty((3, 256), np.uint8)
    mask = (~((1 << (8 - arg)) - 1)) & 255 if kind == 1 else 0
    for i in range(256):
        if kind == 0:
            v = 255 - i
        elif kind == 1:
            v = i & mask
        elif kind == 2:
            v = i if i < arg else 255 - i
        else:
            v = min(255, i + arg) if i < 128 else i
        for c in range(3):
            lut[c, i] = v
    return lut


# --- enhance ops (Pillow ImageEnhance: blend with a degenerate image) -------------------------------
@njit(cache=True)
def _blend_px(d, v, alpha):
    # Pillow's ImagingBlend: float32 arithmetic, clipped to [0, 255], truncated (branch-free: vectorises).
    t = np.float32(d) + alpha * np.float32(np.int32(v) - np.int32(d))
    return np.uint8(min(max(t, np.float32(0.0)), np.float32(255.0)))


@njit(cache=True)
def luma(r, g, b):
    """Pillow's RGB -> L (ITU-R 601-2 in 16-bit fixed point)."""
    return (np.int64(r) * 19595 + np.int64(g) * 38470 + np.int64(b) * 7471 + 0x8000) >> 16


@njit(cache=True)
def _blend_lut(degenerate, factor):
    """Blend table of a constant degenerate value: lut[v] = blend(degenerate, v, factor) (exact, 256 entries)."""
    a = np.float32(factor)
    lut = np.empty((3, 256), np.uint8)
    for v in range(256):
        b = _blend_px(degenerate, v, a)
        for c in range(3):
            lut[c, v] = b
    return lut


@njit(cache=True)
def brightness(src, dst, factor):
    apply_lut(src, dst, _blend_lut(0, factor))


@njit(cache=True)
def color(src, dst, factor):
    a = np.float32(factor)
    hh, ww, _ = src.shape
    for y in range(hh):
        for x in range(ww):
            g = luma(src[y, x, 0], src[y, x, 1], src[y, x, 2])
            for c in range(3):
                dst[y, x, c] = _blend_px(g, src[y, x, c], a)


@njit(cache=True)
def contrast(src, dst, factor):
    hh, ww, _ = src.shape
    total = 0
    for y in range(hh):
        for x in range(ww):
            total += luma(src[y, x, 0], src[y, x, 1], src[y, x, 2])
    apply_lut(src, dst, _blend_lut(np.int64(total / (hh * ww) + 0.5), factor))


@njit(cache=True)
def sharpness(src, dst, factor):
    """Blend with ``ImageFilter.SMOOTH`` (3x3 [1 1 1; 1 5 1; 1 1 1] / 13 in float32, summed in Pillow's order;
    border pixels are left as they are, so their blend is the identity). Rows are processed flat so the
    inner loop vectorises."""
    hh, ww, _ = src.shape
    a = np.float32(factor)
    k1, k5 = np.float32(1.0) / np.float32(13.0), np.float32(5.0) / np.float32(13.0)
    half, lo, hi = np.float32(0.5), np.float32(0.0), np.float32(255.0)
    dst[0] = src[0]
    dst[hh - 1] = src[hh - 1]
    n = 3 * ww - 6
    for y in range(1, hh - 1):
        up, mid, dn, out = src[y - 1].reshape(-1), src[y].reshape(-1), src[y + 1].reshape(-1), dst[y].reshape(-1)
        for k in range(3):
            out[k] = mid[k]
            out[3 * ww - 3 + k] = mid[3 * ww - 3 + k]
        # shifted views, so the inner loop reads with plain indices and vectorises
        ul, uc, ur, ml, mc, mr = up[:n], up[3:n + 3], up[6:], mid[:n], mid[3:n + 3], mid[6:]
        dl, dc, dr, o = dn[:n], dn[3:n + 3], dn[6:], out[3:n + 3]
        for k in range(n):
            ss = half + (np.float32(dl[k]) * k1 + np.float32(dc[k]) * k1 + np.float32(dr[k]) * k1)
            ss += np.float32(ml[k]) * k1 + np.float32(mc[k]) * k5 + np.float32(mr[k]) * k1
            ss += np.float32(ul[k]) * k1 + np.float32(uc[k]) * k1 + np.float32(ur[k]) * k1
            o[k] = _blend_px(np.uint8(min(max(ss, lo), hi)), mc[k], a)


# --- geometric ops (Pillow Image.transform AFFINE, bicubic, fill colour) --------------------------
@njit(cache=True)
def _cubic(v1, v2, v3, v4, d):
    # Pillow's BICUBIC macro (a = -1), in its order of operations: results match Pillow bit for bit.
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


@njit(cache=True)
def _to_u8(v):
    # Pillow: <= 0 -> 0, >= 255 -> 255, else truncated; written branch-free so loops vectorise.
    return np.uint8(min(max(v, 0.0), 255.0))


@njit(cache=True)
def _valid_range(n, q, a2):
    """[lo, hi): the output positions i whose source coordinate ((i + .5) + q) + a2 lies in [0, n) (Pillow's
    test, evaluated in its order; monotonic in i)."""
    lo = 0
    while lo < n and ((lo + 0.5) + q) + a2 < 0.0:
        lo += 1
    hi = n
    while hi > lo and ((hi - 1 + 0.5) + q) + a2 >= n:
        hi -= 1
    return lo, hi


@njit(cache=True)
def _tap_row(dst, src, y, x, ix, d, ww):
    """dst[y, x] = the bicubic blend of source row y at columns ix-1..ix+2 (clamped) with fraction d."""
    if d == 0.0:
        for c in range(3):
            dst[y, x, c] = src[y, min(max(ix, 0), ww - 1), c]
    elif 1 <= ix < ww - 2:
        for c in range(3):
            dst[y, x, c] = _to_u8(_cubic(np.float64(src[y, ix - 1, c]), np.float64(src[y, ix, c]),
                                         np.float64(src[y, ix + 1, c]), np.float64(src[y, ix + 2, c]), d))
    else:
        c0, c1 = min(max(ix - 1, 0), ww - 1), min(max(ix, 0), ww - 1)
        c2, c3 = min(max(ix + 1, 0), ww - 1), min(max(ix + 2, 0), ww - 1)
        for c in range(3):
            dst[y, x, c] = _to_u8(_cubic(np.float64(src[y, c0, c]), np.float64(src[y, c1, c]),
                                         np.float64(src[y, c2, c]), np.float64(src[y, c3, c]), d))


@njit(cache=True)
def _shift_rows(src, dst, a1, a2, fill):
    """Bicubic ``affine`` for (1, a1, a2, 0, 1, 0) (shear X, translate X): output row y resamples source row y
    shifted by a1 (y + .5) + a2. The source coordinate and its fraction are computed per pixel in Pillow's order
    of operations: one fraction per row differs from Pillow's in the last bits, which flips a rounding to one
    grey level now and then (seen at shear +-0.2 and +0.3)."""
    hh, ww, _ = src.shape
    for y in range(hh):
        q = a1 * (y + 0.5)
        lo, hi = _valid_range(ww, q, a2)
        for x in range(ww):
            if x < lo or x >= hi:
                dst[y, x, 0], dst[y, x, 1], dst[y, x, 2] = fill[0], fill[1], fill[2]
        for x in range(lo, hi):
            u = (((x + 0.5) + q) + a2) - 0.5
            f = math.floor(u)
            _tap_row(dst, src, y, x, np.int64(f), u - f, ww)


@njit(cache=True)
def _shift_columns(src, dst, a3, a5, fill):
    """Bicubic ``affine`` for (1, 0, 0, a3, 1, a5) (shear Y, translate Y): output column x resamples source
    column x shifted by a3 (x + .5) + a5, the fraction computed per pixel (as ``_shift_rows``)."""
    hh, ww, _ = src.shape
    if a3 == 0.0:  # translate Y: one shift for the image, output rows are blends of 4 whole source rows
        lo, hi = _valid_range(hh, 0.0, a5)
        for y in range(hh):
            if y < lo or y >= hi:
                for x in range(ww):
                    dst[y, x, 0], dst[y, x, 1], dst[y, x, 2] = fill[0], fill[1], fill[2]
                continue
            u = (y + 0.5) + a5 - 0.5
            iy = np.int64(math.floor(u))
            d = u - math.floor(u)
            out = dst[y].reshape(-1)
            r0, r1 = src[min(max(iy - 1, 0), hh - 1)].reshape(-1), src[min(max(iy, 0), hh - 1)].reshape(-1)
            r2, r3 = src[min(max(iy + 1, 0), hh - 1)].reshape(-1), src[min(max(iy + 2, 0), hh - 1)].reshape(-1)
            if d == 0.0:
                out[:] = r1
            else:
                for k in range(3 * ww):
                    out[k] = _to_u8(_cubic(np.float64(r0[k]), np.float64(r1[k]), np.float64(r2[k]),
                                           np.float64(r3[k]), d))
        return
    for x in range(ww):
        q = a3 * (x + 0.5)
        lo, hi = _valid_range(hh, q, a5)
        for y in range(hh):
            if y < lo or y >= hi:
                dst[y, x, 0], dst[y, x, 1], dst[y, x, 2] = fill[0], fill[1], fill[2]
        if hi <= lo:
            continue
        for y in range(lo, hi):
            u = (((y + 0.5) + q) + a5) - 0.5  # per pixel, in Pillow's order (see _shift_rows)
            f = math.floor(u)
            iy = np.int64(f)
            d = u - f
            if d == 0.0:
                for c in range(3):
                    dst[y, x, c] = src[min(max(iy, 0), hh - 1), x, c]
            elif 1 <= iy < hh - 2:
                for c in range(3):
                    dst[y, x, c] = _to_u8(_cubic(np.float64(src[iy - 1, x, c]), np.float64(src[iy, x, c]),
                                                 np.float64(src[iy + 1, x, c]), np.float64(src[iy + 2, x, c]), d))
            else:
                r0, r1 = min(max(iy - 1, 0), hh - 1), min(max(iy, 0), hh - 1)
                r2, r3 = min(max(iy + 1, 0), hh - 1), min(max(iy + 2, 0), hh - 1)
                for c in range(3):
                    dst[y, x, c] = _to_u8(_cubic(np.float64(src[r0, x, c]), np.float64(src[r1, x, c]),
                                                 np.float64(src[r2, x, c]), np.float64(src[r3, x, c]), d))


@njit(cache=True)
def affine(src, dst, a0, a1, a2, a3, a4, a5, fill, bicubic=True):
    """dst(x, y) = src(a0 x' + a1 y' + a2, a3 x' + a4 y' + a5) at pixel centres x' = x + .5, y' = y + .5.

    Pillow's ``Image.transform(AFFINE)`` with BICUBIC (a = -1 cubic) or BILINEAR and a fill colour outside;
    taps beyond the border are clamped (Pillow's rule). A zero fraction skips that axis' taps (Pillow's
    result is the centre tap exactly then), so shears and translations cost 4 taps, rotations 16.
    """
    if bicubic and a0 == 1.0 and a3 == 0.0 and a4 == 1.0 and a5 == 0.0:
        _shift_rows(src, dst, a1, a2, fill)
        return
    if bicubic and a0 == 1.0 and a1 == 0.0 and a2 == 0.0 and a4 == 1.0:
        _shift_columns(src, dst, a3, a5, fill)
        return
    hh, ww, _ = src.shape
    f0, f1, f2 = fill[0], fill[1], fill[2]
    for y in range(hh):
        yc = y + 0.5
        for x in range(ww):
            xc = x + 0.5
            xin = a0 * xc + a1 * yc + a2
            yin = a3 * xc + a4 * yc + a5
            if xin < 0.0 or xin >= ww or yin < 0.0 or yin >= hh:
                dst[y, x, 0], dst[y, x, 1], dst[y, x, 2] = f0, f1, f2
                continue
            xin -= 0.5
            yin -= 0.5
            xf, yf = math.floor(xin), math.floor(yin)
            dx, dy = xin - xf, yin - yf
            ix, iy = np.int64(xf), np.int64(yf)
            if not bicubic:
                c0, c1 = min(max(ix, 0), ww - 1), min(max(ix + 1, 0), ww - 1)
                r0, r1 = min(max(iy, 0), hh - 1), min(max(iy + 1, 0), hh - 1)
                for c in range(3):
                    a = np.float64(src[r0, c0, c])
                    v1 = a + (np.float64(src[r0, c1, c]) - a) * dx
                    a = np.float64(src[r1, c0, c])
                    v2 = a + (np.float64(src[r1, c1, c]) - a) * dx
                    dst[y, x, c] = np.uint8(v1 + (v2 - v1) * dy)
                continue
            # unsigned indices: numba then skips its negative-index wrap-around test on every load
            c0, c1 = np.uint64(min(max(ix - 1, 0), ww - 1)), np.uint64(min(max(ix, 0), ww - 1))
            c2, c3 = np.uint64(min(max(ix + 1, 0), ww - 1)), np.uint64(min(max(ix + 2, 0), ww - 1))
            r0, r1 = np.uint64(min(max(iy - 1, 0), hh - 1)), np.uint64(min(max(iy, 0), hh - 1))
            r2, r3 = np.uint64(min(max(iy + 1, 0), hh - 1)), np.uint64(min(max(iy + 2, 0), hh - 1))
            if dy == 0.0:
                for c in range(3):
                    if dx == 0.0:
                        dst[y, x, c] = src[r1, c1, c]
                    else:
                        dst[y, x, c] = _to_u8(_cubic(np.float64(src[r1, c0, c]), np.float64(src[r1, c1, c]),
                                                     np.float64(src[r1, c2, c]), np.float64(src[r1, c3, c]), dx))
            elif dx == 0.0:
                for c in range(3):
                    dst[y, x, c] = _to_u8(_cubic(np.float64(src[r0, c1, c]), np.float64(src[r1, c1, c]),
                                                 np.float64(src[r2, c1, c]), np.float64(src[r3, c1, c]), dy))
            else:
                for c in range(3):
                    v1 = _cubic(np.float64(src[r0, c0, c]), np.float64(src[r0, c1, c]), np.float64(src[r0, c2, c]),
                                np.float64(src[r0, c3, c]), dx)
                    v2 = _cubic(np.float64(src[r1, c0, c]), np.float64(src[r1, c1, c]), np.float64(src[r1, c2, c]),
                                np.float64(src[r1, c3, c]), dx)
                    v3 = _cubic(np.float64(src[r2, c0, c]), np.float64(src[r2, c1, c]), np.float64(src[r2, c2, c]),
                                np.float64(src[r2, c3, c]), dx)
                    v4 = _cubic(np.float64(src[r3, c0, c]), np.float64(src[r3, c1, c]), np.float64(src[r3, c2, c]),
                                np.float64(src[r3, c3, c]), dx)
                    dst[y, x, c] = _to_u8(_cubic(v1, v2, v3, v4, dy))


@njit(cache=True)
def rotate(src, dst, degrees, fill, bicubic=True):
    """``img.rotate(degrees)`` (counter-clockwise about the centre, same size), as Pillow builds its matrix."""
    hh, ww, _ = src.shape
    angle = -math.radians(degrees)
    m0, m1 = np.round(math.cos(angle), 15), np.round(math.sin(angle), 15)
    m3, m4 = np.round(-math.sin(angle), 15), np.round(math.cos(angle), 15)
    cx, cy = ww / 2.0, hh / 2.0
    m2 = m0 * -cx + m1 * -cy + cx
    m5 = m3 * -cx + m4 * -cy + cy
    affine(src, dst, m0, m1, m2, m3, m4, m5, fill, bicubic)


# --- RandAugment -------------------------------------------------------------------------------------
@njit(cache=True)
def _negate(st, v):
    return -v if uniform(st) > 0.5 else v


@njit(cache=True)
def _enhance_factor(st, level, increasing):
    if increasing:
        return max(0.1, 1.0 + _negate(st, level / 10.0 * 0.9))
    return level / 10.0 * 1.8 + 0.1


@njit(cache=True)
def apply_op(op, level, increasing, src, dst, fill, st, interp=1):
    """Apply RandAugment op ``op`` at ``level`` (0..10) from src to dst (timm's level -> argument maps).

    ``interp`` of the geometric ops: 0 bilinear, 1 bicubic, 2 one of them at random (timm's 'random').
    """
    bicubic = interp == 1
    if interp == 2 and (op == OP_ROTATE or op >= OP_SHEAR_X):
        bicubic = uniform(st) < 0.5
    if op == OP_AUTOCONTRAST:
        apply_lut(src, dst, autocontrast_lut(src))
    elif op == OP_EQUALIZE:
        apply_lut(src, dst, equalize_lut(src))
    elif op == OP_INVERT:
        apply_lut(src, dst, value_lut(0, 0))
    elif op == OP_ROTATE:
        rotate(src, dst, _negate(st, level / 10.0 * 30.0), fill, bicubic)
    elif op == OP_POSTERIZE:
        bits = np.int64(level / 10.0 * 4)
        if increasing:
            bits = 4 - bits
        apply_lut(src, dst, value_lut(1, bits))
    elif op == OP_SOLARIZE:
        thresh = min(256, np.int64(level / 10.0 * 256))
        if increasing:
            thresh = 256 - thresh
        apply_lut(src, dst, value_lut(2, thresh))
    elif op == OP_SOLARIZE_ADD:
        apply_lut(src, dst, value_lut(3, min(128, np.int64(level / 10.0 * 110))))
    elif op == OP_COLOR:
        color(src, dst, _enhance_factor(st, level, increasing))
    elif op == OP_CONTRAST:
        contrast(src, dst, _enhance_factor(st, level, increasing))
    elif op == OP_BRIGHTNESS:
        brightness(src, dst, _enhance_factor(st, level, increasing))
    elif op == OP_SHARPNESS:
        sharpness(src, dst, _enhance_factor(st, level, increasing))
    elif op == OP_SHEAR_X:
        affine(src, dst, 1.0, _negate(st, level / 10.0 * 0.3), 0.0, 0.0, 1.0, 0.0, fill, bicubic)
    elif op == OP_SHEAR_Y:
        affine(src, dst, 1.0, 0.0, 0.0, _negate(st, level / 10.0 * 0.3), 1.0, 0.0, fill, bicubic)
    elif op == OP_TRANSLATE_X:
        shift = _negate(st, level / 10.0 * 0.45) * src.shape[1]
        affine(src, dst, 1.0, 0.0, shift, 0.0, 1.0, 0.0, fill, bicubic)
    else:
        shift = _negate(st, level / 10.0 * 0.45) * src.shape[0]
        affine(src, dst, 1.0, 0.0, 0.0, 0.0, 1.0, shift, fill, bicubic)


@njit(cache=True)
def sample_level(st, magnitude, mag_std, mag_max):
    """timm AugmentOp: magnitude + N(0, std) noise (uniform in [0, m] when std is inf), clamped to [0, max]."""
    m = magnitude
    if mag_std > 0.0:
        if math.isinf(mag_std):
            m = magnitude * uniform(st)
        else:
            m = gauss(st, magnitude, mag_std)
    return max(0.0, min(m, mag_max))


@njit(cache=True)
def rand_augment(img, tmp, st, layers, magnitude, mag_std, mag_max, prob, increasing, fill, ops, interp=1):
    """Apply ``layers`` ops drawn with replacement from ``ops`` (each with probability ``prob``); result in img."""
    n_ops = ops.shape[0]
    for _ in range(layers):
        op = ops[randint(st, 0, n_ops - 1)]
        if prob < 1.0 and uniform(st) > prob:
            continue
        level = sample_level(st, magnitude, mag_std, mag_max)
        apply_op(op, level, increasing, img, tmp, fill, st, interp)
        img[:] = tmp


@njit(cache=True)
def color_jitter(img, tmp, st, b, c, s):
    """torchvision ColorJitter(b, c, s) on a PIL image: factors U[1-x, 1+x] (>= 0), applied in random order."""
    order = np.arange(3)
    for i in range(2, 0, -1):  # Fisher-Yates
        j = randint(st, 0, i)
        order[i], order[j] = order[j], order[i]
    fb = b > 0.0
    fc = c > 0.0
    fs = s > 0.0
    for k in range(3):
        which = order[k]
        if which == 0 and fb:
            brightness(img, tmp, uniform_between(st, max(0.0, 1.0 - b), 1.0 + b))
        elif which == 1 and fc:
            contrast(img, tmp, uniform_between(st, max(0.0, 1.0 - c), 1.0 + c))
        elif which == 2 and fs:
            color(img, tmp, uniform_between(st, max(0.0, 1.0 - s), 1.0 + s))
        else:
            continue
        img[:] = tmp


# --- flip, pad-crop, normalise, random erasing -------------------------------------------------------
@njit(cache=True)
def hflip(img):
    hh, ww, _ = img.shape
    for y in range(hh):
        for x in range(ww // 2):
            for c in range(3):
                t = img[y, x, c]
                img[y, x, c] = img[y, ww - 1 - x, c]
                img[y, ww - 1 - x, c] = t


@njit(cache=True)
def pad_crop(img, tmp, st, pad):
    """Zero-pad by ``pad`` and crop back to the size at a random offset (the demo's small-image augmentation)."""
    hh, ww, _ = img.shape
    oy = randint(st, 0, 2 * pad) - pad
    ox = randint(st, 0, 2 * pad) - pad
    for y in range(hh):
        for x in range(ww):
            sy, sx = y + oy, x + ox
            inside = 0 <= sy < hh and 0 <= sx < ww
            for c in range(3):
                tmp[y, x, c] = img[sy, sx, c] if inside else 0
    img[:] = tmp


@njit(cache=True)
def normalize_lut(mean, std):
    """(3, 256) float32 table of timm's ToTensor + Normalize: (v / 255 - mean) / std, computed in float32."""
    lut = np.empty((3, 256), np.float32)
    for c in range(3):
        m, s = np.float32(mean[c]), np.float32(std[c])
        for v in range(256):
            lut[c, v] = (np.float32(v) / np.float32(255.0) - m) / s
    return lut


@njit(cache=True)
def normal_pair(st):
    """Two independent standard normals (Marsaglia's polar method)."""
    while True:
        u = 2.0 * uniform(st) - 1.0
        v = 2.0 * uniform(st) - 1.0
        s = u * u + v * v
        if 0.0 < s < 1.0:
            f = math.sqrt(-2.0 * math.log(s) / s)
            return u * f, v * f


@njit(cache=True)
def random_erasing(out, st, prob, mode, min_count, max_count):
    """timm RandomErasing (area 0.02-1/3, aspect 0.3-3.3, 10 tries) on a normalised HWC float image.

    mode 0 fills zeros, 1 one normal colour per box, 2 normal noise per pixel and channel.
    """
    if uniform(st) > prob:
        return
    hh, ww, _ = out.shape
    area = hh * ww
    count = min_count if min_count == max_count else randint(st, min_count, max_count)
    log_lo, log_hi = math.log(0.3), math.log(1.0 / 0.3)
    for _ in range(count):
        for _attempt in range(10):
            target_area = (0.02 + (1.0 / 3.0 - 0.02) * uniform(st)) * area / count
            aspect = math.exp(log_lo + (log_hi - log_lo) * uniform(st))
            h = np.int64(round(math.sqrt(target_area * aspect)))
            w = np.int64(round(math.sqrt(target_area / aspect)))
            if w < ww and h < hh:
                top = randint(st, 0, hh - h)
                left = randint(st, 0, ww - w)
                if mode == 2:
                    for y in range(top, top + h):
                        row = out[y, left:left + w].reshape(-1)
                        for k in range(0, row.shape[0] - 1, 2):
                            z0, z1 = normal_pair(st)
                            row[k], row[k + 1] = np.float32(z0), np.float32(z1)
                        if row.shape[0] % 2:
                            row[row.shape[0] - 1] = np.float32(normal_pair(st)[0])
                else:
                    colour = np.zeros(3, np.float32)
                    if mode == 1:
                        z0, z1 = normal_pair(st)
                        colour[0], colour[1], colour[2] = z0, z1, normal_pair(st)[0]
                    for y in range(top, top + h):
                        for x in range(left, left + w):
                            for c in range(3):
                                out[y, x, c] = colour[c]
                break


@njit(cache=True)
def augment_sample(img, tmp, out, key, index, params, ops):
    """The whole per-sample train recipe after the crop: flip, pad-crop, RandAugment or colour jitter,
    normalise, random erasing. ``img`` (uint8 HWC) is modified in place; the result is written to ``out``."""
    st = seed_state(key, index, STREAM_AUGMENT)
    if params[P_HFLIP] > 0.0 and uniform(st) < params[P_HFLIP]:
        hflip(img)
    pad = np.int64(params[P_PAD])
    if pad > 0:
        pad_crop(img, tmp, st, pad)
    fill = np.empty(3, np.uint8)
    for c in range(3):
        fill[c] = np.uint8(params[P_FILL + c])
    layers = np.int64(params[P_RA_LAYERS])
    if layers > 0:
        rand_augment(img, tmp, st, layers, params[P_RA_MAG], params[P_RA_STD], params[P_RA_MAX],
                     params[P_RA_PROB], params[P_RA_INC] > 0.0, fill, ops, np.int64(params[P_INTERP]))
    elif params[P_CJ_B] > 0.0 or params[P_CJ_C] > 0.0 or params[P_CJ_S] > 0.0:
        color_jitter(img, tmp, st, params[P_CJ_B], params[P_CJ_C], params[P_CJ_S])
    apply_lut(img, out, normalize_lut(params[P_MEAN:P_MEAN + 3], params[P_STD:P_STD + 3]))
    if params[P_RE_PROB] > 0.0:
        random_erasing(out, st, params[P_RE_PROB], np.int64(params[P_RE_MODE]), np.int64(params[P_RE_MIN_COUNT]),
                       np.int64(params[P_RE_MAX_COUNT]))


def _batch_kernels(parallel: bool):
    """(full, basic) batch kernels: serial ones for one batch per thread, parallel ones (prange) to spread one
    batch over threads. ``tmp`` holds one scratch image per sample (parallel) or a single one (serial)."""
    loop = prange if parallel else range

    @njit(cache=True, parallel=parallel, nogil=True)
    def full(images, tmp, out, key, indices, params, ops):
        for i in loop(images.shape[0]):
            augment_sample(images[i], tmp[i % tmp.shape[0]], out[i], key, indices[i], params, ops)

    @njit(cache=True, parallel=parallel, nogil=True)
    def basic(images, tmp, out, key, indices, params):
        lut = normalize_lut(params[P_MEAN:P_MEAN + 3], params[P_STD:P_STD + 3])
        pad = np.int64(params[P_PAD])
        for i in loop(images.shape[0]):
            st = seed_state(key, indices[i], STREAM_AUGMENT)
            if params[P_HFLIP] > 0.0 and uniform(st) < params[P_HFLIP]:
                hflip(images[i])
            if pad > 0:
                pad_crop(images[i], tmp[i % tmp.shape[0]], st, pad)
            apply_lut(images[i], out[i], lut)

    return full, basic


# augment_batch: augment_sample over a batch; augment_batch_basic: flip, pad-crop and normalise only (eval,
# and small-image recipes such as the Fashion-MNIST demo; it compiles in a fraction of the time).
augment_batch, augment_batch_basic = _batch_kernels(parallel=False)
augment_batch_parallel, augment_batch_basic_parallel = _batch_kernels(parallel=True)


def needs_full_kernel(params: np.ndarray) -> bool:
    """Whether the parameters use RandAugment, colour jitter or erasing (``augment_batch``)."""
    return bool(params[P_RA_LAYERS] > 0 or params[P_CJ_B] > 0 or params[P_CJ_C] > 0 or params[P_CJ_S] > 0
                or params[P_RE_PROB] > 0)


# --- configuration (Python side) ---------------------------------------------------------------------
def parse_rand_augment(spec: str) -> dict:
    """timm's RandAugment config string ('rand-m9-mstd0.5-inc1') -> its numbers (same defaults as timm)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"auto_augment {spec!r}: the FFCV pipeline implements RandAugment ('rand-...') only")
    out = {"magnitude": 10.0, "layers": 2, "prob": 0.5, "mstd": 0.0, "mmax": 10.0, "increasing": False}
    for c in parts[1:]:
        key, val = (re.split(r"(\d.*)", c) + ["", ""])[:2]
        if not val:
            raise ConfigError(f"auto_augment {spec!r}: cannot parse section {c!r}")
        if key == "mstd":
            out["mstd"] = math.inf if float(val) > 100 else float(val)
        elif key == "mmax":
            out["mmax"] = float(int(val))
        elif key == "inc":
            out["increasing"] = bool(int(val))
        elif key == "m":
            out["magnitude"] = float(int(val))
        elif key == "n":
            out["layers"] = int(val)
        elif key == "p":
            out["prob"] = float(val)
        else:
            raise ConfigError(f"auto_augment {spec!r}: section {c!r} is not supported by the FFCV pipeline "
                              f"(supported: m, n, p, mstd, mmax, inc)")
    return out


def build_params(mean, std, train: bool, hflip: float = 0.5, pad: int = 0, auto_augment: str | None = None,
                 color_jitter: float | None = 0.4, re_prob: float = 0.0, re_mode: str = "pixel",
                 re_count: int = 1, interpolation: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """(float64 parameter vector, int64 op list) for ``augment_sample``; eval = normalise only.

    As timm's ``create_transform``: colour jitter is off when RandAugment is on; the RandAugment fill is the
    mean pixel ``round(255 * mean)``, and its geometric ops resample with the model's interpolation
    (anything other than bilinear/bicubic/random counts as bicubic, as Pillow has no other for transforms).
    """
    p = np.zeros(N_PARAMS, np.float64)
    p[P_MEAN:P_MEAN + 3] = mean
    p[P_STD:P_STD + 3] = std
    p[P_FILL:P_FILL + 3] = [min(255, round(255 * m)) for m in mean]
    p[P_INTERP] = INTERPOLATIONS.get(interpolation, 1)
    ops = np.arange(len(RAND_OPS), dtype=np.int64)
    if not train:
        return p, ops
    p[P_HFLIP] = hflip
    p[P_PAD] = pad
    if auto_augment:
        ra = parse_rand_augment(auto_augment)
        p[P_RA_LAYERS], p[P_RA_MAG], p[P_RA_STD] = ra["layers"], ra["magnitude"], ra["mstd"]
        p[P_RA_MAX], p[P_RA_PROB], p[P_RA_INC] = ra["mmax"], ra["prob"], float(ra["increasing"])
    elif color_jitter:
        p[P_CJ_B] = p[P_CJ_C] = p[P_CJ_S] = color_jitter
    if re_mode not in RE_MODES:
        raise ConfigError(f"re_mode must be one of {sorted(RE_MODES)}, got {re_mode!r}")
    if re_count < 1:
        raise ConfigError(f"re_count must be >= 1, got {re_count}")
    p[P_RE_PROB], p[P_RE_MODE] = re_prob, RE_MODES[re_mode]
    p[P_RE_MIN_COUNT], p[P_RE_MAX_COUNT] = 1, re_count
    return p, ops
