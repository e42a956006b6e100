"""ggml's K-quants: Q2_K Q3_K Q4_K Q5_K Q6_K, and the activation type Q8_K (ggml-quants.c).

Super-blocks of QK_K = 256 values, split into sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K,
Q5_K) that each get a small integer scale (and, for Q2_K/Q4_K/Q5_K, a small integer minimum),
themselves scaled by the super-block's fp16 `d` (and `dmin`). The block layouts are the LAYOUTS
table below (ggml-common.h's block_q2_K ... block_q8_K).

Without an importance matrix each type takes `quantize_row_qX_K_ref`; with one, the weighted
`quantize_row_qX_K_impl` (different searches, different bytes). Both end the same way: the
sub-block scales are quantized against the fp16-rounded `d`/`dmin`, and every value is
quantized again with the scale as it will be decoded ("requantize"); a sub-block whose decoded
scale is 0 keeps the levels its search produced.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import F32, c_max_abs, fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int, seq_sum
from ..format import IMATRIX_NONE, IMATRIX_OPTIONAL, VecDot, block_format
from .blocks import as_blocks, u16
from .layout import Field, Layout
from .search import (GROUP_MAX_EPS, c_max_abs_scan, make_q3_quants, make_qkx2_quants,
                     make_qkx3_quants, make_qp_quants, make_qx_quants)

QK_K = 256
T = gguf.GGMLQuantizationType

_K4_SCALES = Field("scales", "u8", 12, "8 x (6-bit scale, 6-bit min), get_scale_min_k4",
                   ((0, 4, "6-bit scale"), (4, 8, "6-bit min"), (8, 12, "low 4 bits of scale and min 4-7")))
LAYOUTS = {L.name: L for L in [
    Layout("Q2_K", QK_K, [Field("scales", "u8", 16, "sub-block j: low nibble scale, high nibble min"),
                          Field("qs", "u8", 64, "2-bit codes: byte 32h + l, bits 2k: element 128h + 32k + l"),
                          Field("d", "f16", 1, "scale of the scales"), Field("dmin", "f16", 1, "scale of the mins")]),
    Layout("Q3_K", QK_K, [Field("hmask", "u8", 32, "bit 2 of the codes: element i in byte i % 32, bit i / 32"),
                          Field("qs", "u8", 64, "low 2 bits of the codes, as Q2_K's"),
                          Field("scales", "u8", 12, "16 x 6-bit scale + 32",
                                ((0, 8, "low 4 bits of two scales"), (8, 12, "high 2 bits of four scales"))),
                          Field("d", "f16", 1, "scale of the scales")]),
    Layout("Q4_K", QK_K, [Field("d", "f16", 1, "scale of the scales"), Field("dmin", "f16", 1, "scale of the mins"),
                          _K4_SCALES,
                          Field("qs", "u8", 128, "4-bit codes: byte 32c + l, low nibble element 64c + l, "
                                                 "high nibble 64c + 32 + l")]),
    Layout("Q5_K", QK_K, [Field("d", "f16", 1, "scale of the scales"), Field("dmin", "f16", 1, "scale of the mins"),
                          _K4_SCALES,
                          Field("qh", "u8", 32, "bit 4 of the codes: element 32s + l in byte l, bit s"),
                          Field("qs", "u8", 128, "low 4 bits of the codes, as Q4_K's")]),
    Layout("Q6_K", QK_K, [Field("ql", "u8", 128, "low 4 bits of the codes"),
                          Field("qh", "u8", 64, "high 2 bits of the codes"),
                          Field("scales", "i8", 16, "sub-block scales"), Field("d", "f16", 1, "scale of the scales")]),
    Layout("Q8_K", QK_K, [Field("d", "f32", 1, "scale"), Field("qs", "i8", 256, "codes"),
                          Field("bsums", "i16", 16, "sums of each 16 codes")]),
]}
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = (LAYOUTS[n] for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"))


# --------------------------------------------------------------------------- shared pieces

def _fp16_round_trip(v):
    """(bits, value): the fp16 bits stored and the float32 the decoder will read back."""
    bits = fp32_to_fp16_bits(v)
    return bits, fp16_bits_to_fp32(bits)


def _scan_max_from_zero(v):
    """`if (v > m) m = v;` over the last axis from m = 0 (a NaN never wins): max(0, max(v))."""
    return np.max(np.where(v > 0, v, F32(0)), axis=-1)


def _impl_weights(xb, imatrix, nrows, sigma2):
    """weight[l] = qw[l] * sqrtf(sigma2 + x[l]*x[l]) for every super-block of every row, qw being
    the importance matrix entries of that super-block's columns."""
    qw = np.broadcast_to(np.asarray(imatrix, dtype=F32).reshape(1, -1, QK_K),
                         (nrows, xb.shape[0] // nrows, QK_K)).reshape(-1, QK_K)
    return qw * np.sqrt(sigma2[:, None] + xb * xb)


def _sum_x2(xb):
    return seq_sum(xb * xb)                      # for (l...) sum_x2 += x[l]*x[l]; over 256


def _requantize(x, d, offset, lo, hi, keep):
    """The final pass: L = clamp(nearest_int((x + offset)/d), lo, hi) per sub-block, where d is the
    sub-block's decoded scale; sub-blocks with d == 0 keep `keep` (`if (!d) continue;`).
    x (nblocks, nsub, size); d, offset (nblocks, nsub) or offset None."""
    num = x if offset is None else x + offset[..., None]
    l = np.clip(nearest_int(num / d[..., None]), lo, hi)
    return np.where((d == 0)[..., None], keep, l)


def _pack_2bit(L):
    """L (nblocks, 256) in 0..3 -> qs[64]: byte 32*h + l holds L[128h + l + 32k] in bits 2k..2k+1."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs):
    """qs (nblocks, 64) -> (nblocks, 256) values 0..3, the inverse of _pack_2bit."""
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


# Q4_K / Q5_K: eight 6-bit scales and eight 6-bit mins in 12 bytes (get_scale_min_k4)
#
#   byte  0..3 : bits 0-5 scale[j]        bits 6-7 scale[j+4] >> 4      (j = byte)
#   byte  4..7 : bits 0-5 min[j-4]        bits 6-7 min[j]     >> 4      (j = byte)
#   byte  8..11: bits 0-3 scale[j-4]&0xF  bits 4-7 min[j-4]   & 0xF     (j = byte)

def pack_scale_min_k4(ls, lm):
    """ls, lm (nblocks, 8) uint8 -> scales[12], as the quantizers store them: bytes 0..7 take the
    whole uint8 (a value above 63 is not masked there), the high bits are OR-ed in."""
    ls = ls.astype(np.int32)
    lm = lm.astype(np.int32)
    q = np.zeros((len(ls), 12), dtype=np.int32)
    q[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    q[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    q[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return (q & 0xFF).astype(np.uint8)


def unpack_scale_min_k4(q):
    """scales[12] (nblocks, 12) -> (sc, m), each (nblocks, 8) uint8 (get_scale_min_k4 for j = 0..7)."""
    q = q.astype(np.uint8)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


# Q3_K: sixteen 6-bit scales (stored + 32) in 12 bytes
#
#   byte  0..7 : bits 0-3 scale[j] & 0xF          bits 4-7 scale[j+8] & 0xF   (j = byte)
#   byte  8..11: bits 2k..2k+1 = scale[4k + j-8] >> 4, k = 0..3

def pack_q3_k_scales(l):
    """l (nblocks, 16) in 0..63 -> scales[12]."""
    l = l.astype(np.int32)
    q = np.zeros((len(l), 12), dtype=np.int32)
    q[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = l >> 4
    q[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return (q & 0xFF).astype(np.uint8)


def unpack_q3_k_scales(q):
    """scales[12] -> (nblocks, 16) int32 in 0..63 (subtract 32 for the signed scale)."""
    q = q.astype(np.int32)
    low = np.concatenate([q[:, 0:8] & 0xF, q[:, 0:8] >> 4], axis=1)
    shifts = 2 * (np.arange(16) // 4)
    high = (q[:, 8 + np.arange(16) % 4] >> shifts) & 3
    return low | (high << 4)


# --------------------------------------------------------------------------- Q2_K

def quantize_q2_k(x, imatrix=None):
    nrows = x.shape[0]
    xb = as_blocks(x, QK_K)
    nb = len(xb)
    xs = xb.reshape(-1, 16)
    if imatrix is None:
        # quantize_row_q2_K_ref: weights |x|, make_qkx2_quants(16, 3, ..., -0.5, 0.1, 15, mad)
        scales, mins, L = make_qkx2_quants(xs, 3, np.abs(xs), -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale = _scan_max_from_zero(scales)
        max_min = _scan_max_from_zero(mins)
        has_scale, has_min = max_scale > 0, max_min > 0
        iscale = F32(15) / np.where(has_scale, max_scale, F32(1))
        ls = np.where(has_scale[:, None], nearest_int(iscale[:, None] * scales), 0)
        imin = F32(15) / np.where(has_min, max_min, F32(1))
        lm = np.where(has_min[:, None], nearest_int(imin[:, None] * mins), 0)
        d = np.where(has_scale, max_scale / F32(15), F32(0))
        dmin = np.where(has_min, max_min / F32(15), F32(0))
    else:
        # quantize_row_q2_K_impl: sigma2 = sum(x²)/256 per super-block, make_qkx3_quants, then
        # the scales and mins quantized to 4 bits by make_qp_quants weighted by Σ weight
        sigma2 = _sum_x2(xb) / F32(QK_K)
        weight = _impl_weights(xb, imatrix, nrows, sigma2).reshape(-1, 16)
        sw = seq_sum(weight).reshape(nb, 16)
        scales, mins, L = make_qkx3_quants(xs, 3, weight, -0.9, 0.05, 36, False)
        d, ls = make_qp_quants(scales.reshape(nb, 16), 15, sw)
        dmin, lm = make_qp_quants(mins.reshape(nb, 16), 15, sw)
    sc = ((ls.astype(np.int32) & 0xFF) | (lm.astype(np.int32) << 4)) & 0xFF  # scales[j] = ls | lm << 4
    d_bits, d = _fp16_round_trip(d)
    dmin_bits, dmin = _fp16_round_trip(dmin)
    dl = d[:, None] * (sc & 0xF).astype(F32)
    ml = dmin[:, None] * (sc >> 4).astype(F32)
    L = _requantize(xb.reshape(nb, 16, 16), dl, ml, 0, 3, L.reshape(nb, 16, 16))
    return Q2_K.join(nrows, scales=sc.astype(np.uint8), qs=_pack_2bit(L.reshape(nb, QK_K)), d=d_bits, dmin=dmin_bits)


def dequantize_q2_k(data):
    f = Q2_K.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    dmin = fp16_bits_to_fp32(u16(f["dmin"]))
    sc = f["scales"]
    dl = d[:, None] * (sc & 0xF).astype(F32)     # dl = d * (sc & 0xF)
    ml = dmin[:, None] * (sc >> 4).astype(F32)   # ml = min * (sc >> 4)
    q = _unpack_2bit(f["qs"]).reshape(-1, 16, 16).astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q3_K

def quantize_q3_k(x, imatrix=None):
    nrows = x.shape[0]
    xb = as_blocks(x, QK_K)
    nb = len(xb)
    xs = xb.reshape(-1, 16)
    if imatrix is None:
        # quantize_row_q3_K_ref: make_q3_quants(16, 4, rmse), then the scales on a 6-bit grid
        # from -32/max_scale (max_scale: the scale of largest magnitude)
        scales, L = make_q3_quants(xs, 4, True)
        scales = scales.reshape(nb, 16)
        _, max_scale = c_max_abs_scan(scales)
        has = max_scale != 0
        iscale = F32(-32) / np.where(has, max_scale, F32(1))
        l = nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32)  # int8_t l = ...
        ls = np.where(has[:, None], np.clip(l, -32, 31) + 32, 0)
        packed = np.where(has[:, None], pack_q3_k_scales(ls), 0).astype(np.uint8)
        d = np.where(has, F32(1) / iscale, F32(0))
    else:
        # quantize_row_q3_K_impl: sigma2 = 2*sum(x²)/256, make_qx_quants weighted, then the scales
        # by make_qx_quants(16, 32) weighted by Σ weight
        sigma2 = F32(2) * _sum_x2(xb) / F32(QK_K)
        weight = _impl_weights(xb, imatrix, nrows, sigma2).reshape(-1, 16)
        sw = seq_sum(weight).reshape(nb, 16)
        scales, L = make_qx_quants(xs, 4, 1, weight)
        d, ls = make_qx_quants(scales.reshape(nb, 16), 32, 1, sw)
        packed = pack_q3_k_scales(ls)
    d_bits, d = _fp16_round_trip(d)
    sc = unpack_q3_k_scales(packed) - 32
    dl = d[:, None] * sc.astype(F32)
    L = _requantize(xb.reshape(nb, 16, 16), dl, None, -4, 3, L.reshape(nb, 16, 16).astype(np.int32) - 4) + 4
    L = L.reshape(nb, QK_K)
    high = L > 3                                  # bit 2 -> hmask: byte j % 32, bit j // 32
    hbits = high.reshape(nb, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    hmask = np.bitwise_or.reduce(hbits, axis=1)
    qs = _pack_2bit(np.where(high, L - 4, L))
    return Q3_K.join(nrows, hmask=hmask, qs=qs, scales=packed, d=d_bits)


def dequantize_q3_k(data):
    f = Q3_K.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    dl = d[:, None] * (unpack_q3_k_scales(f["scales"]) - 32).astype(F32)   # d_all * (scales[is] - 32)
    hbit = (f["hmask"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _unpack_2bit(f["qs"]).astype(np.int32) - np.where(hbit.reshape(-1, QK_K) != 0, 0, 4)
    return (dl[..., None] * q.reshape(-1, 16, 16).astype(F32)).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q4_K, Q5_K

def _quantize_scale_min_k4(x, imatrix, nmax, rmin, rdelta, nstep, clamp_impl):
    """The common part of Q4_K (nmax 15) and Q5_K (nmax 31): returns the 12 scale bytes, d, dmin
    bits and the levels L (nblocks, 256) after requantization."""
    nrows = x.shape[0]
    xb = as_blocks(x, QK_K)
    nb = len(xb)
    xs = xb.reshape(-1, 32)
    if imatrix is None:
        # quantize_row_qX_K_ref: weights av_x + |x| with av_x the sub-block's rms,
        # make_qkx2_quants, then scales and mins on a 6-bit grid from their maxima
        av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
        weights = av_x[:, None] + np.abs(xs)
        scales, mins, L = make_qkx2_quants(xs, nmax, weights, rmin, rdelta, nstep, False)
        scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale = _scan_max_from_zero(scales)
        max_min = _scan_max_from_zero(mins)
        inv_scale = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, F32(1)), F32(0))
        inv_min = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, F32(1)), F32(0))
        ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)  # uint8_t ls = ...; MIN(63, ls)
        lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
        d = max_scale / F32(63)
        dmin = max_min / F32(63)
    else:
        # quantize_row_qX_K_impl: sigma2 = 2*sum(x²)/256, weights qw*sqrt(sigma2 + x²),
        # make_qkx3_quants, then scales and mins by make_qp_quants(8, 63) weighted by Σ weight
        sigma2 = F32(2) * _sum_x2(xb) / F32(QK_K)
        weights = _impl_weights(xb, imatrix, nrows, sigma2).reshape(-1, 32)
        sw = seq_sum(weights).reshape(nb, 8)
        scales, mins, L = make_qkx3_quants(xs, nmax, weights, -0.9, 0.05, 36, False)
        d, ls = make_qp_quants(scales.reshape(nb, 8), 63, sw)
        dmin, lm = make_qp_quants(mins.reshape(nb, 8), 63, sw)
        if clamp_impl:  # Q5_K's impl clamps to 63; Q4_K's stores the uint8 as it is
            ls, lm = np.minimum(63, ls), np.minimum(63, lm)
    packed = pack_scale_min_k4(ls, lm)
    d_bits, d = _fp16_round_trip(d)
    dmin_bits, dmin = _fp16_round_trip(dmin)
    sc, m = unpack_scale_min_k4(packed)
    dl = d[:, None] * sc.astype(F32)
    dm = dmin[:, None] * m.astype(F32)
    L = _requantize(xb.reshape(nb, 8, 32), dl, dm, 0, nmax, L.reshape(nb, 8, 32))
    return packed, d_bits, dmin_bits, L.reshape(nb, QK_K)


def _dequantize_scale_min_k4(f, q):
    d = fp16_bits_to_fp32(u16(f["d"]))
    dmin = fp16_bits_to_fp32(u16(f["dmin"]))
    sc, m = unpack_scale_min_k4(f["scales"])
    d1 = d[:, None] * sc.astype(F32)             # d1 = d * sc
    m1 = dmin[:, None] * m.astype(F32)           # m1 = min * m
    return d1[..., None] * q.reshape(-1, 8, 32).astype(F32) - m1[..., None]


def _split_nibbles_k(qs):
    """qs (nblocks, 128) -> (nblocks, 256): for chunk c of 64 values, the low nibbles of
    qs[32c:32c+32] then their high nibbles."""
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0xF, q >> 4], axis=2).reshape(-1, QK_K)


def _join_nibbles_k(L):
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return ((q[:, :, 0] & 0xF) | (q[:, :, 1] << 4)).reshape(-1, 128)


def quantize_q4_k(x, imatrix=None):
    packed, d_bits, dmin_bits, L = _quantize_scale_min_k4(x, imatrix, 15, -1.0, 0.1, 20, False)
    return Q4_K.join(x.shape[0], d=d_bits, dmin=dmin_bits, scales=packed, qs=_join_nibbles_k(L))


def dequantize_q4_k(data):
    f = Q4_K.split(data)
    return _dequantize_scale_min_k4(f, _split_nibbles_k(f["qs"])).reshape(data.shape[0], -1)


def quantize_q5_k(x, imatrix=None):
    packed, d_bits, dmin_bits, L = _quantize_scale_min_k4(x, imatrix, 31, -0.5, 0.1, 15, True)
    hbit = (L >> 4).reshape(-1, 8, 32).astype(np.uint8)  # value j of sub-block s: bit s of qh[j]
    qh = np.bitwise_or.reduce(hbit << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return Q5_K.join(x.shape[0], d=d_bits, dmin=dmin_bits, scales=packed, qh=qh, qs=_join_nibbles_k(L & 0xF))


def dequantize_q5_k(data):
    f = Q5_K.split(data)
    hbit = (f["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _split_nibbles_k(f["qs"]) + (hbit.reshape(-1, QK_K) << 4)
    return _dequantize_scale_min_k4(f, q).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q6_K

def quantize_q6_k(x, imatrix=None):
    nrows = x.shape[0]
    xb = as_blocks(x, QK_K)
    nb = len(xb)
    xs = xb.reshape(-1, 16)
    # ref: make_qx_quants(16, 32, x, L, 1, NULL) (weights x²); impl: the importance matrix
    # entries themselves are the weights (no sigma2 term)
    qw = None
    if imatrix is not None:
        qw = np.broadcast_to(np.asarray(imatrix, dtype=F32).reshape(1, -1, 16),
                             (nrows, xb.shape[0] // nrows * 16, 16)).reshape(-1, 16)
    scales, L = make_qx_quants(xs, 32, 1, qw)
    scales = scales.reshape(nb, 16)
    max_abs_scale, max_scale = c_max_abs_scan(scales)
    empty = max_abs_scale < GROUP_MAX_EPS         # the whole block is stored as zeros
    iscale = F32(-128) / np.where(empty, F32(1), max_scale)
    d_bits, d = _fp16_round_trip(F32(1) / iscale)
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    dl = d[:, None] * sc.astype(F32)
    L = _requantize(xb.reshape(nb, 16, 16), dl, None, -32, 31,
                    L.reshape(nb, 16, 16).astype(np.int32) - 32) + 32
    L = L.reshape(nb, 2, 4, 32).astype(np.uint8)  # half h, quarter k: values 128h + 32k + l
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = [ql, qh, sc.view(np.uint8), d_bits]
    out = [np.where(empty.reshape((-1,) + (1,) * (f.ndim - 1)), 0, f).astype(f.dtype) for f in out]
    return Q6_K.join(nrows, **dict(zip(("ql", "qh", "scales", "d"), out)))


def dequantize_q6_k(data):
    f = Q6_K.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    ql = f["ql"].reshape(-1, 2, 2, 32)            # half h: ql[64h + 32s + l]
    qh = f["qh"].reshape(-1, 2, 1, 32)
    low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = (low | (high << 4)).astype(np.int32) - 32  # (nblocks, 2, 4, 32): value 128h + 32k + l
    sc = f["scales"].view(np.int8).astype(F32)
    dl = d[:, None] * sc                           # d * sc[is] * q: (d * sc) * q
    return (dl[..., None] * q.reshape(-1, 16, 16).astype(F32)).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q8_K

def quantize_q8_k(x, imatrix=None):
    """quantize_row_q8_K_ref: qs = MIN(127, nearest_int(-127/max * x)), d = max/-127 as float32,
    bsums = the integer sums of each 16 qs. An all-zero block stores d = 0 and qs = 0 (C leaves
    its bsums unwritten; they are written here as 0, the sum of its qs)."""
    nrows = x.shape[0]
    xb = as_blocks(x, QK_K)
    amax, vmax = c_max_abs(xb)                   # finite input: no NaN to skip
    zero = amax == 0
    iscale = F32(-127) / np.where(zero, F32(1), vmax)
    qs = np.minimum(127, nearest_int(iscale[:, None] * xb))
    qs = np.where(zero[:, None], 0, qs).astype(np.int8)
    bsums = qs.reshape(-1, 16, 16).sum(axis=2, dtype=np.int32).astype("<i2")  # integer: exact
    d = np.where(zero, F32(0), F32(1) / iscale).astype("<f4")
    return Q8_K.join(nrows, d=d, qs=qs, bsums=bsums)


def dequantize_q8_k(data):
    f = Q8_K.split(data)
    d = np.ascontiguousarray(f["d"]).view("<f4")[:, 0].astype(F32)
    return (d[:, None] * f["qs"].view(np.int8).astype(F32)).reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- vec_dot operands
#
# What ggml's generic Q8_K kernels read from a super-block (refquant.ggml.dot, the Q8_K section):
# every value's small integer code q, the integer scale sc of each sub-block of 16, and for
# Q2_K/Q4_K/Q5_K the integer min m of each sub-block of 16 against the activations' bsums.

def _bits_of(mask, nbits=8):
    """(nblocks, 32) bytes -> (nblocks, 256): bit k of byte l is element 32k + l."""
    return ((mask[:, None, :] >> np.arange(nbits, dtype=np.uint8)[None, :, None]) & 1).reshape(-1, QK_K)


def vec_dot_q2_k(w):
    f = Q2_K.split(w)
    return {"q": _unpack_2bit(f["qs"]).astype(np.int32), "sc16": (f["scales"] & 0xF).astype(np.int32),
            "d": fp16_bits_to_fp32(u16(f["d"])),
            "m": (f["scales"] >> 4).astype(np.int32), "dmin": fp16_bits_to_fp32(u16(f["dmin"]))}


def vec_dot_q3_k(w):
    f = Q3_K.split(w)
    q = _unpack_2bit(f["qs"]).astype(np.int32) - np.where(_bits_of(f["hmask"]) != 0, 0, 4)   # hm & m ? 0 : 4
    return {"q": q, "sc16": unpack_q3_k_scales(f["scales"]) - 32, "d": fp16_bits_to_fp32(u16(f["d"]))}


def _vec_dot_k4(f, q):
    sc8, m8 = unpack_scale_min_k4(f["scales"])
    return {"q": q, "sc16": np.repeat(sc8.astype(np.int32), 2, axis=1),       # a scale of 32 is two of 16
            "d": fp16_bits_to_fp32(u16(f["d"])),
            "m": np.repeat(m8.astype(np.int32), 2, axis=1), "dmin": fp16_bits_to_fp32(u16(f["dmin"]))}  # mins[j/2]


def vec_dot_q4_k(w):
    f = Q4_K.split(w)
    return _vec_dot_k4(f, _split_nibbles_k(f["qs"]).astype(np.int32))


def vec_dot_q5_k(w):
    f = Q5_K.split(w)
    return _vec_dot_k4(f, _split_nibbles_k(f["qs"]).astype(np.int32) + (_bits_of(f["qh"]).astype(np.int32) << 4))


def vec_dot_q6_k(w):
    f = Q6_K.split(w)
    ql = f["ql"].reshape(-1, 2, 2, 32)            # half h: ql[64h + 32s + l]
    qh = f["qh"].reshape(-1, 2, 1, 32)
    low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = (low | (high << 4)).astype(np.int32).reshape(-1, QK_K) - 32
    # the AVX2 kernel multiplies the unsigned codes q + 32 (refquant.ggml.dot.exact_k_dot)
    return {"q": q, "sc16": f["scales"].view(np.int8).astype(np.int32), "d": fp16_bits_to_fp32(u16(f["d"])),
            "simd_offset": 32}


# the activation type, and refquant.ggml.dot's rule for the super-blocks' float steps
VEC_DOT = {
    "Q2_K": VecDot("Q8_K", vec_dot_q2_k, "q2_k"),
    "Q3_K": VecDot("Q8_K", vec_dot_q3_k, "lanes: multiply, add"),
    "Q4_K": VecDot("Q8_K", vec_dot_q4_k, "lanes: fmaf, mins fmaf"),
    "Q5_K": VecDot("Q8_K", vec_dot_q5_k, "lanes: fmaf, mins fmaf"),
    "Q6_K": VecDot("Q8_K", vec_dot_q6_k, "lanes: multiply, add"),
}


# llama.cpp's LLAMA_FTYPE_MOSTLY_* whose default type is this one (Q3_K, Q4_K, Q5_K have only
# the _S/_M/_L mixtures, which are recipes: refquant.pipelines.recipes)
# llama.cpp's LLAMA_FTYPE_MOSTLY_* of a file of each type, and llama-quant.cpp's tensor_type_fallback
RECORDS = [block_format(LAYOUTS[name], "ggml-k", q, dq, im, int(T[name]), f"ggml/{name.lower()}.md",
                        vec_dot=VEC_DOT.get(name), file_type=ftype, fallback=fb)
           for name, q, dq, im, ftype, fb in [
               ("Q2_K", quantize_q2_k, dequantize_q2_k, IMATRIX_OPTIONAL, 10, "Q4_0"),
               ("Q3_K", quantize_q3_k, dequantize_q3_k, IMATRIX_OPTIONAL, None, "Q4_0"),
               ("Q4_K", quantize_q4_k, dequantize_q4_k, IMATRIX_OPTIONAL, None, "Q5_0"),
               ("Q5_K", quantize_q5_k, dequantize_q5_k, IMATRIX_OPTIONAL, None, "Q5_1"),
               ("Q6_K", quantize_q6_k, dequantize_q6_k, IMATRIX_OPTIONAL, 18, "Q8_0"),
               ("Q8_K", quantize_q8_k, dequantize_q8_k, IMATRIX_NONE, None, None)]]
