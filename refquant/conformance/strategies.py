"""Hypothesis strategies for quantizer inputs, for refquant's own tests and for anyone's.

    from refquant.conformance.strategies import float_rows
    @given(float_rows(block_size=32))
    def test_mine(x): ...

`float_rows` draws a float32 matrix (nrows, nblocks * block_size) whose blocks are each of one
kind, chosen per block: arbitrary finite floats, all zero, all -0, constant, exact ties of the
common scale rules, subnormals, values whose scale overflows fp16, outliers, normal-like weights,
and blocks whose minimum is positive.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)

BLOCK_KINDS = ("arbitrary", "zeros", "neg_zeros", "constant", "ties", "subnormal", "fp16_overflow",
               "outlier", "gaussian", "positive", "huge")

# Integer grid sizes at which the common formats put their extreme code: Q4_0 (-8), Q5_0 (-16),
# Q8_0 (127), Q4_1 (15), Q5_1 (31), K-quant grids (3, 7, 31, 63), MX/E2M1 (6), E4M3 (448).
TIE_GRIDS = (1, 2, 3, 4, 6, 7, 8, 15, 16, 31, 32, 63, 127, 448)

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def f32_range(lo: float, hi: float):
    """float32 values in [lo, hi] (bounds rounded to float32 first)."""
    return st.floats(float(F32(lo)), float(F32(hi)), width=32)


@st.composite
def float_block(draw, n: int, kinds=BLOCK_KINDS) -> np.ndarray:
    kind = draw(st.sampled_from(kinds))
    if kind == "arbitrary":
        return draw(hnp.arrays(F32, n, elements=finite_f32))
    if kind == "zeros":
        return np.zeros(n, F32)
    if kind == "neg_zeros":
        mask = draw(hnp.arrays(np.bool_, n))
        return np.where(mask, F32(-0.0), F32(0.0)).astype(F32)
    if kind == "constant":
        v = draw(finite_f32)
        return np.full(n, v, F32)
    if kind == "ties":
        # Values k/2 * s with s a power of two and one element at ±M*s: with a scale rule that
        # maps the extreme to M, every other value lands exactly halfway between two codes.
        e = draw(st.integers(-20, 20))
        s = np.ldexp(F32(1), e)
        M = draw(st.sampled_from(TIE_GRIDS))
        k = draw(hnp.arrays(np.int32, n, elements=st.integers(-2 * M + 1, 2 * M - 1)))
        x = (k.astype(F32) * F32(0.5)) * s
        i = draw(st.integers(0, n - 1))
        x[i] = draw(st.sampled_from([1, -1])) * F32(M) * s
        return x.astype(F32)
    if kind == "subnormal":
        bits = draw(hnp.arrays(np.uint32, n, elements=st.integers(0, 0x007FFFFF)))
        signs = draw(hnp.arrays(np.uint32, n, elements=st.sampled_from([0, 0x80000000])))
        return (bits | signs).view(F32)
    if kind == "fp16_overflow":
        # amax from 6.5e4 up to 1e38: fp16 scales overflow to inf for most rules
        mag = draw(f32_range(6.5e4, 1e38))
        x = draw(hnp.arrays(F32, n, elements=f32_range(-1, 1)))
        x = (x * F32(mag)).astype(F32)
        x[draw(st.integers(0, n - 1))] = F32(mag)
        return x
    if kind == "outlier":
        x = draw(hnp.arrays(F32, n, elements=f32_range(-1, 1)))
        x[draw(st.integers(0, n - 1))] = draw(f32_range(-1e4, 1e4).filter(lambda v: abs(v) > 10))
        return x
    if kind == "gaussian":
        seed = draw(st.integers(0, 2**32 - 1))
        scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0]))
        return (np.random.default_rng(seed).standard_normal(n) * scale).astype(F32)
    if kind == "positive":
        lo = draw(f32_range(1e-3, 10))
        return draw(hnp.arrays(F32, n, elements=f32_range(lo, lo * 4)))
    if kind == "huge":
        return draw(hnp.arrays(F32, n, elements=st.floats(-FLT_MAX, FLT_MAX, width=32)
                               .filter(lambda v: abs(v) > 1e30 or v == 0)))
    raise AssertionError(kind)


@st.composite
def float_rows(draw, block_size: int, max_rows: int = 3, max_blocks: int = 4,
               kinds=BLOCK_KINDS, min_blocks: int = 1) -> np.ndarray:
    """A float32 matrix (nrows, nblocks * block_size), every block of a drawn kind."""
    nrows = draw(st.integers(1, max_rows))
    nblocks = draw(st.integers(min_blocks, max_blocks))
    blocks = [draw(float_block(block_size, kinds)) for _ in range(nrows * nblocks)]
    return np.concatenate(blocks).reshape(nrows, nblocks * block_size)


@st.composite
def importance(draw, n: int) -> np.ndarray:
    """An importance matrix row (n,): non-negative float32, with zeros and wide ranges."""
    kind = draw(st.sampled_from(["uniform", "ones", "sparse", "wide"]))
    if kind == "ones":
        return np.ones(n, F32)
    if kind == "uniform":
        seed = draw(st.integers(0, 2**32 - 1))
        return np.random.default_rng(seed).random(n).astype(F32)
    if kind == "sparse":
        v = draw(hnp.arrays(F32, n, elements=f32_range(0, 100)))
        mask = draw(hnp.arrays(np.bool_, n))
        return np.where(mask, v, F32(0)).astype(F32)
    return draw(hnp.arrays(F32, n, elements=f32_range(0, 1e6)))


@st.composite
def float_tensors(draw, dtypes=("float32",), max_blocks: int = 24, block: int = 32,
                  kinds=BLOCK_KINDS) -> np.ndarray:
    """A tensor of any length (not a multiple of anything), 1-D or 2-D, in one of `dtypes`
    ("float32", "float16", "bfloat16"): runs of `block` values of the float_block kinds, cut to
    a drawn length. Values beyond the dtype's range are clipped to its largest finite value."""
    import ml_dtypes
    nb = draw(st.integers(1, max_blocks))
    x = np.concatenate([draw(float_block(block, kinds)) for _ in range(nb)])
    n = draw(st.integers(1, x.size))
    x = x[:n]
    dt = np.dtype({"float32": np.float32, "float16": np.float16,
                   "bfloat16": ml_dtypes.bfloat16}[draw(st.sampled_from(dtypes))])
    big = F32(np.finfo(np.float16).max) if dt == np.float16 else F32(3.3895313e38)
    x = np.clip(x, -big, big).astype(dt)
    rows = draw(st.sampled_from([d for d in (1, 2, 3, 4) if n % d == 0]))
    return x.reshape(rows, n // rows) if draw(st.booleans()) else x
