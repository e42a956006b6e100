"""bitsandbytes' formats (refquant.bnb), bit-exact with bitsandbytes itself on the CPU.

bitsandbytes wraps two of its PyTorch kernels in torch.compile; the compiled and eager forms
compute the same elementwise products, so compilation is turned off here to keep the suite fast.
"""
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

torch = pytest.importorskip("torch", reason="bitsandbytes' oracle needs torch (the `test` extra installs it)")
bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not importable (the `test` extra installs it)")
torch._dynamo.config.disable = True
import bitsandbytes.functional as F  # noqa: E402
import ml_dtypes  # noqa: E402

from refquant import gemm  # noqa: E402
from refquant.bnb import blockwise as rbw  # noqa: E402
from refquant.bnb import codebooks as rcb  # noqa: E402
from refquant.bnb import int8 as ri8  # noqa: E402
from refquant.bnb import torch_cpu  # noqa: E402
from refquant.conformance.strategies import float_rows, float_tensors  # noqa: E402
from refquant.errors import InputError  # noqa: E402

F32 = np.float32
AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
AVX512BF16 = bool(F.has_avx512bf16())


def _cpu_has_avx512f():
    """What bitsandbytes' native library checks (__builtin_cpu_supports("avx512f"))."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return AVX512


CPU_AVX512F = _cpu_has_avx512f()
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPES = ("float32", "float16", "bfloat16")
CEA = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def to_torch(x):
    if x.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(np.ascontiguousarray(x).view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x).copy())


def to_numpy(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def same_bits(a, b):
    """Equal bit patterns (so -0.0 != 0.0), whatever the float dtype."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def dtype_of(x):
    return rbw.dtype_name(x.dtype)


# ============================================================================ code tables

def test_nf4_table_derived_from_normal_quantiles_equals_bitsandbytes():
    same_bits(rcb.nf4_code(), to_numpy(F.get_4bit_type("nf4", device="cpu")))


def test_create_normal_map_equals_bitsandbytes():
    pytest.importorskip("scipy", reason="bitsandbytes' create_normal_map needs scipy")
    for offset, extra in [(rcb.NF4_OFFSET, True), (rcb.NF4_OFFSET, False), (0.99, True), (0.9, False)]:
        same_bits(rcb.create_normal_map(offset, extra), to_numpy(F.create_normal_map(offset, extra)))


def test_nf4_exact_paper_offset_gives_a_different_table():
    """Divergence: bitsandbytes' offset 0.9677083 is the paper's 1/2((1-1/30)+(1-1/32)) cut to
    7 digits; the table follows the cut value (several entries move by 1-3 ulps)."""
    pytest.importorskip("scipy", reason="bitsandbytes' create_normal_map needs scipy")
    exact = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))
    ours, theirs = rcb.create_normal_map(exact), to_numpy(F.create_normal_map(exact))
    same_bits(ours, theirs)
    assert not np.array_equal(ours, rcb.create_normal_map())


def test_nf4_is_not_qlora_equation_4():
    """Divergence: QLoRA's equation (4) takes midpoints of 2**k + 1 evenly spaced quantiles,
    q_i = (Q(i / 17) + Q((i + 1) / 17)) / 2 (with the ends replaced); bitsandbytes' NF4 takes
    quantiles at linspace(0.9677083, 0.5) on each side (the paper's appendix E). The two tables
    differ; bitsandbytes' is the one checkpoints hold."""
    from statistics import NormalDist
    nd = NormalDist()
    eps = 1 / 34
    p = np.linspace(eps, 1 - eps, 17)
    q = np.array([nd.inv_cdf(v) for v in p])
    eq4 = (q[:-1] + q[1:]) / 2
    eq4 = (eq4 / np.abs(eq4).max()).astype(F32)
    assert not np.allclose(eq4, rcb.nf4_code(), atol=1e-2)
    assert 0.0 in rcb.nf4_code() and 0.0 not in eq4


def test_fp4_table_equals_bitsandbytes():
    same_bits(rcb.fp4_code(), to_numpy(F.get_4bit_type("fp4", device="cpu")))


