"""FP8 E4M3 scaling: one scale per tensor, channel, token, 1x128 activation group or 128x128
weight block, under the scale rules of the implementations that use them.

    granularity          block_size on x (R, K)   used by
    per-tensor           (R, K)                   static FP8 (W8A8 "tensor"), KV-cache k_scale/v_scale
    per-channel / row    (1, K)                   FP8 "channel" weights, torchao PerRow
    per-token            (1, .., 1, K)            dynamic activations
    1x128 groups         (1, 128)                 DeepSeek-V3 activations
    128x128 blocks       (128, 128)               DeepSeek-V3 weights (weight_scale_inv)

Three rules, each "scale = absmax / 448" but computed differently:

    "compressed-tensors"  calculate_qparams + forward.quantize (FP8, symmetric):
        scale = absmax / (896 / 2) in x's dtype; a zero scale becomes the dtype's epsilon;
        q = e4m3(clamp(x / scale + 0, -448, 448)), the division rounded to promote(x, scale)
        first (two roundings for bfloat16/float16 inputs); the `+ 0` (its zero point) turns
        -0 into +0. Partial edge blocks are padded. dequantize: q * scale in the scale's dtype.
    "torchao"             _choose_scale_float8 + _quantize_affine_float8:
        scale = absmax / 448.0 in x's dtype, then cast to float32;
        q = e4m3(clamp(float32(x) / scale, -448, 448)). Blocks must tile x. dequantize:
        float32(q) * scale, cast to the output dtype.
    "deepseek-v3"         DeepSeek-V3's act_quant / weight_quant kernels (inference/kernel.py):
        x is converted to float32 first; s = absmax / 448 (float32); q = e4m3(x / s); edge
        blocks are masked (only real elements count). weight_scale_inv = s; dequantize q * s.

A zero scale (an all-zero block under torchao's or DeepSeek's rule) would give 0/0 = NaN codes;
refquant refuses it, like every non-finite scale, with an InputError.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from . import affine as A
from .affine import BF16, F16, F32, f32, promote, rnd
from .api import check_floats
from .errors import InputError

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_MAX = 448.0
RULES = ("compressed-tensors", "torchao", "deepseek-v3")


def _to_e4m3(x_float32: np.ndarray, saturate: bool) -> np.ndarray:
    """float32 -> float8_e4m3fn, round to nearest even; beyond ±448 saturate or give NaN.

    A private adapter: it will be replaced by refquant.minifloat.encode. ml_dtypes' cast rounds
    correctly from float32 (subnormals included), as torch's .to(torch.float8_e4m3fn) does."""
    x = np.asarray(x_float32, dtype=F32)
    if saturate:
        x = np.clip(x, -E4M3_MAX, E4M3_MAX)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(E4M3)


# ----------------------------------------------------------------------------- granularity

per_tensor = A.per_tensor
per_channel = A.per_channel
per_token = A.per_token


def act_groups(shape, group: int = 128) -> tuple:
    """1 x `group` activation groups along the last axis (DeepSeek-V3: 1x128)."""
    return A.per_group(shape, group)


def weight_blocks(shape, block: int = 128) -> tuple:
    """`block` x `block` weight blocks over the last two axes (DeepSeek-V3: 128x128)."""
    return A.per_block(shape, (block, block))


def _rule(rule: str) -> str:
    if rule not in RULES:
        raise InputError(f"unknown FP8 scale rule {rule!r}; known: {', '.join(RULES)}")
    return rule


def _absmax(x, block):
    return A.block_reduce(np.abs(f32(x)), block, np.max, 0.0)


# ----------------------------------------------------------------------------- the three pieces

