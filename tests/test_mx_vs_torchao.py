"""OCP MX block formats (refquant.mx) against torchao's MX code (torchao.prototype.mx_formats,
CPU torch): to_mx for the scale rules FLOOR / CEIL / EVEN / RCEIL, to_dtype for decoding."""
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant
from refquant import minifloat as mf
from refquant import mx
from refquant.conformance.strategies import float_rows
from refquant.errors import FormatError, InputError

import torch  # noqa: E402  (an oracle: missing it is an error, not a skip)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.mx_tensor import MXTensor, to_dtype, to_mx

ELEM = {
    "MXFP8_E4M3": torch.float8_e4m3fn,
    "MXFP8_E5M2": torch.float8_e5m2,
    "MXFP6_E2M3": DTYPE_FP6_E2M3,
    "MXFP6_E3M2": DTYPE_FP6_E3M2,
    "MXFP4_E2M1": torch.float4_e2m1fn_x2,
}
MODES = {"floor": ScaleCalculationMode.FLOOR, "ceil": ScaleCalculationMode.CEIL,
         "even": ScaleCalculationMode.EVEN, "rceil": ScaleCalculationMode.RCEIL}
FORMATS = list(ELEM)


def torchao_to_mx(x, name, rule):
    scale, data = to_mx(torch.from_numpy(x.copy()), ELEM[name], 32, MODES[rule])
    return scale.view(torch.uint8).numpy(), data.view(torch.uint8).numpy()


def torchao_to_float(scales, data, name):
    dt = ELEM[name]
    d = torch.from_numpy(data.copy())
    if name.startswith("MXFP8"):
        d = d.view(dt)
    s = torch.from_numpy(scales.copy()).view(torch.float8_e8m0fnu)
    return to_dtype(d, s, dt, 32, torch.float32).numpy()


def assert_same_as_torchao(x, name, rule, ours_rule=None):
    s_ref, d_ref = torchao_to_mx(x, name, rule)
    s, d = mx.quantize_mx(x, name, ours_rule or rule)
    np.testing.assert_array_equal(s, s_ref, err_msg=f"{name}/{rule}: scales")
    np.testing.assert_array_equal(d, d_ref, err_msg=f"{name}/{rule}: element codes")


# ----------------------------------------------------------------------------- quantize

@pytest.mark.parametrize("rule", list(MODES))
@pytest.mark.parametrize("name", FORMATS)
@given(x=float_rows(32, max_rows=2, max_blocks=3))
def test_quantize_matches_torchao(name, rule, x):
    assert_same_as_torchao(x, name, rule)


def _edge_blocks():
    """One block per row: zeros, -0, a subnormal amax, amax in the range whose FLOOR scale is
    2^-127, amax at FLT_MAX, exact powers of two, ties of every element grid, and amax just
    either side of each element format's largest value times a power of two."""
    rows = [np.zeros(32), np.full(32, -0.0), np.full(32, 1e-45), np.linspace(-1e-39, 1e-39, 32),
            np.linspace(-2.0 ** -119, 2.0 ** -119, 32), np.linspace(-2.0 ** -116, 2.0 ** -117, 32),
            np.full(32, 3.4028235e38), np.linspace(-3.4e38, 3.4e38, 32), np.full(32, 1.0),
            np.ldexp(1.0, np.arange(-16, 16))]
    for m in (6.0, 7.5, 28.0, 448.0, 57344.0):
        for e in (-100, -3, 0, 5, 60):
            v = m * 2.0 ** e
            r = np.arange(-16, 16) * (v / 16)
            r[0] = v
            rows.append(r)
            rows.append(np.nextafter(np.float32(r), np.float32(np.inf)))
            rows.append(np.nextafter(np.float32(r), np.float32(0)))
            rows.append(np.arange(-31, 33, 2) * (v / 64))          # odd multiples: element ties
    return np.array(rows, dtype=np.float64).astype(np.float32)


@pytest.mark.parametrize("rule", list(MODES))
@pytest.mark.parametrize("name", FORMATS)
def test_quantize_edge_blocks_match_torchao(name, rule):
    assert_same_as_torchao(_edge_blocks(), name, rule)


@pytest.mark.parametrize("name", FORMATS)
def test_rceil_log2_rounding_matches_torchao(name):
    """RCEIL takes ceil(log2(amax / max_elem)) in float32: an amax / max just above 2^k whose
    log2 rounds to k gives k. Every power of two with the 64 smallest mantissas above it."""
    f = mx.MX_FORMATS[name]
    k = np.arange(-120, 120)
    d = (np.ldexp(np.float32(1), k).view(np.uint32)[:, None] + np.arange(64, dtype=np.uint32)).view(np.float32)
    with np.errstate(over="ignore"):
        amax = (d.astype(np.float64) * f.max_elem).astype(np.float32).ravel()
    amax = amax[np.isfinite(amax)]
    # one amax per block: each candidate first, the rest of its block half of it
    blocks = np.repeat(amax[:, None], 32, axis=1) * np.float32(0.5)
    blocks[:, 0] = amax
    assert_same_as_torchao(blocks.astype(np.float32), name, "rceil")


