"""ONNX's integer and E8M0 semantics: Cast/CastLike to and from the 2-, 4-, 8- and 16-bit integer
types, casts from DOUBLE, Cast to FLOAT8E8M0 with its `round_mode`, and QuantizeLinear /
DequantizeLinear to and from the integer types (per tensor, per axis, blocked), as the ONNX
operators define them (opset 25) and ONNX's reference implementation computes them.

Type names are ONNX's TensorProto names: "INT2", "UINT2", "INT4", "UINT4", "INT8", "UINT8",
"INT16", "UINT16". Values of every integer type are held one a NumPy integer (int8/uint8 for the
2-, 4- and 8-bit types, int16/uint16 for the 16-bit ones); ONNX stores the 4-bit types two a byte
and the 2-bit types four a byte, element 0 in the low bits (`pack_int`, `unpack_int`).

    Cast float -> integer   truncate toward zero, then keep the low `bits` bits (two's complement
                            for the signed types): ONNX wraps, it does not saturate (-9 -> INT4 7,
                            16 -> UINT4 0). A |x| >= 2^31, NaN or ±Inf gives 0 (C's float-to-int
                            conversion on x86 gives INT_MIN, whose low bits are 0).
    QuantizeLinear          y = clamp(rint(x / y_scale) + y_zero_point, type's range): x / y_scale
                            in x's float type, rint ties to even, then saturation.
    DequantizeLinear        y = (float32(x) - float32(x_zero_point)) * x_scale, in float32, rounded
                            to x_scale's type.
"""
from __future__ import annotations

import numpy as np

from . import minifloat as mf
from .errors import FormatError, InputError

F32 = np.float32

# type -> (bits, signed, the NumPy dtype a value is held in)
INT_TYPES = {
    "INT2": (2, True, np.int8), "UINT2": (2, False, np.uint8),
    "INT4": (4, True, np.int8), "UINT4": (4, False, np.uint8),
    "INT8": (8, True, np.int8), "UINT8": (8, False, np.uint8),
    "INT16": (16, True, np.int16), "UINT16": (16, False, np.uint16),
}

# ONNX's float8/float4 types, by refquant's element format names
FLOAT_ELEMENT_TYPES = {"FLOAT8E4M3FN": "E4M3FN", "FLOAT8E4M3FNUZ": "E4M3FNUZ", "FLOAT8E5M2": "E5M2",
                       "FLOAT8E5M2FNUZ": "E5M2FNUZ", "FLOAT4E2M1": "E2M1"}

# Cast to FLOAT8E8M0: ONNX's round_mode -> refquant.minifloat's E8M0 round mode that reproduces
# ONNX's reference (its "nearest" rounds on the float32 bits: spec/minifloat/e8m0.md)
E8M0_ROUND_MODE = {"up": "up", "down": "down", "nearest": "nearest_bits"}


def _int_type(to: str):
    key = str(to).upper()
    if key not in INT_TYPES:
        raise FormatError(f"unknown ONNX integer type {to!r}; known: {', '.join(INT_TYPES)}")
    return key, INT_TYPES[key]


def int_range(to: str) -> tuple[int, int]:
    """The type's smallest and largest value."""
    _, (bits, signed, _) = _int_type(to)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _wrap(v: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """int64 -> its low `bits` bits, sign-extended for a signed type (two's complement)."""
    low = v & ((1 << bits) - 1)
    if signed:
        low = np.where(low >= (1 << (bits - 1)), low - (1 << bits), low)
    return low


# ---------------------------------------------------------------------------------------------
# Cast
# ---------------------------------------------------------------------------------------------

def cast_float_to_int(x: np.ndarray, to: str) -> np.ndarray:
    """Cast/CastLike of a float tensor (float16, float32, float64) to an integer type: truncate
    toward zero, keep the low bits (the C conversion to int32, then the narrowing the integer
    types' rule describes: "discard higher bits and reinterpret")."""
    key, (bits, signed, dtype) = _int_type(to)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"Cast to {key}: x must be a float array, got {x.dtype}")
    xf = x.astype(np.float64)                                    # exact for every float type
    with np.errstate(invalid="ignore"):
        t = np.trunc(xf)
        # (int32) of a float beyond int32, of NaN or of ±Inf is x86's INT_MIN: low bits all 0
        ok = np.isfinite(t) & (np.abs(t) < 2.0 ** 31)
    v = np.where(ok, t, 0).astype(np.int64)
    return _wrap(v, bits, signed).astype(dtype)


