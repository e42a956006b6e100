"""Numba twin of refquant/ggml/dot.py: ggml's CPU vec_dot for every weight type the spec has --
the legacy types (with IQ4_NL and MXFP4, which share their Q8_0 path), the Q8_K types (K-quants,
IQ4_XS, TQ1_0, TQ2_0, the lattice types IQ2_*, IQ3_*, IQ1_S, IQ1_M) and the nested Q8_0 types
Q1_0 and NVFP4 -- bit-exact with the spec (the generic kernels' order: legacy, sumf += term_b over
blocks, each term with C's association and the FMA that ggml's x86-64 build contracts for
Q4_1/Q5_1; K-quants, 8 integer lanes per super-block and the float steps of the spec's
combine_k; lattice types, integer weights from the unit-scale dequantizer; Q1_0/NVFP4, the
spec's combine_nested). An FMA appears only where the spec has fma_f32 (fmaf here)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.ggml.dot import VEC_DOT_TYPE
from refquant.registry import get_format

from ..numerics import F32, JIT, ONE, ZERO, bits_f32, fmaf, fp16_to_fp32, fp32_to_fp16_bits, store_fp16
from .fp4 import UE4M3_HALF
from .kquants import _q3_scale, _quantize_q8_k, _scale_min_k4
from .legacy import _quantize_q8

QK = 32
PJIT = dict(JIT, parallel=True)


def _at(name: str, field: str) -> int:
    """The byte offset of a field in a block, from the type's declared layout (refquant.ggml.layout)."""
    return get_format(name).layout.offset(field)


def _kinds(*names):
    """weight type -> (type_size, kind), kind its position in `names`; and the type sizes by kind."""
    table = {name: (get_format(name).type_size, kind) for kind, name in enumerate(names)}
    return table, tuple(ts for ts, _ in table.values())


# kind 0 Q4_0, 1 Q4_1, 2 Q5_0, 3 Q5_1, 4 Q8_0, 5 IQ4_NL, 6 MXFP4
KIND, KIND_TS = _kinds("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4")
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int32)
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int32)
INT_MIN_F = F32(-2147483648.0)
INT_LIM_F = F32(2147483648.0)
F127 = F32(127)


