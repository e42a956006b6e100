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
# Matmul operands (refquant.gemm schemes, ggml vec_dot)
# ---------------------------------------------------------------------------------------------

# Block kinds whose values keep every float32 product and partial sum finite and normal in a
# matmul of modest K with the scales drawn below: refquant.gemm's bound, like every gamma bound,
# assumes no underflow or overflow. Integer schemes (bit-exact) take the subnormal kind too.
MATMUL_KINDS = ("zeros", "neg_zeros", "ties", "outlier", "gaussian", "positive")
EXACT_MATMUL_KINDS = MATMUL_KINDS + ("subnormal",)


@st.composite
def activations(draw, K: int, max_rows: int = 3, kinds=MATMUL_KINDS) -> np.ndarray:
    """Float32 activations (M, K), K a multiple of 32, blocks of 32 of drawn kinds."""
    M = draw(st.integers(1, max_rows))
    blocks = [draw(float_block(32, kinds)) for _ in range(M * (K // 32))]
    return np.concatenate(blocks).reshape(M, K)


@st.composite
def w4a16_weights(draw, max_n: int = 8, max_groups: int = 4):
    """A refquant.gemm.W4A16Weight: codes, zeros in [0, 15], scales of many magnitudes, and a
    g_idx that is either trivial or a random act-order permutation of the groups."""
    from ..gemm import W4A16Weight
    N = draw(st.integers(1, max_n))
    ng = draw(st.integers(1, max_groups))
    G = draw(st.sampled_from([32, 64, 128]))
    K = ng * G
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (N, K)).astype(np.uint8)
    zeros = rng.integers(0, 16, (N, ng)).astype(np.uint8)
    mag = draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6]))
    scales = (rng.random((N, ng)) * mag).astype(F32)
    g_idx = (np.arange(K) // G).astype(np.int32)
    if draw(st.booleans()):
        g_idx = rng.permutation(g_idx).astype(np.int32)
    return W4A16Weight(codes, scales, zeros, g_idx)


@st.composite
def w8a8_weights(draw, max_n: int = 8, max_blocks: int = 4):
    from ..gemm import W8A8Weight
    N = draw(st.integers(1, max_n))
    K = 32 * draw(st.integers(1, max_blocks))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(-128, 128, (N, K)).astype(np.int8)
    if draw(st.booleans()):
        codes[:, :] = draw(st.sampled_from([-128, -127, 127, 0]))
    mag = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3]))
    scales = (rng.random(N) * mag).astype(F32)
    return W8A8Weight(codes, scales)


@st.composite
def fp8_weights(draw, max_n: int = 140, max_k: int = 300):
    """A refquant.gemm.FP8Weight: any non-NaN e4m3fn codes, per-tensor / per-channel /
    128x128-block scales; N and K not multiples of 128 included."""
    from ..gemm import FP8_BLOCK, FP8Weight
    N = draw(st.integers(1, max_n))
    K = 32 * draw(st.integers(1, max_k // 32))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 256, (N, K)).astype(np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x7E  # no NaN codes
    gran = draw(st.sampled_from(["tensor", "channel", "block"]))
    shape = {"tensor": (), "channel": (N,), "block": (-(-N // FP8_BLOCK), -(-K // FP8_BLOCK))}[gran]
    mag = draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3]))
    scale = np.asarray(rng.random(shape) * mag + mag * 1e-3, dtype=F32)
    return FP8Weight(codes, scale)


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



# --------------------------------------------------------------------------- calibration layers

@st.composite
def calibration_layers(draw, max_out: int = 6, ks=(8, 16, 32), max_tokens: int = 48):
    """(W, X): a float32 weight (N, K) and calibration activations (n, K) for the PTQ algorithms.
    Drawn from a seed: Gaussian weights of a drawn magnitude, activations mixed through a random
    matrix (correlated inputs, as GPTQ needs to matter), some input channels scaled up as
    outliers (as AWQ and SmoothQuant need to matter), an occasional dead (all-zero) channel."""
    K = draw(st.sampled_from(ks))
    N = draw(st.integers(1, max_out))
    n = draw(st.integers(2, max_tokens))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    W = (rng.standard_normal((N, K)) * draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0]))).astype(F32)
    X = rng.standard_normal((n, K)) @ (np.eye(K) + draw(st.sampled_from([0.0, 0.3, 1.0])) * rng.standard_normal((K, K)))
    outliers = rng.random(K) < draw(st.sampled_from([0.0, 0.1, 0.3]))
    X[:, outliers] *= draw(st.sampled_from([10.0, 100.0]))
    if draw(st.booleans()):
        X[:, rng.integers(0, K)] = 0
    return W, X.astype(F32)
