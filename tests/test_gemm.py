"""refquant.gemm: the bound is derived, holds for real float32 accumulation orders, and is not
vacuous; the layouts refuse bad input with clear errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant import gemm
from refquant.conformance.strategies import activations, fp8_weights, w4a16_weights


def _sequential_f32(a, w):
    """acc += a[k] * w[k] in float32, k = 0..K-1: the worst common order (h = K)."""
    a32, w32 = a.astype(np.float32), w.astype(np.float32)
    acc = np.zeros((a.shape[0], w.shape[0]), np.float32)
    for k in range(a.shape[1]):
        acc += a32[:, k:k + 1] * w32[None, :, k]
    return acc


@given(data=st.data())
def test_sequential_float32_meets_the_hard_cap(data):
    w = data.draw(w4a16_weights())
    a = data.draw(activations(w.shape[1]))
    Wd = gemm.dequantize_w4a16(w)
    W32 = Wd.astype(np.float32)                   # one rounding per weight: p = 2
    R, S = gemm.w4a16_reference(a, w)
    Y = _sequential_f32(a, W32)
    assert gemm.within_bound(Y, R, S, a.shape[1], products=2).all()


@given(data=st.data())
def test_float16_output_meets_the_bound_with_u_out(data):
    w = data.draw(fp8_weights(max_n=16, max_k=128))
    a = data.draw(activations(w.shape[1]))
    R, S = gemm.fp8_reference(a, w)
    Y = gemm.fp8_matmul(a, w)
    with np.errstate(over="ignore"):
        Y16 = Y.astype(np.float16)
    # the bound, like every gamma bound, holds where the output is in float16's normal range
    fin = np.isfinite(Y16) & (np.abs(R) >= np.finfo(np.float16).tiny)
    ok = gemm.within_bound(Y16.astype(np.float64), R, S, a.shape[1], products=2, out_dtype=np.float16)
    assert ok[fin].all()


def test_bound_is_not_vacuous():
    """Dropping float32 to float16 accumulation breaks the float32 bound on a long sum."""
    rng = np.random.default_rng(0)
    a = rng.random((1, 4096)).astype(np.float32)
    w = rng.random((1, 4096))
    R, S = gemm.reference(a, w)
    y16 = np.float16(0)
    for k in range(4096):
        y16 = np.float16(y16 + np.float16(a[0, k] * w[0, k]))
    assert not gemm.within_bound(np.array([[y16]]), R, S, 4096).all()
    assert gemm.within_bound(_sequential_f32(a, w), R, S, 4096).all()


def test_depth_of_orders():
    assert gemm.depth("sequential", 4096) == 4096
    assert gemm.depth("lanes", 4096, lanes=8) == 512 + 3
    assert gemm.depth("blocked", 4096, block=128) == 128 + 32
    assert gemm.depth("blocked_lanes", 4096, lanes=8, block=128) == 16 + 3 + 32
    assert gemm.gamma(1) == pytest.approx(2.0**-24, rel=1e-6)


def test_e4m3_table_is_ml_dtypes():
    import ml_dtypes
    t = gemm.e4m3_decode_table()
    ref = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    np.testing.assert_array_equal(t.view(np.uint32)[~np.isnan(t)], ref.view(np.uint32)[~np.isnan(ref)])
    assert t[448 == t].size == 1 and np.isnan(t[0x7F]) and np.isnan(t[0xFF])


def test_w8a8_is_exact_integer_dot():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 96)).astype(np.float32)
    w = gemm.quantize_w8a8_weight(rng.standard_normal((5, 96)).astype(np.float32))
    qa, sa = gemm.quantize_int8_symmetric(a)
    acc = sum(qa[:, k:k + 1].astype(np.int64) * w.codes[None, :, k].astype(np.int64) for k in range(96))
    y = ((acc.astype(np.float32) * sa[:, None]) * w.scales[None, :]).astype(np.float32)
    np.testing.assert_array_equal(gemm.w8a8_matmul(a, w), y)
    np.testing.assert_array_equal(refquant.get_backend().matmul("w8a8", a, w), y)


def test_bad_input_is_refused():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1, 64)).astype(np.float32)
    w = gemm.quantize_w4a16(rng.standard_normal((4, 64)).astype(np.float32), 32)
    bad = gemm.W4A16Weight(w.codes + 16, w.scales, w.zeros, w.g_idx)
    with pytest.raises(refquant.InputError, match="codes and zeros"):
        gemm.w4a16_matmul(a, bad)
    with pytest.raises(refquant.InputError, match="K = 32"):
        gemm.w4a16_matmul(a[:, :32], w)
    f = gemm.quantize_fp8_weight(rng.standard_normal((4, 64)).astype(np.float32), "channel")
    codes = f.codes.copy()
    codes[1, 3] = 0x7F
    with pytest.raises(refquant.InputError, match=r"\[1, 3\] is 0x7F"):
        gemm.fp8_matmul(a, gemm.FP8Weight(codes, f.scale))
    with pytest.raises(refquant.InputError, match="int32 accumulator"):
        gemm.W8A8Weight(np.zeros((1, 200000), np.int8), np.ones(1, np.float32)).check()
    a_nan = a.copy()
    a_nan[0, 5] = np.nan
    with pytest.raises(refquant.InputError, match=r"\[0, 5\]"):
        refquant.get_backend().matmul("FP8", a_nan, f)
    with pytest.raises(refquant.RefquantError, match="unknown option"):
        refquant.get_backend().matmul("FP8", a, f, activation="per_tensor")
