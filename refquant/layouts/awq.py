"""AWQ checkpoints (AutoAWQ's GEMM layout, transformers' "awq" quant_method), per linear `<p>`:

    <p>.qweight  int32 (K, N/8)   4-bit codes packed along N (the output axis)
    <p>.qzeros   int32 (G, N/8)   zero points packed the same way (no minus one)
    <p>.scales   float16 (G, N)

    One int32 word j of a row holds columns 8j..8j+7 in the nibble order 0,2,4,6,1,3,5,7:
        bits  31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
        col   8j+7   8j+5   8j+3   8j+1   8j+6   8j+4   8j+2   8j+0

A loader computes W[k, n] = (code − zero) · scale (AutoAWQ's dequantize_gemm; float16).
See spec/layouts/awq.md.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError, InputError
from ..packing import pack_bits, unpack_bits

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)   # nibble i of a word holds column AWQ_ORDER[i] of its 8


def _interleave(a):
    """(R, N) -> columns reordered so that plain nibble packing gives AWQ's order."""
    R, N = a.shape
    return a.reshape(R, N // 8, 8)[:, :, list(AWQ_ORDER)].reshape(R, N)


def _deinterleave(a):
    R, N = a.shape
    inv = np.argsort(AWQ_ORDER)
    return a.reshape(R, N // 8, 8)[:, :, inv].reshape(R, N)


def _check_out(N):
    if N % 8:
        raise InputError(f"awq.pack: out features ({N}) must be a multiple of 8")


def pack_specs(N: int, K: int, G: int) -> dict:
    """The (dtype, shape) of each tensor `pack` writes for a layer of N outputs, K inputs and G
    groups, from the layout's table above (nothing packed): 8 columns a word."""
    _check_out(N)
    return {"qweight": (np.dtype(np.int32), (K, N // 8)), "qzeros": (np.dtype(np.int32), (G, N // 8)),
            "scales": (np.dtype(np.float16), (G, N))}


def pack(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int = 4) -> dict:
    """codes uint8 (N, K), scales (N, G), zeros (N, G) -> the GEMM tensors."""
    if bits != 4:
        raise FormatError(f"awq.pack: AWQ GEMM checkpoints hold 4-bit codes, not {bits!r}")
    codes = np.asarray(codes)
    N, K = codes.shape
    _check_out(N)
    z = np.rint(np.asarray(zeros, np.float64)).astype(np.int64)
    if z.min() < 0 or z.max() > 15:
        raise InputError("awq.pack: zero points must lie in [0, 15]")
    return {"qweight": pack_bits(_interleave(codes.T), 4, axis=1),
            "qzeros": pack_bits(_interleave(z.T.astype(np.uint8)), 4, axis=1),
            "scales": np.asarray(scales, np.float32).T.astype(np.float16)}


def unpack(t: dict):
    G, N = t["scales"].shape
    codes = _deinterleave(unpack_bits(t["qweight"], 4, N, axis=1))
    z = _deinterleave(unpack_bits(t["qzeros"], 4, N, axis=1))
    return codes.T, t["scales"].T, z.T


def dequantize(t: dict) -> np.ndarray:
    """W (K, N) float16 as AutoAWQ's dequantize_gemm returns it (transposed from torch's layout)."""
    codes, scales, z = unpack(t)
    K = codes.shape[1]
    g = K // scales.shape[1]
    d = codes.astype(np.int32) - np.repeat(z, g, axis=1).astype(np.int32)
    # torch: (int - int) * float16 -> float16, computed in float32 and rounded once
    return (d.astype(np.float32) * np.repeat(scales, g, axis=1).astype(np.float32)).astype(np.float16).T


def quantization_config(group_size: int, zero_point: bool = True, version: str = "gemm") -> dict:
    if version not in ("gemm", "gemv"):
        raise InputError(f"awq: version must be 'gemm' or 'gemv', got {version!r}")
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": zero_point,
            "version": version}


# ---- GEMV layout (AutoAWQ's WQLinear_GEMV, version "gemv") --------------------------------------
#
#   <p>.qweight  int32   (N, K/8)       codes packed along K (the input axis), natural nibble order:
#                                       word j of row n holds k = 8j+i in bits 4i..4i+3
#   <p>.qzeros   int32   (N, Z)         zero points, packed the same way; nibbles past G are 0
#   <p>.scales   float16 (N, 8·Z)       columns past G are 0
#
#   Z = zeros_width(K, g): ceil(G/8) rounded up to a multiple of m, m = 1 (g >= 128), 2 (g = 64),
#   4 (g = 32); AutoAWQ has no rule (NotImplementedError) for any other group size.


def zeros_width(K: int, g: int) -> int:
    """Words per row of a GEMV qzeros (AutoAWQ's calculate_zeros_width)."""
    if g >= 128:
        m = 1
    elif g in (64, 32):
        m = 128 // g
    else:
        raise FormatError(f"awq gemv: group size {g} has no padding rule (32, 64 or >= 128)")
    G = K // g
    base = -(-G // 8)
    return -(-base // m) * m


def _gemv_groups(N, K, group_size):
    """(G, Z): the groups and the qzeros words of a row, the dimensions checked."""
    g = K if group_size == -1 else group_size
    if K % 8 or N % 8:
        raise InputError(f"awq.pack_gemv: in features ({K}) and out features ({N}) must be multiples of 8")
    if K % g:
        raise InputError(f"awq.pack_gemv: in features ({K}) must be a multiple of the group size ({g})")
    return K // g, zeros_width(K, g)


def pack_gemv_specs(N: int, K: int, group_size: int) -> dict:
    """The (dtype, shape) of each tensor `pack_gemv` writes for a layer of N outputs and K inputs,
    from the GEMV table above (nothing packed): K/8 words a row, Z words of zeros and 8·Z
    scales a row (zeros_width)."""
    _, Z = _gemv_groups(N, K, group_size)
    return {"qweight": (np.dtype(np.int32), (N, K // 8)), "qzeros": (np.dtype(np.int32), (N, Z)),
            "scales": (np.dtype(np.float16), (N, 8 * Z))}


def pack_gemv(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_size: int, bits: int = 4) -> dict:
    """codes uint8 (N, K), scales (N, G), zeros (N, G) -> the GEMV tensors."""
    if bits != 4:
        raise FormatError(f"awq.pack_gemv: AWQ GEMV checkpoints hold 4-bit codes, not {bits!r}")
    codes = np.asarray(codes)
    N, K = codes.shape
    G, Z = _gemv_groups(N, K, group_size)
    scales = np.asarray(scales, np.float32)
    z = np.rint(np.asarray(zeros, np.float64)).astype(np.int64)
    if scales.shape != (N, G) or z.shape != (N, G):
        raise InputError(f"awq.pack_gemv: scales and zeros must be {(N, G)}, got {scales.shape}, {z.shape}")
    if z.min() < 0 or z.max() > 15:
        raise InputError("awq.pack_gemv: zero points must lie in [0, 15]")
    zp = np.zeros((N, 8 * Z), np.uint8)
    zp[:, :G] = z
    sp = np.zeros((N, 8 * Z), np.float16)
    sp[:, :G] = scales.astype(np.float16)
    return {"qweight": pack_bits(codes, 4, axis=1), "qzeros": pack_bits(zp, 4, axis=1), "scales": sp}


def unpack_gemv(t: dict, group_size: int):
    """-> codes (N, K), scales (N, G) float16, zeros (N, G): the padding dropped."""
    N, W = t["qweight"].shape
    K = 8 * W
    g = K if group_size == -1 else group_size
    if K % g:
        raise FormatError(f"awq.unpack_gemv: {K} inputs are not a multiple of the group size {g}")
    G = K // g
    Z = zeros_width(K, g)
    if t["qzeros"].shape != (N, Z) or t["scales"].shape != (N, 8 * Z):
        raise FormatError(f"awq.unpack_gemv: qzeros {t['qzeros'].shape} / scales {t['scales'].shape} "
                          f"are not {(N, Z)} / {(N, 8 * Z)}")
    codes = unpack_bits(t["qweight"], 4, K, axis=1)
    z = unpack_bits(t["qzeros"], 4, 8 * Z, axis=1)[:, :G]
    return codes, t["scales"][:, :G], z


def dequantize_gemv(t: dict, group_size: int) -> np.ndarray:
    """W (N, K) float16: (code − zero) · scale, the float32 product rounded once (as the GEMM path)."""
    codes, scales, z = unpack_gemv(t, group_size)
    g = codes.shape[1] // scales.shape[1]
    d = codes.astype(np.int32) - np.repeat(z, g, axis=1).astype(np.int32)
    return (d.astype(np.float32) * np.repeat(scales, g, axis=1).astype(np.float32)).astype(np.float16)
