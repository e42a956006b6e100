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
from refquant.conformance.strategies import MATMUL_KINDS, float_rows, importance
from refquant.ggml import dot

# the types ggml-python 0.0.45's ggml has (ids below its GGML_TYPE_COUNT, 42); newer ones (Q2_0)
# are checked against llama.cpp's ggml in their own tests (tests/test_q2_0_vs_llama_cpp.py)
GGML_PYTHON_TYPE_COUNT = 42
TYPES = [t for t in dot.VEC_DOT_TYPE if refquant.get_format(t).ggml_type < GGML_PYTHON_TYPE_COUNT]
LEGACY = [t for t in TYPES if dot.VEC_DOT_TYPE[t] in ("Q8_0", "Q8_1")]   # Q8_K types: one test below


def operands(data, qtype, max_rows=3):
    fmt = refquant.get_format(qtype)
    if fmt.block_size == 32:
        w = refquant.quantize(data.draw(float_rows(32, max_rows=4)), qtype)
    elif qtype in dot.LATTICE or qtype in dot.IQ1:  # grid searches: with an importance matrix, on inputs they accept
        x = data.draw(float_rows(fmt.block_size, max_rows=2, max_blocks=2, kinds=MATMUL_KINDS))
        w = refquant.quantize(x, qtype, data.draw(importance(x.shape[1])))
        max_rows = min(max_rows, 2)
    else:  # super-blocks of 256: fewer of them keep the draw quick
        w = refquant.quantize(data.draw(float_rows(fmt.block_size, max_rows=2, max_blocks=2)), qtype)
        max_rows = min(max_rows, 2)
    K = w.shape[1] // fmt.type_size * fmt.block_size
    bs = data.draw(st.sampled_from([32, fmt.block_size]))   # activation blocks of one kind per 32 or per 256
    a = data.draw(float_rows(bs, max_rows=max_rows, min_blocks=K // bs, max_blocks=K // bs))
    return w, a


def test_vec_dot_types_are_ggmls(ggml):
    for qt in TYPES:
        assert ggml.vec_dot_type(qt) == dot.VEC_DOT_TYPE[qt]


@pytest.mark.parametrize("vt", ["Q8_0", "Q8_1"])
@given(x=float_rows(32))
def test_x86_activation_quantizer_is_ggml_from_float(ggml, vt, x):
    np.testing.assert_array_equal(dot.quantize_activation(x, vt, "x86"), ggml.from_float(x, vt))


@given(x=float_rows(256, max_blocks=2), variant=st.sampled_from(["ref", "x86"]))
def test_q8_k_activation_quantizer_is_ggml_from_float(ggml, x, variant):
    """x86's from_float for Q8_K is quantize_row_q8_K_ref: both variants give its bytes."""
    np.testing.assert_array_equal(dot.quantize_activation(x, "Q8_K", variant), ggml.from_float(x, "Q8_K"))


@pytest.mark.parametrize("vt", ["Q8_0", "Q8_1"])
@given(x=float_rows(32))
def test_ref_activation_quantizer_is_quantize_row_ref(ggml, vt, x):
    np.testing.assert_array_equal(dot.quantize_activation(x, vt, "ref"), ggml.quantize_row_ref(x, vt))


@pytest.mark.parametrize("qtype", [t for t in LEGACY if t != "Q5_0"])
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


@pytest.mark.parametrize("qtype", LEGACY)
@given(data=st.data())
def test_simd_integer_part_is_exact(ggml, qtype, data):
    """With every scale 1.0 (and the Q4_1/Q5_1 offsets 0) each float step of the SIMD kernel is
    exact, so its result is the exact integer dot, which the spec's block_dots must equal."""
    w, a = operands(data, qtype)
    vt = dot.VEC_DOT_TYPE[qtype]
    fmt = refquant.get_format(qtype)
    qa = dot.quantize_activation(a, vt, "ref")     # codes in [-127, 127]
    if qtype == "MXFP4":                           # e = 128: scale 2^(e-128) = 1
        w1 = w.reshape(-1, fmt.type_size).copy()
        w1[:, 0] = 128
        w1 = w1.reshape(w.shape)
    elif qtype == "NVFP4":                         # UE4M3 0x40 = 2.0, stored as its half: 1
        w1 = w.reshape(-1, fmt.type_size).copy()
        w1[:, 0:4] = 0x40
        w1 = w1.reshape(w.shape)
    else:
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
    if qtype in dot.NESTED:
        q, _, aq, _ = dot._nested_operands(w1, qtype, qa1)
        exact = np.einsum("mup,nup->mn", aq.astype(np.int64), q.astype(np.int64)).astype(np.float32)
    else:
        wb = dot.decode_weight_blocks(w1, qtype)
        ab = dot.decode_activation_blocks(qa1, vt)
        exact = dot.block_dots(wb["q"], ab["q"]).sum(axis=2).astype(np.float32)  # |sum| < 2^24: exact
    np.testing.assert_array_equal(ggml.vec_dot(w1, qa1, qtype), exact)


@pytest.mark.parametrize("qtype", LEGACY)
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


# --------------------------------------------------------------------------- K-quants

# byte offsets of the float fields in each block: (fp16 d, fp16 dmin or None)
K_SCALE_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None),
                  "IQ4_XS": (0, None), "TQ1_0": (52, None), "TQ2_0": (64, None),
                  **{t: (0, None) for t in dot.LATTICE}, "IQ1_S": (0, None), "IQ1_M": ("iq1m", None)}


