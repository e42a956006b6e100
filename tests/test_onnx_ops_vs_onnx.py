"""ONNX's integer and E8M0 semantics (refquant.onnx_ops) against the onnx package: its own backend
node cases for Cast, CastLike, QuantizeLinear and DequantizeLinear — regenerated here from the
case scripts the wheel ships (onnx/backend/test/case/node/*.py; the wheel has no case data), by
running their export functions with `expect` captured — and its ReferenceEvaluator on
property-generated inputs."""
import importlib
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import onnx
from onnx import TensorProto
from onnx import numpy_helper as nh
from onnx.helper import get_attribute_value, make_node
from onnx.reference import ReferenceEvaluator

from refquant import minifloat as mf
from refquant import onnx_ops as ox
from refquant.errors import FormatError, InputError

INT_TYPES = list(ox.INT_TYPES)
PACKED = ["INT2", "UINT2", "INT4", "UINT4"]
ML = {"INT2": ml_dtypes.int2, "UINT2": ml_dtypes.uint2, "INT4": ml_dtypes.int4, "UINT4": ml_dtypes.uint4,
      "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16}


# ----------------------------------------------------------------------------- the backend node cases

@pytest.fixture(scope="module")
def node_cases():
    """name -> (node, inputs, outputs) for every case the four operators' scripts export."""
    cases = {}

    def capture(node, inputs, outputs, name, **kwargs):
        cases[name] = (node, inputs, outputs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod, cls in (("cast", "Cast"), ("castlike", "CastLike"), ("quantizelinear", "QuantizeLinear"),
                         ("dequantizelinear", "DequantizeLinear")):
            m = importlib.import_module("onnx.backend.test.case.node." + mod)
            saved, m.expect = m.expect, capture
            try:
                for k in dir(getattr(m, cls)):
                    if k.startswith("export"):
                        getattr(getattr(m, cls), k)()
            finally:
                m.expect = saved
    assert len(cases) > 100
    return cases


def arr(t):
    return nh.to_array(t) if isinstance(t, TensorProto) else np.asarray(t)


def type_name(t) -> str:
    """The ONNX type name of a TensorProto or a NumPy array."""
    if isinstance(t, TensorProto):
        return TensorProto.DataType.Name(t.data_type)
    return TensorProto.DataType.Name(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(t).dtype))


def attrs(node) -> dict:
    return {a.name: get_attribute_value(a) for a in node.attribute}


def values(t) -> np.ndarray:
    """An integer tensor's values as int64 (ml_dtypes' int4/int2 included)."""
    return arr(t).astype(np.int64)


def cast_case(cases, name):
    node, ins, outs = cases[name]
    to = TensorProto.DataType.Name(attrs(node)["to"]) if node.op_type == "Cast" else type_name(ins[1])
    return ins[0], to, outs[0]


def _cast_names(cases, pred):
    return [n for n in cases if n.startswith(("test_cast_", "test_castlike_")) and pred(n)]


def test_casts_to_integer_types_wrap_like_onnx(node_cases):
    """Cast/CastLike FLOAT and FLOAT16 -> INT4, UINT4, INT2, UINT2: values, and the packed bytes."""
    names = _cast_names(node_cases, lambda n: n.split("_to_")[1] in PACKED and "e8m0" not in n)
    assert len(names) == 16
    for name in names:
        x, to, out = cast_case(node_cases, name)
        ours = ox.cast_float_to_int(arr(x), to)
        np.testing.assert_array_equal(ours.astype(np.int64), values(out), err_msg=name)
        assert ox.pack_int(ours, to).tobytes() == out.raw_data, name


def test_casts_from_integer_types_like_onnx(node_cases):
    """INT4/UINT4/INT2/UINT2 -> FLOAT, FLOAT16, INT8/UINT8: unpacked from the case's bytes."""
    names = _cast_names(node_cases, lambda n: n.split("_to_")[0].split("_")[-1] in PACKED)
    assert len(names) == 24
    for name in names:
        x, to, out = cast_case(node_cases, name)
        frm = type_name(x)
        v = ox.unpack_int(np.frombuffer(x.raw_data, np.uint8), frm, int(np.prod(x.dims))).reshape(tuple(x.dims))
        np.testing.assert_array_equal(v.astype(np.int64), values(x), err_msg=name)
        want = arr(out)
        if to in ox.INT_TYPES:
            ours = ox.cast_int_to_int(v, to)
        else:
            ours = v.astype(want.dtype)                # a 2/4-bit integer is exact in float16/32
        assert ours.dtype == want.dtype and ours.tobytes() == want.tobytes(), name


def test_casts_from_double_like_onnx(node_cases):
    names = _cast_names(node_cases, lambda n: "_DOUBLE_to_" in n)
    assert len(names) == 4
    for name in names:
        x, to, out = cast_case(node_cases, name)
        ours, want = ox.cast_double(arr(x), to), arr(out)
        assert ours.dtype == want.dtype and ours.tobytes() == want.tobytes(), name


def test_casts_to_and_from_e8m0_like_onnx(node_cases):
    names = [n for n in node_cases if n.startswith("test_cast_e8m0_")]
    assert len(names) == 4
    for name in names:
        node, ins, outs = node_cases[name]
        a = attrs(node)
        x, out = ins[0], outs[0]
        if type_name(out) == "FLOAT8E8M0":
            ours = ox.cast_to_e8m0(arr(x), bool(a.get("saturate", 1)), a.get("round_mode", b"up").decode())
            assert ours.tobytes() == out.raw_data, name
        else:
            ours = mf.decode(np.frombuffer(x.raw_data, np.uint8).reshape(tuple(x.dims)), "E8M0")
            want = arr(out)
            assert ours.astype(want.dtype).tobytes() == want.tobytes(), name


def _qdq_type(node, ins):
    if len(ins) > 2:
        return type_name(ins[2])
    to = attrs(node).get("output_dtype")
    return TensorProto.DataType.Name(to) if to else "UINT8"


def test_quantize_linear_cases_like_onnx(node_cases):
    """QuantizeLinear to every integer type: per tensor, per axis, blocked."""
    names = [n for n in node_cases if n.startswith("test_quantizelinear")]
    done = 0
    for name in names:
        node, ins, outs = node_cases[name]
        to = _qdq_type(node, ins)
        if to not in ox.INT_TYPES:
            continue                                        # float8/float4 targets: minifloat's tests
        a = attrs(node)
        zp = values(ins[2]) if len(ins) > 2 else None
        ours = ox.quantize_linear(arr(ins[0]), arr(ins[1]), zp, a.get("axis", 1), a.get("block_size", 0), to)
        np.testing.assert_array_equal(ours.astype(np.int64), values(outs[0]), err_msg=name)
        done += 1
    assert done == 10, done       # uint8, axis, 2 blocked, int16, uint16, int4, uint4, int2, uint2


def test_dequantize_linear_cases_like_onnx(node_cases):
    names = [n for n in node_cases if n.startswith("test_dequantizelinear")]
    done = 0
    for name in names:
        node, ins, outs = node_cases[name]
        if type_name(ins[0]) not in ox.INT_TYPES:
            continue
        a = attrs(node)
        zp = values(ins[2]) if len(ins) > 2 else None
        ours = ox.dequantize_linear(values(ins[0]), arr(ins[1]), zp, a.get("axis", 1), a.get("block_size", 0))
        want = arr(outs[0])
        assert ours.dtype == want.dtype and ours.tobytes() == want.tobytes(), name
        done += 1
    assert done == 9, done        # uint8, axis, blocked, int16, uint16, int4, uint4, int2, uint2


# ----------------------------------------------------------------------------- the ReferenceEvaluator

def run_ref(node, **feeds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(node).run(None, feeds)[0]


floats = st.floats(-1e6, 1e6, width=32)


@pytest.mark.parametrize("to", PACKED + ["INT8", "UINT8", "INT16", "UINT16"])
@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=floats))
def test_cast_to_integer_matches_reference_evaluator(to, x):
    y = run_ref(make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, to)), x=x)
    np.testing.assert_array_equal(ox.cast_float_to_int(x, to).astype(np.int64), y.astype(np.int64))


