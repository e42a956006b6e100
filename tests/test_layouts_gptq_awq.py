"""GPTQ (v1, v2) and AWQ GEMM checkpoint tensors from refquant, read by the loaders' own
unpacking: AutoGPTQ's QuantLinear CPU forward (g_idx path) and AutoAWQ's dequantize_gemm."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant.errors import FormatError, InputError
from refquant.layouts import awq as L_awq
from refquant.layouts import gptq as L_gptq
from tools.oracles import pytorch as pt

torch = pytest.importorskip("torch")


@st.composite
def quantized(draw, bits_choices=(2, 3, 4, 8)):
    bits = draw(st.sampled_from(bits_choices))
    N = draw(st.sampled_from([32, 64]))
    G = draw(st.integers(1, 3))
    g = draw(st.sampled_from([32, 64]))
    K = G * g
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 2**bits, (N, K)).astype(np.uint8)
    zeros = rng.integers(0, 2**bits, (N, G))
    if draw(st.booleans()):
        zeros[:] = 2 ** (bits - 1)
    scales = (rng.random((N, G)) * draw(st.sampled_from([1e-4, 0.01, 1.0, 100.0]))).astype(np.float32)
    g_idx = (np.arange(K) // g).astype(np.int32)
    if draw(st.booleans()):
        g_idx = rng.permutation(g_idx).astype(np.int32)
    return bits, codes, scales, zeros, g_idx, g


def _autogptq_weight(t, bits, g, K, N, version):
    QL = pt.auto_gptq_qlinear_cuda().QuantLinear
    layer = QL(bits, g, K, N, bias=False)
    if version == "v2":
        pytest.fail("AutoGPTQ reads v1 only")
    layer.qweight = torch.from_numpy(t["qweight"])
    layer.qzeros = torch.from_numpy(t["qzeros"])
    layer.scales = torch.from_numpy(t["scales"])
    layer.g_idx = torch.from_numpy(t["g_idx"])
    out = layer(torch.eye(K, dtype=torch.float16))      # x = I: out = Wᵀ, exactly
    return out.numpy().T


@settings(max_examples=30)
@given(quantized())
def test_gptq_v1_read_by_autogptq(q):
    """A v1 zero of 0 is stored as 2^b - 1; AutoGPTQ's qlinear_cuda reads it back as
    (stored + 1) = 2^b without masking (qlinear_cuda_old masks, reading 0): v1 cannot hold a
    zero of 0 for every reader, so zeros here are >= 1 (test_gptq_v1_zero_zero shows the split)."""
    bits, codes, scales, zeros, g_idx, g = q
    zeros = np.maximum(zeros, 1)
    N, K = codes.shape
    t = L_gptq.pack(codes, scales, zeros, g_idx, bits, "v1")
    ours = L_gptq.dequantize(t, bits, "v1")
    theirs = _autogptq_weight(t, bits, g, K, N, "v1")
    # bit for bit but the sign of zeros: the weight is read through x = I, and the matmul's
    # sum +0 + (-0) is +0, so a -0 weight (a negative product underflowing) reads as +0
    np.testing.assert_array_equal(np.where(ours == 0, 0, ours).view(np.uint16), theirs.view(np.uint16))
    # and what was packed comes back
    c, s, z, gi = L_gptq.unpack(t, bits, "v1")
    np.testing.assert_array_equal(c, codes)
    np.testing.assert_array_equal(z, zeros)


def test_gptq_v1_zero_zero():
    bits, N, K = 4, 32, 32
    codes = np.full((N, K), 3, np.uint8)
    zeros = np.zeros((N, 1))
    scales = np.ones((N, 1), np.float32)
    t = L_gptq.pack(codes, scales, zeros, np.zeros(K, np.int32), bits, "v1")
    theirs = _autogptq_weight(t, bits, 32, K, N, "v1")
    assert (theirs == 3 - 16).all()                        # qlinear_cuda: zero read as 16
    assert (L_gptq.dequantize(t, bits, "v1") == 3).all()   # refquant, qlinear_cuda_old: 0


@given(quantized())
def test_gptq_v2_is_v1_plus_one(q):
    """v2 stores the zero itself; the v1 words of the same zeros hold (zero - 1) mod 2^b. Checked
    against the v1 reader above through the conversion, not against itself: v2 -> unpack ->
    repack as v1 must be what AutoGPTQ reads."""
    bits, codes, scales, zeros, g_idx, g = q
    t2 = L_gptq.pack(codes, scales, zeros, g_idx, bits, "v2")
    c, s, z, gi = L_gptq.unpack(t2, bits, "v2")
    np.testing.assert_array_equal(z, zeros)
    if bits == 4:    # GPTQModel's v2 -> v1 conversion: subtract 0x11111111 per word, when no zero is 0
        t1 = L_gptq.pack(codes, scales, zeros, g_idx, bits, "v1")
        ok = (zeros > 0).all()
        if ok:
            conv = (t2["qzeros"].view(np.uint32) - np.uint32(0x11111111)).view(np.int32)
            np.testing.assert_array_equal(conv, t1["qzeros"])


@settings(max_examples=30)
@given(quantized(bits_choices=(4,)))
def test_awq_gemm_read_by_autoawq(q):
    from awq.utils.packing_utils import dequantize_gemm
    bits, codes, scales, zeros, _, g = q
    t = L_awq.pack(codes, scales, zeros)
    theirs = dequantize_gemm(torch.from_numpy(t["qweight"]), torch.from_numpy(t["qzeros"]),
                             torch.from_numpy(t["scales"]), 4, g).numpy()
    ours = L_awq.dequantize(t)
    np.testing.assert_array_equal(ours.view(np.uint16), theirs.view(np.uint16))


def test_bad_input():
    c = np.zeros((32, 32), np.uint8)
    s = np.ones((32, 1), np.float32)
    with pytest.raises(FormatError, match="5"):
        L_gptq.pack(c, s, s, np.zeros(32, np.int32), 5)
    with pytest.raises(FormatError):
        L_awq.pack(c, s, s, bits=3)
    with pytest.raises(InputError, match="zero"):
        L_gptq.pack(c, s, s * 99, np.zeros(32, np.int32), 4)


@st.composite
def gemv_layers(draw):
    N = draw(st.sampled_from([8, 16, 32]))
    g = draw(st.sampled_from([32, 64, 128, 256]))
    G = draw(st.sampled_from([1, 2, 3, 9]))          # 9 groups: more than one qzeros word
    K = G * g
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 16, (N, K)).astype(np.uint8)
    zeros = rng.integers(0, 16, (N, G)).astype(np.float32)
    scales = (rng.random((N, G)) * draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0])) + 1e-3).astype(np.float32)
    return codes, scales, zeros, g


@settings(max_examples=30, deadline=None)
@given(gemv_layers())
def test_awq_gemv_written_as_autoawq(q):
    """AutoAWQ 0.2.9's WQLinear_GEMV.from_linear (CPU) packs the same layer into the same three
    tensors, bit for bit. It re-derives each code as round((w + zero·scale) / scale16) from a
    weight: w = (code − zero)·scale16 in float32 is exact, so it recovers the codes given, and its
    float32 scales are cast to float16 by torch as refquant casts them."""
    from awq.modules.linear.gemv import WQLinear_GEMV
    codes, scales, zeros, g = q
    N, K = codes.shape
    s16 = scales.astype(np.float16).astype(np.float32)
    W = (codes.astype(np.float32) - np.repeat(zeros, g, 1)) * np.repeat(s16, g, 1)
    lin = torch.nn.Linear(K, N, bias=False)
    lin.weight.data = torch.from_numpy(W)
    ref = WQLinear_GEMV.from_linear(lin, 4, g, scales=torch.from_numpy(scales), zeros=torch.from_numpy(zeros))
    ours = L_awq.pack_gemv(codes, scales, zeros, g)
    for name in ("qweight", "qzeros", "scales"):
        theirs = getattr(ref, name).numpy()
        assert ours[name].dtype == theirs.dtype and ours[name].shape == theirs.shape, name
        np.testing.assert_array_equal(ours[name].view(np.uint8), theirs.view(np.uint8), err_msg=name)
    # and AutoAWQ's tensors read back to the codes, zeros and scales it was given
    c, s, z = L_awq.unpack_gemv({n: getattr(ref, n).numpy() for n in ("qweight", "qzeros", "scales")}, g)
    np.testing.assert_array_equal(c, codes)
    np.testing.assert_array_equal(z, zeros)
    np.testing.assert_array_equal(s.view(np.uint16), scales.astype(np.float16).view(np.uint16))


@settings(max_examples=30, deadline=None)
@given(gemv_layers())
def test_awq_gemv_read_by_gptqmodel(q):
    """GPTQModel 7.7.0's repack_awq_gemv (gptqmodel/utils/mlx_packing.py, NumPy on the CPU: how
    GPTQModel reads an AWQ GEMV checkpoint to run it under MLX) reads refquant's GEMV tensors back
    to the codes, the (unpadded) float16 scales and the biases −zero·scale that were packed. Its
    codes come back repacked in MLX's layout (code i of a row at bits 4(i mod 8) of word i // 8),
    decoded here by that layout. Requires K a multiple of 32 (GPTQModel's check)."""
    from tools.oracles.pytorch import gptqmodel_mlx_packing
    codes, scales, zeros, g = q
    N, K = codes.shape
    t = L_awq.pack_gemv(codes, scales, zeros, g)
    w, s, b = gptqmodel_mlx_packing().repack_awq_gemv(t["qweight"], t["qzeros"], t["scales"], K, N, g)
    theirs = ((np.asarray(w, np.uint32)[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(N, K)
    np.testing.assert_array_equal(theirs, codes)
    s16 = scales.astype(np.float16)
    np.testing.assert_array_equal(s.view(np.uint16), s16.view(np.uint16))
    np.testing.assert_array_equal(b.view(np.uint32), (-zeros.astype(np.float32) * s16.astype(np.float32)).view(np.uint32))
    # refquant's own reader gives the same three
    c, s_r, z_r = L_awq.unpack_gemv(t, g)
    np.testing.assert_array_equal(c, theirs)
    np.testing.assert_array_equal(s_r.view(np.uint16), s.view(np.uint16))
    np.testing.assert_array_equal((-z_r.astype(np.float32) * s_r.astype(np.float32)).view(np.uint32), b.view(np.uint32))


def test_awq_gemv_shapes_and_bad_input():
    from awq.modules.linear.gemv import WQLinear_GEMV
    for K, g in [(64, 32), (128, 64), (4096, 128), (1152, 128), (256, 256)]:
        m = WQLinear_GEMV(4, g, K, 16, False, "cpu")
        assert L_awq.zeros_width(K, g) == m.qzeros.shape[1]
        assert 8 * L_awq.zeros_width(K, g) == m.scales.shape[1]
    c = np.zeros((16, 96), np.uint8)
    s = np.ones((16, 2), np.float32)
    with pytest.raises(FormatError, match="48"):
        L_awq.pack_gemv(c, s, s, 48)
    with pytest.raises(FormatError):
        L_awq.pack_gemv(c, s, s, 32, bits=3)
    with pytest.raises(InputError, match="zero"):
        L_awq.pack_gemv(np.zeros((16, 64), np.uint8), s, s * 16, 32)
    t = L_awq.pack_gemv(np.zeros((16, 64), np.uint8), s, s, 32)
    t["scales"] = t["scales"][:, :8]
    with pytest.raises(FormatError, match="scales"):
        L_awq.unpack_gemv(t, 32)