def choose_scale(x: np.ndarray, block_size, rule: str = "compressed-tensors") -> np.ndarray:
    """One scale per block (shape ceil(x.shape / block_size)); dtype: x's for
    compressed-tensors, float32 for torchao and DeepSeek-V3."""
    rule = _rule(rule)
    who = f"fp8 choose_scale({rule})"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    block = A.check_block_size(x.shape, block_size, pad=(rule != "torchao"), who=who)
    dt = x.dtype
    amax = _absmax(x, block)                          # exact: a max of |x|
    with np.errstate(all="ignore"):
        if rule == "compressed-tensors":
            half = A.div(rnd(F32.type(2 * E4M3_MAX), dt), F32.type(2), dt)   # bit_range.to(dtype) / 2
            s = A.div(amax.astype(dt), half, dt)
            eps = {F32: np.finfo(np.float32).eps, F16: 2.0**-10, BF16: 2.0**-7}[dt]
            return np.where(f32(s) == 0, rnd(F32.type(eps), dt), s).astype(dt)
        if rule == "torchao":
            return f32(A.div(amax.astype(dt), F32.type(E4M3_MAX), dt))
        return (amax / F32.type(E4M3_MAX)).astype(F32)


def quantize(x: np.ndarray, scale: np.ndarray, block_size, rule: str = "compressed-tensors") -> np.ndarray:
    """E4M3 codes (an ml_dtypes.float8_e4m3fn array of x's shape; .view(np.uint8) for bytes)."""
    rule = _rule(rule)
    who = f"fp8 quantize({rule})"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    block = A.check_block_size(x.shape, block_size, pad=(rule != "torchao"), who=who)
    s = A.check_scale(scale, x.shape, block, who)
    se = A.expand(s, block, x.shape)
    with np.errstate(all="ignore"):
        if rule == "compressed-tensors":
            pdt = promote(x.dtype, s.dtype)
            y = A.div(x, se, pdt)
            y = A.add(y, np.zeros((), pdt), pdt)          # += zero_point.to(x.dtype): -0 -> +0
            y = np.clip(f32(y), -E4M3_MAX, E4M3_MAX).astype(pdt)
            return _to_e4m3(f32(y), saturate=False)
        if rule == "torchao":
            y = np.clip(f32(x) / f32(se), -E4M3_MAX, E4M3_MAX)
            return _to_e4m3(y, saturate=False)
        return _to_e4m3(f32(x) / f32(se), saturate=True)   # |x / s| <= 448 up to rounding


def dequantize(q: np.ndarray, scale: np.ndarray, block_size, rule: str = "compressed-tensors",
               out_dtype=None) -> np.ndarray:
    """compressed-tensors: q * scale in the scale's dtype (then out_dtype); torchao and
    DeepSeek-V3: float32(q) * scale (float32), then out_dtype (default float32)."""
    rule = _rule(rule)
    who = f"fp8 dequantize({rule})"
    if not isinstance(q, np.ndarray) or q.dtype != E4M3:
        raise InputError(f"{who}: codes must be an ml_dtypes.float8_e4m3fn array, got "
                         f"{getattr(q, 'dtype', type(q).__name__)}")
    block = A.check_block_size(q.shape, block_size, pad=(rule != "torchao"), who=who)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=A.FLOAT_DTYPES).reshape(A.scale_shape(q.shape, block))
    se = A.expand(s, block, q.shape)
    with np.errstate(all="ignore"):
        if rule == "compressed-tensors":
            sdt = s.dtype
            d = A.mul(rnd(q.astype(F32), sdt), se, sdt)
            out = sdt if out_dtype is None else A.float_dtype(out_dtype)
            return rnd(f32(d), out) if out != sdt else d
        out = F32 if out_dtype is None else A.float_dtype(out_dtype)
        return rnd(q.astype(F32) * f32(se), out)


# ----------------------------------------------------------------------------- torchao blockwise training

BLOCKWISE_TRAINING_EPS = 1e-12


