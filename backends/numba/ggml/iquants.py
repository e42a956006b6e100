"""Numba twin of refquant/ggml/iquants.py: IQ4_NL and IQ4_XS (the chunk path's ntry = 7 search),
bit-exact with it. Rows run in parallel (prange), blocks in order, C's loops inside a block."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.ggml.iquants import KVALUES_IQ4NL
from refquant.registry import get_format

from ..numerics import F32, JIT, ONE, U64, ZERO, fp16_to_fp32, nearest_int, store_fp16

QK4_NL = 32
# type sizes and the fields' byte offsets the kernels index, from the declared layouts
# (refquant.ggml.layout); scales_h is a little-endian uint16, read and written a byte at a time
NL_TS, XS_TS = get_format("IQ4_NL").type_size, get_format("IQ4_XS").type_size
NL_D, NL_QS = (get_format("IQ4_NL").layout.offset(f) for f in ("d", "qs"))
XS_D, XS_SH, XS_SL, XS_QS = (get_format("IQ4_XS").layout.offset(f) for f in ("d", "scales_h", "scales_l", "qs"))
QK_K = 256
NTRY = 7
PJIT = dict(JIT, parallel=True)
GROUP_MAX_EPS = F32(1e-15)
VALS = KVALUES_IQ4NL.astype(np.float32)
V0 = int(KVALUES_IQ4NL[0])


@njit(**dict(JIT, inline="always"))
def best_index_int8(x):
    """The nearest entry of VALS to x, as ggml's binary search finds it: the bracket
    VALS[mu-1] <= x < VALS[mu] (mu = 1 + the count of VALS[1..14] <= x, so x below the table
    brackets with mu = 1 and x above it with mu = 15), then mu-1 only when strictly nearer (a tie
    goes up); a NaN ends the search at the last entry. Counting instead of branching: the same
    answer, without a mispredicted branch per step."""
    if x != x:
        return 15
    mu = 1
    for k in range(1, 15):
        mu += 1 if x >= VALS[k] else 0
    return mu - 1 if x - VALS[mu - 1] < VALS[mu] - x else mu


@njit(**dict(JIT, inline="always"))
def nearest_value(x):
    """VALS[best_index_int8(x)] without the index: the bracket's ends by selects (VALS is
    sorted), so that a loop of these vectorises; a NaN gives VALS[15], as the search does."""
    lo = VALS[0]
    hi = VALS[1]
    for k in range(1, 15):
        if x >= VALS[k]:
            lo = VALS[k]
            hi = VALS[k + 1]
    v = lo if x - lo < hi - x else hi
    return VALS[15] if x != x else v


@njit(**dict(JIT, inline="always"))
def _sums(x, w, iscale, n32, px, pq):
    """sumqx = Σ (w q) x and sumq2 = Σ (w q) q in C's order. The products are formed first, in a
    loop of n32 (32 at run time) with unsigned offsets that LLVM vectorises (see ..numerics);
    only the two float32 sums run in sequence."""
    for j in range(U64(n32)):
        q = nearest_value(iscale * x[j])
        wq = w[j] * q
        px[j] = wq * x[j]
        pq[j] = wq * q
    sumqx = ZERO
    sumq2 = ZERO
    for j in range(U64(n32)):
        sumqx += px[j]
        sumq2 += pq[j]
    return sumqx, sumq2


@njit(**dict(JIT, inline="always"))
def block_scale(x, w, n32, px, pq):
    """The scale search of quantize_row_iq4_nl_impl (ntry = 7) for one block of 32."""
    amax = ZERO
    vmax = ZERO
    for j in range(x.shape[0]):
        ax = abs(x[j])
        if ax > amax:
            amax = ax
            vmax = x[j]
    if amax < GROUP_MAX_EPS:
        return ZERO
    d = -vmax / VALS[0]
    sumqx, sumq2 = _sums(x, w, ONE / d, n32, px, pq)
    d = sumqx / sumq2 if sumq2 > ZERO else ZERO
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        iscale = F32(itry + V0) / vmax
        sumqx, sumq2 = _sums(x, w, iscale, n32, px, pq)
        if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


@njit(**dict(JIT, inline="always"))
def _weights(x, imatrix, use_imatrix, w):
    """x² without an importance matrix; qw * sqrtf(sigma2 + x²) with one, sigma2 = Σx² * (2/n)."""
    n = x.shape[0]
    if not use_imatrix:
        for j in range(n):
            w[j] = x[j] * x[j]
        return
    s = ZERO
    for j in range(n):
        s += x[j] * x[j]
    sigma2 = s * (F32(2) / F32(n))
    for j in range(n):
        w[j] = imatrix[j] * np.sqrt(sigma2 + x[j] * x[j])


@njit(**dict(JIT, inline="always"))
def _recip(d):
    return ONE / d if d != ZERO else ZERO


@njit(**dict(JIT, inline="always"))
def _pack_codes(x, idv, o, at):
    """q4[j] = code(x[j]) | code(x[j + 16]) << 4 for a block of 32."""
    for j in range(16):
        o[at + j] = np.uint8(best_index_int8(idv * x[j]) | (best_index_int8(idv * x[j + 16]) << 4))


@njit(**PJIT)
def _quantize_iq4_nl(x, imatrix, use_imatrix, out, n32):
    nrows, n = x.shape
    nb = n // QK4_NL
    for r in prange(nrows):
        w = np.empty(QK4_NL, np.float32)
        px = np.empty(QK4_NL, np.float32)
        pq = np.empty(QK4_NL, np.float32)
        for b in range(nb):
            xb = x[r, b * QK4_NL:(b + 1) * QK4_NL]
            o = out[r, b * NL_TS:(b + 1) * NL_TS]
            _weights(xb, imatrix[b * QK4_NL:(b + 1) * QK4_NL] if use_imatrix else imatrix, use_imatrix, w)
            d = block_scale(xb, w, n32, px, pq)
            store_fp16(o, NL_D, d)
            _pack_codes(xb, _recip(d), o, NL_QS)


@njit(**PJIT)
def _quantize_iq4_xs(x, imatrix, use_imatrix, out, n32):
    nrows, n = x.shape
    nb = n // QK_K
    for r in prange(nrows):
        w = np.empty(QK_K, np.float32)
        px = np.empty(QK4_NL, np.float32)
        pq = np.empty(QK4_NL, np.float32)
        scales = np.empty(8, np.float32)
        for b in range(nb):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * XS_TS:(b + 1) * XS_TS]
            _weights(xb, imatrix[b * QK_K:(b + 1) * QK_K] if use_imatrix else imatrix, use_imatrix, w)
            amax = ZERO
            max_scale = ZERO
            for ib in range(8):
                s = block_scale(xb[32 * ib:32 * ib + 32], w[32 * ib:32 * ib + 32], n32, px, pq)
                scales[ib] = s
                a = abs(s)
                if a > amax:
                    amax = a
                    max_scale = s
            d = -max_scale / F32(32)
            idv = _recip(d)
            store_fp16(o, XS_D, d)
            sh = 0
            for k in range(4):
                o[XS_SL + k] = 0
            for ib in range(8):
                l = max(-32, min(31, nearest_int(idv * scales[ib])))
                dl = d * F32(l)
                ls = l + 32
                o[XS_SL + ib // 2] |= np.uint8((ls & 0xF) << (4 * (ib % 2)))
                sh |= (ls >> 4) << (2 * ib)
                _pack_codes(xb[32 * ib:32 * ib + 32], _recip(dl), o, XS_QS + 16 * ib)
            o[XS_SH] = np.uint8(sh & 0xFF)
            o[XS_SH + 1] = np.uint8(sh >> 8)


@njit(**PJIT)
def _dequantize_iq4_nl(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // NL_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * NL_TS:(b + 1) * NL_TS]
            y = out[r, b * QK4_NL:(b + 1) * QK4_NL]
            d = fp16_to_fp32(o[NL_D], o[NL_D + 1])
            for j in range(16):
                y[j] = d * VALS[np.int32(o[NL_QS + j]) & 0xF]
                y[j + 16] = d * VALS[np.int32(o[NL_QS + j]) >> 4]


@njit(**PJIT)
def _dequantize_iq4_xs(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // XS_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * XS_TS:(b + 1) * XS_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[XS_D], o[XS_D + 1])
            sh = np.int32(o[XS_SH]) | (np.int32(o[XS_SH + 1]) << 8)
            for ib in range(8):
                ls = ((np.int32(o[XS_SL + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
                dl = d * F32(ls - 32)
                for j in range(16):
                    q = np.int32(o[XS_QS + 16 * ib + j])
                    y[32 * ib + j] = dl * VALS[q & 0xF]
                    y[32 * ib + 16 + j] = dl * VALS[q >> 4]


def _im(imatrix):
    if imatrix is None:
        return np.zeros(1, np.float32), False
    return np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1), True


def quantize_iq4_nl(x, imatrix=None):
    out = np.empty((x.shape[0], x.shape[1] // QK4_NL * NL_TS), np.uint8)
    _quantize_iq4_nl(np.ascontiguousarray(x, dtype=np.float32), *_im(imatrix), out, 32)
    return out


def quantize_iq4_xs(x, imatrix=None):
    out = np.empty((x.shape[0], x.shape[1] // QK_K * XS_TS), np.uint8)
    _quantize_iq4_xs(np.ascontiguousarray(x, dtype=np.float32), *_im(imatrix), out, 32)
    return out


def dequantize_iq4_nl(data):
    out = np.empty((data.shape[0], data.shape[1] // NL_TS * QK4_NL), np.float32)
    _dequantize_iq4_nl(np.ascontiguousarray(data), out)
    return out


def dequantize_iq4_xs(data):
    out = np.empty((data.shape[0], data.shape[1] // XS_TS * QK_K), np.float32)
    _dequantize_iq4_xs(np.ascontiguousarray(data), out)
    return out


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "IQ4_NL IQ4_XS", "dequantize": "IQ4_NL IQ4_XS"}
QUANTIZE = {"IQ4_NL": quantize_iq4_nl, "IQ4_XS": quantize_iq4_xs}
DEQUANTIZE = {"IQ4_NL": dequantize_iq4_nl, "IQ4_XS": dequantize_iq4_xs}
