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


def pack(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int = 4) -> dict:
    """codes uint8 (N, K), scales (N, G), zeros (N, G) -> the GEMM tensors."""
    if bits != 4:
        raise FormatError(f"awq.pack: AWQ GEMM checkpoints hold 4-bit codes, not {bits!r}")
    codes = np.asarray(codes)
    N, K = codes.shape
    if N % 8:
        raise InputError(f"awq.pack: out features ({N}) must be a multiple of 8")
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


def quantization_config(group_size: int, zero_point: bool = True) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": zero_point,
            "version": "gemm"}
