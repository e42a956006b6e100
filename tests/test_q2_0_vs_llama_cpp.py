"""Q2_0 (ggml type 42), bit-exact with the ggml that llama-cpp-python 0.3.36 vendors (ggml-python's
ggml predates the type): `ggml_quantize_chunk` with and without an importance matrix (Q2_0 ignores
one), `dequantize_row_q2_0` on arbitrary bytes, and the CPU backend's vec_dot
(`ggml_vec_dot_q2_0_q8_0`, the generic kernel on x86) on quantized activations of both variants."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import MATMUL_KINDS, activations, float_rows, importance
from refquant.ggml import dot

from edge_rows import zero_sub_blocks


@pytest.fixture(scope="session")
def llama_ggml():
    from tools.oracles import llama_cpp  # llama.cpp's ggml, in a worker process of its own
    return llama_cpp


def bits(a):
    return a.view(np.uint32)


def rows():
    return float_rows(64, max_rows=3, max_blocks=4)


@given(x=rows())
def test_quantize_matches_llama_cpp(llama_ggml, x):
    np.testing.assert_array_equal(refquant.quantize(x, "Q2_0"), llama_ggml.ggml_quantize(x, "Q2_0"))


@given(data=st.data())
def test_quantize_ignores_an_imatrix_as_llama_cpp_does(llama_ggml, data):
    x = data.draw(rows())
    im = data.draw(importance(x.shape[1]))
    ours = refquant.quantize(x, "Q2_0", imatrix=im)
    np.testing.assert_array_equal(ours, llama_ggml.ggml_quantize(x, "Q2_0", im))
    np.testing.assert_array_equal(ours, refquant.quantize(x, "Q2_0"))


def test_edge_rows_match_llama_cpp(llama_ggml):
    """All-zero blocks, -0, halves of the scale (roundf's ties away from zero), the largest
    floats (d becomes an fp16 inf), subnormals and zero sub-blocks beside large values."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 256)).astype(np.float32)
    x[0, :64] = 0
    x[0, 64:128] = -0.0
    x[1, :64] = np.float32(2.0) * rng.integers(-4, 5, 64) / np.float32(4.0)   # multiples of d/2: ties
    x[1, 0] = 2.0
    x[2, :64] = np.float32(3.4e38) * np.sign(rng.standard_normal(64))
    x[3, :64] = np.float32(1e-40) * rng.standard_normal(64).astype(np.float32)
    x[4, 5] = np.float32(70000.0)                                              # d past fp16's range
    np.testing.assert_array_equal(refquant.quantize(x, "Q2_0"), llama_ggml.ggml_quantize(x, "Q2_0"))
    z, im = zero_sub_blocks(rng)
    np.testing.assert_array_equal(refquant.quantize(z, "Q2_0", im), llama_ggml.ggml_quantize(z, "Q2_0", im))


@given(data=st.data())
def test_dequantize_matches_llama_cpp_on_any_bytes(llama_ggml, data):
    """Every byte pattern: NaN and inf fp16 scales, code 3 (+2 d), which the quantizer never writes."""
    nblocks = data.draw(st.integers(1, 16))
    raw = np.frombuffer(data.draw(st.binary(min_size=18 * nblocks, max_size=18 * nblocks)), np.uint8).copy()
    np.testing.assert_array_equal(bits(refquant.dequantize(raw, "Q2_0")), bits(llama_ggml.ggml_dequantize(raw, "Q2_0")))


def test_no_imatrix_required(llama_ggml):
    assert refquant.get_format("Q2_0").imatrix == "none" and not llama_ggml.ggml_requires_imatrix("Q2_0")


@given(data=st.data())
def test_vec_dot_matches_llama_cpp(llama_ggml, data):
    """Steps 2-3 of refquant.ggml.dot on Q8_0 activations (either quantizer) against the kernel
    llama.cpp's CPU type traits hold for Q2_0: every bit."""
    w = refquant.quantize(data.draw(float_rows(64, max_rows=3, max_blocks=4, kinds=MATMUL_KINDS)), "Q2_0")
    a = data.draw(activations(w.shape[1] // 18 * 64, max_rows=3))
    variant = data.draw(st.sampled_from(dot.ACTIVATION_VARIANTS))
    qa = dot.quantize_activation(a, "Q8_0", variant)
    np.testing.assert_array_equal(bits(dot.vec_dot_quantized(w, "Q2_0", qa)), bits(llama_ggml.ggml_vec_dot(w, qa, "Q2_0")))
