"""Numba twin of refquant/ggml/iquants_grid.py: the lattice IQ types, bit-exact with it.

Dequantize: IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M. Quantize (with and without an
importance matrix; IQ2_XXS and IQ2_XS refuse to run without one, as ggml does): IQ2_XXS IQ2_XS
IQ2_S IQ3_XXS IQ3_S. (IQ1_S and IQ1_M quantize are not here.)

The spec runs each step on all sub-blocks at once; here rows run in parallel (prange) and each
row's sub-blocks one after another, with ggml's loops over scale candidates, groups, neighbours
and positions inside, so every float32 sum is accumulated in the same order (fastmath off: no
reassociation, no FMA contraction). Where ggml aborts (a group with no neighbour at a finite
distance, a NaN scale) the kernel records the reason per sub-block and the caller raises the
spec's InputError for the first one.

The lattice tables (codebooks, code -> index maps, neighbour lists) are the spec's
(refquant/ggml/grids.py), handed to the kernels as plain arrays: `lattice_arrays(name)` and
`dequant_table(name)` return them, and `best_neighbour` searches a neighbour list with any
per-level values (2l+1 here; the IQ1 types' shifted levels -1±1/8, 0±1/8, 1±1/8 with the signed
values and plain weights for their find_best_neighbour2), for any module that needs them. Byte
layouts are drawn in the spec module's docstring.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from refquant.errors import InputError
from refquant.ggml import grids
from refquant.registry import get_format

from ..numerics import F32, HALF, ONE, ZERO, fp16_to_fp32, fp32_to_fp16_bits, nearest_int
from .search import make_qp_quants

QK_K = 256


def _fields(name, *fields):
    """(type size, the fields' byte offsets) from the type's declared layout (refquant.ggml.layout)."""
    layout = get_format(name).layout
    return (layout.type_size,) + tuple(layout.offset(f) for f in fields)


# the type sizes and field offsets the kernels index; the fp16 d of IQ1_M is spread over the top
# nibbles of its scales
I2XXS_TS, I2XXS_D, I2XXS_QS = _fields("IQ2_XXS", "d", "qs")
I2XS_TS, I2XS_D, I2XS_QS, I2XS_SC = _fields("IQ2_XS", "d", "qs", "scales")
I2S_TS, I2S_D, I2S_QS, I2S_SIGNS, I2S_QH, I2S_SC = _fields("IQ2_S", "d", "qs", "signs", "qh", "scales")
I3XXS_TS, I3XXS_D, I3XXS_QS, I3XXS_SS = _fields("IQ3_XXS", "d", "qs", "ss")
I3S_TS, I3S_D, I3S_QS, I3S_QH, I3S_SIGNS, I3S_SC = _fields("IQ3_S", "d", "qs", "qh", "signs", "scales")
I1S_TS, I1S_D, I1S_QS, I1S_QH = _fields("IQ1_S", "d", "qs", "qh")
I1M_TS, I1M_QS, I1M_QH, I1M_SC = _fields("IQ1_M", "qs", "qh", "scales")
# error_model="numpy": a float division by zero gives inf/NaN as in C (and the spec), not an
# exception; the spec and ggml go on with those values and refuse the result later.
KJIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
PJIT = dict(KJIT, parallel=True)
KINLINE = dict(KJIT, inline="always")
FLT_MAX = F32(np.finfo(np.float32).max)
QUARTER = F32(0.25)
DELTA = F32(0.125)

# abort reasons, per sub-block (0: none), in the order the spec records them
NO_NEIGHBOUR, OFF_GRID, NAN_SCALE = 1, 2, 3
REASONS = {NO_NEIGHBOUR: "no neighbour with a finite distance",
           OFF_GRID: "a level code off the grid (\"Oops\")",
           NAN_SCALE: "GGML_ASSERT(scale >= 0) on a NaN scale"}


# ============================================================================ shared tables

@functools.lru_cache(maxsize=None)
def lattice_arrays(name: str):
    """The quantizer's tables of lattice `name` (iq2xxs, iq2xs, iq2s, iq3xxs, iq3s, iq1s) as
    plain contiguous arrays: (kmap int32 (code -> index or -1), nbr_row int32 (code -> list
    number or -1), nbr_start int64, nbr_levels int8 (entries, dims), nbr_flat int32, levels
    int8 (N, dims)). Neighbour list r is entries nbr_start[r]:nbr_start[r+1], in search order."""
    lat = grids.lattice(name)
    c = np.ascontiguousarray
    return (c(lat.map, np.int32), c(lat.nbr_row, np.int32), c(lat.nbr_start, np.int64),
            c(lat.nbr_levels, np.int8), c(lat.nbr_flat, np.int32), c(lat.levels, np.int8))


@functools.lru_cache(maxsize=None)
def dequant_table(name: str) -> np.ndarray:
    """The to_float codebook `name` as float32 (N, dims) (exact: small integers)."""
    return np.ascontiguousarray(grids.dequant_grid(name), dtype=np.float32)


KSIGNS = np.ascontiguousarray(grids.KSIGNS_IQ2XS, dtype=np.uint8)


@njit(**KINLINE)
def best_neighbour(code, qv, xg, wg, scale, nbr_row, nbr_start, nbr_levels, nbr_flat, terms):
    """ggml's neighbour search for one off-grid code: over the code's neighbour list in order,
    d2 = Σ_i wg[i]*diff*diff (i in order, from 0), diff = scale*qv[level_i] - xg[i]; the first
    d2 < best (best from FLT_MAX) wins. qv: the value each level stands for (2l+1 for the IQ2/IQ3
    grids); terms: (dims, len(qv)) float32 scratch. Returns the codebook index, or -1 when no
    neighbour has a finite distance below FLT_MAX (where ggml aborts).

    A term depends only on the coordinate and its level: for a list longer than the number of
    levels the terms are computed once per level and gathered, for a shorter one per entry. The
    same float32 operations in the same order either way."""
    dims = xg.shape[0]
    nlev = qv.shape[0]
    r = nbr_row[code]
    a = nbr_start[r]
    e = nbr_start[r + 1]
    best = FLT_MAX
    idx = -1
    if e - a > nlev:
        for i in range(dims):
            for lv in range(nlev):
                diff = scale * qv[lv] - xg[i]
                terms[i, lv] = wg[i] * diff * diff
        for k in range(a, e):
            d2 = ZERO
            for i in range(dims):
                d2 += terms[i, nbr_levels[k, i]]
            if d2 < best:
                best = d2
                idx = nbr_flat[k]
    else:
        for k in range(a, e):
            d2 = ZERO
            for i in range(dims):
                diff = scale * qv[nbr_levels[k, i]] - xg[i]
                d2 += wg[i] * diff * diff
            if d2 < best:
                best = d2
                idx = nbr_flat[k]
    return idx


# ============================================================================ dequantization

@njit(**KINLINE)
def _u16(o, at):
    return np.int64(o[at]) | (np.int64(o[at + 1]) << 8)


@njit(**KINLINE)
def _u32(o, at):
    return (np.int64(o[at]) | (np.int64(o[at + 1]) << 8) | (np.int64(o[at + 2]) << 16)
            | (np.int64(o[at + 3]) << 24))


@njit(**KINLINE)
def _put8(y, at, db, grid, k, signs):
    """y[at + j] = db * grid[k, j], negated where bit j of `signs` is set (a negation, as ggml's
    `* (neg ? -1.f : 1.f)` compiles: a NaN's sign flips too)."""
    for j in range(8):
        v = db * grid[k, j]
        y[at + j] = -v if (signs >> j) & 1 else v


@njit(**PJIT)
def _dequantize_iq2_xxs(data, grid, ksigns, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I2XXS_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I2XXS_TS:(b + 1) * I2XXS_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[I2XXS_D], o[I2XXS_D + 1])
            for ib in range(8):
                aux1 = _u32(o, I2XXS_QS + 8 * ib + 4)
                db = d * (HALF + F32(aux1 >> 28)) * QUARTER
                for k in range(4):
                    s = np.int64(ksigns[(aux1 >> (7 * k)) & 127])
                    _put8(y, 32 * ib + 8 * k, db, grid, np.int64(o[I2XXS_QS + 8 * ib + k]), s)


@njit(**KINLINE)
def _nibble_scale(d, sc, g):
    """The IQ2_XS/IQ2_S scale of group g (of 8): nibble g//2 of the scales, d*(0.5+s)*0.25."""
    s = (np.int64(sc[g // 4]) >> (4 * ((g // 2) % 2))) & 0xF
    return d * (HALF + F32(s)) * QUARTER


@njit(**PJIT)
def _dequantize_iq2_xs(data, grid, ksigns, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I2XS_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I2XS_TS:(b + 1) * I2XS_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[I2XS_D], o[I2XS_D + 1])
            sc = o[I2XS_SC:I2XS_SC + 8]
            for g in range(32):
                q = _u16(o, I2XS_QS + 2 * g)
                _put8(y, 8 * g, _nibble_scale(d, sc, g), grid, q & 511, np.int64(ksigns[q >> 9]))


@njit(**PJIT)
def _dequantize_iq2_s(data, grid, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I2S_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I2S_TS:(b + 1) * I2S_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[I2S_D], o[I2S_D + 1])
            sc = o[I2S_SC:I2S_SC + 8]
            for g in range(32):
                idx = np.int64(o[I2S_QS + g]) | ((np.int64(o[I2S_QH + g // 4]) << (8 - 2 * (g % 4))) & 0x300)
                _put8(y, 8 * g, _nibble_scale(d, sc, g), grid, idx, np.int64(o[I2S_SIGNS + g]))


@njit(**PJIT)
def _dequantize_iq3_xxs(data, grid, ksigns, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I3XXS_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I3XXS_TS:(b + 1) * I3XXS_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[I3XXS_D], o[I3XXS_D + 1])
            for ib in range(8):
                aux = _u32(o, I3XXS_SS + 4 * ib)
                db = d * (HALF + F32(aux >> 28)) * HALF
                for j in range(32):
                    s = np.int64(ksigns[(aux >> (7 * (j // 8))) & 127])
                    v = db * grid[np.int64(o[I3XXS_QS + 8 * ib + j // 4]), j % 4]
                    y[32 * ib + j] = -v if (s >> (j % 8)) & 1 else v


@njit(**PJIT)
def _dequantize_iq3_s(data, grid, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I3S_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I3S_TS:(b + 1) * I3S_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[I3S_D], o[I3S_D + 1])
            for ib in range(8):
                s = (np.int64(o[I3S_SC + ib // 2]) >> (4 * (ib % 2))) & 0xF
                db = d * F32(1 + 2 * s)
                qh = np.int64(o[I3S_QH + ib])
                for j in range(32):
                    m = j // 4
                    idx = np.int64(o[I3S_QS + 8 * ib + m]) | (((qh >> m) & 1) << 8)
                    v = db * grid[idx, j % 4]
                    y[32 * ib + j] = -v if (np.int64(o[I3S_SIGNS + 4 * ib + j // 8]) >> (j % 8)) & 1 else v


@njit(**PJIT)
def _dequantize_iq1_s(data, grid, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I1S_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I1S_TS:(b + 1) * I1S_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = fp16_to_fp32(o[I1S_D], o[I1S_D + 1])
            for ib in range(8):
                qh = _u16(o, I1S_QH + 2 * ib)
                dl = d * F32(2 * ((qh >> 12) & 7) + 1)
                delta = -DELTA if qh & 0x8000 else DELTA
                for k in range(4):
                    idx = np.int64(o[I1S_QS + 4 * ib + k]) | (((qh >> (3 * k)) & 7) << 8)
                    for j in range(8):
                        y[32 * ib + 8 * k + j] = dl * (grid[idx, j] + delta)


@njit(**PJIT)
def _dequantize_iq1_m(data, grid, out):
    nrows = data.shape[0]
    nb = data.shape[1] // I1M_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * I1M_TS:(b + 1) * I1M_TS]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            s0, s1, s2, s3 = _u16(o, I1M_SC), _u16(o, I1M_SC + 2), _u16(o, I1M_SC + 4), _u16(o, I1M_SC + 6)
            u = (s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)
            d = fp16_to_fp32(np.uint8(u & 0xFF), np.uint8(u >> 8))
            for ib in range(8):
                word = _u16(o, I1M_SC + 2 * (ib // 2))
                sh = 6 * (ib % 2)
                qh0 = np.int64(o[I1M_QH + 2 * ib])
                qh1 = np.int64(o[I1M_QH + 1 + 2 * ib])
                for k in range(4):
                    s = (word >> (sh + 3 * (k // 2))) & 7
                    dl = d * F32(2 * s + 1)
                    q = qh0 if k < 2 else qh1
                    hi = (q << (8 if k % 2 == 0 else 4)) & 0x700
                    neg = (q & (0x08 if k % 2 == 0 else 0x80)) != 0
                    delta = -DELTA if neg else DELTA
                    idx = np.int64(o[I1M_QS + 4 * ib + k]) | hi
                    for j in range(8):
                        y[32 * ib + 8 * k + j] = dl * (grid[idx, j] + delta)


def _deq(kernel, data, type_size, *tables):
    data = np.ascontiguousarray(data)
    out = np.empty((data.shape[0], data.shape[1] // type_size * QK_K), np.float32)
    kernel(data, *tables, out)
    return out


def dequantize_iq2_xxs(data):
    return _deq(_dequantize_iq2_xxs, data, I2XXS_TS, dequant_table("iq2xxs"), KSIGNS)


def dequantize_iq2_xs(data):
    return _deq(_dequantize_iq2_xs, data, I2XS_TS, dequant_table("iq2xs"), KSIGNS)


def dequantize_iq2_s(data):
    return _deq(_dequantize_iq2_s, data, I2S_TS, dequant_table("iq2s"))


def dequantize_iq3_xxs(data):
    return _deq(_dequantize_iq3_xxs, data, I3XXS_TS, dequant_table("iq3xxs"), KSIGNS)


def dequantize_iq3_s(data):
    return _deq(_dequantize_iq3_s, data, I3S_TS, dequant_table("iq3s"))


def dequantize_iq1_s(data):
    return _deq(_dequantize_iq1_s, data, I1S_TS, dequant_table("iq1s"))


def dequantize_iq1_m(data):
    return _deq(_dequantize_iq1_m, data, I1M_TS, dequant_table("iq1s"))


# ============================================================================ the IQ2/IQ3 search

# initial: how the search starts; final: which groups are re-rounded at the winning scale
INIT_MAX, INIT_MAX_OFF, INIT_QP = 0, 1, 2
FINAL_OFF, FINAL_ALL, FINAL_ALL_IF_OFF = 0, 1, 2


@njit(**KINLINE)
def _round_group(xval, waux, g, dims, bits, kmaxq, id_, scale, kmap, nbr_row, nbr_start, nbr_levels,
                 nbr_flat, levels, qv, terms, L):
    """Group g: levels l = clamp(nearest_int(0.5f*(id*xval - 1)), 0, kMaxQ-1) into L; a code off
    the grid takes its best neighbour at `scale` (its levels go into L; codebook point 0's when
    none is found). Returns (on the grid, a neighbour was found or not needed)."""
    a = g * dims
    code = 0
    for i in range(dims):
        lv = min(max(nearest_int(HALF * (id_ * xval[a + i] - ONE)), 0), kmaxq - 1)
        L[a + i] = lv
        code |= lv << (bits * i)
    if kmap[code] >= 0:
        return True, True
    k = best_neighbour(code, qv, xval[a:a + dims], waux[a:a + dims], scale, nbr_row, nbr_start,
                       nbr_levels, nbr_flat, terms)
    found = k >= 0
    if not found:
        k = 0
    for i in range(dims):
        L[a + i] = levels[k, i]
    return False, found


@njit(**KINLINE)
def _sums(w, xval, L):
    """sumqx += w*xval*q; sumq2 += w*q*q, q = 2L+1, in position order."""
    sumqx = ZERO
    sumq2 = ZERO
    for i in range(w.shape[0]):
        q = F32(2 * L[i] + 1)
        sumqx += w[i] * xval[i] * q
        sumq2 += w[i] * q * q
    return sumqx, sumq2


@njit(**KINLINE)
def _search(xval, w, waux, vmax, kmaxq, bits, dims, cand_lo, cand_hi, step, initial, final,
            kmap, nbr_row, nbr_start, nbr_levels, nbr_flat, levels, qv, terms, L, Laux, og, ogaux, Lqp):
    """The scale search of one live sub-block (the spec's _grid_search). Writes L; returns
    (scale, skipped, abort reason)."""
    sub = xval.shape[0]
    G = sub // dims
    reason = 0
    for i in range(sub):
        L[i] = 0
    if initial == INIT_QP:
        scale = make_qp_quants(xval, kmaxq + 1, w, Lqp)
        ref = scale * F32(kmaxq)
        if ref <= ZERO:                          # `if (eff_max <= 0)`: scale 0, levels 0
            return ZERO, True, 0
    else:
        scale = vmax / F32(2 * kmaxq - 1)
        ref = vmax
    for g in range(G):
        og[g] = initial != INIT_MAX_OFF
    best = ZERO
    base = F32(2 * kmaxq - 1)
    for is_ in range(cand_lo, cand_hi + 1):
        id_ = (base + F32(is_) * step) / ref
        this_scale = ONE / id_
        for g in range(G):
            on, found = _round_group(xval, waux, g, dims, bits, kmaxq, id_, this_scale, kmap, nbr_row,
                                     nbr_start, nbr_levels, nbr_flat, levels, qv, terms, Laux)
            ogaux[g] = on
            if not found and reason == 0:
                reason = NO_NEIGHBOUR
        sumqx, sumq2 = _sums(w, xval, Laux)
        if sumq2 > ZERO and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(sub):
                L[i] = Laux[i]
            for g in range(G):
                og[g] = ogaux[g]
    if final == FINAL_ALL:
        redo = scale > ZERO
    else:
        n_off = 0
        for g in range(G):
            n_off += 0 if og[g] else 1
        redo = n_off > 0 and scale > ZERO
    if redo:
        sc = scale
        id_ = ONE / sc
        for g in range(G):
            if final == FINAL_OFF and og[g]:
                continue
            on, found = _round_group(xval, waux, g, dims, bits, kmaxq, id_, sc, kmap, nbr_row,
                                     nbr_start, nbr_levels, nbr_flat, levels, qv, terms, L)
            if not found and reason == 0:
                reason = NO_NEIGHBOUR
        sumqx, sumq2 = _sums(w, xval, L)
        scale = sumqx / sumq2 if sumq2 > ZERO else sc
    return scale, False, reason


@njit(**PJIT)
def _quantize_subblocks(x, imatrix, use_imatrix, sub, sigma_mul, rule, even_parity, eps, use_eps,
                        kmaxq, bits, cand_lo, cand_hi, step, initial, final,
                        kmap, nbr_row, nbr_start, nbr_levels, nbr_flat, levels,
                        scale_out, index_out, signs_out, dead_out, abort_out):
    """Everything up to the super-block scale, per row: for every sub-block its scale, the grid
    index of each group, the sign byte of each 8 values and the abort reason (0: none). A
    sub-block that is skipped (max below eps, or eff_max <= 0) gets scale 0, index 0, signs 0.

    sigma_mul 0: sigma2 = Σx²/256, else 2Σx²/256. Without an importance matrix, rule 1: w = x²;
    rule 2: w = 0.25f*sigma2 + x²."""
    nrows, n = x.shape
    dims = levels.shape[1]
    G = sub // dims
    nsub = QK_K // sub
    smask = 127 if even_parity else 255
    nlev = 3 if bits == 2 else 8                  # the 2-bit codebooks use levels 0..2 only
    qv = np.empty(nlev, np.float32)
    for lv in range(nlev):
        qv[lv] = F32(2 * lv + 1)
    for r in prange(nrows):
        w = np.empty(sub, np.float32)
        waux = np.empty(sub, np.float32)
        xval = np.empty(sub, np.float32)
        L = np.empty(sub, np.int32)
        Laux = np.empty(sub, np.int32)
        Lqp = np.empty(sub, np.int32)
        og = np.empty(G, np.bool_)
        ogaux = np.empty(G, np.bool_)
        terms = np.empty((dims, nlev), np.float32)
        s8 = np.empty(sub // 8, np.int32)
        for sb in range(n // QK_K):
            xs = x[r, sb * QK_K:(sb + 1) * QK_K]
            sumx2 = ZERO
            for i in range(QK_K):
                sumx2 += xs[i] * xs[i]
            sigma2 = (sumx2 if sigma_mul == 0 else F32(sigma_mul) * sumx2) / F32(QK_K)
            for ibl in range(nsub):
                bsub = sb * nsub + ibl
                xb = xs[ibl * sub:(ibl + 1) * sub]
                for i in range(sub):
                    if use_imatrix:
                        w[i] = imatrix[sb * QK_K + ibl * sub + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                    elif rule == 1:
                        w[i] = xb[i] * xb[i]
                    else:
                        w[i] = QUARTER * sigma2 + xb[i] * xb[i]
                    waux[i] = np.sqrt(w[i])
                # signs and magnitudes, per 8
                for k in range(sub // 8):
                    s = 0
                    nneg = 0
                    for i in range(8):
                        v = xb[8 * k + i]
                        if v >= ZERO:
                            xval[8 * k + i] = v
                        else:
                            xval[8 * k + i] = -v
                            s |= 1 << i
                            nneg += 1
                    if even_parity and nneg % 2 == 1:
                        imin = 0
                        mn = w[8 * k] * xb[8 * k] * xb[8 * k]
                        for i in range(1, 8):
                            t = w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                            if t < mn:
                                mn = t
                                imin = i
                        xval[8 * k + imin] = -xval[8 * k + imin]
                        s ^= 1 << imin
                    s8[k] = s & smask
                vmax = xval[0]
                for i in range(1, sub):
                    vmax = vmax if vmax > xval[i] else xval[i]
                dead = (vmax < eps) if use_eps else (vmax == ZERO)
                scale = ZERO
                reason = 0
                if dead:
                    for i in range(sub):
                        L[i] = 0
                else:
                    scale, skip, reason = _search(xval, w, waux, vmax, kmaxq, bits, dims, cand_lo, cand_hi,
                                                  step, initial, final, kmap, nbr_row, nbr_start, nbr_levels,
                                                  nbr_flat, levels, qv, terms, L, Laux, og, ogaux, Lqp)
                    dead = skip
                if scale < ZERO:                 # "should never happen": flip the scale and the signs
                    scale = -scale
                    for k in range(sub // 8):
                        s8[k] = ~s8[k] & smask
                for g in range(G):
                    code = 0
                    for i in range(dims):
                        code |= np.int64(L[g * dims + i]) << (bits * i)
                    idx = kmap[code]
                    if not dead and idx < 0 and reason == 0:
                        reason = OFF_GRID
                    index_out[r, bsub * G + g] = 0 if dead else idx
                if not dead and not (scale >= ZERO) and reason == 0:
                    reason = NAN_SCALE
                for k in range(sub // 8):
                    signs_out[r, bsub * (sub // 8) + k] = 0 if dead else s8[k]
                scale_out[r, bsub] = ZERO if dead else scale
                dead_out[r, bsub] = dead
                abort_out[r, bsub] = reason


@njit(**KINLINE)
def _superscale(scales, nmax, top, fudge, use_fudge, l):
    """max_scale (MAX from 0), d = max_scale/nmax, stored fp16(d) or fp16(d*fudge); each scale
    l = clamp(nearest_int(0.5f*(id*scale - 1)), 0, top), id = 1/d. Returns the fp16 bits and
    whether max_scale is 0 (bits 0, every l 0)."""
    m = ZERO
    for k in range(scales.shape[0]):
        m = m if m > scales[k] else scales[k]
    if m == ZERO:
        for k in range(scales.shape[0]):
            l[k] = 0
        return 0, True
    d = m / F32(nmax)
    dbits = np.int64(fp32_to_fp16_bits(d * fudge if use_fudge else d))
    id_ = ONE / d
    for k in range(scales.shape[0]):
        l[k] = min(max(nearest_int(HALF * (id_ * scales[k] - ONE)), 0), top)
    return dbits, False


@njit(**KINLINE)
def _put_u16(o, at, v):
    o[at] = np.uint8(v & 0xFF)
    o[at + 1] = np.uint8((v >> 8) & 0xFF)


@njit(**KINLINE)
def _put_u32(o, at, v):
    for k in range(4):
        o[at + k] = np.uint8((v >> (8 * k)) & 0xFF)


@njit(**PJIT)
def _pack_iq2_xxs(scale, index, signs, out):
    nrows = out.shape[0]
    for r in prange(nrows):
        l = np.empty(8, np.int64)
        for b in range(out.shape[1] // I2XXS_TS):
            o = out[r, b * I2XXS_TS:(b + 1) * I2XXS_TS]
            dbits, zero = _superscale(scale[r, 8 * b:8 * b + 8], 31, 15, ONE, False, l)
            _put_u16(o, I2XXS_D, dbits)
            for ib in range(8):
                g = 0
                s = l[ib] << 28
                for k in range(4):
                    g |= np.int64(index[r, 32 * b + 4 * ib + k]) << (8 * k)
                    s |= np.int64(signs[r, 32 * b + 4 * ib + k]) << (7 * k)
                _put_u32(o, I2XXS_QS + 8 * ib, 0 if zero else g)
                _put_u32(o, I2XXS_QS + 4 + 8 * ib, 0 if zero else s)


@njit(**PJIT)
def _pack_iq2_xs(scale, index, signs, out):
    nrows = out.shape[0]
    for r in prange(nrows):
        l = np.empty(16, np.int64)
        for b in range(out.shape[1] // I2XS_TS):
            o = out[r, b * I2XS_TS:(b + 1) * I2XS_TS]
            dbits, zero = _superscale(scale[r, 16 * b:16 * b + 16], 31, 15, ONE, False, l)
            _put_u16(o, I2XS_D, dbits)
            for g in range(32):
                q = np.int64(index[r, 32 * b + g]) | (np.int64(signs[r, 32 * b + g]) << 9)
                _put_u16(o, I2XS_QS + 2 * g, 0 if zero else q)
            for k in range(8):
                o[I2XS_SC + k] = np.uint8(l[2 * k] | (l[2 * k + 1] << 4))


@njit(**PJIT)
def _pack_iq2_s(scale, index, signs, fudge, out):
    nrows = out.shape[0]
    for r in prange(nrows):
        l = np.empty(16, np.int64)
        for b in range(out.shape[1] // I2S_TS):
            o = out[r, b * I2S_TS:(b + 1) * I2S_TS]
            dbits, zero = _superscale(scale[r, 16 * b:16 * b + 16], 31, 15, fudge, True, l)
            _put_u16(o, I2S_D, dbits)
            for g in range(32):
                o[I2S_QS + g] = np.uint8(index[r, 32 * b + g] & 255)
                o[I2S_SIGNS + g] = np.uint8(signs[r, 32 * b + g])
            for j in range(8):
                h = 0
                for k in range(4):
                    h |= (np.int64(index[r, 32 * b + 4 * j + k]) >> 8) << (2 * k)
                o[I2S_QH + j] = np.uint8(h)
            for k in range(8):
                o[I2S_SC + k] = np.uint8(l[2 * k] | (l[2 * k + 1] << 4))


@njit(**PJIT)
def _pack_iq3_xxs(scale, index, signs, fudge, out):
    nrows = out.shape[0]
    for r in prange(nrows):
        l = np.empty(8, np.int64)
        for b in range(out.shape[1] // I3XXS_TS):
            o = out[r, b * I3XXS_TS:(b + 1) * I3XXS_TS]
            dbits, zero = _superscale(scale[r, 8 * b:8 * b + 8], 31, 15, fudge, True, l)
            _put_u16(o, I3XXS_D, dbits)
            for g in range(64):
                o[I3XXS_QS + g] = 0 if zero else np.uint8(index[r, 64 * b + g])
            for ib in range(8):
                s = l[ib] << 28
                for k in range(4):
                    s |= np.int64(signs[r, 32 * b + 4 * ib + k]) << (7 * k)
                _put_u32(o, I3XXS_SS + 4 * ib, 0 if zero else s)


@njit(**PJIT)
def _pack_iq3_s(scale, index, signs, dead, fudge, out):
    """qh at absolute places; qs and signs only for sub-blocks that were quantized (ggml moves
    its pointers past those only), zeros after them."""
    nrows = out.shape[0]
    for r in prange(nrows):
        l = np.empty(8, np.int64)
        for b in range(out.shape[1] // I3S_TS):
            o = out[r, b * I3S_TS:(b + 1) * I3S_TS]
            sc = scale[r, 8 * b:8 * b + 8]
            dbits, zero = _superscale(sc, 31, 15, fudge, True, l)
            _put_u16(o, I3S_D, dbits)
            for j in range(I3S_D + 2, I3S_TS):   # every byte after d
                o[j] = 0
            live = 0
            for ib in range(8):
                h = 0
                for m in range(8):
                    h |= (np.int64(index[r, 64 * b + 8 * ib + m]) >> 8) << m
                o[I3S_QH + ib] = np.uint8(h)
                if dead[r, 8 * b + ib]:
                    continue
                for m in range(8):
                    o[I3S_QS + 8 * live + m] = np.uint8(index[r, 64 * b + 8 * ib + m] & 255)
                for k in range(4):
                    o[I3S_SIGNS + 4 * live + k] = np.uint8(signs[r, 32 * b + 4 * ib + k])
                live += 1
            for k in range(4):
                o[I3S_SC + k] = np.uint8(l[2 * k] | (l[2 * k + 1] << 4))


# ============================================================================ drivers

def _im(imatrix):
    if imatrix is None:
        return np.zeros(1, np.float32), False
    return np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1), True


def _raise_first(abort, fmt, n, sub):
    flat = abort.reshape(-1)
    b = int(np.flatnonzero(flat)[0])
    row, col = divmod(b, n // sub)
    raise InputError(
        f"{fmt}: ggml aborts on this input ({REASONS[int(flat[b])]}) in row {row}, values "
        f"{col * sub}..{col * sub + sub - 1}; refquant refuses it (values this large make "
        f"the weighted sums overflow float32; see spec/ggml/{fmt.lower()}.md)")


def _subblocks(x, imatrix, fmt, *, sub, sigma_mul, rule, even_parity, eps, lat_name, kmaxq,
               candidates, step, initial, final):
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.shape
    kmap, nbr_row, nbr_start, nbr_levels, nbr_flat, levels = lattice_arrays(lat_name)
    dims = levels.shape[1]
    bits = 2 if dims == 8 else 3
    nsub = n // sub
    scale = np.empty((nrows, nsub), np.float32)
    index = np.empty((nrows, nsub * (sub // dims)), np.int32)
    signs = np.empty((nrows, n // 8), np.int32)
    dead = np.empty((nrows, nsub), np.bool_)
    abort = np.empty((nrows, nsub), np.int8)
    im, use_im = _im(imatrix)
    _quantize_subblocks(x, im, use_im, sub, sigma_mul, rule, even_parity, F32(eps or 0), eps is not None,
                        kmaxq, bits, candidates[0], candidates[1], F32(step), initial, final,
                        kmap, nbr_row, nbr_start, nbr_levels, nbr_flat, levels, scale, index, signs, dead, abort)
    if abort.any():
        _raise_first(abort, fmt, n, sub)
    return scale, index, signs, dead


def quantize_iq2_xxs(x, imatrix=None):
    if imatrix is None:
        raise InputError("IQ2_XXS requires an importance matrix (imatrix=...), none was given")
    scale, index, signs, dead = _subblocks(x, imatrix, "IQ2_XXS", sub=32, sigma_mul=0, rule=0, even_parity=True,
                                     eps=1e-15, lat_name="iq2xxs", kmaxq=3, candidates=(-6, 6), step=0.1,
                                     initial=INIT_QP, final=FINAL_ALL)
    out = np.empty((x.shape[0], x.shape[1] // QK_K * I2XXS_TS), np.uint8)
    _pack_iq2_xxs(scale, index, signs, out)
    return out


def quantize_iq2_xs(x, imatrix=None):
    if imatrix is None:
        raise InputError("IQ2_XS requires an importance matrix (imatrix=...), none was given")
    scale, index, signs, dead = _subblocks(x, imatrix, "IQ2_XS", sub=16, sigma_mul=0, rule=0, even_parity=True,
                                     eps=1e-15, lat_name="iq2xs", kmaxq=3, candidates=(-9, 9), step=0.1,
                                     initial=INIT_MAX, final=FINAL_OFF)
    out = np.empty((x.shape[0], x.shape[1] // QK_K * I2XS_TS), np.uint8)
    _pack_iq2_xs(scale, index, signs, out)
    return out


def quantize_iq2_s(x, imatrix=None):
    scale, index, signs, dead = _subblocks(x, imatrix, "IQ2_S", sub=16, sigma_mul=2, rule=2, even_parity=False,
                                     eps=1e-8, lat_name="iq2s", kmaxq=3, candidates=(-9, 9), step=0.1,
                                     initial=INIT_MAX, final=FINAL_OFF)
    out = np.empty((x.shape[0], x.shape[1] // QK_K * I2S_TS), np.uint8)
    _pack_iq2_s(scale, index, signs, F32(0.9875), out)
    return out


def quantize_iq3_xxs(x, imatrix=None):
    scale, index, signs, dead = _subblocks(x, imatrix, "IQ3_XXS", sub=32, sigma_mul=2, rule=1, even_parity=True,
                                     eps=1e-8, lat_name="iq3xxs", kmaxq=8, candidates=(-15, 15), step=0.2,
                                     initial=INIT_MAX, final=FINAL_OFF)
    out = np.empty((x.shape[0], x.shape[1] // QK_K * I3XXS_TS), np.uint8)
    _pack_iq3_xxs(scale, index, signs, F32(1.0125), out)
    return out


def quantize_iq3_s(x, imatrix=None):
    scale, index, signs, dead = _subblocks(x, imatrix, "IQ3_S", sub=32, sigma_mul=2, rule=1, even_parity=False,
                                     eps=None, lat_name="iq3s", kmaxq=8, candidates=(-9, 9), step=0.2,
                                     initial=INIT_MAX_OFF, final=FINAL_ALL_IF_OFF)
    out = np.empty((x.shape[0], x.shape[1] // QK_K * I3S_TS), np.uint8)
    _pack_iq3_s(scale, index, signs, dead, F32(1.033), out)
    return out


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S",
            "dequantize": "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M"}
QUANTIZE = {"IQ2_XXS": quantize_iq2_xxs, "IQ2_XS": quantize_iq2_xs, "IQ2_S": quantize_iq2_s,
            "IQ3_XXS": quantize_iq3_xxs, "IQ3_S": quantize_iq3_s}
DEQUANTIZE = {"IQ2_XXS": dequantize_iq2_xxs, "IQ2_XS": dequantize_iq2_xs, "IQ2_S": dequantize_iq2_s,
              "IQ3_XXS": dequantize_iq3_xxs, "IQ3_S": dequantize_iq3_s, "IQ1_S": dequantize_iq1_s,
              "IQ1_M": dequantize_iq1_m}
