"""Block-FP8 checkpoints (DeepSeek-V3, transformers' "fp8" quant_method) and NVIDIA ModelOpt's
FP8 / NVFP4 names, per linear `<p>`:

  Block FP8 (quant_method "fp8", weight_block_size [128, 128]):
    <p>.weight            float8_e4m3fn (N, K)
    <p>.weight_scale_inv  float32 (ceil(N/128), ceil(K/128))   W ≈ weight · scale_inv per block
                                                               (edge blocks partial)
  ModelOpt FP8 (quant_algo "FP8"), as ModelOpt 0.47's export_hf_checkpoint writes it:
    <p>.weight float8_e4m3fn (N, K), <p>.weight_scale float32 () = amax / 448,
    <p>.input_scale float32 () = input amax / 448
  ModelOpt NVFP4 (quant_algo "NVFP4"):
    <p>.weight uint8 (N, K/2) two E2M1 codes a byte, low nibble first
    <p>.weight_scale float8_e4m3fn (N, K/16)
    <p>.weight_scale_2 float32 () = amax / (6 · 448)   (compressed-tensors stores the inverse,
                                                        weight_global_scale = 448 · 6 / amax)
    <p>.input_scale float32 () = input amax / (6 · 448)
  NVFP4 layers that share an input (q/k/v, gate/up) share one weight amax and one input amax:
  the largest of theirs (ModelOpt's preprocess_linear_fusion, for engines that fuse them); FP8
  layers keep their own (ModelOpt 0.47 skips the fusion for per-tensor FP8).

Codes come from refquant.fp8_scaling (the "deepseek-v3" rule, ModelOpt's per-tensor FP8) and
refquant.mx (quantize_nvfp4_modelopt). See spec/layouts/fp8-block.md.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .. import fp8_scaling, mx
from .. import minifloat as mf
from ..errors import InputError

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
BF16 = np.dtype(ml_dtypes.bfloat16)
BLOCK = 128


def block_fp8(w: np.ndarray) -> dict:
    """float32 W (N, K) -> {"weight", "weight_scale_inv"} as DeepSeek-V3 ships them."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise InputError(f"fp8-block: weight must be a matrix, got shape {w.shape}")
    q, s = fp8_scaling.quantize_weight_128x128(w.astype(np.float32))
    return {"weight": q, "weight_scale_inv": np.asarray(s, np.float32)}


