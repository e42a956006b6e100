"""ggml's lattice ("grid") IQ types: IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M
(ggml-quants.c, ggml-common.h).

Super-blocks of 256 values, split into sub-blocks of 32 (IQ2_XXS, IQ3_XXS, IQ3_S, IQ1_S) or
16 (IQ2_XS, IQ2_S, IQ1_M), each with a 3- or 4-bit scale under one fp16 super-scale. Inside a
sub-block, groups of 8 (2-bit grids) or 4 (3-bit grids) magnitudes are one point of a codebook
(grids.py); signs are stored separately, 7 bits per 8 values where the eighth sign makes the
count of minus signs even (the "XXS"/"XS" types), 8 bits otherwise. IQ1 types store no signs:
their codebook has levels -1, 0, 1, shifted by ±1/8.

Byte layouts (little-endian, per 256 values):

    IQ2_XXS  66 B | d:f16 | 8 x (u32 grid bytes g0..g3 | u32 signs s0..s3 (7 bits each) + scale<<28) |
    IQ2_XS   74 B | d:f16 | qs: 32 x u16 (grid index:9 | signs:7 << 9) | scales[8]: 4+4 bits |
    IQ2_S    82 B | d:f16 | qs[32] grid index low 8 | signs[32] | qh[8]: 2 bits x 4 | scales[8] |
    IQ3_XXS  98 B | d:f16 | qs[64] grid index | 8 x u32 (signs 4 x 7 bits | scale << 28) |
    IQ3_S   110 B | d:f16 | qs[64] grid index low 8 | qh[8]: bit 8 | signs[32] | scales[4] |
    IQ1_S    50 B | d:f16 | qs[32] grid index low 8 | qh: 8 x u16 (3 x 3 high bits | scale:3 <<12 | delta sign <<15) |
    IQ1_M    56 B | qs[32] | qh[16]: 3 high bits + delta sign, x2 | scales: 4 x u16 (4 x 3-bit scales | 4 bits of the fp16 d) |

The quantizers are per sub-block searches: a scale is tried from a fixed list of candidates,
each value is rounded to its nearest level, a group whose level code is not in the codebook is
replaced by the best of its neighbours (grids.py), and the candidate with the best weighted
least-squares fit wins. Everything runs on all sub-blocks of the matrix at once; the loops
left are ggml's loops over candidates and positions, so every float32 sum is accumulated in
ggml's order.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..errors import InputError
from ..numerics import F32, fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int
from ..registry import IMATRIX_OPTIONAL, IMATRIX_REQUIRED, Format, register
from . import grids
from .blocks import split_fields, u16

QK_K = 256
T = gguf.GGMLQuantizationType
FLT_MAX = F32(np.finfo(np.float32).max)


# ============================================================================ dequantization

def _signs8(bits: np.ndarray) -> np.ndarray:
    """Sign bytes (...,) -> (..., 8) float32 ±1: bit j set means coordinate j is negative."""
    b = (np.asarray(bits, dtype=np.uint8)[..., None] & grids.KMASK_IQ2XS) != 0
    return np.where(b, F32(-1), F32(1))


def _grid_values(name: str, index: np.ndarray) -> np.ndarray:
    return grids.dequant_grid(name)[index].astype(F32)


def _sub_scale_quarter(d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d * (0.5f + s) * 0.25f (IQ2 types)."""
    return d * (F32(0.5) + s.astype(F32)) * F32(0.25)


