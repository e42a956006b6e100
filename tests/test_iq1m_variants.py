"""IQ1_M's two split searches, each bit-exact with the ggml that runs it.

ggml-python 0.0.45's ggml sums every split of the sorted sub-block from position 0
("split-sums", the registered IQ1_M quantizer); the ggml vendored in llama.cpp (llama-cpp-python
0.3.36, what llama_model_quantize runs) keeps prefix sums per half-block ("prefix-sums"). Equal in
exact arithmetic, rounded differently in float32: on near ties they choose other splits. Each
variant is checked against its own ggml, and on gaussian rows each is shown to differ from the
other ggml. The llama.cpp side runs in a spawned worker (tools.oracles.llama_cpp); the
ggml-python side in this process.

Every other type refquant quantizes is the same in both ggml sources (their ggml-quants.c differ
only in IQ1_M's search and the new Q2_0); `test_other_types_agree_with_llama_cpp_ggml` holds the
spec to llama.cpp's ggml for each of them on one realistic matrix.
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows, importance
from refquant.errors import InputError
from refquant.ggml.iquants_grid import IQ1M_PREFIX_SUMS, IQ1M_SPLIT_SUMS, IQ1M_VARIANTS, quantize_iq1_m
from refquant.registry import all_formats
from edge_rows import zero_sub_blocks

EXAMPLES = int(os.environ.get("IQ_GRID_EXAMPLES", "25"))


@pytest.fixture(scope="session")
def llama_ggml():
    from tools.oracles import llama_cpp  # llama.cpp's ggml, in a worker process of its own
    return llama_cpp


def check_prefix_sums(llama_ggml, x, im):
    """refquant's prefix-sums IQ1_M equals llama.cpp's ggml_quantize_chunk, or both refuse
    (refquant with InputError, llama.cpp's ggml by aborting)."""
    try:
        ours = quantize_iq1_m(x, im, variant=IQ1M_PREFIX_SUMS)
    except InputError as e:
        assert "ggml aborts" in str(e)
        assert llama_ggml.ggml_quantize_dies(x, "IQ1_M", im), f"refquant refused an input llama.cpp quantizes: {e}"
        return
    np.testing.assert_array_equal(ours, llama_ggml.ggml_quantize(x, "IQ1_M", im))


@st.composite
def gaussian_rows(draw, n=256, max_rows=16):
    """Weight-like rows (normal, a drawn scale, sometimes an outlier): where the two searches'
    roundings part, a few sub-blocks in a hundred."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.integers(1, max_rows))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 300.0]))
    x = (rng.standard_normal((rows, n)) * scale).astype(np.float32)
    if draw(st.booleans()):
        x[rng.integers(rows), rng.integers(n)] = np.float32(20 * scale)
    return x


# ------------------------------------------------------------------ prefix-sums vs llama.cpp's ggml

@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_prefix_sums_with_imatrix_matches_llama_cpp(llama_ggml, data):
    x = data.draw(float_rows(256, max_rows=2, max_blocks=2))
    im = data.draw(importance(x.shape[1]))
    check_prefix_sums(llama_ggml, x, im)


@settings(max_examples=EXAMPLES)
@given(x=float_rows(256, max_rows=2, max_blocks=2))
def test_prefix_sums_without_imatrix_matches_llama_cpp(llama_ggml, x):
    check_prefix_sums(llama_ggml, x, None)


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_prefix_sums_on_weight_like_rows_matches_llama_cpp(llama_ggml, data):
    x = data.draw(gaussian_rows())
    im = data.draw(st.none() | importance(x.shape[1]))
    check_prefix_sums(llama_ggml, x, im)


def test_prefix_sums_edge_blocks_match_llama_cpp(llama_ggml):
    """All-zero sub-blocks among others, -0, a lone value, and few distinct values with distinct
    weights (the order among equal values then decides the split)."""
    rng = np.random.default_rng(3)
    x, im = zero_sub_blocks(rng)
    check_prefix_sums(llama_ggml, x, im)
    check_prefix_sums(llama_ggml, x, None)
    t = (rng.integers(-2, 3, (16, 512)) * 0.25).astype(np.float32)
    t[:, ::7] = -0.0
    check_prefix_sums(llama_ggml, t, (rng.random(512) * 4).astype(np.float32))


# ------------------------------------------------------------------ each variant differs from the other ggml

def test_each_variant_matches_its_ggml_and_not_the_other(ggml, llama_ggml):
    """On gaussian rows with an importance matrix, the two ggml versions write different bytes
    for some rows; split-sums gives ggml-python's everywhere, prefix-sums llama.cpp's."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    im = (rng.random(1024) ** 2).astype(np.float32)
    old, new = ggml.quantize(x, "IQ1_M", im), llama_ggml.ggml_quantize(x, "IQ1_M", im)
    split, prefix = quantize_iq1_m(x, im, variant=IQ1M_SPLIT_SUMS), quantize_iq1_m(x, im, variant=IQ1M_PREFIX_SUMS)
    differ = (old != new).any(axis=1)
    assert differ.any() and not differ.all()
    np.testing.assert_array_equal(split, old)
    np.testing.assert_array_equal(prefix, new)
    # the registered quantizer (refquant.quantize) is the split-sums variant
    np.testing.assert_array_equal(refquant.quantize(x, "IQ1_M", imatrix=im), old)


def test_both_ggml_versions_decode_and_refuse_alike(ggml, llama_ggml):
    """Dequantization is unchanged between the versions, and neither requires an imatrix."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (6, 56 * 3), dtype=np.uint8)
    ours = refquant.dequantize(raw, "IQ1_M").view(np.uint32)
    np.testing.assert_array_equal(ours, llama_ggml.ggml_dequantize(raw, "IQ1_M").view(np.uint32))
    np.testing.assert_array_equal(ours, ggml.dequantize(raw, "IQ1_M").view(np.uint32))
    assert not llama_ggml.ggml_requires_imatrix("IQ1_M") and not ggml.requires_imatrix("IQ1_M")
    assert not refquant.get_format("IQ1_M").needs_imatrix


def test_unknown_variant_is_refused():
    assert IQ1M_VARIANTS == ("split-sums", "prefix-sums")
    with pytest.raises(InputError, match="unknown IQ1_M variant 'fast'"):
        quantize_iq1_m(np.ones((1, 256), np.float32), None, variant="fast")


# ------------------------------------------------------------------ every other type: one ggml

OTHER = [f.name for f in all_formats()
         if f.ggml_type is not None and f.can_quantize and f.name != "IQ1_M"]


@pytest.mark.parametrize("qtype", OTHER)
def test_other_types_agree_with_llama_cpp_ggml(llama_ggml, qtype):
    """Every other ggml type refquant quantizes: the spec (checked against ggml-python's ggml
    elsewhere) equals llama.cpp's ggml too, with and (where allowed) without an imatrix."""
    fmt = refquant.get_format(qtype)
    n = 512 if 512 % fmt.block_size == 0 else fmt.block_size * 4
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((4, n)) * 0.02).astype(np.float32)
    x[3, 100] = 0.5
    im = (rng.random(n) ** 2).astype(np.float32)
    if qtype in ("Q8_1", "Q8_K"):   # no ggml_quantize_chunk path: the exported row quantizer
        np.testing.assert_array_equal(refquant.quantize(x, qtype), llama_ggml.ggml_quantize_row_ref(x, qtype))
        return
    assert llama_ggml.ggml_requires_imatrix(qtype) == fmt.needs_imatrix
    np.testing.assert_array_equal(refquant.quantize(x, qtype, imatrix=im), llama_ggml.ggml_quantize(x, qtype, im))
    if not fmt.needs_imatrix:
        np.testing.assert_array_equal(refquant.quantize(x, qtype), llama_ggml.ggml_quantize(x, qtype, None))
