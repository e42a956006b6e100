"""Numba twin of refquant/ggml/kquants.py: Q2_K Q3_K Q4_K Q5_K Q6_K and Q8_K, bit-exact with it.

Rows run in parallel (prange); each row's super-blocks in order, each with C's loops over
sub-blocks and positions (float32, fastmath off: no reassociation, no FMA contraction). The
byte layouts are drawn in the spec module's docstring."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..api import checked
from ..numerics import (F32, JIT, ONE, U64, ZERO, bits_f32, f32_bits, fp16_to_fp32, fp32_to_fp16_bits,
                        nearest_int, key_range, keys_nonfinite, order_key_inverse as _order_key_inverse)
from .search import (GROUP_MAX_EPS, make_q3_quants, make_qp_quants,
                     make_qx_quants, make_qx_quants_lanes, make_qx_quants_x2_lanes, NCAND, LANES,
                     make_qkx2_quants_lanes)
from refquant.registry import get_format

# super-block size, type sizes and the fields' byte offsets, from the declared layouts
# (refquant.ggml.layout)
_L = {name: get_format(name).layout for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")}
QK_K = _L["Q2_K"].block_size
assert all(L.block_size == QK_K for L in _L.values())


def _sizes(name, *fields):
    """The type size of `name`, then the byte offsets of `fields` in its block."""
    return (_L[name].type_size, *(_L[name].offset(f) for f in fields))


Q2_TS, Q2_SCALES, Q2_QS, Q2_D, Q2_DMIN = _sizes("Q2_K", "scales", "qs", "d", "dmin")
Q3_TS, Q3_HMASK, Q3_QS, Q3_SCALES, Q3_D = _sizes("Q3_K", "hmask", "qs", "scales", "d")
Q4_TS, Q4_D, Q4_DMIN, Q4_SCALES, Q4_QS = _sizes("Q4_K", "d", "dmin", "scales", "qs")
Q5_TS, Q5_QH, Q5_QS = _sizes("Q5_K", "qh", "qs")
Q6_TS, Q6_QL, Q6_QH, Q6_SCALES, Q6_D = _sizes("Q6_K", "ql", "qh", "scales", "d")
Q8_TS, Q8_D, Q8_QS, Q8_BSUMS = _sizes("Q8_K", "d", "qs", "bsums")
# Q4_K and Q5_K share their kernels: d, dmin and scales sit at the same offsets in both
assert all(_L["Q5_K"].offset(f) == _L["Q4_K"].offset(f) for f in ("d", "dmin", "scales"))

PJIT = dict(JIT, parallel=True)
F15 = F32(15)
F63 = F32(63)


@njit(**dict(JIT, inline="always"))
def _round_fp16(v):
    """The fp16 bits of v and the float32 the decoder reads back."""
    h = fp32_to_fp16_bits(v)
    return h, fp16_to_fp32(np.uint8(h & 0xFF), np.uint8(h >> 8))


@njit(**dict(JIT, inline="always"))
def _store_u16(o, at, h):
    o[at] = np.uint8(h & 0xFF)
    o[at + 1] = np.uint8(h >> 8)


@njit(**dict(JIT, inline="always"))
def _impl_weights(x, qw, sigma2_factor, w):
    """weight[l] = qw[l] * sqrtf(sigma2 + x[l]*x[l]), sigma2 = factor * Σx² / 256 (in order)."""
    sum_x2 = ZERO
    for l in range(QK_K):
        sum_x2 += x[l] * x[l]
    sigma2 = sigma2_factor * sum_x2 / F32(QK_K)
    for l in range(QK_K):
        w[l] = qw[l] * np.sqrt(sigma2 + x[l] * x[l])


@njit(**dict(JIT, inline="always"))
def _pack_2bit(L, qs, at):
    """qs[32h + l] = L[128h + l] | L[128h + l + 32] << 2 | ... << 4 | ... << 6."""
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            qs[at + 32 * h + l] = np.uint8(L[j] | (L[j + 32] << 2) | (L[j + 64] << 4) | (L[j + 96] << 6))


@njit(**dict(JIT, inline="always"))
def _scan_max_from_zero(v):
    m = ZERO
    for j in range(v.shape[0]):
        if v[j] > m:
            m = v[j]
    return m


# --------------------------------------------------------------------------- Q2_K

@njit(**dict(JIT, inline="always"))
def _fill_lanes(x, r, b, nb, nsub, sub, nl, xt, wt):
    """Sub-block j of super-block b + g (g < nl // nsub; past the row's end, its last
    super-block again, whose results are not used) into lane g * nsub + j of xt (position i at
    xt[i * nl + lane]); wt gets |x| (the weights of Q2_K's search without an imatrix)."""
    for g in range(nl // nsub):
        bb = min(b + g, nb - 1)
        for j in range(nsub):
            for i in range(sub):
                xv = x[r, bb * QK_K + sub * j + i]
                xt[i * nl + g * nsub + j] = xv
                wt[i * nl + g * nsub + j] = abs(xv)


@njit(**dict(JIT, inline="always"))
def _fill_lanes_imatrix(x, imatrix, r, b, nb, nsub, sub, factor, nl, xt, wt, wg):
    """The imatrix paths' lanes: each super-block's weights first (_impl_weights with C's
    sigma2 factor, into wg[g * QK_K:]), then sub-block j of super-block b + g into lane
    g * nsub + j of xt and wt (as _fill_lanes)."""
    for g in range(nl // nsub):
        bb = min(b + g, nb - 1)
        _impl_weights(x[r, bb * QK_K:(bb + 1) * QK_K], imatrix[bb * QK_K:(bb + 1) * QK_K], factor,
                      wg[g * QK_K:(g + 1) * QK_K])
        for j in range(nsub):
            for i in range(sub):
                xt[i * nl + g * nsub + j] = x[r, bb * QK_K + sub * j + i]
                wt[i * nl + g * nsub + j] = wg[g * QK_K + sub * j + i]


@njit(**PJIT)
def _quantize_q2_k(x, imatrix, use_imatrix, out, nl):
    """The sub-blocks' make_qkx2_quants searches of nl // 16 super-blocks run side by side
    (search.make_qkx2_quants_lanes, nl lanes at run time: vectorised across blocks, each
    block's operations C's in C's order), with and without an imatrix."""
    nrows, n = x.shape
    nb = n // QK_K
    ts = Q2_TS
    per = nl // 16
    for r in prange(nrows):
        L = np.empty(QK_K, np.int32)
        scales = np.empty(16, np.float32)
        mins = np.empty(16, np.float32)
        sw = np.empty(16, np.float32)
        ls = np.empty(16, np.int32)
        lm = np.empty(16, np.int32)
        xt = np.empty(16 * nl, np.float32)
        wg = np.empty(nl // 16 * QK_K, np.float32)
        wt = np.empty(16 * nl, np.float32)
        Lt = np.empty(16 * nl, np.int32)
        lt = np.empty(16 * nl, np.int32)
        v = np.empty((15, nl), np.float32)
        upd = np.empty(nl, np.int32)
        sc_all = np.empty(nl, np.float32)
        mn_all = np.empty(nl, np.float32)
        for b in range(nb):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * ts:(b + 1) * ts]
            if not use_imatrix:
                g = b % per
                if g == 0:
                    _fill_lanes(x, r, b, nb, 16, 16, nl, xt, wt)
                    make_qkx2_quants_lanes(xt, wt, 16, nl, 3, F32(-0.5), F32(0.1), 15, True, Lt, lt, v, upd,
                                           sc_all, mn_all)
                for j in range(16):
                    scales[j] = sc_all[g * 16 + j]
                    mins[j] = mn_all[g * 16 + j]
                    for i in range(16):
                        L[16 * j + i] = Lt[i * nl + g * 16 + j]
                max_scale = _scan_max_from_zero(scales)
                max_min = _scan_max_from_zero(mins)
                if max_scale > ZERO:
                    iscale = F15 / max_scale
                    for j in range(16):
                        ls[j] = nearest_int(iscale * scales[j])
                    d = max_scale / F15
                else:
                    for j in range(16):
                        ls[j] = 0
                    d = ZERO
                if max_min > ZERO:
                    imin = F15 / max_min
                    for j in range(16):
                        lm[j] = nearest_int(imin * mins[j])
                    dmin = max_min / F15
                else:
                    for j in range(16):
                        lm[j] = 0
                    dmin = ZERO
            else:
                g = b % per
                if g == 0:
                    _fill_lanes_imatrix(x, imatrix, r, b, nb, 16, 16, ONE, nl, xt, wt, wg)
                    make_qkx2_quants_lanes(xt, wt, 16, nl, 3, F32(-0.9), F32(0.05), 36, False, Lt, lt, v, upd,
                                           sc_all, mn_all)
                for j in range(16):
                    t = ZERO
                    for l in range(16):
                        t += wg[g * QK_K + 16 * j + l]
                    sw[j] = t
                    scales[j] = sc_all[g * 16 + j]
                    mins[j] = mn_all[g * 16 + j]
                    for i in range(16):
                        L[16 * j + i] = Lt[i * nl + g * 16 + j]
                d = make_qp_quants(scales, 15, sw, ls)
                dmin = make_qp_quants(mins, 15, sw, lm)
            for j in range(16):
                o[Q2_SCALES + j] = np.uint8(((ls[j] & 0xFF) | (lm[j] << 4)) & 0xFF)
            dh, d = _round_fp16(d)
            mh, dmin = _round_fp16(dmin)
            for j in range(16):
                sc = np.int32(o[Q2_SCALES + j])
                dl = d * F32(sc & 0xF)
                if dl == ZERO:
                    continue
                ml = dmin * F32(sc >> 4)
                for l in range(16):
                    q = nearest_int((xb[16 * j + l] + ml) / dl)
                    L[16 * j + l] = max(0, min(3, q))
            _pack_2bit(L, o, Q2_QS)
            _store_u16(o, Q2_D, dh)
            _store_u16(o, Q2_DMIN, mh)


@njit(**PJIT)
def _dequantize_q2_k(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // Q2_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * Q2_TS:(b + 1) * Q2_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[Q2_D], o[Q2_D + 1])
            dmin = fp16_to_fp32(o[Q2_DMIN], o[Q2_DMIN + 1])
            for h in range(2):
                for k in range(4):
                    for half in range(2):
                        sc = np.int32(o[Q2_SCALES + 8 * h + 2 * k + half])
                        dl = d * F32(sc & 0xF)
                        ml = dmin * F32(sc >> 4)
                        for l in range(16):
                            q = (np.int32(o[Q2_QS + 32 * h + 16 * half + l]) >> (2 * k)) & 3
                            y[128 * h + 32 * k + 16 * half + l] = dl * F32(q) - ml


# --------------------------------------------------------------------------- Q3_K

@njit(**PJIT)
def _quantize_q3_k(x, imatrix, use_imatrix, out):
    nrows, n = x.shape
    nb = n // QK_K
    ts = Q3_TS
    for r in prange(nrows):
        L = np.empty(QK_K, np.int32)
        w = np.empty(QK_K, np.float32)
        scales = np.empty(16, np.float32)
        sw = np.empty(16, np.float32)
        ls = np.empty(16, np.int32)
        for b in range(nb):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * ts:(b + 1) * ts]
            for k in range(ts):
                o[k] = 0
            if not use_imatrix:
                for j in range(16):
                    scales[j] = make_q3_quants(xb[16 * j:16 * j + 16], 4, True, L[16 * j:16 * j + 16])
                amax = ZERO
                max_scale = ZERO
                for j in range(16):
                    a = abs(scales[j])
                    if a > amax:
                        amax = a
                        max_scale = scales[j]
                if max_scale != ZERO:
                    iscale = F32(-32) / max_scale
                    for j in range(16):
                        l8 = nearest_int(iscale * scales[j]) & 0xFF      # int8_t l = nearest_int(...)
                        l8 = l8 - 256 if l8 > 127 else l8
                        ls[j] = max(-32, min(31, l8)) + 32
                    d = ONE / iscale
                    _pack_q3_scales(ls, o, Q3_SCALES)
                else:
                    d = ZERO
            else:
                _impl_weights(xb, imatrix[b * QK_K:(b + 1) * QK_K], F32(2), w)
                for j in range(16):
                    t = ZERO
                    for l in range(16):
                        t += w[16 * j + l]
                    sw[j] = t
                    scales[j] = make_qx_quants(xb[16 * j:16 * j + 16], 4, w[16 * j:16 * j + 16], L[16 * j:16 * j + 16])
                d = make_qx_quants(scales, 32, sw, ls)
                _pack_q3_scales(ls, o, Q3_SCALES)
            dh, d = _round_fp16(d)
            for j in range(16):
                sc = _q3_scale(o, Q3_SCALES, j) - 32
                dl = d * F32(sc)
                if dl == ZERO:
                    continue
                for l in range(16):
                    q = nearest_int(xb[16 * j + l] / dl)
                    L[16 * j + l] = max(-4, min(3, q)) + 4
            # `if (L[j] > 3) { hmask[j%32] |= 1 << j/32; L[j] -= 4; }`: L[j] is 0..7, so its bit 2;
            # without branches, over the 32 bytes in a loop of a length known at run time (vectorised)
            for m in range(U64(L.shape[0] >> 3)):
                h = np.int32(0)
                for k in range(8):
                    v = L[U64(32 * k) + m]
                    h |= (v >> 2) << k
                    L[U64(32 * k) + m] = v & 3
                o[Q3_HMASK + m] = np.uint8(h)
            _pack_2bit(L, o, Q3_QS)
            _store_u16(o, Q3_D, dh)


@njit(**dict(JIT, inline="always"))
def _pack_q3_scales(ls, o, at):
    for j in range(16):
        l = ls[j]
        if j < 8:
            o[at + j] = np.uint8(l & 0xF)
        else:
            o[at + j - 8] |= np.uint8((l & 0xF) << 4)
        o[at + 8 + j % 4] |= np.uint8(((l >> 4) << (2 * (j // 4))) & 0xFF)


@njit(**dict(JIT, inline="always"))
def _q3_scale(o, at, j):
    low = (np.int32(o[at + j]) & 0xF) if j < 8 else (np.int32(o[at + j - 8]) >> 4)
    return low | (((np.int32(o[at + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)


@njit(**PJIT)
def _dequantize_q3_k(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // Q3_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * Q3_TS:(b + 1) * Q3_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[Q3_D], o[Q3_D + 1])
            for j in range(16):
                dl = d * F32(_q3_scale(o, Q3_SCALES, j) - 32)
                h, rest = divmod(16 * j, 128)
                k, base = divmod(rest, 32)
                for l in range(16):
                    i = 16 * j + l
                    q = (np.int32(o[Q3_QS + 32 * h + base + l]) >> (2 * k)) & 3
                    if (np.int32(o[Q3_HMASK + i % 32]) >> (i // 32)) & 1 == 0:
                        q -= 4
                    y[i] = dl * F32(q)


# --------------------------------------------------------------------------- Q4_K, Q5_K

@njit(**dict(JIT, inline="always"))
def _scale_min_k4(o, at, j):
    """get_scale_min_k4: the 6-bit scale and min of sub-block j."""
    if j < 4:
        return np.int32(o[at + j]) & 63, np.int32(o[at + j + 4]) & 63
    sc = (np.int32(o[at + j + 4]) & 0xF) | ((np.int32(o[at + j - 4]) >> 6) << 4)
    m = (np.int32(o[at + j + 4]) >> 4) | ((np.int32(o[at + j]) >> 6) << 4)
    return sc, m


@njit(**dict(JIT, inline="always"))
def _fill_lanes_av(x, r, b, nb, nl, xt, wt):
    """_fill_lanes for Q4_K/Q5_K's sub-blocks of 32 (8 per super-block): the weights are
    av_x + |x[l]|, av_x = sqrtf(Σ x² / 32) over the sub-block (the sum in order)."""
    for g in range(nl // 8):
        bb = min(b + g, nb - 1)
        for j in range(8):
            x0 = bb * QK_K + 32 * j
            sum_x2 = ZERO
            for l in range(32):
                sum_x2 += x[r, x0 + l] * x[r, x0 + l]
            av_x = np.sqrt(sum_x2 / F32(32))
            for i in range(32):
                xv = x[r, x0 + i]
                xt[i * nl + g * 8 + j] = xv
                wt[i * nl + g * 8 + j] = av_x + abs(xv)


@njit(**PJIT)
def _quantize_q4_k_q5_k(x, imatrix, use_imatrix, out, five, nl):
    """The sub-blocks' make_qkx2_quants searches of nl // 8 super-blocks run side by side
    (search.make_qkx2_quants_lanes, as Q2_K's), with and without an imatrix."""
    nrows, n = x.shape
    nb = n // QK_K
    ts = Q5_TS if five else Q4_TS
    nmax = 31 if five else 15
    rmin = F32(-0.5) if five else F32(-1.0)
    nstep = 15 if five else 20
    per = nl // 8
    for r in prange(nrows):
        L = np.empty(QK_K, np.int32)
        scales = np.empty(8, np.float32)
        mins = np.empty(8, np.float32)
        sw = np.empty(8, np.float32)
        ls = np.empty(8, np.int32)
        lm = np.empty(8, np.int32)
        xt = np.empty(32 * nl, np.float32)
        wg = np.empty(nl // 8 * QK_K, np.float32)
        wt = np.empty(32 * nl, np.float32)
        Lt = np.empty(32 * nl, np.int32)
        lt = np.empty(32 * nl, np.int32)
        v = np.empty((15, nl), np.float32)
        upd = np.empty(nl, np.int32)
        sc_all = np.empty(nl, np.float32)
        mn_all = np.empty(nl, np.float32)
        for b in range(nb):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * ts:(b + 1) * ts]
            for k in range(ts):
                o[k] = 0
            if not use_imatrix:
                g = b % per
                if g == 0:
                    _fill_lanes_av(x, r, b, nb, nl, xt, wt)
                    make_qkx2_quants_lanes(xt, wt, 32, nl, nmax, rmin, F32(0.1), nstep, False, Lt, lt, v, upd,
                                           sc_all, mn_all)
                for j in range(8):
                    scales[j] = sc_all[g * 8 + j]
                    mins[j] = mn_all[g * 8 + j]
                    for i in range(32):
                        L[32 * j + i] = Lt[i * nl + g * 8 + j]
                max_scale = _scan_max_from_zero(scales)
                max_min = _scan_max_from_zero(mins)
                inv_scale = F63 / max_scale if max_scale > ZERO else ZERO
                inv_min = F63 / max_min if max_min > ZERO else ZERO
                for j in range(8):
                    ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # uint8_t, MIN(63, .)
                    lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
                d = max_scale / F63
                dmin = max_min / F63
            else:
                g = b % per
                if g == 0:
                    _fill_lanes_imatrix(x, imatrix, r, b, nb, 8, 32, F32(2), nl, xt, wt, wg)
                    make_qkx2_quants_lanes(xt, wt, 32, nl, nmax, F32(-0.9), F32(0.05), 36, False, Lt, lt, v, upd,
                                           sc_all, mn_all)
                for j in range(8):
                    t = ZERO
                    for l in range(32):
                        t += wg[g * QK_K + 32 * j + l]
                    sw[j] = t
                    scales[j] = sc_all[g * 8 + j]
                    mins[j] = mn_all[g * 8 + j]
                    for i in range(32):
                        L[32 * j + i] = Lt[i * nl + g * 8 + j]
                d = make_qp_quants(scales, 63, sw, ls)
                dmin = make_qp_quants(mins, 63, sw, lm)
                if five:  # Q5_K's impl clamps to 63; Q4_K's stores the uint8 as it is
                    for j in range(8):
                        ls[j] = min(63, ls[j])
                        lm[j] = min(63, lm[j])
            for j in range(8):   # pack_scale_min_k4 (the block's 12 scales bytes)
                if j < 4:
                    o[Q4_SCALES + j] = np.uint8(ls[j] & 0xFF)
                    o[Q4_SCALES + j + 4] = np.uint8(lm[j] & 0xFF)
                else:
                    o[Q4_SCALES + j + 4] = np.uint8(((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF)
                    o[Q4_SCALES + j - 4] |= np.uint8(((ls[j] >> 4) << 6) & 0xFF)
                    o[Q4_SCALES + j] |= np.uint8(((lm[j] >> 4) << 6) & 0xFF)
            dh, d = _round_fp16(d)
            mh, dmin = _round_fp16(dmin)
            _store_u16(o, Q4_D, dh)
            _store_u16(o, Q4_DMIN, mh)
            for j in range(8):
                sc, m = _scale_min_k4(o, Q4_SCALES, j)
                dl = d * F32(sc)
                if dl == ZERO:
                    continue
                dm = dmin * F32(m)
                for l in range(32):
                    q = nearest_int((xb[32 * j + l] + dm) / dl)
                    L[32 * j + l] = max(0, min(nmax, q))
            at = Q4_QS
            if five:
                for j in range(QK_K):
                    if L[j] > 15:
                        o[Q5_QH + j % 32] |= np.uint8(1 << (j // 32))
                        L[j] -= 16
                at = Q5_QS
            for c in range(4):
                for l in range(32):
                    o[at + 32 * c + l] = np.uint8(L[64 * c + l] | (L[64 * c + 32 + l] << 4))


@njit(**PJIT)
def _dequantize_q4_k_q5_k(data, out, five, n32):
    """Per pair of sub-blocks (the low and high nibbles of the same 32 bytes), their scales
    first, then one loop over the 32 positions that writes both, with n32 = 32 passed at run
    time, unsigned offsets and constant shifts: LLVM vectorises it in 32-bit lanes (see
    ..numerics)."""
    nrows = data.shape[0]
    ts = Q5_TS if five else Q4_TS
    at = Q5_QS if five else Q4_QS
    nb = data.shape[1] // ts
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            d = fp16_to_fp32(o[Q4_D], o[Q4_D + 1])
            dmin = fp16_to_fp32(o[Q4_DMIN], o[Q4_DMIN + 1])
            q0 = U64(b * ts + at)
            h0 = U64(b * ts + Q5_QH)
            y0 = U64(b * QK_K)
            for p in range(4):
                sc, m = _scale_min_k4(o, Q4_SCALES, 2 * p)
                da = d * F32(sc)
                ma = dmin * F32(m)
                sc, m = _scale_min_k4(o, Q4_SCALES, 2 * p + 1)
                db = d * F32(sc)
                mb = dmin * F32(m)
                qp = q0 + U64(32 * p)
                ya = y0 + U64(64 * p)
                yb = ya + U64(32)
                bit_a = np.uint8(1 << (2 * p))   # Q5_K: the high bit of sub-block 2p in qh
                bit_b = np.uint8(2 << (2 * p))
                for l in range(U64(n32)):
                    qs = data[r, qp + l]
                    lo = np.int32(qs & np.uint8(0xF))
                    hi = np.int32(qs >> np.uint8(4))
                    if five:
                        qh = data[r, h0 + l]
                        lo |= np.int32(16) if qh & bit_a else np.int32(0)
                        hi |= np.int32(16) if qh & bit_b else np.int32(0)
                    out[r, ya + l] = da * F32(lo) - ma
                    out[r, yb + l] = db * F32(hi) - mb


# --------------------------------------------------------------------------- Q6_K

@njit(**PJIT)
def _quantize_q6_k(x, imatrix, use_imatrix, out):
    nrows, n = x.shape
    nb = n // QK_K
    ts = Q6_TS
    for r in prange(nrows):
        L = np.empty(QK_K, np.int32)
        w = np.empty(16, np.float32)
        scales = np.empty(16, np.float32)
        isc = np.empty(NCAND, np.float32)
        slx = np.empty(NCAND, np.float32)
        sl2 = np.empty(NCAND, np.float32)
        for b in range(nb):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * ts:(b + 1) * ts]
            amax = ZERO
            max_scale = ZERO
            for j in range(16):
                if use_imatrix:
                    s = make_qx_quants_lanes(xb[16 * j:16 * j + 16], 32,
                                             imatrix[b * QK_K + 16 * j:b * QK_K + 16 * j + 16],
                                             L[16 * j:16 * j + 16], isc, slx, sl2)
                else:
                    s = make_qx_quants_x2_lanes(xb[16 * j:16 * j + 16], 32, w, L[16 * j:16 * j + 16],
                                                isc, slx, sl2)
                scales[j] = s
                a = abs(s)
                if a > amax:
                    amax = a
                    max_scale = s
            if amax < GROUP_MAX_EPS:
                for k in range(ts):
                    o[k] = 0
                continue
            iscale = F32(-128) / max_scale
            dh, d = _round_fp16(ONE / iscale)
            _store_u16(o, Q6_D, dh)
            for j in range(16):
                sc = min(127, nearest_int(iscale * scales[j])) & 0xFF   # int8_t store
                o[Q6_SCALES + j] = np.uint8(sc)
                sc = sc - 256 if sc > 127 else sc
                dl = d * F32(sc)
                if dl == ZERO:
                    continue
                for l in range(16):
                    q = nearest_int(xb[16 * j + l] / dl)
                    L[16 * j + l] = max(-32, min(31, q)) + 32
            for h in range(2):
                for l in range(32):
                    j = 128 * h + l
                    o[Q6_QL + 64 * h + l] = np.uint8((L[j] & 0xF) | ((L[j + 64] & 0xF) << 4))
                    o[Q6_QL + 64 * h + 32 + l] = np.uint8((L[j + 32] & 0xF) | ((L[j + 96] & 0xF) << 4))
                    o[Q6_QH + 32 * h + l] = np.uint8((L[j] >> 4) | ((L[j + 32] >> 4) << 2)
                                                   | ((L[j + 64] >> 4) << 4) | ((L[j + 96] >> 4) << 6))


@njit(**PJIT)
def _dequantize_q6_k(data, sdata, out):
    nrows = data.shape[0]
    nb = data.shape[1] // Q6_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * Q6_TS:(b + 1) * Q6_TS]
            so = sdata[r, b * Q6_TS:(b + 1) * Q6_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[Q6_D], o[Q6_D + 1])
            for h in range(2):
                for k in range(4):
                    for half in range(2):
                        dl = d * F32(so[Q6_SCALES + 8 * h + 2 * k + half])
                        for l in range(16 * half, 16 * half + 16):
                            low = np.int32(o[Q6_QL + 64 * h + 32 * (k & 1) + l])
                            low = (low >> 4) if k >= 2 else (low & 0xF)
                            q = (low | (((np.int32(o[Q6_QH + 32 * h + l]) >> (2 * k)) & 3) << 4)) - 32
                            y[128 * h + 32 * k + l] = dl * F32(q)


# --------------------------------------------------------------------------- Q8_K

@njit(**PJIT)
def _quantize_q8_k(x, out, qk, bad):
    """C's `if (ax > amax) { amax = ax; max = x[j]; }` from the block's smallest and largest
    values, found as integer min/max of order keys (numerics.order_key) in one loop of qk (QK_K
    at run time) with unsigned offsets, which LLVM vectorises (see ..numerics): C's max is the
    one of the two with the larger magnitude; only when both magnitudes are equal (x and -x, or
    one value throughout) is the first position holding it looked up (an integer min). The
    codes in a loop of the same kind; the group sums are integer sums, exact in any order. The
    key range also tests the input check's NaN and Inf (Backend.finite_in_kernel): bad[r] = 1
    for a row holding one (quantize then refuses the input; vec_dot uses the bytes, as C's)."""
    nrows, n = x.shape
    nb = n // QK_K
    ts = Q8_TS
    for r in prange(nrows):
        for b in range(nb):
            o = out[r, b * ts:(b + 1) * ts]
            x0 = U64(b * QK_K)
            kmin, kmax = key_range(x, r, x0, qk)
            if keys_nonfinite(kmin, kmax):
                bad[r] = 1              # the block is still computed as C does (vec_dot's activations)
            mhi = _order_key_inverse(kmax) & np.int32(0x7FFFFFFF)   # |the largest value|
            mlo = _order_key_inverse(kmin) & np.int32(0x7FFFFFFF)   # |the smallest value|
            amax = max(mhi, mlo)
            if amax == np.int32(0):   # amax == 0: every value is a zero
                for k in range(ts):
                    o[k] = 0
                continue
            if mhi != mlo:
                vmax = bits_f32(_order_key_inverse(kmax if mhi > mlo else kmin))
            else:
                first = np.int64(qk)
                for j in range(U64(qk)):
                    if np.int32(f32_bits(x[r, x0 + j]) & np.int32(0x7FFFFFFF)) == amax:
                        first = min(first, np.int64(j))
                vmax = x[r, x0 + U64(first)]
            iscale = F32(-127) / vmax
            o0 = U64(b * ts + Q8_QS)
            for j in range(U64(qk)):
                out[r, o0 + j] = np.uint8(min(np.int32(127), nearest_int(iscale * x[r, x0 + j])) & np.int32(0xFF))
            for g in range(16):
                s = np.int32(0)
                for l in range(16):
                    qv = np.int32(o[Q8_QS + 16 * g + l])
                    s += qv - 256 if qv > 127 else qv
                o[Q8_BSUMS + 2 * g] = np.uint8(s & 0xFF)
                o[Q8_BSUMS + 1 + 2 * g] = np.uint8((s >> 8) & 0xFF)
            u = f32_bits(ONE / iscale)
            for k in range(4):
                o[Q8_D + k] = np.uint8((u >> (8 * k)) & 0xFF)


@njit(**PJIT)
def _dequantize_q8_k(data, sdata, out, qk):
    """sdata: the same bytes viewed as int8; qk: QK_K at run time, with unsigned offsets, so that
    LLVM vectorises the loop over positions (see ..numerics)."""
    nrows = data.shape[0]
    nb = data.shape[1] // Q8_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * Q8_TS:(b + 1) * Q8_TS]
            d = bits_f32(np.int32(np.uint32(o[Q8_D]) | (np.uint32(o[Q8_D + 1]) << 8) | (np.uint32(o[Q8_D + 2]) << 16)
                                  | (np.uint32(o[Q8_D + 3]) << 24)))
            i0 = U64(b * Q8_TS + Q8_QS)
            y0 = U64(b * qk)
            for j in range(U64(qk)):
                out[r, y0 + j] = d * F32(sdata[r, i0 + j])


# --------------------------------------------------------------------------- the spec's signatures

def _c(x, dtype=None):
    return np.ascontiguousarray(x, dtype=dtype)


def _qout(x, ts):
    return np.empty((x.shape[0], x.shape[1] // QK_K * ts), np.uint8)


def _dout(data, ts):
    return np.empty((data.shape[0], data.shape[1] // ts * QK_K), np.float32)


def _im(x, imatrix):
    if imatrix is None:
        return np.zeros(1, np.float32), False
    return _c(imatrix, np.float32).reshape(-1), True


def quantize_q2_k(x, imatrix=None):
    out = _qout(x, Q2_TS)
    _quantize_q2_k(_c(x, np.float32), *_im(x, imatrix), out, LANES)
    return out


def quantize_q3_k(x, imatrix=None):
    out = _qout(x, Q3_TS)
    _quantize_q3_k(_c(x, np.float32), *_im(x, imatrix), out)
    return out


def quantize_q4_k(x, imatrix=None):
    out = _qout(x, Q4_TS)
    _quantize_q4_k_q5_k(_c(x, np.float32), *_im(x, imatrix), out, False, LANES)
    return out


def quantize_q5_k(x, imatrix=None):
    out = _qout(x, Q5_TS)
    _quantize_q4_k_q5_k(_c(x, np.float32), *_im(x, imatrix), out, True, LANES)
    return out


def quantize_q6_k(x, imatrix=None):
    out = _qout(x, Q6_TS)
    _quantize_q6_k(_c(x, np.float32), *_im(x, imatrix), out)
    return out


def quantize_q8_k(x, imatrix=None):
    out = _qout(x, Q8_TS)
    checked(_quantize_q8_k, _c(x, np.float32), out, QK_K)
    return out


quantize_q8_k.checks_finite = True   # Q8_K takes no imatrix (refquant.backend.Backend.finite_in_kernel)


def dequantize_q2_k(data):
    out = _dout(data, Q2_TS)
    _dequantize_q2_k(_c(data), out)
    return out


def dequantize_q3_k(data):
    out = _dout(data, Q3_TS)
    _dequantize_q3_k(_c(data), out)
    return out


def dequantize_q4_k(data):
    out = _dout(data, Q4_TS)
    _dequantize_q4_k_q5_k(_c(data), out, False, 32)
    return out


def dequantize_q5_k(data):
    out = _dout(data, Q5_TS)
    _dequantize_q4_k_q5_k(_c(data), out, True, 32)
    return out


def dequantize_q6_k(data):
    out = _dout(data, Q6_TS)
    data = _c(data)
    _dequantize_q6_k(data, data.view(np.int8), out)
    return out


def dequantize_q8_k(data):
    out = _dout(data, Q8_TS)
    data = _c(data)
    _dequantize_q8_k(data, data.view(np.int8), out, QK_K)
    return out


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K", "dequantize": "Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K"}
QUANTIZE = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k,
            "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k, "Q8_K": quantize_q8_k}
DEQUANTIZE = {"Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
              "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k, "Q8_K": dequantize_q8_k}