def dequantize_iq2_xxs(data):
    f = split_fields(data, 66, ("d", 2), ("qs", 64))
    d = fp16_bits_to_fp32(u16(f["d"]))
    aux = np.ascontiguousarray(f["qs"]).view("<u4").reshape(-1, 8, 2)   # per 32: (grid bytes, signs+scale)
    db = _sub_scale_quarter(d[:, None], aux[..., 1] >> 28)             # (nb, 8)
    gidx = f["qs"].reshape(-1, 8, 8)[..., :4]                          # 4 grid indices per 32
    sidx = (aux[..., 1:2] >> (7 * np.arange(4, dtype=np.uint32))) & 127
    grid = _grid_values("iq2xxs", gidx)                                # (nb, 8, 4, 8)
    signs = _signs8(grids.KSIGNS_IQ2XS[sidx])
    y = db[:, :, None, None] * grid * signs
    return y.reshape(data.shape[0], -1)


def dequantize_iq2_xs(data):
    f = split_fields(data, 74, ("d", 2), ("qs", 64), ("scales", 8))
    d = fp16_bits_to_fp32(u16(f["d"]))
    qs = np.ascontiguousarray(f["qs"]).view("<u2").reshape(-1, 8, 4)
    sc = f["scales"]
    db = np.stack([_sub_scale_quarter(d[:, None], sc & 0xF), _sub_scale_quarter(d[:, None], sc >> 4)], axis=2)
    dl = np.repeat(db, 2, axis=2)                                      # groups 0,1 -> low; 2,3 -> high
    grid = _grid_values("iq2xs", qs & 511)
    signs = _signs8(grids.KSIGNS_IQ2XS[qs >> 9])
    y = dl[..., None] * grid * signs
    return y.reshape(data.shape[0], -1)


def dequantize_iq2_s(data):
    f = split_fields(data, 82, ("d", 2), ("qs", 32), ("signs", 32), ("qh", 8), ("scales", 8))
    d = fp16_bits_to_fp32(u16(f["d"]))
    qs = f["qs"].reshape(-1, 8, 4).astype(np.int32)
    qh = f["qh"].astype(np.int32)[:, :, None]
    idx = qs | ((qh << (8 - 2 * np.arange(4))) & 0x300)
    sc = f["scales"]
    db = np.stack([_sub_scale_quarter(d[:, None], sc & 0xF), _sub_scale_quarter(d[:, None], sc >> 4)], axis=2)
    dl = np.repeat(db, 2, axis=2)
    grid = _grid_values("iq2s", idx)
    signs = _signs8(f["signs"].reshape(-1, 8, 4))
    y = dl[..., None] * grid * signs
    return y.reshape(data.shape[0], -1)


def dequantize_iq3_xxs(data):
    f = split_fields(data, 98, ("d", 2), ("qs", 64), ("ss", 32))
    d = fp16_bits_to_fp32(u16(f["d"]))
    aux = np.ascontiguousarray(f["ss"]).view("<u4")                    # (nb, 8)
    db = d[:, None] * (F32(0.5) + (aux >> 28).astype(F32)) * F32(0.5)
    sidx = (aux[..., None] >> (7 * np.arange(4, dtype=np.uint32))) & 127
    signs = _signs8(grids.KSIGNS_IQ2XS[sidx])                          # (nb, 8, 4, 8)
    grid = _grid_values("iq3xxs", f["qs"].reshape(-1, 8, 4, 2)).reshape(-1, 8, 4, 8)
    y = db[:, :, None, None] * grid * signs
    return y.reshape(data.shape[0], -1)


def dequantize_iq3_s(data):
    f = split_fields(data, 110, ("d", 2), ("qs", 64), ("qh", 8), ("signs", 32), ("scales", 4))
    d = fp16_bits_to_fp32(u16(f["d"]))
    qs = f["qs"].reshape(-1, 8, 8).astype(np.int32)                    # per 32: 8 grid indices
    hb = (f["qh"][:, :, None].astype(np.int32) >> np.arange(8)) & 1    # bit 8 of index k
    idx = qs | (hb << 8)
    sc = f["scales"]
    s = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(-1, 8).astype(np.int32)
    db = d[:, None] * (1 + 2 * s).astype(F32)                          # d * (1 + 2*s)
    grid = _grid_values("iq3s", idx).reshape(-1, 8, 4, 8)
    signs = _signs8(f["signs"].reshape(-1, 8, 4))
    y = db[:, :, None, None] * grid * signs
    return y.reshape(data.shape[0], -1)