def _set_fp16(blocks: np.ndarray, at, bits: int, i=slice(None)) -> None:
    """Write fp16 `bits` into the scale field `at` of blocks[i]; IQ1_M keeps its d in the top
    nibbles of its four uint16 scales (bytes 49, 51, 53, 55)."""
    if at == "iq1m":
        for k in range(4):
            nib = (bits >> (4 * k)) & 0xF
            blocks[i, 49 + 2 * k] = (blocks[i, 49 + 2 * k] & 0x0F) | (nib << 4)
    else:
        blocks[i, at], blocks[i, at + 1] = bits & 0xFF, bits >> 8


@st.composite
def raw_rows(draw, type_size: int, nblocks: int, nrows: int):
    """Rows of blocks of arbitrary bytes, each block random, all 0x00, all 0xFF or all 0x80
    (the extreme codes, scales and, for Q8_K, qs = -128)."""
    blocks = []
    for _ in range(nrows * nblocks):
        kind = draw(st.sampled_from(["random", "random", 0x00, 0xFF, 0x80]))
        if kind == "random":
            blocks.append(np.frombuffer(draw(st.binary(min_size=type_size, max_size=type_size)), np.uint8))
        else:
            blocks.append(np.full(type_size, kind, np.uint8))
    return np.concatenate(blocks).reshape(nrows, -1)


def _finite_fp16(blocks: np.ndarray, at, data) -> None:
    """Replace the fp16 field at `at` of every block by a drawn finite value."""
    for i in range(len(blocks)):
        bits = data.draw(st.integers(0, 0xFFFF).filter(lambda b: (b & 0x7C00) != 0x7C00))
        _set_fp16(blocks, at, bits, i)


@pytest.mark.parametrize("qtype", dot.Q8_K_TYPES)
@given(data=st.data())
def test_k_vec_dot_is_the_generic_kernel_on_arbitrary_bytes(ggml, qtype, data):
    """Every code, scale and min the block can hold, Q8_K codes down to -128, bsums as stored
    (consistent with qs or not: the kernels read them as given), lanes up to 2^24 (Q6_K with
    extreme bytes): the generic kernel's integer and float steps, bit for bit. Scales are drawn
    finite (a NaN's payload is not part of the contract)."""
    fmt = refquant.get_format(qtype)
    nb, N, M = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    w = data.draw(raw_rows(fmt.type_size, nb, N))
    wblocks = w.reshape(-1, fmt.type_size)
    for at in K_SCALE_FIELDS[qtype]:
        if at is not None:
            _finite_fp16(wblocks, at, data)
    qa = data.draw(raw_rows(292, nb, M))
    ablocks = qa.reshape(-1, 292)
    for i in range(len(ablocks)):
        ablocks[i, 0:4] = np.frombuffer(np.float32(data.draw(
            st.floats(-1e3, 1e3, width=32) | st.sampled_from([0.0, 1.0, 2.0 ** -126, 2.0 ** -140]))).tobytes(), np.uint8)
    ours = dot.vec_dot_quantized(w, qtype, qa)
    np.testing.assert_array_equal(ours.view(np.uint32), ggml.vec_dot(w, qa, qtype, generic=True).view(np.uint32))


