"""The Numba backend against the spec, generated from what it claims.

Every (operation, key) the backend claims gets a Hypothesis comparison with the spec (bit-exact
for encode/decode, vec_dot and integer matmuls; refquant.gemm's bound for float matmuls, at the
accumulation order the backend states). Everything the spec defines but the backend does not
claim must be reported by supports() and fall back to the spec's own result.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant.backend import OPERATIONS, operation_keys
from refquant.conformance.suite import case, check

numba = pytest.importorskip("numba", reason="the numba extra is not installed")


@pytest.fixture(scope="module")
def nb():
    return refquant.get_backend("backends.numba:NumbaBackend")


def _claims():
    from backends.numba import NumbaBackend
    return sorted(NumbaBackend().claims())


def _unclaimed():
    claimed = set(_claims())
    return [(op, k) for op in OPERATIONS for k in operation_keys(op) if (op, k) not in claimed]


@pytest.mark.parametrize("op,key", _claims())
@settings(max_examples=30)
@given(data=st.data())
def test_claim_conforms_to_spec(nb, op, key, data):
    c = data.draw(case(op, key))
    acc = None
    if op == "matmul" and not refquant.gemm.get_scheme(key).exact:
        from backends.numba.gemm import accumulation
        acc = accumulation(op, key, c["a"].shape[1], c["weight"])
    check(nb, op, key, c, accumulation=acc)


@pytest.mark.parametrize("op,key", _claims())
def test_supports_what_it_claims(nb, op, key):
    assert nb.supports(op, key)


@pytest.mark.parametrize("op,key", _unclaimed())
@settings(max_examples=5)
@given(data=st.data())
def test_unclaimed_falls_back_to_spec(nb, op, key, data):
    assert not nb.supports(op, key)
    c = data.draw(case(op, key))
    check(nb, op, key, c)  # the fallback is the spec itself: exact, whatever the operation


def test_claims_cover_the_legacy_and_float_types(nb):
    for name in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"]:
        assert nb.supports("quantize", name) and nb.supports("dequantize", name)
    for name in refquant.ggml.dot.VEC_DOT_TYPE:
        assert nb.supports("vec_dot", name)
    for scheme in refquant.gemm.SCHEMES:
        assert nb.supports("matmul", scheme)
    assert not nb.supports("quantize", "F32")  # a byte view: the spec's own is a copy


def test_unknown_operation_and_key_are_refused(nb):
    with pytest.raises(refquant.RefquantError):
        nb.supports("transpose", "Q4_0")
    with pytest.raises(refquant.FormatError):
        nb.supports("vec_dot", "Q8_1")  # ggml has no vec_dot with Q8_1 weights
    with pytest.raises(refquant.InputError):
        nb.supports("matmul", "W3A5")


def test_entry_point_names_the_backend():
    """`refquant.get_backend("numba")` works where the package is installed (pip install -e .)."""
    eps = refquant.available_backends()
    if "numba" not in eps:
        pytest.skip("refquant is not pip-installed here, so its entry points are not registered")
    b = refquant.get_backend("numba")
    assert b.name == "numba" and b.supports("quantize", "Q4_0")


# ----------------------------------------------------------------------------- near-ties, no FMA

def test_no_contraction_on_near_ties(nb):
    """Q4_1/Q5_1 round (x - min) * id + 0.5 and Q4_0 x * id + 8.5: were LLVM to fuse the multiply
    and the add, inputs whose product lands within half an ulp of a code boundary would round
    differently. Build such rows deliberately and compare with the spec."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(400):
        d = np.float32(2.0) ** rng.integers(-10, 10)
        k = rng.integers(-16, 16, 32).astype(np.float32)
        x = (k + np.float32(0.5)) * d                # exact ties of d
        x = np.nextafter(x, x + rng.choice([-1, 1], 32).astype(np.float32) * np.inf)  # one ulp off
        x[0] = 8 * d
        x[1] = -8 * d * np.float32(1.0000001)
        rows.append(x.astype(np.float32))
    x = np.stack(rows)
    for qt in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"]:
        np.testing.assert_array_equal(nb.quantize(x, qt), refquant.quantize(x, qt))
    w = refquant.quantize(x[:16], "Q4_1")
    np.testing.assert_array_equal(nb.vec_dot(w, "Q4_1", x[16:19]).view(np.uint32),
                                  refquant.get_backend().vec_dot(w, "Q4_1", x[16:19]).view(np.uint32))


def test_large_matrix_bit_exact(nb):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    x[3, 100] = 4.0
    im = rng.random(1024).astype(np.float32)
    for qt in ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]:
        np.testing.assert_array_equal(nb.quantize(x, qt, im), refquant.quantize(x, qt, im))
