"""Element formats (refquant.minifloat) against ml_dtypes' casts — 0.6.0 in this process, 0.7.0 in a
child process (tools/oracles/ml_dtypes_07.py) —, and saturate=True against ONNX's reference Cast
(onnx.numpy_helper.saturate_cast / to_float8e8m0)."""
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import minifloat as mf
from refquant.conformance.strategies import float_rows, grid_floats
from refquant.errors import FormatError, InputError

from tools.oracles.ml_dtypes_07 import MlDtypes07

NAMES = list(mf.FORMATS)


@pytest.fixture(scope="module")
def ml07():
    """ml_dtypes 0.7.0, in a child process (tools/oracles/ml_dtypes_07.py)."""
    o = MlDtypes07()
    yield o
    o.close()

SIGNED = [n for n in NAMES if n != "E8M0"]
FP8 = ["E4M3FN", "E4M3FNUZ", "E5M2", "E5M2FNUZ"]            # ONNX's float8 types
NEW_FP8 = ["E4M3", "E3M4", "E4M3B11FNUZ"]                  # ml_dtypes' others (no ONNX type)


def oracle_dtype(name):
    return getattr(ml_dtypes, mf.FORMATS[name].ml_dtypes_name)


def ml_encode(x, name):
    with np.errstate(all="ignore"):
        return np.asarray(x).astype(oracle_dtype(name)).view(np.uint8)


# The E8M0 rounding ml_dtypes 0.6.0 implements (spec/minifloat/e8m0.md): on the float32 bits, which
# sends the float32 subnormals 0x00400001..0x005FFFFF to 2^-126; 0.7.0 rounds them to nearest, as
# refquant's default does.
ROUND_MODE_06 = {"E8M0": "nearest_bits"}


def assert_codes_equal(x, name, saturate=False, ref=None, round_mode=None):
    """refquant's codes against ml_dtypes 0.6.0's (ref None: with 0.6.0's E8M0 rounding and its
    float64 rule, through float32) or against `ref` (refquant's defaults, which are 0.7.0's)."""
    float64 = "direct"
    if ref is None:
        ref = ml_encode(x, name)
        round_mode = ROUND_MODE_06.get(name, "nearest") if round_mode is None else round_mode
        float64 = "via_float32"
    ours = mf.encode(x, name, saturate=saturate, round_mode=round_mode or "nearest", float64=float64)
    bad = np.nonzero(ours.ravel() != ref.ravel())[0]
    if bad.size:
        i = bad[0]
        v = np.asarray(x).ravel()[i]
        raise AssertionError(f"{name}: {bad.size} codes differ; first x={v!r} (bits {np.asarray(v).view(np.uint32 if np.asarray(v).dtype == np.float32 else np.uint64)!r}) "
                             f"refquant {ours.ravel()[i]:#04x} ml_dtypes {ref.ravel()[i]:#04x}")


def fmt_grid(name):
    f = mf.FORMATS[name]
    emax = int(np.floor(np.log2(f.max)))
    return grid_floats(f.mbits, f.emin, emax)


# ----------------------------------------------------------------------------- decode

@pytest.mark.parametrize("name", NAMES)
def test_every_code_decodes_as_ml_dtypes(name):
    f = mf.FORMATS[name]
    codes = np.arange(1 << f.nbits, dtype=np.uint8)
    ref = codes.view(oracle_dtype(name)).astype(np.float32)
    np.testing.assert_array_equal(mf.decode(codes, name).view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", NAMES)
def test_decode_keeps_shape(name):
    f = mf.FORMATS[name]
    codes = (np.arange(24) % (1 << f.nbits)).astype(np.uint8).reshape(2, 3, 4)
    assert mf.decode(codes, name).shape == (2, 3, 4)
    assert mf.decode(codes, name).dtype == np.float32


# ----------------------------------------------------------------------------- encode, exhaustive edges

def _neighbour_ties(name):
    """Every finite value, every midpoint between neighbouring finite values (both signs), and
    one float32 ulp either side of each."""
    f = mf.FORMATS[name]
    vals = mf.decode(np.arange(1 << f.nbits, dtype=np.uint8), name).astype(np.float64)
    vals = np.unique(vals[np.isfinite(vals)])
    mids = (vals[:-1] + vals[1:]) / 2
    if name == "E8M0":     # no mantissa: the "tie" between 2^k and 2^(k+1) is 1.5 * 2^k
        mids = 1.5 * vals[:-1]
    pts = np.concatenate([vals, mids]).astype(np.float32)   # exact: every midpoint fits float32
    assert np.array_equal(pts.astype(np.float64), np.concatenate([vals, mids]))
    near = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf))])
    return np.concatenate([near, -near]).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_encode_every_tie_between_neighbours(name):
    assert_codes_equal(_neighbour_ties(name), name)


