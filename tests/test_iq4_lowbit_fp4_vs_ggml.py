"""IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, Q1_0, MXFP4 and NVFP4, bit-exact with ggml (ggml-python).

Quantization is compared with `ggml_quantize_chunk`, with and without an importance matrix
(TQ1_0, TQ2_0, Q1_0, MXFP4 and NVFP4 ignore one there: the test checks that the spec ignores it
the same way), and dequantization with each type's `to_float` on arbitrary bytes.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows, importance

BLOCK = {"IQ4_NL": 32, "IQ4_XS": 256, "TQ1_0": 256, "TQ2_0": 256, "Q1_0": 128, "MXFP4": 32, "NVFP4": 64}
TYPES = list(BLOCK)


def rows(qtype):
    """Inputs of about the same size whatever the block: up to 4 blocks of 32, 2 of 256."""
    bs = BLOCK[qtype]
    return float_rows(bs, max_rows=3 if bs <= 64 else 2, max_blocks=max(1, min(4, 512 // bs)))


def bits(a):
    return a.view(np.uint32)


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_quantize_matches_ggml(ggml, qtype, data):
    x = data.draw(rows(qtype))
    np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize(x, qtype))


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_quantize_with_imatrix_matches_ggml(ggml, qtype, data):
    x = data.draw(rows(qtype))
    im = data.draw(importance(x.shape[1]))
    np.testing.assert_array_equal(refquant.quantize(x, qtype, imatrix=im), ggml.quantize(x, qtype, im))


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_dequantize_matches_ggml_on_any_bytes(ggml, qtype, data):
    """Arbitrary bytes (every scale bit pattern: NaN and inf fp16, E8M0 255, UE4M3 0x7F and
    bit 7 set, codes TQ1_0 never writes) decode as to_float does."""
    fmt = refquant.get_format(qtype)
    nblocks = data.draw(st.integers(1, 16))
    raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * fmt.type_size,
                                            max_size=nblocks * fmt.type_size)), np.uint8).copy()
    np.testing.assert_array_equal(bits(refquant.dequantize(raw, qtype)), bits(ggml.dequantize(raw, qtype)))


@pytest.mark.parametrize("qtype", TYPES)
def test_imatrix_support_as_registered(ggml, qtype):
    """The registry says which types take a different path with an importance matrix; ggml's
    bytes agree (IQ4 changes, the others do not), and none of them requires one."""
    fmt = refquant.get_format(qtype)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    im = rng.random(1024).astype(np.float32) ** 4
    differs = not np.array_equal(ggml.quantize(x, qtype, im), ggml.quantize(x, qtype))
    assert differs == (fmt.imatrix == "optional")
    assert not ggml.requires_imatrix(qtype) and not fmt.needs_imatrix


@pytest.mark.parametrize("qtype", TYPES)
def test_large_matrix_matches(ggml, qtype):
    """A realistic weight matrix: 64 rows of 4096, an outlier channel, a dead row."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((64, 4096)) * 0.02).astype(np.float32)
    x[:, 77] *= 50.0   # outlier channel
    x[5] = 0.0         # a dead row
    im = (rng.random(4096) ** 2).astype(np.float32)
    q = refquant.quantize(x, qtype)
    np.testing.assert_array_equal(q, ggml.quantize(x, qtype))
    np.testing.assert_array_equal(refquant.quantize(x, qtype, im), ggml.quantize(x, qtype, im))
    np.testing.assert_array_equal(bits(refquant.dequantize(q, qtype)), bits(ggml.dequantize(q, qtype)))


# ----------------------------------------------------------------------------- scale rules

def _amax_sweep():
    """Positive float32 values over the whole range: every power of two, its neighbours, and the
    halfway points of the UE4M3 grid (ties) with their neighbours, plus random bit patterns."""
    e = np.arange(-149, 128)
    p2 = np.ldexp(np.float32(1), e).astype(np.float32)
    m = np.arange(16, 32, dtype=np.float32) / np.float32(16)  # 1 + k/16: the 3-bit grid's ties
    grid = (p2[:, None] * m[None, :]).reshape(-1).astype(np.float32)
    grid = grid[np.isfinite(grid) & (grid > 0)]
    near = np.concatenate([grid, np.nextafter(grid, np.float32(0)), np.nextafter(grid, np.float32(np.inf))])
    rnd = np.random.default_rng(5).integers(1, 0x7F7FFFFF, 20000, dtype=np.uint32).view(np.float32)
    v = np.concatenate([near, rnd, np.float32([448, 448 * 6, 240 * 6, 256 * 6, 7.5 * 2.0**-9 * 6])])
    return np.unique(v[np.isfinite(v) & (v > 0)]).astype(np.float32)


