"""LLM.int8() (Dettmers et al. 2022) as bitsandbytes computes it on the CPU
(bitsandbytes.functional int8_vectorwise_quant, int8_vectorwise_dequant, int8_linear_matmul,
int8_mm_dequant; bitsandbytes.MatMul8bitLt for the outlier decomposition).

    A (M, K) 16/32-bit  --int8_vectorwise_quant-->  CA int8 (M, K), SCA float32 (M,) = row absmax
    W (N, K)            --int8_vectorwise_quant-->  CB int8 (N, K), SCB float32 (N,)  ("SCB")
    C = CA @ CB.T in int32 (exact)
    Y = C * SCA[:, None] * SCB[None, :] / 127**2        (int8_mm_dequant)

With a threshold, every column of A holding a value with |a| >= threshold is an outlier
column: those columns are zeroed before A is quantized and multiplied in 16-bit instead,
Y += A[:, cols] @ dequant(CB[:, cols]).T.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from ..numerics import F32
from .blockwise import BF16, DTYPES, _to_dtype, dtype_name

INT8_MAX = 127
# bitsandbytes' PyTorch (CPU) int8_mm_dequant multiplies by this literal, meant as 1/127**2 =
# 6.2000124e-05 but written with a digit dropped: 1.8e-5 too large (spec/divergences-bnb.md).
MM_DEQUANT_CONST_CPU = F32(6.200124e-05)
# int8_vectorwise_dequant multiplies by float32(1/127).
INV_127 = F32(7.874015718698502e-3)


def _matrix(A, what: str) -> tuple[np.ndarray, str]:
    if not isinstance(A, np.ndarray):
        raise InputError(f"{what} must be a numpy.ndarray, got {type(A).__name__}")
    name = dtype_name(A.dtype)
    if A.ndim != 2 or A.size == 0:
        raise InputError(f"{what} must be a non-empty 2-D matrix (rows, K), got shape {A.shape}")
    if not np.isfinite(A.astype(F32)).all():
        raise InputError(f"{what} has a non-finite value; refquant refuses NaN/Inf")
    return A, name


def int8_vectorwise_quant(A: np.ndarray, threshold: float = 0.0):
    """Row-wise absmax quantization to int8, with LLM.int8()'s outlier columns.

    1. threshold > 0: outliers are |A| >= threshold, compared in A's dtype (the threshold is
       rounded to it); outlier_cols = the sorted columns holding any (int64, empty if none);
       the outliers are set to 0 for the next two steps. threshold == 0: outlier_cols = None.
    2. row_stats = max |A| per row, as float32.
    3. CA = round_half_even(A * (127 * (1 / row_stats))) in float32 (1/row_stats rounded, then
       times 127 rounded, then the product rounded), stored as int8. A zero row gives 0 * inf,
       NaN, which converts to 0.
    4. with more than one row, the outlier columns of CA are set to 0.
    Returns (CA int8 (M, K), row_stats float32 (M,), outlier_cols).
    """
    A, name = _matrix(A, "A")
    a = A.astype(F32)
    outlier_cols = None
    if threshold > 0.0:
        thr = np.array(threshold, dtype=DTYPES[name]).astype(F32)
        outliers = np.abs(a) >= thr
        outlier_cols = np.flatnonzero(outliers.any(axis=0)).astype(np.int64)
        a = np.where(outliers, F32(0), a).astype(F32)
    row_stats = np.abs(a).max(axis=1).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = ((F32(1) / row_stats) * F32(INT8_MAX)).astype(F32)
        v = np.round((a * s[:, None]).astype(F32))
        ca = np.where(np.isnan(v), 0, v).astype(np.int8)
    if outlier_cols is not None and A.shape[0] > 1:
        ca[:, outlier_cols] = 0
    return ca, row_stats, outlier_cols


def int8_vectorwise_dequant(CA: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """float32: (CA * stats[:, None]) * float32(1/127), each product rounded."""
    CA = np.asarray(CA)
    if CA.dtype != np.int8:
        raise InputError(f"CA must be int8, got {CA.dtype}")
    st = np.asarray(stats, F32).reshape(-1, 1)
    return ((CA.astype(F32) * st).astype(F32) * INV_127).astype(F32)


def int8_linear_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """C = A @ B.T for int8 A (M, K) and B (N, K), accumulated exactly in 32-bit integers
    (|C| <= K * 127 * 128 stays in range for K <= 132104; beyond, it wraps as int32 does)."""
    A, B = np.asarray(A), np.asarray(B)
    if A.dtype != np.int8 or B.dtype != np.int8:
        raise InputError(f"int8_linear_matmul takes int8 operands, got {A.dtype} and {B.dtype}")
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise InputError(f"int8_linear_matmul: A (M, K) and B (N, K) must share K, got {A.shape} and {B.shape}")
    return (A.astype(np.int64) @ B.astype(np.int64).T).astype(np.int32)


def int8_mm_dequant(C: np.ndarray, row_stats: np.ndarray, col_stats: np.ndarray,
                    bias: Optional[np.ndarray] = None, out_dtype: str = "float16",
                    rule: str = "bnb-cpu") -> np.ndarray:
    """Y = C * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias), in out_dtype.

    rule "bnb-cpu" is bitsandbytes' CPU arithmetic, bit for bit: float32
        ((float(C) * (row * col)) * 6.200124e-05) + bias, then rounded to out_dtype.
    rule "exact" evaluates the definition in float64 and rounds once to out_dtype.
    """
    C = np.asarray(C)
    if C.dtype != np.int32:
        raise InputError(f"C must be int32, got {C.dtype}")
    r = np.asarray(row_stats, F32).reshape(-1, 1)
    c = np.asarray(col_stats, F32).reshape(1, -1)
    if rule == "bnb-cpu":
        with np.errstate(over="ignore", invalid="ignore"):
            y = ((C.astype(F32) * (r * c).astype(F32)).astype(F32) * MM_DEQUANT_CONST_CPU).astype(F32)
            if bias is not None:
                y = (y + np.asarray(bias).astype(F32)).astype(F32)
    elif rule == "exact":
        y64 = C.astype(np.float64) * r.astype(np.float64) * c.astype(np.float64) / float(INT8_MAX ** 2)
        if bias is not None:
            y64 = y64 + np.asarray(bias).astype(np.float64)
        return _round_f64(y64, out_dtype)
    else:
        raise InputError(f"rule must be 'bnb-cpu' or 'exact', got {rule!r}")
    return _to_dtype(y, out_dtype)


def _round_f64(y: np.ndarray, out_dtype: str) -> np.ndarray:
    """float64 -> out_dtype, to nearest even (bfloat16 goes through float32 first)."""
    if out_dtype == "float16":
        return y.astype(np.float16)
    if out_dtype == "bfloat16":
        return y.astype(BF16)
    return y.astype(F32)


def int8_mixed_matmul(A: np.ndarray, CB: np.ndarray, SCB: np.ndarray, threshold: float = 0.0,
                      bias: Optional[np.ndarray] = None):
    """bitsandbytes' LLM.int8() forward on the CPU (MatMul8bitLt), in its parts.

    1. CA, SCA, cols = int8_vectorwise_quant(A cast to float16, threshold)
    2. Y8 = int8_mm_dequant(CA @ CB.T, SCA, SCB, bias) in A's dtype            (bit-exact)
    3. threshold > 0: subA = A[:, cols] (A's dtype, unchanged),
       subB = int8_vectorwise_dequant(CB[:, cols], SCB) rounded to A's dtype     (bit-exact)
       Y = Y8 + subA @ subB.T: a 16-bit matmul, which refquant evaluates in float64 and
       rounds once (bitsandbytes' addmm rounds as its BLAS does; see refquant.gemm).
    Returns (Y, Y8, subA (M, ncols), subB (N, ncols), cols); subA and subB are None without
    outlier columns (then Y is Y8).
    """
    A, name = _matrix(A, "A")
    CB = np.asarray(CB)
    if CB.dtype != np.int8 or CB.ndim != 2 or CB.shape[1] != A.shape[1]:
        raise InputError(f"CB must be int8 (N, K) with K = {A.shape[1]}, got {CB.dtype} {CB.shape}")
    a16 = A.astype(F32).astype(np.float16)
    CA, SCA, cols = int8_vectorwise_quant(a16, threshold)
    y8 = int8_mm_dequant(int8_linear_matmul(CA, CB), SCA, SCB, bias=bias, out_dtype=name)
    if threshold <= 0.0 or cols is None or cols.size == 0:
        return y8, y8, None, None, cols
    subA = A[:, cols]
    subB = _to_dtype(int8_vectorwise_dequant(np.ascontiguousarray(CB[:, cols]), SCB), name)
    y64 = y8.astype(np.float64) + subA.astype(np.float64) @ subB.astype(np.float64).T
    return _round_f64(y64, name), y8, subA, subB, cols