@njit(**PJIT)
def _unpack(data, kind, q, d, m):
    """Weight rows -> integer codes q (N, K) int8 as vec_dot uses them, d and m (N, nb) float32."""
    ts = KIND_TS[kind]
    N = data.shape[0]
    nb = data.shape[1] // ts
    for r in prange(N):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            y = q[r, b * QK:(b + 1) * QK]
            if kind == 5 or kind == 6:      # 16-entry tables: IQ4_NL (fp16 d), MXFP4 (e8m0 / 2)
                table = KVALUES_IQ4NL if kind == 5 else KVALUES_MXFP4
                at = 2 if kind == 5 else 1
                if kind == 5:
                    d[r, b] = fp16_to_fp32(o[0], o[1])
                else:
                    e = np.int32(o[0])
                    d[r, b] = bits_f32(np.int32(0x00200000 << e) if e < 2 else np.int32((e - 1) << 23))
                for j in range(QK // 2):
                    y[j] = table[np.int32(o[at + j]) & 0x0F]
                    y[j + 16] = table[np.int32(o[at + j]) >> 4]
                continue
            d[r, b] = fp16_to_fp32(o[0], o[1])
            if kind == 4:
                for j in range(QK):
                    v = np.int32(o[2 + j])
                    y[j] = v - 256 if v > 127 else v
                continue
            at = 2
            if kind == 1 or kind == 3:
                m[r, b] = fp16_to_fp32(o[2], o[3])
                at = 4
            qh = np.uint32(0)
            if kind >= 2:
                qh = np.uint32(o[at]) | (np.uint32(o[at + 1]) << 8) | (np.uint32(o[at + 2]) << 16) | (np.uint32(o[at + 3]) << 24)
                at += 4
            off = (8, 0, 16, 0, 0, 0, 0)[kind]
            for j in range(QK // 2):
                h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
                h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
                y[j] = ((np.int32(o[at + j]) & 0x0F) | h0) - off
                y[j + 16] = ((np.int32(o[at + j]) >> 4) | h1) - off


@njit(**PJIT)
def _unpack_q8(data, with_sum, q, d, s):
    ts = 36 if with_sum else 34
    at = 4 if with_sum else 2
    nb = data.shape[1] // ts
    for r in prange(data.shape[0]):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            d[r, b] = fp16_to_fp32(o[0], o[1])
            if with_sum:
                s[r, b] = fp16_to_fp32(o[2], o[3])
            for j in range(QK):
                v = np.int32(o[at + j])
                q[r, b * QK + j] = v - 256 if v > 127 else v


@njit(**PJIT)
def _vec_dot(kind, wq, wd, wm, aq, ad, as_, out):
    N, K = wq.shape
    M = aq.shape[0]
    nb = K // QK
    for n in prange(N):
        for mi in range(M):
            sumf = ZERO
            for b in range(nb):
                sumi = np.int32(0)
                for j in range(b * QK, (b + 1) * QK):
                    sumi += np.int32(wq[n, j]) * np.int32(aq[mi, j])
                s = F32(sumi)
                dw = wd[n, b]
                da = ad[mi, b]
                if kind == 0:
                    t = (s * dw) * da
                elif kind == 2 or kind == 5 or kind == 6:
                    t = (dw * da) * s
                elif kind == 4:
                    t = s * (dw * da)
                else:
                    t = fmaf(dw * da, s, wm[n, b] * as_[mi, b])
                sumf += t
            out[mi, n] = sumf


@njit(**PJIT)
def _quantize_q8_x86(x, out, with_sum):
    """The AVX2 from_float: multiplier 127/amax, round half to even, saturating int8 packing."""
    nrows, n = x.shape
    nb = n // QK
    ts = 36 if with_sum else 34
    at = 4 if with_sum else 2
    for r in prange(nrows):
        for b in range(nb):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * ts:(b + 1) * ts]
            amax = ZERO
            for j in range(QK):
                amax = max(amax, abs(xb[j]))
            d = amax / F127
            idv = F127 / amax if amax != ZERO else ZERO
            total = np.int64(0)
            for j in range(QK):
                v = np.float32(np.rint(xb[j] * idv))
                if v >= INT_MIN_F and v < INT_LIM_F:
                    iv = np.int64(v)
                else:
                    iv = np.int64(-2147483648)  # NaN, out of range: integer indefinite
                total += iv
                c = min(max(iv, -128), 127)
                o[at + j] = np.uint8(c & 0xFF)
            store_fp16(o, 0, d)
            if with_sum:
                t32 = np.int32(((total + 2147483648) % 4294967296) - 2147483648)  # int32 adds wrap
                store_fp16(o, 2, F32(t32) * d)


def quantize_activation(a, qtype, variant="ref"):
    with_sum = qtype == "Q8_1"
    out = np.empty((a.shape[0], a.shape[1] // QK * (36 if with_sum else 34)), np.uint8)
    if variant == "ref":
        _quantize_q8(np.ascontiguousarray(a), out, with_sum)
    else:
        _quantize_q8_x86(np.ascontiguousarray(a), out, with_sum)
    return out


def _make(name):
    ts, kind = KIND[name]
    vt = VEC_DOT_TYPE[name]

    def vec_dot(w, a, variant="ref"):
        N = w.shape[0]
        K = w.shape[1] // ts * QK
        nb = K // QK
        wq = np.empty((N, K), np.int8)
        wd = np.empty((N, nb), np.float32)
        wm = np.zeros((N, nb), np.float32)
        _unpack(np.ascontiguousarray(w), kind, wq, wd, wm)
        qa = quantize_activation(a, vt, variant)
        M = a.shape[0]
        aq = np.empty((M, K), np.int8)
        ad = np.empty((M, nb), np.float32)
        as_ = np.zeros((M, nb), np.float32)
        _unpack_q8(qa, vt == "Q8_1", aq, ad, as_)
        out = np.empty((M, N), np.float32)
        _vec_dot(kind, wq, wd, wm, aq, ad, as_, out)
        return out
    vec_dot.__name__ = f"vec_dot_{name.lower()}"
    return vec_dot


VEC_DOT = {name: _make(name) for name in KIND}


# --------------------------------------------------------------------------- K-quants (Q8_K)
#
# The twin of the spec's K-quant section: codes q, per-16 integer scales sc and mins m as the
# generic kernels read them, 8 integer lanes (positions p = l mod 8), then the float32 steps of
# refquant.ggml.dot.combine_k, fused where ggml's build fuses (fmaf) and nowhere else.

QK_K = 256
# kind 0 Q2_K, 1 Q3_K, 2 Q4_K, 3 Q5_K, 4 Q6_K, 5 IQ4_XS, 6 TQ1_0, 7 TQ2_0
K_KIND, K_TS = _kinds("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "TQ1_0", "TQ2_0")
# the fields' byte offsets the kernels index, from the declared layouts
Q2K_SCALES, Q2K_QS, Q2K_D, Q2K_DMIN = (_at("Q2_K", f) for f in ("scales", "qs", "d", "dmin"))
Q3K_HMASK, Q3K_QS, Q3K_SCALES, Q3K_D = (_at("Q3_K", f) for f in ("hmask", "qs", "scales", "d"))
Q4K_D, Q4K_DMIN, Q4K_SCALES, Q4K_QS = (_at("Q4_K", f) for f in ("d", "dmin", "scales", "qs"))
Q5K_QH, Q5K_QS = _at("Q5_K", "qh"), _at("Q5_K", "qs")
Q6K_QL, Q6K_QH, Q6K_SCALES, Q6K_D = (_at("Q6_K", f) for f in ("ql", "qh", "scales", "d"))
IQ4XS_D, IQ4XS_SH, IQ4XS_SL, IQ4XS_QS = (_at("IQ4_XS", f) for f in ("d", "scales_h", "scales_l", "qs"))
TQ1_QS, TQ1_QH, TQ1_D = (_at("TQ1_0", f) for f in ("qs", "qh", "d"))
TQ2_QS, TQ2_D = _at("TQ2_0", "qs"), _at("TQ2_0", "d")
if (_at("Q5_K", "d"), _at("Q5_K", "dmin"), _at("Q5_K", "scales")) != (Q4K_D, Q4K_DMIN, Q4K_SCALES):
    raise AssertionError("Q4_K and Q5_K share the kernel's d, dmin and scales offsets")
POW3 = np.array([1, 3, 9, 27, 81, 243], np.int32)


@njit(**dict(JIT, inline="always"))
def _trit(byte, l):
    """(((uint8_t)(byte * pow3[l])) * 3) >> 8, minus 1: TQ1_0's base-3 digit l."""
    return (((np.int32(byte) * POW3[l]) & 0xFF) * 3 >> 8) - 1


@njit(**PJIT)
def _unpack_k(data, kind, q, sc, m, d, dmin):
    """Weight rows -> codes q (N, K) int8, per-16 scales sc and mins m (N, K/16) int32,
    d and dmin (N, nb) float32."""
    ts = K_TS[kind]
    N = data.shape[0]
    nb = data.shape[1] // ts
    for r in prange(N):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            y = q[r, b * QK_K:(b + 1) * QK_K]
            s = sc[r, b * 16:(b + 1) * 16]
            mm = m[r, b * 16:(b + 1) * 16]
            if kind == 0:
                d[r, b] = fp16_to_fp32(o[Q2K_D], o[Q2K_D + 1])
                dmin[r, b] = fp16_to_fp32(o[Q2K_DMIN], o[Q2K_DMIN + 1])
                for j in range(16):
                    s[j] = np.int32(o[Q2K_SCALES + j]) & 0xF
                    mm[j] = np.int32(o[Q2K_SCALES + j]) >> 4
                for e in range(QK_K):
                    h, rest = divmod(e, 128)
                    k, l = divmod(rest, 32)
                    y[e] = (np.int32(o[Q2K_QS + 32 * h + l]) >> (2 * k)) & 3
            elif kind == 1:
                d[r, b] = fp16_to_fp32(o[Q3K_D], o[Q3K_D + 1])
                for j in range(16):
                    s[j] = _q3_scale(o, Q3K_SCALES, j) - 32
                for e in range(QK_K):
                    h, rest = divmod(e, 128)
                    k, l = divmod(rest, 32)
                    v = (np.int32(o[Q3K_QS + 32 * h + l]) >> (2 * k)) & 3
                    if (np.int32(o[Q3K_HMASK + e % 32]) >> (e // 32)) & 1 == 0:
                        v -= 4
                    y[e] = v
            elif kind == 2 or kind == 3:
                d[r, b] = fp16_to_fp32(o[Q4K_D], o[Q4K_D + 1])
                dmin[r, b] = fp16_to_fp32(o[Q4K_DMIN], o[Q4K_DMIN + 1])
                for j in range(8):
                    a, mn = _scale_min_k4(o, Q4K_SCALES, j)
                    s[2 * j] = a
                    s[2 * j + 1] = a
                    mm[2 * j] = mn
                    mm[2 * j + 1] = mn
                at = Q4K_QS if kind == 2 else Q5K_QS
                for e in range(QK_K):
                    c, rest = divmod(e, 64)
                    half, l = divmod(rest, 32)
                    v = np.int32(o[at + 32 * c + l])
                    v = (v & 0xF) if half == 0 else (v >> 4)
                    if kind == 3:
                        v += ((np.int32(o[Q5K_QH + l]) >> (e // 32)) & 1) << 4
                    y[e] = v
            elif kind == 5:
                d[r, b] = fp16_to_fp32(o[IQ4XS_D], o[IQ4XS_D + 1])
                sh = np.int32(o[IQ4XS_SH]) | (np.int32(o[IQ4XS_SH + 1]) << 8)
                for ib in range(8):
                    ls = ((np.int32(o[IQ4XS_SL + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
                    s[2 * ib] = ls - 32
                    s[2 * ib + 1] = ls - 32
                    for j in range(16):
                        y[32 * ib + j] = KVALUES_IQ4NL[np.int32(o[IQ4XS_QS + 16 * ib + j]) & 0xF]
                        y[32 * ib + 16 + j] = KVALUES_IQ4NL[np.int32(o[IQ4XS_QS + 16 * ib + j]) >> 4]
            elif kind == 6:
                d[r, b] = fp16_to_fp32(o[TQ1_D], o[TQ1_D + 1])
                for j in range(16):
                    s[j] = 1
                for l in range(5):
                    for mm_ in range(32):
                        y[32 * l + mm_] = _trit(o[TQ1_QS + mm_], l)
                    for mm_ in range(16):
                        y[160 + 16 * l + mm_] = _trit(o[TQ1_QS + 32 + mm_], l)
                for l in range(4):
                    for j in range(4):
                        y[240 + 4 * l + j] = _trit(o[TQ1_QH + j], l)
            elif kind == 7:
                d[r, b] = fp16_to_fp32(o[TQ2_D], o[TQ2_D + 1])
                for j in range(16):
                    s[j] = 1
                for e in range(QK_K):
                    h, rest = divmod(e, 128)
                    k, l = divmod(rest, 32)
                    y[e] = ((np.int32(o[TQ2_QS + 32 * h + l]) >> (2 * k)) & 3) - 1
            else:
                d[r, b] = fp16_to_fp32(o[Q6K_D], o[Q6K_D + 1])
                for j in range(16):
                    v = np.int32(o[Q6K_SCALES + j])
                    s[j] = v - 256 if v > 127 else v
                for e in range(QK_K):
                    h, rest = divmod(e, 128)
                    k, l = divmod(rest, 32)
                    low = np.int32(o[Q6K_QL + 64 * h + 32 * (k & 1) + l])
                    low = (low & 0xF) if k < 2 else (low >> 4)
                    high = (np.int32(o[Q6K_QH + 32 * h + l]) >> (2 * k)) & 3
                    y[e] = (low | (high << 4)) - 32


@njit(**PJIT)
def _unpack_q8_k(data, q, d, bsums):
    nb = data.shape[1] // 292
    for r in prange(data.shape[0]):
        for b in range(nb):
            o = data[r, b * 292:(b + 1) * 292]
            d[r, b] = bits_f32(np.int32(np.uint32(o[0]) | (np.uint32(o[1]) << 8) | (np.uint32(o[2]) << 16) | (np.uint32(o[3]) << 24)))
            for j in range(QK_K):
                v = np.int32(o[4 + j])
                q[r, b * QK_K + j] = v - 256 if v > 127 else v
            for j in range(16):
                v = np.int32(o[260 + 2 * j]) | (np.int32(o[261 + 2 * j]) << 8)
                bsums[r, b * 16 + j] = v - 65536 if v > 32767 else v


@njit(**dict(JIT, inline="always"))
def _fused_neg(x):
    """-x as vfmsub/vfnmadd apply it: a NaN keeps its sign."""
    return x if x != x else -x


@njit(**PJIT)
def _vec_dot_k(kind, wq, wsc, wm, wd, wdmin, aq, ad, abs_, out):
    N, K = wq.shape
    M = aq.shape[0]
    nb = K // QK_K
    for n in prange(N):
        lanes = np.zeros(8, np.int32)
        sums = np.zeros(8, np.float32)
        for mi in range(M):
            sumf = ZERO
            for l in range(8):
                sums[l] = ZERO
            for b in range(nb):
                for l in range(8):
                    lanes[l] = 0
                for p in range(QK_K):
                    e = b * QK_K + p
                    lanes[p % 8] += wsc[n, e // 16] * np.int32(wq[n, e]) * np.int32(aq[mi, e])
                summs = np.int32(0)
                if kind == 0 or kind == 2 or kind == 3:
                    for j in range(16):
                        summs += wm[n, b * 16 + j] * abs_[mi, b * 16 + j]
                d = wd[n, b] * ad[mi, b]
                if kind == 0:
                    isum = np.int32(0)
                    for l in range(8):
                        isum += lanes[l]
                    dmin = wdmin[n, b] * ad[mi, b]
                    sumf += fmaf(d, F32(isum), _fused_neg(dmin * F32(summs)))
                elif kind == 1 or kind == 4:
                    for l in range(8):
                        sums[l] = sums[l] + d * F32(lanes[l])
                elif kind == 2 or kind == 3:
                    for l in range(8):
                        sums[l] = fmaf(d, F32(lanes[l]), sums[l])
                    dmin = wdmin[n, b] * ad[mi, b]
                    sumf = fmaf(_fused_neg(dmin), F32(summs), sumf)
                elif kind == 5:                 # sub-blocks of 32: (d4d8 * (ls - 32)) * sumi
                    for u in range(8):
                        sumi = np.int32(0)
                        for p in range(32 * u, 32 * u + 32):
                            e = b * QK_K + p
                            sumi += np.int32(wq[n, e]) * np.int32(aq[mi, e])
                        dl = d * F32(wsc[n, b * 16 + 2 * u])
                        sumf += dl * F32(sumi)
                else:                           # TQ1_0, TQ2_0: (float)sumi * d
                    isum = np.int32(0)
                    for l in range(8):
                        isum += lanes[l]
                    sumf += F32(isum) * d
            if kind >= 1 and kind <= 4:
                for l in range(8):
                    sumf += sums[l]
            out[mi, n] = sumf


def _q8_k_activations(a, nb: int):
    """The activations a (M, nb * QK_K) as ggml's K and lattice-IQ dot products take them: Q8_K
    (one quantizer for both variants), unpacked to codes, scales and the group sums."""
    M = a.shape[0]
    qa = np.empty((M, nb * 292), np.uint8)
    _quantize_q8_k(np.ascontiguousarray(a), qa, QK_K, np.zeros(M, np.uint8))   # NaN/Inf: C's bytes
    aq = np.empty((M, nb * QK_K), np.int8)
    ad = np.empty((M, nb), np.float32)
    abs_ = np.empty((M, nb * 16), np.int32)
    _unpack_q8_k(qa, aq, ad, abs_)
    return aq, ad, abs_


def _make_k(name):
    ts, kind = K_KIND[name]

    def vec_dot(w, a, variant="ref"):
        N = w.shape[0]
        nb = w.shape[1] // ts
        K = nb * QK_K
        wq = np.empty((N, K), np.int8)
        wsc = np.zeros((N, K // 16), np.int32)
        wm = np.zeros((N, K // 16), np.int32)
        wd = np.empty((N, nb), np.float32)
        wdmin = np.zeros((N, nb), np.float32)
        _unpack_k(np.ascontiguousarray(w), kind, wq, wsc, wm, wd, wdmin)
        M = a.shape[0]
        aq, ad, abs_ = _q8_k_activations(a, nb)
        out = np.empty((M, N), np.float32)
        _vec_dot_k(kind, wq, wsc, wm, wd, wdmin, aq, ad, abs_, out)
        return out
    vec_dot.__name__ = f"vec_dot_{name.lower()}"
    return vec_dot


VEC_DOT.update({name: _make_k(name) for name in K_KIND})


# --------------------------------------------------------------------------- lattice IQ types (Q8_K)
#
# The twin of the spec's lattice section: the integer weights w_p are the dequantizer's output
# with d = 1 (backends/numba/ggml/iquants_grid.py, bit-exact with the spec's), divided by the
# final power-of-two factor (IQ2_*: 0.125, IQ3_XXS: 0.25, IQ3_S: 1); for IQ1_S/IQ1_M the unit
# decode ls * (g + delta) splits into the grid part q_p = ls_p * g_p and the delta part
# qd_p = ls_p * sign_p. Float steps as refquant.ggml.dot.combine_k: lattice sumf = sumf + f(bsum) * d_b
# (unfused), then * FINAL; IQ1 sumf = fmaf(d_b, fmaf(f(delta part), 0.125f, f(grid part)), sumf).

# weight type -> (type_size, kind, final factor): kind 0 lattice (fp16 d at byte 0), 1 IQ1_S, 2 IQ1_M
IQ_KIND = {name: (get_format(name).type_size, kind, final) for name, kind, final in [
    ("IQ2_XXS", 0, 0.125), ("IQ2_XS", 0, 0.125), ("IQ2_S", 0, 0.125), ("IQ3_XXS", 0, 0.25), ("IQ3_S", 0, 1.0),
    ("IQ1_S", 1, 1.0), ("IQ1_M", 2, 1.0)]}
IQ1_DELTA = F32(0.125)


@njit(**PJIT)
def _unit_scale_iq(data, kind, ts, unit, wd, ls, sgn):
    """Copy every block with its d set to 1 (fp16 0x3C00) into unit, its d into wd (N, nb); for
    IQ1_S/IQ1_M the odd scale ls and the delta sign (-1 where the delta is negative) of each
    position into ls, sgn (N, K) int32."""
    N = data.shape[0]
    nb = data.shape[1] // ts
    for r in prange(N):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            u = unit[r, b * ts:(b + 1) * ts]
            for j in range(ts):
                u[j] = o[j]
            if kind != 2:
                wd[r, b] = fp16_to_fp32(o[0], o[1])
                u[0] = np.uint8(0x00)
                u[1] = np.uint8(0x3C)
            else:   # d in the top nibbles of the four u16 scales (bytes 49, 51, 53, 55)
                lo = (np.int32(o[49]) >> 4) | (np.int32(o[51]) & 0xF0)
                hi = (np.int32(o[53]) >> 4) | (np.int32(o[55]) & 0xF0)
                wd[r, b] = fp16_to_fp32(np.uint8(lo), np.uint8(hi))
                nibs = (0x0, 0x0, 0xC, 0x3)
                for k in range(4):
                    u[49 + 2 * k] = np.uint8((np.int32(o[49 + 2 * k]) & 0x0F) | (nibs[k] << 4))
            if kind == 1:       # qh: u16[8] at 34: bits 12-14 ls, bit 15 delta sign, per 32
                for ib in range(8):
                    qh = np.int32(o[34 + 2 * ib]) | (np.int32(o[35 + 2 * ib]) << 8)
                    l_ = 2 * ((qh >> 12) & 7) + 1
                    s_ = -1 if qh & 0x8000 else 1
                    for p in range(32):
                        ls[r, b * QK_K + 32 * ib + p] = l_
                        sgn[r, b * QK_K + 32 * ib + p] = s_
            elif kind == 2:     # 3-bit scales per 16 in the u16 scales, delta bits 3/7 of qh per 8
                for ib in range(8):
                    word = np.int32(o[48 + 2 * (ib // 2)]) | (np.int32(o[49 + 2 * (ib // 2)]) << 8)
                    sh = 6 * (ib % 2)
                    for k in range(4):
                        l_ = 2 * ((word >> (sh + 3 * (k // 2))) & 7) + 1
                        q = np.int32(o[32 + 2 * ib + k // 2])
                        s_ = -1 if q & (0x08 if k % 2 == 0 else 0x80) else 1
                        for j in range(8):
                            ls[r, b * QK_K + 32 * ib + 8 * k + j] = l_
                            sgn[r, b * QK_K + 32 * ib + 8 * k + j] = s_


@njit(**PJIT)
def _vec_dot_iq(kind, final, wq, wqd, wd, aq, ad, abs_, out):
    N, K = wq.shape
    M = aq.shape[0]
    nb = K // QK_K
    for n in prange(N):
        for mi in range(M):
            sumf = ZERO
            for b in range(nb):
                bsum = np.int32(0)
                for p in range(b * QK_K, (b + 1) * QK_K):
                    bsum += wq[n, p] * np.int32(aq[mi, p])
                d = wd[n, b] * ad[mi, b]
                if kind == 0:
                    sumf += F32(bsum) * d
                else:
                    delta = np.int32(0)
                    if kind == 1:   # IQ1_S: ls * sign per 32 against the stored bsums (per 16)
                        for j in range(16):
                            delta += wqd[n, b * QK_K + 16 * j] * abs_[mi, b * 16 + j]
                    else:           # IQ1_M: per position against the qs
                        for p in range(b * QK_K, (b + 1) * QK_K):
                            delta += wqd[n, p] * np.int32(aq[mi, p])
                    sumf = fmaf(d, fmaf(F32(delta), IQ1_DELTA, F32(bsum)), sumf)
            if final != ONE:
                sumf = final * sumf
            out[mi, n] = sumf


def _iq_weights(name, w):
    """Weight rows -> (q, qd (N, K) int32, d (N, nb) float32) from the unit-scale decode."""
    from .iquants_grid import DEQUANTIZE
    ts, kind, final = IQ_KIND[name]
    w = np.ascontiguousarray(w)
    N = w.shape[0]
    nb = w.shape[1] // ts
    K = nb * QK_K
    unit = np.empty_like(w)
    wd = np.empty((N, nb), np.float32)
    ls = np.ones((N, K), np.int32)
    sgn = np.ones((N, K), np.int32)
    _unit_scale_iq(w, kind, ts, unit, wd, ls, sgn)
    y = DEQUANTIZE[name](unit).astype(np.float64)
    if kind == 0:
        qf = y / final
        q = qf.astype(np.int32)
        if not (q == qf).all():
            raise AssertionError(f"{name}: the unit-scale decode is not integral")
        return q, q, wd
    g = y / ls - float(IQ1_DELTA) * sgn
    if not ((g == np.rint(g)).all() and (np.abs(g) <= 1).all()):
        raise AssertionError(f"{name}: the unit-scale decode is not ls * (g + delta)")
    return (ls * g.astype(np.int32)).astype(np.int32), (ls * sgn).astype(np.int32), wd


def _make_iq(name):
    ts, kind, final = IQ_KIND[name]

    def vec_dot(w, a, variant="ref"):
        wq, wqd, wd = _iq_weights(name, w)
        nb = wd.shape[1]
        M = a.shape[0]
        aq, ad, abs_ = _q8_k_activations(a, nb)
        out = np.empty((M, wq.shape[0]), np.float32)
        _vec_dot_iq(kind, F32(final), wq, wqd, wd, aq, ad, abs_, out)
        return out
    vec_dot.__name__ = f"vec_dot_{name.lower()}"
    return vec_dot


VEC_DOT.update({name: _make_iq(name) for name in IQ_KIND})


# --------------------------------------------------------------------------- Q1_0, NVFP4 (Q8_0)
#
# The twin of the spec's NESTED section (separate multiplies and adds):
#   Q1_0   per block of 128: sumi_f = 0; for k in 0..3: sumi_f = sumi_f + f(sumi_k) * d_y[k];
#          sumf = sumf + d * sumi_f
#   NVFP4  per sub-block s of 16: sumf = sumf + f(sumi_s) * (d_y[s/2] * d[s])

NESTED_KIND = {name: (get_format(name).type_size, kind, get_format(name).block_size)
               for kind, name in enumerate(("Q1_0", "NVFP4"))}
NESTED_TS = tuple(ts for ts, _, _ in NESTED_KIND.values())


@njit(**PJIT)
def _unpack_nested(data, kind, q, d):
    """Weight rows -> codes q (N, K) int8 and scales d: Q1_0 (N, nb), NVFP4 (N, 4 nb) float32."""
    ts = NESTED_TS[kind]
    nb = data.shape[1] // ts
    for r in prange(data.shape[0]):
        for b in range(nb):
            o = data[r, b * ts:(b + 1) * ts]
            if kind == 0:
                d[r, b] = fp16_to_fp32(o[0], o[1])
                for e in range(128):
                    q[r, 128 * b + e] = 1 if (np.int32(o[2 + e // 8]) >> (e % 8)) & 1 else -1
            else:
                for s in range(4):
                    d[r, 4 * b + s] = UE4M3_HALF[o[s]]
                    for j in range(8):
                        c = np.int32(o[4 + 8 * s + j])
                        q[r, 64 * b + 16 * s + j] = KVALUES_MXFP4[c & 0x0F]
                        q[r, 64 * b + 16 * s + 8 + j] = KVALUES_MXFP4[c >> 4]


@njit(**PJIT)
def _vec_dot_nested(kind, wq, wd, aq, ad, out):
    N, K = wq.shape
    M = aq.shape[0]
    for n in prange(N):
        for mi in range(M):
            sumf = ZERO
            if kind == 0:
                for b in range(K // 128):
                    si = ZERO
                    for k in range(4):
                        sumi = np.int32(0)
                        for p in range(128 * b + 32 * k, 128 * b + 32 * k + 32):
                            sumi += np.int32(wq[n, p]) * np.int32(aq[mi, p])
                        si = si + F32(sumi) * ad[mi, 4 * b + k]
                    sumf = sumf + wd[n, b] * si
            else:
                for u in range(K // 16):
                    sumi = np.int32(0)
                    for p in range(16 * u, 16 * u + 16):
                        sumi += np.int32(wq[n, p]) * np.int32(aq[mi, p])
                    dd = ad[mi, u // 2] * wd[n, u]
                    sumf = sumf + F32(sumi) * dd
            out[mi, n] = sumf


def _make_nested(name):
    ts, kind, block = NESTED_KIND[name]

    def vec_dot(w, a, variant="ref"):
        w = np.ascontiguousarray(w)
        N = w.shape[0]
        nb = w.shape[1] // ts
        K = nb * block
        wq = np.empty((N, K), np.int8)
        wd = np.empty((N, nb if kind == 0 else 4 * nb), np.float32)
        _unpack_nested(w, kind, wq, wd)
        qa = quantize_activation(a, "Q8_0", variant)
        M = a.shape[0]
        aq = np.empty((M, K), np.int8)
        ad = np.empty((M, K // QK), np.float32)
        _unpack_q8(qa, False, aq, ad, ad)
        out = np.empty((M, N), np.float32)
        _vec_dot_nested(kind, wq, wd, aq, ad, out)
        return out
    vec_dot.__name__ = f"vec_dot_{name.lower()}"
    return vec_dot


VEC_DOT.update({name: _make_nested(name) for name in NESTED_KIND})

# What VEC_DOT holds (built above from KIND, K_KIND, IQ_KIND and NESTED_KIND), read from this line
# by the backend without importing the module (refquant.backend.TableBackend);
# tests/test_backend_numba.py holds it equal to the table.
DECLARES = {"vec_dot": "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL MXFP4 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS TQ1_0 TQ2_0 "
                       "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M Q1_0 NVFP4"}
