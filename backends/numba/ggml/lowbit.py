"""Numba twin of refquant/ggml/lowbit.py: TQ1_0, TQ2_0 and Q1_0, bit-exact with it (no importance
matrix: the spec ignores one, and so does this twin)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numerics import F32, JIT, ONE, U64, ZERO, fp16_to_fp32, roundf, store_fp16

QK_K = 256
QK1_0 = 128
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
            o = out[r, b * 54:(b + 1) * 54]
            d = _ternary(x[r, b * QK_K:(b + 1) * QK_K], t)
            for m in range(32):
                q = 0
                for k in range(5):
                    q = (q * 3 + t[m + 32 * k]) & 0xFF
                o[m] = _base3(q)
            for m in range(16):
                q = 0
                for k in range(5):
                    q = (q * 3 + t[160 + m + 16 * k]) & 0xFF
                o[32 + m] = _base3(q)
            for j in range(4):
                q = 0
                for k in range(4):
                    q = (q * 3 + t[240 + j + 4 * k]) & 0xFF
                o[48 + j] = _base3(q * 3)
            store_fp16(o, 52, d)


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
    nb = data.shape[1] // 54
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * 54:(b + 1) * 54]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[52], o[53])
            i0 = U64(b * 54)
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
                    y[240 + j + 4 * k] = _trit(o[48 + j], 3 ** k) * d


@njit(**PJIT)
def _quantize_tq2_0(x, out):
    nrows, n = x.shape
    nb = n // QK_K
    for r in prange(nrows):
        t = np.empty(QK_K, np.int32)
        for b in range(nb):
            o = out[r, b * 66:(b + 1) * 66]
            d = _ternary(x[r, b * QK_K:(b + 1) * QK_K], t)
            for h in range(2):
                for m in range(32):
                    q = 0
                    for k in range(4):
                        q += (t[128 * h + 32 * k + m] & 3) << (2 * k)
                    o[32 * h + m] = np.uint8(q & 0xFF)
            store_fp16(o, 64, d)


@njit(**PJIT)
def _dequantize_tq2_0(data, out, n32):
    """One loop over the 32 bytes of each half, the four 2-bit fields of a byte in its body, n32 =
    32 at run time and unsigned offsets: a loop LLVM vectorises (see ..numerics)."""
    nrows = data.shape[0]
    nb = data.shape[1] // 66
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * 66:(b + 1) * 66]
            d = fp16_to_fp32(o[64], o[65])
            for h in range(2):
                i0 = U64(b * 66 + 32 * h)
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
            o = out[r, b * 18:(b + 1) * 18]
            s = ZERO
            for j in range(QK1_0):
                s += abs(xb[j])
            store_fp16(o, 0, s / F32(QK1_0))
            for k in range(16):
                q = 0
                for i in range(8):
                    if xb[8 * k + i] >= ZERO:
                        q |= 1 << i
                o[2 + k] = np.uint8(q)


@njit(**PJIT)
def _dequantize_q1_0(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // 18
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * 18:(b + 1) * 18]
            y = out[r, b * QK1_0:(b + 1) * QK1_0]
            d = fp16_to_fp32(o[0], o[1])
            for j in range(QK1_0):
                y[j] = d if (np.int32(o[2 + j // 8]) >> (j % 8)) & 1 else -d


def _wrap(kernel, block, ts, quantize):
    if quantize:
        def f(x, imatrix=None):
            out = np.empty((x.shape[0], x.shape[1] // block * ts), np.uint8)
            kernel(np.ascontiguousarray(x, dtype=np.float32), out)
            return out
    elif kernel is _dequantize_q1_0:
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


quantize_tq1_0 = _wrap(_quantize_tq1_0, QK_K, 54, True)
quantize_tq2_0 = _wrap(_quantize_tq2_0, QK_K, 66, True)
quantize_q1_0 = _wrap(_quantize_q1_0, QK1_0, 18, True)
dequantize_tq1_0 = _wrap(_dequantize_tq1_0, QK_K, 54, False)
dequantize_tq2_0 = _wrap(_dequantize_tq2_0, QK_K, 66, False)
dequantize_q1_0 = _wrap(_dequantize_q1_0, QK1_0, 18, False)

QUANTIZE = {"TQ1_0": quantize_tq1_0, "TQ2_0": quantize_tq2_0, "Q1_0": quantize_q1_0}
DEQUANTIZE = {"TQ1_0": dequantize_tq1_0, "TQ2_0": dequantize_tq2_0, "Q1_0": dequantize_q1_0}
