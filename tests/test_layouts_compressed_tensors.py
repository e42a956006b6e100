"""compressed-tensors tensors written by refquant, decompressed by compressed-tensors' own
compressors (CPU torch), compared bit for bit with refquant's dequantization."""
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant import affine, fp8_scaling, mx
from refquant.conformance.strategies import calibration_layers
from refquant.errors import FormatError, InputError
from refquant.layouts import compressed_tensors as CT
from tools.oracles.pytorch import to_numpy, to_torch

import torch  # noqa: E402  (an oracle: missing it is an error)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from compressed_tensors.compressors import (FloatQuantizationCompressor, NaiveQuantizationCompressor,
                                                NVFP4PackedCompressor, PackedQuantizationCompressor)
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import NVFP4


def _torch_dict(t):
    return {k: to_torch(v) for k, v in t.items()}


@settings(max_examples=40)
@given(calibration_layers(ks=(32, 64)), st.integers(2, 8), st.sampled_from([None, 16, 32]), st.booleans(),
       st.sampled_from(["float32", "float16", "bfloat16"]))
def test_pack_quantized(layer, bits, group, sym, dtype):
    W, _ = layer
    W = affine.float_dtype(dtype).type(0) + W.astype(affine.float_dtype(dtype))
    K = W.shape[1]
    g = group or K
    block = (1, g)
    s, z = affine.choose_qparams_compressed_tensors(W, block, bits, symmetric=sym)
    q = affine.quantize_compressed_tensors(W, s, z, block, bits)
    t = CT.pack_quantized(q, s, None if sym else z, bits)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="group" if group else "channel",
                            group_size=group)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    if not sym and bits == 4 and W.shape[0] * 4 <= 32 and K // g > 1:
        # compressed-tensors 0.20.1 cannot unpack this: a zero point packed into one word along
        # N, transposed to (G, 1), counts as contiguous in torch but has stride 2, and its
        # 4-bit fast path's .view(torch.uint8) raises. Recorded, not hidden:
        with pytest.raises(RuntimeError, match="stride"):
            PackedQuantizationCompressor.decompress(_torch_dict(t), scheme)
        return
    out = PackedQuantizationCompressor.decompress(_torch_dict(t), scheme)
    theirs = to_numpy(out["weight"])
    ours = CT.dequantize_pack_quantized(t, bits)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8))


@settings(max_examples=25)
@given(calibration_layers(ks=(32,)), st.booleans())
def test_int_quantized(layer, sym):
    W, _ = layer
    s, z = affine.choose_qparams_compressed_tensors(W, (1, W.shape[1]), 8, symmetric=sym)
    q = affine.quantize_compressed_tensors(W, s, z, (1, W.shape[1]), 8)
    t = CT.int_quantized(q.astype(np.int8), s, None if sym else z)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="int", symmetric=sym,
                                                                           strategy="channel"))
    theirs = to_numpy(NaiveQuantizationCompressor.decompress(_torch_dict(t), scheme)["weight"])
    ours = affine.dequantize_compressed_tensors(q, s, None if sym else z, (1, W.shape[1]))
    np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8))


@settings(max_examples=25)
@given(calibration_layers(ks=(32,)))
def test_float_quantized(layer):
    W, _ = layer
    block = (1, W.shape[1])
    s = fp8_scaling.choose_scale(W, block)
    q = fp8_scaling.quantize(W, s, block)
    t = CT.float_quantized(q, s)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="float",
                                                                           symmetric=True, strategy="channel"))
    theirs = to_numpy(FloatQuantizationCompressor.decompress(_torch_dict(t), scheme)["weight"])
    ours = fp8_scaling.dequantize(q, s, block)
    np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8))


@settings(max_examples=25)
@given(calibration_layers(ks=(32, 64)))
def test_nvfp4_pack_quantized(layer):
    W, _ = layer
    packed, scales, gs = mx.quantize_nvfp4(W)
    t = CT.nvfp4_pack_quantized(packed, scales, gs)
    t["weight_shape"] = np.array(W.shape, np.int64)
    scheme = QuantizationScheme(targets=["Linear"], **NVFP4)
    theirs = to_numpy(NVFP4PackedCompressor.decompress(_torch_dict(t), scheme)["weight"])
    ours = mx.dequantize_nvfp4(packed, scales, gs)
    np.testing.assert_array_equal(ours.astype(theirs.dtype).view(np.uint8), theirs.view(np.uint8))


def test_config_and_bad_input():
    cfg = CT.quantization_config("pack-quantized", 4, 128, True)
    QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**cfg["config_groups"]["group_0"]["weights"]))
    with pytest.raises(FormatError):
        CT.quantization_config("nf4")
    with pytest.raises(FormatError):
        CT.pack_quantized(np.zeros((2, 32), np.int8), np.ones((2, 1)), None, 9)
    with pytest.raises(InputError, match="signed"):
        CT.pack_quantized(np.full((2, 32), 8, np.int8), np.ones((2, 1)), None, 4)


@settings(max_examples=25)
@given(calibration_layers(ks=(32, 64)))
def test_mxfp4_pack_quantized(layer):
    """refquant.mx's MXFP4 codes under compressed-tensors' names, decompressed by its
    MXFP4PackedCompressor (E8M0 exponent bytes, packed E2M1 low nibble first)."""
    from compressed_tensors.compressors import MXFP4PackedCompressor
    from compressed_tensors.quantization.quant_scheme import MXFP4
    W, _ = layer
    scales, packed = mx.quantize_mx(W, "MXFP4_E2M1")
    t = CT.mxfp4_pack_quantized(packed, scales)
    t["weight_shape"] = np.array(W.shape, np.int64)
    scheme = QuantizationScheme(targets=["Linear"], **MXFP4)
    theirs = to_numpy(MXFP4PackedCompressor.decompress(_torch_dict(t), scheme)["weight"])
    ours = mx.dequantize_mx(scales, packed, "MXFP4_E2M1")
    np.testing.assert_array_equal(ours.astype(theirs.dtype).view(np.uint8), theirs.view(np.uint8))
