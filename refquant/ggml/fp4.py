"""ggml's FP4 (E2M1) block types: MXFP4 and NVFP4 in ggml's own layouts and rounding (ggml-quants.c).

Codes index `kvalues_mxfp4`, the E2M1 values doubled so they are integers:

    code   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
    value  0  1  2  3  4  6  8 12  0 -1 -2 -3 -4 -6 -8 -12     (= 2 * E2M1)

and every scale is stored as half its true value (`ggml_e8m0_to_fp32_half`, `ggml_ue4m3_to_fp32`),
so a decoded element is kvalues_mxfp4[code] * scale_half = E2M1 * scale.

    MXFP4  (32 values, 17 bytes)   | e: E8M0 | qs[16] |
      qs[j] low nibble = code of element j, high nibble = code of element j + 16.
      scale_half = 2^(e - 128) (e < 2: the float32 subnormals 2^-128, 2^-127).

    NVFP4  (64 values, 36 bytes)   | d[4]: UE4M3 | qs[32] |
      four sub-blocks of 16, sub-block s scaled by d[s]; qs[8s + j] low nibble = code of
      element 16s + j, high nibble = code of element 16s + 8 + j. No per-tensor scale.

Quantizing (neither type uses an importance matrix: `ggml_quantize_chunk` runs
`quantize_row_*_ref` and ignores one; no `ggml_quantize_init` is needed):
each element takes the code whose kvalues_mxfp4[code] * scale_half is nearest to it, |error|
in float32, scanning codes 0..15 and keeping the first strict minimum: ties go to the lower
code, i.e. to the smaller magnitude (and 0 to code 0, +0). OCP MX and NVIDIA's NVFP4 round to
nearest even instead; these are ggml's variants.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import F32, c_float_to_int32, c_float_to_uint8, c_max_abs
from ..format import IMATRIX_NONE, VecDot, block_format
from .blocks import as_blocks, pack_nibbles
from .layout import Field, Layout

T = gguf.GGMLQuantizationType

QK_MXFP4 = 32
QK_NVFP4 = 64
QK_NVFP4_SUB = 16

LAYOUTS = {L.name: L for L in [
    Layout("MXFP4", QK_MXFP4, [Field("e", "e8m0", 1, "shared scale 2^(e - 127)"),
                               Field("qs", "u8", 16, "codes: low nibble element j, high nibble element j + 16")]),
    Layout("NVFP4", QK_NVFP4, [Field("d", "ue4m3", 4, "scale of sub-block s (elements 16s ..)"),
                               Field("qs", "u8", 32, "codes: byte 8s + j, low nibble element 16s + j, "
                                                     "high nibble 16s + 8 + j")]),
]}
MXFP4, NVFP4 = LAYOUTS["MXFP4"], LAYOUTS["NVFP4"]

KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
_KV = KVALUES_MXFP4.astype(F32)


CHUNK_BLOCKS = 16384  # blocks searched at once: keeps the temporaries in cache (speed only)


def best_index_mxfp4(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """For blocks x (nblocks, n) and scale_half d (nblocks,): the first code i minimising
    fabsf(kvalues_mxfp4[i] * d - x) (float32), as ggml's best_index_mxfp4 scan does."""
    x = np.asarray(x, dtype=F32)
    d = np.asarray(d, dtype=F32)
    out = np.empty(x.shape, dtype=np.uint8)
    for s in range(0, x.shape[0], CHUNK_BLOCKS):
        out[s:s + CHUNK_BLOCKS] = _best_index_mxfp4_chunk(x[s:s + CHUNK_BLOCKS], d[s:s + CHUNK_BLOCKS, None])
    return out


def _best_index_mxfp4_chunk(x, d):
    with np.errstate(over="ignore", invalid="ignore"):
        best_err = np.abs(_KV[0] * d - x)
        best = np.zeros(x.shape, dtype=np.uint8)
        for i in range(1, 16):
            err = np.abs(_KV[i] * d - x)
            better = err < best_err
            best = np.where(better, np.uint8(i), best)
            best_err = np.where(better, err, best_err)
    return best


def _pack_halves(codes: np.ndarray, half: int) -> np.ndarray:
    """codes (..., 2*half) -> bytes (..., half): element j low nibble, element j + half high."""
    return pack_nibbles(codes[..., :half], codes[..., half:])