@pytest.mark.parametrize("name", NAMES)
def test_encode_special_values(name):
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
                         0x7FA00000, 0x7F800100], np.uint32)
    x = np.concatenate([np.array([0.0, -0.0, np.inf, -np.inf], np.float32), nan_bits.view(np.float32)])
    assert_codes_equal(x, name)


@pytest.mark.parametrize("name", NAMES)
def test_encode_subnormals_and_underflow(name):
    f = mf.FORMATS[name]
    tiny = 2.0 ** (f.emin - f.mbits)                  # smallest subnormal (E8M0: smallest value)
    k = np.arange(0, 4 << (f.mbits + 1), dtype=np.float64)
    x = np.concatenate([k * tiny / 4, [tiny / 2, tiny / 4, 1e-45, 1e-40, 1.17549435e-38]]).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(1)), np.nextafter(x, np.float32(-1))])
    # every float32 subnormal pattern class: low bits, the tie bit, the top bit
    sub = np.array([1, 2, 0x1FFFFF, 0x200000, 0x3FFFFF, 0x400000, 0x400001, 0x5FFFFF, 0x600000, 0x7FFFFF],
                   np.uint32).view(np.float32)
    x = np.concatenate([x, sub, -x, -sub])
    assert_codes_equal(x, name)


@pytest.mark.parametrize("name", NAMES)
def test_encode_overflow_boundaries(name):
    f = mf.FORMATS[name]
    top = f.max
    step = 2.0 ** (np.floor(np.log2(top)) - f.mbits)
    edges = np.array([top, top + step / 2, top + step, 2 * top, 2.0 ** 127, 3.4028235e38], np.float64)
    if name == "E8M0":
        edges = np.array([top, 1.5 * top, 3.4028235e38], np.float64)
    x = edges.astype(np.float32)
    with np.errstate(over="ignore"):
        x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(0))])
    assert_codes_equal(np.concatenate([x, -x]), name)


@pytest.mark.parametrize("name", NAMES)
def test_encode_every_float32_exponent(name):
    """Each of the 256 exponent fields with mantissas that put the cut at every bit position."""
    e = np.arange(256, dtype=np.uint32) << 23
    m = np.unique(np.concatenate([1 << np.arange(23), (1 << np.arange(1, 24)) - 1, (1 << np.arange(23)) + 1,
                                  [0, 0x7FFFFF]]).astype(np.uint32) & 0x7FFFFF)
    u = (e[:, None] | m[None, :]).ravel()
    x = np.concatenate([u, u | 0x80000000]).view(np.float32)
    assert_codes_equal(x, name)


# ----------------------------------------------------------------------------- encode, property-based

@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_encode_grid_values_match_ml_dtypes(name, data):
    assert_codes_equal(data.draw(fmt_grid(name)), name)


@pytest.mark.parametrize("name", NAMES)
@given(x=hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32)))
def test_encode_any_float32_matches_ml_dtypes(name, x):
    assert_codes_equal(x, name)


@pytest.mark.parametrize("name", ["E4M3FN", "E5M2", "E2M1", "E8M0"])
@given(x=float_rows(32, max_rows=2, max_blocks=2))
def test_encode_weight_rows_match_ml_dtypes(name, x):
    assert_codes_equal(x, name)


