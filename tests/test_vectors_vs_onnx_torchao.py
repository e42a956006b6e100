"""The committed golden vectors of ONNX's types (INT2 ... UINT16, FLOAT8E8M0 and its round modes)
are what the onnx package's ReferenceEvaluator writes — Cast from FLOAT, the bytes as
onnx.numpy_helper stores the tensor, and Cast back to FLOAT — and those of NVFP4_TORCHAO what
torchao 0.18's nvfp4_quantize and NVFP4Tensor.dequantize write on the CPU. (That they are what
refquant writes now is tests/test_vectors.py.)"""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from onnx import TensorProto
from onnx import numpy_helper as nh
from onnx.helper import make_node
from onnx.reference import ReferenceEvaluator

from refquant.onnx_ops import RECORD_E8M0_ROUND_MODES, RECORD_INT_TYPES

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def run_ref(node, **feeds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(node).run(None, feeds)[0]


def load(name):
    d = VECTORS / name
    return np.load(d / "input.npy"), np.load(d / "encoded.npy"), np.load(d / "decoded.npy")


def test_vectors_hold_the_catalog_rows():
    kinds = json.loads((VECTORS / "INT4" / "vectors.json").read_text())["row_kinds"]
    assert {"catalog grid", "catalog midpoints", "catalog ulps", "catalog specials"} <= set(kinds)
    x = np.load(VECTORS / "INT4" / "input.npy")
    assert {-16.0, 12.0, 7.5, 16.0} <= set(x.ravel().tolist())     # past the range: ONNX wraps
    kinds = json.loads((VECTORS / "NVFP4_TORCHAO" / "vectors.json").read_text())["row_kinds"]
    assert {"catalog ties", "catalog zeros", "catalog max-finite", "catalog fp16-underflow"} <= set(kinds)


@pytest.mark.parametrize("to", RECORD_INT_TYPES)
def test_integer_vectors_are_onnx_casts(to):
    x, enc, dec = load(to)
    y = run_ref(make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, to)), x=x)
    # the bytes of the tensor as ONNX stores it (4-bit two a byte, 2-bit four, 16-bit little-endian)
    assert enc.tobytes() == nh.from_array(y).raw_data
    back = run_ref(make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT), y=y)
    np.testing.assert_array_equal(dec.view(np.uint32), back.view(np.uint32))


@pytest.mark.parametrize("name", list(RECORD_E8M0_ROUND_MODES))
def test_e8m0_vectors_are_onnx_casts(name):
    x, enc, dec = load(name)
    node = make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0, saturate=1,
                     round_mode=RECORD_E8M0_ROUND_MODES[name])
    y = run_ref(node, x=x)
    # the operator leaves negative values and -0 unspecified: refquant gives NaN (0xFF), ONNX's
    # reference the code of the magnitude (spec/onnx/float8e8m0.md); every other value must agree
    neg = np.signbit(x)
    assert neg.any() and (~neg).sum() > 1000
    np.testing.assert_array_equal(enc[~neg], y.view(np.uint8)[~neg])
    assert (enc[neg] == 0xFF).all()
    np.testing.assert_array_equal(y.view(np.uint8)[neg], run_ref(node, x=np.abs(x)).view(np.uint8)[neg])
    back = run_ref(make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT), y=enc.view(y.dtype))
    np.testing.assert_array_equal(dec.view(np.uint32), back.view(np.uint32))


def test_e8m0_round_modes_differ_in_the_vectors():
    codes = {n: load(n)[1] for n in RECORD_E8M0_ROUND_MODES}
    assert (codes["FLOAT8E8M0"] != codes["FLOAT8E8M0_DOWN"]).any()
    assert (codes["FLOAT8E8M0_NEAREST"] != codes["FLOAT8E8M0_DOWN"]).any()
    assert (codes["FLOAT8E8M0_NEAREST"] != codes["FLOAT8E8M0"]).any()


def test_nvfp4_torchao_vectors_are_torchaos():
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize
    x, enc, dec = load("NVFP4_TORCHAO")
    scales, packed = nvfp4_quantize(torch.from_numpy(x.copy()), 16, None)
    s, p = scales.view(torch.uint8).numpy(), packed.view(torch.uint8).numpy()
    rows = x.shape[0]
    blocks = np.concatenate([s.reshape(-1, 1), p.reshape(-1, 8)], axis=1).reshape(rows, -1)
    np.testing.assert_array_equal(enc, blocks)
    t = NVFP4Tensor(torch.from_numpy(p.copy()), torch.from_numpy(s.copy()).view(torch.float8_e4m3fn), 16,
                    torch.float32, per_tensor_scale=None)
    np.testing.assert_array_equal(dec.view(np.uint32), t.dequantize(torch.float32).numpy().view(np.uint32))
    # the rules torchao and compressed-tensors part on are in the vectors: a zero block's scale
    # is 2^-6 (code 0x08), and -0.0 elements are code 0x8
    kinds = json.loads((VECTORS / "NVFP4_TORCHAO" / "vectors.json").read_text())["row_kinds"]
    negz = kinds.index("neg_zeros")
    assert set(enc[negz].reshape(-1, 9)[:, 0]) == {0x08} and set(enc[negz].reshape(-1, 9)[:, 1:].ravel()) == {0x88}


