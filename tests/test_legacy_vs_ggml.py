"""First-generation GGUF types and plain floats, bit-exact with ggml (ggml-python)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows, importance, tie_grids_for

CHUNK_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def bits(a):
    return a.view(np.uint32) if a.dtype == np.float32 else a


@pytest.mark.parametrize("qtype", CHUNK_TYPES)
@given(data=st.data())
def test_quantize_matches_ggml(ggml, qtype, data):
    x = data.draw(float_rows(32, tie_grids=tie_grids_for(qtype)))
    ours = refquant.quantize(x, qtype)
    np.testing.assert_array_equal(ours, ggml.quantize(x, qtype))


@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
@given(data=st.data())
def test_quantize_with_imatrix_matches_ggml(ggml, qtype, data):
    x = data.draw(float_rows(32, tie_grids=tie_grids_for(qtype)))
    im = data.draw(importance(x.shape[1]))
    ours = refquant.quantize(x, qtype, imatrix=im)
    np.testing.assert_array_equal(ours, ggml.quantize(x, qtype, im))


@given(x=float_rows(32, tie_grids=tie_grids_for("Q8_1")))
def test_q8_1_matches_quantize_row_ref(ggml, x):
    np.testing.assert_array_equal(refquant.quantize(x, "Q8_1"), ggml.quantize_row_ref(x, "Q8_1"))


@pytest.mark.parametrize("qtype", [t for t in CHUNK_TYPES])
@given(data=st.data())
def test_dequantize_matches_ggml_on_any_bytes(ggml, qtype, data):
    """Arbitrary bytes (every scale bit pattern, NaN and inf scales included) decode as to_float does."""
    fmt = refquant.get_format(qtype)
    nblocks = data.draw(st.integers(1, 64))
    raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * fmt.type_size,
                                            max_size=nblocks * fmt.type_size)), np.uint8).copy()
    ours = refquant.dequantize(raw, qtype)
    np.testing.assert_array_equal(bits(ours), bits(ggml.dequantize(raw, qtype)))


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_every_16_bit_code_decodes_as_ggml(ggml, qtype):
    codes = np.arange(65536, dtype="<u2").view(np.uint8)
    np.testing.assert_array_equal(bits(refquant.dequantize(codes, qtype)), bits(ggml.dequantize(codes, qtype)))


def test_f32_is_the_bytes(ggml):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    q = refquant.quantize(x, "F32")
    np.testing.assert_array_equal(q, ggml.quantize(x, "F32"))
    np.testing.assert_array_equal(refquant.dequantize(q, "F32"), x)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"])
def test_large_matrix_matches(ggml, qtype):
    """A realistic weight matrix: many blocks, one row length that spans many blocks."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    x[3, 100] = 4.0  # outlier channel
    im = rng.random(1024).astype(np.float32)
    if qtype == "Q8_1":
        np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize_row_ref(x, qtype))
        return
    np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize(x, qtype))
    np.testing.assert_array_equal(refquant.quantize(x, qtype, im), ggml.quantize(x, qtype, im))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_1"])
def test_weighted_sums_keep_negative_zero(ggml, qtype):
    """make_qkx3_quants starts its sums from the first term: a block of -0s whose only weight is
    on a -0 keeps sum_x = -0, and the stored minimum comes out as -0 (found by the thorough profile)."""
    x = np.zeros((2, 64), np.float32)
    x[1, 32] = -233.34447
    x[1, 33:] = -0.0
    im = np.zeros(64, np.float32)
    im[33] = 1
    np.testing.assert_array_equal(refquant.quantize(x, qtype, im), ggml.quantize(x, qtype, im))
