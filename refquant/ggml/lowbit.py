"""ggml's ternary, 1-bit and 2-bit types: TQ1_0, TQ2_0 (BitNet b1.58 / TriLM), Q1_0 and Q2_0
(ggml-quants.c).

None of them uses an importance matrix: `ggml_quantize_chunk` runs the reference quantizer
(`quantize_row_*_ref`) whether one is given or not (Q1_0 with one calls it row by row: the same
bytes). None needs `ggml_quantize_init`.

    TQ1_0  (256 values, 54 bytes)   | qs[48] | qh[4] | d: f16 |
      trits t in {0,1,2} stand for -1, 0, +1; value = (t - 1) * d.
      qs[m],      m < 32: elements m + 32n,        n = 0..4, n = 0 the most significant trit
      qs[32 + m], m < 16: elements 160 + m + 16n,  n = 0..4
      qh[j],      j < 4:  elements 240 + j + 4n,   n = 0..3, then a 0 trit in last place
      a byte holds t0*81 + t1*27 + t2*9 + t3*3 + t4 (< 243) stored as ceil(that * 256 / 243):
      a fixed-point fraction whose digits in base 3 come out as (byte * 3^n mod 256) * 3 >> 8.

    TQ2_0  (256 values, 66 bytes)   | qs[64] | d: f16 |
      qs[32h + m] bits 2n..2n+1 = t of element 128h + m + 32n; value = (t - 1) * d.

    Q1_0   (128 values, 18 bytes)   | d: f16 | qs[16] |
      bit j (qs[j/8] >> j%8) set: element j is +d, clear: -d.

    Q2_0   (64 values, 18 bytes)    | d: f16 | qs[16] |
      bits 2(j%4)..2(j%4)+1 of qs[j/4] = code q of element j; value = (q - 1) * d, q - 1 in {-1, 0, 1, 2}.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import F32, c_float_to_int32, fp16_bits_to_fp32, fp32_to_fp16_bits, roundf, safe_reciprocal, seq_sum
from ..format import IMATRIX_NONE, VecDot, block_format
from .blocks import as_blocks, u16
from .layout import Field, Layout

T = gguf.GGMLQuantizationType

QK_K = 256
QK1_0 = 128
QK2_0 = 64

LAYOUTS = {L.name: L for L in [
    Layout("TQ1_0", QK_K, [Field("qs", "u8", 48, "5 trits a byte: m < 32 elements m + 32n, then 160 + m + 16n"),
                           Field("qh", "u8", 4, "4 trits a byte: elements 240 + j + 4n"),
                           Field("d", "f16", 1, "scale")]),
    Layout("TQ2_0", QK_K, [Field("qs", "u8", 64, "2-bit trits: byte 32h + m, bits 2n: element 128h + 32n + m"),
                           Field("d", "f16", 1, "scale")]),
    Layout("Q1_0", QK1_0, [Field("d", "f16", 1, "scale"),
                           Field("qs", "u8", 16, "bit j % 8 of byte j / 8: element j is +d (set) or -d")]),
    Layout("Q2_0", QK2_0, [Field("d", "f16", 1, "scale: the block's largest magnitude"),
                           Field("qs", "u8", 16, "2-bit codes: bits 2(j % 4) of byte j / 4, element j is (q - 1) * d")]),
]}
TQ1_0, TQ2_0, Q1_0, Q2_0 = LAYOUTS["TQ1_0"], LAYOUTS["TQ2_0"], LAYOUTS["Q1_0"], LAYOUTS["Q2_0"]


def _lroundf_int(x: np.ndarray) -> np.ndarray:
    """`int xi = lroundf(x)` on x86-64 glibc: roundf (half away from zero) then a conversion to a
    64-bit long; NaN and out-of-range values give LONG_MIN, whose low 32 bits (the `int`) are 0."""
    r = roundf(x)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(r) & (np.abs(r) < F32(2.0**63))
        v = np.where(ok, r, F32(0)).astype(np.int64)
    return v.astype(np.int32)  # keeps the low 32 bits, as the long -> int conversion does


def _ternary_scale(x):
    """d = amax over the block (`amax = MAX(amax, fabsf(v))` from 0), id = d ? 1/d : 0.
    Returns (d, trits t = lroundf(x * id) + 1 as int32)."""
    xb = as_blocks(x, QK_K)
    amax = np.max(np.abs(xb), axis=1)
    idv = safe_reciprocal(amax)
    with np.errstate(over="ignore", invalid="ignore"):
        t = _lroundf_int(xb * idv[:, None]) + 1
    return amax, t


def _pack_base3(trits: list[np.ndarray]) -> np.ndarray:
    """q = 0; for t in trits: q = q*3 + t (uint8 arithmetic); then (uint16)q * 256 + 242) / 243
    stored in a byte."""
    q = np.zeros_like(trits[0], dtype=np.int32)
    for t in trits:
        q = (q * 3 + t) & 0xFF
    return (((q * 256) + 242) // 243).astype(np.uint8)


def _unpack_base3(b: np.ndarray, n: int) -> list[np.ndarray]:
    """The n-th trit of each byte: q = b * 3^n (mod 256), trit = (q * 3) >> 8."""
    b = b.astype(np.int32)
    return [(((b * 3 ** k) & 0xFF) * 3) >> 8 for k in range(n)]


# (float)(trit - 1) for the 5 trits of every byte value, by the rule above: decoding is a lookup
_TRITS_F32 = np.stack(_unpack_base3(np.arange(256), 5), axis=1).astype(F32) - F32(1)   # (256, 5)
# (float)(q - 1) for the four 2-bit fields of every byte value, field n = (b >> 2n) & 3
_PAIRS_F32 = ((np.arange(256)[:, None] >> (2 * np.arange(4))) & 3).astype(F32) - F32(1)  # (256, 4)


# --------------------------------------------------------------------------- TQ1_0

def quantize_tq1_0(x, imatrix=None):
    nrows = x.shape[0]
    d, t = _ternary_scale(x)
    head = t[:, :160].reshape(-1, 5, 32)          # element m + 32n
    mid = t[:, 160:240].reshape(-1, 5, 16)        # element 160 + m + 16n
    tail = t[:, 240:].reshape(-1, 4, 4)           # element 240 + j + 4n
    qs = np.concatenate([_pack_base3([head[:, k] for k in range(5)]),
                         _pack_base3([mid[:, k] for k in range(5)])], axis=1)
    qh = _pack_base3([tail[:, k] for k in range(4)] + [np.zeros_like(tail[:, 0])])  # `q *= 3`
    return TQ1_0.join(nrows, qs=qs, qh=qh, d=fp32_to_fp16_bits(d))


def dequantize_tq1_0(data):
    f = TQ1_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    head = _TRITS_F32[f["qs"][:, :32]].transpose(0, 2, 1).reshape(-1, 160)   # [n, m] -> m + 32n
    mid = _TRITS_F32[f["qs"][:, 32:]].transpose(0, 2, 1).reshape(-1, 80)     # 160 + m + 16n
    tail = _TRITS_F32[f["qh"]][:, :, :4].transpose(0, 2, 1).reshape(-1, 16)  # 240 + j + 4n
    t = np.concatenate([head, mid, tail], axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        y = t * d[:, None]                                          # (float)(xi - 1) * d
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- TQ2_0

def quantize_tq2_0(x, imatrix=None):
    nrows = x.shape[0]
    d, t = _ternary_scale(x)
    g = (t & 3).reshape(-1, 2, 4, 32)              # [half h, shift n, m]: element 128h + 32n + m
    qs = np.zeros((g.shape[0], 2, 32), dtype=np.int32)
    for k in range(4):
        qs += g[:, :, k] << (2 * k)
    return TQ2_0.join(nrows, qs=(qs & 0xFF).astype(np.uint8).reshape(-1, 64), d=fp32_to_fp16_bits(d))


def dequantize_tq2_0(data):
    f = TQ2_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    t = _PAIRS_F32[f["qs"].reshape(-1, 2, 32)].transpose(0, 1, 3, 2)  # [h, n, m]: 128h + 32n + m
    with np.errstate(over="ignore", invalid="ignore"):
        y = t.reshape(-1, QK_K) * d[:, None]                       # (float)(q - 1) * d
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q1_0

def quantize_q1_0(x, imatrix=None):
    """quantize_row_q1_0_ref: d = (|x0| + |x1| + ... in order) / 128; bit j = (x[j] >= 0),
    so -0 is stored as +d."""
    nrows = x.shape[0]
    xb = as_blocks(x, QK1_0)
    d = seq_sum(np.abs(xb)) / F32(QK1_0)
    qs = np.packbits(xb >= 0, axis=1, bitorder="little")   # qs[j/8] |= 1 << j%8
    return Q1_0.join(nrows, d=fp32_to_fp16_bits(d), qs=qs)


def dequantize_q1_0(data):
    f = Q1_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    bits = np.unpackbits(f["qs"], axis=1, bitorder="little")  # bit j%8 of qs[j/8]
    y = np.where(bits == 1, d[:, None], -d[:, None]).astype(F32)
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- Q2_0

def quantize_q2_0(x, imatrix=None):
    """quantize_row_q2_0_ref (quantize_q2_0 with an importance matrix runs it row by row: the
    same bytes): d = the block's largest |x| (`if (a > amax) amax = a` from 0, so NaN never wins),
    q = clamp((int)roundf(x * id) + 1, 0, 3) with id = d > 0 ? 1/d : 0."""
    nrows = x.shape[0]
    xb = as_blocks(x, QK2_0)
    a = np.abs(xb)
    d = np.max(np.where(a > 0, a, F32(0)), axis=1)                  # if (a > amax) amax = a;
    idv = np.where(d > 0, F32(1) / np.where(d > 0, d, F32(1)), F32(0)).astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        q = c_float_to_int32(roundf(xb * idv[:, None])).astype(np.int64) + 1   # (int)roundf(w * id) + 1
    q = np.clip(q, 0, 3).astype(np.uint8)                            # if (q < 0) q = 0; if (q > 3) q = 3;
    qs = np.bitwise_or.reduce(q.reshape(-1, 16, 4) << (2 * np.arange(4, dtype=np.uint8)), axis=2)
    return Q2_0.join(nrows, d=fp32_to_fp16_bits(d), qs=qs.astype(np.uint8))   # qs[j/4] |= q << 2*(j%4)


def _q2_0_codes(qs):
    """qs (nblocks, 16) -> (nblocks, 64) codes 0..3: element j from bits 2(j%4) of byte j/4."""
    return ((qs[:, :, None] >> (2 * np.arange(4, dtype=np.uint8))) & 3).reshape(qs.shape[0], -1)


def dequantize_q2_0(data):
    f = Q2_0.split(data)
    d = fp16_bits_to_fp32(u16(f["d"]))
    with np.errstate(over="ignore", invalid="ignore"):
        y = (_q2_0_codes(f["qs"]).astype(np.int32) - 1).astype(F32) * d[:, None]   # ((int)q - 1) * d
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- vec_dot operands
#
# What ggml's CPU vec_dot reads (refquant.ggml.dot): the trits t - 1 (TQ1_0, TQ2_0: against Q8_K,
# every sub-block scale 1; AVX2 multiplies the unsigned t, hence simd_offset) and Q1_0's signs
# +1 / -1 (against the four Q8_0 blocks of its 128 values).

def vec_dot_tq1_0(w):
    f = TQ1_0.split(w)
    trits = _TRITS_F32.astype(np.int32)                                     # base-3 digits, (xi - 1)
    q = np.concatenate([trits[f["qs"][:, :32]].transpose(0, 2, 1).reshape(-1, 160),
                        trits[f["qs"][:, 32:]].transpose(0, 2, 1).reshape(-1, 80),
                        trits[f["qh"]][:, :, :4].transpose(0, 2, 1).reshape(-1, 16)], axis=1)
    return {"q": q, "sc16": np.ones((q.shape[0], 16), np.int32), "d": fp16_bits_to_fp32(u16(f["d"])),
            "simd_offset": 1}


def vec_dot_tq2_0(w):
    f = TQ2_0.split(w)
    q = _PAIRS_F32[f["qs"].reshape(-1, 2, 32)].transpose(0, 1, 3, 2).reshape(-1, QK_K).astype(np.int32)  # q - 1
    return {"q": q, "sc16": np.ones((q.shape[0], 16), np.int32), "d": fp16_bits_to_fp32(u16(f["d"])),
            "simd_offset": 1}


def vec_dot_q2_0(w):
    """Q2_0 against the two Q8_0 blocks of its 64 values: codes q - 1 (`((byte >> 2n) & 3) - 1`)."""
    f = Q2_0.split(w)
    return {"q": _q2_0_codes(f["qs"]).astype(np.int32) - 1, "d": fp16_bits_to_fp32(u16(f["d"]))[:, None]}


def vec_dot_q1_0(w):
    f = Q1_0.split(w)
    bits = np.unpackbits(f["qs"], axis=1, bitorder="little").astype(np.int32)     # element e: bit e
    return {"q": 2 * bits - 1, "d": fp16_bits_to_fp32(u16(f["d"]))[:, None]}


VEC_DOT = {
    "TQ1_0": VecDot("Q8_K", vec_dot_tq1_0, "ternary: f(sumi) * d"),
    "TQ2_0": VecDot("Q8_K", vec_dot_tq2_0, "ternary: f(sumi) * d"),
    "Q1_0": VecDot("Q8_0", vec_dot_q1_0, "per 32 chained: d * (sumi_f + f(sumi) * d_y)"),
    # ggml_vec_dot_q2_0_q8_0: x86 has no SIMD kernel, the generic one runs (separate mul and add)
    "Q2_0": VecDot("Q8_0", vec_dot_q2_0, "per 32 chained: d * (sumi_f + f(sumi) * d_y)"),
}


# ggml type ids (Q2_0's 42 is newer than gguf-py 0.19's table), llama.cpp's LLAMA_FTYPE_MOSTLY_* of
# a file of each type, and llama-quant.cpp's fallback and token_embd types for them
RECORDS = [block_format(LAYOUTS[name], "ggml-lowbit", q, dq, IMATRIX_NONE, ggml_type, f"ggml/{name.lower()}.md",
                        vec_dot=VEC_DOT[name], file_type=ftype, fallback=fb, token_embd=embd)
           for name, q, dq, ggml_type, ftype, fb, embd in [
               ("TQ1_0", quantize_tq1_0, dequantize_tq1_0, int(T.TQ1_0), 36, "Q4_0", "Q4_K"),
               ("TQ2_0", quantize_tq2_0, dequantize_tq2_0, int(T.TQ2_0), 37, "Q4_0", "Q4_K"),
               ("Q1_0", quantize_q1_0, dequantize_q1_0, int(T.Q1_0), 40, None, None),
               ("Q2_0", quantize_q2_0, dequantize_q2_0, 42, 41, "Q4_0", "Q4_K")]]
