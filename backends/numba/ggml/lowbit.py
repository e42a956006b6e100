"""Numba twin of refquant/ggml/lowbit.py: TQ1_0, TQ2_0, Q1_0 and Q2_0, bit-exact with it (no
importance matrix: the spec ignores one, and so does this twin), and Q2_0's vec_dot (the spec's
"per 32 chained" rule: separate multiplies and adds, as ggml's generic kernel)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.registry import get_format

from ..numerics import F32, JIT, ONE, U64, ZERO, c_float_to_int32, fp16_to_fp32, roundf, store_fp16
from .dot import _unpack_q8, quantize_activation

QK_K = 256
QK1_0 = 128
QK2_0 = 64
# type sizes and the fields' byte offsets the kernels index, from the declared layouts
# (refquant.ggml.layout)
TQ1_TS, TQ2_TS, Q1_0_TS, Q2_0_TS = (get_format(n).type_size for n in ("TQ1_0", "TQ2_0", "Q1_0", "Q2_0"))
TQ1_QS, TQ1_QH, TQ1_D = (get_format("TQ1_0").layout.offset(f) for f in ("qs", "qh", "d"))
TQ2_QS, TQ2_D = (get_format("TQ2_0").layout.offset(f) for f in ("qs", "d"))
Q1_0_D, Q1_0_QS = (get_format("Q1_0").layout.offset(f) for f in ("d", "qs"))
Q2_0_D, Q2_0_QS = (get_format("Q2_0").layout.offset(f) for f in ("d", "qs"))
PJIT = dict(JIT, parallel=True)
LONG_LIM = F32(2.0 ** 63)


@njit(**dict(JIT, inline="always"))
def _lroundf_int(v):
    """`int xi = lroundf(v)` on x86-64 glibc: NaN and out of range give LONG_MIN, low 32 bits 0."""
    r = roundf(v)
    if r != r or abs(r) >= LONG_LIM:
        return np.int32(0)
    return np.int32(np.int64(r))  # long -> int keeps the low 32 bits


@njit(**dict(JIT, inline="always"))
def _ternary(xb, t):
    """amax = MAX(amax, |x|) from 0; trits t = lroundf(x * id) + 1; returns amax (the scale)."""
    amax = ZERO
    for j in range(QK_K):
        a = abs(xb[j])
        amax = amax if amax > a else a
    idv = ONE / amax if amax != ZERO else ZERO
    for j in range(QK_K):
        t[j] = _lroundf_int(xb[j] * idv) + 1
    return amax


@njit(**dict(JIT, inline="always"))
def _base3(q):
    """(uint16)q * 256 + 242) / 243 in a byte, q the uint8 base-3 number."""
    return np.uint8((((q & 0xFF) * 256) + 242) // 243)


@njit(**PJIT)
def _quantize_tq1_0(x, out):
    nrows, n = x.shape
    nb = n // QK_K
    for r in prange(nrows):
        t = np.empty(QK_K, np.int32)
        for b in range(nb):
            o = out[r, b * TQ1_TS:(b + 1) * TQ1_TS]
            d = _ternary(x[r, b * QK_K:(b + 1) * QK_K], t)
            for m in range(32):
                q = 0
                for k in range(5):
                    q = (q * 3 + t[m + 32 * k]) & 0xFF
                o[TQ1_QS + m] = _base3(q)
            for m in range(16):
                q = 0
                for k in range(5):
                    q = (q * 3 + t[160 + m + 16 * k]) & 0xFF
                o[TQ1_QS + 32 + m] = _base3(q)
            for j in range(4):
                q = 0
                for k in range(4):
                    q = (q * 3 + t[240 + j + 4 * k]) & 0xFF
                o[TQ1_QH + j] = _base3(q * 3)
            store_fp16(o, TQ1_D, d)


@njit(**dict(JIT, inline="always"))
def _trit(byte, p):
    """A trit of a byte, p = 3^k for the k-th: q = byte * p (mod 256), (q * 3) >> 8, as float32
    (t - 1)."""
    q = (np.int32(byte) * p) & 0xFF
    return F32(np.int32(((q * 3) >> 8) - 1))


@njit(**PJIT)
def _dequantize_tq1_0(data, out, n32):
    """The loops over positions take n32 = 32 at run time, with unsigned offsets and the five
    trits of a byte in one body: loops LLVM vectorises (see ..numerics)."""
    nrows = data.shape[0]
    nb = data.shape[1] // TQ1_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * TQ1_TS:(b + 1) * TQ1_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[TQ1_D], o[TQ1_D + 1])
            i0 = U64(b * TQ1_TS + TQ1_QS)
            y0 = U64(b * QK_K)
            for m in range(U64(n32)):
                byte = data[r, i0 + m]
                for k in range(5):
                    out[r, y0 + U64(32 * k) + m] = _trit(byte, 3 ** k) * d
            for m in range(U64(n32 >> 1)):
                byte = data[r, i0 + U64(32) + m]
                for k in range(5):
                    out[r, y0 + U64(160 + 16 * k) + m] = _trit(byte, 3 ** k) * d
            for k in range(4):
                for j in range(4):
                    y[240 + j + 4 * k] = _trit(o[TQ1_QH + j], 3 ** k) * d


@njit(**PJIT)
def _quantize_tq2_0(x, out):
    nrows, n = x.shape
    nb = n // QK_K
    for r in prange(nrows):
        t = np.empty(QK_K, np.int32)
        for b in range(nb):
            o = out[r, b * TQ2_TS:(b + 1) * TQ2_TS]
            d = _ternary(x[r, b * QK_K:(b + 1) * QK_K], t)
            for h in range(2):
                for m in range(32):
                    q = 0
                    for k in range(4):
                        q += (t[128 * h + 32 * k + m] & 3) << (2 * k)
                    o[TQ2_QS + 32 * h + m] = np.uint8(q & 0xFF)
            store_fp16(o, TQ2_D, d)


@njit(**PJIT)
def _dequantize_tq2_0(data, out, n32):
    """One loop over the 32 bytes of each half, the four 2-bit fields of a byte in its body, n32 =
    32 at run time and unsigned offsets: a loop LLVM vectorises (see ..numerics)."""
    nrows = data.shape[0]
    nb = data.shape[1] // TQ2_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * TQ2_TS:(b + 1) * TQ2_TS]
            d = fp16_to_fp32(o[TQ2_D], o[TQ2_D + 1])
            for h in range(2):
                i0 = U64(b * TQ2_TS + TQ2_QS + 32 * h)
                y0 = U64(b * QK_K + 128 * h)
                for m in range(U64(n32)):
                    byte = data[r, i0 + m]
                    for k in range(4):
                        q = np.int32((byte >> np.uint8(2 * k)) & np.uint8(3)) - np.int32(1)
                        out[r, y0 + U64(32 * k) + m] = F32(np.int32(q)) * d


@njit(**PJIT)
def _quantize_q1_0(x, out):
    nrows, n = x.shape
    nb = n // QK1_0
    for r in prange(nrows):
        for b in range(nb):
            xb = x[r, b * QK1_0:(b + 1) * QK1_0]
            o = out[r, b * Q1_0_TS:(b + 1) * Q1_0_TS]
            s = ZERO
            for j in range(QK1_0):
                s += abs(xb[j])
            store_fp16(o, Q1_0_D, s / F32(QK1_0))
            for k in range(16):
                q = 0
                for i in range(8):
                    if xb[8 * k + i] >= ZERO:
                        q |= 1 << i
                o[Q1_0_QS + k] = np.uint8(q)


@njit(**PJIT)
def _dequantize_q1_0(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // Q1_0_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * Q1_0_TS:(b + 1) * Q1_0_TS]
            y = out[r, b * QK1_0:(b + 1) * QK1_0]
            d = fp16_to_fp32(o[Q1_0_D], o[Q1_0_D + 1])
            for j in range(QK1_0):
                y[j] = d if (np.int32(o[Q1_0_QS + j // 8]) >> (j % 8)) & 1 else -d


@njit(**PJIT)
def _quantize_q2_0(x, out):
    """quantize_row_q2_0_ref: amax by `if (a > amax)` from 0, id = d > 0 ? 1/d : 0,
    q = clamp((int)roundf(x * id) + 1, 0, 3), four codes a byte from bit 0."""
    nrows, n = x.shape
    nb = n // QK2_0
    for r in prange(nrows):
        for b in range(nb):
            xb = x[r, b * QK2_0:(b + 1) * QK2_0]
            o = out[r, b * Q2_0_TS:(b + 1) * Q2_0_TS]
            amax = ZERO
            for j in range(QK2_0):
                a = abs(xb[j])
                if a > amax:
                    amax = a
            idv = ONE / amax if amax > ZERO else ZERO
            store_fp16(o, Q2_0_D, amax)
            for k in range(QK2_0 // 4):
                byte = 0
                for i in range(4):
                    q = np.int64(c_float_to_int32(roundf(xb[4 * k + i] * idv))) + 1
                    q = 0 if q < 0 else (3 if q > 3 else q)
                    byte |= np.int32(q) << (2 * i)
                o[Q2_0_QS + k] = np.uint8(byte)


@njit(**PJIT)
def _dequantize_q2_0(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // Q2_0_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * Q2_0_TS:(b + 1) * Q2_0_TS]
            y = out[r, b * QK2_0:(b + 1) * QK2_0]
            d = fp16_to_fp32(o[Q2_0_D], o[Q2_0_D + 1])
            for j in range(QK2_0):
                q = (np.int32(o[Q2_0_QS + j // 4]) >> (2 * (j % 4))) & 3
                y[j] = F32(q - 1) * d                                 # ((int)q - 1) * d


@njit(**PJIT)
def _vec_dot_q2_0(w, aq, ad, out):
    """ggml_vec_dot_q2_0_q8_0: per block, sumi = sumi + f(sumi_k) * d_y[k] over its two Q8_0
    blocks, then sumf = sumf + d * sumi (separate multiplies and adds)."""
    N = w.shape[0]
    nb = w.shape[1] // Q2_0_TS
    M = aq.shape[0]
    for n in prange(N):
        for mi in range(M):
            sumf = ZERO
            for b in range(nb):
                o = w[n, b * Q2_0_TS:(b + 1) * Q2_0_TS]
                si = ZERO
                for k in range(2):
                    sumi = np.int32(0)
                    for j in range(32):
                        q = ((np.int32(o[Q2_0_QS + 8 * k + j // 4]) >> (2 * (j % 4))) & 3) - 1
                        sumi += q * np.int32(aq[mi, b * QK2_0 + 32 * k + j])
                    si = si + F32(sumi) * ad[mi, 2 * b + k]
                sumf = sumf + fp16_to_fp32(o[Q2_0_D], o[Q2_0_D + 1]) * si
            out[mi, n] = sumf


def vec_dot_q2_0(w, a, variant="ref"):
    w = np.ascontiguousarray(w)
    M, K = a.shape
    qa = quantize_activation(a, "Q8_0", variant)
    aq = np.empty((M, K), np.int8)
    ad = np.empty((M, K // 32), np.float32)
    _unpack_q8(qa, False, aq, ad, ad)
    out = np.empty((M, w.shape[0]), np.float32)
    _vec_dot_q2_0(w, aq, ad, out)
    return out


def _wrap(kernel, block, ts, quantize):
    if quantize:
        def f(x, imatrix=None):
            out = np.empty((x.shape[0], x.shape[1] // block * ts), np.uint8)
            kernel(np.ascontiguousarray(x, dtype=np.float32), out)
            return out
    elif kernel is _dequantize_q1_0 or kernel is _dequantize_q2_0:
        def f(data):
            out = np.empty((data.shape[0], data.shape[1] // ts * block), np.float32)
            kernel(np.ascontiguousarray(data), out)
            return out
    else:
        def f(data):
            out = np.empty((data.shape[0], data.shape[1] // ts * block), np.float32)
            kernel(np.ascontiguousarray(data), out, 32)  # n32, passed at run time
            return out
    return f


quantize_tq1_0 = _wrap(_quantize_tq1_0, QK_K, TQ1_TS, True)
quantize_tq2_0 = _wrap(_quantize_tq2_0, QK_K, TQ2_TS, True)
quantize_q1_0 = _wrap(_quantize_q1_0, QK1_0, Q1_0_TS, True)
dequantize_tq1_0 = _wrap(_dequantize_tq1_0, QK_K, TQ1_TS, False)
dequantize_tq2_0 = _wrap(_dequantize_tq2_0, QK_K, TQ2_TS, False)
dequantize_q1_0 = _wrap(_dequantize_q1_0, QK1_0, Q1_0_TS, False)
quantize_q2_0 = _wrap(_quantize_q2_0, QK2_0, Q2_0_TS, True)
dequantize_q2_0 = _wrap(_dequantize_q2_0, QK2_0, Q2_0_TS, False)

# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "TQ1_0 TQ2_0 Q1_0 Q2_0", "dequantize": "TQ1_0 TQ2_0 Q1_0 Q2_0", "vec_dot": "Q2_0"}
QUANTIZE = {"TQ1_0": quantize_tq1_0, "TQ2_0": quantize_tq2_0, "Q1_0": quantize_q1_0, "Q2_0": quantize_q2_0}
DEQUANTIZE = {"TQ1_0": dequantize_tq1_0, "TQ2_0": dequantize_tq2_0, "Q1_0": dequantize_q1_0,
              "Q2_0": dequantize_q2_0}
VEC_DOT = {"Q2_0": vec_dot_q2_0}