@pytest.mark.parametrize("name", NAMES)
@given(x=hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(allow_subnormal=True)))
def test_float64_input_rounds_through_float32_like_ml_dtypes(name, x):
    """ml_dtypes 0.6.0 casts a float64 array by rounding it to float32 first; refquant does the
    same with float64="via_float32", so a float64 just past a tie rounds as the float32 tie does."""
    assert_codes_equal(x, name)


@pytest.mark.parametrize("name", NAMES)
def test_float64_double_rounding_cases(name):
    f = mf.FORMATS[name]
    pts = _neighbour_ties(name).astype(np.float64)
    pts = pts[np.isfinite(pts) & (pts != 0)]
    x = np.concatenate([pts * (1 + 2.0 ** -40), pts * (1 - 2.0 ** -40)])
    assert_codes_equal(x, name)
    # and the rule itself: float64 is the float32 value encoded
    np.testing.assert_array_equal(mf.encode(x, name, float64="via_float32", round_mode=ROUND_MODE_06.get(name, "nearest")),
                                  mf.encode(x.astype(np.float32), name, round_mode=ROUND_MODE_06.get(name, "nearest")))
    assert f.name == name


@pytest.mark.parametrize("name", ["E4M3FN", "E5M2", "E2M1"] + NEW_FP8)
def test_float16_and_bfloat16_inputs(name):
    h = np.arange(65536, dtype=np.uint16).view(np.float16)
    assert_codes_equal(h, name)
    b = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(mf.encode(b, name), ml_encode(b.astype(np.float32), name))


# ----------------------------------------------------------------------------- saturate (ONNX Cast)



def _onnx():
    import onnx.numpy_helper as nh
    return nh


def onnx_saturate(x, name):
    with np.errstate(all="ignore"):
        return _onnx().saturate_cast(x, oracle_dtype(name)).view(np.uint8)


@pytest.mark.parametrize("name", SIGNED)
@given(data=st.data())
def test_saturate_matches_onnx_cast(name, data):
    x = data.draw(fmt_grid(name))
    np.testing.assert_array_equal(mf.encode(x, name, saturate=True), onnx_saturate(x, name))


@pytest.mark.parametrize("name", SIGNED)
def test_saturate_edges_match_onnx_cast(name):
    x = np.concatenate([_neighbour_ties(name), np.array([np.inf, -np.inf, np.nan, -np.nan, 3e38, -3e38], np.float32)])
    np.testing.assert_array_equal(mf.encode(x, name, saturate=True), onnx_saturate(x, name))


def test_saturate_inf_follows_onnx_table_for_fnuz():
    """Cast-25's table: with saturate, ±Inf -> ±FLT_MAX for all four FP8 types, FNUZ too (Cast-19's
    table said NaN for FNUZ); ONNX's reference evaluator agrees with the current table."""
    x = np.array([np.inf, -np.inf], np.float32)
    for name in FP8:
        np.testing.assert_array_equal(mf.encode(x, name, saturate=True), onnx_saturate(x, name))
        assert list(mf.decode(mf.encode(x, name, saturate=True), name)) == [mf.FORMATS[name].max, -mf.FORMATS[name].max]


@given(x=hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, min_value=0, allow_nan=False,
                                                                      allow_infinity=False)))
def test_e8m0_saturate_matches_onnx_nearest(x):
    """E8M0 with saturate=True on finite non-negative values equals ONNX's to_float8e8m0(saturate=True,
    round_mode='nearest') in round_mode "nearest_bits": ml_dtypes 0.6's rounding, overflow clamped to
    2^127, 0 -> 2^-127."""
    ref = _onnx().to_float8e8m0(x, saturate=True, round_mode="nearest").view(np.uint8)
    np.testing.assert_array_equal(mf.encode(x, "E8M0", saturate=True, round_mode="nearest_bits"), ref)


def test_e8m0_inf_saturate_follows_onnx_table_not_its_reference():
    """ONNX's E8M0 table: saturate sends Inf to E8M0_MAX (0xFE); onnx.numpy_helper.to_float8e8m0
    returns 0xFF (NaN) for Inf whatever `saturate` says. refquant follows the table."""
    x = np.array([np.inf], np.float32)
    assert _onnx().to_float8e8m0(x, saturate=True, round_mode="nearest").view(np.uint8)[0] == 0xFF
    assert mf.encode(x, "E8M0", saturate=True)[0] == 0xFE
    assert mf.encode(x, "E8M0")[0] == ml_encode(x, "E8M0")[0] == 0xFF


