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

# The grid a format maps its extreme value to, where one rule fixes it: ties blocks for that
# format are drawn on it half of the time.
FORMAT_TIE_GRIDS = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 127, "Q8_1": 127, "Q4_1": 15, "Q5_1": 31, "Q8_K": 127}


def tie_grids_for(name: str) -> tuple:
    g = FORMAT_TIE_GRIDS.get(name.upper())
    return TIE_GRIDS if g is None else (g,) * len(TIE_GRIDS) + TIE_GRIDS

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def f32_range(lo: float, hi: float):
    """float32 values in [lo, hi] (bounds rounded to float32 first)."""
    return st.floats(float(F32(lo)), float(F32(hi)), width=32)


@st.composite
def float_block(draw, n: int, kinds=BLOCK_KINDS, tie_grids=TIE_GRIDS) -> np.ndarray:
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
        # maps the extreme to M, every odd k lands exactly halfway between two codes.
        e = draw(st.integers(-20, 20))
        s = np.ldexp(F32(1), e)
        M = draw(st.sampled_from(tie_grids))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        k = rng.integers(-2 * M + 1, 2 * M, n)
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
               kinds=BLOCK_KINDS, min_blocks: int = 1, tie_grids=TIE_GRIDS) -> np.ndarray:
    """A float32 matrix (nrows, nblocks * block_size), every block of a drawn kind. Ties
    blocks are drawn twice as often as each other kind: rounding rules are where
    implementations most often part."""
    nrows = draw(st.integers(1, max_rows))
    nblocks = draw(st.integers(min_blocks, max_blocks))
    weighted = tuple(kinds) + (("ties",) if "ties" in kinds else ())
    blocks = [draw(float_block(block_size, weighted, tie_grids)) for _ in range(nrows * nblocks)]
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


# ---------------------------------------------------------------------------------------------
# Element formats (refquant.minifloat): values on, between and just off a binary float grid
# ---------------------------------------------------------------------------------------------

@st.composite
def grid_floats(draw, mbits: int, emin: int, emax: int, max_size: int = 64) -> np.ndarray:
    """A float32 array of values around the grid of a float format with `mbits` mantissa bits and
    exponents emin..emax: grid points, midpoints between neighbours (the ties), one float32
    ulp either side of those, values past the top and below the bottom, ±0, ±Inf, NaN, and
    arbitrary float32 — mixed, with random signs."""
    n = draw(st.integers(1, max_size))
    kinds = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 5)))
    e = draw(hnp.arrays(np.int32, n, elements=st.integers(emin - mbits - 2, emax + 2)))
    m = draw(hnp.arrays(np.int64, n, elements=st.integers(0, (1 << (mbits + 1)) - 1)))
    nudge = draw(hnp.arrays(np.int8, n, elements=st.integers(-1, 1)))
    # grid point (even numerator) or midpoint (odd numerator) of 2^(mbits+1) + m, scaled
    num = ((1 << (mbits + 1)) + m).astype(np.float64)
    with np.errstate(over="ignore"):   # the top exponents run past float32: Inf is an input too
        v = np.ldexp(num, e - (mbits + 1)).astype(F32)
        v = np.where(kinds == 1, np.ldexp(np.floor(num / 2) * 2, e - (mbits + 1)).astype(F32), v)
    bits = v.view(np.int32) + nudge.astype(np.int32)
    v = np.where(kinds <= 1, v, bits.view(F32)).astype(F32)
    other = draw(hnp.arrays(F32, n, elements=st.floats(width=32)))
    v = np.where(kinds == 5, other, v)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], F32)
    pick = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 4)))
    v = np.where(kinds == 4, specials[pick], v)
    sign = draw(hnp.arrays(np.bool_, n))
    return np.where(sign & (kinds != 4), -v, v).astype(F32)


# ---------------------------------------------------------------------------------------------
# Inputs that stress the scale searches (make_qx_quants, make_qkx2_quants, make_qp_quants, ...)
# ---------------------------------------------------------------------------------------------

SEARCH_KINDS = ("lattice", "near_lattice", "one_outlier", "positive_min", "negative_only",
                "two_levels", "sparse", "offset")

