"""Block-FP8 checkpoints (DeepSeek-V3, transformers' "fp8" quant_method) and NVIDIA ModelOpt's
FP8 / NVFP4 names, per linear `<p>`:

  Block FP8 (quant_method "fp8", weight_block_size [128, 128]):
    <p>.weight            float8_e4m3fn (N, K)
    <p>.weight_scale_inv  float32 (ceil(N/128), ceil(K/128))   W ≈ weight · scale_inv per block
                                                               (edge blocks partial)
  ModelOpt FP8 (quant_algo "FP8"):
    <p>.weight float8_e4m3fn (N, K), <p>.weight_scale float32 () per tensor, <p>.input_scale float32 ()
  ModelOpt NVFP4 (quant_algo "NVFP4"):
    <p>.weight uint8 (N, K/2) two E2M1 codes a byte, low nibble first
    <p>.weight_scale float8_e4m3fn (N, K/16)
    <p>.weight_scale_2 float32 () = amax / (6 · 448)   (compressed-tensors stores the inverse,
                                                        weight_global_scale = 448 · 6 / amax)
    <p>.input_scale float32 ()

Codes come from refquant.fp8_scaling (the "deepseek-v3" rule) and refquant.mx. See
spec/layouts/fp8-block.md.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .. import fp8_scaling
from ..errors import InputError

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
BLOCK = 128


def block_fp8(w: np.ndarray) -> dict:
    """float32 W (N, K) -> {"weight", "weight_scale_inv"} as DeepSeek-V3 ships them."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise InputError(f"fp8-block: weight must be a matrix, got shape {w.shape}")
    q, s = fp8_scaling.quantize_weight_128x128(w.astype(np.float32))
    return {"weight": q, "weight_scale_inv": np.asarray(s, np.float32)}


def dequantize_block_fp8(t: dict) -> np.ndarray:
    q, s = t["weight"], t["weight_scale_inv"]
    return fp8_scaling.dequantize(q, s, fp8_scaling.weight_blocks(q.shape, BLOCK), "deepseek-v3")


def quantization_config_block_fp8() -> dict:
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK]}


def modelopt_nvfp4(packed: np.ndarray, scale_e4m3_codes: np.ndarray, amax: float) -> dict:
    """NVFP4 codes and E4M3 block scales (refquant.mx.quantize_nvfp4 with the global scale
    448·6/amax) under ModelOpt's names; weight_scale_2 = amax / (6·448) computed in float32."""
    return {"weight": np.asarray(packed, np.uint8),
            "weight_scale": np.asarray(scale_e4m3_codes, np.uint8).view(E4M3),
            "weight_scale_2": np.array(np.float32(amax) / np.float32(6 * 448), np.float32)}


def quantization_config_modelopt(algo: str) -> dict:
    if algo not in ("FP8", "NVFP4"):
        raise InputError(f"modelopt: quant_algo must be FP8 or NVFP4, got {algo!r}")
    cfg = {"quant_method": "modelopt", "quant_algo": algo, "exclude_modules": ["lm_head"]}
    if algo == "NVFP4":
        cfg["group_size"] = 16
    return cfg