def test_e8m0_zero_is_nan_in_ml_dtypes_and_min_in_onnx():
    x = np.array([0.0], np.float32)
    assert mf.encode(x, "E8M0")[0] == ml_encode(x, "E8M0")[0] == 0xFF
    assert mf.encode(x, "E8M0", saturate=True)[0] == _onnx().to_float8e8m0(x, True, "nearest").view(np.uint8)[0] == 0


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@given(x=hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, min_value=0, allow_nan=False,
                                                                      allow_infinity=False)))
def test_e8m0_round_modes_match_onnx(round_mode, x):
    """ONNX's round_mode up/down/nearest (to_float8e8m0, saturate=True, finite non-negative x):
    refquant's "up", "down" and "nearest_bits"."""
    ours = {"nearest": "nearest_bits"}.get(round_mode, round_mode)
    ref = _onnx().to_float8e8m0(x, saturate=True, round_mode=round_mode).view(np.uint8)
    np.testing.assert_array_equal(mf.encode(x, "E8M0", saturate=True, round_mode=ours), ref)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
def test_e8m0_round_modes_match_onnx_on_every_exponent(round_mode):
    """Every float32 exponent field with the mantissas that sit on each rule's cut, both flags for
    the overflow end (without saturate, only finite values ONNX's reference and the ml_dtypes-style
    specials agree on: 0 is NaN in refquant, 2^-127 in ONNX's reference — divergence 10)."""
    m = np.array([0, 1, 0x1FFFFF, 0x200000, 0x3FFFFF, 0x400000, 0x400001, 0x5FFFFF, 0x600000, 0x600001,
                  0x7FFFFF], np.uint32)
    u = ((np.arange(255, dtype=np.uint32) << 23)[:, None] | m[None, :]).ravel()
    x = u[u != 0].view(np.float32)
    ours = {"nearest": "nearest_bits"}.get(round_mode, round_mode)
    for sat in (True, False):
        ref = _onnx().to_float8e8m0(x, saturate=sat, round_mode=round_mode).view(np.uint8)
        np.testing.assert_array_equal(mf.encode(x, "E8M0", saturate=sat, round_mode=ours), ref,
                                      err_msg=f"round_mode={round_mode} saturate={sat}")


def test_round_modes_are_e8m0s_only():
    with pytest.raises(FormatError, match="only E8M0"):
        mf.encode(np.ones(2, np.float32), "E4M3FN", round_mode="up")
    with pytest.raises(FormatError, match="known: nearest, nearest_bits, up, down"):
        mf.encode(np.ones(2, np.float32), "E8M0", round_mode="even")


@pytest.mark.parametrize("name", ["E2M3", "E3M2", "E2M1"])
def test_fp6_fp4_saturate_is_the_plain_cast(name):
    """No Inf, no NaN: ml_dtypes already clamps overflow, so saturate changes nothing."""
    x = np.concatenate([_neighbour_ties(name), np.array([np.inf, -np.inf, 1e30, -1e30], np.float32)])
    np.testing.assert_array_equal(mf.encode(x, name, saturate=True), ml_encode(x, name))


# ----------------------------------------------------------------------------- errors

def test_unknown_format_is_refused():
    with pytest.raises(FormatError, match="unknown minifloat format 'E3M5'"):
        mf.encode(np.zeros(4, np.float32), "E3M5")
    with pytest.raises(FormatError):
        mf.decode(np.zeros(4, np.uint8), 7)


def test_bad_dtypes_are_refused():
    with pytest.raises(InputError, match="float dtype"):
        mf.encode(np.zeros(4, np.int32), "E4M3FN")
    with pytest.raises(InputError, match="uint8"):
        mf.decode(np.zeros(4, np.int16), "E4M3FN")
    with pytest.raises(InputError, match="numpy.ndarray"):
        mf.decode([1, 2], "E4M3FN")


