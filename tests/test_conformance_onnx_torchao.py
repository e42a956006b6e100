"""ONNX's types and torchao's NVFP4 in the conformance suite: a backend claims them like any
format (the spec runs what it does not claim), a correct one is exact, and a backend with the
slip each is prone to — saturating where ONNX wraps, ml_dtypes' E8M0 rounding where ONNX's
reference rounds on the bits, compressed-tensors' NVFP4 rules where torchao's apply — is caught
by the default run's edge catalog, not left to a random example."""
import numpy as np
import pytest

from refquant import minifloat as mf
from refquant import mx
from refquant import onnx_ops as ox
from refquant.backend import Backend
from refquant.conformance.suite import EXACT, FAIL, NOT_CLAIMED, SPEC_RAN, run

# a backend's own copies, taken once at import (calls through the spec's records are "spec ran")
cast_float_to_int, pack_int, unpack_int = ox.cast_float_to_int, ox.pack_int, ox.unpack_int
encode, decode = mf.encode, mf.decode
quantize_nvfp4_torchao, dequantize_nvfp4_torchao = mx.quantize_nvfp4_torchao, mx.dequantize_nvfp4_torchao


def nvfp4_rows(packed, scales):
    return np.concatenate([scales.reshape(-1, 1), packed.reshape(-1, 8)], axis=1).reshape(scales.shape[0], -1)


class Correct(Backend):
    name = "onnx-torchao"

    def claims(self):
        return {("quantize", "INT4"), ("dequantize", "INT4"), ("quantize", "UINT16"),
                ("quantize", "FLOAT8E8M0_NEAREST"), ("quantize", "NVFP4_TORCHAO"), ("dequantize", "NVFP4_TORCHAO")}

    def quantize_rows(self, fmt, x, imatrix, search=None):
        if fmt.name == "INT4":
            return pack_int(cast_float_to_int(x, "INT4"), "INT4").reshape(x.shape[0], -1)
        if fmt.name == "UINT16":
            return np.ascontiguousarray(cast_float_to_int(x, "UINT16").astype("<u2")).view(np.uint8).reshape(x.shape[0], -1)
        if fmt.name == "FLOAT8E8M0_NEAREST":
            return encode(x, "E8M0", saturate=True, round_mode="nearest_bits")
        return nvfp4_rows(*quantize_nvfp4_torchao(x))

    def dequantize_rows(self, fmt, data):
        if fmt.name == "INT4":
            return unpack_int(data, "INT4", data.size * 2).reshape(data.shape[0], -1).astype(np.float32)
        b = np.ascontiguousarray(data).reshape(-1, 9)
        return dequantize_nvfp4_torchao(np.ascontiguousarray(b[:, 1:]).reshape(data.shape[0], -1),
                                        np.ascontiguousarray(b[:, 0]).reshape(data.shape[0], -1))


class SaturatingInt4(Correct):
    """INT4 rounded and clamped to [-8, 7], as QuantizeLinear would, where Cast wraps."""
    name = "saturating-int4"

    def claims(self):
        return {("quantize", "INT4")}

    def quantize_rows(self, fmt, x, imatrix, search=None):
        v = np.clip(np.trunc(x), -8, 7).astype(np.int8)
        return pack_int(v, "INT4").reshape(x.shape[0], -1)


class TextNearestE8M0(Correct):
    """FLOAT8E8M0_NEAREST rounded to the nearest power of two by value (the operator's text,
    ml_dtypes 0.7.0), where ONNX's reference rounds on the float32 bits: differs on subnormals."""
    name = "text-nearest-e8m0"

    def claims(self):
        return {("quantize", "FLOAT8E8M0_NEAREST")}

    def quantize_rows(self, fmt, x, imatrix, search=None):
        return encode(x, "E8M0", saturate=True, round_mode="nearest")


class CompressedTensorsZeroScale(Correct):
    """NVFP4_TORCHAO with compressed-tensors' rule for a block scale that rounds to zero (0.125,
    code 0x20) where torchao clamps to 2^-6 (code 0x08)."""
    name = "ct-zero-scale"

    def claims(self):
        return {("quantize", "NVFP4_TORCHAO")}

    def quantize_rows(self, fmt, x, imatrix, search=None):
        out = Correct.quantize_rows(self, fmt, x, imatrix).reshape(-1, 9).copy()
        out[out[:, 0] == 0x08, 0] = 0x20
        return out.reshape(x.shape[0], -1)


def test_claimed_records_are_exact_and_the_rest_is_the_spec():
    report = run(Correct(), max_examples=3, seed=0,
                 formats=["INT4", "UINT16", "FLOAT8E8M0_NEAREST", "NVFP4_TORCHAO", "INT2"])
    assert report.ok, report.matrix()
    for cell in [("INT4", "quantize"), ("INT4", "dequantize"), ("UINT16", "quantize"),
                 ("FLOAT8E8M0_NEAREST", "quantize"), ("NVFP4_TORCHAO", "quantize"), ("NVFP4_TORCHAO", "dequantize")]:
        assert report.results[cell] == EXACT, cell
    assert report.results[("INT2", "quantize")] == NOT_CLAIMED
    assert report.results[("UINT16", "dequantize")] == NOT_CLAIMED


@pytest.mark.parametrize("broken, key", [(SaturatingInt4(), "INT4"), (TextNearestE8M0(), "FLOAT8E8M0_NEAREST"),
                                         (CompressedTensorsZeroScale(), "NVFP4_TORCHAO")],
                         ids=lambda v: getattr(v, "name", v))
def test_broken_backend_is_caught_by_the_catalog(broken, key):
    report = run(broken, formats=[key], checks=["quantize"])
    assert report.results[(key, "quantize")] in (FAIL, SPEC_RAN), report.matrix()
    (failure,) = [f for f in report.failures if f.check == "quantize"]
    assert failure.case.startswith("catalog"), failure
