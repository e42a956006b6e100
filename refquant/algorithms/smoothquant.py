"""SmoothQuant (Xiao et al.): divide each input channel of the activations by s_j and multiply
the weight's column j by it, so activation outliers migrate into the weights; then quantize
both to INT8 (W8A8). The division is folded into the preceding normalisation's weight (and
bias), so the model computes the same function before rounding.

    s_j = max|X_j|^α / max|W_j|^(1−α)       (both maxima clamped to >= 1e-5, s too)

Read against mit-han-lab's smoothquant/smooth.py (smooth_ln_fcs) and llm-compressor's
SmoothQuantModifier (which doubles the weight maxima, and falls back to s_j = max|X_j| where a
weight column is all zero). See spec/algorithms/smoothquant.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .rtn import check_layer

F32 = np.float32


def smooth_scales(act_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """s (K,) from the per-channel activation absmax and every weight (N_i, K) fed by it."""
    if not 0 <= alpha <= 1:
        raise InputError(f"smoothquant: alpha must be in [0, 1], got {alpha!r}")
    a = np.maximum(np.asarray(act_absmax, np.float64), 1e-5)
    w = np.max([np.abs(np.asarray(Wi, np.float64)).max(axis=0) for Wi in weights], axis=0)
    w = np.maximum(w, 1e-5)
    return np.maximum(a ** alpha / w ** (1 - alpha), 1e-5)


@dataclass
class SmoothQuantLinear:
    smooth: np.ndarray          # s (K,): the input is divided by it (folded into the norm)
    weight: np.ndarray          # W · s (N, K), before rounding
    norm_weight: Optional[np.ndarray]
    norm_bias: Optional[np.ndarray]
    codes: np.ndarray           # int8 (N, K): round(W·s / scale), half to even, clamp ±127
    scale: np.ndarray           # (N, 1): per-output-channel absmax / 127


def quantize_int8_absmax(a: np.ndarray, axis: int):
    """Symmetric INT8, absmax / 127 along `axis` (kept), half to even; an all-zero line gets scale 1."""
    amax = np.abs(a).max(axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(a / scale), -127, 127).astype(np.int8), scale


def smoothquant(W: np.ndarray, X: np.ndarray, alpha: float = 0.5, norm_weight=None, norm_bias=None,
                dtype=np.float64) -> SmoothQuantLinear:
    """Smooth W (N, K) for calibration activations X (n, K), fold 1/s into the norm's weight and
    bias when given, and quantize the smoothed weight per output channel to INT8. The transform
    runs in `dtype` (float64 by default: then X/s · (W·s)ᵀ equals X·Wᵀ to float64 rounding)."""
    W = check_layer(W, "smoothquant", X=X)
    X = np.asarray(X)
    s = smooth_scales(np.abs(X).max(axis=0), [W], alpha).astype(dtype)
    Ws = W.astype(dtype) * s[None, :]
    nw = None if norm_weight is None else np.asarray(norm_weight, dtype) / s
    nb = None if norm_bias is None else np.asarray(norm_bias, dtype) / s
    codes, scale = quantize_int8_absmax(Ws, axis=1)
    return SmoothQuantLinear(s, Ws, nw, nb, codes, scale)


def w8a8_forward(X: np.ndarray, layer: SmoothQuantLinear) -> np.ndarray:
    """What a W8A8 kernel computes: X/s quantized per token to INT8, an exact integer matmul,
    then both scales. Float64 out."""
    xs = np.asarray(X, np.float64) / layer.smooth
    qx, sx = quantize_int8_absmax(xs, axis=1)
    acc = qx.astype(np.int64) @ layer.codes.astype(np.int64).T
    return acc * sx * layer.scale.T
