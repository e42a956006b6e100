"""NVFP4 (refquant.mx.quantize_nvfp4) against compressed-tensors' NVFP4 path on CPU torch:
generate_gparam (global scale) -> calculate_qparams (E4M3 block scales) -> quantize_and_pack_fp4
(E2M1 codes, two a byte) -> NVFP4PackedCompressor.decompress / dequantize."""
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import mx
from refquant.conformance.strategies import f32_range, float_rows
from refquant.errors import InputError
from refquant.numerics import fp32_to_bf16_bits

import torch  # noqa: E402  (an oracle: missing it is an error, not a skip)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4, unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.quant_scheme import NVFP4
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

ARGS = NVFP4["weights"]


def ct_quantize(x, global_scale=None):
    """compressed-tensors: (packed uint8, E4M3 scale bytes, global scale, float32 scales)."""
    t = torch.from_numpy(x.copy())
    gs = generate_gparam(t.min(), t.max()) if global_scale is None else torch.tensor([global_scale], dtype=torch.float32)
    groups = t.reshape(t.shape[0], -1, 16)
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), ARGS, global_scale=gs)
    packed = quantize_and_pack_fp4(t, scale, global_scale=gs, zero_point=None, group_size=16)
    return packed.numpy(), scale.to(torch.float8_e4m3fn).view(torch.uint8).numpy(), np.float32(gs.item()), scale, gs


def assert_matches(x, global_scale=None):
    p_ref, s_ref, g_ref, _, _ = ct_quantize(x, global_scale)
    p, s, g = mx.quantize_nvfp4(x, global_scale)
    assert np.float32(g).view(np.uint32) == g_ref.view(np.uint32), (g, g_ref)
    np.testing.assert_array_equal(s, s_ref, err_msg="E4M3 block scales")
    np.testing.assert_array_equal(p, p_ref, err_msg="packed E2M1 codes")


@given(x=float_rows(16, max_rows=3, max_blocks=4))
def test_quantize_matches_compressed_tensors(x):
    assert_matches(x)


@given(x=float_rows(16, max_rows=2, max_blocks=3), gs=f32_range(1e-6, 1e6))
def test_quantize_with_given_global_scale_matches(x, gs):
    assert_matches(x, np.float32(gs))


def _edge_matrices():
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((4, 64)) * 0.02).astype(np.float32)
    yield np.zeros((2, 32), np.float32)                               # gs: 2688 / 2^-126 = Inf -> 1.0
    yield np.full((2, 32), -0.0, np.float32)
    m = w.copy()
    m[0, :16] = 0
    m[1, :16] = -0.0
    m[2, :16] *= np.float32(1e-12)                                     # block scale rounds to 0 -> 0.125
    m[3, 5] = -1e-9                                                    # a tiny negative: -0 code
    yield m
    yield np.full((1, 16), 3.4028235e38, np.float32)                   # FLT_MAX tensor
    yield np.linspace(-3.4e38, 3.4e38, 64, dtype=np.float32).reshape(2, 32)
    t = np.arange(-8, 8, dtype=np.float32).reshape(1, 16) * np.float32(0.25)   # E2M1 ties after scaling
    t[0, 0] = -6 * 0.25
    yield t
    yield (np.arange(-15, 17, 2, dtype=np.float32) / np.float32(32)).reshape(1, 16)
    yield np.array([[1e-45] * 16], np.float32)


def test_edge_matrices_match_compressed_tensors():
    for x in _edge_matrices():
        assert_matches(x)


@given(x=float_rows(16, max_rows=2, max_blocks=3))
def test_dequantize_matches_compressed_tensors(x):
    p, s, g = mx.quantize_nvfp4(x)
    _, _, _, scale, gs = ct_quantize(x)
    vals = unpack_fp4_from_uint8(torch.from_numpy(p), p.shape[0], p.shape[1] * 2, dtype=torch.float32)
    ref = dequantize(vals, scale, args=ARGS, global_scale=gs, dtype=torch.float32).numpy()
    np.testing.assert_array_equal(mx.dequantize_nvfp4(p, s, g).view(np.uint32), ref.view(np.uint32))


def test_decompress_is_dequantize_rounded_to_bf16():
    """NVFP4PackedCompressor.decompress returns bfloat16: refquant's float32 rounded to bf16."""
    x = (np.random.default_rng(4).standard_normal((4, 64)) * 0.05).astype(np.float32)
    p, s, g = mx.quantize_nvfp4(x)
    scheme = QuantizationScheme(targets=["Linear"], **NVFP4)
    state = {"weight_packed": torch.from_numpy(p), "weight_scale": torch.from_numpy(s).view(torch.float8_e4m3fn),
             "weight_global_scale": torch.tensor([g], dtype=torch.float32)}
    ref = NVFP4PackedCompressor.decompress(state, scheme)["weight"]
    assert ref.dtype == torch.bfloat16
    ours = fp32_to_bf16_bits(mx.dequantize_nvfp4(p, s, g))
    np.testing.assert_array_equal(ours, ref.view(torch.int16).numpy().view(np.uint16))


def test_nibble_order_is_compressed_tensors():
    x = np.arange(-8, 8, dtype=np.float32).reshape(1, 16)
    p, _, _ = mx.quantize_nvfp4(x)
    codes = mx.unpack_fp4(p)
    vals = unpack_fp4_from_uint8(torch.from_numpy(p), 1, 16, dtype=torch.float32).numpy()
    np.testing.assert_array_equal(np.sign(vals), np.sign(x))
    assert codes.shape == (1, 16)


def test_errors():
    with pytest.raises(InputError, match="multiple of the block size 16"):
        mx.quantize_nvfp4(np.zeros((2, 24), np.float32))
    with pytest.raises(InputError, match="matrix"):
        mx.quantize_nvfp4(np.zeros((2, 2, 16), np.float32))
    with pytest.raises(InputError, match="non-finite"):
        mx.quantize_nvfp4(np.array([[np.nan] * 16], np.float32))
    for bad in (np.float32(np.inf), np.float32(np.nan), np.float32(0), -1.0):
        with pytest.raises(InputError, match="global_scale"):
            mx.quantize_nvfp4(np.ones((1, 16), np.float32), bad)
    with pytest.raises(InputError, match="global_scale"):
        mx.dequantize_nvfp4(np.zeros((1, 8), np.uint8), np.zeros((1, 1), np.uint8), np.float32(np.inf))
    with pytest.raises(InputError, match="scales of shape"):
        mx.dequantize_nvfp4(np.zeros((1, 8), np.uint8), np.zeros((1, 2), np.uint8), 1.0)
