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
from ..format import IMATRIX_OPTIONAL, IMATRIX_REQUIRED, VecDot, block_format
from . import grids
from .blocks import u16
from .layout import Field, Layout
from .search import make_qp_quants

QK_K = 256
T = gguf.GGMLQuantizationType
FLT_MAX = F32(np.finfo(np.float32).max)

_SCALES_4_4 = "4-bit scales: low nibble sub-block 2j, high nibble 2j + 1"
LAYOUTS = {L.name: L for L in [
    Layout("IQ2_XXS", QK_K, [Field("d", "f16", 1, "scale"),
                             Field("qs", "u8", 64, "per 32: 4 grid bytes, then a u32 of 4 x 7 sign bits | scale << 28")]),
    Layout("IQ2_XS", QK_K, [Field("d", "f16", 1, "scale"),
                            Field("qs", "u16", 32, "grid index (9 bits) | sign index << 9"),
                            Field("scales", "u8", 8, _SCALES_4_4)]),
    Layout("IQ2_S", QK_K, [Field("d", "f16", 1, "scale"), Field("qs", "u8", 32, "grid index, low 8 bits"),
                           Field("signs", "u8", 32, "8 sign bits per group of 8"),
                           Field("qh", "u8", 8, "grid index bits 8-9, 2 bits per group"),
                           Field("scales", "u8", 8, _SCALES_4_4)]),
    Layout("IQ3_XXS", QK_K, [Field("d", "f16", 1, "scale"), Field("qs", "u8", 64, "grid index per 4 values"),
                             Field("ss", "u8", 32, "per 32: a u32 of 4 x 7 sign bits | scale << 28")]),
    Layout("IQ3_S", QK_K, [Field("d", "f16", 1, "scale"), Field("qs", "u8", 64, "grid index, low 8 bits"),
                           Field("qh", "u8", 8, "grid index bit 8"), Field("signs", "u8", 32, "8 sign bits per group of 8"),
                           Field("scales", "u8", 4, _SCALES_4_4)]),
    Layout("IQ1_S", QK_K, [Field("d", "f16", 1, "scale"), Field("qs", "u8", 32, "grid index, low 8 bits"),
                           Field("qh", "u16", 8, "3 x 3 high index bits | scale << 12 | delta sign << 15")]),
    Layout("IQ1_M", QK_K, [Field("qs", "u8", 32, "grid index, low 8 bits"),
                           Field("qh", "u8", 16, "2 x (3 high index bits, delta sign)"),
                           Field("scales", "u8", 8, "4 x u16: 3-bit scales | 4 bits of the fp16 d")]),
]}


# ============================================================================ dequantization

def _signs8(bits: np.ndarray) -> np.ndarray:
    """Sign bytes (...,) -> (..., 8) bool: bit j set means coordinate j is negative."""
    return (np.asarray(bits, dtype=np.uint8)[..., None] & grids.KMASK_IQ2XS) != 0


