"""Numba twin of refquant/ggml/fp4.py: ggml's MXFP4 and NVFP4, bit-exact with it.

The scale codes decode through 256-entry tables taken from the spec's own decoders (E8M0 and
UE4M3 halves). MXFP4's shared exponent is floorf(log2f(amax)): a transcendental whose last-bit
rounding just below a power of two decides the exponent, so it is computed by the spec's rule
(refquant.ggml.fp4.mxfp4_shared_exponent, on one float32 per block) between two kernels — the
amax scan and the code search run here."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.ggml.fp4 import (KVALUES_MXFP4, e8m0_to_fp32_half, mxfp4_shared_exponent,
                               ue4m3_to_fp32_half)
from refquant.registry import get_format

from ..numerics import F32, JIT, ZERO, c_float_to_int32, f32_bits

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
def _amax_blocks(x, block, out):
    nrows, n = x.shape
    nb = n // block
    for r in prange(nrows):
        for b in range(nb):
            out[r, b] = _amax(x[r, b * block:(b + 1) * block])


@njit(**PJIT)
def _quantize_mxfp4(x, e, out):
    nrows, n = x.shape
    nb = n // QK_MXFP4
    for r in prange(nrows):
        for b in range(nb):
            xb = x[r, b * QK_MXFP4:(b + 1) * QK_MXFP4]
            o = out[r, b * MX_TS:(b + 1) * MX_TS]
            o[MX_E] = e[r, b]
            d = E8M0_HALF[e[r, b]]
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
    amax = np.empty((x.shape[0], x.shape[1] // QK_MXFP4), np.float32)
    _amax_blocks(x, QK_MXFP4, amax)
    e = mxfp4_shared_exponent(amax)                  # floorf(log2f(amax)): the spec's rule
    out = np.empty((x.shape[0], x.shape[1] // QK_MXFP4 * MX_TS), np.uint8)
    _quantize_mxfp4(x, np.ascontiguousarray(e), out)
    return out


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
