"""refquant.ggml.dot against ggml's CPU backend (libggml-cpu from ggml-python).

* Activation quantization: the "ref" variant equals quantize_row_q8_*_ref, the "x86" variant
  equals the CPU type traits' from_float (the AVX2 kernels), bit for bit.
* vec_dot: equals the scalar `ggml_vec_dot_*_generic` kernels bit for bit (Q5_0: see below).
* The SIMD kernels the type traits select: their integer part is exact (checked with unit
  scales, where every float step is exact), and their float combination stays within the
  bound derived for their order (refquant.ggml.dot.simd_error_bound).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows
from refquant.ggml import dot

TYPES = list(dot.VEC_DOT_TYPE)


def operands(data, qtype, max_rows=3):
    w = refquant.quantize(data.draw(float_rows(32, max_rows=4)), qtype)
    K = w.shape[1] // refquant.get_format(qtype).type_size * 32
    a = data.draw(float_rows(32, max_rows=max_rows, min_blocks=K // 32, max_blocks=K // 32))
    return w, a


def test_vec_dot_types_are_ggmls(ggml):
    for qt in TYPES:
        assert ggml.vec_dot_type(qt) == dot.VEC_DOT_TYPE[qt]


@pytest.mark.parametrize("vt", ["Q8_0", "Q8_1"])
@given(x=float_rows(32))
def test_x86_activation_quantizer_is_ggml_from_float(ggml, vt, x):
    np.testing.assert_array_equal(dot.quantize_activation(x, vt, "x86"), ggml.from_float(x, vt))


@pytest.mark.parametrize("vt", ["Q8_0", "Q8_1"])
@given(x=float_rows(32))
def test_ref_activation_quantizer_is_quantize_row_ref(ggml, vt, x):
    np.testing.assert_array_equal(dot.quantize_activation(x, vt, "ref"), ggml.quantize_row_ref(x, vt))


@pytest.mark.parametrize("qtype", [t for t in TYPES if t != "Q5_0"])
@given(data=st.data())
def test_vec_dot_is_the_generic_kernel(ggml, qtype, data):
    w, a = operands(data, qtype)
    qa = dot.quantize_activation(a, dot.VEC_DOT_TYPE[qtype], data.draw(st.sampled_from(["ref", "x86"])))
    ours = dot.vec_dot_quantized(w, qtype, qa)
    np.testing.assert_array_equal(ours.view(np.uint32), ggml.vec_dot(w, qa, qtype, generic=True).view(np.uint32))


@given(data=st.data())
def test_q5_0_vec_dot_is_the_generic_kernel_on_non_negative_codes(ggml, data):
    """ggml-python 0.0.45's build of ggml_vec_dot_q5_0_q8_0_generic (GCC, auto-vectorised)
    returns ((q - 16) mod 256) for 5-bit codes q < 16 instead of q - 16, against its C source's
    (int8_t) cast and against the AVX2 kernel. Where no code is below 16 the two agree, and the
    float order is checked there; elsewhere the spec follows the C source (see spec/ggml/dot.md)."""
    w, a = operands(data, "Q5_0")
    q = dot.decode_weight_blocks(w, "Q5_0")["q"]
    # force every 5-bit code to >= 16 by setting the high bit of each element
    nb = w.shape[1] // 22
    blocks = w.reshape(-1, 22).copy()
    blocks[:, 2:6] = 0xFF
    w = blocks.reshape(w.shape[0], -1)
    assert (dot.decode_weight_blocks(w, "Q5_0")["q"] >= 0).all() and q.shape[1] == nb
    qa = dot.quantize_activation(a, "Q8_0", "ref")
    np.testing.assert_array_equal(dot.vec_dot_quantized(w, "Q5_0", qa).view(np.uint32),
                                  ggml.vec_dot(w, qa, "Q5_0", generic=True).view(np.uint32))


def _unit_scales(b: np.ndarray, type_size: int, fields=(0,)) -> np.ndarray:
    """Set the fp16 fields at the given byte offsets of every block to 1.0 (0x3C00)."""
    blocks = b.reshape(-1, type_size).copy()
    for at in fields:
        blocks[:, at], blocks[:, at + 1] = 0x00, 0x3C
    return blocks.reshape(b.shape)


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_simd_integer_part_is_exact(ggml, qtype, data):
    """With every scale 1.0 (and the Q4_1/Q5_1 offsets 0) each float step of the SIMD kernel is
    exact, so its result is the exact integer dot, which the spec's block_dots must equal."""
    w, a = operands(data, qtype)
    vt = dot.VEC_DOT_TYPE[qtype]
    fmt = refquant.get_format(qtype)
    qa = dot.quantize_activation(a, vt, "ref")     # codes in [-127, 127]
    w1 = _unit_scales(w, fmt.type_size)
    if qtype in ("Q4_1", "Q5_1"):
        blocks = w1.reshape(-1, fmt.type_size)
        blocks[:, 2:4] = 0                         # m = 0
        w1 = blocks.reshape(w.shape)
    qa1 = _unit_scales(qa, refquant.get_format(vt).type_size)
    if vt == "Q8_1":
        blocks = qa1.reshape(-1, 36)
        blocks[:, 2:4] = 0                         # s = 0 (m * s must not be 0 * inf)
        qa1 = blocks.reshape(qa.shape)
    wb = dot.decode_weight_blocks(w1, qtype)
    ab = dot.decode_activation_blocks(qa1, vt)
    exact = dot.block_dots(wb["q"], ab["q"]).sum(axis=2).astype(np.float32)  # |sum| < 2^24: exact
    np.testing.assert_array_equal(ggml.vec_dot(w1, qa1, qtype), exact)


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_simd_kernel_within_the_derived_bound(ggml, qtype, data):
    w, a = operands(data, qtype)
    qa = dot.quantize_activation(a, dot.VEC_DOT_TYPE[qtype], "x86")
    ys = ggml.vec_dot(w, qa, qtype).astype(np.float64)
    R, S = dot.exact_quantized_dot(w, qtype, qa)
    nb = w.shape[1] // refquant.get_format(qtype).type_size
    fin = np.isfinite(R) & np.isfinite(S) & (S < 1e38)
    bound = dot.simd_error_bound(qtype, nb, S)
    ours = dot.vec_dot_quantized(w, qtype, qa).astype(np.float64)
    with np.errstate(invalid="ignore"):  # R is inf where a scale is: those are left out
        assert (np.abs(ys - R)[fin] <= bound[fin]).all()
        # and the spec's own (generic-order) result obeys the same bound
        assert (np.abs(ours - R)[fin] <= bound[fin]).all()


def test_fma_f32_is_libm_fmaf():
    import ctypes
    from refquant.numerics import fma_f32
    libm = ctypes.CDLL("libm.so.6")
    libm.fmaf.restype = ctypes.c_float
    libm.fmaf.argtypes = [ctypes.c_float] * 3
    rng = np.random.default_rng(11)
    a = (rng.standard_normal(3000) * 2.0 ** rng.integers(-40, 40, 3000)).astype(np.float32)
    b = (rng.standard_normal(3000) * 2.0 ** rng.integers(-40, 40, 3000)).astype(np.float32)
    c = np.where(np.arange(3000) % 2 == 0, -(a * b), rng.standard_normal(3000)).astype(np.float32)
    ref = np.array([libm.fmaf(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)], np.float32)
    np.testing.assert_array_equal(fma_f32(a, b, c).view(np.uint32), ref.view(np.uint32))