# ------------------------------------------------- operations beyond a byte row (tensor_vectors)

OPERATORS = VECTORS / "onnx-operators"
OPERATOR_CASES = sorted(p.name for p in OPERATORS.iterdir() if (p / "case.json").is_file())


def read_case(d):
    doc = json.loads((d / "case.json").read_text())
    ins = {n: np.load(d / f"{n}.npy") for n in doc["inputs"]}
    outs = {n: np.load(d / f"{n}.npy") for n in doc["outputs"]}
    return doc, ins, outs


def test_operator_vectors_are_current():
    """What refquant writes now (every case, torchao's two-level NVFP4 too)."""
    from refquant.conformance import tensor_vectors as tv
    with np.errstate(all="ignore"):
        cases = {**tv.onnx_qdq_cases(), **tv.onnx_double_cases()}
    assert sorted(cases) == OPERATOR_CASES
    cases = {f"onnx-operators/{k}": v for k, v in cases.items()} | {"torchao-nvfp4/two-level": tv.torchao_nvfp4_two_level()}
    for name, case in cases.items():
        doc, ins, outs = read_case(VECTORS / name)
        assert doc["op"] == case["op"]
        for part, arrays in (("inputs", ins), ("outputs", outs)):
            for k, a in case[part].items():
                a = np.asarray(a)
                assert arrays[k].dtype == a.dtype and arrays[k].tobytes() == a.tobytes(), f"{name}/{k}.npy is stale"


@pytest.mark.parametrize("name", OPERATOR_CASES)
def test_operator_vectors_are_onnxs(name):
    doc, ins, outs = read_case(OPERATORS / name)
    attrs = dict(doc["attributes"])
    if "to" in attrs:
        attrs["to"] = getattr(TensorProto, attrs["to"])
    y = run_ref(make_node(doc["op"], list(ins), ["y"], **attrs), **ins)
    want = outs["y"]
    if want.dtype == np.uint8 and y.dtype != np.uint8:     # float8/float4 codes
        y = y.view(np.uint8)
    assert y.dtype == want.dtype and y.shape == want.shape, name
    assert y.tobytes() == want.tobytes(), name


def test_operator_vectors_cover_what_they_should():
    names = set(OPERATOR_CASES)
    for to in ("int16", "uint16"):
        for gran in ("tensor", "axis", "blocked"):
            assert {f"quantizelinear_{to}_{gran}", f"dequantizelinear_{to}_{gran}"} <= names
    # a float64 input that rounds differently once and through float32 is there, for FLOAT16
    _, ins, outs = read_case(OPERATORS / "cast_double_to_float16")
    with np.errstate(over="ignore"):
        through_f32 = ins["x"].astype(np.float32).astype(np.float16)
    assert (outs["y"].view(np.uint16) != through_f32.view(np.uint16)).any()
    # QuantizeLinear saturates and rounds ties to even in the vectors
    _, _, q = read_case(OPERATORS / "quantizelinear_int16_tensor")
    assert {-32768, 32767} <= set(q["y"].astype(np.int64).ravel().tolist())


def test_torchao_two_level_vectors_are_torchaos():
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize, per_tensor_amax_to_scale
    doc, ins, outs = read_case(VECTORS / "torchao-nvfp4" / "two-level")
    x, p = ins["x"], ins["per_tensor_scale"]
    pt = per_tensor_amax_to_scale(torch.tensor(np.abs(x).max()))
    assert pt.dtype == torch.float32 and pt.item() == p[0]
    scales, packed = nvfp4_quantize(torch.from_numpy(x.copy()), 16, pt)
    np.testing.assert_array_equal(outs["scale"], scales.view(torch.uint8).numpy())
    np.testing.assert_array_equal(outs["qdata"], packed.view(torch.uint8).numpy())
    t = NVFP4Tensor(packed, scales, 16, torch.float32, per_tensor_scale=pt)
    np.testing.assert_array_equal(outs["dequantized"].view(np.uint32), t.dequantize(torch.float32).numpy().view(np.uint32))
    # p below the smaller rows' block amax / 6: their block scales clamp to 2^-6 (code 0x08)
    assert (outs["scale"] == 0x08).any()
