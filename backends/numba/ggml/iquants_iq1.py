"""Numba twin of the IQ1 quantizers of refquant/ggml/iquants_grid.py: IQ1_S and IQ1_M
(`quantize_iq1_s`, `quantize_iq1_m`), bit-exact with them.

Rows run in parallel (prange), super-blocks and sub-blocks in order, and inside a sub-block the
spec's loops: the stable sort of the values (glibc's merge sort keeps equal values, -0 and +0
included, in position order; an insertion sort with a strict comparison does the same), the
prefix sums in sorted order, every split (i1 outer, i2 inner) and shift in the spec's order with
its float32 sums accumulated term by term, the neighbour search over the codebook's lists
(refquant.ggml.grids.lattice("iq1s"), passed in as plain arrays) and the refit.

Where ggml aborts (no neighbour with a finite distance, a NaN scale), the kernels mark the
sub-block and the wrapper refuses the input with the spec's own message.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from refquant.errors import InputError
from refquant.ggml import grids
from refquant.ggml.iquants_grid import _Aborts
from refquant.registry import get_format

from ..numerics import F32, INLINE, JIT, ZERO, fp32_to_fp16_bits, nearest_int

QK_K = 256
# type sizes and the fields' byte offsets the kernels write, from the declared layouts
# (refquant.ggml.layout); IQ1_M's fp16 d goes in the top nibbles of its scales
I1S_TS, I1M_TS = get_format("IQ1_S").type_size, get_format("IQ1_M").type_size
I1S_D, I1S_QS, I1S_QH = (get_format("IQ1_S").layout.offset(f) for f in ("d", "qs", "qh"))
I1M_QS, I1M_QH, I1M_SC = (get_format("IQ1_M").layout.offset(f) for f in ("qs", "qh", "scales"))
PJIT = dict(JIT, parallel=True)
FLT_MAX = F32(np.finfo(np.float32).max)
EPS_S = F32(1e-12)
EPS_M = F32(1e-7)
TWO = F32(2)
HALF = F32(0.5)
ONE = F32(1)
FIFTEEN = F32(15)
FUDGE_S = F32(1.125)
FUDGE_M = F32(1.1125)
# levels 0, 1, 2 shifted by +delta (row 0) and by -delta (row 1)
XX = np.array([[-1 + 0.125, 0.125, 1 + 0.125], [-1 - 0.125, -0.125, 1 - 0.125]], np.float32)

NO_NEIGHBOUR, NAN_SCALE = 1, 2
REASONS = {NO_NEIGHBOUR: "no neighbour with a finite distance",
           NAN_SCALE: "GGML_ASSERT(scale >= 0) on a NaN scale"}


@functools.lru_cache(maxsize=None)
def _lattice():
    """The iq1s codebook as the kernels read it: code -> index (or -1), code -> neighbour list
    (or -1), the lists end to end, and the levels (0, 1, 2) of every point."""
    lat = grids.lattice("iq1s")
    return (np.ascontiguousarray(lat.map, np.int32), np.ascontiguousarray(lat.nbr_row, np.int32),
            np.ascontiguousarray(lat.nbr_start, np.int64), np.ascontiguousarray(lat.nbr_flat, np.int32),
            np.ascontiguousarray(lat.levels, np.int8))


# ------------------------------------------------------------------------------ shared pieces

@njit(**INLINE)
def _weights(xs, qw, use_imatrix, w):
    """The weights of one super-block: sigma2 = 2*sumx2/256 (sumx2 in order);
    qw*sqrtf(sigma2 + x²) with an importance matrix, x² without."""
    if not use_imatrix:
        for j in range(QK_K):
            w[j] = xs[j] * xs[j]
        return
    s = ZERO
    for j in range(QK_K):
        s += xs[j] * xs[j]
    sigma2 = (TWO * s) / F32(QK_K)
    for j in range(QK_K):
        w[j] = qw[j] * np.sqrt(sigma2 + xs[j] * xs[j])


@njit(**INLINE)
def _max_abs(x):
    """`max = |x[0]|; max = MAX(max, |x[i]|)` with MAX(a, b) = a > b ? a : b."""
    m = abs(x[0])
    for i in range(1, x.shape[0]):
        a = abs(x[i])
        m = m if m > a else a
    return m


@njit(**INLINE)
def _stable_order(x, order):
    """The positions of x in ascending order, equal values in position order (a stable sort)."""
    n = x.shape[0]
    for i in range(n):
        order[i] = i
    for i in range(1, n):
        k = order[i]
        v = x[k]
        j = i - 1
        while j >= 0 and x[order[j]] > v:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = k


@njit(**JIT)
def _find_neighbour(code, x, w, scale, xx, nbr_row, nbr_start, nbr_flat, levels):
    """iq1_find_best_neighbour2 for one group of 8: over the code's list in order,
    d2 = Σ w*diff*diff with diff = scale*xx[level] - x; the first strict minimum below FLT_MAX.
    Returns the grid index, or -1 when nothing is found."""
    r = nbr_row[code]
    best_d2 = FLT_MAX
    best = -1
    for p in range(nbr_start[r], nbr_start[r + 1]):
        k = nbr_flat[p]
        d2 = ZERO
        for i in range(8):
            diff = scale * xx[levels[k, i]] - x[i]
            d2 += w[i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = k
    return best


@njit(**JIT)
def _grid_fix(L, x, w, scale, xxs, index, kmap, nbr_row, nbr_start, nbr_flat, levels):
    """Each group of 8 (group g shifted by xxs[g]) to its codebook index; an off-grid group
    takes its best neighbour. Returns (all on the grid, a group found no neighbour)."""
    on = True
    lost = False
    for g in range(index.shape[0]):
        code = 0
        for i in range(8):
            code |= np.int64(L[8 * g + i]) << (2 * i)
        k = kmap[code]
        if k < 0:
            on = False
            k = _find_neighbour(code, x[8 * g:8 * g + 8], w[8 * g:8 * g + 8], scale, xxs[g],
                                nbr_row, nbr_start, nbr_flat, levels)
            if k < 0:
                lost = True
                k = 0
        index[g] = k
    return on, lost


@njit(**INLINE)
def _refit(index, x, w, xxs, levels):
    """sumqx += w*q*x; sumq2 += w*q*q over the sub-block, q = xx[level] of the chosen points."""
    sumqx = ZERO
    sumq2 = ZERO
    for g in range(index.shape[0]):
        k = index[g]
        for i in range(8):
            q = xxs[g, levels[k, i]]
            sumqx += w[8 * g + i] * q * x[8 * g + i]
            sumq2 += w[8 * g + i] * q * q
    return sumqx, sumq2


@njit(**INLINE)
def _put_u16(o, at, v):
    o[at] = np.uint8(v & 0xFF)
    o[at + 1] = np.uint8((v >> 8) & 0xFF)


# ------------------------------------------------------------------------------------ IQ1_S

@njit(**JIT)
def _iq1s_sub(x, w, order, xs, ws, sumx, sumw, L, index, xxs, kmap, nbr_row, nbr_start, nbr_flat, levels):
    """One sub-block of 32: returns (scale, shift, abort code); writes index (4,).
    A skipped sub-block comes back as (0, 1) with index 0."""
    for g in range(4):
        index[g] = 0
    vmax = _max_abs(x)
    if vmax < EPS_S:
        return ZERO, 1, 0
    _stable_order(x, order)
    for j in range(32):
        xs[j] = x[order[j]]
        ws[j] = w[order[j]]
    sumx[0] = ZERO
    sumw[0] = ZERO
    for j in range(32):
        sumx[j + 1] = sumx[j] + ws[j] * xs[j]
        sumw[j + 1] = sumw[j] + ws[j]
    best = -FLT_MAX
    scale = vmax
    b1 = -1
    b2 = -1
    shift = 0
    for i1 in range(33):
        for i2 in range(i1, 33):
            a = sumx[i1] - sumx[0]
            b = sumx[i2] - sumx[i1]
            c = sumx[32] - sumx[i2]
            wa = sumw[i1] - sumw[0]
            wb = sumw[i2] - sumw[i1]
            wc = sumw[32] - sumw[i2]
            for s in range(2):
                x0 = XX[s, 0]
                x1 = XX[s, 1]
                x2 = XX[s, 2]
                sumqx = a * x0 + b * x1 + c * x2
                sumq2 = wa * x0 * x0 + wb * x1 * x1 + wc * x2 * x2
                if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    b1 = i1
                    b2 = i2
                    shift = 1 - 2 * s
    if b1 < 0 or b2 < 0 or shift == 0:
        return ZERO, 1, 0
    for j in range(32):
        L[order[j]] = 0 if j < b1 else (1 if j < b2 else 2)
    if scale < ZERO:
        for j in range(32):
            L[j] = 2 - L[j]
        scale = -scale
        shift = -shift
    xx = XX[0] if shift == 1 else XX[1]
    for g in range(4):
        xxs[g] = xx
    on, lost = _grid_fix(L, x, w, scale, xxs, index, kmap, nbr_row, nbr_start, nbr_flat, levels)
    sqx, sq2 = _refit(index, x, w, xxs, levels)
    if not on and sqx > ZERO and sq2 > ZERO:
        scale = sqx / sq2
    code = NO_NEIGHBOUR if lost else (NAN_SCALE if not scale >= ZERO else 0)
    return scale, shift, code


@njit(**PJIT)
def _quantize_iq1_s(x, imatrix, kmap, nbr_row, nbr_start, nbr_flat, levels, out, aborts):
    nrows, n = x.shape
    nsb = n // QK_K
    for r in prange(nrows):
        w = np.empty(QK_K, np.float32)
        order = np.empty(32, np.int64)
        xs = np.empty(32, np.float32)
        ws = np.empty(32, np.float32)
        sumx = np.empty(33, np.float32)
        sumw = np.empty(33, np.float32)
        L = np.empty(32, np.int64)
        index = np.empty((8, 4), np.int64)
        xxs = np.empty((4, 3), np.float32)
        scales = np.empty(8, np.float32)
        shifts = np.empty(8, np.int64)
        for sb in range(nsb):
            xb = x[r, sb * QK_K:(sb + 1) * QK_K]
            _weights(xb, imatrix[sb * QK_K:(sb + 1) * QK_K], True, w)
            for ib in range(8):
                s, sh, code = _iq1s_sub(xb[32 * ib:32 * ib + 32], w[32 * ib:32 * ib + 32], order, xs, ws,
                                        sumx, sumw, L, index[ib], xxs, kmap, nbr_row, nbr_start, nbr_flat, levels)
                scales[ib] = s
                shifts[ib] = sh
                aborts[r, 8 * sb + ib] = code
            max_scale = ZERO
            for ib in range(8):
                max_scale = max_scale if max_scale > scales[ib] else scales[ib]
            d = max_scale / FIFTEEN
            dbits = np.int64(fp32_to_fp16_bits(d * FUDGE_S))
            id_ = ONE / d
            zero = max_scale == ZERO
            o = out[r, sb * I1S_TS:(sb + 1) * I1S_TS]
            _put_u16(o, I1S_D, 0 if zero else dbits)
            for ib in range(8):
                l = np.int64(nearest_int(HALF * (id_ * scales[ib] - ONE)))
                l = max(0, min(7, l))
                if shifts[ib] == -1:
                    l |= 8
                if zero:
                    l = 0
                qh = l << 12
                for g in range(4):
                    k = index[ib, g]
                    o[I1S_QS + 4 * ib + g] = np.uint8(k & 255)
                    qh |= (k >> 8) << (3 * g)
                _put_u16(o, I1S_QH + 2 * ib, qh)


# ------------------------------------------------------------------------------------ IQ1_M

@njit(**JIT)
def _iq1m_sub(x, w, order, tqx, tq2, pre_qx, pre_q2, cur_qx, cur_q2, L, index, xxs,
              kmap, nbr_row, nbr_start, nbr_flat, levels):
    """One sub-block of 16 (two groups of 8, each with its own shift): returns (scale, shift
    pattern k, abort code); writes index (2,) and xxs (the groups' shifted levels).
    k = 0 (+,+), 1 (+,-), 2 (-,+), 3 (-,-); a skipped sub-block comes back as (0, 0), index 0."""
    for g in range(2):
        index[g] = 0
    vmax = _max_abs(x)
    if vmax < EPS_M:
        return ZERO, 0, 0
    _stable_order(x, order)
    # per sorted position j, run r and pattern k: the terms w*xx[r]*x and w*xx[r]*xx[r], with xx
    # the +delta levels or the -delta ones as pattern k gives the half the value came from
    for j in range(16):
        xj = x[order[j]]
        wj = w[order[j]]
        h = order[j] < 8
        for rr in range(3):
            p = wj * XX[0, rr]
            m = wj * XX[1, rr]
            pqx = p * xj
            mqx = m * xj
            pq2 = p * XX[0, rr]
            mq2 = m * XX[1, rr]
            tqx[j, rr, 0] = pqx
            tq2[j, rr, 0] = pq2
            tqx[j, rr, 1] = pqx if h else mqx
            tq2[j, rr, 1] = pq2 if h else mq2
            tqx[j, rr, 2] = mqx if h else pqx
            tq2[j, rr, 2] = mq2 if h else pq2
            tqx[j, rr, 3] = mqx
            tq2[j, rr, 3] = mq2
    # run 0 sums over the first i1 positions
    for k in range(4):
        pre_qx[0, k] = ZERO
        pre_q2[0, k] = ZERO
    for j in range(16):
        for k in range(4):
            pre_qx[j + 1, k] = pre_qx[j, k] + tqx[j, 0, k]
            pre_q2[j + 1, k] = pre_q2[j, k] + tq2[j, 0, k]
    best = -FLT_MAX
    scale = vmax
    b1 = -1
    b2 = -1
    bk = -1
    for i1 in range(17):
        # cur: the sums over positions < i2 (run 0 below i1, run 1 from i1), built as i2 grows;
        # the positions from i2 on (run 2) are then added in order on top: the sums are the spec's
        # term-by-term sums from position 0.
        for k in range(4):
            cur_qx[k] = pre_qx[i1, k]
            cur_q2[k] = pre_q2[i1, k]
        for i2 in range(i1, 17):
            for k in range(4):
                a = cur_qx[k]
                c = cur_q2[k]
                for j in range(i2, 16):
                    a += tqx[j, 2, k]
                    c += tq2[j, 2, k]
                if c > ZERO and a * a > best * c:
                    scale = a / c
                    best = scale * a
                    b1 = i1
                    b2 = i2
                    bk = k
            if i2 < 16:
                for k in range(4):
                    cur_qx[k] += tqx[i2, 1, k]
                    cur_q2[k] += tq2[i2, 1, k]
    if b1 < 0 or b2 < 0 or bk < 0:
        return ZERO, 0, 0
    for j in range(16):
        L[order[j]] = 0 if j < b1 else (1 if j < b2 else 2)
    if scale < ZERO:
        for j in range(16):
            L[j] = 2 - L[j]
        scale = -scale
        bk = 3 - bk
    xxs[0] = XX[0] if bk < 2 else XX[1]
    xxs[1] = XX[0] if bk % 2 == 0 else XX[1]
    on, lost = _grid_fix(L, x, w, scale, xxs, index, kmap, nbr_row, nbr_start, nbr_flat, levels)
    sqx, sq2 = _refit(index, x, w, xxs, levels)
    if not on and sqx > ZERO and sq2 > ZERO:
        scale = sqx / sq2
    code = NO_NEIGHBOUR if lost else (NAN_SCALE if not scale >= ZERO else 0)
    return scale, bk, code


@njit(**PJIT)
def _quantize_iq1_m(x, imatrix, use_imatrix, kmap, nbr_row, nbr_start, nbr_flat, levels, out, aborts):
    nrows, n = x.shape
    nsb = n // QK_K
    for r in prange(nrows):
        w = np.empty(QK_K, np.float32)
        order = np.empty(16, np.int64)
        tqx = np.empty((16, 3, 4), np.float32)
        tq2 = np.empty((16, 3, 4), np.float32)
        pre_qx = np.empty((17, 4), np.float32)
        pre_q2 = np.empty((17, 4), np.float32)
        cur_qx = np.empty(4, np.float32)
        cur_q2 = np.empty(4, np.float32)
        L = np.empty(16, np.int64)
        index = np.empty((16, 2), np.int64)
        xxs = np.empty((2, 3), np.float32)
        scales = np.empty(16, np.float32)
        shifts = np.empty(16, np.int64)
        ls = np.empty(16, np.int64)
        for sb in range(nsb):
            xb = x[r, sb * QK_K:(sb + 1) * QK_K]
            qw = imatrix[sb * QK_K:(sb + 1) * QK_K] if use_imatrix else imatrix
            _weights(xb, qw, use_imatrix, w)
            for ib in range(16):
                s, k, code = _iq1m_sub(xb[16 * ib:16 * ib + 16], w[16 * ib:16 * ib + 16], order, tqx, tq2,
                                       pre_qx, pre_q2, cur_qx, cur_q2, L, index[ib], xxs,
                                       kmap, nbr_row, nbr_start, nbr_flat, levels)
                scales[ib] = s
                shifts[ib] = k
                aborts[r, 16 * sb + ib] = code
            max_scale = ZERO
            for ib in range(16):
                max_scale = max_scale if max_scale > scales[ib] else scales[ib]
            zero = max_scale == ZERO
            d = max_scale / FIFTEEN
            id_ = ONE / d
            for ib in range(16):
                ls[ib] = max(0, min(7, np.int64(nearest_int(HALF * (id_ * scales[ib] - ONE)))))
            # the least-squares super-scale over all 256 values (sub-block, group, position)
            sumqx = ZERO
            sumq2 = ZERO
            for ib in range(16):
                mult = F32(2 * ls[ib] + 1)
                kk = shifts[ib]
                for g in range(2):
                    plus = kk < 2 if g == 0 else kk % 2 == 0
                    srow = 0 if plus else 1
                    kidx = index[ib, g]
                    for j in range(8):
                        q = XX[srow, levels[kidx, j]] * mult
                        p = 16 * ib + 8 * g + j
                        sumqx += w[p] * q * xb[p]
                        sumq2 += w[p] * q * q
            if sumq2 > ZERO:
                d = sumqx / sumq2
            dbits = np.int64(fp32_to_fp16_bits(d * FUDGE_M))
            o = out[r, sb * I1M_TS:(sb + 1) * I1M_TS]
            for ib in range(16):
                k0 = index[ib, 0]
                k1 = index[ib, 1]
                o[I1M_QS + 2 * ib] = np.uint8(k0 & 255)
                o[I1M_QS + 2 * ib + 1] = np.uint8(k1 & 255)
                qh = (k0 >> 8) | ((k1 >> 8) << 4)
                if not zero:
                    kk = shifts[ib]
                    qh |= (0x80 if kk % 2 == 1 else 0) | (0x08 if kk >= 2 else 0)
                o[I1M_QH + ib] = np.uint8(qh)
            for i in range(4):
                sc = 0
                if not zero:
                    for m in range(4):
                        sc |= ls[4 * i + m] << (3 * m)
                    sc |= ((dbits >> (4 * i)) & 0xF) << 12
                _put_u16(o, I1M_SC + 2 * i, sc)


# ------------------------------------------------------------------------------------ wrappers

def _refuse(aborts, fmt, n, sub):
    if not aborts.any():
        return
    flat = aborts.reshape(-1)
    a = _Aborts(flat.size)
    for code, reason in REASONS.items():
        a.add(flat == code, reason)
    a.raise_if_any(fmt, aborts.shape[0], n, sub)


def quantize_iq1_s(x, imatrix=None):
    if imatrix is None:
        raise InputError("IQ1_S requires an importance matrix (imatrix=...), none was given")
    x = np.ascontiguousarray(x, dtype=np.float32)
    im = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    nrows, n = x.shape
    out = np.empty((nrows, n // QK_K * I1S_TS), np.uint8)
    aborts = np.zeros((nrows, n // 32), np.int8)
    _quantize_iq1_s(x, im, *_lattice(), out, aborts)
    _refuse(aborts, "IQ1_S", n, 32)
    return out


def quantize_iq1_m(x, imatrix=None):
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.shape
    if imatrix is None:
        im, use = np.zeros(1, np.float32), False
    else:
        im, use = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1), True
    out = np.empty((nrows, n // QK_K * I1M_TS), np.uint8)
    aborts = np.zeros((nrows, n // 16), np.int8)
    _quantize_iq1_m(x, im, use, *_lattice(), out, aborts)
    _refuse(aborts, "IQ1_M", n, 16)
    return out


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "IQ1_S IQ1_M"}
QUANTIZE = {"IQ1_S": quantize_iq1_s, "IQ1_M": quantize_iq1_m}