@pytest.mark.parametrize("name,code", [("E2M1", 16), ("E2M3", 64), ("E3M2", 200)])
def test_codes_wider_than_the_format_are_refused(name, code):
    with pytest.raises(InputError, match="does not fit"):
        mf.decode(np.array([0, code], np.uint8), name)


def test_aliases():
    assert mf.get_minifloat("float8_e4m3fn").name == "E4M3FN"
    assert mf.get_minifloat("fp4_e2m1").name == "E2M1"
    assert mf.get_minifloat("e8m0fnu").name == "E8M0"
    # "E4M3" is ml_dtypes' IEEE-style float8_e4m3; OCP's E4M3 (torch's FP8_E4M3) is E4M3FN
    assert mf.get_minifloat("E4M3").name == "E4M3" and mf.get_minifloat("float8_e4m3").name == "E4M3"
    assert mf.get_minifloat("fp8_e4m3").name == "E4M3FN"
    assert mf.get_minifloat("float8_e3m4").name == "E3M4"
    assert mf.get_minifloat("float8_e4m3b11fnuz").name == "E4M3B11FNUZ"


# ----------------------------------------------------------------------------- registered rows

@pytest.mark.parametrize("name", NAMES)
@given(x=float_rows(32, max_rows=2, max_blocks=2))
def test_registered_rows_are_ml_dtypes_codes(name, x, ml07):
    """refquant.quantize(x, name): one ml_dtypes code a byte (E2M1: two a byte, low nibble
    first); refquant.dequantize gives ml_dtypes' values back."""
    import refquant
    rows = refquant.quantize(x, name)
    ref = ml_encode(x, name)
    if name == "E8M0":          # the registered rows round to nearest: ml_dtypes 0.7.0's E8M0
        ref = ml07.encode(x, "float8_e8m0fnu")
    if name == "E2M1":
        ref = (ref[:, 0::2] | (ref[:, 1::2] << 4)).astype(np.uint8)
    np.testing.assert_array_equal(rows, ref)
    back = refquant.dequantize(rows, name)
    expect = ref.view(oracle_dtype(name)).astype(np.float32) if name != "E2M1" else \
        ml_encode(x, name).view(oracle_dtype(name)).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(expect))
    np.testing.assert_array_equal(back[~np.isnan(back)], expect[~np.isnan(expect)])


# ----------------------------------------------------------------------------- ml_dtypes 0.7.0

def _edge_inputs(name):
    """The inputs of the edge tests above, in one array: every tie and neighbour, the special
    values, the subnormal classes, the overflow boundaries, every float32 exponent with the
    mantissas that cut at every bit."""
    f = mf.FORMATS[name]
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF], np.uint32)
    special = np.concatenate([np.array([0.0, -0.0, np.inf, -np.inf], np.float32), nan_bits.view(np.float32)])
    tiny = 2.0 ** (f.emin - f.mbits)
    k = np.arange(0, 4 << (f.mbits + 1), dtype=np.float64)
    sub = np.concatenate([(k * tiny / 4).astype(np.float32),
                          np.array([1, 2, 0x1FFFFF, 0x200000, 0x3FFFFF, 0x400000, 0x400001, 0x5FFFFF, 0x600000,
                                    0x7FFFFF], np.uint32).view(np.float32)])
    top = np.array([f.max, 1.5 * f.max, f.max * (1 + 2.0 ** -(f.mbits + 1)), 3.4028235e38], np.float64).astype(np.float32)
    e = np.arange(256, dtype=np.uint32) << 23
    m = np.unique(np.concatenate([1 << np.arange(23), (1 << np.arange(1, 24)) - 1, [0]]).astype(np.uint32) & 0x7FFFFF)
    sweep = (e[:, None] | m[None, :]).ravel().view(np.float32)
    x = np.concatenate([_neighbour_ties(name), special, sub, top, sweep])
    return np.concatenate([x, -x])