@given(x=hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(allow_subnormal=True)))
def test_cast_from_double_matches_reference_evaluator(x):
    for to in ("FLOAT", "FLOAT16"):
        y = run_ref(make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, to)), x=x)
        ours = ox.cast_double(x, to)
        assert ours.dtype == y.dtype
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(y))
        np.testing.assert_array_equal(ours[~np.isnan(ours)].tobytes(), y[~np.isnan(y)].tobytes())


@pytest.mark.parametrize("to", list(ox.FLOAT_ELEMENT_TYPES))
@given(x=hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(allow_nan=False, allow_subnormal=True)))
def test_cast_double_to_float8_matches_reference_evaluator(to, x):
    """ONNX's reference casts float64 to float8 through float32 (ml_dtypes 0.6.0)."""
    for sat in ((1, 0) if to != "FLOAT4E2M1" else (1,)):
        y = run_ref(make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, to), saturate=sat), x=x)
        np.testing.assert_array_equal(ox.cast_to_element(x, to, bool(sat)), y.view(np.uint8))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(0, 3.4028234663852886e38, width=32, allow_subnormal=True)))
def test_cast_to_e8m0_matches_reference_evaluator(round_mode, x):
    y = run_ref(make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0, saturate=1, round_mode=round_mode), x=x)
    np.testing.assert_array_equal(ox.cast_to_e8m0(x, True, round_mode), y.view(np.uint8))


def test_cast_to_e8m0_every_exponent_and_subnormal_class():
    m = np.array([0, 1, 0x1FFFFF, 0x200000, 0x3FFFFF, 0x400000, 0x400001, 0x5FFFFF, 0x600000, 0x600001,
                  0x7FFFFF], np.uint32)
    x = ((np.arange(255, dtype=np.uint32) << 23)[:, None] | m[None, :]).ravel().view(np.float32)
    for mode in ("up", "down", "nearest"):
        y = run_ref(make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0, saturate=1, round_mode=mode), x=x)
        np.testing.assert_array_equal(ox.cast_to_e8m0(x, True, mode), y.view(np.uint8), err_msg=mode)


