"""Numba twin of refquant/ggml/fp4.py: ggml's MXFP4 and NVFP4, bit-exact with it.

The scale codes decode through 256-entry tables taken from the spec's own decoders (E8M0 and
UE4M3 halves). MXFP4's shared exponent is (uint8_t)(floorf(log2f(amax)) - 2 + 127): a
transcendental whose last-bit rounding just below a power of two decides the exponent (the spec's
NumPy log2 rounds up to the next integer for up to a few dozen floats below 2^k). It is computed
in the quantize kernel from amax's bits and a table read off the spec's own rule
(refquant.ggml.fp4.mxfp4_shared_exponent) at import: within each binade of positive floats
(each normal exponent field, each leading-bit position of the subnormals) the spec's code is one
value below a threshold and another from it (`mxfp4_exponent_table`, found by bisection on the
spec); tests/test_backend_numba_fp4_exponent.py holds the rule equal to the spec's on every
positive finite float32 (exhaustively in the thorough profile)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.ggml.fp4 import (KVALUES_MXFP4, e8m0_to_fp32_half, mxfp4_shared_exponent,
                               ue4m3_to_fp32_half)
from refquant.registry import get_format

from ..api import checked
from ..numerics import F32, INF_BITS, JIT, MAG, U64, ZERO, c_float_to_int32, f32_bits


def _binade_bounds():
    """The 277 binades of positive finite float32 as bit ranges [lo, hi): the subnormals with
    leading bit p (p = 0..22: [2^p, 2^(p+1))), then the normal exponent fields 1..254."""
    lo = np.array([1 << p for p in range(23)] + [e << 23 for e in range(1, 255)], np.int64)
    hi = np.array([2 << p for p in range(23)] + [(e + 1) << 23 for e in range(1, 255)], np.int64)
    return lo, hi


def mxfp4_exponent_table():
    """(code_lo, code_hi, threshold) per binade (see _binade_bounds): the spec's shared-exponent
    code of a positive float whose bits b lie in the binade is code_lo below `threshold` and
    code_hi from it. The threshold is found by bisection on the spec's own function, so the
    table holds exactly when the spec's code steps at most once per binade (proved over every
    float by the exhaustive test)."""
    lo, hi = _binade_bounds()
    spec = lambda b: mxfp4_shared_exponent(b.astype(np.uint32).view(F32))
    code_lo, code_hi = spec(lo), spec(hi - 1)
    a, b = lo.copy(), hi.copy()          # invariant: spec(a) == code_lo, spec(b) != code_lo or b == hi
    while np.any(b - a > 1):
        m = (a + b) // 2
        same = spec(m) == code_lo
        a = np.where(same, m, a)
        b = np.where(same, b, m)
    thr = np.where(code_hi == code_lo, hi, b)
    return code_lo.astype(np.uint8), code_hi.astype(np.uint8), thr.astype(np.uint32)


MX_CODE_LO, MX_CODE_HI, MX_THRESHOLD = mxfp4_exponent_table()


@njit(**dict(JIT, inline="always"))
def mxfp4_exponent_code(amax):
    """mxfp4_shared_exponent (the spec) of one float32 amax >= 0, finite: 0 for 0, else the
    binade's table entry."""
    return mxfp4_exponent_code_bits(np.int64(f32_bits(amax)) & 0x7FFFFFFF)


@njit(**dict(JIT, inline="always"))
def mxfp4_exponent_code_bits(b):
    """mxfp4_exponent_code of the float whose bits are b (0 <= b < 0x7F800000)."""
    if b == 0:
        return np.uint8(0)
    if b >= (1 << 23):
        k = (b >> 23) + 22
    else:                                # a subnormal: its leading bit's position
        k = np.int64(0)
        while (b >> (k + 1)) != 0:
            k += 1
    return MX_CODE_HI[k] if b >= MX_THRESHOLD[k] else MX_CODE_LO[k]

# block sizes, type sizes and the fields' byte offsets, from the declared layouts (refquant.ggml.layout)
_MX, _NV = get_format("MXFP4").layout, get_format("NVFP4").layout
QK_MXFP4, MX_TS, MX_E, MX_QS = _MX.block_size, _MX.type_size, _MX.offset("e"), _MX.offset("qs")
QK_NVFP4, NV_TS, NV_D, NV_QS = _NV.block_size, _NV.type_size, _NV.offset("d"), _NV.offset("qs")
PJIT = dict(JIT, parallel=True)
KV = KVALUES_MXFP4.astype(np.float32)
E8M0_HALF = e8m0_to_fp32_half(np.arange(256, dtype=np.uint32))
UE4M3_HALF = ue4m3_to_fp32_half(np.arange(256, dtype=np.uint8))


@njit(**dict(JIT, inline="always"))
def best_index_mxfp4(x, d):
    """The first code i minimising fabsf(kvalues_mxfp4[i] * d - x)."""
    best_err = abs(KV[0] * d - x)
    best = 0
    for i in range(1, 16):
        err = abs(KV[i] * d - x)
        if err < best_err:
            best = i
            best_err = err
    return best


@njit(**dict(JIT, inline="always"))
def _amax(xb):
    amax = ZERO
    for j in range(xb.shape[0]):
        a = abs(xb[j])
        if amax < a:
            amax = a
    return amax


