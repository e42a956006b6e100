"""ggml's non-linear 4-bit types: IQ4_NL and IQ4_XS (ggml-quants.c, `quantize_row_iq4_nl_impl`).

Each 4-bit code indexes the 16-entry table `kvalues_iq4nl`; a value is `d * kvalues_iq4nl[code]`.

    IQ4_NL  (32 values, 18 bytes)
      | d: f16 | qs[16]: low nibble = code of element j, high nibble = code of element j+16 |

    IQ4_XS  (256 values, 136 bytes: 8 sub-blocks of 32)
      | d: f16 | scales_h: u16 | scales_l[4] | qs[128] |
      sub-block ib has the 6-bit scale ls = (scales_l[ib/2] >> 4*(ib%2)) & 0xF
                                        | ((scales_h >> 2*ib) & 3) << 4,
      and its values are  d * (ls - 32) * kvalues_iq4nl[code];
      qs[16*ib + j] holds the codes of elements 32*ib + j (low) and 32*ib + 16 + j (high).

Both types are quantized the way `ggml_quantize_chunk` does it (`quantize_iq4_nl`,
`quantize_iq4_xs`): a search over 15 candidate scales (ntry = 7). The exported
`quantize_row_iq4_nl_ref` uses ntry = -1, a different search that gives different bytes; files
hold the chunk path's bytes, and that is what is specified here. (IQ4_XS's
`quantize_row_iq4_xs_ref` calls the chunk routine, so there the two agree.)

With an importance matrix both take the same search with weights qw[j] * sqrtf(sigma2 + x[j]^2)
in place of x[j]^2; neither requires one. `ggml_quantize_init` has nothing to set up for
them (no grids).
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import F32, c_max_abs, fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int, safe_reciprocal, seq_sum
from ..format import IMATRIX_OPTIONAL, VecDot, block_format
from .blocks import as_blocks, pack_nibbles, u16
from .layout import Field, Layout

T = gguf.GGMLQuantizationType

QK4_NL = 32
QK_K = 256
NTRY = 7  # the chunk path's search width: candidate inverse scales (itry - 127) / max, |itry| <= 7
GROUP_MAX_EPS = F32(1e-15)

_CODES = "4-bit codes into kvalues_iq4nl: low nibble element j, high nibble element j + 16"
LAYOUTS = {L.name: L for L in [
    Layout("IQ4_NL", QK4_NL, [Field("d", "f16", 1, "scale"), Field("qs", "u8", 16, _CODES)]),
    Layout("IQ4_XS", QK_K, [Field("d", "f16", 1, "scale of the scales"),
                            Field("scales_h", "u16", 1, "bits 2ib, 2ib + 1: high 2 bits of scale ib"),
                            Field("scales_l", "u8", 4, "low 4 bits of scales 2k (low nibble), 2k + 1 (high)"),
                            Field("qs", "u8", 128, "sub-block ib: bytes 16ib + j, " + _CODES)]),
]}
IQ4_NL, IQ4_XS = LAYOUTS["IQ4_NL"], LAYOUTS["IQ4_XS"]

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                         dtype=np.int8)
_VALS = KVALUES_IQ4NL.astype(F32)


def best_index_int8(x: np.ndarray, values: np.ndarray = _VALS) -> np.ndarray:
    """ggml's best_index_int8: the index of the table entry nearest to x (float32).

    x <= values[0] gives 0 and x >= values[-1] the last index; otherwise the binary search
    brackets x as values[mu-1] <= x < values[mu] and picks mu-1 only when
    x - values[mu-1] < values[mu] - x (float32 differences): a tie goes to the upper entry.
    A NaN gives the last index, as the C comparisons do."""
    x = np.asarray(x, dtype=F32)
    n = values.shape[0]
    # mu = 1 + #{k in 1..n-2 : values[k] <= x}: the bracket's upper end, clipped to [1, n-1]
    mu = np.ones(x.shape, dtype=np.uint8)
    for k in range(1, n - 1):
        mu += x >= values[k]
    mu[np.isnan(x)] = n - 1
    lo, hi = values[mu - 1], values[mu]
    with np.errstate(invalid="ignore", over="ignore"):
        pick_lo = (x - lo) < (hi - x)
    return np.where(pick_lo, mu - 1, mu).astype(np.uint8)


def _weights(x: np.ndarray, qw: np.ndarray | None, super_block_size: int) -> np.ndarray:
    """weight[j] per element, (nblocks_of_32, 32), for super-blocks x (nsuper, super_block_size).

    With an importance matrix: qw[j] * sqrtf(sigma2 + x[j]*x[j]), where
    sigma2 = (x[0]^2 + x[1]^2 + ... in order) * (2.f / super_block_size) over the super-block.
    Without one: x[j]*x[j]."""
    if qw is None:
        return (x * x).reshape(-1, 32)
    sigma2 = seq_sum(x * x, axis=1) * (F32(2) / F32(super_block_size))
    with np.errstate(over="ignore", invalid="ignore"):
        w = qw * np.sqrt(sigma2[:, None] + x * x)
    return w.reshape(-1, 32)


CHUNK_BLOCKS = 16384  # blocks searched at once: keeps the temporaries in cache (speed only)


def _block_scales(xb: np.ndarray, w: np.ndarray, ntry: int = NTRY) -> np.ndarray:
    """_block_scales_chunk over every block, CHUNK_BLOCKS at a time (blocks are independent)."""
    out = np.empty(xb.shape[0], dtype=F32)
    for s in range(0, xb.shape[0], CHUNK_BLOCKS):
        out[s:s + CHUNK_BLOCKS] = _block_scales_chunk(xb[s:s + CHUNK_BLOCKS], w[s:s + CHUNK_BLOCKS], ntry)
    return out


def _block_scales_chunk(xb: np.ndarray, w: np.ndarray, ntry: int) -> np.ndarray:
    """The scale search of quantize_row_iq4_nl_impl for blocks xb (nblocks, 32), weights w.

    1. amax, max: the first element of largest |x| (strict `ax > amax` scan from 0).
       amax < 1e-15: scale 0, nothing else happens for the block.
    2. d = -max / values[0] = -max / -127 (ntry > 0); codes from best_index_int8(x / d); least-squares
       d = sumqx / sumq2 (sums in element order, terms (w*q)*x and (w*q)*q); best = d*sumqx.
    3. For itry = -ntry .. ntry: inverse scale (itry - 127) / max, codes, sums; when
       sumq2 > 0 and sumqx^2 > best*sumq2 the candidate wins: d = sumqx/sumq2, best = d*sumqx.
    Returns the float32 scale of every block (unrounded)."""
    amax, vmax = c_max_abs(xb)
    skip = amax < GROUP_MAX_EPS
    vmax = np.where(skip, F32(1), vmax)  # the skipped blocks' values are discarded below
    v0 = _VALS[0]
    # position-major copies (32, nblocks): the sums over j run over contiguous rows
    xt = np.ascontiguousarray(xb.T)
    wt = np.ascontiguousarray(w.T)

    def sums(iscale):
        q = _VALS[best_index_int8(iscale[None, :] * xt)]   # float q = values[l]
        wq = wt * q
        return seq_sum(wq * xt, axis=0), seq_sum(wq * q, axis=0)  # sumqx += w*q*x; sumq2 += w*q*q

    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d = (-vmax / v0) if ntry > 0 else (vmax / v0)  # -max/values[0] : max/values[0]
        sumqx, sumq2 = sums(F32(1) / d)
        d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), F32(0)).astype(F32)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            iscale = F32(itry + int(KVALUES_IQ4NL[0])) / vmax  # (itry + values[0]) / max
            sumqx, sumq2 = sums(iscale)
            take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(take, sumqx / np.where(take, sumq2, F32(1)), d).astype(F32)
            best = np.where(take, d * sumqx, best)
    return np.where(skip, F32(0), d).astype(F32)


def _pack_codes(L: np.ndarray) -> np.ndarray:
    """codes (nblocks, 32k) -> qs (nblocks, 16k): q4[16i + j] = L[32i + j] | L[32i + 16 + j] << 4."""
    g = L.reshape(L.shape[0], -1, 2, 16)
    return pack_nibbles(g[:, :, 0], g[:, :, 1]).reshape(L.shape[0], -1)


def _unpack_codes(qs: np.ndarray) -> np.ndarray:
    g = qs.reshape(qs.shape[0], -1, 1, 16)
    return np.concatenate([g & 0x0F, g >> 4], axis=2).reshape(qs.shape[0], -1)


def _imatrix_rows(imatrix, nrows: int, n: int, block: int):
    if imatrix is None:
        return None
    im = np.asarray(imatrix, dtype=F32).reshape(1, n)
    return np.broadcast_to(im, (nrows, n)).reshape(-1, block)


# --------------------------------------------------------------------------- IQ4_NL

def quantize_iq4_nl(x, imatrix=None):
    """quantize_iq4_nl (ggml_quantize_chunk): per block of 32, the ntry=7 scale search, then
    dh = fp16(d) and codes best_index_int8(x * (1/d)) with the unrounded d (id = 0 when d = 0)."""
    nrows, n = x.shape
    xb = as_blocks(x, QK4_NL)
    qw = _imatrix_rows(imatrix, nrows, n, QK4_NL)
    d = _block_scales(xb, _weights(xb, qw, QK4_NL))
    idv = safe_reciprocal(d)
    with np.errstate(over="ignore", invalid="ignore"):
        L = best_index_int8(idv[:, None] * xb)
    return IQ4_NL.join(nrows, d=fp32_to_fp16_bits(d), qs=_pack_codes(L))


def dequantize_iq4_nl(data):
    f = IQ4_NL.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    with np.errstate(over="ignore", invalid="ignore"):
        y = d[:, None] * _VALS[_unpack_codes(f["qs"])]
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- IQ4_XS

def quantize_iq4_xs(x, imatrix=None):
    """quantize_iq4_xs (ggml_quantize_chunk): the ntry=7 search per sub-block of 32 (weights from
    the 256-value super-block), then one super-block scale:
      max_scale = the first sub-block scale of largest magnitude (0 if none);
      d = -max_scale / 32 (float32; an all-zero super-block gives -0, stored 0x8000);
      l = clamp(nearest_int(scale * (1/d)), -32, 31); dl = d * l;
      codes = best_index_int8(x * (1/dl)) (0 when dl = 0); store l + 32 in 6 bits."""
    nrows, n = x.shape
    xs = as_blocks(x, QK_K)
    qw = _imatrix_rows(imatrix, nrows, n, QK_K)
    xb = xs.reshape(-1, 32)
    scales = _block_scales(xb, _weights(xs, qw, QK_K)).reshape(-1, 8)
    # `if (fabsf(d) > amax_scale)` from 0: the first of the largest magnitudes; 0 when all are
    # 0, and a NaN scale (from inf sums on values near FLT_MAX) is never picked
    a = np.abs(scales)
    a = np.where(np.isnan(a), F32(-1), a)
    pick = np.argmax(a, axis=1)[:, None]
    max_scale = np.where(np.take_along_axis(a, pick, 1)[:, 0] > 0,
                         np.take_along_axis(scales, pick, 1)[:, 0], F32(0)).astype(F32)
    d = -max_scale / F32(32)
    idv = safe_reciprocal(d)
    with np.errstate(over="ignore", invalid="ignore"):
        l = np.clip(nearest_int(idv[:, None] * scales), -32, 31)
        dl = d[:, None] * l.astype(F32)
    idl = safe_reciprocal(dl).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        L = best_index_int8(idl[:, None] * xb).reshape(-1, QK_K)
    ls = (l + 32).astype(np.uint16)
    scales_l = pack_nibbles(ls[:, 0::2] & 0xF, ls[:, 1::2] & 0xF)
    scales_h = np.zeros(ls.shape[0], dtype=np.uint16)
    for ib in range(8):
        scales_h |= (ls[:, ib] >> 4) << (2 * ib)
    return IQ4_XS.join(nrows, d=fp32_to_fp16_bits(d), scales_h=scales_h.astype("<u2"), scales_l=scales_l, qs=_pack_codes(L))


def dequantize_iq4_xs(data):
    f = IQ4_XS.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    sh = u16(f["scales_h"]).astype(np.int32)
    sl = f["scales_l"].astype(np.int32)
    ib = np.arange(8)
    ls = ((sl[:, ib // 2] >> (4 * (ib % 2))) & 0xF) | (((sh[:, None] >> (2 * ib)) & 3) << 4)
    with np.errstate(over="ignore", invalid="ignore"):
        dl = d[:, None] * (ls - 32).astype(F32)                     # d * (ls - 32)
        y = dl[:, :, None] * _VALS[_unpack_codes(f["qs"])].reshape(-1, 8, 32)
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- vec_dot operands
#
# What ggml's CPU vec_dot reads (refquant.ggml.dot): the table values kvalues_iq4nl[code] as the
# integer codes, the fp16 d, and for IQ4_XS the 6-bit sub-block scales ls - 32 (per 16, each twice).

def vec_dot_iq4_nl(w):
    f = IQ4_NL.split(w)
    return {"q": KVALUES_IQ4NL.astype(np.int32)[_unpack_codes(f["qs"])], "d": fp16_bits_to_fp32(u16(f["d"]))}


def vec_dot_iq4_xs(w):
    f = IQ4_XS.split(w)
    sh = u16(f["scales_h"]).astype(np.int32)
    sl = f["scales_l"].astype(np.int32)
    ib = np.arange(8)
    ls = ((sl[:, ib // 2] >> (4 * (ib % 2))) & 0xF) | (((sh[:, None] >> (2 * ib)) & 3) << 4)
    return {"q": KVALUES_IQ4NL.astype(np.int32)[_unpack_codes(f["qs"])], "sc16": np.repeat(ls - 32, 2, axis=1),
            "d": fp16_bits_to_fp32(u16(f["d"]))}


RECORDS = [
    block_format(IQ4_NL, "ggml-iq", quantize_iq4_nl, dequantize_iq4_nl, IMATRIX_OPTIONAL, int(T.IQ4_NL),
                 "ggml/iq4_nl.md", VecDot("Q8_0", vec_dot_iq4_nl, "(dw * da) * sumi"),   # C: d * (sumi1 + sumi2)
                 file_type=25),                                     # LLAMA_FTYPE_MOSTLY_IQ4_NL
    block_format(IQ4_XS, "ggml-iq", quantize_iq4_xs, dequantize_iq4_xs, IMATRIX_OPTIONAL, int(T.IQ4_XS),
                 "ggml/iq4_xs.md", VecDot("Q8_K", vec_dot_iq4_xs, "per 32: (d * (ls - 32)) * sumi"),
                 file_type=30, fallback="IQ4_NL"),                  # LLAMA_FTYPE_MOSTLY_IQ4_XS
]