def cast_int_to_int(x: np.ndarray, to: str) -> np.ndarray:
    """Cast between integer types: the value, wrapped into the target's bits (e.g. INT4 -> INT8
    sign-extends, UINT4 -> UINT8 zero-extends, INT16 -> INT8 drops the high byte)."""
    key, (bits, signed, dtype) = _int_type(to)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"Cast to {key}: x must be an integer array, got {x.dtype}")
    return _wrap(x.astype(np.int64), bits, signed).astype(dtype)


_F16 = mf.MiniFloat("FLOAT16", 5, 10, 15, "ieee", "float16", "")


def cast_double(x: np.ndarray, to: str) -> np.ndarray:
    """Cast/CastLike from DOUBLE to FLOAT (float32) or FLOAT16, one rounding to nearest even
    from float64; overflow gives ±Inf, NaN stays NaN (a quiet NaN with its sign). To the float8
    and float4 types, see cast_to_element (ONNX's reference rounds through float32 there)."""
    x = np.asarray(x)
    if x.dtype != np.float64:
        raise InputError(f"Cast from DOUBLE: x must be float64, got {x.dtype}")
    key = str(to).upper()
    if key == "FLOAT":
        with np.errstate(over="ignore"):
            return x.astype(F32)                     # IEEE conversion: round to nearest even
    if key != "FLOAT16":
        raise FormatError(f"Cast from DOUBLE to {to!r}: refquant defines FLOAT and FLOAT16 here "
                          f"(float8/float4: cast_to_element)")
    # binary16 is E5M10 with IEEE specials: minifloat's rounding on float64's fields
    neg = np.signbit(x)
    nan, inf = np.isnan(x), np.isinf(x)
    a = np.abs(np.where(nan | inf, 0.0, x))
    mag = mf._round_magnitude(a, _F16).astype(np.int64)
    over = (mag > _F16.max_code) | inf
    mag = np.where(over, 0x7C00, mag)                 # ±Inf
    mag = np.where(nan, 0x7E00, mag)                  # quiet NaN
    bits = (mag | np.where(neg, 0x8000, 0)).astype(np.uint16)
    return bits.view(np.float16)


def cast_to_element(x: np.ndarray, to: str, saturate: bool = True) -> np.ndarray:
    """Cast to FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ or FLOAT4E2M1: codes
    (uint8, one a byte) as refquant.minifloat.encode gives them, `saturate` as the Cast
    attribute (FLOAT4E2M1 has no Inf or NaN: it always saturates). A float64 x is rounded to
    float32 first, as ONNX's reference casts (through ml_dtypes 0.6.0)."""
    key = str(to).upper()
    if key not in FLOAT_ELEMENT_TYPES:
        raise FormatError(f"unknown ONNX float8/float4 type {to!r}; known: {', '.join(FLOAT_ELEMENT_TYPES)}")
    return mf.encode(x, FLOAT_ELEMENT_TYPES[key], saturate=saturate, float64="via_float32")