@pytest.mark.parametrize("name", NAMES)
def test_every_code_decodes_as_ml_dtypes_07(name, ml07):
    f = mf.FORMATS[name]
    codes = np.arange(1 << f.nbits, dtype=np.uint8)
    np.testing.assert_array_equal(mf.decode(codes, name).view(np.uint32),
                                  ml07.decode(codes, f.ml_dtypes_name).view(np.uint32))


@pytest.mark.parametrize("name", NAMES)
def test_encode_edges_match_ml_dtypes_07(name, ml07):
    """The default encode (E8M0: round to nearest) against 0.7.0 on the edge inputs, on every
    float16, and on float64 inputs just off the ties and beyond float32's range (0.7.0 rounds a
    float64 once, as refquant's default float64="direct" does)."""
    f = mf.FORMATS[name]
    x = _edge_inputs(name)
    assert_codes_equal(x, name, ref=ml07.encode(x, f.ml_dtypes_name))
    h = np.arange(65536, dtype=np.uint16).view(np.float16)
    assert_codes_equal(h, name, ref=ml07.encode(h, f.ml_dtypes_name))
    pts = _neighbour_ties(name).astype(np.float64)
    pts = pts[np.isfinite(pts) & (pts != 0)]
    far = np.array([1e-300, 5e-324, 2.0 ** -140, 2.0 ** -127 * 1.4999999, 1e39, 2.0 ** 128 * 0.9999999, 1e308])
    d = np.concatenate([pts * (1 + 2.0 ** -40), pts * (1 - 2.0 ** -40), far, -far])
    assert_codes_equal(d, name, ref=ml07.encode(d, f.ml_dtypes_name))


@pytest.mark.parametrize("name", NAMES)
@given(x=hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32)))
def test_encode_any_float32_matches_ml_dtypes_07(name, x, ml07):
    assert_codes_equal(x, name, ref=ml07.encode(x, mf.FORMATS[name].ml_dtypes_name))


@pytest.mark.parametrize("name", SIGNED)
def test_saturate_edges_match_ml_dtypes_07_clipped(name, ml07):
    """saturate=True is the cast of x clipped to ±(largest finite value) (ONNX's saturate_cast),
    here with 0.7.0's cast."""
    f = mf.FORMATS[name]
    x = _edge_inputs(name)
    with np.errstate(invalid="ignore"):
        clipped = np.clip(x, np.float32(-f.max), np.float32(f.max))
    assert_codes_equal(x, name, saturate=True, ref=ml07.encode(clipped, f.ml_dtypes_name))


@pytest.mark.parametrize("name", NAMES)
@given(x=hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(allow_subnormal=True)))
def test_float64_input_rounds_once_like_ml_dtypes_07(name, x, ml07):
    assert_codes_equal(x, name, ref=ml07.encode(x, mf.FORMATS[name].ml_dtypes_name))


def test_e8m0_ml_dtypes_06_and_07_differ_on_these_subnormals_only(ml07):
    """Every float32 subnormal and zero, both signs: ml_dtypes 0.6.0 and 0.7.0 disagree exactly on
    0x00400001..0x005FFFFF (between 2^-127 and the midpoint 1.5 * 2^-127: 0.6.0 gives 2^-126, 0.7.0
    2^-127); refquant's "nearest" is 0.7.0 on all of them, "nearest_bits" 0.6.0. Every other
    float32 is covered by the edge tests (the exponent sweep) of both versions."""
    u = np.arange(1 << 23, dtype=np.uint32)
    x = np.concatenate([u, u | 0x80000000]).view(np.float32)
    c06, c07 = ml_encode(x, "E8M0"), ml07.encode(x, "float8_e8m0fnu")
    differ = np.nonzero(c06 != c07)[0]
    np.testing.assert_array_equal(x[differ].view(np.uint32), np.arange(0x400001, 0x600000, dtype=np.uint32))
    assert set(c06[differ]) == {1} and set(c07[differ]) == {0}
    assert_codes_equal(x, "E8M0", ref=c07)
    assert_codes_equal(x, "E8M0", ref=c06, round_mode="nearest_bits")


def _page_rows(header_start):
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "spec" / "divergences-ml-dtypes.md").read_text()
    rows, on = [], False
    for line in text.splitlines():
        if line.startswith(header_start):
            on = True
        elif on and line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif on and not line.startswith("|"):
            on = False
    assert rows, header_start
    return rows


