"""compressed-tensors checkpoints (llm-compressor's output, vLLM's and transformers' "compressed-
tensors" quant_method), per linear `<p>`, by format:

  pack-quantized (INT2..8, weights only):
    <p>.weight_packed      int32 (N, ceil(K·b/32))   code + 2^(b−1), dense bit stream along K
                                                      (refquant.packing: code i at stream bit i·b)
    <p>.weight_scale       dense dtype (N, G)          G = K/g (group), 1 (channel)
    <p>.weight_zero_point  int32 (ceil(N·b/32), G)     asymmetric only: zero + 2^(b−1) packed
                                                       along N (dim 0)
    <p>.weight_shape       int64 (2,)                  [N, K]
  int-quantized (INT8 W8A8):
    <p>.weight int8 (N, K), <p>.weight_scale (N, 1) float, <p>.weight_zero_point int8 when asymmetric
  float-quantized (FP8 W8A8):
    <p>.weight float8_e4m3fn (N, K), <p>.weight_scale float32 (N, 1) or (1,) per tensor
  nvfp4-pack-quantized:
    <p>.weight_packed uint8 (N, K/2)  two E2M1 codes a byte, element 2i in the low nibble
    <p>.weight_scale float8_e4m3fn (N, K/16), <p>.weight_global_scale float32 (1,) = 448·6/amax
  mxfp4-pack-quantized:
    <p>.weight_packed uint8 (N, K/2) as nvfp4, <p>.weight_scale uint8 (N, K/32) E8M0 exponents

Codes and scales come from refquant.affine ("compressed-tensors" convention), refquant.fp8_scaling
and refquant.mx; this module only names, packs and describes them. See
spec/layouts/compressed-tensors.md.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .. import affine
from ..errors import FormatError, InputError
from ..packing import pack_bits, unpack_bits

FORMATS = ("pack-quantized", "int-quantized", "float-quantized", "nvfp4-pack-quantized", "mxfp4-pack-quantized")


def _bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise FormatError(f"compressed-tensors pack-quantized holds 1..8-bit codes, not {bits!r}")
    return int(bits)


def pack_quantized(q: np.ndarray, scale: np.ndarray, zero_point, bits: int) -> dict:
    """Signed codes q (N, K) in [−2^(b−1), 2^(b−1) − 1], scale (N, G), zero_point (N, G) signed or
    None (symmetric) -> the pack-quantized tensors."""
    bits = _bits(bits)
    q = np.asarray(q)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if q.ndim != 2 or q.min() < lo or q.max() > hi:
        raise InputError(f"pack-quantized: codes must be a matrix of {bits}-bit signed integers [{lo}, {hi}]")
    off = 2 ** (bits - 1)
    out = {"weight_packed": pack_bits((q.astype(np.int16) + off).astype(np.uint8), bits, axis=1),
           "weight_scale": np.asarray(scale),
           "weight_shape": np.array(q.shape, np.int64)}
    if zero_point is not None:
        z = np.asarray(zero_point).astype(np.int16)
        if z.min() < lo or z.max() > hi:
            raise InputError(f"pack-quantized: zero points must lie in [{lo}, {hi}]")
        out["weight_zero_point"] = pack_bits((z + off).astype(np.uint8), bits, axis=0)
    return out


def unpack_quantized(t: dict, bits: int):
    """-> (signed codes int8 (N, K), scale, zero_point int8 (N, G) or None)."""
    bits = _bits(bits)
    N, K = (int(v) for v in t["weight_shape"])
    off = 2 ** (bits - 1)
    q = (unpack_bits(t["weight_packed"], bits, K, axis=1).astype(np.int16) - off).astype(np.int8)
    s = t["weight_scale"]
    z = None
    if "weight_zero_point" in t:
        z = (unpack_bits(t["weight_zero_point"], bits, N, axis=0).astype(np.int16) - off).astype(np.int8)
    return q, s, z


def dequantize_pack_quantized(t: dict, bits: int) -> np.ndarray:
    """(q − zero) · scale in the scale's dtype, as compressed-tensors' dequantize computes it."""
    q, s, z = unpack_quantized(t, bits)
    g = q.shape[1] // s.shape[1]
    return affine.dequantize_compressed_tensors(q, s, z, (1, g))


def int_quantized(q: np.ndarray, scale: np.ndarray, zero_point=None) -> dict:
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise InputError(f"int-quantized: codes must be int8, got {q.dtype}")
    out = {"weight": q, "weight_scale": np.asarray(scale)}
    if zero_point is not None:
        out["weight_zero_point"] = np.asarray(zero_point).astype(np.int8)
    return out


def float_quantized(q_e4m3: np.ndarray, scale: np.ndarray) -> dict:
    q = np.asarray(q_e4m3)
    if q.dtype != np.dtype(ml_dtypes.float8_e4m3fn):
        raise InputError(f"float-quantized: weight must be float8_e4m3fn, got {q.dtype}")
    return {"weight": q, "weight_scale": np.asarray(scale, np.float32)}


def nvfp4_pack_quantized(packed: np.ndarray, scale_e4m3_codes: np.ndarray, global_scale) -> dict:
    """refquant.mx.quantize_nvfp4's output, named: scales as float8_e4m3fn, global scale (1,)."""
    return {"weight_packed": np.asarray(packed, np.uint8),
            "weight_scale": np.asarray(scale_e4m3_codes, np.uint8).view(ml_dtypes.float8_e4m3fn),
            "weight_global_scale": np.array([global_scale], np.float32)}


def mxfp4_pack_quantized(packed: np.ndarray, scale_e8m0: np.ndarray) -> dict:
    return {"weight_packed": np.asarray(packed, np.uint8), "weight_scale": np.asarray(scale_e8m0, np.uint8)}


def quantization_config(fmt: str, bits: int = 4, group_size=None, symmetric: bool = True,
                        targets=("Linear",), ignore=("lm_head",)) -> dict:
    """config.json's "quantization_config" for one scheme covering every Linear but `ignore`."""
    if fmt not in FORMATS:
        raise FormatError(f"compressed-tensors format must be one of {FORMATS}, got {fmt!r}")
    if fmt in ("pack-quantized", "int-quantized"):
        w = {"num_bits": bits, "type": "int", "symmetric": symmetric,
             "strategy": "group" if group_size else "channel", "group_size": group_size,
             "dynamic": False, "observer": "minmax"}
    elif fmt == "float-quantized":
        w = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel",
             "group_size": None, "dynamic": False, "observer": "minmax"}
    elif fmt == "nvfp4-pack-quantized":
        w = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
             "group_size": 16, "dynamic": False, "observer": "minmax"}
    else:
        w = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "group",
             "group_size": 32, "dynamic": False, "observer": "minmax", "scale_dtype": "torch.uint8",
             "zp_dtype": None}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": list(targets), "weights": w,
                                          "input_activations": None, "output_activations": None,
                                          "format": fmt}},
            "ignore": list(ignore), "kv_cache_scheme": None}
