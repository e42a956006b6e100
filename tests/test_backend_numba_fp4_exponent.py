"""The Numba backend's MXFP4 shared exponent (backends/numba/ggml/fp4.py: mxfp4_exponent_code,
from amax's bits and a per-binade threshold table) against the spec's NumPy rule
refquant.ggml.fp4.mxfp4_shared_exponent, (uint8_t)(floorf(log2f(amax)) - 2 + 127), itself held
bit-exact against ggml by tests/test_iq4_lowbit_fp4_vs_ggml.py.

By default: every binade's first and last 4096 floats (where log2 rounds up to the next integer)
and every float around each threshold, plus 0. The thorough profile (make test-deep) checks all
2^31 - 2^23 positive finite float32, in chunks."""
import os

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from refquant.ggml.fp4 import mxfp4_shared_exponent                     # noqa: E402
from refquant_backends.numba.ggml import fp4 as nfp4                    # noqa: E402

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


@numba.njit(parallel=True, cache=False)
def _codes(bits, out):
    for i in numba.prange(bits.shape[0]):
        out[i] = nfp4.mxfp4_exponent_code(bits[i:i + 1].view(np.float32)[0])


def _both(bits):
    bits = np.ascontiguousarray(bits, dtype=np.uint32)
    got = np.empty(bits.shape[0], np.uint8)
    _codes(bits, got)
    return got, mxfp4_shared_exponent(bits.view(np.float32))


def _check(bits):
    got, want = _both(bits)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} floats differ, first bits {int(bits[bad[0]]):#010x}: "
                           f"{int(got[bad[0]])} against the spec's {int(want[bad[0]])}")


def test_table_steps_where_an_independent_floor_says():
    """Each binade's low code is (k + 125) mod 256 for the binade's floor(log2) k, the high one k + 1's:
    read off the exponent bits, not the spec."""
    lo, hi = nfp4._binade_bounds()
    k = np.concatenate([np.arange(23) - 149, np.arange(1, 255) - 127])
    assert np.array_equal(nfp4.MX_CODE_LO, ((k + 125) % 256).astype(np.uint8))
    steps = nfp4.MX_THRESHOLD < hi
    assert np.array_equal(nfp4.MX_CODE_HI[steps], ((k[steps] + 126) % 256).astype(np.uint8))
    assert np.array_equal(nfp4.MX_CODE_HI[~steps], nfp4.MX_CODE_LO[~steps])
    # log2 rounds up below 2^k for large |k| (a float32 log2 near k is coarse): some binades step
    assert steps.sum() > 100 and np.all(nfp4.MX_THRESHOLD[steps] > lo[steps])


def test_every_binades_edges_and_thresholds():
    lo, hi = nfp4._binade_bounds()
    parts = [np.zeros(1, np.int64)]
    for a, b, t in zip(lo, hi, nfp4.MX_THRESHOLD.astype(np.int64)):
        parts += [np.arange(a, min(b, a + 4096)), np.arange(max(a, b - 4096), b),
                  np.arange(max(a, t - 64), min(b, t + 64))]
    _check(np.unique(np.concatenate(parts)))


def test_quantize_matches_the_spec_near_powers_of_two():
    """Blocks whose amax sits just below and at 2^k, through the backend's quantizer."""
    from refquant.ggml.fp4 import quantize_mxfp4
    rng = np.random.default_rng(7)
    k = np.arange(-140, 120, dtype=np.int64)
    amax = np.concatenate([np.ldexp(np.float32(1), k).astype(np.float32).view(np.uint32) - d
                           for d in (0, 1, 2, 30, 60)]).view(np.float32)
    x = (rng.standard_normal((amax.size, 32)).astype(np.float32) * amax[:, None] / np.float32(8)).astype(np.float32)
    x[:, 5] = -amax
    assert np.array_equal(nfp4.quantize_mxfp4(x), quantize_mxfp4(x))


@pytest.mark.skipif(not DEEP, reason="all 2^31 positive finite float32: minutes on 2 cores; run by "
                                     "make test-deep (the thorough profile)")
def test_every_positive_finite_float32():
    step = 1 << 24
    for start in range(1, 0x7F800000, step):
        _check(np.arange(start, min(start + step, 0x7F800000), dtype=np.uint32))
