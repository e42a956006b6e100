"""The arithmetic every format shares, pinned to the rules of the implementations it mirrors.

Each function states the C expression it reproduces. All inputs and outputs are NumPy arrays;
float work is float32 unless a name says otherwise, and nothing here lets NumPy choose an order
of summation.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32

# ---------------------------------------------------------------------------------------------
# fp32 <-> fp16 (ggml_compute_fp32_to_fp16 / ggml_compute_fp16_to_fp32)
# ---------------------------------------------------------------------------------------------

def fp32_to_fp16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half bits as ggml stores them (GGML_FP32_TO_FP16).

    Round to nearest, ties to even; subnormal halves kept; magnitudes from 65520 up become
    inf; every NaN becomes 0x7E00 with the input's sign.
    """
    x = np.asarray(x, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        h = np.where(nan, sign | np.uint16(0x7E00), h)
    return h


def fp16_bits_to_fp32(h: np.ndarray) -> np.ndarray:
    """IEEE half bits -> float32 (GGML_FP16_TO_FP32). Exact; a signalling NaN comes back quiet,
    as the multiply inside ggml's conversion makes it."""
    h = np.asarray(h, dtype=np.uint16)
    f = h.view(np.float16).astype(F32)
    nan = (h & 0x7C00) == 0x7C00
    nan &= (h & 0x03FF) != 0
    if nan.any():
        f = np.where(nan, (f.view(np.uint32) | np.uint32(0x00400000)).view(F32), f)
    return f


# ---------------------------------------------------------------------------------------------
# fp32 <-> bf16 (ggml_compute_fp32_to_bf16 / ggml_compute_bf16_to_fp32)
# ---------------------------------------------------------------------------------------------

def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits: round to nearest even on the top 16 bits, subnormals kept;
    a NaN keeps its top bits with the quiet bit (64) forced on."""
    u = np.asarray(x, dtype=F32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rne = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16  # wraps mod 2^32 as C does
    return np.where(nan, (u >> 16) | np.uint32(64), rne).astype(np.uint16)


def bf16_bits_to_fp32(h: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> float32: the bits shifted into the top half, exact."""
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(F32)


# ---------------------------------------------------------------------------------------------
# Rounding to integers
# ---------------------------------------------------------------------------------------------

def nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: bits(f + 12582912.f) & 0x7fffff - 0x400000.

    Round half to even, valid for |f| <= 4194303; beyond that the result is what the bit trick
    gives, as in C. Returns int32.
    """
    val = np.asarray(f, dtype=F32) + F32(12582912.0)
    return (val.view(np.int32) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: half away from zero, as float32 (np.round is half to even)."""
    x = np.asarray(x, dtype=F32)
    t = np.trunc(x)
    frac = x - t  # exact
    with np.errstate(invalid="ignore"):
        up = np.abs(frac) >= F32(0.5)
    return np.where(up, t + np.copysign(F32(1.0), x), t).astype(F32)


def c_float_to_int32(x: np.ndarray) -> np.ndarray:
    """C's float -> int conversion on x86-64 (cvttss2si): truncation toward zero; NaN and values
    outside the int32 range give INT_MIN."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(x) & (x > F32(-2147483904.0)) & (x < F32(2147483648.0))
        t = np.where(ok, np.trunc(x), 0).astype(np.int64)
    return np.where(ok, t, np.int64(-(2**31))).astype(np.int32)


def c_float_to_int8(x: np.ndarray) -> np.ndarray:
    """`(int8_t) f` as x86-64 compilers emit it: convert to int32, keep the low byte."""
    return c_float_to_int32(x).astype(np.int8)


def c_float_to_uint8(x: np.ndarray) -> np.ndarray:
    """`(uint8_t) f` as x86-64 compilers emit it: convert to int32, keep the low byte."""
    return c_float_to_int32(x).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Order-pinned float32 arithmetic
# ---------------------------------------------------------------------------------------------

def seq_sum(terms: np.ndarray, axis: int = -1, start: np.ndarray | float = 0.0) -> np.ndarray:
    """sum += t[0]; sum += t[1]; ... in float32 along `axis`: C's left-to-right loop, vectorised
    over the other axes (np.sum is pairwise and would not match)."""
    t = np.moveaxis(np.asarray(terms, dtype=F32), axis, 0)
    acc = np.broadcast_to(np.asarray(start, dtype=F32), t.shape[1:]).astype(F32, copy=True)
    for k in range(t.shape[0]):
        acc += t[k]
    return acc


def c_max_abs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block scan `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` over the last axis,
    from amax = max = 0: returns (amax, max) where max is the signed value of the first
    element of largest magnitude."""
    x = np.asarray(x, dtype=F32)
    ax = np.abs(x)
    idx = np.argmax(ax, axis=-1)  # first occurrence of the largest |v|, as the strict < scan
    amax = np.take_along_axis(ax, idx[..., None], -1)[..., 0]
    vmax = np.take_along_axis(x, idx[..., None], -1)[..., 0]
    zero = amax == 0  # all zero: amax and max stay 0 (never -0)
    return np.where(zero, F32(0), amax), np.where(zero, F32(0), vmax)


def c_min(x: np.ndarray) -> np.ndarray:
    """`if (v < min) min = v;` over the last axis: the first of the smallest values, so the
    sign of a zero is the sign of the first zero seen (np.min may return either)."""
    x = np.asarray(x, dtype=F32)
    return np.take_along_axis(x, np.argmin(x, axis=-1)[..., None], -1)[..., 0]


def c_max(x: np.ndarray) -> np.ndarray:
    """`if (v > max) max = v;` over the last axis: the first of the largest values."""
    x = np.asarray(x, dtype=F32)
    return np.take_along_axis(x, np.argmax(x, axis=-1)[..., None], -1)[..., 0]


def safe_reciprocal(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f` in float32 (overflow to inf is kept, as in C)."""
    d = np.asarray(d, dtype=F32)
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, F32(1.0) / np.where(d != 0, d, F32(1.0)), F32(0.0)).astype(F32)


# ---------------------------------------------------------------------------------------------
# Fused multiply-add
# ---------------------------------------------------------------------------------------------

def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """C's fmaf(a, b, c) (what a compiler emits for `a * b + c` under FP contraction): the exact
    a*b + c rounded once to float32, to nearest even.

    a*b of two float32s is exact in float64; the float64 sum s = a*b + c may round, so its
    error e (TwoSum) is kept, and when s falls exactly halfway between two float32s the tie
    is broken by the sign of e, as the exact value would break it.
    """
    a, b, c = (np.asarray(v, dtype=F32) for v in (a, b, c))
    with np.errstate(over="ignore", invalid="ignore"):
        p = a.astype(np.float64) * b.astype(np.float64)      # exact
        c64 = c.astype(np.float64)
        s = p + c64
        bb = s - p
        e = (p - (s - bb)) + (c64 - bb)                      # s + e == p + c exactly
        r = s.astype(F32)                                    # round to nearest even
        r64 = r.astype(np.float64)
        toward = np.where(s > r64, np.inf, -np.inf).astype(F32)
        other = np.nextafter(r, toward).astype(np.float64)   # the float32 on the other side of s
        tie = np.isfinite(s) & (s != r64) & (s == (r64 + other) * 0.5) & (e != 0)
        if tie.any():
            # the exact value lies on e's side of the midpoint: round to that neighbour
            up = e > 0
            hi = np.maximum(r64, other).astype(F32)
            lo = np.minimum(r64, other).astype(F32)
            r = np.where(tie, np.where(up, hi, lo), r).astype(F32)
    return r