@pytest.mark.parametrize("kernel, ncols", [("scalar", 34), ("avx512", 32), ("torch", 33)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_tables_inside_the_dequantize_kernels(kernel, ncols, quant_type):
    """Every code decoded with absmax 1 gives the table each CPU kernel holds."""
    if kernel != dequant_kernel_for((1, ncols), 64):
        pytest.skip(f"this CPU does not run the {kernel} kernel for shape (1, {ncols})")
    idx = np.arange(ncols) % 16
    packed = rbw.pack_nibbles(np.concatenate([idx, [0] * (ncols % 2)]))
    state = F.QuantState(absmax=torch.ones(1), shape=torch.Size((1, ncols)), blocksize=64,
                         quant_type=quant_type, dtype=torch.float32)
    theirs = to_numpy(F.dequantize_4bit(torch.from_numpy(packed), state))
    ours = rbw.dequantize_4bit(packed, rbw.QuantState(np.ones(1, F32), (1, ncols), None, 64, "float32", quant_type),
                               kernel=kernel)
    same_bits(ours, theirs)


def test_create_fp8_map_fp4_is_not_the_fp4_table():
    """Divergence: get_4bit_type's comment says its FP4 table comes from
    create_fp8_map(True, 2, 1, 4); the subnormal differs (1/48 there, 1/192 in the table)."""
    ours = rcb.create_fp8_map(True, 2, 1, 4)
    same_bits(ours, to_numpy(F.create_fp8_map(True, 2, 1, 4)))
    assert F32(1 / 48) in ours and F32(1 / 192) not in ours
    assert F32(0.0625 / 12) in rcb.fp4_code()


@pytest.mark.parametrize("args", [(True, 7, 8), (False, 7, 8), (True, 4, 8), (True, 3, 8), (True, 2, 4), (True, 5, 8)])
def test_dynamic_map_equals_bitsandbytes(args):
    same_bits(rcb.create_dynamic_map(*args), to_numpy(F.create_dynamic_map(*args)))


# ============================================================================ PyTorch arithmetic

@given(start=st.floats(-1e3, 1e3, width=32), end=st.floats(-1e3, 1e3, width=32), steps=st.integers(2, 200))
def test_linspace_matches_torch(start, end, steps):
    same_bits(torch_cpu.linspace_f32(start, end, steps), to_numpy(torch.linspace(start, end, steps, dtype=torch.float32)))


@given(data=st.data())
def test_sum_and_mean_match_torch(data):
    n = data.draw(st.one_of(st.integers(1, 300), st.integers(32760, 40000)))
    threads = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 2**32 - 1))
    x = np.abs(np.random.default_rng(seed).standard_normal(n) * data.draw(st.sampled_from([1e-3, 1.0, 1e4]))).astype(F32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        t = torch.from_numpy(x)
        same_bits(torch_cpu.sum_f32(x, threads), to_numpy(t.sum()))
        same_bits(torch_cpu.mean_f32(x, threads), to_numpy(t.mean()))
    finally:
        torch.set_num_threads(old)


# ============================================================================ 4-bit

def assert_state_equal(ours, theirs):
    assert ours.blocksize == theirs.blocksize
    assert ours.dtype == str(theirs.dtype).replace("torch.", "")
    assert ours.nested == theirs.nested
    if ours.nested:
        np.testing.assert_array_equal(ours.absmax, to_numpy(theirs.absmax))
        same_bits(np.asarray(ours.offset, F32), to_numpy(theirs.offset))
        same_bits(ours.state2.absmax, to_numpy(theirs.state2.absmax))
        same_bits(ours.state2.code, to_numpy(theirs.state2.code))
        assert ours.state2.blocksize == theirs.state2.blocksize
    else:
        same_bits(ours.absmax, to_numpy(theirs.absmax))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@given(data=st.data())
def test_quantize_4bit_matches(quant_type, data):
    x = data.draw(float_tensors(DTYPES))
    blocksize = data.draw(st.sampled_from(rbw.BLOCKSIZES_4BIT))
    cs = data.draw(st.booleans())
    packed, state = F.quantize_4bit(to_torch(x), blocksize=blocksize, quant_type=quant_type, compress_statistics=cs)
    ours, ostate = rbw.quantize_4bit(x, blocksize, quant_type, cs, num_threads=torch.get_num_threads())
    np.testing.assert_array_equal(ours, to_numpy(packed))
    assert ostate.shape == tuple(state.shape) and ostate.quant_type == state.quant_type
    same_bits(ostate.code, to_numpy(state.code))
    assert_state_equal(ostate, state)


def dequant_kernel_for(shape, blocksize):
    return rbw.bnb_cpu_dequantize_4bit_kernel(shape, blocksize, AVX512, CPU_AVX512F)


def avx512_row_aligned(shape, blocksize):
    """bitsandbytes' AVX512 kernel is right only when every row starts a block (see
    test_avx512_dequantize_4bit_restarts_blocks_at_each_row)."""
    return dequant_kernel_for(shape, blocksize) != "avx512" or shape[-1] % blocksize == 0


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@given(data=st.data())
def test_dequantize_4bit_matches(quant_type, data):
    x = data.draw(float_tensors(DTYPES, max_blocks=24))
    blocksize = data.draw(st.sampled_from(rbw.BLOCKSIZES_4BIT))
    if x.ndim == 2 and not avx512_row_aligned(x.shape, blocksize):
        x = x.reshape(-1)
    cs = data.draw(st.booleans())
    packed, state = F.quantize_4bit(to_torch(x), blocksize=blocksize, quant_type=quant_type, compress_statistics=cs)
    theirs = to_numpy(F.dequantize_4bit(packed, state)).reshape(x.shape)   # see test_dequantize_4bit_output_shape
    ours_packed, ostate = rbw.quantize_4bit(x, blocksize, quant_type, cs, num_threads=torch.get_num_threads())
    shape = x.shape if x.ndim == 2 else (1, x.shape[0])
    ours = rbw.dequantize_4bit(ours_packed, ostate, kernel=dequant_kernel_for(shape, blocksize), bf16_daz=AVX512BF16)
    same_bits(ours, theirs)


@pytest.mark.parametrize("out_dtype", DTYPES)
@given(data=st.data())
def test_dequantize_4bit_any_codes_and_scales(out_dtype, data):
    """Arbitrary nibbles and finite float32 scales (subnormal, huge, negative) decode as bitsandbytes does."""
    quant_type = data.draw(st.sampled_from(["nf4", "fp4"]))
    blocksize = data.draw(st.sampled_from(rbw.BLOCKSIZES_4BIT))
    rows = data.draw(st.integers(1, 3))
    cols = data.draw(st.sampled_from([2, 16, 30, 33, 64, 96, 128, 4096]))
    if not avx512_row_aligned((rows, cols), blocksize):
        rows = 1
        if not avx512_row_aligned((rows, cols), blocksize):
            cols = 34   # the scalar kernel
    n = rows * cols
    nb = -(-n // blocksize)
    raw = np.frombuffer(data.draw(st.binary(min_size=(n + 1) // 2, max_size=(n + 1) // 2)), np.uint8).copy().reshape(-1, 1)
    absmax = data.draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=nb, max_size=nb))
    absmax = np.array(absmax, F32)
    state = F.QuantState(absmax=torch.from_numpy(absmax), shape=torch.Size((rows, cols)), blocksize=blocksize,
                         quant_type=quant_type, dtype=TORCH_DTYPE[out_dtype])
    theirs = to_numpy(F.dequantize_4bit(torch.from_numpy(raw), state)).reshape(rows, cols)
    ours = rbw.dequantize_4bit(raw, rbw.QuantState(absmax, (rows, cols), None, blocksize, out_dtype, quant_type),
                               kernel=dequant_kernel_for((rows, cols), blocksize), bf16_daz=AVX512BF16)
    same_bits(ours, theirs)


def test_dequantize_4bit_output_shape():
    """Divergence (shape only): for a 1-D tensor bitsandbytes' native kernels return (1, n),
    its PyTorch kernel (odd n) returns (n,), and when the packed tensor has a single row
    (n <= 2) the result is transposed to (n, 1). refquant always returns the quantized shape."""
    for n, theirs_shape in [(2, (2, 1)), (3, (3,)), (100, (1, 100))]:
        x = np.linspace(-1, 1, n).astype(F32)
        packed, state = F.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type="nf4")
        theirs = to_numpy(F.dequantize_4bit(packed, state))
        assert theirs.shape == theirs_shape
        ours = rbw.dequantize_4bit(*rbw.quantize_4bit(x, 64, "nf4"))
        assert ours.shape == (n,)
        same_bits(ours, theirs.reshape(n))


@pytest.mark.skipif(not CPU_AVX512F, reason="the AVX512 dequantize_4bit kernel runs only on AVX512 CPUs")
def test_avx512_dequantize_4bit_restarts_blocks_at_each_row():
    """Divergence: bitsandbytes' AVX512 kernel indexes absmax as row * (cols // blocksize) +
    col // blocksize, as if every row began a block. When cols is a multiple of 16 but not of
    the blocksize, blocks really run across rows (quantize_4bit flattens), and the kernel uses
    the wrong scales; refquant (and the scalar and PyTorch kernels) use the flat blocks."""
    rng = np.random.default_rng(3)
    rows, cols, bs = 3, 48, 64
    x = (rng.standard_normal((rows, cols)) * np.array([[1.0], [100.0], [0.01]])).astype(F32)
    packed, state = F.quantize_4bit(torch.from_numpy(x), blocksize=bs, quant_type="nf4")
    theirs = to_numpy(F.dequantize_4bit(packed, state))
    ours_packed, ostate = rbw.quantize_4bit(x, bs, "nf4")
    ours = rbw.dequantize_4bit(ours_packed, ostate, kernel="avx512")
    assert not np.array_equal(ours, theirs)
    # what the kernel computes: the flat codes with per-row block indices
    q = rbw.unpack_nibbles(ours_packed, rows * cols).reshape(rows, cols)
    wrong_block = np.arange(rows)[:, None] * (cols // bs) + np.arange(cols)[None, :] // bs
    same_bits((rcb.nf4_code()[q] * ostate.absmax[wrong_block]).astype(F32), theirs)
    # bitsandbytes' own PyTorch kernel agrees with refquant
    torch_kernel = torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(
        CEA, packed, state.absmax, bs, "nf4", [rows, cols], torch.float32)
    same_bits(ours, to_numpy(torch_kernel))


def test_fp4_small_positive_values_get_the_negative_zero_code():
    """quantize_4bit's FP4 lookup sorts the table, where +0 (index 0) and the sign-bit zero
    (index 8) tie: a value in (0, 1/384] lands on index 8, 0 and small negatives on index 0."""
    x = np.array([0.0, 1e-4, -1e-4, 1.0], F32)
    packed, _ = F.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type="fp4")
    ours, _ = rbw.quantize_4bit(x, 64, "fp4")
    np.testing.assert_array_equal(ours, to_numpy(packed))
    np.testing.assert_array_equal(rbw.unpack_nibbles(ours, 4), [0, 8, 0, 3])


@settings(max_examples=8)   # each example quantizes over a million values
@given(data=st.data())
def test_double_quant_offset_with_many_blocks_and_threads(data):
    """Above 32768 blocks PyTorch's mean splits over threads; the offset follows the split."""
    threads = data.draw(st.integers(1, 3))
    nblocks = data.draw(st.integers(32768, 40000))
    seed = data.draw(st.integers(0, 2**32 - 1))
    x = (np.random.default_rng(seed).standard_normal(nblocks * 32) * 0.02).astype(F32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        packed, state = F.quantize_4bit(torch.from_numpy(x), blocksize=32, quant_type="nf4", compress_statistics=True)
    finally:
        torch.set_num_threads(old)
    ours, ostate = rbw.quantize_4bit(x, 32, "nf4", True, num_threads=threads)
    np.testing.assert_array_equal(ours, to_numpy(packed))
    assert_state_equal(ostate, state)
    same_bits(rbw.dequantize_4bit(ours, ostate), to_numpy(F.dequantize_4bit(packed, state)).reshape(-1))


def test_4bit_bad_input_is_refused():
    with pytest.raises(InputError, match="blocksize"):
        rbw.quantize_4bit(np.zeros(64, F32), 48, "nf4")
    with pytest.raises(InputError, match="non-finite"):
        rbw.quantize_4bit(np.array([1.0, np.inf], F32), 64, "nf4")
    with pytest.raises(InputError, match="float32, float16 or bfloat16"):
        rbw.quantize_4bit(np.zeros(64, np.float64), 64, "nf4")
    with pytest.raises(Exception, match="nf4"):
        rbw.quantize_4bit(np.zeros(64, F32), 64, "int4")


# ============================================================================ 8-bit blockwise

@pytest.mark.parametrize("method", ["cpu-lut", "nearest"])
@given(data=st.data())
def test_quantize_blockwise_matches(method, data):
    x = data.draw(float_tensors(DTYPES))
    blocksize = data.draw(st.sampled_from([32, 64, 128, 256, 512, 1024, 4096, 100]))
    nested = data.draw(st.booleans())
    code = F.create_dynamic_map()
    if method == "cpu-lut":
        q, state = F.quantize_blockwise(to_torch(x), code=code, blocksize=blocksize, nested=nested)
    else:   # bitsandbytes' PyTorch kernel, which the CPU build uses without its native library
        q, absmax = torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(CEA, to_torch(x), code, blocksize)
        state = None
    ours, ostate = rbw.quantize_blockwise(x, blocksize=blocksize, nested=nested and method == "cpu-lut", method=method,
                                          num_threads=torch.get_num_threads())
    np.testing.assert_array_equal(ours, to_numpy(q))
    if state is not None:
        assert_state_equal(ostate, state)
        same_bits(rbw.dequantize_blockwise(ours, ostate), to_numpy(F.dequantize_blockwise(q, state)))
    else:
        same_bits(ostate.absmax, to_numpy(absmax))


def test_cpu_lut_kernel_is_not_the_nearest_entry():
    """Divergence: bitsandbytes' native CPU quantize_blockwise rounds the scaled value to one of
    65536 levels before the lookup, so next to a midpoint it can pick the farther entry; its
    PyTorch kernel (and CUDA's binary search) picks the nearest."""
    x = np.array([1.0, -0.98594, -0.95781, -0.9297], F32)
    q, _ = F.quantize_blockwise(torch.from_numpy(x), blocksize=64)
    lut, _ = rbw.quantize_blockwise(x, blocksize=64, method="cpu-lut")
    near, _ = rbw.quantize_blockwise(x, blocksize=64, method="nearest")
    np.testing.assert_array_equal(lut, to_numpy(q))
    assert not np.array_equal(lut, near)
    code = rcb.create_dynamic_map()
    assert np.all(np.abs(code[near] - x) <= np.abs(code[lut] - x))


@pytest.mark.skipif(not (CPU_AVX512F and AVX512BF16), reason="needs a CPU with AVX512-BF16")
def test_avx512_bf16_output_reads_subnormals_as_zero():
    """Divergence: on AVX512-BF16 CPUs dequantize_4bit's bfloat16 output comes from
    vcvtneps2bf16, which treats float32 subnormals as zero; elsewhere they round normally."""
    absmax = np.array([1e-39, 3e-39], F32)
    packed = np.full((64, 1), 0xFF, np.uint8)
    state = F.QuantState(absmax=torch.from_numpy(absmax), shape=torch.Size((1, 128)), blocksize=64,
                         quant_type="nf4", dtype=torch.bfloat16)
    theirs = to_numpy(F.dequantize_4bit(torch.from_numpy(packed), state))
    ostate = rbw.QuantState(absmax, (1, 128), None, 64, "bfloat16", "nf4")
    same_bits(rbw.dequantize_4bit(packed, ostate, kernel="avx512", bf16_daz=True), theirs)
    assert np.all(theirs.astype(F32) == 0)
    assert np.all(rbw.dequantize_4bit(packed, ostate, kernel="scalar").astype(F32) != 0)


@pytest.mark.parametrize("out_dtype", DTYPES)
@given(data=st.data())
def test_dequantize_blockwise_any_codes_and_scales(out_dtype, data):
    n = data.draw(st.integers(1, 700))
    blocksize = data.draw(st.sampled_from([64, 256, 4096, 7]))
    nb = -(-n // blocksize)
    q = np.frombuffer(data.draw(st.binary(min_size=n, max_size=n)), np.uint8).copy()
    absmax = np.array(data.draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False),
                                         min_size=nb, max_size=nb)), F32)
    code = F.create_dynamic_map()
    state = F.QuantState(absmax=torch.from_numpy(absmax), code=code, blocksize=blocksize, dtype=TORCH_DTYPE[out_dtype])
    theirs = to_numpy(F.dequantize_blockwise(torch.from_numpy(q), state))
    ours = rbw.dequantize_blockwise(q, rbw.QuantState(absmax, (n,), to_numpy(code), blocksize, out_dtype))
    same_bits(ours, theirs)


@given(x=float_rows(64, max_rows=2, max_blocks=3))
def test_quantize_blockwise_with_another_sorted_code(x):
    """Any sorted 256-entry table (here the unsigned dynamic map and a linear one)."""
    for code in (F.create_dynamic_map(signed=False), F.create_linear_map(True, 8)):
        q, state = F.quantize_blockwise(torch.from_numpy(x), code=code, blocksize=64)
        ours, _ = rbw.quantize_blockwise(x, code=to_numpy(code), blocksize=64)
        np.testing.assert_array_equal(ours, to_numpy(q))


# ============================================================================ LLM.int8()

@st.composite
def int8_inputs(draw, max_rows=6, max_k=80):
    m = draw(st.integers(1, max_rows))
    k = draw(st.integers(1, max_k))
    dt = draw(st.sampled_from(DTYPES))
    x = draw(float_rows(k, max_rows=1, max_blocks=m, min_blocks=m,
                        kinds=("arbitrary", "zeros", "constant", "ties", "subnormal", "outlier", "gaussian", "positive")))
    x = x.reshape(m, k)
    big = F32(6e4) if dt == "float16" else F32(3e38)
    x = np.clip(x, -big, big).astype({"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dt])
    return x


@given(x=int8_inputs(), threshold=st.sampled_from([0.0, 0.5, 1.7, 6.0, 5.99, 1e4]))
def test_int8_vectorwise_quant_matches(x, threshold):
    ca, stats, cols = F.int8_vectorwise_quant(to_torch(x), threshold)
    oca, ostats, ocols = ri8.int8_vectorwise_quant(x, threshold)
    np.testing.assert_array_equal(oca, to_numpy(ca))
    same_bits(ostats, to_numpy(stats))
    assert (cols is None) == (ocols is None)
    if cols is not None:
        np.testing.assert_array_equal(ocols, to_numpy(cols))


@given(data=st.data())
def test_int8_vectorwise_dequant_matches(data):
    m, k = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 64))
    q = np.frombuffer(data.draw(st.binary(min_size=m * k, max_size=m * k)), np.int8).reshape(m, k).copy()
    stats = np.array(data.draw(st.lists(st.floats(0, float(F32(1e30)), width=32), min_size=m, max_size=m)), F32)
    same_bits(ri8.int8_vectorwise_dequant(q, stats),
              to_numpy(F.int8_vectorwise_dequant(torch.from_numpy(q), torch.from_numpy(stats))))


@given(data=st.data())
def test_int8_linear_matmul_is_exact(data):
    m, n = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    k = data.draw(st.sampled_from([2, 7, 64, 1100, 4096]))   # K = 1: test_int8_linear_matmul_k1
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    extreme = data.draw(st.booleans())
    a = (np.full((m, k), -128) if extreme else rng.integers(-128, 128, (m, k))).astype(np.int8)
    b = (np.full((n, k), -128) if extreme else rng.integers(-128, 128, (n, k))).astype(np.int8)
    ours = ri8.int8_linear_matmul(a, b)
    np.testing.assert_array_equal(ours, a.astype(np.int64) @ b.astype(np.int64).T)
    if AVX512 or k * 128 * 128 <= 2**24:   # else bitsandbytes' float32 kernel may round (divergence 15)
        np.testing.assert_array_equal(ours, to_numpy(F.int8_linear_matmul(torch.from_numpy(a), torch.from_numpy(b))))


def test_int8_linear_matmul_pytorch_kernel_rounds_large_sums():
    """Divergence: without AVX512 bitsandbytes' CPU int8_linear_matmul is its PyTorch kernel,
    a float32 matmul: sums past 2**24 round. refquant's (and torch._int_mm's) are exact."""
    rng = np.random.default_rng(5)
    k = 65536
    a = rng.integers(100, 128, (2, k)).astype(np.int8)
    b = rng.integers(100, 128, (3, k)).astype(np.int8)
    exact = a.astype(np.int64) @ b.astype(np.int64).T
    assert exact.min() > 2**29
    default = torch.ops.bitsandbytes.int8_linear_matmul.default.redispatch(CEA, torch.from_numpy(a), torch.from_numpy(b))
    assert not np.array_equal(to_numpy(default), exact)
    np.testing.assert_array_equal(ri8.int8_linear_matmul(a, b), exact)


def test_int8_linear_matmul_k1():
    """Divergence: on AVX512 CPUs bitsandbytes runs torch._int_mm, which returns wrong sums
    for K = 1 (N >= 2) in torch 2.13; its PyTorch kernel and refquant give the product."""
    a = np.array([[3], [-7]], np.int8)
    b = np.array([[5], [11], [-128]], np.int8)
    exact = a.astype(np.int64) @ b.astype(np.int64).T
    np.testing.assert_array_equal(ri8.int8_linear_matmul(a, b), exact)
    default = torch.ops.bitsandbytes.int8_linear_matmul.default.redispatch(CEA, torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_array_equal(to_numpy(default), exact)
    if AVX512:
        wrong = [not np.array_equal(to_numpy(F.int8_linear_matmul(torch.from_numpy(a), torch.from_numpy(b))), exact)
                 for _ in range(5)]
        assert any(wrong)


@pytest.mark.parametrize("out_dtype", DTYPES)
@given(data=st.data())
def test_int8_mm_dequant_bit_exact_with_bnb_cpu(out_dtype, data):
    m, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    c = np.array(data.draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=m * n, max_size=m * n)), np.int32).reshape(m, n)
    rs = np.array(data.draw(st.lists(st.floats(0, 1e4, width=32), min_size=m, max_size=m)), F32)
    cs = np.array(data.draw(st.lists(st.floats(0, 1e4, width=32), min_size=n, max_size=n)), F32)
    bias = data.draw(st.one_of(st.none(), st.just(np.linspace(-3, 3, n).astype(np.float16))))
    theirs = torch.ops.bitsandbytes.int8_mm_dequant(torch.from_numpy(c), torch.from_numpy(rs), torch.from_numpy(cs),
                                                    dtype=TORCH_DTYPE[out_dtype],
                                                    bias=None if bias is None else torch.from_numpy(bias))
    same_bits(ri8.int8_mm_dequant(c, rs, cs, bias=bias, out_dtype=out_dtype), to_numpy(theirs))


