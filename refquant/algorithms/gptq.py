"""GPTQ (Frantar et al., OPTQ) over one linear layer: quantize W column by column, pushing each
column's rounding error onto the columns not yet quantized through the inverse Hessian.

Read against IST-DASLab's gptq.py (GPTQ.fasterquant) and AutoGPTQ's copy of it; the steps run
in the same order, in float32 (both references quantize W.float()), with NumPy's LAPACK/BLAS for
the Cholesky factors and the block updates. See spec/algorithms/gptq.md.

The bytes depend on the values of W and H (or X) and on the BLAS thread count only
(spec/algorithms/gptq.md, "Same input, same bytes"): the products and factorizations run on
C-ordered, aligned float32 arrays (copies where the inputs are not so), whatever memory the
inputs come in. (An X at an address no multiple of 4, as a Dask worker can receive it, made
NumPy's matmul buffer XᵀX's two operands apart and call gemm instead of syrk: other sums, other
codes.)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import affine
from ..errors import InputError
from .rtn import QuantizedLinear, check_layer

F32 = np.float32


def hessian(X: np.ndarray) -> np.ndarray:
    """H = 2/n XᵀX, float32 (K, K), as the references accumulate it (X: (n, K) activations)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise InputError(f"hessian: activations must be a non-empty 2-D array (n, K), got shape {X.shape}")
    # C-ordered, aligned float32 (X.T and X then are one buffer: NumPy's syrk), whatever X's
    # dtype, order, alignment or backing (a memmap, a received frame); copied only when X is
    # not so already (a mapped float32 .npy is used in place)
    X = np.require(X, F32, ["C_CONTIGUOUS", "ALIGNED"])
    return ((F32(2.0 / X.shape[0])) * (X.T @ X)).astype(F32)


def _params(Wg: np.ndarray, bits: int, sym: bool):
    """GPTQ's Quantizer.find_params on the columns Wg (N, c): one scale/zero per row."""
    return affine.choose_qparams_gptq(Wg, (1, Wg.shape[1]), bits, symmetric=sym)


def _inverse_hessian_factor(H: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): cholesky, cholesky_inverse, cholesky(upper)."""
    try:
        L = np.linalg.cholesky(H)
        Linv = np.linalg.inv(L).astype(F32)
        Hinv = (Linv.T @ Linv).astype(F32)
        return np.linalg.cholesky(Hinv).T.astype(F32)
    except np.linalg.LinAlgError:
        raise InputError("gptq: the dampened Hessian is not positive definite; raise damp "
                         "(percdamp) or give more calibration samples") from None


def gptq(W: np.ndarray, H: Optional[np.ndarray] = None, X: Optional[np.ndarray] = None, *,
         bits: int = 4, group_size: int = -1, sym: bool = True, damp: float = 0.01,
         block_size: int = 128, act_order: bool = False, static_groups: bool = False,
         grids_before_dead: bool = False) -> QuantizedLinear:
    """GPTQ-quantize W (N, K) given the Hessian H (K, K) or the activations X (n, K).

    damp         dampening: damp * mean(diag H) is added to H's diagonal (0 = none)
    block_size   lazy batch: columns are quantized in blocks of this many; the error of a block
                 reaches the later columns in one matrix product
    act_order    quantize columns in descending diag(H) order (g_idx then maps each column to
                 the group of its position in that order)
    static_groups  every group's scale/zero from the original weights before any update, in the
                 original column order (g_idx stays trivial); otherwise a group's scale/zero
                 are chosen when its first column is reached, from the weights as updated so
                 far by earlier blocks
    """
    W = check_layer(W, "gptq", X=X, bits=bits, group_size=group_size)
    N, K = W.shape
    if H is None:
        if X is None:
            raise InputError("gptq: give the Hessian H or the activations X")
        H = hessian(X)
    H = np.array(H, F32, order="C")        # a copy of our own, as X's in hessian
    if H.shape != (K, K):
        raise InputError(f"gptq: Hessian must have shape ({K}, {K}), got {H.shape}")
    if not np.isfinite(H).all():
        raise InputError("gptq: Hessian has non-finite values")
    if not (isinstance(block_size, (int, np.integer)) and block_size > 0):
        raise InputError(f"gptq: block_size must be a positive integer, got {block_size!r}")
    if not damp >= 0:
        raise InputError(f"gptq: damp must be >= 0, got {damp!r}")
    g = K if group_size == -1 else group_size
    W = W.copy()

    # 1. per-channel grid: from the whole weight, before anything else touches it
    scale, zero = _params(W, bits, sym) if group_size == -1 else (None, None)
    groups = None
    if static_groups and grids_before_dead:
        groups = [_params(W[:, i:i + g], bits, sym) for i in range(0, K, g)]
    # 2. dead inputs (never active): H_ii = 1, weight column zeroed
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    # 3. static groups: every group's grid from the (dead-zeroed) original weights
    if static_groups and groups is None:
        groups = [_params(W[:, i:i + g], bits, sym) for i in range(0, K, g)]
    # 4. act-order: permute columns (and H) by descending diag(H); argsort is stable
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    W = W[:, perm]
    H = H[perm][:, perm]
    # 5. dampen, then the upper Cholesky factor of H⁻¹
    H[np.arange(K), np.arange(K)] += F32(damp) * np.mean(np.diag(H), dtype=F32)
    U = _inverse_hessian_factor(H)

    codes = np.zeros((N, K), np.uint8)
    scales, zeros = [], []
    # 6. lazy blocks of columns
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size != -1:
                if static_groups:
                    scale, zero = groups[perm[col] // g]
                elif col % g == 0:
                    # the group's grid from W as updated by earlier *blocks* (the references
                    # read W here, not W1: updates from earlier columns of this block are absent)
                    scale, zero = _params(W[:, col:col + g], bits, sym)
                    scales.append(scale)
                    zeros.append(zero)
            w = W1[:, i:i + 1]
            q = affine.quantize_gptq(w, scale, zero, (1, 1), bits)
            w_hat = affine.dequantize_gptq(q, scale, zero, (1, 1))
            codes[:, col] = q[:, 0]
            err = (w[:, 0] - w_hat[:, 0]) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:]).astype(F32)
            Err1[:, i] = err
        W[:, i1:i2] = W1
        # 7. the block's error reaches every later column at once
        W[:, i2:] -= (Err1 @ U[i1:i2, i2:]).astype(F32)

    # 8. grids and g_idx in the stored layout, codes back in the original column order
    if group_size == -1:
        scales, zeros = [scale], [zero]
    elif static_groups:
        scales, zeros = [s for s, _ in groups], [z for _, z in groups]
    inv = np.argsort(perm)
    if static_groups:
        g_idx = (np.arange(K) // g).astype(np.int32)
    else:
        g_idx = (np.arange(K) // g).astype(np.int32)[inv]
    return QuantizedLinear(codes[:, inv], np.concatenate(scales, axis=1).astype(F32),
                           np.concatenate(zeros, axis=1).astype(F32), g_idx, bits, group_size, sym)