def dequantize_iq1_s(data):
    f = split_fields(data, 50, ("d", 2), ("qs", 32), ("qh", 16))
    d = fp16_bits_to_fp32(u16(f["d"]))
    qh = np.ascontiguousarray(f["qh"]).view("<u2").astype(np.int32)    # (nb, 8)
    dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(F32)
    delta = np.where(qh & 0x8000, -grids.IQ1S_DELTA, grids.IQ1S_DELTA).astype(F32)
    idx = f["qs"].reshape(-1, 8, 4).astype(np.int32) | (((qh[..., None] >> (3 * np.arange(4))) & 7) << 8)
    grid = _grid_values("iq1s", idx)                                   # (nb, 8, 4, 8)
    y = dl[:, :, None, None] * (grid + delta[:, :, None, None])
    return y.reshape(data.shape[0], -1)


def _iq1m_d(sc: np.ndarray) -> np.ndarray:
    """The fp16 super-scale spread over the top nibbles of the four scale words."""
    u = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    return fp16_bits_to_fp32(u.astype(np.uint16))


def dequantize_iq1_m(data):
    f = split_fields(data, 56, ("qs", 32), ("qh", 16), ("scales", 8))
    sc = np.ascontiguousarray(f["scales"]).view("<u2").astype(np.int32)   # (nb, 4)
    d = _iq1m_d(sc)
    ib = np.arange(8)
    word = sc[:, ib // 2]
    s1 = (word >> (6 * (ib % 2))) & 7
    s2 = (word >> (6 * (ib % 2) + 3)) & 7
    dl = np.stack([s1, s1, s2, s2], axis=2)                               # (nb, 8, 4): scale per group of 8
    dl = d[:, None, None] * (2 * dl + 1).astype(F32)
    qh = f["qh"].reshape(-1, 8, 2).astype(np.int32)
    hi = np.stack([qh[..., 0] << 8, qh[..., 0] << 4, qh[..., 1] << 8, qh[..., 1] << 4], axis=2) & 0x700
    idx = f["qs"].reshape(-1, 8, 4).astype(np.int32) | hi
    dbit = np.stack([qh[..., 0] & 0x08, qh[..., 0] & 0x80, qh[..., 1] & 0x08, qh[..., 1] & 0x80], axis=2)
    delta = np.where(dbit != 0, -grids.IQ1M_DELTA, grids.IQ1M_DELTA).astype(F32)
    grid = _grid_values("iq1s", idx)
    y = dl[..., None] * (grid + delta[..., None])
    return y.reshape(data.shape[0], -1)


# ============================================================================ registration

_FORMATS = [
    # name, type_size, quantize, dequantize, imatrix
    ("IQ2_XXS", 66, None, dequantize_iq2_xxs, IMATRIX_REQUIRED),
    ("IQ2_XS", 74, None, dequantize_iq2_xs, IMATRIX_REQUIRED),
    ("IQ2_S", 82, None, dequantize_iq2_s, IMATRIX_OPTIONAL),
    ("IQ3_XXS", 98, None, dequantize_iq3_xxs, IMATRIX_OPTIONAL),
    ("IQ3_S", 110, None, dequantize_iq3_s, IMATRIX_OPTIONAL),
    ("IQ1_S", 50, None, dequantize_iq1_s, IMATRIX_REQUIRED),
    ("IQ1_M", 56, None, dequantize_iq1_m, IMATRIX_OPTIONAL),
]
for _name, _ts, _q, _dq, _im in _FORMATS:
    register(Format(_name, "ggml-iq", QK_K, _ts, globals().get("quantize_" + _name.lower()), _dq, _im,
                    int(T[_name]), f"ggml/{_name.lower()}.md"))
