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


# --------------------------------------------------------------------------- affine / FP8 inputs

def as_float_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """float32 -> float16 / bfloat16 / float32 as torch's .to() does (round to nearest even),
    with values beyond the target's range clipped to its largest finite value first."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return x.astype(np.float32)
    big = float(np.finfo(dtype).max) if dtype == np.float16 else 3.3895313892515355e38
    return np.clip(x, -big, big).astype(dtype)


@st.composite
def affine_tie_block(draw, n: int, bits: int) -> np.ndarray:
    """A block whose scale under a common affine rule is a power of two 2^e, every other value
    an exact tie (k + 1/2) * 2^e: symmetric with absmax (2^b - 1)/2 * 2^e (torchao,
    compressed-tensors, GPTQ) or (2^(b-1) - 1) * 2^e (AWQ, absmax/qmax rules), or asymmetric
    with min = -a * 2^e and max = (2^b - 1 - a) * 2^e."""
    e = draw(st.integers(-12, 12))
    s = float(np.ldexp(1.0, e))
    kind = draw(st.sampled_from(["sym_half", "sym_int", "asym"]))
    if kind == "asym":
        a = draw(st.integers(0, 2**bits - 1))
        lo, hi = -a, 2**bits - 1 - a
        ends = [lo, hi]
    else:
        m = (2**bits - 1) / 2 if kind == "sym_half" else 2 ** (bits - 1) - 1
        lo, hi = -m, m
        ends = [draw(st.sampled_from([m, -m]))]
    k = draw(hnp.arrays(np.int32, n, elements=st.integers(int(np.floor(lo)), max(int(np.ceil(hi)) - 1, int(np.floor(lo))))))
    x = np.clip(k.astype(np.float64) + 0.5, lo, hi)
    idx = draw(st.permutations(range(n)))
    for j, v in zip(idx, ends):
        x[j] = v
    return (x * s).astype(np.float32)


@st.composite
def affine_matrix(draw, unit: int = 16, max_rows: int = 4, max_blocks: int = 4, bits: int = 4) -> np.ndarray:
    """A float32 matrix (R, K), K a multiple of `unit`, each `unit`-wide block drawn from
    float_block's kinds or affine_tie_block for `bits`."""
    nrows = draw(st.integers(1, max_rows))
    nblocks = draw(st.integers(1, max_blocks))
    blocks = []
    for _ in range(nrows * nblocks):
        if draw(st.integers(0, 3)) == 0:
            blocks.append(draw(affine_tie_block(unit, bits)))
        else:
            blocks.append(draw(float_block(unit)))
    return np.concatenate(blocks).reshape(nrows, nblocks * unit)


@st.composite
def block_sizes(draw, shape, partial: bool = False, kinds=("tensor", "channel", "group", "block")):
    """A granularity for `shape` (R, K) as a block_size: per-tensor (R, K), per-channel (1, K),
    per-group (1, g) with g dividing K, or a 2-D block (bh, bw) — dividing the shape, or any
    size (edge blocks partial) when `partial`."""
    R, K = shape
    kind = draw(st.sampled_from(kinds))
    if kind == "tensor":
        return kind, (R, K)
    if kind == "channel":
        return kind, (1, K)
    div_k = [d for d in range(1, K + 1) if K % d == 0]
    div_r = [d for d in range(1, R + 1) if R % d == 0]
    if kind == "group":
        return kind, (1, draw(st.sampled_from(div_k)))
    if partial:
        return kind, (draw(st.integers(1, R + 2)), draw(st.integers(1, K + 5)))
    return kind, (draw(st.sampled_from(div_r)), draw(st.sampled_from(div_k)))
