"""The shared arithmetic, each rule against the implementation it reproduces."""
import ctypes
import ctypes.util

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import numerics as N

any_f32_bits = hnp.arrays(np.uint32, st.integers(1, 64), elements=st.integers(0, 2**32 - 1))


@given(any_f32_bits)
def test_fp32_to_fp16_matches_ggml(ggml, u):
    """Every float32 bit pattern (NaN payloads, subnormals, overflow) converts as GGML_FP32_TO_FP16."""
    x = u.view(np.float32)
    theirs = ggml.quantize(x.reshape(1, -1), "F16").view("<u2")[0]
    np.testing.assert_array_equal(N.fp32_to_fp16_bits(x), theirs)


def test_fp32_to_fp16_boundaries(ggml):
    edges = np.array([65504, 65519.996, 65520, 65535, 1e10, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001,
                      2.0**-14, 2.0**-14 * (1 - 2.0**-11), 5.9604645e-08, 0.0, -0.0, np.inf, -np.inf, np.nan,
                      -np.nan, 1.00048828125, 1.000244140625, 1.000732421875], dtype=np.float32)
    edges = np.concatenate([edges, -edges])
    theirs = ggml.quantize(edges.reshape(1, -1), "F16").view("<u2")[0]
    np.testing.assert_array_equal(N.fp32_to_fp16_bits(edges), theirs)


@given(any_f32_bits)
def test_fp32_to_bf16_matches_ggml(ggml, u):
    x = u.view(np.float32)
    theirs = ggml.quantize(x.reshape(1, -1), "BF16").view("<u2")[0]
    np.testing.assert_array_equal(N.fp32_to_bf16_bits(x), theirs)


def test_fp16_to_fp32_every_code(ggml):
    codes = np.arange(65536, dtype=np.uint16)
    theirs = ggml.dequantize(codes.view(np.uint8).reshape(1, -1), "F16")[0]
    np.testing.assert_array_equal(N.fp16_bits_to_fp32(codes).view(np.uint32), theirs.view(np.uint32))


def test_bf16_to_fp32_every_code(ggml):
    codes = np.arange(65536, dtype=np.uint16)
    theirs = ggml.dequantize(codes.view(np.uint8).reshape(1, -1), "BF16")[0]
    np.testing.assert_array_equal(N.bf16_bits_to_fp32(codes).view(np.uint32), theirs.view(np.uint32))


@pytest.fixture(scope="module")
def libm():
    lib = ctypes.CDLL(ctypes.util.find_library("m"))
    lib.roundf.restype = ctypes.c_float
    lib.roundf.argtypes = [ctypes.c_float]
    return lib


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=40))
def test_roundf_is_c_roundf(libm, vals):
    x = np.array(vals, dtype=np.float32)
    ties = np.arange(-6, 7, dtype=np.float32) + np.float32(0.5)
    x = np.concatenate([x, ties, np.float32([0.49999997, -0.49999997, 8388607.5, -0.0])])
    theirs = np.array([libm.roundf(float(v)) for v in x], dtype=np.float32)
    np.testing.assert_array_equal(N.roundf(x).view(np.uint32), theirs.view(np.uint32))


@given(st.lists(st.floats(-4194303, 4194303, width=32), min_size=1, max_size=40))
def test_nearest_int_is_round_half_even(vals):
    """Within its documented range ggml's bit trick is IEEE round-half-to-even (np.rint)."""
    x = np.array(vals + [0.5, 1.5, 2.5, -0.5, -1.5, 4194302.5], dtype=np.float32)
    np.testing.assert_array_equal(N.nearest_int(x), np.rint(x).astype(np.int32))


def test_c_casts_follow_x86():
    x = np.float32([1.9, -1.9, 127.5, 128.0, 255.9, 256.0, -129.0, np.nan, np.inf, -np.inf, 3e9, -3e9])
    np.testing.assert_array_equal(N.c_float_to_int32(x)[:7], [1, -1, 127, 128, 255, 256, -129])
    assert (N.c_float_to_int32(x)[7:] == np.iinfo(np.int32).min).all()  # cvttss2si's "integer indefinite"
    np.testing.assert_array_equal(N.c_float_to_int8(x)[:7], [1, -1, 127, -128, -1, 0, 127])


def test_seq_sum_is_left_to_right():
    # 1e8 + 1 + 1 + ... in float32: pairwise summation would keep the ones, a C loop drops them
    t = np.float32([1e8] + [1.0] * 15)
    assert N.seq_sum(t) == np.float32(1e8)
    assert N.seq_sum(t[::-1]) == np.float32(1e8 + 16)  # the ones first: they add up before the 1e8


def test_c_min_keeps_first_zero_sign():
    x = np.float32([[-0.0, 0.0], [0.0, -0.0]])
    assert np.signbit(N.c_min(x)).tolist() == [True, False]
    assert np.signbit(N.c_max(x)).tolist() == [True, False]
