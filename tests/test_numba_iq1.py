"""The Numba backend's IQ1_S and IQ1_M quantizers (backends/numba/ggml/iquants_iq1.py), against
ggml itself and against the spec.

tests/test_backend_numba.py already compares every claim with the spec through
refquant.conformance.suite; the tests here add ggml as the reference on Hypothesis rows, the
inputs where the IQ1 searches are most fragile (ties among equal values in the sort, search-
stress sub-blocks, zero sub-blocks), the refusals, and a matrix with more rows than threads.
The spec's IQ1 searches are slow, so the spec comparisons stay on a few small rows.
"""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows, importance, search_rows
from refquant.errors import InputError
from numba_ir import FAST_MATH_FLAG, FUSED_ASM

pytest.importorskip("numba", reason="the numba extra is not installed")

TYPES = ["IQ1_S", "IQ1_M"]


@pytest.fixture(scope="module")
def nb():
    return refquant.get_backend("refquant_backends.numba:NumbaBackend")


def _same_or_both_refuse(nb, x, qtype, im, want):
    """nb.quantize equals `want()`; where the spec refuses (ggml aborts), numba refuses with the
    same message."""
    try:
        expect = want()
    except InputError as e:
        assert "ggml aborts" in str(e)
        with pytest.raises(InputError) as got:
            nb.quantize(x, qtype, im)
        assert str(got.value) == str(e)
        return
    np.testing.assert_array_equal(nb.quantize(x, qtype, im), expect)


def test_claims(nb):
    for t in TYPES:
        assert nb.supports("quantize", t)


@pytest.mark.parametrize("qtype", TYPES)
@settings(max_examples=30)
@given(data=st.data())
def test_matches_ggml_on_hypothesis_rows(nb, ggml, qtype, data):
    """Direct comparison with ggml_quantize_chunk, with an importance matrix (and without one for
    IQ1_M). Inputs the spec refuses (where ggml aborts; tests/test_iq_grids_vs_ggml.py checks
    that ggml dies on them) must be refused alike."""
    x = data.draw(float_rows(256, max_rows=2, max_blocks=2))
    im = data.draw(importance(x.shape[1])) if qtype == "IQ1_S" or data.draw(st.booleans()) else None
    try:
        ours = nb.quantize(x, qtype, im)
    except InputError as e:
        with pytest.raises(InputError) as spec:
            refquant.quantize(x, qtype, im)
        assert str(e) == str(spec.value)
        return
    if np.abs(x).max() > 1e6:
        # values large enough that ggml could abort (and take this process with it): the spec,
        # which refuses exactly those inputs, has to accept this one first
        np.testing.assert_array_equal(ours, refquant.quantize(x, qtype, im))
    np.testing.assert_array_equal(ours, ggml.quantize(x, qtype, im))


@pytest.mark.parametrize("qtype", TYPES)
def test_sort_ties_and_zero_sub_blocks_match_ggml(nb, ggml, qtype):
    """Few distinct values with distinct weights (the order among equal values, -0 and +0
    included, decides IQ1_M's levels: glibc's stable merge sort), zero sub-blocks among others,
    and a realistic matrix with an outlier."""
    rng = np.random.default_rng(17)
    x = (rng.integers(-2, 3, (8, 512)) * 0.25).astype(np.float32)
    x[:, ::7] = -0.0
    x[0, 0:64] = 0
    x[1, 32:48] = 0
    x[2, :] = 0
    x[2, 40] = 1.0
    im = (rng.random(512) * 4).astype(np.float32)
    np.testing.assert_array_equal(nb.quantize(x, qtype, im), ggml.quantize(x, qtype, im))
    g = (rng.standard_normal((8, 1024)) * 0.02).astype(np.float32)
    g[3, 100] = 0.5
    im = (rng.random(1024) ** 2).astype(np.float32)
    np.testing.assert_array_equal(nb.quantize(g, qtype, im), ggml.quantize(g, qtype, im))
    if qtype == "IQ1_M":
        np.testing.assert_array_equal(nb.quantize(x, qtype), ggml.quantize(x, qtype))
        np.testing.assert_array_equal(nb.quantize(g, qtype), ggml.quantize(g, qtype))