def test_divergence_page_tables(ml07):
    """spec/divergences-ml-dtypes.md: every code in its tables is what the implementation of its
    column gives, and what refquant gives in the mode the column names."""
    onnx = _onnx()
    for bits, _, n07, n06, up, down in _page_rows("| float32 bits"):
        x = np.array([int(bits, 16)], np.uint32).view(np.float32)
        want = {"nearest": int(n07, 16), "nearest_bits": int(n06, 16), "up": int(up, 16), "down": int(down, 16)}
        assert ml07.encode(x, "float8_e8m0fnu")[0] == want["nearest"], bits
        assert ml_encode(x, "E8M0")[0] == want["nearest_bits"], bits
        assert onnx.to_float8e8m0(x, True, "nearest").view(np.uint8)[0] == want["nearest_bits"], bits
        for mode in ("up", "down"):
            assert onnx.to_float8e8m0(x, True, mode).view(np.uint8)[0] == want[mode], (bits, mode)
        for mode, code in want.items():
            assert mf.encode(x, "E8M0", saturate=True, round_mode=mode)[0] == code, (bits, mode)
    for name, v, direct, via in _page_rows("| format | float64 x"):
        x = np.array([float(v)])
        f = mf.FORMATS[name]
        assert ml07.encode(x, f.ml_dtypes_name)[0] == int(direct, 16) == mf.encode(x, name)[0], (name, v)
        mode = ROUND_MODE_06.get(name, "nearest")
        assert ml_encode(x, name)[0] == int(via, 16) == mf.encode(x, name, round_mode=mode, float64="via_float32")[0], (name, v)
        assert direct != via, (name, v)


# ----------------------------------------------------------------------------- every float32 (make test-deep)

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
EVERY_FLOAT32 = os.environ.get("REFQUANT_EVERY_FLOAT32") == "1"


def _assert_both_rules(x, name, where):
    assert_codes_equal(x, name)
    np.testing.assert_array_equal(mf.encode(x, name, saturate=True), onnx_saturate(x, name),
                                  err_msg=f"{name}: saturate=True, {where}")


@pytest.mark.skipif(not DEEP, reason="about 15 s a format on 2 cores: run by make test-deep (the thorough profile)")
@pytest.mark.parametrize("name", NEW_FP8)
def test_every_float32_in_the_formats_range_encodes_as_ml_dtypes(name):
    """Every float32 whose exponent lies from below half the smallest subnormal to past the
    overflow threshold (all 2^23 mantissas of each, both signs), saturate=False against ml_dtypes'
    cast and saturate=True against ONNX's saturate_cast. Below that range every value rounds to
    ±0 and above it every value overflows; test_encode_every_float32_exponent samples those."""
    f = mf.FORMATS[name]
    emax = int(np.floor(np.log2(f.max)))
    m = np.arange(1 << 23, dtype=np.uint32)
    for sign in (0, 0x80000000):
        for e in range(f.emin - f.mbits - 2, emax + 2):
            x = (np.uint32(sign) | np.uint32((e + 127) << 23) | m).view(np.float32)
            _assert_both_rules(x, name, f"float32 exponent {e}, sign {sign >> 31}")


@pytest.mark.skipif(not EVERY_FLOAT32, reason="all 2^32 float32 inputs, both overflow rules: about 9 minutes a "
                                              "format on 2 cores; set REFQUANT_EVERY_FLOAT32=1")
@pytest.mark.parametrize("name", NEW_FP8)
def test_every_float32_encodes_as_ml_dtypes(name):
    """Every float32 bit pattern, saturate=False against ml_dtypes' cast and saturate=True against
    ONNX's saturate_cast (clip to the format's largest finite value, then ml_dtypes' cast)."""
    step = 1 << 24
    for start in range(0, 1 << 32, step):
        x = np.arange(start, start + step, dtype=np.uint64).astype(np.uint32).view(np.float32)
        _assert_both_rules(x, name, f"float32 bits {start:#010x} + {step}")
