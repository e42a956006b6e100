"""ggml's first-generation block formats: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 (ggml-quants.c).

Blocks of 32 values. `d` is the scale, `m` the minimum, stored as fp16; the unrounded float32
scale is the one used to quantize (unlike the K-quants). Without an importance matrix each type
takes its `quantize_row_*_ref` path; with one, Q4_0/Q5_0 take `make_qx_quants` and
Q4_1/Q5_1 take `make_qkx3_quants` (`quantize_row_*_impl`). Q8_0 ignores an importance matrix.
The block layouts are the LAYOUTS table below (ggml-common.h's block_q4_0 ... block_q8_1).
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import (F32, c_float_to_int8, c_max, c_min, c_float_to_uint8, c_max_abs, fp16_bits_to_fp32,
                        fp32_to_fp16_bits, roundf, safe_reciprocal, seq_sum)
from ..format import IMATRIX_NONE, IMATRIX_OPTIONAL, VecDot, block_format
from .blocks import as_blocks, pack_high_bits, pack_nibbles, u16, unpack_high_bits
from .layout import Field, Layout
from .search import make_qkx3_quants, make_qx_quants

QK = 32
T = gguf.GGMLQuantizationType

_NIBBLES = "4-bit codes: low nibble element j, high nibble element j + 16"
_LOW_NIBBLES = "low 4 bits of the codes, as Q4_0's nibbles"
_HIGH_BITS = "bit j: bit 4 of element j (little-endian)"
LAYOUTS = {L.name: L for L in [
    Layout("Q4_0", QK, [Field("d", "f16", 1, "scale"), Field("qs", "u8", 16, _NIBBLES)]),
    Layout("Q4_1", QK, [Field("d", "f16", 1, "scale"), Field("m", "f16", 1, "minimum"),
                        Field("qs", "u8", 16, _NIBBLES)]),
    Layout("Q5_0", QK, [Field("d", "f16", 1, "scale"), Field("qh", "u8", 4, _HIGH_BITS),
                        Field("qs", "u8", 16, _LOW_NIBBLES)]),
    Layout("Q5_1", QK, [Field("d", "f16", 1, "scale"), Field("m", "f16", 1, "minimum"),
                        Field("qh", "u8", 4, _HIGH_BITS), Field("qs", "u8", 16, _LOW_NIBBLES)]),
    Layout("Q8_0", QK, [Field("d", "f16", 1, "scale"), Field("qs", "i8", 32, "codes")]),
    Layout("Q8_1", QK, [Field("d", "f16", 1, "scale"), Field("s", "f16", 1, "d * sum(qs)"),
                        Field("qs", "i8", 32, "codes")]),
]}
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = (LAYOUTS[n] for n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"))


def imatrix_weights(x: np.ndarray, imatrix: np.ndarray, block_size: int) -> np.ndarray:
    """The per-element weights of the `*_impl` paths, for every block of every row:
    weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j]), sigma2 = (sum over the row of x²) / n."""
    nrows, n = x.shape
    sum_x2 = seq_sum(x * x, axis=1)               # for (j...) sum_x2 += x[j]*x[j];
    sigma2 = sum_x2 / F32(n)
    w = np.asarray(imatrix, dtype=F32)[None, :] * np.sqrt(sigma2[:, None] + x * x)
    return w.reshape(-1, block_size)


def _split_halves(q: np.ndarray):
    return q[:, :QK // 2], q[:, QK // 2:]


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """qs (nblocks, 16) -> (nblocks, 32): element j from the low nibble, j+16 from the high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


# --------------------------------------------------------------------------- Q4_0

def quantize_q4_0(x, imatrix=None):
    nrows = x.shape[0]
    xb = as_blocks(x, QK)
    if imatrix is not None:
        d, L = make_qx_quants(xb, 8, 1, imatrix_weights(x, imatrix, QK))
        lo, hi = _split_halves(L.astype(np.uint8))
        return Q4_0.join(nrows, d=fp32_to_fp16_bits(d), qs=pack_nibbles(lo, hi))
    _, vmax = c_max_abs(xb)
    d = vmax / F32(-8)
    idv = safe_reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.minimum(15, c_float_to_int8(xb * idv[:, None] + F32(8.5)))  # MIN(15, (int8_t)(x0 + 8.5f))
    lo, hi = _split_halves(q)
    return Q4_0.join(nrows, d=fp32_to_fp16_bits(d), qs=pack_nibbles(lo, hi))


