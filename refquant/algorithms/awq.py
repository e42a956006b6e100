"""AWQ (Lin et al., activation-aware weight quantization) over one linear layer.

Inputs whose activations are large matter more: scale W's input columns by s (and the input by
1/s, folded into the previous normalisation or linear) so those columns lose less to rounding.
s is searched on a grid of exponents α: s = mean|X|^α / (w_mean^(1−α) + 1e-4) ("duo scaling")
or s = mean|X|^α, normalised by sqrt(max s · min s); the α with the least output error on the
calibration data wins. Then, optionally, each group's weights are clipped to the shrink factor
that least disturbs that group's partial outputs.

Read against llm-compressor's AWQModifier (the grid, including the identity (0, no duo) when
duo scaling is on) and AutoAWQ's AwqQuantizer (_search_best_scale, _compute_best_clip). The
loss here is ‖X Wᵀ − X Ŵᵀ‖_F in float64 (the references: a float32 mean squared error — the
same ordering up to their rounding). See spec/algorithms/awq.md.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from .. import affine
from ..errors import InputError
from .rtn import QuantizedLinear, check_layer, output_error

F32 = np.float32


def grid(n_grid: int = 20, duo_scaling: Union[bool, str] = True, rule: str = "llm-compressor") -> list:
    """The (α, duo) pairs searched, in llm-compressor's order, or AutoAWQ's (α = i/n_grid,
    i < n_grid, all with or all without duo scaling: no identity candidate under duo)."""
    if rule == "autoawq":
        if duo_scaling not in (True, False):
            raise InputError(f"awq: AutoAWQ's grid takes duo_scaling True or False, got {duo_scaling!r}")
        return [(i / n_grid, duo_scaling) for i in range(n_grid)]
    if rule != "llm-compressor":
        raise InputError(f"awq: grid rule must be 'llm-compressor' or 'autoawq', got {rule!r}")
    if duo_scaling == "both":
        n = n_grid // 2
        return [(i / (n - 1), d) for i in range(n) for d in (False, True)]
    if duo_scaling is True:
        return [(0.0, False)] + [(i / (n_grid - 2), True) for i in range(n_grid - 1)]
    if duo_scaling is False:
        return [(i / (n_grid - 1), False) for i in range(n_grid)]
    raise InputError(f"awq: duo_scaling must be True, False or 'both', got {duo_scaling!r}")


def fake_quantize(W: np.ndarray, bits: int, g: int, sym: bool):
    """AutoAWQ's pseudo_quantize_tensor (refquant.affine 'awq' convention) over groups (1, g):
    unsigned codes, scale, zero (an all-2^(b-1) zero when sym), and the dequantized W."""
    block = (1, g)
    scale, zero = affine.choose_qparams_awq(W, block, bits, zero_point=not sym)
    q = affine.quantize_awq(W, scale, zero, block, bits)
    w_hat = affine.dequantize_awq(q, scale, zero, block)
    if sym:   # signed codes -> the unsigned grid the checkpoints store, zero 2^(b-1)
        q = (q.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
        zero = np.full(scale.shape, 2 ** (bits - 1), F32)
    return q, scale.astype(F32), zero.astype(F32), w_hat.astype(F32)


def _w_mean(W, g):
    """Mean over rows of |W| normalised by its group's absmax (+1e-6)."""
    a = np.abs(W).reshape(-1, g)
    a = a / (a.max(axis=1, keepdims=True) + F32(1e-6))
    return a.reshape(W.shape).mean(axis=0, dtype=np.float64).astype(F32)


def _scales(x_mean, w_mean, ratio, duo):
    with np.errstate(all="ignore"):
        if duo:
            s = np.maximum(x_mean ** F32(ratio) / (w_mean ** F32(1 - ratio) + F32(1e-4)), F32(1e-4))
        else:
            s = np.maximum(x_mean ** F32(ratio), F32(1e-4))
        s = (s / np.sqrt(s.max() * s.min())).astype(F32)
    s[~np.isfinite(s)] = 1
    return s


def _clip(W, X, bits, g, sym, max_shrink=0.5, n_grid=20):
    """AutoAWQ's _compute_best_clip: per (row, group), the shrink of the group's absmax whose
    clamped, quantized weights best keep that group's partial outputs; returns W clamped."""
    N, K = W.shape
    G = K // g
    w = W.reshape(N, G, g)
    x = X.reshape(-1, G, g).astype(F32)
    org_max = np.abs(w).max(axis=2, keepdims=True)                         # (N, G, 1)
    org_out = np.einsum("tgj,ngj->ntg", x, w)
    best_err = np.full((N, G), np.inf)
    best_max = org_max.copy()
    for i_s in range(int(max_shrink * n_grid)):
        max_val = (org_max * F32(1 - i_s / n_grid)).astype(F32)
        cur = np.clip(w, -max_val, max_val).reshape(N, K)
        q_w = fake_quantize(cur, bits, g, sym)[3].reshape(N, G, g)
        err = ((np.einsum("tgj,ngj->ntg", x, q_w) - org_out).astype(np.float64) ** 2).mean(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_max = np.where(better[..., None], max_val, best_max)
    return np.clip(w, -best_max, best_max).reshape(N, K).astype(F32)


def awq(W: np.ndarray, X: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = False,
        n_grid: int = 20, duo_scaling: Union[bool, str] = True, clip: bool = False,
        max_shrink: float = 0.5, grid_rule: str = "llm-compressor",
        x_mean: Optional[np.ndarray] = None) -> QuantizedLinear:
    """AWQ-quantize W (N, K) on calibration activations X (n, K). Returns the codes of
    clip(W · s) with their grid, and s as input_scale (divide the layer's input by it).
    x_mean: the mean |x| per input over every calibration row, when X is a sample of them
    (default: taken from X)."""
    W = check_layer(W, "awq", X=X, bits=bits, group_size=group_size)
    X = np.asarray(X, F32)
    N, K = W.shape
    g = K if group_size == -1 else group_size
    if x_mean is None:                                                     # 1. mean |x| per input
        x_mean = np.abs(X).mean(axis=0, dtype=np.float64).astype(F32)
    else:
        x_mean = np.asarray(x_mean, F32)
        if x_mean.shape != (K,) or not np.isfinite(x_mean).all():
            raise InputError(f"awq: x_mean must be a finite vector of {K} values, got shape {x_mean.shape}")
    w_mean = _w_mean(W, g)                                                 # 2. normalised |w|
    best, best_err = None, np.inf
    for ratio, duo in grid(n_grid, duo_scaling, grid_rule):                           # 3. the grid search
        s = _scales(x_mean, w_mean, ratio, duo)
        w_hat = (fake_quantize((W * s).astype(F32), bits, g, sym)[3] / s).astype(F32)
        err = output_error(X, W, w_hat)
        if err < best_err:
            best, best_err = s, err
    if best is None:
        raise InputError("awq: no finite output error in the scale search")
    Ws = (W * best).astype(F32)                                            # 4. apply the scales
    if clip:                                                               # 5. clipping search
        Ws = _clip(Ws, (X / best).astype(F32), bits, g, sym, max_shrink, n_grid)
    codes, scale, zero, _ = fake_quantize(Ws, bits, g, sym)                # 6. final RTN
    return QuantizedLinear(codes, scale, zero, (np.arange(K) // g).astype(np.int32), bits,
                           group_size, sym, input_scale=best)
