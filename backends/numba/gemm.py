"""Numba twin of refquant/gemm.py: W8A8 (bit-exact), W4A16 and FP8 (float32 accumulation in a
stated order, inside refquant.gemm's bound).

Float orders (`accumulation`), for each output: K is cut into blocks (W4A16: the groups, in
group order after the act-order permutation; FP8: 128 columns). W4A16 sums each group
sequentially (written with explicit 16-lane vectors, `simd`, from codes packed eight per 32-bit
word once per weight; the act-order permutation is applied to the activation at each call):
"blocked". FP8 runs 8 strided float32 accumulators inside a block and sums them as a tree
((0+4, 1+5, 2+6, 3+7), then pairs, then the last two): "blocked_lanes". Each block's sum is
multiplied by its scale and added to a sequential float32 total. Each term carries p = 2
roundings (the product and the block scale; the W4A16 factor code - zero is an exact integer).
Where the activations make every W4A16 product exact (`_fusable`, checked on the whole
activation matrix at each call: float16 values, bfloat16 values within [2^-100, 2^100]), the
kernel adds each term with a fused multiply-add, which then gives the same bits as the product
rounded and added; otherwise it runs unfused."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.gemm import E4M3_MAX, FP8_BLOCK, e4m3_decode_table

from . import simd
from .numerics import F32, JIT, U64, ZERO, f32_bits

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

CHUNK = 128                  # outputs per chunk: 16 lanes x 8 nibbles of a 32-bit word
M23 = np.int32(0x4B000000)   # the bits of 2^23: (2^23 | v) read as float32 is 2^23 + v, v < 2^23
INLINE = dict(JIT, inline="always")


@njit(**INLINE)
def _codes_minus_zeros(x, z0, z1, z2, z3):
    """code - zero for the four nibbles at bits 0-3, 4-7, 8-11, 12-15 of each lane's word x,
    times 1, 16, 256 and 4096, exactly and without an integer-to-float conversion: with the
    bits of 2^23 OR-ed into the word, each nibble masked in place together with those bits reads
    as 2^23 + 16^j code (< 2^24, an exact float32); z_j holds 2^23 + 16^j zero, and the
    difference 16^j (code - zero) is exact."""
    xm = simd.or_(x, simd.splat_i32(M23))
    return (simd.sub(simd.as_f32(simd.and_(xm, simd.splat_i32(M23 | 0xF))), z0),
            simd.sub(simd.as_f32(simd.and_(xm, simd.splat_i32(M23 | 0xF0))), z1),
            simd.sub(simd.as_f32(simd.and_(xm, simd.splat_i32(M23 | 0xF00))), z2),
            simd.sub(simd.as_f32(simd.and_(xm, simd.splat_i32(M23 | 0xF000))), z3))


@njit(**INLINE)
def _zero_bits(zeros, at, j):
    """2^23 + 16^j zero for 16 outputs (uint8 zeros from offset `at`), as float32 lanes."""
    return simd.as_f32(simd.or_(simd.shl(simd.load_u8(zeros, at), simd.splat_i32(4 * j)), simd.splat_i32(M23)))


@njit(**PJIT)
def _w4a16(a1, a16, a256, a4096, fused, pk, scales, zeros, gstart, gid, out):
    """pk (nchunks, K, 16) uint32: chunk c covers outputs [128c, 128c + 128); word l of row k
    holds, in bits 4i..4i+3, the code of output 128c + 16i + l at column k, rows in group order
    (the act-order permutation applied once). scales (ngroups, nchunks*128) float32 and zeros
    (ngroups, nchunks*128) uint8, padded; gstart (ng+1,) the group boundaries in that order, gid
    their group numbers; a1 (M, K) the activations with columns in group order, a16, a256,
    a4096 the same divided by 16, 256, 4096.

    For each output, each group's sum runs sequentially over its columns, then is multiplied by
    its scale and added to a sequential total: order "blocked", block = the group size. A chunk's
    16 x 8 partial sums of a group are vector registers (simd): nibbles 0-3 of the words in one
    pass over the group's columns, nibbles 4-7 (the word shifted right by 16) in a second.
    Nibble i's term is a * (code - zero), formed as (a / 16^j) * (16^j (code - zero)), j = i mod 4.
    `fused` (see _fusable): the terms are exact, and an FMA adds them; otherwise
    16^j (code - zero) is scaled back to code - zero (exact) and a * (code - zero) is rounded,
    then added."""
    nch = pk.shape[0]
    M = a1.shape[0]
    N = out.shape[1]
    ngr = gstart.shape[0] - 1
    npad = U64(nch * CHUNK)
    zf = zeros.ravel()
    sc = scales.ravel()
    for c in prange(nch):
        code = pk[c].ravel()
        tot = np.empty(CHUNK, np.float32)
        for m in range(M):
            r1 = a1[m]
            r16 = a16[m]
            r256 = a256[m]
            r4096 = a4096[m]
            tot[:] = ZERO
            for gi in range(ngr):
                g = U64(gid[gi])
                k0 = U64(gstart[gi])
                k1 = U64(gstart[gi + 1])
                for half in range(2):
                    at = g * npad + U64(c * CHUNK + 64 * half)     # first output of this half
                    z0 = _zero_bits(zf, at, 0)
                    z1 = _zero_bits(zf, at + U64(16), 1)
                    z2 = _zero_bits(zf, at + U64(32), 2)
                    z3 = _zero_bits(zf, at + U64(48), 3)
                    sh = simd.splat_i32(16 * half)
                    s0 = simd.splat_f32(ZERO)
                    s1 = s0
                    s2 = s0
                    s3 = s0
                    if fused:
                        for k in range(k0, k1):
                            d0, d1, d2, d3 = _codes_minus_zeros(simd.shr(simd.load_u32(code, k * U64(16)), sh),
                                                                z0, z1, z2, z3)
                            s0 = simd.fma(simd.splat_f32(r1[k]), d0, s0)
                            s1 = simd.fma(simd.splat_f32(r16[k]), d1, s1)
                            s2 = simd.fma(simd.splat_f32(r256[k]), d2, s2)
                            s3 = simd.fma(simd.splat_f32(r4096[k]), d3, s3)
                    else:
                        for k in range(k0, k1):
                            d0, d1, d2, d3 = _codes_minus_zeros(simd.shr(simd.load_u32(code, k * U64(16)), sh),
                                                                z0, z1, z2, z3)
                            a = simd.splat_f32(r1[k])
                            s0 = simd.add(s0, simd.mul(a, d0))
                            s1 = simd.add(s1, simd.mul(a, simd.mul(d1, simd.splat_f32(F32(2.0**-4)))))
                            s2 = simd.add(s2, simd.mul(a, simd.mul(d2, simd.splat_f32(F32(2.0**-8)))))
                            s3 = simd.add(s3, simd.mul(a, simd.mul(d3, simd.splat_f32(F32(2.0**-12)))))
                    o = U64(64 * half)
                    simd.store_f32(tot, o, simd.add(simd.load_f32(tot, o), simd.mul(s0, simd.load_f32(sc, at))))
                    simd.store_f32(tot, o + U64(16), simd.add(simd.load_f32(tot, o + U64(16)),
                                                              simd.mul(s1, simd.load_f32(sc, at + U64(16)))))
                    simd.store_f32(tot, o + U64(32), simd.add(simd.load_f32(tot, o + U64(32)),
                                                              simd.mul(s2, simd.load_f32(sc, at + U64(32)))))
                    simd.store_f32(tot, o + U64(48), simd.add(simd.load_f32(tot, o + U64(48)),
                                                              simd.mul(s3, simd.load_f32(sc, at + U64(48)))))
            for i in range(min(CHUNK, N - c * CHUNK)):
                out[m, c * CHUNK + i] = tot[i]


# An activation the fused path takes: 0, or a normal float32 of at most 20 significant bits
# (the low 4 of its 23 fraction bits zero) with 2^-100 <= |a| <= 2^100. Then a * (code - zero)
# (|code - zero| <= 15, 4 bits) is exact and normal, so an FMA rounds exactly what
# s + a * (code - zero) rounds; and a / 4096 is exact. Every float16 value qualifies, and every
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
    activation), and the codes packed eight per 32-bit word in chunks of 128 outputs (see
    _w4a16)."""
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
    nch = max(1, -(-N // CHUNK))
    Np = nch * CHUNK
    c = np.zeros((Np, K), np.uint32)
    c[:N] = w.codes if identity else w.codes[:, perm]
    c = c.reshape(nch, 8, 16, K)                         # output 128 chunk + 16 i + l
    words = np.zeros((nch, 16, K), np.uint32)
    for i in range(8):
        words |= c[:, i] << np.uint32(4 * i)
    pk = np.ascontiguousarray(words.transpose(0, 2, 1))  # (nchunks, K, 16)
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
    _w4a16(ap, ap * F32(2.0**-4), ap * F32(2.0**-8), ap * F32(2.0**-12), _fusable(ap),
           pk, scalesP, zerosP, gstart, gid, out)
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


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"matmul": "W8A8 W4A16 FP8"}
MATMUL = {"W8A8": w8a8_matmul, "W4A16": w4a16_matmul, "FP8": fp8_matmul}


def accumulation(op: str, key: str, K: int, weight=None) -> dict:
    """refquant.gemm.depth arguments describing this backend's order for (op, key)."""
    if key == "W4A16":
        block = _prepack(weight)[-1] if weight is not None else K
        return dict(order="blocked", block=max(block, 1))
    if key == "FP8":
        return dict(order="blocked_lanes", lanes=LANES, block=FP8_BLOCK)
    raise KeyError(f"{op} {key} is not float-accumulating")
