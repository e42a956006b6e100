"""Numba twin of refquant/ggml/legacy.py: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1, bit-exact with it.

Rows are independent: every kernel runs its rows in parallel (prange) and each row's blocks in
order. Inside a block the loops are the spec's (C's) loops, in float32."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..api import checked
from ..numerics import (F32, HALF, INLINE, JIT, U64, ZERO, bits_f32, c_float_to_int8, c_float_to_uint8, f32_bits,
                        fp16_to_fp32, key_range, keys_nonfinite, order_key_inverse as _order_key_inverse,
                        reciprocal_or_zero, roundf, store_fp16)
from refquant.registry import get_format

from .search import make_qkx3_quants, make_qx_quants

# block size, type sizes and the fields' byte offsets, from the declared layouts (refquant.ggml.layout)
_L = {name: get_format(name).layout for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1")}
QK = _L["Q4_0"].block_size
Q4_0_TS, Q4_0_QS = _L["Q4_0"].type_size, _L["Q4_0"].offset("qs")
Q5_0_TS, Q5_0_QH, Q5_0_QS = _L["Q5_0"].type_size, _L["Q5_0"].offset("qh"), _L["Q5_0"].offset("qs")
Q4_1_TS, Q4_1_QS = _L["Q4_1"].type_size, _L["Q4_1"].offset("qs")
Q5_1_TS, Q5_1_QH, Q5_1_QS = _L["Q5_1"].type_size, _L["Q5_1"].offset("qh"), _L["Q5_1"].offset("qs")
Q8_0_TS, Q8_0_QS = _L["Q8_0"].type_size, _L["Q8_0"].offset("qs")
Q8_1_TS, Q8_1_S, Q8_1_QS = _L["Q8_1"].type_size, _L["Q8_1"].offset("s"), _L["Q8_1"].offset("qs")
# every block starts with its fp16 d; Q4_1 and Q5_1 follow it with the fp16 m
D = _L["Q4_0"].offset("d")
M = _L["Q4_1"].offset("m")
assert all(L.offset("d") == D and L.block_size == QK for L in _L.values()) and _L["Q5_1"].offset("m") == M
# a kernel shared by a 4-bit and a 5-bit type packs from one offset: the 4-bit type's qs, the
# 5-bit type's qh (_pack writes qh there, then qs after it)
assert Q4_0_QS == Q5_0_QH and Q4_1_QS == Q5_1_QH
PJIT = dict(JIT, parallel=True)
RMIN = F32(-0.9)
RDELTA = F32(0.05)


@njit(**JIT)
def _row_weights(x, imatrix, w):
    """imatrix_weights for one row: w[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])."""
    n = x.shape[0]
    sum_x2 = ZERO
    for j in range(n):
        sum_x2 += x[j] * x[j]
    sigma2 = sum_x2 / F32(n)
    for j in range(n):
        w[j] = imatrix[j] * np.sqrt(sigma2 + x[j] * x[j])


# --------------------------------------------------------------------------- Q4_0, Q5_0

@njit(**PJIT)
def _quantize_q4_0_q5_0(x, out, five, qk):
    """The codes in a loop of qk (QK at run time) with unsigned offsets, which LLVM vectorises
    (see ..numerics)."""
    nrows, n = x.shape
    nb = n // QK
    ts = Q5_0_TS if five else Q4_0_TS
    half = -16 if five else -8
    offs = F32(16.5) if five else F32(8.5)
    top = np.int32(31) if five else np.int32(15)
    for r in prange(nrows):
        q = np.empty(QK, np.int32)
        for b in range(nb):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * ts:(b + 1) * ts]
            amax = ZERO
            vmax = ZERO
            for j in range(QK):
                if amax < abs(xb[j]):
                    amax = abs(xb[j])
                    vmax = xb[j]
            d = vmax / F32(half)
            idv = reciprocal_or_zero(d)
            x0 = U64(b * QK)
            for j in range(U64(qk)):
                c = np.int32(c_float_to_int8(x[r, x0 + j] * idv + offs))
                q[j] = c if c < top else top
            store_fp16(o, D, d)
            _pack(q, o, Q4_0_QS, five)


@njit(**PJIT)
def _quantize_q4_0_q5_0_imatrix(x, imatrix, out, five):
    nrows, n = x.shape
    nb = n // QK
    ts = Q5_0_TS if five else Q4_0_TS
    nmax = 16 if five else 8
    for r in prange(nrows):
        w = np.empty(n, np.float32)
        L = np.empty(QK, np.int32)
        _row_weights(x[r], imatrix, w)
        for b in range(nb):
            o = out[r, b * ts:(b + 1) * ts]
            d = make_qx_quants(x[r, b * QK:(b + 1) * QK], nmax, w[b * QK:(b + 1) * QK], L)
            store_fp16(o, D, d)
            _pack(L, o, Q4_0_QS, five)


@njit(**dict(JIT, inline="always"))
def _pack(q, o, at, five):
    """Low nibbles as Q4 (element j low, j+16 high); for Q5, qh bit j = bit 4 of element j."""
    if five:
        qh = np.uint32(0)
        for j in range(QK):
            qh |= np.uint32((q[j] & 0x10) >> 4) << np.uint32(j)
        for k in range(4):
            o[at + k] = np.uint8((qh >> np.uint32(8 * k)) & np.uint32(0xFF))
        at += 4
    for j in range(QK // 2):
        o[at + j] = np.uint8(((q[j] & 0x0F) | ((q[j + QK // 2] & 0x0F) << 4)) & 0xFF)


@njit(**PJIT)
def _dequantize_q4_0_q5_0(data, out, five, qk):
    nrows = data.shape[0]
    ts = Q5_0_TS if five else Q4_0_TS
    nb = data.shape[1] // ts
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            d = fp16_to_fp32(o[D], o[D + 1])
            y = out[r, b * QK:(b + 1) * QK]
            if five:
                qh = (np.uint32(o[Q5_0_QH]) | (np.uint32(o[Q5_0_QH + 1]) << 8) | (np.uint32(o[Q5_0_QH + 2]) << 16)
                      | (np.uint32(o[Q5_0_QH + 3]) << 24))
                for j in range(QK // 2):
                    h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
                    h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
                    y[j] = F32((np.int32(o[Q5_0_QS + j]) & 0x0F | h0) - 16) * d
                    y[j + 16] = F32((np.int32(o[Q5_0_QS + j]) >> 4 | h1) - 16) * d
            else:  # a loop of qk / 2 (at run time) with unsigned offsets: vectorised (see ..numerics)
                i0 = U64(b * ts + Q4_0_QS)
                y0 = U64(b * QK)
                for j in range(U64(qk >> 1)):
                    byte = data[r, i0 + j]
                    out[r, y0 + j] = F32(np.int32(byte & np.uint8(0x0F)) - np.int32(8)) * d
                    out[r, y0 + U64(16) + j] = F32(np.int32(byte >> np.uint8(4)) - np.int32(8)) * d


# --------------------------------------------------------------------------- Q4_1, Q5_1

@njit(**PJIT)
def _quantize_q4_1_q5_1(x, out, five, qk, bad):
    """C's min/max scan (`if (v < min) min = v;`) as integer min/max of order keys in a loop of
    qk (QK at run time) with unsigned offsets, which LLVM vectorises: for finite values the
    minimum is one value, the same bits whichever position it is found at, except for a zero,
    where C keeps the first zero's sign: then the scan runs as C's. The codes in loops of the
    same kind, one per type (see ..numerics). The key range also tests the input check's NaN
    and Inf (Backend.finite_in_kernel): bad[r] = 1 for a row holding one (its bytes are then
    not used)."""
    nrows, n = x.shape
    nb = n // QK
    ts = Q5_1_TS if five else Q4_1_TS
    nmax = F32(31) if five else F32(15)
    for r in prange(nrows):
        q = np.empty(QK, np.int32)
        for b in range(nb):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * ts:(b + 1) * ts]
            x0 = U64(b * QK)
            kmin, kmax = key_range(x, r, x0, qk)
            if keys_nonfinite(kmin, kmax):
                bad[r] = 1
            if kmin == np.int32(-1) or kmin == np.int32(0) or kmax == np.int32(-1) or kmax == np.int32(0):
                vmin = xb[0]
                vmax = xb[0]
                for j in range(1, QK):
                    if xb[j] < vmin:
                        vmin = xb[j]
                    if xb[j] > vmax:
                        vmax = xb[j]
            else:
                vmin = bits_f32(_order_key_inverse(kmin))
                vmax = bits_f32(_order_key_inverse(kmax))
            d = (vmax - vmin) / nmax
            idv = reciprocal_or_zero(d)
            if five:
                for j in range(U64(qk)):
                    q[j] = np.int32(c_float_to_uint8((x[r, x0 + j] - vmin) * idv + HALF))
                store_fp16(o, D, d)
                store_fp16(o, M, vmin)
                _pack(q, o, Q4_1_QS, five)
            else:  # Q4_1's two codes of a byte (positions j and j + 16) in one loop
                o0 = U64(b * ts + Q4_1_QS)
                for j in range(U64(qk >> 1)):
                    c0 = min(np.int32(15), np.int32(c_float_to_int8((x[r, x0 + j] - vmin) * idv + HALF)))
                    c1 = min(np.int32(15), np.int32(c_float_to_int8((x[r, x0 + U64(16) + j] - vmin) * idv + HALF)))
                    out[r, o0 + j] = np.uint8((c0 & np.int32(0x0F)) | ((c1 & np.int32(0x0F)) << np.int32(4)))
                store_fp16(o, D, d)
                store_fp16(o, M, vmin)


@njit(**PJIT)
def _quantize_q4_1_q5_1_imatrix(x, imatrix, out, five):
    nrows, n = x.shape
    nb = n // QK
    ts = Q5_1_TS if five else Q4_1_TS
    nmax = 31 if five else 15
    for r in prange(nrows):
        w = np.empty(n, np.float32)
        L = np.empty(QK, np.int32)
        laux = np.empty(QK, np.int32)
        _row_weights(x[r], imatrix, w)
        for b in range(nb):
            o = out[r, b * ts:(b + 1) * ts]
            d, m = make_qkx3_quants(x[r, b * QK:(b + 1) * QK], nmax, w[b * QK:(b + 1) * QK],
                                    RMIN, RDELTA, 36, L, laux)
            store_fp16(o, D, d)
            store_fp16(o, M, -m)  # make_qkx3_quants returns -min; the block stores min
            _pack(L, o, Q4_1_QS, five)


@njit(**dict(JIT, inline="always"))
def _mul_add(q, d, m):
    """q*d + m, two roundings. With NaN operands x86's add returns its first NaN operand; LLVM
    may swap the operands of a commutative fadd, so the NaN that C (and the spec) returns is
    chosen explicitly: the product's if it is NaN, else m's."""
    t = q * d
    if t != t:
        return t
    if m != m:
        return m
    return t + m


@njit(**PJIT)
def _dequantize_q4_1_q5_1(data, out, five):
    nrows = data.shape[0]
    ts = Q5_1_TS if five else Q4_1_TS
    nb = data.shape[1] // ts
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            d = fp16_to_fp32(o[D], o[D + 1])
            m = fp16_to_fp32(o[M], o[M + 1])
            y = out[r, b * QK:(b + 1) * QK]
            if five:
                qh = (np.uint32(o[Q5_1_QH]) | (np.uint32(o[Q5_1_QH + 1]) << 8) | (np.uint32(o[Q5_1_QH + 2]) << 16)
                      | (np.uint32(o[Q5_1_QH + 3]) << 24))
                for j in range(QK // 2):
                    h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
                    h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
                    y[j] = _mul_add(F32(np.int32(o[Q5_1_QS + j]) & 0x0F | h0), d, m)
                    y[j + 16] = _mul_add(F32(np.int32(o[Q5_1_QS + j]) >> 4 | h1), d, m)
            else:
                for j in range(QK // 2):
                    y[j] = _mul_add(F32(np.int32(o[Q4_1_QS + j]) & 0x0F), d, m)
                    y[j + 16] = _mul_add(F32(np.int32(o[Q4_1_QS + j]) >> 4), d, m)


# --------------------------------------------------------------------------- Q8_0, Q8_1

@njit(**PJIT)
def _quantize_q8(x, out, with_sum):
    nrows, n = x.shape
    nb = n // QK
    ts = Q8_1_TS if with_sum else Q8_0_TS
    at = Q8_1_QS if with_sum else Q8_0_QS
    for r in prange(nrows):
        for b in range(nb):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * ts:(b + 1) * ts]
            amax = ZERO
            for j in range(QK):
                if amax < abs(xb[j]):
                    amax = abs(xb[j])
            d = amax / F32(127)
            idv = reciprocal_or_zero(d)
            total = 0
            for j in range(QK):
                qv = c_float_to_int8(roundf(xb[j] * idv))
                o[at + j] = np.uint8(np.int32(qv) & 0xFF)
                total += np.int32(qv)
            store_fp16(o, D, d)
            if with_sum:
                store_fp16(o, Q8_1_S, F32(total) * d)


@njit(**PJIT)
def _dequantize_q8(data, sdata, out, with_sum, qk):
    """sdata: the same bytes viewed as int8 (the qs are read signed). qk: QK passed at run time and
    unsigned offsets, so that LLVM vectorises the loop over positions (see ..numerics)."""
    nrows = data.shape[0]
    ts = Q8_1_TS if with_sum else Q8_0_TS
    at = Q8_1_QS if with_sum else Q8_0_QS
    nb = data.shape[1] // ts
    for r in prange(nrows):
        for b in range(nb):
            d = fp16_to_fp32(data[r, b * ts + D], data[r, b * ts + D + 1])
            i0 = U64(b * ts + at)
            y0 = U64(b * qk)
            for j in range(U64(qk)):
                out[r, y0 + j] = F32(sdata[r, i0 + j]) * d


# --------------------------------------------------------------------------- the spec's signatures

def _out(x, ts):
    return np.empty((x.shape[0], x.shape[1] // QK * ts), np.uint8)


def _deq_out(data, ts):
    return np.empty((data.shape[0], data.shape[1] // ts * QK), np.float32)


def _c(x):
    return np.ascontiguousarray(x)


def quantize_q4_0(x, imatrix=None):
    out = _out(x, Q4_0_TS)
    if imatrix is None:
        _quantize_q4_0_q5_0(_c(x), out, False, QK)
    else:
        _quantize_q4_0_q5_0_imatrix(_c(x), _c(imatrix), out, False)
    return out


def quantize_q5_0(x, imatrix=None):
    out = _out(x, Q5_0_TS)
    if imatrix is None:
        _quantize_q4_0_q5_0(_c(x), out, True, QK)
    else:
        _quantize_q4_0_q5_0_imatrix(_c(x), _c(imatrix), out, True)
    return out


def quantize_q4_1(x, imatrix=None):
    out = _out(x, Q4_1_TS)
    if imatrix is None:
        checked(_quantize_q4_1_q5_1, _c(x), out, False, QK)
    else:
        _quantize_q4_1_q5_1_imatrix(_c(x), _c(imatrix), out, False)
    return out


quantize_q4_1.checks_finite = True   # without an imatrix (refquant.backend.Backend.finite_in_kernel)


def quantize_q5_1(x, imatrix=None):
    out = _out(x, Q5_1_TS)
    if imatrix is None:
        checked(_quantize_q4_1_q5_1, _c(x), out, True, QK)
    else:
        _quantize_q4_1_q5_1_imatrix(_c(x), _c(imatrix), out, True)
    return out


quantize_q5_1.checks_finite = True   # without an imatrix (refquant.backend.Backend.finite_in_kernel)


def quantize_q8_0(x, imatrix=None):
    out = _out(x, Q8_0_TS)
    _quantize_q8(_c(x), out, False)
    return out


def quantize_q8_1(x, imatrix=None):
    out = _out(x, Q8_1_TS)
    _quantize_q8(_c(x), out, True)
    return out


def dequantize_q4_0(data):
    out = _deq_out(data, Q4_0_TS)
    _dequantize_q4_0_q5_0(_c(data), out, False, QK)
    return out


def dequantize_q5_0(data):
    out = _deq_out(data, Q5_0_TS)
    _dequantize_q4_0_q5_0(_c(data), out, True, QK)
    return out


def dequantize_q4_1(data):
    out = _deq_out(data, Q4_1_TS)
    _dequantize_q4_1_q5_1(_c(data), out, False)
    return out


def dequantize_q5_1(data):
    out = _deq_out(data, Q5_1_TS)
    _dequantize_q4_1_q5_1(_c(data), out, True)
    return out


def dequantize_q8_0(data):
    out = _deq_out(data, Q8_0_TS)
    data = _c(data)
    _dequantize_q8(data, data.view(np.int8), out, False, QK)
    return out


def dequantize_q8_1(data):
    out = _deq_out(data, Q8_1_TS)
    data = _c(data)
    _dequantize_q8(data, data.view(np.int8), out, True, QK)
    return out


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1", "dequantize": "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1"}
QUANTIZE = {"Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1, "Q5_0": quantize_q5_0,
            "Q5_1": quantize_q5_1, "Q8_0": quantize_q8_0, "Q8_1": quantize_q8_1}
DEQUANTIZE = {"Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q5_0": dequantize_q5_0,
              "Q5_1": dequantize_q5_1, "Q8_0": dequantize_q8_0, "Q8_1": dequantize_q8_1}