def quantize_blockwise_training(x: np.ndarray, block_size):
    """torchao's blockwise FP8 training recipe (prototype/blockwise_fp8_training:
    torch_blockwise_scale_act_quant_lhs for 1 x 128, torch_blockwise_scale_weight_quant for
    128 x 128), a multiply-by-reciprocal rule whose multiplier and stored scale are made together:

        amax = max(block absmax, 1e-12)                  in float64
        s    = float32(448 / amax)                       the multiplier, rounded once to float32
        q    = e4m3(clamp(x * s, -448, 448))             the product in float32
        scale = 1 / s                                    float32 reciprocal: what is stored

    Returns (q, scale). An all-zero block gets s = 4.48e14 and +-0 codes (no NaN). Blocks must
    tile x."""
    who = "fp8 quantize_blockwise_training"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    block = A.check_block_size(x.shape, block_size, who=who)
    amax = A.block_reduce(np.abs(f32(x)), block, np.max, 0.0).astype(np.float64)
    amax = np.maximum(amax, BLOCKWISE_TRAINING_EPS)
    mult = (E4M3_MAX / amax).astype(F32)
    with np.errstate(all="ignore"):
        y = np.clip(f32(x) * A.expand(mult, block, x.shape), -E4M3_MAX, E4M3_MAX)
        return _to_e4m3(y, saturate=False), (F32.type(1) / mult).astype(F32)


# ----------------------------------------------------------------------------- DeepSeek-V3 names

def quantize_weight_128x128(w: np.ndarray):
    """DeepSeek-V3 block FP8 weights: (E4M3 weight, weight_scale_inv float32
    [ceil(out/128), ceil(in/128)]); edge blocks partial."""
    block = weight_blocks(w.shape, 128)
    s = choose_scale(w, block, "deepseek-v3")
    return quantize(w, s, block, "deepseek-v3"), s


def quantize_activation_1x128(x: np.ndarray):
    """DeepSeek-V3 dynamic activations: (E4M3 x, float32 scale per 1x128 group)."""
    block = act_groups(x.shape, 128)
    s = choose_scale(x, block, "deepseek-v3")
    return quantize(x, s, block, "deepseek-v3"), s


def quantize_tensor_modelopt(w: np.ndarray, amax=None, dtype=F32):
    """NVIDIA ModelOpt 0.47's per-tensor FP8 weight export (quant_algo "FP8"): w held in `dtype`
    (the model's: float32, float16 or bfloat16) -> (E4M3 codes, weight_scale float32 ()).

        weight_scale = amax / 448 in float32, amax = max |w| unless given (ModelOpt's calibrated
                       amax, shared across fused layers); a zero amax is clamped to float32's
                       smallest normal (export_amax)
        q = e4m3(w / weight_scale), the division done in `dtype` (a float16 / bfloat16 tensor
            divided by a 0-d float32 tensor stays float16 / bfloat16 in torch: two roundings)"""
    dtype = np.dtype(dtype)
    if dtype not in (F32, F16, BF16):
        raise InputError(f"FP8 (ModelOpt): dtype must be float32, float16 or bfloat16, got {dtype}")
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating) and w.dtype != BF16:
        raise InputError(f"FP8 (ModelOpt): w must be a float array, got {w.dtype}")
    wf = f32(w)
    if not np.isfinite(wf).all():
        raise InputError("FP8 (ModelOpt): w has a non-finite value")
    if not np.array_equal(f32(rnd(wf, dtype)), wf, equal_nan=False):
        raise InputError(f"FP8 (ModelOpt): w holds values not representable in {dtype}")
    a = np.float32(np.max(np.abs(wf))) if amax is None else np.float32(np.asarray(amax, F32).ravel()[0])
    if not np.isfinite(a) or a < np.max(np.abs(wf)):
        raise InputError(f"FP8 (ModelOpt): amax must be finite and >= max |w|, got {amax!r}")
    a = max(a, np.float32(np.finfo(F32).tiny))
    scale = np.float32(a / np.float32(E4M3_MAX))
    with np.errstate(over="ignore", invalid="ignore"):
        y = rnd(wf / scale, dtype)
    return _to_e4m3(f32(y), saturate=False), np.array(scale, F32)
