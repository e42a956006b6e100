"""K-quants (Q2_K..Q6_K, Q8_K), bit-exact with ggml (ggml-python's libggml-base).

Without an importance matrix ggml_quantize_chunk takes quantize_row_qX_K_ref; with one,
quantize_row_qX_K_impl: two different searches per type, both checked here.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows, importance, search_rows

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
SUB_BLOCK = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}


def bits(a):
    return a.view(np.uint32) if a.dtype == np.float32 else a


def assert_same_blocks(ours, theirs, qtype):
    """Equal bytes; on failure, name the first differing block and field offset."""
    if np.array_equal(ours, theirs):
        return
    ts = refquant.get_format(qtype).type_size
    a, b = ours.reshape(-1, ts), theirs.reshape(-1, ts)
    blk = int(np.argwhere((a != b).any(axis=1))[0][0])
    off = int(np.argwhere(a[blk] != b[blk])[0][0])
    raise AssertionError(f"{qtype}: block {blk} differs first at byte {off}:\n ours {a[blk].tolist()}\n ggml {b[blk].tolist()}")


@pytest.mark.parametrize("qtype", K_TYPES)
@given(data=st.data())
def test_quantize_matches_ggml(ggml, qtype, data):
    x = data.draw(float_rows(256, max_rows=2, max_blocks=2))
    assert_same_blocks(refquant.quantize(x, qtype), ggml.quantize(x, qtype), qtype)


@pytest.mark.parametrize("qtype", K_TYPES)
@given(data=st.data())
def test_quantize_with_imatrix_matches_ggml(ggml, qtype, data):
    x = data.draw(float_rows(256, max_rows=2, max_blocks=2))
    im = data.draw(importance(x.shape[1]))
    assert_same_blocks(refquant.quantize(x, qtype, imatrix=im), ggml.quantize(x, qtype, im), qtype)


@pytest.mark.parametrize("qtype", K_TYPES)
@given(data=st.data())
def test_searches_under_stress_match_ggml(ggml, qtype, data):
    """Sub-blocks drawn one by one (ties between candidate scales, one outlier, positive minimum,
    zeros next to huge values), with and without an importance matrix."""
    sub = data.draw(st.sampled_from([SUB_BLOCK[qtype], 256]))
    x = data.draw(search_rows(256, sub))
    im = data.draw(st.none() | importance(x.shape[1]))
    assert_same_blocks(refquant.quantize(x, qtype, imatrix=im), ggml.quantize(x, qtype, im), qtype)


@given(x=float_rows(256, max_rows=2, max_blocks=2) | search_rows(256, 16))
def test_q8_k_matches_quantize_row_ref(ggml, x):
    assert_same_blocks(refquant.quantize(x, "Q8_K"), ggml.quantize_row_ref(x, "Q8_K"), "Q8_K")


@pytest.mark.parametrize("qtype", K_TYPES + ["Q8_K"])
@given(data=st.data())
def test_dequantize_matches_ggml_on_any_bytes(ggml, qtype, data):
    """Arbitrary bytes (every scale bit pattern, NaN and inf included) decode as ggml does."""
    fmt = refquant.get_format(qtype)
    nblocks = data.draw(st.integers(1, 4))
    raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * fmt.type_size,
                                            max_size=nblocks * fmt.type_size)), np.uint8).copy()
    theirs = ggml.dequantize_row(raw, qtype) if qtype == "Q8_K" else ggml.dequantize(raw, qtype)
    np.testing.assert_array_equal(bits(refquant.dequantize(raw, qtype)), bits(theirs))


@pytest.mark.parametrize("qtype", K_TYPES)
def test_dequantize_of_quantized_matches_ggml(ggml, qtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 512)) * 0.05).astype(np.float32)
    q = ggml.quantize(x, qtype)
    np.testing.assert_array_equal(bits(refquant.dequantize(q, qtype)), bits(ggml.dequantize(q, qtype)))


@pytest.mark.parametrize("qtype", K_TYPES + ["Q8_K"])
def test_large_matrix_matches(ggml, qtype):
    """A realistic weight matrix: 32 rows of 4096 normal(0, 0.02) values, one outlier channel,
    with and without an importance matrix."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((32, 4096)) * 0.02).astype(np.float32)
    x[5, 1000] = 3.0
    x[:, 77] *= 20
    if qtype == "Q8_K":
        assert_same_blocks(refquant.quantize(x, qtype), ggml.quantize_row_ref(x, qtype), qtype)
        return
    im = (rng.random(4096) ** 2 * 10).astype(np.float32)
    assert_same_blocks(refquant.quantize(x, qtype), ggml.quantize(x, qtype), qtype)
    assert_same_blocks(refquant.quantize(x, qtype, imatrix=im), ggml.quantize(x, qtype, im), qtype)


def test_registered_as_ggml_k(ggml):
    for qtype in K_TYPES + ["Q8_K"]:
        fmt = refquant.get_format(qtype)
        assert fmt.family == "ggml-k" and fmt.block_size == 256
        assert fmt.type_size == ggml.row_size(qtype, 256)
