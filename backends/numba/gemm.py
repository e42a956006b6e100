"""Numba twin of refquant/gemm.py: W8A8 (bit-exact), W4A16 and FP8 (float32 accumulation in a
stated order, inside refquant.gemm's bound).

Float orders (`accumulation`), for each output: K is cut into blocks (W4A16: the groups, in
group order after the act-order permutation; FP8: 128 columns). W4A16 sums each group
sequentially (vectorised across outputs, from codes packed two per byte and transposed once per
weight; the act-order permutation is applied to the activation at each call): "blocked".
FP8 runs 8 strided float32 accumulators inside a block and sums them as a tree ((0+4, 1+5, 2+6,
3+7), then pairs, then the last two): "blocked_lanes". Each block's sum is multiplied by its
scale and added to a sequential float32 total. Each term carries p = 2 roundings (the product
and the block scale; the W4A16 factor code - zero is an exact integer). Where the activation
row makes every W4A16 product exact (float16 or bfloat16 values: `_fusable`), the kernel adds
each term with a fused multiply-add, which then gives the same bits as the product rounded and
added."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.gemm import E4M3_MAX, FP8_BLOCK, e4m3_decode_table

from .numerics import F32, JIT, U64, ZERO, bits_f32, f32_bits, fmaf

PJIT = dict(JIT, parallel=True)
LANES = 8
E4M3 = e4m3_decode_table()                   # code -> float32 (the spec's table)
E4M3_POS = E4M3[:127].copy()                 # codes 0..126: 0 .. 448, increasing
F127 = F32(127)
F448 = F32(E4M3_MAX)
HALF = F32(0.5)


@njit(**dict(JIT, inline="always"))
def _tree8(a0, a1, a2, a3, a4, a5, a6, a7):
    b0 = a0 + a4
    b1 = a1 + a5
    b2 = a2 + a6
    b3 = a3 + a7
    return (b0 + b2) + (b1 + b3)


# --------------------------------------------------------------------------- W8A8

@njit(**PJIT)
def _quantize_int8_rows(x, q, s):
    for r in prange(x.shape[0]):
        amax = ZERO
        for k in range(x.shape[1]):
            amax = max(amax, abs(x[r, k]))
        sc = amax / F127
        s[r] = sc
        for k in range(x.shape[1]):
            if sc != ZERO:
                v = np.float32(np.rint(x[r, k] / sc))
                v = min(max(v, -F127), F127)
                q[r, k] = np.int8(np.int32(v))
            else:
                q[r, k] = 0


@njit(**PJIT)
def _w8a8(qa, sa, qw, sw, out):
    M, K = qa.shape
    N = qw.shape[0]
    for n in prange(N):
        for m in range(M):
            acc = np.int32(0)
            for k in range(K):
                acc += np.int32(qa[m, k]) * np.int32(qw[n, k])
            out[m, n] = (F32(acc) * sa[m]) * sw[n]


def w8a8_matmul(a, w):
    M, K = a.shape
    qa = np.empty((M, K), np.int8)
    sa = np.empty(M, np.float32)
    _quantize_int8_rows(np.ascontiguousarray(a), qa, sa)
    out = np.empty((M, w.codes.shape[0]), np.float32)
    _w8a8(qa, sa, np.ascontiguousarray(w.codes), np.ascontiguousarray(w.scales), out)
    return out


# --------------------------------------------------------------------------- W4A16

TW = 256  # bytes of packed codes per row of a tile: 2 * TW outputs per task
M23 = np.int32(0x4B000000)  # the bits of 2^23: (2^23 | v) as float32 is 2^23 + v for 0 <= v < 2^23
SIXTEENTH = F32(0.0625)


@njit(**PJIT)
def _w4a16(ap, ap16, fused, pk, scalesP, zerosP, gstart, gid, out):
    """ap (M, K) activations with columns in group order, ap16 = ap / 16; pk (ntiles, K, TW)
    the codes packed two per byte, tile t covering outputs [t*2TW, (t+1)*2TW): byte j of row k
    holds output t*2TW + j in its low nibble and t*2TW + TW + j in its high nibble, rows in group
    order; scalesP, zerosP (ngroups, ntiles*2TW) padded with zeros; gstart (ng+1,) the group
    boundaries in that order, gid their group numbers. Vectorised across outputs (no float
    reassociation): for each output, each group's sum runs sequentially over its columns, then
    is scaled and added to a sequential total -- order "blocked", block = the group size.

    code - zero, exactly, without an int-to-float conversion: a nibble masked in place and OR-ed
    into the bits of 2^23 reads as 2^23 + code (low nibble) or 2^23 + 16*code (high nibble);
    minus 2^23 + zero (or 2^23 + 16*zero) that is code - zero (or 16*(code - zero)), exactly.
    The high nibble's term is then (a/16) * (16*(code - zero)), or a * (that * 1/16): both equal
    a * (code - zero) when the products are exact. `fused` (see _fusable) adds each term with an
    FMA, which is bit-identical to the product rounded and then added because the product is
    exact there: the term a * (code - zero) has at most 20 + 4 significant bits."""
    ntiles, K, tw = pk.shape
    M = ap.shape[0]
    N = out.shape[1]
    ngr = gstart.shape[0] - 1
    w = U64(tw)
    for t in prange(ntiles):
        n0 = t * 2 * tw
        acc0 = np.empty(tw, np.float32)
        acc1 = np.empty(tw, np.float32)
        tot0 = np.empty(tw, np.float32)
        tot1 = np.empty(tw, np.float32)
        z0 = np.empty(tw, np.float32)
        z1 = np.empty(tw, np.float32)
        tile = pk[t]
        for m in range(M):
            arow = ap[m]
            hrow = ap16[m]
            for j in range(w):
                tot0[j] = ZERO
                tot1[j] = ZERO
            for gi in range(ngr):
                g = gid[gi]
                zr0 = zerosP[g, n0:n0 + tw]
                zr1 = zerosP[g, n0 + tw:n0 + 2 * tw]
                for j in range(w):
                    acc0[j] = ZERO
                    acc1[j] = ZERO
                    z0[j] = bits_f32(np.int32(np.int32(zr0[j]) | M23))          # 2^23 + zero
                    z1[j] = bits_f32(np.int32(np.int32(zr1[j]) << 4 | M23))     # 2^23 + 16*zero
                k = gstart[gi]
                k1 = gstart[gi + 1]
                while k + 4 <= k1:       # four columns a pass, each output's sum still in k order
                    c0 = tile[k]
                    c1 = tile[k + 1]
                    c2 = tile[k + 2]
                    c3 = tile[k + 3]
                    a0 = arow[k]
                    a1 = arow[k + 1]
                    a2 = arow[k + 2]
                    a3 = arow[k + 3]
                    if fused:
                        h0 = hrow[k]
                        h1 = hrow[k + 1]
                        h2 = hrow[k + 2]
                        h3 = hrow[k + 3]
                        for j in range(w):
                            y0 = z0[j]
                            y1 = z1[j]
                            s0 = acc0[j]
                            s1 = acc1[j]
                            b = np.int32(c0[j])
                            s0 = fmaf(a0, bits_f32(np.int32(b & 15 | M23)) - y0, s0)
                            s1 = fmaf(h0, bits_f32(np.int32(b & 240 | M23)) - y1, s1)
                            b = np.int32(c1[j])
                            s0 = fmaf(a1, bits_f32(np.int32(b & 15 | M23)) - y0, s0)
                            s1 = fmaf(h1, bits_f32(np.int32(b & 240 | M23)) - y1, s1)
                            b = np.int32(c2[j])
                            s0 = fmaf(a2, bits_f32(np.int32(b & 15 | M23)) - y0, s0)
                            s1 = fmaf(h2, bits_f32(np.int32(b & 240 | M23)) - y1, s1)
                            b = np.int32(c3[j])
                            s0 = fmaf(a3, bits_f32(np.int32(b & 15 | M23)) - y0, s0)
                            s1 = fmaf(h3, bits_f32(np.int32(b & 240 | M23)) - y1, s1)
                            acc0[j] = s0
                            acc1[j] = s1
                    else:
                        for j in range(w):
                            y0 = z0[j]
                            y1 = z1[j]
                            s0 = acc0[j]
                            s1 = acc1[j]
                            b = np.int32(c0[j])
                            s0 += a0 * (bits_f32(np.int32(b & 15 | M23)) - y0)
                            s1 += a0 * ((bits_f32(np.int32(b & 240 | M23)) - y1) * SIXTEENTH)
                            b = np.int32(c1[j])
                            s0 += a1 * (bits_f32(np.int32(b & 15 | M23)) - y0)
                            s1 += a1 * ((bits_f32(np.int32(b & 240 | M23)) - y1) * SIXTEENTH)
                            b = np.int32(c2[j])
                            s0 += a2 * (bits_f32(np.int32(b & 15 | M23)) - y0)
                            s1 += a2 * ((bits_f32(np.int32(b & 240 | M23)) - y1) * SIXTEENTH)
                            b = np.int32(c3[j])
                            s0 += a3 * (bits_f32(np.int32(b & 15 | M23)) - y0)
                            s1 += a3 * ((bits_f32(np.int32(b & 240 | M23)) - y1) * SIXTEENTH)
                            acc0[j] = s0
                            acc1[j] = s1
                    k += 4
                while k < k1:
                    av = arow[k]
                    hv = hrow[k]
                    crow = tile[k]
                    if fused:
                        for j in range(w):
                            b = np.int32(crow[j])
                            acc0[j] = fmaf(av, bits_f32(np.int32(b & 15 | M23)) - z0[j], acc0[j])
                            acc1[j] = fmaf(hv, bits_f32(np.int32(b & 240 | M23)) - z1[j], acc1[j])
                    else:
                        for j in range(w):
                            b = np.int32(crow[j])
                            acc0[j] += av * (bits_f32(np.int32(b & 15 | M23)) - z0[j])
                            acc1[j] += av * ((bits_f32(np.int32(b & 240 | M23)) - z1[j]) * SIXTEENTH)
                    k += 1
                sr0 = scalesP[g, n0:n0 + tw]
                sr1 = scalesP[g, n0 + tw:n0 + 2 * tw]
                for j in range(w):
                    tot0[j] += acc0[j] * sr0[j]
                    tot1[j] += acc1[j] * sr1[j]
            for j in range(min(tw, max(N - n0, 0))):
                out[m, n0 + j] = tot0[j]
            for j in range(min(tw, max(N - n0 - tw, 0))):
                out[m, n0 + tw + j] = tot1[j]


# An activation the fused path takes: 0, or a normal float32 of at most 20 significant bits
# (the low 4 of its 23 fraction bits zero) with 2^-100 <= |a| <= 2^100. Then a * (code - zero)
# (|code - zero| <= 15, 4 bits) is exact and normal, so fmaf(a, code - zero, s) rounds exactly
# what s + a * (code - zero) rounds; and a/16 is exact. Every float16 value qualifies, and every
# bfloat16 value in that range: the activations W4A16 is defined for.
FUSABLE_LOW_BITS = 0xF
FUSABLE_MIN = F32(2.0**-100)
FUSABLE_MAX = F32(2.0**100)


def _fusable(ap) -> bool:
    m = np.abs(ap)
    return bool(not (ap.view(np.uint32) & FUSABLE_LOW_BITS).any()
                and np.all((m == 0) | ((m >= FUSABLE_MIN) & (m <= FUSABLE_MAX))))


def _prepack(w):
    """Once per weight, kept on the weight object: the columns sorted by group (stable: the
    act-order permutation, applied here to the codes' columns and at each call to the
    activation), and the codes packed two per byte in tiles of 2*TW outputs (see _w4a16)."""
    pack = getattr(w, "_numba_w4a16", None)
    if pack is not None:
        return pack
    g = w.g_idx
    perm = np.argsort(g, kind="stable")
    gs = g[perm]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]]) if gs.size else np.zeros(0, np.int64)
    gstart = np.r_[starts, gs.size].astype(np.int64)
    gid = gs[starts].astype(np.int64)
    identity = bool(np.all(perm == np.arange(perm.size)))
    N, K = w.codes.shape
    tw = max(1, min(TW, (N + 1) // 2))
    ntiles = max(1, -(-N // (2 * tw)))
    Np = ntiles * 2 * tw
    c = np.zeros((Np, K), np.uint8)
    c[:N] = w.codes if identity else w.codes[:, perm]
    c = c.reshape(ntiles, 2, tw, K)
    pk = np.ascontiguousarray((c[:, 0] | (c[:, 1] << 4)).transpose(0, 2, 1))   # (ntiles, K, tw)
    scalesP = np.zeros((w.scales.shape[1], Np), np.float32)
    scalesP[:, :N] = w.scales.T
    zerosP = np.zeros((w.zeros.shape[1], Np), np.uint8)
    zerosP[:, :N] = w.zeros.T
    pack = (None if identity else perm, pk, scalesP, zerosP, gstart, gid,
            int(np.diff(gstart).max(initial=0)))
    object.__setattr__(w, "_numba_w4a16", pack)
    return pack


def w4a16_bytes(w) -> int:
    """The bytes one batch-1 call reads from the prepared weight (codes, scales, zeros)."""
    _, pk, scalesP, zerosP, *_ = _prepack(w)
    return pk.nbytes + scalesP.nbytes + zerosP.nbytes


def w4a16_matmul(a, w):
    perm, pk, scalesP, zerosP, gstart, gid, _ = _prepack(w)
    ap = np.ascontiguousarray(a if perm is None else a[:, perm])
    out = np.empty((a.shape[0], w.codes.shape[0]), np.float32)
    _w4a16(ap, ap * SIXTEENTH, _fusable(ap), pk, scalesP, zerosP, gstart, gid, out)
    return out


# --------------------------------------------------------------------------- FP8

@njit(**dict(JIT, inline="always"))
def _e4m3_encode(x):
    """float32 (already clipped to +-448) -> e4m3fn code, round to nearest, ties to even code."""
    sign = np.uint8(0x80) if f32_bits(x) < 0 else np.uint8(0)
    ax = abs(x)
    lo = 0
    hi = 126
    while lo < hi:                           # the largest code c with value(c) <= ax
        mid = (lo + hi + 1) // 2
        if E4M3_POS[mid] <= ax:
            lo = mid
        else:
            hi = mid - 1
    c = lo
    if c < 126:
        midv = (E4M3_POS[c] + E4M3_POS[c + 1]) * HALF   # exact: few significant bits
        if ax > midv or (ax == midv and (c & 1) == 1):
            c += 1
    return np.uint8(c) | sign


@njit(**PJIT)
def _quantize_fp8_rows(x, codes, s):
    for r in prange(x.shape[0]):
        amax = ZERO
        for k in range(x.shape[1]):
            amax = max(amax, abs(x[r, k]))
        sc = amax / F448
        if not sc > ZERO:
            sc = F32(1)
        s[r] = sc
        for k in range(x.shape[1]):
            v = min(max(x[r, k] / sc, -F448), F448)
            codes[r, k] = _e4m3_encode(v)


@njit(**PJIT)
def _fp8(a, ac, sa, quant_a, wc, ws, gran, out):
    """gran 0 tensor, 1 channel, 2 block; ws the scale array flattened to 2-D (rows, kblocks)."""
    N, K = wc.shape
    M = out.shape[0]
    nkb = (K + FP8_BLOCK - 1) // FP8_BLOCK
    for n in prange(N):
        for m in range(M):
            total = ZERO
            for kb in range(nkb):
                k0 = kb * FP8_BLOCK
                k1 = min(K, k0 + FP8_BLOCK)
                if gran == 0:
                    s = ws[0, 0]
                elif gran == 1:
                    s = ws[n, 0]
                else:
                    s = ws[n // FP8_BLOCK, kb]
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = ZERO
                k = k0
                if quant_a:
                    s = sa[m] * s
                    while k + LANES <= k1:
                        a0 += E4M3[ac[m, k]] * E4M3[wc[n, k]]
                        a1 += E4M3[ac[m, k + 1]] * E4M3[wc[n, k + 1]]
                        a2 += E4M3[ac[m, k + 2]] * E4M3[wc[n, k + 2]]
                        a3 += E4M3[ac[m, k + 3]] * E4M3[wc[n, k + 3]]
                        a4 += E4M3[ac[m, k + 4]] * E4M3[wc[n, k + 4]]
                        a5 += E4M3[ac[m, k + 5]] * E4M3[wc[n, k + 5]]
                        a6 += E4M3[ac[m, k + 6]] * E4M3[wc[n, k + 6]]
                        a7 += E4M3[ac[m, k + 7]] * E4M3[wc[n, k + 7]]
                        k += LANES
                    while k < k1:
                        a0 += E4M3[ac[m, k]] * E4M3[wc[n, k]]
                        k += 1
                else:
                    while k + LANES <= k1:
                        a0 += a[m, k] * E4M3[wc[n, k]]
                        a1 += a[m, k + 1] * E4M3[wc[n, k + 1]]
                        a2 += a[m, k + 2] * E4M3[wc[n, k + 2]]
                        a3 += a[m, k + 3] * E4M3[wc[n, k + 3]]
                        a4 += a[m, k + 4] * E4M3[wc[n, k + 4]]
                        a5 += a[m, k + 5] * E4M3[wc[n, k + 5]]
                        a6 += a[m, k + 6] * E4M3[wc[n, k + 6]]
                        a7 += a[m, k + 7] * E4M3[wc[n, k + 7]]
                        k += LANES
                    while k < k1:
                        a0 += a[m, k] * E4M3[wc[n, k]]
                        k += 1
                total += _tree8(a0, a1, a2, a3, a4, a5, a6, a7) * s
            out[m, n] = total


def quantize_fp8_per_token(a):
    codes = np.empty(a.shape, np.uint8)
    s = np.empty(a.shape[0], np.float32)
    _quantize_fp8_rows(np.ascontiguousarray(a), codes, s)
    return codes, s


def fp8_matmul(a, w, activation="none"):
    M = a.shape[0]
    N = w.codes.shape[0]
    gran = np.ndim(w.scale)
    ws = np.ascontiguousarray(w.scale, dtype=np.float32).reshape((1, 1) if gran == 0 else (N, 1) if gran == 1 else w.scale.shape)
    a = np.ascontiguousarray(a)
    if activation == "per_token":
        ac, sa = quantize_fp8_per_token(a)
    else:
        ac, sa = np.zeros((1, 1), np.uint8), np.ones(1, np.float32)
    out = np.empty((M, N), np.float32)
    _fp8(a, ac, sa, activation == "per_token", np.ascontiguousarray(w.codes), ws, gran, out)
    return out


MATMUL = {"W8A8": w8a8_matmul, "W4A16": w4a16_matmul, "FP8": fp8_matmul}


def accumulation(op: str, key: str, K: int, weight=None) -> dict:
    """refquant.gemm.depth arguments describing this backend's order for (op, key)."""
    if key == "W4A16":
        block = _prepack(weight)[-1] if weight is not None else K
        return dict(order="blocked", block=max(block, 1))
    if key == "FP8":
        return dict(order="blocked_lanes", lanes=LANES, block=FP8_BLOCK)
    raise KeyError(f"{op} {key} is not float-accumulating")
