"""ggml's first-generation block formats: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 (ggml-quants.c).

Blocks of 32 values. `d` is the scale, `m` the minimum, stored as fp16; the unrounded float32
scale is the one used to quantize (unlike the K-quants). Without an importance matrix each type
takes its `quantize_row_*_ref` path; with one, Q4_0/Q5_0 take `make_qx_quants` and
Q4_1/Q5_1 take `make_qkx3_quants` (`quantize_row_*_impl`). Q8_0 ignores an importance matrix.

    Q4_0  | d:f16 | qs[16]: low nibble = element j, high nibble = element j+16 |
    Q4_1  | d:f16 | m:f16 | qs[16] |
    Q5_0  | d:f16 | qh:u32 (bit j = bit 4 of element j) | qs[16] |
    Q5_1  | d:f16 | m:f16 | qh:u32 | qs[16] |
    Q8_0  | d:f16 | qs: int8[32] |
    Q8_1  | d:f16 | s:f16 = d * sum(qs) | qs: int8[32] |
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import (F32, c_float_to_int8, c_max, c_min, c_float_to_uint8, c_max_abs, fp16_bits_to_fp32,
                        fp32_to_fp16_bits, roundf, safe_reciprocal, seq_sum)
from ..registry import IMATRIX_NONE, IMATRIX_OPTIONAL, Format, register
from .blocks import (as_blocks, join_fields, pack_high_bits, pack_nibbles, split_fields, u16,
                     unpack_high_bits)
from .search import make_qkx3_quants, make_qx_quants

QK = 32
T = gguf.GGMLQuantizationType


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
        return join_fields(nrows, fp32_to_fp16_bits(d), pack_nibbles(lo, hi))
    _, vmax = c_max_abs(xb)
    d = vmax / F32(-8)
    idv = safe_reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.minimum(15, c_float_to_int8(xb * idv[:, None] + F32(8.5)))  # MIN(15, (int8_t)(x0 + 8.5f))
    lo, hi = _split_halves(q)
    return join_fields(nrows, fp32_to_fp16_bits(d), pack_nibbles(lo, hi))


def dequantize_q4_0(data):
    f = split_fields(data, 18, ("d", 2), ("qs", 16))
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
    return join_fields(x.shape[0], fp32_to_fp16_bits(d), fp32_to_fp16_bits(m), pack_nibbles(lo, hi))


def dequantize_q4_1(data):
    f = split_fields(data, 20, ("d", 2), ("m", 2), ("qs", 16))
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
    return join_fields(nrows, fp32_to_fp16_bits(d), qh, qs)


def dequantize_q5_0(data):
    f = split_fields(data, 22, ("d", 2), ("qh", 4), ("qs", 16))
    d = fp16_bits_to_fp32(u16(f["d"]))
    q = _unpack_q5(f["qh"], f["qs"]) - 16
    return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q5_1

def quantize_q5_1(x, imatrix=None):
    d, m, q = _quantize_min_max(x, imatrix, 31)
    qh, qs = _pack_q5(q)
    return join_fields(x.shape[0], fp32_to_fp16_bits(d), fp32_to_fp16_bits(m), qh, qs)


def dequantize_q5_1(data):
    f = split_fields(data, 24, ("d", 2), ("m", 2), ("qh", 4), ("qs", 16))
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
    return join_fields(x.shape[0], fp32_to_fp16_bits(d), qs)


def dequantize_q8_0(data):
    f = split_fields(data, 34, ("d", 2), ("qs", 32))
    d = fp16_bits_to_fp32(u16(f["d"]))
    return (f["qs"].view(np.int8).astype(F32) * d[:, None]).reshape(data.shape[0], -1)


def quantize_q8_1(x, imatrix=None):
    """quantize_row_q8_1_ref: as Q8_0, plus s = fp16((float)sum(qs) * d)."""
    d, qs = _quantize_q8(x)
    total = qs.astype(np.int32).sum(axis=1)  # integer sum: order-free
    s = total.astype(F32) * d
    return join_fields(x.shape[0], fp32_to_fp16_bits(d), fp32_to_fp16_bits(s), qs)


def dequantize_q8_1(data):
    """Q8_1 has no to_float in ggml; the spec defines it as d * qs (s is a cached sum)."""
    f = split_fields(data, 36, ("d", 2), ("s", 2), ("qs", 32))
    d = fp16_bits_to_fp32(u16(f["d"]))
    return (f["qs"].view(np.int8).astype(F32) * d[:, None]).reshape(data.shape[0], -1)


for _name, _ts, _q, _dq, _im in [
    ("Q4_0", 18, quantize_q4_0, dequantize_q4_0, IMATRIX_OPTIONAL),
    ("Q4_1", 20, quantize_q4_1, dequantize_q4_1, IMATRIX_OPTIONAL),
    ("Q5_0", 22, quantize_q5_0, dequantize_q5_0, IMATRIX_OPTIONAL),
    ("Q5_1", 24, quantize_q5_1, dequantize_q5_1, IMATRIX_OPTIONAL),
    ("Q8_0", 34, quantize_q8_0, dequantize_q8_0, IMATRIX_NONE),
    ("Q8_1", 36, quantize_q8_1, dequantize_q8_1, IMATRIX_NONE),
]:
    register(Format(_name, "ggml-legacy", QK, _ts, _q, _dq, _im, int(T[_name]), f"ggml/{_name.lower()}.md"))
