"""What a float-accumulating quantized matmul must compute, and the error it may have.

A kernel that multiplies dequantized operands and sums K products in float32 is not
bit-reproducible (its order is its own), so it is checked against a bound instead:

    R = A @ W.T in float64 from the exactly dequantized operands, S = |A| @ |W|.T,
    |Y - R| <= gamma * S + u_out * |R| + eta_out / 2,      gamma = K * 2**-24.

gamma * S covers the float32 accumulation, which never exceeds K unit roundoffs of the sum of
magnitudes (the standard gamma_K < K u bound, K u << 1); u_out * |R| covers the final rounding
to the output type, and eta_out / 2 (half its smallest subnormal) a result that underflows.
"""
from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
SMALLEST_SUBNORMAL = {"float64": 2.0 ** -1074, "float32": 2.0 ** -149, "float16": 2.0 ** -24, "bfloat16": 2.0 ** -133}
FP32_ACCUMULATION = 2.0 ** -24


def fp_accumulation_bound(A, W, out_dtype: str, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, bound) for Y ~ A @ W.T: A (M, K) and W (N, K) the exactly dequantized operands
    (anything float64 holds exactly), out_dtype the result's dtype name ("float32", "float16",
    "bfloat16", "float64"), K the number of products each output sums in float32."""
    if out_dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"out_dtype must be one of {sorted(UNIT_ROUNDOFF)}, got {out_dtype!r}")
    a = np.asarray(A, dtype=np.float64)
    w = np.asarray(W, dtype=np.float64)
    r = a @ w.T
    s = np.abs(a) @ np.abs(w).T
    bound = K * FP32_ACCUMULATION * s + UNIT_ROUNDOFF[out_dtype] * np.abs(r) + SMALLEST_SUBNORMAL[out_dtype] / 2
    return r, bound