def _unpack_halves(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


# --------------------------------------------------------------------------- E8M0 and UE4M3 scales

def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e - 128) as float32 bits; e < 2 gives the subnormals
    0x00200000 << e. (e = 255 is 2^127, not NaN: ggml does not handle NaN here.)"""
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(F32)


def mxfp4_shared_exponent(amax: np.ndarray) -> np.ndarray:
    """e = amax > 0 ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0, the float -> uint8 conversion
    as x86-64 does it (amax below 2^-125 gives a negative float whose low byte is kept)."""
    amax = np.asarray(amax, dtype=F32)
    pos = amax > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.floor(np.log2(np.where(pos, amax, F32(1)))) - F32(2) + F32(127)
    return np.where(pos, c_float_to_uint8(f), np.uint8(0)).astype(np.uint8)


def ue4m3_to_fp32_half(u: np.ndarray) -> np.ndarray:
    """ggml_ue4m3_to_fp32: half the UE4M3 value. 0 and 0x7F decode to 0; bit 7 is ignored;
    exponent field 0: man * 2^-9; otherwise (1 + man/8) * 2^(exp - 7); then * 0.5."""
    u = np.asarray(u, dtype=np.uint8).astype(np.int32)
    exp = (u >> 3) & 0xF
    man = (u & 7).astype(F32)
    raw = np.where(exp == 0, np.ldexp(man, -9), np.ldexp(F32(1) + man / F32(8), exp - 7)).astype(F32)
    raw = np.where((u == 0) | (u == 0x7F), F32(0), raw)
    return (raw * F32(0.5)).astype(F32)


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """ggml_fp32_to_ue4m3, exactly:
    - not (x > 0): 0;  x > 448: x = 448.
    - biased exponent e = fp32 exponent + 7 <= 0 (x < 2^-6): man = (int)(x * 512 + 0.5f) (half
      up), capped at 7 (so values from 7.5 * 2^-9 stay at 7 * 2^-9, never reaching 2^-6),
      below 1: 0; the code is man.
    - e >= 15 (x >= 256): 0x7E (448).
    - otherwise the top 3 mantissa bits plus the next bit (round half up on the bits, ties away
      from zero); a carry to 8 bumps the exponent, and a bump to 15 gives 0x7E.
    So every value from 248 up (the carry out of 1.875 * 2^7, and all of [256, 448]) is coded
    0x7E = 448: ggml never produces the codes 0x78..0x7D (256..416)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore"):
        pos = x > 0
    x = np.where(pos, np.minimum(x, F32(448)), F32(1)).astype(F32)
    bits = x.view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.int32) - 127 + 7
    man = ((bits >> 20) & 7).astype(np.int32)
    rnd = ((bits >> 19) & 1).astype(np.int32)
    # subnormal branch
    with np.errstate(over="ignore", invalid="ignore"):
        sman = np.minimum(c_float_to_int32(x * F32(512) + F32(0.5)), 7)
    sub_code = np.where(sman < 1, 0, sman)
    # normal branch
    m = man + rnd
    carry = m > 7
    e2 = np.where(carry, exp + 1, exp)
    m = np.where(carry, 0, m)
    norm_code = np.where(e2 >= 15, 0x7E, (e2 << 3) | m)
    code = np.where(exp <= 0, sub_code, np.where(exp >= 15, 0x7E, norm_code))
    return np.where(pos, code, 0).astype(np.uint8)


# --------------------------------------------------------------------------- MXFP4

def quantize_mxfp4(x, imatrix=None):
    """quantize_row_mxfp4_ref: amax (strict `amax < fabsf(v)` scan), e = shared exponent,
    scale_half = e8m0_to_fp32_half(e), codes by best_index_mxfp4."""
    nrows = x.shape[0]
    xb = as_blocks(x, QK_MXFP4)
    amax, _ = c_max_abs(xb)
    e = mxfp4_shared_exponent(amax)
    codes = best_index_mxfp4(xb, e8m0_to_fp32_half(e))
    return MXFP4.join(nrows, e=e, qs=_pack_halves(codes, QK_MXFP4 // 2))


def dequantize_mxfp4(data):
    f = MXFP4.split(data)
    d = e8m0_to_fp32_half(f["e"][:, 0])
    with np.errstate(over="ignore", invalid="ignore"):
        y = _KV[_unpack_halves(f["qs"])] * d[:, None]   # x0 * d
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- NVFP4

def quantize_nvfp4(x, imatrix=None):
    """quantize_row_nvfp4_ref: per sub-block of 16, amax (strict scan), ue = fp32_to_ue4m3(amax / 6),
    scale_half = ue4m3_to_fp32_half(ue), codes by best_index_mxfp4."""
    nrows = x.shape[0]
    xs = as_blocks(x, QK_NVFP4_SUB)
    amax, _ = c_max_abs(xs)
    ue = fp32_to_ue4m3(amax / F32(6))
    codes = best_index_mxfp4(xs, ue4m3_to_fp32_half(ue))
    qs = _pack_halves(codes, QK_NVFP4_SUB // 2).reshape(-1, 32)
    return NVFP4.join(nrows, d=ue.reshape(-1, 4), qs=qs)


def dequantize_nvfp4(data):
    f = NVFP4.split(data)
    d = ue4m3_to_fp32_half(f["d"]).reshape(-1)
    codes = _unpack_halves(f["qs"].reshape(-1, 8))
    y = _KV[codes] * d[:, None]                         # v0 * d
    return y.reshape(data.shape[0], -1)


# --------------------------------------------------------------------------- vec_dot operands
#
# What ggml's CPU vec_dot reads (refquant.ggml.dot): kvalues_mxfp4[code] as the integer codes and
# the scales as stored halves (2^(e-128) for MXFP4; UE4M3 / 2 per sub-block of 16 for NVFP4).

def vec_dot_mxfp4(w):
    f = MXFP4.split(w)
    return {"q": KVALUES_MXFP4.astype(np.int32)[_unpack_halves(f["qs"])], "d": e8m0_to_fp32_half(f["e"][:, 0])}


def vec_dot_nvfp4(w):
    f = NVFP4.split(w)
    qs = f["qs"].reshape(-1, 4, 8)                   # sub-block s: qs[8s + j]
    q = KVALUES_MXFP4.astype(np.int32)[np.concatenate([qs & 0x0F, qs >> 4], axis=2)]
    return {"q": q.reshape(-1, QK_NVFP4), "d": ue4m3_to_fp32_half(f["d"])}


RECORDS = [
    block_format(MXFP4, "ggml-fp4", quantize_mxfp4, dequantize_mxfp4, IMATRIX_NONE, int(T.MXFP4), "ggml/mxfp4.md",
                 VecDot("Q8_0", vec_dot_mxfp4, "(dw * da) * sumi")),
    block_format(NVFP4, "ggml-fp4", quantize_nvfp4, dequantize_nvfp4, IMATRIX_NONE, int(T.NVFP4), "ggml/nvfp4.md",
                 VecDot("Q8_0", vec_dot_nvfp4, "per 16: sumi * (d_y * d)")),
]