def _int8_operands(data, m, n, k, positive=False):
    lo = 0 if positive else -1
    a = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(lo, 1, (m, k)).astype(F32)
    w = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(lo, 1, (n, k)).astype(F32)
    ca, sa, _ = ri8.int8_vectorwise_quant(a)
    cb, sb, _ = ri8.int8_vectorwise_quant(w)
    return ca, sa, cb, sb


def _dequantized(c, s):
    return c.astype(np.float64) * s.astype(np.float64)[:, None] / 127.0


@pytest.mark.parametrize("out_dtype", ["float16", "bfloat16"])
@given(data=st.data())
def test_int8_scaled_mm_within_the_accumulation_bound(out_dtype, data):
    """int8_linear_matmul + int8_mm_dequant as bitsandbytes runs them, against R in float64
    from the exactly dequantized operands: |Y - R| <= K 2**-24 |A||W| + u_out |R|."""
    m, n, k = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8)), data.draw(st.integers(2, 512))
    ca, sa, cb, sb = _int8_operands(data, m, n, k, positive=data.draw(st.booleans()))
    y = to_numpy(torch.ops.bitsandbytes.int8_scaled_mm(torch.from_numpy(ca), torch.from_numpy(cb), torch.from_numpy(sa),
                                                       torch.from_numpy(sb), dtype=TORCH_DTYPE[out_dtype]))
    r, bound = gemm.fp_accumulation_bound(_dequantized(ca, sa), _dequantized(cb, sb), out_dtype, k)
    assert np.all(np.abs(y.astype(np.float64) - r) <= bound)
    ours = ri8.int8_mm_dequant(ri8.int8_linear_matmul(ca, cb), sa, sb, out_dtype=out_dtype)
    same_bits(ours, y)
    exact = ri8.int8_mm_dequant(ri8.int8_linear_matmul(ca, cb), sa, sb, out_dtype=out_dtype, rule="exact")
    assert np.all(np.abs(exact.astype(np.float64) - r) <= bound)