@st.composite
def qdq_case(draw, to):
    """(x, scale, zero point, axis, block_size) for per-tensor, per-axis or blocked QDQ."""
    lo, hi = ox.int_range(to)
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    x = draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-1e5, 1e5, width=32)))
    kind = draw(st.sampled_from(["tensor", "axis", "blocked"]))
    scales = st.floats(2.0 ** -10, 2.0 ** 10, width=32)
    if kind == "tensor":
        shape, axis, block = (), 1, 0
    elif kind == "axis":
        axis = draw(st.sampled_from([0, 1]))
        shape, block = ((rows, cols)[axis],), 0
    else:
        axis, block = 1, draw(st.integers(1, 5))
        shape = (rows, -(-cols // block))
    s = draw(hnp.arrays(np.float32, shape, elements=scales))
    z = draw(hnp.arrays(ML[to] if to not in PACKED else np.int64, shape, elements=st.integers(lo, hi)))
    return x, s, np.asarray(z).astype(ML[to]), axis, block


@pytest.mark.parametrize("to", INT_TYPES)
@given(data=st.data())
def test_quantize_dequantize_linear_match_reference_evaluator(to, data):
    x, s, z, axis, block = data.draw(qdq_case(to))
    kw = {"axis": axis} | ({"block_size": block} if block else {})
    q = run_ref(make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **kw), x=x, s=s, z=z)
    ours = ox.quantize_linear(x, s, z.astype(np.int64), axis, block, to)
    np.testing.assert_array_equal(ours.astype(np.int64), q.astype(np.int64))
    d = run_ref(make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw), q=q, s=s, z=z)
    back = ox.dequantize_linear(ours, s, z.astype(np.int64), axis, block)
    assert back.dtype == d.dtype and back.tobytes() == d.tobytes()


@given(x=hnp.arrays(np.int16, st.integers(1, 30)), s=st.floats(2.0 ** -14, 2.0 ** 15, width=16))
def test_dequantize_int16_with_float16_scale_matches_reference_evaluator(x, s):
    s = np.float16(s)
    d = run_ref(make_node("DequantizeLinear", ["x", "s"], ["y"]), x=x, s=s)
    ours = ox.dequantize_linear(x, s)
    assert ours.dtype == d.dtype == np.float16 and ours.tobytes() == d.tobytes()


# ----------------------------------------------------------------------------- ONNX's own words

def test_wrapping_not_saturating():
    """The issue's example, and its neighbours: -9 -> INT4 7, 16 -> UINT4 0, 2.7 -> 2, -2.7 -> -2."""
    x = np.array([-9, 16, 2.7, -2.7, -8.5, 1e10, np.nan], np.float32)
    assert list(ox.cast_float_to_int(x, "INT4")) == [7, 0, 2, -2, -8, 0, 0]
    assert list(ox.cast_float_to_int(x, "UINT4")) == [7, 0, 2, 14, 8, 0, 0]


def test_quantize_linear_saturates_beyond_int32():
    """The operator saturates; ONNX's reference converts to int32 first (x86: INT_MIN), so for a
    quotient beyond 2^31 it gives the type's minimum — refquant follows the operator."""
    x = np.array([1e10, -1e10], np.float32)
    assert list(ox.quantize_linear(x, np.float32(1), None, output_dtype="INT16")) == [32767, -32768]
    ref = run_ref(make_node("QuantizeLinear", ["x", "s", "z"], ["y"]), x=x, s=np.float32(1), z=np.int16(0))
    assert list(ref) == [-32768, -32768]


def test_packing_matches_onnx():
    for to in PACKED:
        lo, hi = ox.int_range(to)
        v = np.arange(lo, hi + 1).repeat(3)[:11]
        packer = nh._pack_4bitx2 if to.endswith("4") else nh._pack_2bitx4
        assert ox.pack_int(v, to).tobytes() == packer(v.astype(ML[to])).tobytes(), to
        np.testing.assert_array_equal(ox.unpack_int(ox.pack_int(v, to), to, v.size), v)


def test_errors():
    with pytest.raises(FormatError, match="unknown ONNX integer type"):
        ox.cast_float_to_int(np.zeros(2, np.float32), "INT3")
    with pytest.raises(InputError, match="non-finite"):
        ox.quantize_linear(np.array([np.nan], np.float32), np.float32(1))
    with pytest.raises(InputError, match="per-axis y_scale"):
        ox.quantize_linear(np.zeros((2, 3), np.float32), np.ones(4, np.float32), axis=1)
    with pytest.raises(InputError, match="blocked y_scale"):
        ox.quantize_linear(np.zeros((2, 5), np.float32), np.ones((2, 2), np.float32), axis=1, block_size=2)
    with pytest.raises(FormatError, match="round_mode"):
        ox.cast_to_e8m0(np.ones(2, np.float32), round_mode="even")
