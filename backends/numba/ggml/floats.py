"""Numba twin of refquant/ggml/floats.py: F16 and BF16 (F32 is a byte view: the spec's own
function is already as fast as a copy, so this backend does not claim it)."""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..numerics import FP16_TABLE, JIT, U64, fp32_to_bf16_bits, fp32_to_fp16_bits

PJIT = dict(JIT, parallel=True)


@njit(**PJIT)
def _to_f16(x, out):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = fp32_to_fp16_bits(x[r, j])


@njit(**PJIT)
def _to_bf16(x, out):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = fp32_to_bf16_bits(x[r, j])


@njit(**PJIT)
def _from_f16(h, out):
    for r in prange(h.shape[0]):
        for j in range(h.shape[1]):
            out[r, j] = FP16_TABLE[h[r, j]]


@njit(**PJIT)
def _from_bf16(h, out, nchunks):
    """h, out: the whole array flattened, cut into nchunks contiguous chunks (one per thread), each
    a loop with unsigned offsets that LLVM vectorises (see ..numerics): a memory-bound shift, a
    fifth faster than a loop per row."""
    n = h.shape[0]
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        lo = U64(min(n, c * step))
        hi = U64(min(n, (c + 1) * step))
        for i in range(lo, hi):
            out[i] = np.uint32(h[i]) << np.uint32(16)


def quantize_f16(x, imatrix=None):
    out = np.empty(x.shape, "<u2")
    _to_f16(np.ascontiguousarray(x), out)
    return out.view(np.uint8)


def quantize_bf16(x, imatrix=None):
    out = np.empty(x.shape, "<u2")
    _to_bf16(np.ascontiguousarray(x), out)
    return out.view(np.uint8)


def dequantize_f16(data):
    h = np.ascontiguousarray(data).view("<u2")
    out = np.empty(h.shape, np.float32)
    _from_f16(h, out)
    return out


def dequantize_bf16(data):
    h = np.ascontiguousarray(data).view("<u2")
    out = np.empty(h.shape, np.uint32)
    _from_bf16(h.reshape(-1), out.reshape(-1), max(1, numba.get_num_threads()))
    return out.view(np.float32)


# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_backend_numba.py holds it equal to the tables.
DECLARES = {"quantize": "F16 BF16", "dequantize": "F16 BF16"}
QUANTIZE = {"F16": quantize_f16, "BF16": quantize_bf16}
DEQUANTIZE = {"F16": dequantize_f16, "BF16": dequantize_bf16}