def _apply_signs(v: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """`v * (neg ? -1.f : 1.f)` as ggml's build computes it: the compiler turns a multiply by
    -1 into a negation, so a NaN's sign bit flips too (a multiply would keep it)."""
    return np.where(neg, -v, v)


def _grid_values(name: str, index: np.ndarray) -> np.ndarray:
    return grids.dequant_grid(name)[index].astype(F32)


def _sub_scale_quarter(d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d * (0.5f + s) * 0.25f (IQ2 types)."""
    return d * (F32(0.5) + s.astype(F32)) * F32(0.25)


def dequantize_iq2_xxs(data):
    f = LAYOUTS["IQ2_XXS"].split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    aux = np.ascontiguousarray(f["qs"]).view("<u4").reshape(-1, 8, 2)   # per 32: (grid bytes, signs+scale)
    db = _sub_scale_quarter(d[:, None], aux[..., 1] >> 28)             # (nb, 8)
    gidx = f["qs"].reshape(-1, 8, 8)[..., :4]                          # 4 grid indices per 32
    sidx = (aux[..., 1:2] >> (7 * np.arange(4, dtype=np.uint32))) & 127
    grid = _grid_values("iq2xxs", gidx)                                # (nb, 8, 4, 8)
    signs = _signs8(grids.KSIGNS_IQ2XS[sidx])
    y = _apply_signs(db[:, :, None, None] * grid, signs)
    return y.reshape(data.shape[0], -1)


def dequantize_iq2_xs(data):
    f = LAYOUTS["IQ2_XS"].split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    qs = np.ascontiguousarray(f["qs"]).view("<u2").reshape(-1, 8, 4)
    sc = f["scales"]
    db = np.stack([_sub_scale_quarter(d[:, None], sc & 0xF), _sub_scale_quarter(d[:, None], sc >> 4)], axis=2)
    dl = np.repeat(db, 2, axis=2)                                      # groups 0,1 -> low; 2,3 -> high
    grid = _grid_values("iq2xs", qs & 511)
    signs = _signs8(grids.KSIGNS_IQ2XS[qs >> 9])
    y = _apply_signs(dl[..., None] * grid, signs)
    return y.reshape(data.shape[0], -1)


def dequantize_iq2_s(data):
    f = LAYOUTS["IQ2_S"].split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    qs = f["qs"].reshape(-1, 8, 4).astype(np.int32)
    qh = f["qh"].astype(np.int32)[:, :, None]
    idx = qs | ((qh << (8 - 2 * np.arange(4))) & 0x300)
    sc = f["scales"]
    db = np.stack([_sub_scale_quarter(d[:, None], sc & 0xF), _sub_scale_quarter(d[:, None], sc >> 4)], axis=2)
    dl = np.repeat(db, 2, axis=2)
    grid = _grid_values("iq2s", idx)
    signs = _signs8(f["signs"].reshape(-1, 8, 4))
    y = _apply_signs(dl[..., None] * grid, signs)
    return y.reshape(data.shape[0], -1)


def dequantize_iq3_xxs(data):
    f = LAYOUTS["IQ3_XXS"].split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    aux = np.ascontiguousarray(f["ss"]).view("<u4")                    # (nb, 8)
    db = d[:, None] * (F32(0.5) + (aux >> 28).astype(F32)) * F32(0.5)
    sidx = (aux[..., None] >> (7 * np.arange(4, dtype=np.uint32))) & 127
    signs = _signs8(grids.KSIGNS_IQ2XS[sidx])                          # (nb, 8, 4, 8)
    grid = _grid_values("iq3xxs", f["qs"].reshape(-1, 8, 4, 2)).reshape(-1, 8, 4, 8)
    y = _apply_signs(db[:, :, None, None] * grid, signs)
    return y.reshape(data.shape[0], -1)


def dequantize_iq3_s(data):
    f = LAYOUTS["IQ3_S"].split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    qs = f["qs"].reshape(-1, 8, 8).astype(np.int32)                    # per 32: 8 grid indices
    hb = (f["qh"][:, :, None].astype(np.int32) >> np.arange(8)) & 1    # bit 8 of index k
    idx = qs | (hb << 8)
    sc = f["scales"]
    s = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(-1, 8).astype(np.int32)
    db = d[:, None] * (1 + 2 * s).astype(F32)                          # d * (1 + 2*s)
    grid = _grid_values("iq3s", idx).reshape(-1, 8, 4, 8)
    signs = _signs8(f["signs"].reshape(-1, 8, 4))
    y = _apply_signs(db[:, :, None, None] * grid, signs)
    return y.reshape(data.shape[0], -1)


def dequantize_iq1_s(data):
    f = LAYOUTS["IQ1_S"].split(data)
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
    f = LAYOUTS["IQ1_M"].split(data)
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


# ============================================================================ IQ2/IQ3 drivers

def _quantize_subblocks(x, imatrix, fmt, *, sub, sigma_mul, rule, even_parity, eps, lat_name,
                        kmaxq, candidates, step, initial, final):
    """Everything up to the super-block scale: per sub-block (B of them) the scale, the grid
    index of each group, the sign bytes and whether the sub-block was skipped (written as zeros)."""
    lat = grids.lattice(lat_name)
    xb, w = _superblock_weights(x, imatrix, sub, sigma_mul, rule)
    waux = np.sqrt(w)
    xval, signs = _signs_and_magnitudes(xb, w, even_parity)
    vmax = _c_running_max(xval)
    dead = (vmax == 0) if eps is None else (vmax < F32(eps))   # `if (!max)` / `if (max < eps)`
    B = xb.shape[0]
    G = sub // lat.dims
    aborts = _Aborts(B)
    scale = np.zeros(B, F32)
    L = np.zeros((B, sub), np.int32)
    act = np.flatnonzero(~dead)
    if act.size:
        sc, La, skip = _grid_search(xval[act], w[act], waux[act], vmax[act], lat, kmaxq=kmaxq,
                                    candidates=candidates, step=step, initial=initial, final=final,
                                    aborts=aborts, sel=act)
        scale[act], L[act] = sc, La
        dead[act[skip]] = True
    smask = 127 if even_parity else 255
    neg = scale < 0                                  # "should never happen": flip scale and signs
    scale = np.where(neg, -scale, scale)
    signs = np.where(neg[:, None], ~signs & smask, signs)
    codes = grids.pack_levels(L.reshape(B, G, lat.dims), lat.bits)
    index = lat.map[codes].astype(np.int64)
    aborts.add(~dead & (index < 0).any(axis=1), "a level code off the grid (\"Oops\")")
    with np.errstate(invalid="ignore"):
        aborts.add(~dead & ~(scale >= 0), "GGML_ASSERT(scale >= 0) on a NaN scale")
    aborts.raise_if_any(fmt, x.shape[0], x.shape[1], sub)
    index = np.where(dead[:, None], 0, index)
    signs = np.where(dead[:, None], 0, signs)
    scale = np.where(dead, F32(0), scale)
    return scale, index, signs, dead


def _superscale(scales: np.ndarray, nmax: int, top: int, fudge):
    """max_scale over the sub-blocks (MAX from 0), d = max_scale/nmax, stored fp16(d*fudge);
    each sub-block scale l = clamp(nearest_int(0.5f*(id*scale - 1)), 0, top) with id = 1/d.
    Returns (d bits (nsb,), l (nsb, nsub), max_scale)."""
    max_scale = _c_running_max(scales, start=F32(0))
    d = max_scale / F32(nmax)
    dbits = fp32_to_fp16_bits(d if fudge is None else d * F32(fudge))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        id_ = F32(1) / d
        l = nearest_int(F32(0.5) * (id_[:, None] * scales - F32(1)))
    l = np.clip(l, 0, top)
    zero = max_scale == 0
    return np.where(zero, np.uint16(0), dbits), np.where(zero[:, None], 0, l), zero


def _pack_u16(v):
    return np.ascontiguousarray(v.astype("<u2")).view(np.uint8).reshape(v.shape[0], -1)


def _pack_u32(v):
    return np.ascontiguousarray(v.astype("<u4")).view(np.uint8).reshape(v.shape[0], -1)


def quantize_iq2_xxs(x, imatrix=None):
    """quantize_row_iq2_xxs_impl: sub-blocks of 32, parity signs, initial scale from
    make_qp_quants, candidates is = -6..6 (step 0.1), every group re-rounded at the end."""
    if imatrix is None:
        raise InputError("IQ2_XXS requires an importance matrix (imatrix=...), none was given")
    with np.errstate(all="ignore"):
        scale, index, signs, dead = _quantize_subblocks(
            x, imatrix, "IQ2_XXS", sub=32, sigma_mul=None, rule=None, even_parity=True, eps=1e-15,
            lat_name="iq2xxs", kmaxq=3, candidates=range(-6, 7), step=0.1, initial="qp", final="all")
        nsb = scale.shape[0] // 8
        dbits, l, zero = _superscale(scale.reshape(nsb, 8), 31, 15, None)
    grid = (index.reshape(nsb, 8, 4) << (8 * np.arange(4))).sum(axis=2)
    sg = (signs.reshape(nsb, 8, 4).astype(np.int64) << (7 * np.arange(4))).sum(axis=2) | (l.astype(np.int64) << 28)
    q2 = np.stack([grid, sg], axis=2).reshape(nsb, 16)
    q2 = np.where(zero[:, None], 0, q2)
    return LAYOUTS["IQ2_XXS"].join(x.shape[0], d=_pack_u16(dbits[:, None]), qs=_pack_u32(q2))


def quantize_iq2_xs(x, imatrix=None):
    """quantize_row_iq2_xs_impl: sub-blocks of 16, parity signs, candidates is = -9..9 (0.1)."""
    if imatrix is None:
        raise InputError("IQ2_XS requires an importance matrix (imatrix=...), none was given")
    with np.errstate(all="ignore"):
        scale, index, signs, dead = _quantize_subblocks(
            x, imatrix, "IQ2_XS", sub=16, sigma_mul=None, rule=None, even_parity=True, eps=1e-15,
            lat_name="iq2xs", kmaxq=3, candidates=range(-9, 10), step=0.1, initial="max", final="off")
        nsb = scale.shape[0] // 16
        dbits, l, zero = _superscale(scale.reshape(nsb, 16), 31, 15, None)
    qs = (index | (signs.astype(np.int64) << 9)).reshape(nsb, 32)
    qs = np.where(zero[:, None], 0, qs)
    sc = (l[:, 0::2] | (l[:, 1::2] << 4)).astype(np.uint8)
    return LAYOUTS["IQ2_XS"].join(x.shape[0], d=_pack_u16(dbits[:, None]), qs=_pack_u16(qs), scales=sc)


def quantize_iq2_s(x, imatrix=None):
    """quantize_row_iq2_s_impl: sub-blocks of 16, 8 sign bits per 8, nwant 1, fudge 0.9875."""
    with np.errstate(all="ignore"):
        scale, index, signs, dead = _quantize_subblocks(
            x, imatrix, "IQ2_S", sub=16, sigma_mul=2, rule="sigma", even_parity=False, eps=1e-8,
            lat_name="iq2s", kmaxq=3, candidates=range(-9, 10), step=0.1, initial="max", final="off")
        nsb = scale.shape[0] // 16
        dbits, l, zero = _superscale(scale.reshape(nsb, 16), 31, 15, 0.9875)
    index = index.reshape(nsb, 32)
    qs = (index & 255).astype(np.uint8)
    hi = (index >> 8).reshape(nsb, 8, 4)
    qh = (hi << (2 * np.arange(4))).sum(axis=2).astype(np.uint8)
    sg = signs.reshape(nsb, 32).astype(np.uint8)
    sc = (l[:, 0::2] | (l[:, 1::2] << 4)).astype(np.uint8)
    return LAYOUTS["IQ2_S"].join(x.shape[0], d=_pack_u16(dbits[:, None]), qs=qs, signs=sg, qh=qh, scales=sc)


def quantize_iq3_xxs(x, imatrix=None):
    """quantize_row_iq3_xxs_impl(256): sub-blocks of 32, groups of 4 on the 3-bit grid, parity
    signs per 8, candidates is = -15..15 (step 0.2), fudge 1.0125."""
    with np.errstate(all="ignore"):
        scale, index, signs, dead = _quantize_subblocks(
            x, imatrix, "IQ3_XXS", sub=32, sigma_mul=2, rule="x2", even_parity=True, eps=1e-8,
            lat_name="iq3xxs", kmaxq=8, candidates=range(-15, 16), step=0.2, initial="max", final="off")
        nsb = scale.shape[0] // 8
        dbits, l, zero = _superscale(scale.reshape(nsb, 8), 31, 15, 1.0125)
    qs = index.reshape(nsb, 64).astype(np.uint8)
    ss = (signs.reshape(nsb, 8, 4).astype(np.int64) << (7 * np.arange(4))).sum(axis=2) | (l.astype(np.int64) << 28)
    qs = np.where(zero[:, None], 0, qs)
    ss = np.where(zero[:, None], 0, ss)
    return LAYOUTS["IQ3_XXS"].join(x.shape[0], d=_pack_u16(dbits[:, None]), qs=qs, ss=_pack_u32(ss))


def quantize_iq3_s(x, imatrix=None):
    """quantize_row_iq3_s_impl(32): sub-blocks of 32, 8 sign bits per 8, `if (!max)` skip,
    candidates is = -9..9 (0.2), every group re-rounded when any was off the grid, fudge 1.033."""
    with np.errstate(all="ignore"):
        scale, index, signs, dead = _quantize_subblocks(
            x, imatrix, "IQ3_S", sub=32, sigma_mul=2, rule="x2", even_parity=False, eps=None,
            lat_name="iq3s", kmaxq=8, candidates=range(-9, 10), step=0.2, initial="max_off",
            final="all_if_off")
        nsb = scale.shape[0] // 8
        dbits, l, zero = _superscale(scale.reshape(nsb, 8), 31, 15, 1.033)
    index = index.reshape(nsb, 8, 8)
    qh = ((index >> 8) << np.arange(8)).sum(axis=2).astype(np.uint8)
    # ggml advances its qs and signs pointers only past sub-blocks it quantized: a sub-block
    # skipped by `if (!max)` leaves no room, the next ones move down, zeros fill the end
    # (qh is written at absolute positions and does not move).
    live_first = np.argsort(dead.reshape(nsb, 8), axis=1, kind="stable")
    qs = np.take_along_axis(index & 255, live_first[..., None], axis=1).astype(np.uint8).reshape(nsb, 64)
    sg = np.take_along_axis(signs.reshape(nsb, 8, 4), live_first[..., None], axis=1).astype(np.uint8).reshape(nsb, 32)
    sc = (l[:, 0::2] | (l[:, 1::2] << 4)).astype(np.uint8)
    return LAYOUTS["IQ3_S"].join(x.shape[0], d=_pack_u16(dbits[:, None]), qs=qs, qh=qh, signs=sg, scales=sc)


# ============================================================================ IQ1_S, IQ1_M

_X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], F32)    # levels 0, 1, 2 shifted by +delta
_X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], F32)   # ... by -delta


def _best_neighbour2(lat, codes, xb, w, scale, xx):
    """iq1_find_best_neighbour2: q = xx[level] (xx (M, 3): the group's shifted levels), x the
    signed values, w the plain weights. (When nothing is found ggml scans the whole codebook
    with an expression that reads past the end of its input; refquant refuses those inputs.)"""
    return _search_neighbours(lat, codes, xx, xb, w, scale)


def _sorted_order(xb: np.ndarray) -> np.ndarray:
    """The order qsort(pairs, n, 8, iq1_sort_helper) leaves the values in. The comparator has no
    tie-break; glibc's qsort sorts arrays this small (n*8 bytes < 1024) with its merge sort,
    which is stable, so equal values (-0 and +0 included) keep their positions' order."""
    return np.argsort(xb, axis=1, kind="stable")


def _iq1_weights(x, imatrix, sub):
    return _superblock_weights(x, imatrix, sub, 2, "x2")


def _iq1_grid_fix(lat, L, xb, w, scale, xx_groups, aborts, sel):
    """Look each group's level code up; off-grid groups take their best neighbour (find_best_neighbour2).
    Returns (index (B, G), L, all_on_grid (B,))."""
    B, sub = L.shape
    G = sub // 8
    codes = grids.pack_levels(L.reshape(B, G, 8), 2)
    index = lat.map[codes].astype(np.int64)
    off = index < 0
    bi, gi = np.nonzero(off)
    if bi.size:
        idx, ok = _best_neighbour2(lat, codes[bi, gi], xb.reshape(B, G, 8)[bi, gi],
                                   w.reshape(B, G, 8)[bi, gi], scale[bi], xx_groups[bi, gi])
        index[bi, gi] = idx
        aborts.add(sel[bi[~ok]], "no neighbour with a finite distance")
        L3 = L.reshape(B, G, 8)
        L3[bi, gi] = lat.levels[idx]
    return index, L, ~off.any(axis=1)


def _iq1_refit(index, lat, xb, w, xx_groups):
    """sumqx += w*q*x; sumq2 += w*q*q over the sub-block, q = xx[level] of the chosen points."""
    B, sub = xb.shape
    G = sub // 8
    lv = lat.levels[index].reshape(B, sub).astype(np.int64)
    xxe = np.repeat(xx_groups, 8, axis=1)                  # (B, sub, 3)
    sumqx = np.zeros(B, F32)
    sumq2 = np.zeros(B, F32)
    for i in range(sub):
        q = np.take_along_axis(xxe[:, i], lv[:, i:i + 1], axis=1)[:, 0]
        sumqx += w[:, i] * q * xb[:, i]
        sumq2 += w[:, i] * q * q
    return sumqx, sumq2


def _iq1_snap(lat, L, xb, w, scale, xx_g, dead, ngroups, aborts):
    """The grid points of the live sub-blocks (every group on the grid, `_iq1_grid_fix`) and, where
    no group had to be moved, the scale refitted to them (`_iq1_refit`); `scale` is updated in
    place. Returns the grid indices (B, ngroups), 0 for dead sub-blocks."""
    act = np.flatnonzero(~dead)
    index = np.zeros((len(dead), ngroups), np.int64)
    if act.size:
        ia, _, on = _iq1_grid_fix(lat, L[act], xb[act], w[act], scale[act], xx_g[act], aborts, act)
        sqx, sq2 = _iq1_refit(ia, lat, xb[act], w[act], xx_g[act])
        refit = ~on & (sqx > 0) & (sq2 > 0)
        scale[act] = np.where(refit, sqx / sq2, scale[act])
        index[act] = ia
    return index


def quantize_iq1_s(x, imatrix=None):
    """quantize_row_iq1_s_impl: sub-blocks of 32, levels -1/0/1 shifted by ±1/8 per sub-block,
    the exact best split of the sorted values into three runs, fudge 1.125."""
    if imatrix is None:
        raise InputError("IQ1_S requires an importance matrix (imatrix=...), none was given")
    lat = grids.lattice("iq1s")
    with np.errstate(all="ignore"):
        xb, w = _iq1_weights(x, imatrix, 32)
        B = xb.shape[0]
        aborts = _Aborts(B)
        vmax = _c_running_max(np.abs(xb))
        dead = vmax < F32(1e-12)
        order = _sorted_order(xb)
        xs = np.take_along_axis(xb, order, axis=1)
        ws = np.take_along_axis(w, order, axis=1)
        sumx = np.zeros((B, 33), F32)
        sumw = np.zeros((B, 33), F32)
        for j in range(32):
            sumx[:, j + 1] = sumx[:, j] + ws[:, j] * xs[:, j]
            sumw[:, j + 1] = sumw[:, j] + ws[:, j]
        best = np.full(B, -FLT_MAX, F32)
        scale = vmax.copy()
        b1 = np.full(B, -1)
        b2 = np.full(B, -1)
        shift = np.zeros(B, np.int64)
        for i1 in range(33):
            for i2 in range(i1, 33):
                a, b_, c = sumx[:, i1] - sumx[:, 0], sumx[:, i2] - sumx[:, i1], sumx[:, 32] - sumx[:, i2]
                wa, wb, wc = sumw[:, i1] - sumw[:, 0], sumw[:, i2] - sumw[:, i1], sumw[:, 32] - sumw[:, i2]
                for xx, sh in ((_X_P, 1), (_X_M, -1)):
                    sumqx = a * xx[0] + b_ * xx[1] + c * xx[2]
                    sumq2 = wa * xx[0] * xx[0] + wb * xx[1] * xx[1] + wc * xx[2] * xx[2]
                    take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
                    scale = np.where(take, sumqx / sumq2, scale)
                    best = np.where(take, scale * sumqx, best)
                    b1 = np.where(take, i1, b1)
                    b2 = np.where(take, i2, b2)
                    shift = np.where(take, sh, shift)
        dead |= (b1 < 0) | (b2 < 0) | (shift == 0)
        jpos = np.arange(32)
        Ls = np.where(jpos < b1[:, None], 0, np.where(jpos < b2[:, None], 1, 2))
        L = np.empty_like(Ls)
        np.put_along_axis(L, order, Ls, axis=1)
        neg = scale < 0
        L = np.where(neg[:, None], 2 - L, L)
        scale = np.where(neg, -scale, scale)
        shift = np.where(neg, -shift, shift)
        xx_g = np.where((shift == 1)[:, None, None], _X_P, _X_M) * np.ones((1, 4, 1), F32)
        index = _iq1_snap(lat, L, xb, w, scale, xx_g, dead, 4, aborts)
        aborts.add(~dead & ~(scale >= 0), "GGML_ASSERT(scale >= 0) on a NaN scale")
        aborts.raise_if_any("IQ1_S", x.shape[0], x.shape[1], 32)
        scale = np.where(dead, F32(0), scale)
        shift = np.where(dead, 1, shift)
        nsb = B // 8
        scales = scale.reshape(nsb, 8)
        max_scale = _c_running_max(scales, start=F32(0))
        d = max_scale / F32(15)
        dbits = fp32_to_fp16_bits(d * F32(1.125))
        l = np.clip(nearest_int(F32(0.5) * ((F32(1) / d)[:, None] * scales - F32(1))), 0, 7)
        l = l | np.where(shift.reshape(nsb, 8) == -1, 8, 0)
        zero = max_scale == 0
        dbits = np.where(zero, np.uint16(0), dbits)
        l = np.where(zero[:, None], 0, l)
    index = index.reshape(nsb, 8, 4)
    qs = (index & 255).astype(np.uint8).reshape(nsb, 32)
    qh = ((index >> 8) << (3 * np.arange(4))).sum(axis=2) | (l << 12)
    return LAYOUTS["IQ1_S"].join(x.shape[0], d=_pack_u16(dbits[:, None]), qs=qs, qh=_pack_u16(qh))


def _iq1m_xx(k: np.ndarray, group: int) -> np.ndarray:
    """The shifted levels of group 0 (k < 2 -> +delta) or group 1 (k even -> +delta) for the
    shift pattern k: 0 (+,+), 1 (+,-), 2 (-,+), 3 (-,-)."""
    plus = (k < 2) if group == 0 else (k % 2 == 0)
    return np.where(plus[:, None], _X_P, _X_M)


# IQ1_M's split search exists in two versions of ggml: equal in exact arithmetic, rounded
# differently in float32, so on near ties they pick different splits (spec/ggml/iq1_m.md).
IQ1M_SPLIT_SUMS = "split-sums"    # every split summed from position 0: ggml as in ggml-python 0.0.45
IQ1M_PREFIX_SUMS = "prefix-sums"  # prefix sums per half-block: llama.cpp's ggml (llama-cpp-python 0.3.36)
IQ1M_VARIANTS = (IQ1M_SPLIT_SUMS, IQ1M_PREFIX_SUMS)


def _iq1m_search_split_sums(xs, ws, first_half, vmax):
    """The older search: for every split (i1, i2), sumqx[k] and sumq2[k] summed over the 16
    sorted positions in order, each term w*xx[r]*x and w*xx[r]*xx[r] for its run r."""
    B = xs.shape[0]
    # per sorted position j and run r: the sumqx / sumq2 terms with +delta and -delta levels
    tqx = {(r, sgn): ws * xx[r] * xs for r in range(3) for sgn, xx in (("p", _X_P), ("m", _X_M))}
    tq2 = {(r, sgn): ws * xx[r] * xx[r] for r in range(3) for sgn, xx in (("p", _X_P), ("m", _X_M))}

    def terms(j, r):
        """(B, 4) terms of position j in run r for the 4 shift patterns."""
        p_qx, m_qx = tqx[r, "p"][:, j], tqx[r, "m"][:, j]
        p_q2, m_q2 = tq2[r, "p"][:, j], tq2[r, "m"][:, j]
        h = first_half[:, j]
        qx = np.stack([p_qx, np.where(h, p_qx, m_qx), np.where(h, m_qx, p_qx), m_qx], axis=1)
        q2 = np.stack([p_q2, np.where(h, p_q2, m_q2), np.where(h, m_q2, p_q2), m_q2], axis=1)
        return qx, q2

    # sums over the first i1 positions (run 0), the same for every i2
    pre_qx = [np.zeros((B, 4), F32)]
    pre_q2 = [np.zeros((B, 4), F32)]
    for j in range(16):
        qx, q2 = terms(j, 0)
        pre_qx.append(pre_qx[-1] + qx)
        pre_q2.append(pre_q2[-1] + q2)
    sel = _Iq1mBest(B, vmax)
    for i1 in range(17):
        i2s = np.arange(i1, 17)
        sqx = np.repeat(pre_qx[i1][:, None, :], len(i2s), axis=1)     # (B, n_i2, 4)
        sq2 = np.repeat(pre_q2[i1][:, None, :], len(i2s), axis=1)
        for j in range(i1, 16):
            qx1, q21 = terms(j, 1)
            qx2, q22 = terms(j, 2)
            k = j - i1 + 1                  # splits i2 <= j put position j in run 2, the rest in run 1
            sqx[:, :k] += qx2[:, None, :]
            sq2[:, :k] += q22[:, None, :]
            sqx[:, k:] += qx1[:, None, :]
            sq2[:, k:] += q21[:, None, :]
        for n, i2 in enumerate(i2s):
            sel.offer(i1, i2, sqx[:, n].T, sq2[:, n].T)
    return sel.result()


def _iq1m_search_prefix_sums(xs, ws, first_half, vmax):
    """The newer search: prefix sums of w*x and of w over the sorted positions, one per half of
    the sub-block (a position adds to its own half, the other half's sum is carried). With levels
    v = xx[0..2] (v0 - v1 = v1 - v2 = -1), a split's sums for one half and one shift are
        sumqx = T*v2 - (P[i1] + P[i2])
        sumq2 = (W*v2)*v2 + Pw[i1]*(v0² - v1²) + Pw[i2]*(v1² - v2²)
    (T, W: the half's totals; each product and sum rounded to float32 in this order), and the
    pattern k adds its two halves: k = 0 (+,+), 1 (+,-), 2 (-,+), 3 (-,-)."""
    B = xs.shape[0]
    wx = ws * xs
    px = np.zeros((2, 17, B), F32)           # [h, j]: sum of w*x over sorted positions < j in half h
    pw = np.zeros((2, 17, B), F32)
    for j in range(16):
        for h, in_h in ((0, first_half[:, j]), (1, ~first_half[:, j])):
            px[h, j + 1] = np.where(in_h, px[h, j] + wx[:, j], px[h, j])
            pw[h, j + 1] = np.where(in_h, pw[h, j] + ws[:, j], pw[h, j])
    txs, tws = px[:, 16:], pw[:, 16:]                                   # (2, 1, B): the halves' totals
    p2, m2 = _X_P[2], _X_M[2]
    cp1, cp2 = _X_P[0] * _X_P[0] - _X_P[1] * _X_P[1], _X_P[1] * _X_P[1] - _X_P[2] * _X_P[2]
    cm1, cm2 = _X_M[0] * _X_M[0] - _X_M[1] * _X_M[1], _X_M[1] * _X_M[1] - _X_M[2] * _X_M[2]
    sel = _Iq1mBest(B, vmax)
    for i1 in range(17):                     # every i2 >= i1 at once: (2 halves, n_i2, B)
        sx = px[:, i1:i1 + 1] + px[:, i1:]
        qx_p, qx_m = txs * p2 - sx, txs * m2 - sx
        q2_p = tws * p2 * p2 + pw[:, i1:i1 + 1] * cp1 + pw[:, i1:] * cp2
        q2_m = tws * m2 * m2 + pw[:, i1:i1 + 1] * cm1 + pw[:, i1:] * cm2
        sumqx = (qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1])
        sumq2 = (q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1])
        for n in range(17 - i1):
            sel.offer(i1, i1 + n, [v[n] for v in sumqx], [v[n] for v in sumq2])
    return sel.result()


class _Iq1mBest:
    """The running choice over splits, in ggml's order (i1, then i2, then k = 0..3): a
    candidate with sumq2 > 0 and sumqx² > best*sumq2 takes over (scale = sumqx/sumq2,
    best = scale*sumqx). Starts from best = -FLT_MAX, scale = max."""

    def __init__(self, B, vmax):
        self.best = np.full(B, -FLT_MAX, F32)
        self.scale = vmax.copy()
        self.b1 = np.full(B, -1)
        self.b2 = np.full(B, -1)
        self.bk = np.full(B, -1)

    def offer(self, i1, i2, sumqx, sumq2):
        """sumqx[k], sumq2[k]: (B,), the split's sums for the shift pattern k = 0..3."""
        for k in range(4):
            a, c = sumqx[k], sumq2[k]
            take = (c > 0) & (a * a > self.best * c)
            self.scale = np.where(take, a / c, self.scale)
            self.best = np.where(take, self.scale * a, self.best)
            self.b1 = np.where(take, i1, self.b1)
            self.b2 = np.where(take, i2, self.b2)
            self.bk = np.where(take, k, self.bk)

    def result(self):
        return self.scale, self.b1, self.b2, self.bk


_IQ1M_SEARCH = {IQ1M_SPLIT_SUMS: _iq1m_search_split_sums, IQ1M_PREFIX_SUMS: _iq1m_search_prefix_sums}


def quantize_iq1_m(x, imatrix=None, variant: str = IQ1M_SPLIT_SUMS):
    """quantize_row_iq1_m_impl: sub-blocks of 16 in two groups of 8, each group with its own
    ±delta shift, the exact best split of the sorted values into three runs for each of the 4
    shift patterns, and a least-squares super-scale with fudge 1.1125.

    variant: how the split search sums, as one or the other ggml does it (equal in exact
    arithmetic, not in float32): "split-sums" (the default, the registered IQ1_M quantizer) as
    ggml-python 0.0.45's ggml; "prefix-sums" as the ggml vendored in llama.cpp (llama-cpp-python
    0.3.36), which llama_model_quantize runs (refquant.pipelines.recipes uses it)."""
    if variant not in _IQ1M_SEARCH:
        raise InputError(f"unknown IQ1_M variant {variant!r}; known: {', '.join(IQ1M_VARIANTS)}")
    lat = grids.lattice("iq1s")
    with np.errstate(all="ignore"):
        xb, w = _iq1_weights(x, imatrix, 16)
        B = xb.shape[0]
        aborts = _Aborts(B)
        vmax = _c_running_max(np.abs(xb))
        dead = vmax < F32(1e-7)
        order = _sorted_order(xb)
        xs = np.take_along_axis(xb, order, axis=1)
        ws = np.take_along_axis(w, order, axis=1)
        scale, b1, b2, bk = _IQ1M_SEARCH[variant](xs, ws, order < 8, vmax)
        dead |= (b1 < 0) | (b2 < 0) | (bk < 0)
        jpos = np.arange(16)
        Ls = np.where(jpos < b1[:, None], 0, np.where(jpos < b2[:, None], 1, 2))
        L = np.empty_like(Ls)
        np.put_along_axis(L, order, Ls, axis=1)
        neg = scale < 0
        L = np.where(neg[:, None], 2 - L, L)
        scale = np.where(neg, -scale, scale)
        bk = np.where(neg, 3 - bk, bk)                     # 0 <-> 3, 1 <-> 2
        kk = np.clip(bk, 0, 3)
        xx_g = np.stack([_iq1m_xx(kk, 0), _iq1m_xx(kk, 1)], axis=1)      # (B, 2, 3)
        index = _iq1_snap(lat, L, xb, w, scale, xx_g, dead, 2, aborts)
        aborts.add(~dead & ~(scale >= 0), "GGML_ASSERT(scale >= 0) on a NaN scale")
        aborts.raise_if_any("IQ1_M", x.shape[0], x.shape[1], 16)
        scale = np.where(dead, F32(0), scale)
        shifts = np.where(dead, 0, bk)
        nsb = B // 16
        scales = scale.reshape(nsb, 16)
        max_scale = _c_running_max(scales, start=F32(0))
        zero = max_scale == 0
        d = max_scale / F32(15)
        id_ = F32(1) / d
        l = np.clip(nearest_int(F32(0.5) * (id_[:, None] * scales - F32(1))), 0, 7)   # (nsb, 16)
        # the least-squares super-scale over all 256 values, in order (sub-block, group, position)
        sh = shifts.reshape(nsb, 16)
        lv = lat.levels[index.reshape(nsb, 16, 2)].astype(np.int64)        # (nsb, 16, 2, 8)
        xv = xb.reshape(nsb, 16, 2, 8)
        wv = w.reshape(nsb, 16, 2, 8)
        mult = (2 * l + 1).astype(F32)
        sumqx = np.zeros(nsb, F32)
        sumq2 = np.zeros(nsb, F32)
        for ib in range(16):
            for g in range(2):
                xx = _iq1m_xx(sh[:, ib], g)                                 # (nsb, 3)
                for j in range(8):
                    q = np.take_along_axis(xx, lv[:, ib, g, j:j + 1], axis=1)[:, 0] * mult[:, ib]
                    sumqx += wv[:, ib, g, j] * q * xv[:, ib, g, j]
                    sumq2 += wv[:, ib, g, j] * q * q
        d = np.where(sumq2 > 0, sumqx / sumq2, d)
        dbits = fp32_to_fp16_bits(d * F32(1.1125)).astype(np.int64)
    index = index.reshape(nsb, 16, 2)
    qs = (index & 255).astype(np.uint8).reshape(nsb, 32)
    masks = np.array([0x00, 0x80, 0x08, 0x88])
    qh = (index[..., 0] >> 8) | ((index[..., 1] >> 8) << 4)
    qh = np.where(zero[:, None], qh, qh | masks[sh])
    sc = (l.reshape(nsb, 4, 4) << (3 * np.arange(4))).sum(axis=2)
    sc = sc | (((dbits[:, None] >> (4 * np.arange(4))) & 0xF) << 12)
    sc = np.where(zero[:, None], 0, sc)
    return LAYOUTS["IQ1_M"].join(x.shape[0], qs=qs, qh=qh.astype(np.uint8), scales=_pack_u16(sc))


# ============================================================================ registration



# ============================================================================ shared pieces

def _c_running_max(v: np.ndarray, start=None) -> np.ndarray:
    """`max = v[0]; for i: max = MAX(max, v[i])` with MAX(a, b) = a > b ? a : b, over the last axis
    (or from `start` when given)."""
    m = v[..., 0].copy() if start is None else np.broadcast_to(np.asarray(start, F32), v.shape[:-1]).copy()
    for i in range(0 if start is not None else 1, v.shape[-1]):
        m = np.where(m > v[..., i], m, v[..., i])
    return m


def _c_first_min_index(v: np.ndarray) -> np.ndarray:
    """`imin = 0; min = v[0]; for i >= 1: if (v[i] < min) {min = v[i]; imin = i;}` over the last axis."""
    imin = np.zeros(v.shape[:-1], dtype=np.int64)
    m = v[..., 0].copy()
    for i in range(1, v.shape[-1]):
        take = v[..., i] < m
        m = np.where(take, v[..., i], m)
        imin = np.where(take, i, imin)
    return imin


def _superblock_weights(x: np.ndarray, imatrix, sub: int, sigma_mul: float | None, rule: str):
    """Per-sub-block weights (B, sub) for x (nrows, n), B = all sub-blocks of all rows.

    sigma2 = sumx2/256 (sigma_mul None) or 2*sumx2/256, sumx2 summed over the super-block in order.
    With an importance matrix: weight = qw * sqrtf(sigma2 + x*x), the same qw row for every row.
    Without: rule "x2" -> x*x; "sigma" -> 0.25f*sigma2 + x*x.
    """
    nrows, n = x.shape
    xs = x.reshape(-1, QK_K)
    sumx2 = np.zeros(xs.shape[0], F32)
    for i in range(QK_K):                      # for (i...) sumx2 += xbl[i]*xbl[i];
        sumx2 += xs[:, i] * xs[:, i]
    sigma2 = (sumx2 if sigma_mul is None else F32(sigma_mul) * sumx2) / F32(QK_K)
    sig = np.repeat(sigma2, QK_K // sub)[:, None]
    xb = xs.reshape(-1, sub)
    if imatrix is not None:
        qw = np.tile(np.asarray(imatrix, F32).reshape(-1, sub), (nrows, 1))
        w = qw * np.sqrt(sig + xb * xb)
    elif rule == "x2":
        w = xb * xb
    else:
        w = F32(0.25) * sig + xb * xb
    return xb, w.astype(F32)


def _signs_and_magnitudes(xb: np.ndarray, w: np.ndarray, even_parity: bool):
    """Per group of 8: xval = |x| (x >= 0 keeps x, so -0 stays -0), sign bits s of the negative
    ones. With even_parity (7 stored sign bits), an odd count of negatives flips the sign of the
    element with the smallest w*x*x back: its xval becomes negative. Returns xval (B, sub) and the
    sign bytes (B, sub/8) (only the low 7 bits kept with even_parity)."""
    B, sub = xb.shape
    x8 = xb.reshape(B, sub // 8, 8)
    w8 = w.reshape(B, sub // 8, 8)
    pos = x8 >= 0
    xval = np.where(pos, x8, -x8)
    s = (((~pos).astype(np.int32)) << np.arange(8)).sum(axis=-1)
    if even_parity:
        odd = ((~pos).sum(axis=-1) % 2) == 1
        imin = _c_first_min_index(w8 * x8 * x8)
        flip = odd[..., None] & (np.arange(8) == imin[..., None])
        xval = np.where(flip, -xval, xval)
        s = np.where(odd, s ^ (1 << imin), s) & 127
    return xval.reshape(B, sub).astype(F32), s.astype(np.int32)


_SEARCH_CHUNK = 2048


def _search_neighbours(lat: grids.Lattice, codes: np.ndarray, level_values: np.ndarray,
                       xval: np.ndarray, w: np.ndarray, scale: np.ndarray):
    """The neighbour search of ggml's IQ quantizers, for M off-grid groups at once.

    codes (M,): the groups' off-grid level codes; level_values (M, levels): the value q each
    level stands for in that group; xval, w (M, dims); scale (M,). For each group, over its
    neighbour list in order: d2 = sum_i w[i]*diff*diff (left to right), diff = scale*q_i - xval[i];
    the first strict minimum below FLT_MAX wins (`if (d2 < best_d2)` from FLT_MAX, so NaN and
    overflowed distances never win). Returns (index (M,), found (M,)).

    A coordinate's term depends only on its level, so the terms are computed once per group and
    level, then gathered per candidate: the same float32 operations, in the same order.
    """
    M = codes.shape[0]
    if M == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if M > _SEARCH_CHUNK:                    # bound the temporaries; groups are independent
        parts = [_search_neighbours(lat, codes[a:a + _SEARCH_CHUNK], level_values[a:a + _SEARCH_CHUNK],
                                    xval[a:a + _SEARCH_CHUNK], w[a:a + _SEARCH_CHUNK], scale[a:a + _SEARCH_CHUNK])
                 for a in range(0, M, _SEARCH_CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    dims, nlev = lat.dims, level_values.shape[1]
    diff = scale[:, None, None] * level_values[:, None, :] - xval[:, :, None]     # (M, dims, nlev)
    terms = (w[:, :, None] * diff * diff).reshape(-1)
    rows = lat.nbr_row[codes]
    starts = lat.nbr_start[rows]
    lens = lat.nbr_start[rows + 1] - starts
    seg_start = np.cumsum(lens) - lens
    seg = np.repeat(np.arange(M), lens)
    flat = np.arange(lens.sum()) - np.repeat(seg_start, lens) + np.repeat(starts, lens)
    lv = lat.nbr_levels[flat]                                                     # (total, dims)
    base = seg * (dims * nlev)
    d2 = np.zeros(flat.shape[0], F32)
    for i in range(dims):
        d2 += terms[base + i * nlev + lv[:, i]]
    ok = d2 < FLT_MAX
    d2 = np.where(ok, d2, np.inf)
    segmin = np.minimum.reduceat(d2, seg_start)
    hit = ok & (d2 == segmin[seg])
    found = np.zeros(M, bool)
    index = np.zeros(M, np.int64)
    first = np.unique(seg[hit], return_index=True)
    found[first[0]] = True
    index[first[0]] = lat.nbr_flat[flat[np.flatnonzero(hit)[first[1]]]]
    return index, found


def _best_neighbour(lat, codes, xval, w, scale):
    """iq2_find_best_neighbour / iq3_find_best_neighbour: q = the point's 2l+1 coordinates,
    xval the group's magnitudes, w = sqrtf(weight). ggml aborts where nothing is found."""
    odd = (2 * np.arange(1 << lat.bits) + 1).astype(F32)
    return _search_neighbours(lat, codes, np.broadcast_to(odd, (codes.shape[0], odd.size)), xval, w, scale)


def _weighted_sums(w: np.ndarray, xval: np.ndarray, L: np.ndarray):
    """sumqx += w*xval*q; sumq2 += w*q*q with q = 2*L+1, in position order."""
    sumqx = np.zeros(w.shape[0], F32)
    sumq2 = np.zeros(w.shape[0], F32)
    for i in range(w.shape[1]):
        q = (2 * L[:, i] + 1).astype(F32)
        sumqx += w[:, i] * xval[:, i] * q
        sumq2 += w[:, i] * q * q
    return sumqx, sumq2


def _round_to_grid(lat, kmaxq, xval, waux, id_, scale, groups=None):
    """Levels l = clamp(nearest_int(0.5f*(id*xval - 1)), 0, kMaxQ-1) per group; groups whose code
    is not in the codebook are replaced by their best neighbour at `scale`. `groups` (B, G) bool
    limits the work to those groups (others come back as computed but not searched).
    Returns (L (B, sub) levels, index (B, G) grid index, on_grid (B, G), found (B, G))."""
    B, sub = xval.shape
    dims = lat.dims
    G = sub // dims
    with np.errstate(invalid="ignore", over="ignore"):
        l = nearest_int(F32(0.5) * (id_[:, None] * xval - F32(1)))
    L = np.clip(l, 0, kmaxq - 1).astype(np.int32)
    codes = grids.pack_levels(L.reshape(B, G, dims), lat.bits)
    index = lat.map[codes].astype(np.int64)
    on_grid = index >= 0
    found = np.ones((B, G), bool)
    need = ~on_grid if groups is None else (~on_grid & groups)
    bi, gi = np.nonzero(need)
    if bi.size:
        xg = xval.reshape(B, G, dims)[bi, gi]
        wg = waux.reshape(B, G, dims)[bi, gi]
        idx, ok = _best_neighbour(lat, codes[bi, gi], xg, wg, scale[bi])
        index[bi, gi] = idx
        found[bi, gi] = ok
        L3 = L.reshape(B, G, dims)
        L3[bi, gi] = lat.levels[idx]
    return L, index, on_grid, found


# ============================================================================ the IQ2/IQ3 search

class _Aborts:
    """Where ggml would abort (GGML_ASSERT / GGML_ABORT), per sub-block, with the reason."""

    def __init__(self, nsub: int):
        self.mask = np.zeros(nsub, bool)
        self.reason = np.full(nsub, "", dtype=object)

    def add(self, where: np.ndarray, reason: str):
        """where: a mask over all sub-blocks, or the numbers of some of them."""
        if where.dtype != bool:
            m = np.zeros_like(self.mask)
            m[where] = True
            where = m
        new = where & ~self.mask
        self.reason[new] = reason
        self.mask |= where

    def raise_if_any(self, fmt: str, nrows: int, n: int, sub: int):
        if not self.mask.any():
            return
        b = int(np.flatnonzero(self.mask)[0])
        per_row = n // sub
        row, col = divmod(b, per_row)
        raise InputError(
            f"{fmt}: ggml aborts on this input ({self.reason[b]}) in row {row}, values "
            f"{col * sub}..{col * sub + sub - 1}; refquant refuses it (values this large make "
            f"the weighted sums overflow float32; see spec/ggml/{fmt.lower()}.md)")


def _grid_search(xval, weight, waux, vmax, lat, *, kmaxq, candidates, step, initial, final, aborts, sel):
    """The scale search shared by IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S, on the sub-blocks
    that reach it (B of them; `sel` their numbers, for reporting aborts).

    initial "max":  scale = max/(2*kMaxQ-1), levels 0, every group counted as on the grid
                    (IQ2_XS, IQ2_S, IQ3_XXS) or off it (IQ3_S: `initial="max_off"`).
    initial "qp":   scale from make_qp_quants(kMaxQ+1) (IQ2_XXS); the candidates are spread
                    around eff_max = scale*kMaxQ instead of max.
    For is in candidates: id = (2*kMaxQ-1 + is*step)/max, levels rounded at id, off-grid groups
    replaced by their best neighbour at 1/id; the candidate is taken when
    sumqx^2 > best*sumq2 (best = scale*sumqx of the last one taken, 0 at first).
    final "all":        (IQ2_XXS) if scale > 0, re-round every group at 1/scale.
    final "off":        (IQ2_XS, IQ2_S, IQ3_XXS) if some group of the winner was off the grid
                        and scale > 0, re-round those groups only.
    final "all_if_off": (IQ3_S) as "off", but re-round every group.
    Then scale = sumqx/sumq2 when sumq2 > 0.
    Returns (scale, L levels (B, sub), on_grid_final (B, G) computed from L by the caller).
    """
    B, sub = xval.shape
    G = sub // lat.dims
    L = np.zeros((B, sub), np.int32)
    if initial == "qp":
        scale = make_qp_quants(xval, kmaxq + 1, weight)[0]
        eff_max = scale * F32(kmaxq)
        ref = eff_max
        on_grid = np.ones((B, G), bool)
        skip = eff_max <= 0                 # `if (eff_max <= 0)`: scale 0, levels 0 (NaN goes on)
    else:
        scale = vmax / F32(2 * kmaxq - 1)
        ref = vmax
        on_grid = np.full((B, G), initial == "max", bool)
        skip = np.zeros(B, bool)
    best = np.zeros(B, F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for is_ in candidates:
            id_ = (F32(2 * kmaxq - 1) + F32(is_) * F32(step)) / ref
            this_scale = F32(1) / id_
            Laux, _, og, found = _round_to_grid(lat, kmaxq, xval, waux, id_, this_scale)
            aborts.add(sel[~found.all(axis=1) & ~skip], "no neighbour with a finite distance")
            sumqx, sumq2 = _weighted_sums(weight, xval, Laux)
            take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2) & ~skip
            scale = np.where(take, sumqx / sumq2, scale)
            best = np.where(take, scale * sumqx, best)
            L = np.where(take[:, None], Laux, L)
            on_grid = np.where(take[:, None], og, on_grid)
        if final == "all":
            redo = (scale > 0) & ~skip
            groups = np.ones((B, G), bool)
        else:
            redo = (~on_grid).any(axis=1) & (scale > 0)
            groups = ~on_grid if final == "off" else np.ones((B, G), bool)
        if redo.any():
            r = np.flatnonzero(redo)
            sc = scale[r]
            Lr, _, _, found = _round_to_grid(lat, kmaxq, xval[r], waux[r], F32(1) / sc, sc, groups[r])
            aborts.add(sel[r[~found.all(axis=1)]], "no neighbour with a finite distance")
            keep = np.repeat(groups[r], lat.dims, axis=1)
            L[r] = np.where(keep, Lr, L[r])
            sumqx, sumq2 = _weighted_sums(weight[r], xval[r], L[r])
            scale[r] = np.where(sumq2 > 0, sumqx / sumq2, sc)
    scale = np.where(skip, F32(0), scale)
    L = np.where(skip[:, None], 0, L)
    return scale.astype(F32), L, skip

# ============================================================================ vec_dot operands
#
# What ggml's generic Q8_K kernels read (refquant.ggml.dot): the integer weights w_p of the
# lattice types are the dequantizer's output with d = 1, divided by the kernel's final factor
# (IQ2_*: (0.5 + k) * 0.25 * grid * sign = (2k + 1) * grid * sign / 8, so 0.125; IQ3_XXS: 0.25;
# IQ3_S: (1 + 2k) * grid * sign, 1): the integers the kernel sums (bsum += sumi * ls). IQ1_S and
# IQ1_M split the unit-scale decode ls * (g + delta) into the grid part q_p = ls_p * g_p and the
# delta part qd_p = ls_p * sign(delta_p), ls and the delta's sign read from the bits.

FINAL = {"IQ2_XXS": 0.125, "IQ2_XS": 0.125, "IQ2_S": 0.125, "IQ3_XXS": 0.25, "IQ3_S": 1.0}
_DEQUANTIZE = {"IQ2_XXS": dequantize_iq2_xxs, "IQ2_XS": dequantize_iq2_xs, "IQ2_S": dequantize_iq2_s,
               "IQ3_XXS": dequantize_iq3_xxs, "IQ3_S": dequantize_iq3_s, "IQ1_S": dequantize_iq1_s,
               "IQ1_M": dequantize_iq1_m}


def _vec_dot_lattice(name):
    layout = LAYOUTS[name]

    def operands(w):
        blocks = np.ascontiguousarray(w, dtype=np.uint8).reshape(-1, layout.type_size)
        d = fp16_bits_to_fp32(u16(layout.split(blocks)["d"]))
        unit = blocks.copy()
        unit[:, 0], unit[:, 1] = 0x00, 0x3C                                    # d = 1
        y = _DEQUANTIZE[name](unit).astype(np.float64).reshape(-1, QK_K) / FINAL[name]
        q = y.astype(np.int32)
        if not (q == y).all():
            raise AssertionError(f"{name}: the unit-scale decode is not integral")
        return {"q": q, "sc16": np.ones((q.shape[0], 16), np.int32), "d": d, "final": FINAL[name]}
    operands.__name__ = f"vec_dot_{name.lower()}"
    return operands


def vec_dot_iq1(name):
    layout = LAYOUTS[name]

    def operands(w):
        blocks = np.ascontiguousarray(w, dtype=np.uint8).reshape(-1, layout.type_size)
        f = layout.split(blocks)
        unit = blocks.copy()
        if name == "IQ1_S":       # qh: u16[8], bits 12-14 ls, bit 15 delta sign, per 32
            d = fp16_bits_to_fp32(u16(f["d"]))
            unit[:, 0], unit[:, 1] = 0x00, 0x3C
            qh = np.ascontiguousarray(f["qh"]).view("<u2").astype(np.int32)             # (nb, 8)
            ls = np.repeat(2 * ((qh >> 12) & 7) + 1, 32, axis=1)
            sgn = np.repeat(np.where(qh & 0x8000, -1, 1), 32, axis=1)
        else:                     # scales: u16[4], 3-bit scales per 16, d in the top nibbles; qh bits 3, 7: delta
            sc = np.ascontiguousarray(f["scales"]).view("<u2").astype(np.int32)          # (nb, 4)
            d = _iq1m_d(sc)
            at = layout.offset("scales") + 1
            for k, nib in enumerate((0x0, 0x0, 0xC, 0x3)):                             # d = 0x3C00 = 1
                unit[:, at + 2 * k] = (unit[:, at + 2 * k] & 0x0F) | (nib << 4)
            ib = np.arange(8)
            shift = 6 * (ib % 2)
            ls1 = 2 * ((sc[:, ib // 2] >> shift) & 7) + 1                               # groups 0, 1
            ls2 = 2 * ((sc[:, ib // 2] >> (shift + 3)) & 7) + 1                         # groups 2, 3
            ls = np.repeat(np.stack([ls1, ls1, ls2, ls2], axis=2).reshape(-1, 32), 8, axis=1)
            qhb = f["qh"].astype(np.int32).reshape(-1, 8, 2)
            bits = np.stack([qhb[:, :, 0] & 0x08, qhb[:, :, 0] & 0x80, qhb[:, :, 1] & 0x08, qhb[:, :, 1] & 0x80], axis=2)
            sgn = np.repeat(np.where(bits.reshape(-1, 32) != 0, -1, 1), 8, axis=1)
        y = _DEQUANTIZE[name](unit).astype(np.float64).reshape(-1, QK_K)
        g = y / ls - float(grids.IQ1S_DELTA) * sgn
        if not ((g == np.rint(g)).all() and (np.abs(g) <= 1).all()):
            raise AssertionError(f"{name}: the unit-scale decode is not ls * (g + delta)")
        q = (ls * g.astype(np.int32)).astype(np.int32)
        return {"q": q, "qd": (ls * sgn).astype(np.int32), "sc16": np.ones((q.shape[0], 16), np.int32), "d": d}
    operands.__name__ = f"vec_dot_{name.lower()}"
    return operands


VEC_DOT = {
    **{name: VecDot("Q8_K", _vec_dot_lattice(name), "lattice: f(bsum) * d, then * final") for name in FINAL},
    # IQ1_S: the delta part from the Q8_K bsums; IQ1_M: from the activations' codes themselves
    "IQ1_S": VecDot("Q8_K", vec_dot_iq1("IQ1_S"), "iq1: delta from bsums"),
    "IQ1_M": VecDot("Q8_K", vec_dot_iq1("IQ1_M"), "iq1: delta from qs"),
}


# llama.cpp's LLAMA_FTYPE_MOSTLY_* whose default type is this one (MOSTLY_IQ2_S, 28, defaults to
# IQ2_XS, and IQ2_S is MOSTLY_IQ2_M's: mixtures, in refquant.pipelines.recipes)
# llama.cpp's LLAMA_FTYPE_MOSTLY_* of a file of each type, and llama-quant.cpp's tensor_type_fallback
# and token_embd type for it
RECORDS = [block_format(LAYOUTS[name], "ggml-iq", quantize, dequantize, im, int(T[name]), f"ggml/{name.lower()}.md",
                        VEC_DOT[name], file_type=ftype, fallback="IQ4_NL", token_embd=embd)
           for name, quantize, dequantize, im, ftype, embd in [
               ("IQ2_XXS", quantize_iq2_xxs, dequantize_iq2_xxs, IMATRIX_REQUIRED, 19, "Q2_K"),
               ("IQ2_XS", quantize_iq2_xs, dequantize_iq2_xs, IMATRIX_REQUIRED, 20, "Q2_K"),
               ("IQ2_S", quantize_iq2_s, dequantize_iq2_s, IMATRIX_OPTIONAL, None, None),
               ("IQ3_XXS", quantize_iq3_xxs, dequantize_iq3_xxs, IMATRIX_OPTIONAL, 23, "IQ3_S"),
               ("IQ3_S", quantize_iq3_s, dequantize_iq3_s, IMATRIX_OPTIONAL, 26, None),
               ("IQ1_S", quantize_iq1_s, dequantize_iq1_s, IMATRIX_REQUIRED, 24, "Q2_K"),
               ("IQ1_M", quantize_iq1_m, dequantize_iq1_m, IMATRIX_OPTIONAL, 31, "Q2_K")]]