# Grid sizes of the K-quant searches: Q2_K (3), Q3_K (4), Q4_K (15), Q5_K (31), Q6_K (32),
# the 6-bit and 4-bit scale grids (63, 15), and one step either side of some.
SEARCH_GRIDS = (2, 3, 4, 5, 7, 8, 14, 15, 16, 30, 31, 32, 33, 62, 63, 64, 127)


@st.composite
def search_block(draw, n: int) -> np.ndarray:
    """A block built to make a search's candidates compare (nearly) equal:

    - lattice: integers k * s on a grid of a search's size, so several candidate scales give the
      same levels and the same error (exact ties, decided by a strict comparison);
    - near_lattice: the same moved by a few ulps, so candidates differ in the last bits;
    - one_outlier: normal-like values with one far larger value;
    - positive_min / negative_only: every value on one side of zero (the minimum is clamped to 0,
      or the maximum is below 0);
    - two_levels: two distinct values (degenerate least-squares systems);
    - sparse: mostly zeros with a few values (zero sub-blocks inside a super-block);
    - offset: a large constant plus a tiny spread, so least-squares sums cancel catastrophically
      (fitted scales can come out negative, minimums positive).
    """
    kind = draw(st.sampled_from(SEARCH_KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    s = np.ldexp(F32(1), draw(st.integers(-24, 12)))
    if kind in ("lattice", "near_lattice"):
        M = draw(st.sampled_from(SEARCH_GRIDS))
        lo = draw(st.sampled_from([-M, 0, -M // 2]))
        x = (rng.integers(lo, M + 1, n).astype(F32) * s).astype(F32)
        if kind == "near_lattice":
            steps = rng.integers(-3, 4, n)
            for _ in range(3):
                x = np.where(steps > 0, np.nextafter(x, F32(np.inf)), x)
                x = np.where(steps < 0, np.nextafter(x, F32(-np.inf)), x)
                steps = steps - np.sign(steps)
            x = x.astype(F32)
        return x
    if kind == "one_outlier":
        x = (rng.standard_normal(n) * F32(0.02)).astype(F32)
        x[rng.integers(0, n)] = F32(draw(st.sampled_from([-1, 1])) * draw(f32_range(0.1, 1e4)))
        return x
    if kind == "positive_min":
        lo = draw(f32_range(1e-4, 1e3))
        return (lo + rng.random(n).astype(F32) * lo * F32(draw(st.sampled_from([0.01, 0.5, 3.0])))).astype(F32)
    if kind == "negative_only":
        return (-(rng.random(n) + F32(0.01)) * s).astype(F32)
    if kind == "two_levels":
        a, b = draw(finite_f32.filter(lambda v: abs(v) < 1e30)), draw(finite_f32.filter(lambda v: abs(v) < 1e30))
        return np.where(rng.random(n) < 0.5, F32(a), F32(b)).astype(F32)
    if kind == "offset":
        c = F32(draw(st.sampled_from([-1, 1])) * draw(f32_range(1e-3, 1e6)))
        spread = F32(draw(st.sampled_from([1e-7, 1e-6, 1e-5, 1e-3])))
        return (c + c * spread * rng.standard_normal(n).astype(F32)).astype(F32)
    if kind == "sparse":
        x = np.zeros(n, F32)
        k = draw(st.integers(1, 3))
        x[rng.integers(0, n, k)] = (rng.standard_normal(k) * s).astype(F32)
        return x
    raise AssertionError(kind)


@st.composite
def search_rows(draw, block_size: int, sub_block: int, max_rows: int = 2, max_blocks: int = 2) -> np.ndarray:
    """A float32 matrix (nrows, nblocks * block_size) whose sub-blocks of `sub_block` values are
    each drawn on its own, from search_block or float_block kinds, so one super-block mixes
    zero, tiny, huge, tied and outlier sub-blocks."""
    nrows = draw(st.integers(1, max_rows))
    nblocks = draw(st.integers(1, max_blocks))
    nsub = nrows * nblocks * (block_size // sub_block)
    use_search = draw(st.lists(st.booleans(), min_size=nsub, max_size=nsub))
    parts = [draw(search_block(sub_block)) if u else draw(float_block(sub_block)) for u in use_search]
    return np.concatenate(parts).reshape(nrows, nblocks * block_size).astype(F32)