def dequantize_q4_0(data):
    f = Q4_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    q = _unpack_nibbles(f["qs"]).astype(np.int32) - 8
    return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q4_1

def _quantize_min_max(x, imatrix, nmax):
    """The asymmetric ref path of Q4_1/Q5_1: d = (max - min) / nmax, q = (uint8)((x-min)*id + 0.5)."""
    xb = as_blocks(x, QK)
    if imatrix is not None:
        d, the_min, L = make_qkx3_quants(xb, nmax, imatrix_weights(x, imatrix, QK), -0.9, 0.05, 36, False)
        return d, -the_min, L
    vmin, vmax = c_min(xb), c_max(xb)  # `if (v < min) min = v;` from FLT_MAX
    d = (vmax - vmin) / F32(nmax)
    idv = safe_reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        v = (xb - vmin[:, None]) * idv[:, None] + F32(0.5)
    if nmax == 15:
        q = np.minimum(15, c_float_to_int8(v)).astype(np.uint8)  # MIN(15, (int8_t)(x0 + 0.5f))
    else:
        q = c_float_to_uint8(v)                                    # (uint8_t)(x0 + 0.5f)
    return d, vmin, q


def quantize_q4_1(x, imatrix=None):
    d, m, q = _quantize_min_max(x, imatrix, 15)
    lo, hi = _split_halves(q)
    return Q4_1.join(x.shape[0], d=fp32_to_fp16_bits(d), m=fp32_to_fp16_bits(m), qs=pack_nibbles(lo, hi))


def dequantize_q4_1(data):
    f = Q4_1.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    m = fp16_bits_to_fp32(u16(f["m"]))
    q = _unpack_nibbles(f["qs"]).astype(F32)
    return (q * d[:, None] + m[:, None]).reshape(data.shape[0], -1)  # x0*d + m


# --------------------------------------------------------------------------- Q5_0

def _pack_q5(q):
    """5-bit values (nblocks, 32) -> (qh, qs): low nibbles as Q4, bit 4 of element j in qh bit j."""
    lo, hi = _split_halves(q.astype(np.int32))
    qs = ((lo & 0x0F) | ((hi & 0x0F) << 4)).astype(np.uint8)
    qh = pack_high_bits((q.astype(np.int32) & 0x10) >> 4)
    return qh, qs


def _unpack_q5(qh, qs):
    return _unpack_nibbles(qs).astype(np.int32) | (unpack_high_bits(qh).astype(np.int32) << 4)


def quantize_q5_0(x, imatrix=None):
    nrows = x.shape[0]
    xb = as_blocks(x, QK)
    if imatrix is not None:
        d, L = make_qx_quants(xb, 16, 1, imatrix_weights(x, imatrix, QK))
        q = L.astype(np.uint8)
    else:
        _, vmax = c_max_abs(xb)
        d = vmax / F32(-16)
        idv = safe_reciprocal(d)
        with np.errstate(invalid="ignore", over="ignore"):
            q = np.minimum(31, c_float_to_int8(xb * idv[:, None] + F32(16.5))).astype(np.uint8)
    qh, qs = _pack_q5(q)
    return Q5_0.join(nrows, d=fp32_to_fp16_bits(d), qh=qh, qs=qs)


def dequantize_q5_0(data):
    f = Q5_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    q = _unpack_q5(f["qh"], f["qs"]) - 16
    return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q5_1

def quantize_q5_1(x, imatrix=None):
    d, m, q = _quantize_min_max(x, imatrix, 31)
    qh, qs = _pack_q5(q)
    return Q5_1.join(x.shape[0], d=fp32_to_fp16_bits(d), m=fp32_to_fp16_bits(m), qh=qh, qs=qs)


def dequantize_q5_1(data):
    f = Q5_1.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    m = fp16_bits_to_fp32(u16(f["m"]))
    q = _unpack_q5(f["qh"], f["qs"]).astype(F32)
    return (q * d[:, None] + m[:, None]).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q8_0, Q8_1

def _quantize_q8(x):
    """d = amax / 127, qs = roundf(x * id) stored as int8 (half away from zero)."""
    xb = as_blocks(x, QK)
    amax, _ = c_max_abs(xb)
    d = amax / F32(127)
    idv = safe_reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        qs = c_float_to_int8(roundf(xb * idv[:, None]))
    return d, qs