def test_int8_mm_dequant_cpu_constant_exceeds_the_float32_bound():
    """Divergence: the CPU int8_mm_dequant scales by 6.200124e-05, not 1/127**2 = 6.2000124e-05
    (1.8e-5 relative). With float32 output and same-sign operands the result leaves the
    float32 accumulation bound; refquant's rule="exact" stays inside it."""
    rng = np.random.default_rng(0)
    k = 16
    a = rng.uniform(0.5, 1, (4, k)).astype(F32)
    w = rng.uniform(0.5, 1, (4, k)).astype(F32)
    ca, sa, _ = ri8.int8_vectorwise_quant(a)
    cb, sb, _ = ri8.int8_vectorwise_quant(w)
    c = ri8.int8_linear_matmul(ca, cb)
    y = to_numpy(torch.ops.bitsandbytes.int8_mm_dequant(torch.from_numpy(c), torch.from_numpy(sa),
                                                        torch.from_numpy(sb), dtype=torch.float32))
    r, bound = gemm.fp_accumulation_bound(_dequantized(ca, sa), _dequantized(cb, sb), "float32", k)
    assert np.all(np.abs(y.astype(np.float64) - r) > bound)
    rel = np.abs(y.astype(np.float64) - r) / np.abs(r)
    assert np.all((rel > 1.7e-5) & (rel < 1.9e-5))
    exact = ri8.int8_mm_dequant(c, sa, sb, out_dtype="float32", rule="exact")
    assert np.all(np.abs(exact.astype(np.float64) - r) <= bound)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@given(data=st.data())