# ----------------------------------------------------------------------------- OCP rule

@pytest.mark.parametrize("name", FORMATS)
@given(x=float_rows(32, max_rows=2, max_blocks=3))
def test_ocp_rule_equals_torchao_floor_above_the_smallest_scale(name, x):
    """OCP v1.0's floor(log2(amax)) - emax_elem is torchao's FLOOR rule wherever the scale is
    above 2^-127 (torchao then divides by the scale itself)."""
    s_ref, d_ref = torchao_to_mx(x, name, "floor")
    s, d = mx.quantize_mx(x, name, "ocp")
    np.testing.assert_array_equal(s, s_ref)
    keep = np.repeat(s_ref > 0, 32 // (2 if name == "MXFP4_E2M1" else 1), axis=-1)
    np.testing.assert_array_equal(d[keep], d_ref[keep])


@pytest.mark.parametrize("name", FORMATS)
def test_ocp_rule_at_the_smallest_scale_divides_by_2_pow_minus_127(name):
    """Where the scale is 2^-127, OCP divides by 2^-127 while torchao FLOOR divides by 2^-126:
    the OCP elements are the saturating cast (ONNX Cast saturate=1) of x * 2^127."""
    import onnx.numpy_helper as nh
    import ml_dtypes
    f = mx.MX_FORMATS[name]
    rng = np.random.default_rng(3)
    top = 2.0 ** (-127 + f.emax_elem)                      # every amax below 2*top gets scale 2^-127
    x = (rng.uniform(-1.9, 1.9, (6, 32)) * top).astype(np.float32)
    x[0, 0] = np.float32(1.9999 * top)
    s, d = mx.quantize_mx(x, name, "ocp")
    assert (s == 0).all()
    elem = getattr(ml_dtypes, mf.FORMATS[f.element].ml_dtypes_name)
    ref = nh.saturate_cast(np.ldexp(x.astype(np.float64), 127).astype(np.float32), elem).view(np.uint8)
    if f.packed:
        ref = mx.pack_fp4(ref)
    np.testing.assert_array_equal(d, ref)
    _, d_floor = torchao_to_mx(x, name, "floor")
    assert not np.array_equal(d, d_floor)                   # the divergence is real


# ----------------------------------------------------------------------------- dequantize

@pytest.mark.parametrize("name", FORMATS)
@given(data=st.data())
def test_dequantize_any_codes_matches_torchao(name, data):
    f = mx.MX_FORMATS[name]
    nblocks = data.draw(st.integers(1, 4))
    scales = data.draw(hnp.arrays(np.uint8, (2, nblocks)))          # every E8M0 code, 0xFF (NaN) too
    nbits = mf.FORMATS[f.element].nbits
    codes = data.draw(hnp.arrays(np.uint8, (2, nblocks * 32), elements=st.integers(0, (1 << nbits) - 1)))
    d = mx.pack_fp4(codes) if f.packed else codes
    ours = mx.dequantize_mx(scales, d, name)
    ref = torchao_to_float(scales, d, name)
    assert_same_floats(ours, ref)


def assert_same_floats(ours, ref):
    """Bit-equal, except that a NaN need only be a NaN: torch widens an FP8 NaN keeping its
    mantissa bits (0x7FF00000), ml_dtypes and refquant give the canonical quiet NaN."""
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


@pytest.mark.parametrize("name", FORMATS)
def test_mxtensor_roundtrip_matches(name):
    """The public MXTensor.to_mx(...).dequantize() path gives the same floats."""
    x = (np.random.default_rng(5).standard_normal((4, 128)) * 3).astype(np.float32)
    t = MXTensor.to_mx(torch.from_numpy(x), ELEM[name], 32)
    ref = t.dequantize(torch.float32).numpy()
    s, d = mx.quantize_mx(x, name, "floor")
    np.testing.assert_array_equal(mx.dequantize_mx(s, d, name), ref)


def test_fp4_nibble_order_is_torchaos():
    codes = np.arange(32, dtype=np.uint8).reshape(1, 32) % 16
    packed = mx.pack_fp4(codes)
    assert packed[0, 0] == codes[0, 0] | (codes[0, 1] << 4)
    np.testing.assert_array_equal(mx.unpack_fp4(packed), codes)
    from torchao.prototype.mx_formats.kernels import pack_uint4
    np.testing.assert_array_equal(packed, pack_uint4(torch.from_numpy(codes)).numpy())


# ----------------------------------------------------------------------------- MXINT8 (no oracle)

def test_mxint8_decodes_as_the_ocp_spec_defines():
    """OCP v1.0 5.3: MXINT8 elements are two's complement int8 with an implicit scale 2^-6.
    No implementation at hand (torchao has no MXINT8) to quantize against: only the decoding
    the spec text defines is checked here."""
    codes = np.arange(256, dtype=np.uint8).repeat(1)[None, :]
    scales = np.full((1, 8), 127, np.uint8)
    v = mx.dequantize_mx(scales, codes, "MXINT8")
    np.testing.assert_array_equal(v[0], codes[0].view(np.int8).astype(np.float32) / 64)


# ----------------------------------------------------------------------------- registry + errors

@pytest.mark.parametrize("name", ["MXFP8_E4M3", "MXFP8_E5M2", "MXFP4_E2M1"])
def test_registered_rows_are_scale_then_torchao_bytes(name):
    x = (np.random.default_rng(2).standard_normal((3, 96)) * 0.02).astype(np.float32)
    rows = refquant.quantize(x, name)
    s_ref, d_ref = torchao_to_mx(x, name, "floor")
    per = 16 if name == "MXFP4_E2M1" else 32
    blocks = rows.reshape(3, 3, 1 + per)
    np.testing.assert_array_equal(blocks[..., 0], s_ref)
    np.testing.assert_array_equal(blocks[..., 1:].reshape(3, -1), d_ref)
    np.testing.assert_array_equal(refquant.dequantize(rows, name), torchao_to_float(s_ref, d_ref, name))


def test_errors():
    x = np.zeros((2, 32), np.float32)
    with pytest.raises(FormatError, match="unknown MX format"):
        mx.quantize_mx(x, "MXFP5")
    with pytest.raises(FormatError, match="unknown MX scale rule"):
        mx.quantize_mx(x, "MXFP8", "round")
    with pytest.raises(FormatError, match="only the 'ocp' scale rule"):
        mx.quantize_mx(x, "MXINT8", "rceil")
    with pytest.raises(InputError, match="multiple of the block size 32"):
        mx.quantize_mx(np.zeros((2, 48), np.float32), "MXFP4")
    with pytest.raises(InputError, match="float32"):
        mx.quantize_mx(x.astype(np.float64), "MXFP4")
    bad = x.copy()
    bad[1, 3] = np.inf
    with pytest.raises(InputError, match=r"non-finite value inf at row 1, column 3"):
        mx.quantize_mx(bad, "MXFP8_E5M2")
    with pytest.raises(InputError, match="scales of shape"):
        mx.dequantize_mx(np.zeros((2, 2), np.uint8), np.zeros((2, 32), np.uint8), "MXFP8")
    with pytest.raises(InputError, match="does not fit"):
        mx.dequantize_mx(np.zeros((1, 1), np.uint8), np.full((1, 32), 64, np.uint8), "MXFP6_E2M3")


# ----------------------------------------------------------------------------- torch's own FP8 casts

def _fp8_grid(name):
    f = mf.FORMATS[name]
    vals = mf.decode(np.arange(256, dtype=np.uint8), name).astype(np.float64)
    vals = np.unique(vals[np.isfinite(vals)])
    mids = (vals[:-1] + vals[1:]) / 2
    top = f.max * np.array([1.0, 1.03, 1.07, 1.1, 2.0, 1e10, 1e30])
    x = np.concatenate([vals, mids, top, [np.inf]]).astype(np.float32)
    with np.errstate(over="ignore"):
        x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(0))])
    return np.concatenate([x, -x])


@pytest.mark.parametrize("name,torch_dtype,saturate", [
    ("E4M3FN", "float8_e4m3fn", True),      # torch >= 2.12 eager: overflow and ±Inf -> ±448
    ("E5M2", "float8_e5m2", False),         # overflow -> ±Inf, as ml_dtypes
    ("E4M3FNUZ", "float8_e4m3fnuz", False),  # overflow -> NaN (0x80), as ml_dtypes
    ("E5M2FNUZ", "float8_e5m2fnuz", False),
])
def test_torch_fp8_casts(name, torch_dtype, saturate):
    """torch's CPU cast to E4M3FN saturates (unlike ml_dtypes, which gives NaN); its other FP8
    casts do not. Each equals refquant's encode with the matching `saturate`."""
    x = _fp8_grid(name)
    ref = torch.from_numpy(x).to(getattr(torch, torch_dtype)).view(torch.uint8).numpy()
    np.testing.assert_array_equal(mf.encode(x, name, saturate=saturate), ref)