def cast_to_e8m0(x: np.ndarray, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """Cast to FLOAT8E8M0 with Cast's `saturate` (default 1) and `round_mode` (default "up"):
    E8M0 codes, uint8. round_mode "up" and "down" are refquant.minifloat's modes of those names,
    "nearest" its "nearest_bits" — what ONNX's reference computes (the operator's text, "round to
    nearest value and ties round up", is minifloat's "nearest"; they differ for the float32
    subnormals 0x00400001..0x005FFFFF). The input is rounded to float32 first, as the reference
    does. Specials follow the Cast table: see spec/minifloat/e8m0.md."""
    if round_mode not in E8M0_ROUND_MODE:
        raise FormatError(f"Cast to FLOAT8E8M0: unknown round_mode {round_mode!r}; known: up, down, nearest")
    return mf.encode(x, "E8M0", saturate=saturate, round_mode=E8M0_ROUND_MODE[round_mode])


# ---------------------------------------------------------------------------------------------
# packing: 4-bit types two a byte, 2-bit types four a byte, element 0 in the low bits
# ---------------------------------------------------------------------------------------------

def pack_int(values: np.ndarray, to: str) -> np.ndarray:
    """Values of a 2- or 4-bit type (any shape) -> the bytes ONNX stores (flattened, the last byte
    padded with zeros): element i in bits (i mod k) * bits of byte i // k, k = 8 / bits."""
    key, (bits, _, _) = _int_type(to)
    if bits not in (2, 4):
        raise FormatError(f"{key}: only the 2- and 4-bit types are packed")
    k = 8 // bits
    v = (np.asarray(values).astype(np.int64).ravel() & ((1 << bits) - 1)).astype(np.uint8)
    v = np.concatenate([v, np.zeros((-v.size) % k, np.uint8)]).reshape(-1, k)
    out = np.zeros(v.shape[0], np.uint8)
    for i in range(k):
        out |= (v[:, i] << (i * bits)).astype(np.uint8)
    return out


def unpack_int(data: np.ndarray, to: str, count: int) -> np.ndarray:
    """The bytes of a packed 2- or 4-bit tensor -> its first `count` values (flat)."""
    key, (bits, signed, dtype) = _int_type(to)
    if bits not in (2, 4):
        raise FormatError(f"{key}: only the 2- and 4-bit types are packed")
    data = np.asarray(data, np.uint8).ravel()
    k = 8 // bits
    if count < 0 or count > data.size * k:
        raise InputError(f"{key}: {data.size} bytes hold at most {data.size * k} values, {count} asked for")
    fields = np.stack([(data >> (i * bits)) & ((1 << bits) - 1) for i in range(k)], axis=-1).ravel()[:count]
    return _wrap(fields.astype(np.int64), bits, signed).astype(dtype)


# ---------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear
# ---------------------------------------------------------------------------------------------

def _broadcast_param(p: np.ndarray, shape: tuple, axis: int, block_size: int, what: str) -> np.ndarray:
    """A scale or zero point, shaped to broadcast against x: a scalar (or one element) per tensor;
    a vector of shape[axis] per axis; with block_size, x's shape but ceil(shape[axis] /
    block_size) along the axis, each value repeated over its block (the last may be short)."""
    p = np.asarray(p)
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise InputError(f"{what}: axis {axis} is outside x's {len(shape)} dimensions")
    if not block_size:
        if p.ndim != 1 or p.size != shape[axis]:
            raise InputError(f"{what}: a per-axis {what} must be a vector of {shape[axis]} (x's axis {axis}), "
                             f"got shape {p.shape}")
        dims = [1] * len(shape)
        dims[axis] = p.size
        return p.reshape(dims)
    if block_size < 0:
        raise InputError(f"{what}: block_size must be positive, got {block_size}")
    want = list(shape)
    want[axis] = -(-shape[axis] // block_size)
    if list(p.shape) != want:
        raise InputError(f"{what}: a blocked {what} for x of shape {tuple(shape)}, axis {axis}, block_size "
                         f"{block_size} must have shape {tuple(want)}, got {p.shape}")
    return np.repeat(p, block_size, axis=axis).take(range(shape[axis]), axis=axis)


def quantize_linear(x: np.ndarray, y_scale, y_zero_point=None, axis: int = 1, block_size: int = 0,
                    output_dtype: str = "UINT8") -> np.ndarray:
    """QuantizeLinear to an integer type: clamp(rint(x / y_scale) + y_zero_point, range).

    x float32 or float16, y_scale of x's type: the quotient is rounded in x's type, then to the
    nearest integer, ties to even. The type is y_zero_point's when it is given (its `to`-type
    values held as int8/uint8/int16/uint16: say which with output_dtype), else output_dtype.
    Saturation is exact: a quotient beyond int32 saturates too (ONNX's reference converts to
    int32 first, which on x86 sends it to INT_MIN; the operator's text saturates). NaN and ±Inf
    in x are refused."""
    key, (bits, signed, dtype) = _int_type(output_dtype)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16):
        raise InputError(f"QuantizeLinear: x must be float32 or float16, got {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"QuantizeLinear: x has a non-finite value {x[idx]!r} at index {idx}")
    s = _broadcast_param(np.asarray(y_scale, dtype=x.dtype), x.shape, axis, block_size, "y_scale")
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        q = np.rint((x / s).astype(x.dtype)).astype(np.float64)          # exact: integers below 2^128
    if y_zero_point is not None:
        z = np.asarray(y_zero_point).astype(np.int64)
        lo_z, hi_z = int_range(key)
        if z.size and (z.min() < lo_z or z.max() > hi_z):
            raise InputError(f"QuantizeLinear: y_zero_point outside {key}'s range [{lo_z}, {hi_z}]")
        q = q + _broadcast_param(z, x.shape, axis, block_size, "y_zero_point")
    if np.isnan(q).any():
        raise InputError("QuantizeLinear: x / y_scale is NaN (0 / 0): y_scale has a zero")
    lo, hi = int_range(key)
    return np.clip(q, lo, hi).astype(dtype)


def dequantize_linear(x: np.ndarray, x_scale, x_zero_point=None, axis: int = 1, block_size: int = 0) -> np.ndarray:
    """DequantizeLinear from an integer type (values as int8/uint8/int16/uint16/int32):
    (float32(x) - float32(x_zero_point)) * x_scale, computed in float32 (exact up to the product,
    which rounds once) and rounded to x_scale's type (float32, float16 or bfloat16)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"DequantizeLinear: x must hold integers, got {x.dtype}")
    scale = np.asarray(x_scale)
    if scale.dtype not in (np.float32, np.float16) and scale.dtype.name != "bfloat16":
        raise InputError(f"DequantizeLinear: x_scale must be float32, float16 or bfloat16, got {scale.dtype}")
    dx = x.astype(F32)
    if x_zero_point is not None:
        dx = (dx - _broadcast_param(np.asarray(x_zero_point).astype(F32), x.shape, axis, block_size,
                                    "x_zero_point")).astype(F32)
    s = _broadcast_param(scale.astype(F32), x.shape, axis, block_size, "x_scale")
    with np.errstate(over="ignore"):
        return (dx * s).astype(F32).astype(scale.dtype)


# ---------------------------------------------------------------------------------------------
# registry: ONNX's types as byte rows, what Cast/CastLike writes from FLOAT and reads back to FLOAT
#   INT2/UINT2 four codes a byte, INT4/UINT4 two (element 0 in the low bits: pack_int);
#   INT16/UINT16 one code in two little-endian bytes; FLOAT8E8M0 one code a byte.
#   Each record is the Cast with ONNX's default attributes; a variant of an attribute is a
#   record of its own, named <TYPE>_<VALUE> (FLOAT8E8M0_DOWN: round_mode="down").
#   QuantizeLinear/DequantizeLinear take a scale and a zero point, which a byte row does not
#   carry: they are the functions above (spec/onnx.md), as are the casts from DOUBLE (a row
#   format takes float32).
# ---------------------------------------------------------------------------------------------

RECORD_INT_TYPES = ("INT2", "UINT2", "INT4", "UINT4", "INT16", "UINT16")
RECORD_E8M0_ROUND_MODES = {"FLOAT8E8M0": "up", "FLOAT8E8M0_DOWN": "down", "FLOAT8E8M0_NEAREST": "nearest"}


def _int_rows(to: str):
    key, (bits, signed, dtype) = _int_type(to)
    wide = np.dtype("<i2" if signed else "<u2")

    def quantize_rows(x, imatrix=None):
        v = cast_float_to_int(x, key)
        if bits == 16:
            return np.ascontiguousarray(v.astype(wide)).view(np.uint8).reshape(x.shape[0], -1)
        return pack_int(v, key).reshape(x.shape[0], -1)

    def dequantize_rows(data):
        data = np.ascontiguousarray(data)
        if bits == 16:
            v = data.view(wide)
        else:
            v = unpack_int(data, key, data.size * (8 // bits)).reshape(data.shape[0], -1)
        return v.astype(F32)                      # Cast to FLOAT: every value is exact

    quantize_rows.__name__ = f"cast_float_to_{key.lower()}"
    dequantize_rows.__name__ = f"cast_{key.lower()}_to_float"
    return quantize_rows, dequantize_rows


def _e8m0_rows(name: str, round_mode: str):
    def quantize_rows(x, imatrix=None):
        return cast_to_e8m0(x, saturate=True, round_mode=round_mode)

    def dequantize_rows(data):
        return mf.decode(np.ascontiguousarray(data), "E8M0")

    quantize_rows.__name__ = f"cast_float_to_{name.lower()}"
    dequantize_rows.__name__ = f"cast_{name.lower()}_to_float"
    return quantize_rows, dequantize_rows


def _records() -> list:
    from .format import Format
    out = []
    for t in RECORD_INT_TYPES:
        bits = INT_TYPES[t][0]
        block, size = (8 // bits, 1) if bits < 8 else (1, bits // 8)
        out.append(Format(t, "onnx", block, size, *_int_rows(t), spec_page=f"onnx/{t.lower()}.md"))
    for name, mode in RECORD_E8M0_ROUND_MODES.items():
        out.append(Format(name, "onnx", 1, 1, *_e8m0_rows(name, mode), spec_page=f"onnx/{name.lower()}.md"))
    return out


RECORDS = _records()


__all__ = ["INT_TYPES", "FLOAT_ELEMENT_TYPES", "int_range", "cast_float_to_int", "cast_int_to_int", "cast_double",
           "cast_to_element", "cast_to_e8m0", "pack_int", "unpack_int", "quantize_linear", "dequantize_linear",
           "RECORD_INT_TYPES", "RECORD_E8M0_ROUND_MODES"]