def test_llm_int8_outlier_decomposition(dtype, data):
    """bnb.matmul with a threshold (MatMul8bitLt): the int8 part and the 16-bit outlier operands
    bit-exact; the sum within the bound of one 16-bit matmul of K = ncols + 1 terms."""
    m, n, k = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6)), data.draw(st.integers(4, 96))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    npdt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    a = rng.standard_normal((m, k)).astype(F32)
    cols = rng.choice(k, size=data.draw(st.integers(0, 3)), replace=False)
    a[:, cols] *= 20
    a = a.astype(npdt)
    w = (rng.standard_normal((n, k)) * 0.1).astype(np.float16)
    cb, scb, _ = ri8.int8_vectorwise_quant(w)
    threshold = 6.0
    state = bnb.MatmulLtState()
    state.CB, state.SCB, state.threshold, state.has_fp16_weights, state.is_training = (
        torch.from_numpy(cb), torch.from_numpy(scb), threshold, False, False)
    y = to_numpy(bnb.matmul(to_torch(a), torch.from_numpy(w), state=state, threshold=threshold))
    ours, y8, sub_a, sub_b, ocols = ri8.int8_mixed_matmul(a, cb, scb, threshold)
    ca, sca, tcols = F.int8_vectorwise_quant(to_torch(a).to(torch.float16), threshold)
    np.testing.assert_array_equal(ocols, to_numpy(tcols))
    int8_part = torch.ops.bitsandbytes.int8_scaled_mm(ca, torch.from_numpy(cb), sca, torch.from_numpy(scb), dtype=TORCH_DTYPE[dtype])
    same_bits(y8, to_numpy(int8_part))
    if sub_a is None:
        same_bits(ours, y)
        return
    same_bits(sub_b, to_numpy(F.int8_vectorwise_dequant(torch.from_numpy(cb[:, ocols].copy()), torch.from_numpy(scb)).to(TORCH_DTYPE[dtype])))
    lhs = np.concatenate([y8.astype(np.float64), sub_a.astype(np.float64)], axis=1)
    rhs = np.concatenate([np.eye(n), sub_b.astype(np.float64)], axis=1)
    r, bound = gemm.fp_accumulation_bound(lhs, rhs, dtype, len(ocols) + 1)
    assert np.all(np.abs(y.astype(np.float64) - r) <= bound)
    assert np.all(np.abs(ours.astype(np.float64) - r) <= bound)