@njit(**PJIT)
def _quantize_mxfp4(x, out, qk, bad):
    """First each row's amax scans and shared exponents, in loops of their own: amax as the integer
    max of the values' magnitude bits (fabsf's bits), which for finite values is C's float scan's
    amax, in a loop of qk (QK at run time) with unsigned offsets, vectorised (see ..numerics); the
    same max is the input check's NaN and Inf test (refquant.backend.Backend.finite_in_kernel):
    bad[r] = 1 for a row holding one. Then the code search, block by block."""
    nrows, n = x.shape
    nb = n // QK_MXFP4
    for r in prange(nrows):
        codes = np.empty(nb, np.uint8)
        for b in range(nb):
            x0 = U64(b * QK_MXFP4)
            m = np.int32(0)
            for j in range(U64(qk)):
                m = max(m, f32_bits(x[r, x0 + j]) & MAG)
            if m >= INF_BITS:
                bad[r] = 1
                m = np.int32(0)
            codes[b] = mxfp4_exponent_code_bits(np.int64(m))
        for b in range(nb):
            xb = x[r, b * QK_MXFP4:(b + 1) * QK_MXFP4]
            o = out[r, b * MX_TS:(b + 1) * MX_TS]
            e = codes[b]
            o[MX_E] = e
            d = E8M0_HALF[e]
            for j in range(16):
                o[MX_QS + j] = np.uint8(best_index_mxfp4(xb[j], d) | (best_index_mxfp4(xb[j + 16], d) << 4))


@njit(**dict(JIT, inline="always"))
def fp32_to_ue4m3(x):
    """ggml_fp32_to_ue4m3 (see the spec): 0 unless x > 0, 448 cap, subnormals half up capped
    at 7, normals rounded half up on the bits, 0x7E from the top exponent up."""
    if not x > ZERO:
        return 0
    if x > F32(448):
        x = F32(448)
    bits = f32_bits(x)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    if exp <= 0:
        man = min(c_float_to_int32(x * F32(512) + F32(0.5)), 7)
        return 0 if man < 1 else man
    if exp >= 15:
        return 0x7E
    m = ((bits >> 20) & 7) + ((bits >> 19) & 1)
    if m > 7:
        m = 0
        exp += 1
    if exp >= 15:
        return 0x7E
    return (exp << 3) | m


@njit(**PJIT)
def _quantize_nvfp4(x, out):
    nrows, n = x.shape
    nb = n // QK_NVFP4
    for r in prange(nrows):
        for b in range(nb):
            o = out[r, b * NV_TS:(b + 1) * NV_TS]
            for s in range(4):
                xs = x[r, b * QK_NVFP4 + 16 * s:b * QK_NVFP4 + 16 * s + 16]
                ue = fp32_to_ue4m3(_amax(xs) / F32(6))
                o[NV_D + s] = np.uint8(ue)
                d = UE4M3_HALF[ue]
                for j in range(8):
                    o[NV_QS + 8 * s + j] = np.uint8(best_index_mxfp4(xs[j], d) | (best_index_mxfp4(xs[j + 8], d) << 4))


@njit(**PJIT)
def _dequantize_mxfp4(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // MX_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * MX_TS:(b + 1) * MX_TS]
            y = out[r, b * QK_MXFP4:(b + 1) * QK_MXFP4]
            d = E8M0_HALF[o[MX_E]]
            for j in range(16):
                y[j] = KV[np.int32(o[MX_QS + j]) & 0xF] * d
                y[j + 16] = KV[np.int32(o[MX_QS + j]) >> 4] * d


@njit(**PJIT)
def _dequantize_nvfp4(data, out):
    nrows = data.shape[0]
    nb = data.shape[1] // NV_TS
    for r in prange(nrows):
        for b in range(nb):
            o = data[r, b * NV_TS:(b + 1) * NV_TS]
            y = out[r, b * QK_NVFP4:(b + 1) * QK_NVFP4]
            for s in range(4):
                d = UE4M3_HALF[o[NV_D + s]]
                for j in range(8):
                    q = np.int32(o[NV_QS + 8 * s + j])
                    y[16 * s + j] = KV[q & 0xF] * d
                    y[16 * s + 8 + j] = KV[q >> 4] * d


def quantize_mxfp4(x, imatrix=None):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], x.shape[1] // QK_MXFP4 * MX_TS), np.uint8)
    checked(_quantize_mxfp4, x, out, QK_MXFP4)
    return out


quantize_mxfp4.checks_finite = True   # refquant.backend.Backend.finite_in_kernel


def quantize_nvfp4(x, imatrix=None):
    out = np.empty((x.shape[0], x.shape[1] // QK_NVFP4 * NV_TS), np.uint8)
    _quantize_nvfp4(np.ascontiguousarray(x, dtype=np.float32), out)
    return out


def dequantize_mxfp4(data):
    out = np.empty((data.shape[0], data.shape[1] // MX_TS * QK_MXFP4), np.float32)
    _dequantize_mxfp4(np.ascontiguousarray(data), out)
    return out


def dequantize_nvfp4(data):
    out = np.empty((data.shape[0], data.shape[1] // NV_TS * QK_NVFP4), np.float32)
    _dequantize_nvfp4(np.ascontiguousarray(data), out)
    return out


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "MXFP4 NVFP4", "dequantize": "MXFP4 NVFP4"}
QUANTIZE = {"MXFP4": quantize_mxfp4, "NVFP4": quantize_nvfp4}
DEQUANTIZE = {"MXFP4": dequantize_mxfp4, "NVFP4": dequantize_nvfp4}