def quantize_q8_0(x, imatrix=None):
    d, qs = _quantize_q8(x)
    return Q8_0.join(x.shape[0], d=fp32_to_fp16_bits(d), qs=qs)


def dequantize_q8_0(data):
    f = Q8_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    return (f["qs"].view(np.int8).astype(F32) * d[:, None]).reshape(data.shape[0], -1)


def quantize_q8_1(x, imatrix=None):
    """quantize_row_q8_1_ref: as Q8_0, plus s = fp16((float)sum(qs) * d)."""
    d, qs = _quantize_q8(x)
    total = qs.astype(np.int32).sum(axis=1)  # integer sum: order-free
    s = total.astype(F32) * d
    return Q8_1.join(x.shape[0], d=fp32_to_fp16_bits(d), s=fp32_to_fp16_bits(s), qs=qs)


def dequantize_q8_1(data):
    """Q8_1 has no to_float in ggml; the spec defines it as d * qs (s is a cached sum)."""
    f = Q8_1.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    return (f["qs"].view(np.int8).astype(F32) * d[:, None]).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- vec_dot operands
#
# What ggml's CPU vec_dot reads from a weight block (refquant.ggml.dot, step 2): the integer codes
# of its 32 values as the kernel multiplies them, and its scale (and minimum) decoded exactly.

def _fp16(field):
    return fp16_bits_to_fp32(u16(field))


def vec_dot_q4_0(w):
    f = Q4_0.split(w)
    return {"q": _unpack_nibbles(f["qs"]).astype(np.int32) - 8, "d": _fp16(f["d"])}       # (x & 0xF) - 8


def vec_dot_q4_1(w):
    f = Q4_1.split(w)
    return {"q": _unpack_nibbles(f["qs"]).astype(np.int32), "d": _fp16(f["d"]), "m": _fp16(f["m"])}


def vec_dot_q5_0(w):
    f = Q5_0.split(w)
    return {"q": _unpack_q5(f["qh"], f["qs"]) - 16, "d": _fp16(f["d"])}                  # (xl | xh) - 16


def vec_dot_q5_1(w):
    f = Q5_1.split(w)
    return {"q": _unpack_q5(f["qh"], f["qs"]), "d": _fp16(f["d"]), "m": _fp16(f["m"])}


def vec_dot_q8_0(w):
    f = Q8_0.split(w)
    return {"q": f["qs"].view(np.int8).astype(np.int32), "d": _fp16(f["d"])}


# the type activations are quantized to (type_traits_cpu[].vec_dot_type) and the rule by which
# refquant.ggml.dot combines the blocks' integer dots (the term each block adds to sumf)
VEC_DOT = {
    "Q4_0": VecDot("Q8_0", vec_dot_q4_0, "(sumi * dw) * da"),
    "Q4_1": VecDot("Q8_1", vec_dot_q4_1, "fmaf(dw * da, sumi, mw * sa)"),
    "Q5_0": VecDot("Q8_0", vec_dot_q5_0, "(dw * da) * sumi"),
    "Q5_1": VecDot("Q8_1", vec_dot_q5_1, "fmaf(dw * da, sumi, mw * sa)"),
    "Q8_0": VecDot("Q8_0", vec_dot_q8_0, "sumi * (dw * da)"),
}


# llama.cpp's LLAMA_FTYPE_MOSTLY_* of a file of each type
RECORDS = [block_format(LAYOUTS[name], "ggml-legacy", q, dq, im, int(T[name]), f"ggml/{name.lower()}.md",
                        vec_dot=VEC_DOT.get(name), file_type=ftype)
           for name, q, dq, im, ftype in [
               ("Q4_0", quantize_q4_0, dequantize_q4_0, IMATRIX_OPTIONAL, 2),
               ("Q4_1", quantize_q4_1, dequantize_q4_1, IMATRIX_OPTIONAL, 3),
               ("Q5_0", quantize_q5_0, dequantize_q5_0, IMATRIX_OPTIONAL, 8),
               ("Q5_1", quantize_q5_1, dequantize_q5_1, IMATRIX_OPTIONAL, 9),
               ("Q8_0", quantize_q8_0, dequantize_q8_0, IMATRIX_NONE, 7),
               ("Q8_1", quantize_q8_1, dequantize_q8_1, IMATRIX_NONE, None)]]