def test_mxfp4_shared_exponent_over_float_range(ggml):
    """e = (uint8)(floorf(log2f(amax)) - 2 + 127), amax at every power of two and its neighbours,
    including amax below 2^-125 where the float -> uint8 conversion wraps."""
    amax = _amax_sweep()
    x = np.zeros((amax.size, 32), np.float32)
    x[:, 0] = amax
    x[:, 17] = -amax * np.float32(0.3)
    np.testing.assert_array_equal(refquant.quantize(x, "MXFP4"), ggml.quantize(x, "MXFP4"))


def test_nvfp4_ue4m3_scale_over_float_range(ggml):
    """ggml_fp32_to_ue4m3(amax / 6) for amax over the float range: subnormal codes, ties (half up),
    the carry into exponent 15, the clamp at 448."""
    amax = _amax_sweep()
    amax = np.concatenate([amax, np.zeros((-amax.size) % 4, np.float32)])
    x = np.zeros((amax.size, 16), np.float32)
    x[:, 3] = amax
    x[:, 9] = -amax * np.float32(0.55)
    x = x.reshape(-1, 64)
    np.testing.assert_array_equal(refquant.quantize(x, "NVFP4"), ggml.quantize(x, "NVFP4"))


@pytest.mark.parametrize("qtype", ["MXFP4", "NVFP4"])
def test_fp4_ties_go_to_the_lower_code(ggml, qtype):
    """Every value halfway between two E2M1 points (and on them), both signs, at one scale."""
    half = np.float32([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12])
    bs = refquant.get_format(qtype).block_size
    sub = 32 if qtype == "MXFP4" else 16
    vals = np.concatenate([half, -half])
    x = np.zeros((vals.size, bs), np.float32)
    scale = np.float32(0.25)
    for i, v in enumerate(vals):
        for s in range(bs // sub):
            x[i, s * sub] = np.float32(12) * scale if qtype == "MXFP4" else np.float32(6) * scale * 2
            x[i, s * sub + 5] = v * scale
    np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize(x, qtype))


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
def test_ternary_ties_round_away_from_zero(ggml, qtype):
    """x * (1/amax) = ±0.5 exactly: lroundf sends it to ±1."""
    x = np.zeros((2, 256), np.float32)
    x[:, 0] = 2.0
    x[0, 1:] = np.tile(np.float32([1.0, -1.0, 0.0, 0.5, -0.5, -0.0, 2.0, -2.0]), 32)[:255]
    x[1, 1:] = np.float32(-1.0)
    np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize(x, qtype))


@pytest.mark.parametrize("qtype", ["IQ4_NL", "IQ4_XS", "Q1_0", "TQ1_0"])
def test_signed_zero_blocks(ggml, qtype):
    """All-zero blocks of +0, of -0 and mixed: the scale's sign is ggml's (IQ4_XS stores
    d = -0 for a super-block whose sub-block scales are all 0)."""
    bs = BLOCK[qtype]
    x = np.zeros((3, 2 * bs), np.float32)
    x[1] = -0.0
    x[2, ::3] = -0.0
    x[2, bs + 1] = 1.0
    np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize(x, qtype))


def test_iq4_nl_files_use_the_chunk_search_not_the_ref_row(ggml):
    """ggml's own two IQ4_NL quantizers disagree (ntry = 7 in ggml_quantize_chunk, -1 in
    quantize_row_iq4_nl_ref); the spec is the chunk path. IQ4_XS's ref row is the chunk path."""
    x = (np.random.default_rng(4).standard_normal((8, 1024)) * 0.02).astype(np.float32)
    chunk = ggml.quantize(x, "IQ4_NL")
    assert not np.array_equal(ggml.quantize_row_ref(x, "IQ4_NL"), chunk)
    np.testing.assert_array_equal(refquant.quantize(x, "IQ4_NL"), chunk)
    np.testing.assert_array_equal(ggml.quantize_row_ref(x, "IQ4_XS"), ggml.quantize(x, "IQ4_XS"))