def block_fp8_specs(N: int, K: int) -> dict:
    """The (dtype, shape) of each tensor `block_fp8` writes, from the table above: E4M3 codes
    (N, K), one float32 scale a 128 x 128 block, edge blocks partial."""
    return {"weight": (E4M3, (N, K)), "weight_scale_inv": (np.dtype(np.float32), (-(-N // BLOCK), -(-K // BLOCK)))}


def dequantize_block_fp8(t: dict) -> np.ndarray:
    q, s = t["weight"], t["weight_scale_inv"]
    return fp8_scaling.dequantize(q, s, fp8_scaling.weight_blocks(q.shape, BLOCK), "deepseek-v3")


def quantization_config_block_fp8() -> dict:
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK]}


def _input_scale(input_amax, maxbound: float) -> np.ndarray:
    a = np.float32(np.asarray(input_amax, np.float32).ravel()[0])
    if not np.isfinite(a) or a <= 0:
        raise InputError(f"modelopt: the input amax must be finite and positive, got {input_amax!r}")
    return np.array(a / np.float32(maxbound), np.float32)


def modelopt_nvfp4(w: np.ndarray, weight_amax=None, input_amax=None) -> dict:
    """float32 W (N, K) -> ModelOpt's NVFP4 tensors (refquant.mx.quantize_nvfp4_modelopt);
    weight_amax: the amax shared with fused layers (default max |W|); input_amax: the calibrated
    max |input| (input_scale = input_amax / 2688), omitted when None."""
    packed, codes, wsf2 = mx.quantize_nvfp4_modelopt(np.asarray(w, np.float32), weight_amax)
    t = {"weight": packed, "weight_scale": codes.view(E4M3), "weight_scale_2": np.array(wsf2, np.float32)}
    if input_amax is not None:
        t["input_scale"] = _input_scale(input_amax, 6 * 448)
    return t


def modelopt_nvfp4_specs(N: int, K: int, input_scale: bool) -> dict:
    """The (dtype, shape) of each tensor `modelopt_nvfp4` writes (input_scale: whether an input
    amax is given), from the table above: two codes a byte, one E4M3 scale a block of 16,
    0-d float32 scales."""
    if K % mx.NVFP4_BLOCK:
        raise InputError(f"modelopt nvfp4: in features ({K}) must be a multiple of {mx.NVFP4_BLOCK}")
    t = {"weight": (np.dtype(np.uint8), (N, K // 2)), "weight_scale": (E4M3, (N, K // mx.NVFP4_BLOCK)),
         "weight_scale_2": (np.dtype(np.float32), ())}
    if input_scale:
        t["input_scale"] = (np.dtype(np.float32), ())
    return t


def dequantize_modelopt_nvfp4(t: dict) -> np.ndarray:
    """e2m1 · (weight_scale · weight_scale_2) in float32 (ModelOpt's NVFP4QTensor.dequantize). Its
    E2M1 table holds +0 at code 0x8 (no negative zero): a -0 code reads as +0."""
    vals = mf.decode(mx.unpack_fp4(t["weight"]), "E2M1")
    vals = np.where(vals == 0, np.float32(0), vals).astype(np.float32)
    s = (t["weight_scale"].astype(np.float32) * np.float32(t["weight_scale_2"])).astype(np.float32)
    N, n = vals.shape
    return (vals.reshape(N, -1, 16) * s[..., None]).astype(np.float32).reshape(N, n)


def modelopt_fp8(w: np.ndarray, dtype=np.float32, weight_amax=None, input_amax=None) -> dict:
    """W (N, K) held in `dtype` (the model's) -> ModelOpt's per-tensor FP8 tensors
    (refquant.fp8_scaling.quantize_tensor_modelopt); input_scale = input_amax / 448."""
    q, scale = fp8_scaling.quantize_tensor_modelopt(w, weight_amax, dtype)
    t = {"weight": q, "weight_scale": scale}
    if input_amax is not None:
        t["input_scale"] = _input_scale(input_amax, 448)
    return t


def modelopt_fp8_specs(N: int, K: int, input_scale: bool) -> dict:
    """The (dtype, shape) of each tensor `modelopt_fp8` writes (input_scale: whether an input amax
    is given): E4M3 codes (N, K), 0-d float32 scales."""
    t = {"weight": (E4M3, (N, K)), "weight_scale": (np.dtype(np.float32), ())}
    if input_scale:
        t["input_scale"] = (np.dtype(np.float32), ())
    return t


def quantization_config_modelopt(algo: str, exclude_modules=("lm_head",), producer=None) -> dict:
    """hf_quant_config.json's content (ModelOpt 0.47's layout): producer and "quantization"."""
    if algo not in ("FP8", "NVFP4"):
        raise InputError(f"modelopt: quant_algo must be FP8 or NVFP4, got {algo!r}")
    q = {"quant_algo": algo, "kv_cache_quant_algo": None}
    if algo == "NVFP4":
        q["group_size"] = 16
    q["exclude_modules"] = list(exclude_modules)
    return {"producer": producer or {"name": "refquant", "version": _version()}, "quantization": q}


def hf_config_modelopt(hf_quant_config: dict) -> dict:
    """config.json's "quantization_config" for a ModelOpt checkpoint, as ModelOpt 0.47 derives it
    from hf_quant_config.json (convert_hf_quant_config_format): compressed-tensors-style
    config_groups over every Linear, "ignore" = the excluded modules."""
    q = hf_quant_config["quantization"]
    if q["quant_algo"] == "FP8":
        args = {"dynamic": False, "num_bits": 8, "type": "float"}
        w, a = dict(args), dict(args)
    else:
        args = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": q["group_size"]}
        w, a = dict(args), dict(args)
    return {"config_groups": {"group_0": {"input_activations": a, "weights": w, "targets": ["Linear"]}},
            "ignore": list(q["exclude_modules"]), "quant_algo": q["quant_algo"],
            "producer": hf_quant_config["producer"], "quant_method": "modelopt"}


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("refquant")
    except Exception:
        return "0.1.0"