# ============================================================================ checkpoints

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A two-layer llama built locally from a config (no downloads), saved in float16."""
    transformers = pytest.importorskip("transformers", reason="the checkpoint tests load through transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float16)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[3, 7] = 40.0   # an outlier weight
    path = tmp_path_factory.mktemp("tiny-llama-fp16")
    model.save_pretrained(path)
    return path


def bnb_dequantize_4bit(packed, qs, torch_kernel=False):
    """bitsandbytes' dequantize_4bit, through its PyTorch kernel where its AVX512 kernel would
    use the wrong scales (test_avx512_dequantize_4bit_restarts_blocks_at_each_row), or when
    asked."""
    shape = tuple(qs.shape)
    if avx512_row_aligned(shape, qs.blocksize) and not torch_kernel:
        return to_numpy(F.dequantize_4bit(packed, qs)).reshape(shape), dequant_kernel_for(shape, qs.blocksize)
    absmax = qs.absmax
    if qs.nested:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    out = torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(CEA, packed, absmax, qs.blocksize, qs.quant_type,
                                                                     list(shape), qs.dtype)
    return to_numpy(out), "torch"


def _linear_names(entries):
    return sorted(k[:-len(".weight")] for k in entries
                  if k.endswith(".weight") and k.split(".")[-2] in LINEARS and ".layers." in k)


def _write_quantized(src, dst, mode, quant_type="nf4", double_quant=True, quant_storage="uint8"):
    import json
    from refquant.layouts import bnb as lay
    entries = lay.read_safetensors(str(src / "model.safetensors"))
    if quant_storage == "bfloat16":   # the model is loaded in bfloat16: its weights are rounded first
        entries = {k: v.astype(F32).astype(ml_dtypes.bfloat16) for k, v in entries.items()}
    out = {}
    for name in _linear_names(entries):
        w = entries.pop(name + ".weight")
        if mode == "4bit":
            packed, state = rbw.quantize_4bit(w, 64, quant_type, double_quant)
            out.update(lay.quant_state_entries(name, packed, state, quant_storage=quant_storage))
        else:
            cb, scb, _ = ri8.int8_vectorwise_quant(w)
            out.update(lay.int8_entries(name, cb, scb))
    out.update(entries)
    dst.mkdir()
    lay.write_safetensors(str(dst / "model.safetensors"), out)
    cfg = json.loads((src / "config.json").read_text())
    compute = "bfloat16" if quant_storage == "bfloat16" else "float16"
    cfg["quantization_config"] = (lay.quantization_config_4bit(quant_type, double_quant, compute, quant_storage)
                                  if mode == "4bit" else lay.quantization_config_8bit())
    (dst / "config.json").write_text(json.dumps(cfg))
    return out


def _load(path, quant_config, dtype=torch.float16):
    import transformers
    extra = {} if quant_config is None else {"quantization_config": quant_config}   # None: read config.json's
    return transformers.AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=dtype, **extra)


@pytest.mark.parametrize("quant_type, double_quant, quant_storage",
                         [("nf4", True, "uint8"), ("fp4", False, "uint8"), ("nf4", False, "uint8"),
                          ("fp4", True, "bfloat16")])
def test_4bit_checkpoint_written_by_refquant_loads_in_transformers(tiny_llama, tmp_path, quant_type, double_quant,
                                                                   quant_storage):
    import transformers
    from refquant.layouts import bnb as lay
    ours = _write_quantized(tiny_llama, tmp_path / "refquant", "4bit", quant_type, double_quant, quant_storage)
    dtype = TORCH_DTYPE["bfloat16" if quant_storage == "bfloat16" else "float16"]
    qc = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                         bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype,
                                         bnb_4bit_quant_storage=TORCH_DTYPE.get(quant_storage, torch.uint8))
    loaded = _load(tmp_path / "refquant", None, dtype)
    reference = _load(tiny_llama, qc, dtype)   # transformers quantizes the float16 weights itself
    reference.save_pretrained(tmp_path / "transformers")
    theirs = lay.read_safetensors(str(tmp_path / "transformers" / "model.safetensors"))
    names = _linear_names({k: None for k in theirs if k.endswith(".weight")})
    assert names
    for name in names:
        mod = loaded.get_submodule(name)
        assert isinstance(mod, bnb.nn.Linear4bit)
        packed, state = lay.quant_state_from_entries(ours, name)
        got, kernel = bnb_dequantize_4bit(mod.weight.data, mod.weight.quant_state)
        want = rbw.dequantize_4bit(packed, state, kernel=kernel, bf16_daz=AVX512BF16)
        same_bits(want, got)
        # and the bytes transformers + bitsandbytes write for the same weights are refquant's
        for key in [k for k in theirs if k.startswith(name + ".weight")]:
            assert key in ours, key
            same_bits(ours[key], theirs[key])


def test_8bit_checkpoint_written_by_refquant_loads_in_transformers(tiny_llama, tmp_path):
    import transformers
    from refquant.layouts import bnb as lay
    ours = _write_quantized(tiny_llama, tmp_path / "refquant", "8bit")
    loaded = _load(tmp_path / "refquant", None)
    reference = _load(tiny_llama, transformers.BitsAndBytesConfig(load_in_8bit=True))
    reference.save_pretrained(tmp_path / "transformers")
    theirs = lay.read_safetensors(str(tmp_path / "transformers" / "model.safetensors"))
    names = _linear_names({k: None for k in theirs if k.endswith(".weight")})
    assert names
    for name in names:
        mod = loaded.get_submodule(name)
        assert isinstance(mod, bnb.nn.Linear8bitLt)
        cb, scb = lay.int8_from_entries(ours, name)
        np.testing.assert_array_equal(to_numpy(mod.weight.data), cb)
        same_bits(to_numpy(mod.weight.SCB if mod.weight.SCB is not None else mod.state.SCB), scb)
        same_bits(lay.dequantize_entries(ours, name),
                  to_numpy(F.int8_vectorwise_dequant(mod.weight.data, torch.from_numpy(scb))))
        for key in (name + ".weight", name + ".SCB", name + ".weight_format"):
            same_bits(ours[key], theirs[key])


def test_checkpoint_reader_refuses_bad_entries():
    from refquant.errors import FileFormatError
    from refquant.layouts import bnb as lay
    packed, state = rbw.quantize_4bit(np.ones((4, 64), F32), 64, "nf4", True)
    good = lay.quant_state_entries("m", packed, state)
    lay.quant_state_from_entries(good, "m")
    bad = dict(good)
    bad["m.weight.quant_map"] = np.zeros(16, F32)
    with pytest.raises(FileFormatError, match="quant_map"):
        lay.quant_state_from_entries(bad, "m")
    bad = {k: v for k, v in good.items() if "quant_state" not in k}
    with pytest.raises(FileFormatError, match="quant_state"):
        lay.quant_state_from_entries(bad, "m")
    with pytest.raises(FileFormatError, match="weight"):
        lay.quant_state_from_entries({}, "m")


def test_quant_state_from_dict_reads_refquant_entries():
    """bitsandbytes' own QuantState.from_dict on the entries refquant writes."""
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float16)
    from refquant.layouts import bnb as lay
    for cs in (False, True):
        packed, state = rbw.quantize_4bit(x, 128, "fp4", cs)
        entries = lay.quant_state_entries("layer", packed, state)
        qs = F.QuantState.from_dict({k[len("layer.weight."):]: torch.from_numpy(v.copy())
                                     for k, v in entries.items() if k != "layer.weight"}, device="cpu")
        got = to_numpy(F.dequantize_4bit(torch.from_numpy(entries["layer.weight"].copy()), qs))
        same_bits(rbw.dequantize_4bit(packed, state, kernel=dequant_kernel_for((8, 256), 128), bf16_daz=AVX512BF16), got)


# ============================================================================ registry

@pytest.mark.parametrize("qtype, quant_type", [("BNB_NF4", "nf4"), ("BNB_FP4", "fp4")])
@given(x=float_rows(64, max_rows=3, max_blocks=4))
def test_registered_row_formats_match_bitsandbytes(qtype, quant_type, x):
    import refquant
    q = refquant.quantize(x, qtype)
    packed, state = F.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type=quant_type)
    blocks = q.reshape(-1, 36)
    np.testing.assert_array_equal(blocks[:, 4:].reshape(-1), to_numpy(packed).reshape(-1))
    same_bits(np.ascontiguousarray(blocks[:, :4]).view("<f4").reshape(-1), to_numpy(state.absmax))
    theirs, _ = bnb_dequantize_4bit(packed, state, torch_kernel=True)   # refquant's default kernel
    same_bits(refquant.dequantize(q, qtype), theirs.reshape(x.shape))
