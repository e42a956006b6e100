"""Round to nearest (RTN) over a linear layer's weight, on the affine grid of refquant.affine.

RTN quantizes every group of `group_size` input columns of every output row on its own grid,
with no data: scale and zero from the group's min/max, then q = clamp(round(w / scale) + zero).
The grid is GPTQ's (refquant.affine.choose_qparams_gptq): the one GPTQ and AWQ checkpoints
store, unsigned codes [0, 2^b - 1], symmetric zero 2^(b-1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import affine
from ..errors import InputError


@dataclass
class QuantizedLinear:
    """The result of quantizing one weight W (N, K).

    codes   uint8 (N, K)       unsigned codes in [0, 2^bits - 1], in W's column order
    scales  float32 (N, G)     one per output row and group
    zeros   float32 (N, G)     the real zero point (an integer held in a float; GPTQ v1 stores
                               zero - 1, v2 and AWQ store it as is)
    g_idx   int32 (K,)         the group of each input column (act-order permutes it)
    bits, group_size, sym      the grid
    input_scale float32 (K,)   AWQ/SmoothQuant only: W was multiplied by it column-wise before
                               quantizing; the layer's input must be divided by it (folded into
                               the previous normalisation or linear)
    """
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    g_idx: np.ndarray
    bits: int
    group_size: int
    sym: bool
    input_scale: Optional[np.ndarray] = None

    def dequantize(self) -> np.ndarray:
        """scale * (q - zero) per column's group, float32 (N, K); divided by input_scale if any."""
        s = self.scales[:, self.g_idx]
        z = self.zeros[:, self.g_idx]
        w = (s * (self.codes.astype(np.float32) - z)).astype(np.float32)
        if self.input_scale is not None:
            w = (w / self.input_scale[None, :]).astype(np.float32)
        return w


def check_layer(W, who: str, X=None, bits=None, group_size=None) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise InputError(f"{who}: weight must be a non-empty 2-D array (out, in), got shape {W.shape}")
    if not np.issubdtype(W.dtype, np.floating):
        raise InputError(f"{who}: weight must be floating point, got dtype {W.dtype}")
    W = W.astype(np.float32)
    if not np.isfinite(W).all():
        raise InputError(f"{who}: weight has non-finite values")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8):
        raise InputError(f"{who}: bits must be an integer from 2 to 8, got {bits!r}")
    if group_size is not None and group_size != -1:
        if not isinstance(group_size, (int, np.integer)) or group_size <= 0 or W.shape[1] % group_size:
            raise InputError(f"{who}: group_size {group_size!r} must be -1 or a positive divisor of "
                             f"the input size {W.shape[1]}")
    if X is not None:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != W.shape[1]:
            raise InputError(f"{who}: activations must have shape (n, {W.shape[1]}), got {X.shape}")
        if not np.isfinite(X).all():
            raise InputError(f"{who}: activations have non-finite values")
    return W


def rtn(W: np.ndarray, bits: int = 4, group_size: int = -1, sym: bool = True) -> QuantizedLinear:
    """Round-to-nearest over groups of `group_size` input columns (-1: one group per row)."""
    W = check_layer(W, "rtn", bits=bits, group_size=group_size)
    N, K = W.shape
    g = K if group_size == -1 else group_size
    block = (1, g)
    scale, zero = affine.choose_qparams_gptq(W, block, bits, symmetric=sym)   # (N, K/g)
    codes = affine.quantize_gptq(W, scale, zero, block, bits)
    g_idx = (np.arange(K) // g).astype(np.int32)
    return QuantizedLinear(codes, scale, zero, g_idx, bits, group_size, sym)


def output_error(X: np.ndarray, W: np.ndarray, W_hat: np.ndarray) -> float:
    """‖X Wᵀ − X Ŵᵀ‖_F, in float64."""
    D = np.asarray(W, np.float64) - np.asarray(W_hat, np.float64)
    return float(np.linalg.norm(np.asarray(X, np.float64) @ D.T))