@pytest.mark.parametrize("qtype,sub", [("IQ1_S", 32), ("IQ1_M", 16)])
@settings(max_examples=15)
@given(data=st.data())
def test_search_stress_rows_match_the_spec(nb, qtype, sub, data):
    """The spec's search-stress sub-blocks (lattice values whose splits tie exactly, a few ulps
    off them, one-sided, sparse, cancelling sums), with an importance matrix, and without one for
    IQ1_M: both checks the conformance suite makes, on inputs built for the searches."""
    x = data.draw(search_rows(256, sub, max_rows=1, max_blocks=1))
    im = data.draw(importance(256))
    _same_or_both_refuse(nb, x, qtype, im, lambda: refquant.quantize(x, qtype, im))
    if qtype == "IQ1_M":
        _same_or_both_refuse(nb, x, qtype, None, lambda: refquant.quantize(x, qtype))


def test_refusals_as_the_spec(nb):
    """IQ1_S needs an importance matrix (the twin's own function refuses too, with the spec's
    message); inputs where ggml aborts are refused with the spec's message, row and values."""
    from refquant_backends.numba.ggml import iquants_iq1
    from refquant.ggml import iquants_grid
    x = np.ones((1, 256), np.float32)
    with pytest.raises(InputError, match="requires an importance matrix"):
        nb.quantize(x, "IQ1_S")
    with pytest.raises(InputError) as a:
        iquants_iq1.quantize_iq1_s(x)
    with pytest.raises(InputError) as b:
        iquants_grid.quantize_iq1_s(x)
    assert str(a.value) == str(b.value)
    rng = np.random.default_rng(1)
    big = (rng.standard_normal((3, 512)) * 1e16).astype(np.float32)
    big[0] *= np.float32(1e-17)              # row 0 quantizes; the abort is reported further on
    with pytest.raises(InputError, match="ggml aborts") as spec:
        refquant.quantize(big, "IQ1_M")
    with pytest.raises(InputError) as ours:
        nb.quantize(big, "IQ1_M")
    assert str(ours.value) == str(spec.value)
    assert re.search(r"in row [12], values", str(ours.value))


def test_more_rows_than_threads_match_the_spec(nb):
    """Every prange chunk, with and without an importance matrix."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((12, 512)) * 0.02).astype(np.float32)
    x[5, 17] = 3.0
    x[7, 256:] = 0
    im = rng.random(512).astype(np.float32)
    for qtype in TYPES:
        np.testing.assert_array_equal(nb.quantize(x, qtype, im), refquant.quantize(x, qtype, im), err_msg=qtype)
    np.testing.assert_array_equal(nb.quantize(x, "IQ1_M"), refquant.quantize(x, "IQ1_M"))


def test_kernels_have_no_fma_and_no_fast_math(nb):
    """Every IQ1 kernel, recompiled without the on-disk cache (numba cannot show the IR of code it
    loaded from it) and with prange as range: no llvm.fma / llvm.fmuladd, no fast-math flag on
    any float instruction, no vfmadd-family instruction in the machine code. The helpers the two
    row kernels call (the sub-block searches, the neighbour search) are linked into their
    modules, so the two kernels' IR covers every float operation."""
    from numba import njit
    from numba.core.registry import CPUDispatcher
    from refquant_backends.numba.ggml import iquants_iq1 as mod
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 256)) * 0.1).astype(np.float32)
    im = rng.random(256).astype(np.float32)
    for t in TYPES:
        nb.quantize(x, t, im)
    flags, fused = FAST_MATH_FLAG, FUSED_ASM
    checked = 0
    defined = set()
    for name, f in vars(mod).items():
        if not (isinstance(f, CPUDispatcher) and f.signatures and f.py_func.__module__ == mod.__name__):
            continue
        g = njit(**{k: v for k, v in f.targetoptions.items() if k in ("fastmath", "nogil")})(f.py_func)
        for sig in f.signatures:
            g.compile(sig)
            ir = g.inspect_llvm(sig)
            defined |= set(re.findall(r"define [^@]*@\S*iquants_iq1\d+(_[a-z0-9_]+?)B", ir))
            assert "llvm.fma." not in ir and "llvm.fmuladd" not in ir, f"{name}: fma in IR"
            assert not flags.search(ir), f"{name}: fast-math flag: {flags.search(ir).group(0)}"
            assert not fused.search(g.inspect_asm(sig)), f"{name}: fused multiply-add in asm"
            checked += 1
    assert checked >= 2
    assert {"_iq1s_sub", "_iq1m_sub", "_grid_fix", "_find_neighbour"} <= defined, defined