@pytest.mark.parametrize("qtype", dot.Q8_K_TYPES)
@given(data=st.data())
def test_q8_k_vec_dot_against_ggml(ggml, qtype, data):
    """On rows quantized without an importance matrix (the lattice types: with one, as two of
    them require it), against Q8_K activations (one draw, three
    checks, as the super-blocks are slow to draw):
    1. the generic kernel, bit for bit;
    2. the AVX2 kernel the type traits select, and the spec's own result, within the bound
       derived for their orders (simd_error_bound);
    3. the AVX2 integer part, exactly: with d = dmin = 1 (fp16) and Q8_K's d = 1.0f every float
       step is exact while the partial sums stay below 2^24 (S < 2^24), and the kernel must
       return sum(lanes) - sum(mins) as the spec's lane_dots and min_dots give them."""
    w, a = operands(data, qtype)
    fmt = refquant.get_format(qtype)
    nb = w.shape[1] // fmt.type_size
    qa = dot.quantize_activation(a, "Q8_K")
    ours = dot.vec_dot_quantized(w, qtype, qa)
    np.testing.assert_array_equal(ours.view(np.uint32), ggml.vec_dot(w, qa, qtype, generic=True).view(np.uint32))

    ys = ggml.vec_dot(w, qa, qtype).astype(np.float64)
    R, S = dot.exact_quantized_dot(w, qtype, qa)
    fin = np.isfinite(R) & np.isfinite(S) & (S < 1e38)
    bound = dot.simd_error_bound(qtype, nb, S)
    with np.errstate(invalid="ignore"):
        assert (np.abs(ys - R)[fin] <= bound[fin]).all()
        assert (np.abs(ours.astype(np.float64) - R)[fin] <= bound[fin]).all()

    blocks = w.reshape(-1, fmt.type_size).copy()
    for at in K_SCALE_FIELDS[qtype]:
        if at is not None:
            _set_fp16(blocks, at, 0x3C00)
    w1 = blocks.reshape(w.shape)
    ablocks = qa.reshape(-1, 292).copy()
    ablocks[:, 0:4] = np.frombuffer(np.float32(1.0).tobytes(), np.uint8)
    qa1 = ablocks.reshape(qa.shape)
    wb, ab = dot._k_operands(w1, qtype, qa1)
    exact = dot.lane_dots(wb, ab).sum(axis=(2, 3))
    if "m" in wb:
        exact = exact - dot.min_dots(wb, ab).sum(axis=2)
    exact = exact * wb.get("final", 1)                         # IQ2_*, IQ3_XXS: 0.125f, 0.25f at the end
    limit = 2 ** 24 * wb.get("final", 1)                       # the sums before the 0.125f stay below 2^24
    if qtype in dot.IQ1:                                      # + 0.125 * the delta part: eighths
        exact = exact + dot.IQ1_DELTA * dot.iq1_delta_dots(qtype, wb, ab).sum(axis=2)
        limit = 2 ** 21
    _, S1 = dot.exact_quantized_dot(w1, qtype, qa1)
    small = S1 < limit                                        # every partial sum exact in float32
    np.testing.assert_array_equal(ggml.vec_dot(w1, qa1, qtype)[small], exact.astype(np.float32)[small])


@pytest.mark.parametrize("qtype", ["IQ4_NL", "MXFP4", "Q1_0", "NVFP4"])
@given(data=st.data())
def test_q8_0_lookup_types_are_the_generic_kernel_on_arbitrary_bytes(ggml, qtype, data):
    """IQ4_NL, MXFP4, Q1_0 and NVFP4 on every code and scale byte (MXFP4's e from 2^-128 to
    2^127, where the scale product overflows to inf; every UE4M3 byte), against Q8_0 bytes with
    codes down to -128."""
    fmt = refquant.get_format(qtype)
    nb, N, M = data.draw(st.integers(1, 6 if fmt.block_size == 32 else 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    w = data.draw(raw_rows(fmt.type_size, nb, N))
    if qtype in ("IQ4_NL", "Q1_0"):
        _finite_fp16(w.reshape(-1, fmt.type_size), 0, data)
    qa = data.draw(raw_rows(34, nb * fmt.block_size // 32, M))
    _finite_fp16(qa.reshape(-1, 34), 0, data)
    ours = dot.vec_dot_quantized(w, qtype, qa)
    np.testing.assert_array_equal(ours.view(np.uint32), ggml.vec_dot(w, qa, qtype, generic=True).view(np.uint32))
