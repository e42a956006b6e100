"""Small floating-point element formats, defined from their bit layouts.

    E4M3FN  E4M3FNUZ  E5M2  E5M2FNUZ     8-bit (OCP FP8, and the "FNUZ" variants of Graphcore/AMD)
    E4M3  E3M4                           8-bit IEEE-style, with infinities (ml_dtypes float8_e4m3,
                                         float8_e3m4)
    E4M3B11FNUZ                          8-bit, bias 11, FNUZ (Graphcore; ml_dtypes float8_e4m3b11fnuz)
    E2M3    E3M2                         6-bit (OCP MX FP6)
    E2M1                                 4-bit (OCP MX FP4)
    E8M0                                 8-bit unsigned power of two (OCP MX shared scale)

A code is an unsigned integer in a uint8, the format's bits in the low end:

    sign (1 bit, none in E8M0) | exponent (E bits, biased) | mantissa (M bits)

    exponent field 0     subnormal: (-1)^s * 2^(1 - bias) * m / 2^M
    exponent field > 0   normal:    (-1)^s * 2^(e - bias) * (1 + m / 2^M)

What the formats do with their top codes (their "special values") is the only thing that
differs beyond E, M and the bias; see `MiniFloat.specials`:

    "ieee"   all-ones exponent is Inf (m = 0) or NaN (m != 0)                 E5M2, E4M3, E3M4
    "fn"     finite; only S.1111.111 is NaN, no Inf                           E4M3FN
    "fnuz"   finite, no -0: the code 0x80 (negative zero's bits) is the NaN  E4M3FNUZ, E5M2FNUZ,
                                                                              E4M3B11FNUZ
    "none"   finite, no NaN, no Inf                                           E2M3, E3M2, E2M1
    "e8m0"   2^(e - 127) for e = 0..254; 0xFF is NaN; no zero, no sign       E8M0

`encode(x, fmt)` rounds to nearest, ties to even (E8M0: ties away from zero), and maps
overflow, Inf and NaN as ml_dtypes' cast does; E8M0 also takes a `round_mode` (E8M0_ROUND_MODES:
ONNX's "up" and "down", and ml_dtypes 0.6's rounding on the float32 bits, which differs from
round to nearest for some float32 subnormals — spec/minifloat/e8m0.md); `encode(x, fmt, saturate=True)` clamps overflow
and ±Inf to the largest finite value as ONNX's Cast does with saturate=1 (opset 25 table).
`decode(codes, fmt)` is exact. Input dtype rule: float32 is encoded directly; float16 and
bfloat16 are widened to float32 first (exact); float64 is rounded once, from float64, as
ml_dtypes 0.7.0 casts a float64 array — or, with float64="via_float32", rounded to float32
first (round to nearest even) and so twice, as ml_dtypes 0.6.0 does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FormatError, InputError

F32 = np.float32


@dataclass(frozen=True)
class MiniFloat:
    name: str
    ebits: int
    mbits: int
    bias: int
    specials: str            # "ieee" | "fn" | "fnuz" | "none" | "e8m0"
    ml_dtypes_name: str      # the oracle's dtype of the same format
    spec_page: str

    @property
    def signed(self) -> bool:
        return self.specials != "e8m0"

    @property
    def nbits(self) -> int:
        return int(self.signed) + self.ebits + self.mbits

    @property
    def sign_bit(self) -> int:
        """The sign's place in the code (0 for the unsigned E8M0)."""
        return (1 << (self.ebits + self.mbits)) if self.signed else 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (and the scale of the subnormals)."""
        return 1 - self.bias

    @property
    def max_code(self) -> int:
        """The magnitude code (sign clear) of the largest finite value."""
        all_ones = (1 << (self.ebits + self.mbits)) - 1
        if self.specials == "ieee":
            return all_ones - (1 << self.mbits)      # exponent all ones is Inf/NaN
        if self.specials in ("fn", "e8m0"):
            return all_ones - 1                      # S.1111.111 / 0xFF is NaN
        return all_ones                              # "fnuz", "none": every magnitude is finite

    @property
    def max(self) -> float:
        return float(_magnitude(np.array([self.max_code]), self)[0])

    def nan_code(self, negative: np.ndarray) -> np.ndarray:
        """The code ml_dtypes writes for a NaN input, given the NaN's sign bit."""
        if self.specials == "fn":
            return np.where(negative, self.sign_bit | 0x7F, 0x7F)
        if self.specials == "ieee":  # the quiet NaN: top mantissa bit set
            q = ((1 << self.ebits) - 1) << self.mbits | (1 << (self.mbits - 1))
            return np.where(negative, self.sign_bit | q, q)
        if self.specials == "fnuz":
            return np.full(negative.shape, 0x80)
        if self.specials == "e8m0":
            return np.full(negative.shape, 0xFF)
        # "none": no NaN to write. ml_dtypes writes a zero whose sign is the NaN's sign flipped.
        return np.where(negative, 0, self.sign_bit)

    def overflow_code(self, negative: np.ndarray) -> np.ndarray:
        """The code for a finite value that rounds past the largest one, or for ±Inf, without
        saturation: Inf (ieee), NaN (fn keeps the sign, fnuz has one NaN), the largest value
        (none: nothing else to give), NaN (e8m0)."""
        if self.specials == "ieee":
            inf = ((1 << self.ebits) - 1) << self.mbits
            return np.where(negative, self.sign_bit | inf, inf)
        if self.specials == "none":
            return np.where(negative, self.sign_bit | self.max_code, self.max_code)
        return self.nan_code(negative)


FORMATS: dict[str, MiniFloat] = {f.name: f for f in [
    MiniFloat("E4M3FN", 4, 3, 7, "fn", "float8_e4m3fn", "minifloat/e4m3fn.md"),
    MiniFloat("E4M3FNUZ", 4, 3, 8, "fnuz", "float8_e4m3fnuz", "minifloat/e4m3fnuz.md"),
    MiniFloat("E5M2", 5, 2, 15, "ieee", "float8_e5m2", "minifloat/e5m2.md"),
    MiniFloat("E5M2FNUZ", 5, 2, 16, "fnuz", "float8_e5m2fnuz", "minifloat/e5m2fnuz.md"),
    MiniFloat("E4M3", 4, 3, 7, "ieee", "float8_e4m3", "minifloat/e4m3.md"),
    MiniFloat("E3M4", 3, 4, 3, "ieee", "float8_e3m4", "minifloat/e3m4.md"),
    MiniFloat("E4M3B11FNUZ", 4, 3, 11, "fnuz", "float8_e4m3b11fnuz", "minifloat/e4m3b11fnuz.md"),
    MiniFloat("E2M3", 2, 3, 1, "none", "float6_e2m3fn", "minifloat/e2m3.md"),
    MiniFloat("E3M2", 3, 2, 3, "none", "float6_e3m2fn", "minifloat/e3m2.md"),
    MiniFloat("E2M1", 2, 1, 1, "none", "float4_e2m1fn", "minifloat/e2m1.md"),
    MiniFloat("E8M0", 8, 0, 127, "e8m0", "float8_e8m0fnu", "minifloat/e8m0.md"),
]}

# Other spellings in use: ml_dtypes' / torch's dtype names, and the OCP MX element names.
# "E4M3" alone is ml_dtypes' float8_e4m3, the IEEE-style format with infinities; OCP's E4M3
# (torch's FP8_E4M3) is E4M3FN.
_ALIASES = {
    "FLOAT8_E4M3FN": "E4M3FN", "FP8_E4M3": "E4M3FN",
    "FLOAT8_E4M3FNUZ": "E4M3FNUZ",
    "FLOAT8_E4M3": "E4M3", "FLOAT8_E3M4": "E3M4", "FLOAT8_E4M3B11FNUZ": "E4M3B11FNUZ",
    "FLOAT8_E5M2": "E5M2", "FP8_E5M2": "E5M2",
    "FLOAT8_E5M2FNUZ": "E5M2FNUZ",
    "FLOAT6_E2M3FN": "E2M3", "FP6_E2M3": "E2M3", "E2M3FN": "E2M3",
    "FLOAT6_E3M2FN": "E3M2", "FP6_E3M2": "E3M2", "E3M2FN": "E3M2",
    "FLOAT4_E2M1FN": "E2M1", "FP4_E2M1": "E2M1", "E2M1FN": "E2M1", "FP4": "E2M1",
    "FLOAT8_E8M0FNU": "E8M0", "E8M0FNU": "E8M0", "UE8M0": "E8M0",
}


def get_minifloat(fmt) -> MiniFloat:
    """Look an element format up by name (any case; ml_dtypes' names are accepted too)."""
    if isinstance(fmt, MiniFloat):
        return fmt
    if not isinstance(fmt, str):
        raise FormatError(f"a minifloat format must be a name such as 'E4M3FN', got {type(fmt).__name__}")
    key = fmt.upper()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise FormatError(f"unknown minifloat format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[key]


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------

def _magnitude(mag: np.ndarray, f: MiniFloat) -> np.ndarray:
    """Value of magnitude codes (sign clear, no special meaning applied) as float64, exactly."""
    mag = np.asarray(mag, dtype=np.int64)
    e = mag >> f.mbits
    m = mag & ((1 << f.mbits) - 1)
    if f.specials == "e8m0":                 # no subnormals: field 0 is 2^-127
        return np.ldexp(1.0, (e - f.bias).astype(np.int32))
    sub = e == 0
    frac = np.where(sub, m, m + (1 << f.mbits)).astype(np.float64)   # (0.m or 1.m) * 2^M
    exp = np.where(sub, f.emin, e - f.bias) - f.mbits
    return np.ldexp(frac, exp.astype(np.int32))


def _decode_table(f: MiniFloat) -> np.ndarray:
    """float32 value of every code 0 .. 2^nbits - 1."""
    codes = np.arange(1 << f.nbits, dtype=np.int64)
    neg = (codes & f.sign_bit) != 0 if f.signed else np.zeros(codes.shape, bool)
    mag = codes & ~f.sign_bit if f.signed else codes
    val = _magnitude(mag, f)
    val = np.where(neg, -val, val)
    with np.errstate(over="ignore"):
        out = val.astype(F32)
    # The special codes. A NaN decodes as float32's quiet NaN with the code's sign
    # (fnuz's single NaN 0x80 has its sign bit set, so it decodes as -NaN).
    qnan = np.uint32(0x7FC00000)
    bits = out.view(np.uint32)
    if f.specials == "ieee":
        top = (mag >> f.mbits) == (1 << f.ebits) - 1
        inf = top & ((mag & ((1 << f.mbits) - 1)) == 0)
        nan = top & ~inf
        bits[inf] = np.where(neg[inf], 0xFF800000, 0x7F800000)
        bits[nan] = np.where(neg[nan], 0xFFC00000, qnan)
    elif f.specials == "fn":
        nan = mag == (1 << (f.ebits + f.mbits)) - 1
        bits[nan] = np.where(neg[nan], 0xFFC00000, qnan)
    elif f.specials == "fnuz":
        bits[codes == f.sign_bit] = 0xFFC00000
    elif f.specials == "e8m0":
        bits[codes == 0xFF] = qnan
    return out


_TABLES: dict[str, np.ndarray] = {}


def decode_table(fmt) -> np.ndarray:
    """The float32 value of every code of `fmt` (read-only, indexed by code)."""
    f = get_minifloat(fmt)
    t = _TABLES.get(f.name)
    if t is None:
        t = _decode_table(f)
        t.setflags(write=False)
        _TABLES[f.name] = t
    return t


def decode(codes, fmt) -> np.ndarray:
    """uint8 codes (any shape) -> float32 values of the same shape. A code with bits set above
    the format's width (a 4-bit code >= 16, a 6-bit code >= 64) is refused."""
    f = get_minifloat(fmt)
    if not isinstance(codes, np.ndarray):
        raise InputError(f"{f.name}: codes must be a numpy.ndarray of uint8, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise InputError(f"{f.name}: codes must have dtype uint8, got {codes.dtype}")
    if f.nbits < 8:
        over = codes >= (1 << f.nbits)
        if over.any():
            idx = tuple(int(i) for i in np.argwhere(over)[0])
            raise InputError(f"{f.name}: code {int(codes[idx])} at index {idx} does not fit in the format's "
                             f"{f.nbits} bits (codes are 0..{(1 << f.nbits) - 1})")
    return decode_table(f)[codes]


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------

FLOAT64_RULES = ("direct", "via_float32")


def _as_float(x, f: MiniFloat, float64: str = "direct") -> np.ndarray:
    """x as float32, or float64 kept as it is (float64="direct": rounded once, from float64,
    ml_dtypes 0.7.0) or rounded to float32 first (float64="via_float32": ml_dtypes 0.6.0)."""
    if float64 not in FLOAT64_RULES:
        raise FormatError(f"{f.name}: unknown float64 rule {float64!r}; known: {', '.join(FLOAT64_RULES)}")
    if not isinstance(x, np.ndarray):
        if isinstance(x, (float, int, np.floating)) and not isinstance(x, bool):
            x = np.asarray(x, dtype=np.float64 if isinstance(x, (float, int)) else None)
        else:
            raise InputError(f"{f.name}: x must be a numpy.ndarray of floats, got {type(x).__name__}")
    if x.dtype == np.float64 and float64 == "direct":
        return x
    return _as_float32(x, f)


def _as_float32(x, f: MiniFloat) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        if isinstance(x, (float, int, np.floating)) and not isinstance(x, bool):
            x = np.asarray(x, dtype=np.float64 if isinstance(x, (float, int)) else None)
        else:
            raise InputError(f"{f.name}: x must be a numpy.ndarray of floats, got {type(x).__name__}")
    if x.dtype == np.float32:
        return x
    if x.dtype in (np.float16, np.float64) or x.dtype.name == "bfloat16":
        with np.errstate(over="ignore"):
            return x.astype(F32)   # exact for float16/bfloat16; float64 is rounded to nearest even
    raise InputError(f"{f.name}: x must have a float dtype (float32, or float16/bfloat16/float64), "
                     f"got {x.dtype}")


def _exponent_field(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) for a normal float32/float64 a, from its exponent field (int32); zero and
    subnormals read the field's bottom (-127 / -1023), below every format's emin."""
    if a.dtype == np.float64:
        return (a.view(np.uint64) >> np.uint64(52)).astype(np.int32) - 1023
    return (a.view(np.uint32) >> 23).astype(np.int32) - 127


def _round_magnitude(a: np.ndarray, f: MiniFloat) -> np.ndarray:
    """Finite |x| (float32, any value) -> the magnitude code of the nearest value, ties to even,
    on an exponent range unbounded above: the result may exceed max_code (overflow).

    With e = max(floor(log2 |x|), emin) and quantum q = 2^(e - M), n = rint(|x| / q) is the
    significand rounded to M bits (n in [2^M, 2^(M+1)] for normals, [0, 2^M] for subnormals),
    and the code is ((e + bias) << M) + n - 2^M: a carry out of the mantissa (n = 2^(M+1))
    moves to the next exponent, and a subnormal that rounds up to 2^M lands on the smallest
    normal, both by plain addition.

    floor(log2 |x|) is float32's exponent field - 127 (a float32 subnormal or zero reads -127,
    below every format's emin, so it takes emin), and |x| / q is a float32 multiply by a power
    of two whose result lies in [0, 2^(M+1)): exact, so np.rint sees the true quotient. A float64
    |x| (float64="direct") goes the same way on float64's fields: one rounding, from float64.
    """
    e = np.maximum(_exponent_field(a), np.int32(f.emin))
    n = np.rint(np.ldexp(a, f.mbits - e)).astype(np.int32)      # rint: ties to even
    return ((e + f.bias) << f.mbits) + n - (1 << f.mbits)


# E8M0's rounding modes. "nearest" is the default; "nearest_bits" was ml_dtypes' rule before
# 0.7.0 and is ONNX's reference `to_float8e8m0(round_mode="nearest")`; "up" and "down" are
# ONNX's (Cast's round_mode attribute, its reference implementation).
E8M0_ROUND_MODES = ("nearest", "nearest_bits", "up", "down")


def _round_e8m0(a: np.ndarray, round_mode: str = "nearest") -> np.ndarray:
    """Positive finite float32 -> E8M0 code (the biased exponent of a power of two), on an
    unbounded range (the result may reach 255: overflow).

    e is the float32's biased exponent field, so that a normal a = 2^(e - 127) * (1 + f) with
    f = (bits & 0x7FFFFF) / 2^23, and a subnormal (e = 0) lies below 2^-126.

    "nearest"       the nearest power of two, a tie going up (away from zero) — ml_dtypes 0.7.0.
                    Normal a: 2^(e-127) or 2^(e-126), the tie at f = 1/2, so up when bit 22 is
                    set. Subnormal a: 2^-127 (code 0) or 2^-126 (code 1), the tie at 1.5 * 2^-127
                    (bits 0x00600000), so up when bits >= 0x00600000; everything below, the
                    smallest subnormals included, is nearest to 2^-127.
    "nearest_bits"  bit 22 decides for subnormals too, except the exact 2^-127 (0x00400000):
                    ml_dtypes 0.6.0 and ONNX's reference. It sends 0x00400001 .. 0x005FFFFF,
                    which are nearer to 2^-127, up to 2^-126.
    "up"            e, plus one when any of the 23 fraction bits is set (ONNX's reference:
                    a subnormal goes to 2^-126 even at or below 2^-127).
    "down"          e: the fraction bits are dropped (ONNX's reference).
    """
    if a.dtype == np.float64:
        # float64 (float64="direct", "nearest" only): the power 2^k below a, k = floor(log2 a),
        # or the one above when a's first fraction bit (bit 51) is set; below 2^-127 the nearest
        # is 2^-127 (code 0), there being nothing smaller.
        assert round_mode == "nearest"
        k = _exponent_field(a)
        up = (a.view(np.uint64) & np.uint64(1 << 51)) != 0
        return np.maximum(k + 127 + up, 0)
    u = a.view(np.uint32)
    e = (u >> 23).astype(np.int32)
    frac = u & 0x7FFFFF
    if round_mode == "nearest":
        up = np.where(e > 0, (frac & 0x400000) != 0, frac >= 0x600000)
    elif round_mode == "nearest_bits":
        up = ((frac & 0x400000) != 0) & ((e > 0) | ((frac & 0x3FFFFF) != 0))
    elif round_mode == "up":
        up = frac != 0
    elif round_mode == "down":
        up = np.zeros(a.shape, bool)
    else:
        raise FormatError(f"E8M0: unknown round_mode {round_mode!r}; known: {', '.join(E8M0_ROUND_MODES)}")
    return e + up


def encode(x, fmt, saturate: bool = False, round_mode: str = "nearest", float64: str = "direct") -> np.ndarray:
    """Float array -> uint8 codes of `fmt`, same shape.

    saturate=False (ml_dtypes' cast): round to nearest even; overflow and ±Inf go to Inf (E5M2,
    E4M3, E3M4),
    NaN (E4M3FN with sign; the FNUZ formats' single NaN; E8M0's 0xFF) or the largest value
    (E2M3, E3M2, E2M1, which have neither). saturate=True (ONNX Cast, saturate=1): finite
    overflow and ±Inf become ±(largest finite value); NaN stays NaN. For E8M0, saturate=True
    also sends 0 and values below 2^-127 to 2^-127 (ONNX's E8M0 table); negative values stay NaN.

    round_mode: "nearest" for every format; E8M0 also "nearest_bits", "up", "down" (see
    _round_e8m0 and spec/minifloat/e8m0.md).

    float64: how a float64 x is rounded. "direct": once, from float64, to the nearest value
    (ml_dtypes 0.7.0). "via_float32": to float32 first, then to the format — two roundings
    (ml_dtypes 0.6.0, and ONNX's reference, which casts through ml_dtypes). E8M0's modes other
    than "nearest" always go through float32, as ONNX's to_float8e8m0 does.
    """
    f = get_minifloat(fmt)
    if round_mode != "nearest" and (f.specials != "e8m0" or round_mode not in E8M0_ROUND_MODES):
        raise FormatError(f"{f.name}: unknown round_mode {round_mode!r}; "
                          + (f"known: {', '.join(E8M0_ROUND_MODES)}" if f.specials == "e8m0"
                             else "only E8M0 has modes other than 'nearest' (ties to even)"))
    if f.specials == "e8m0" and round_mode != "nearest":
        float64 = "via_float32"
    x = _as_float(x, f, float64)
    shape = x.shape
    x = x.reshape(-1)            # a scalar too: the special cases below are written by index
    neg = np.signbit(x)
    nan = np.isnan(x)
    inf = np.isinf(x)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.abs(np.where(nan | inf, x.dtype.type(0), x))

    if f.specials == "e8m0":
        code = _round_e8m0(a, round_mode)
        zero = (a == 0) & ~inf                                # +0, -0, and NaN (a was set to 0)
        over = (code > f.max_code) | inf
        if saturate:
            code[over] = f.max_code
            code[zero] = 0                                    # ONNX: 0 -> E8M0_MIN
            code[nan | neg] = 0xFF                            # NaN, negatives and -0 stay NaN
        else:
            code[over | zero | nan | neg] = 0xFF
        return code.astype(np.uint8).reshape(shape)

    mag = _round_magnitude(a, f)
    over = (mag > f.max_code) | inf
    sign = neg.astype(np.int32) * np.int32(f.sign_bit)
    if f.specials == "fnuz":                 # no negative zero: a value that rounds to zero is +0
        sign[(mag == 0) & ~inf] = 0
    code = mag | sign
    # the rare special cases, written over the few elements they concern
    if over.any():
        code[over] = (f.max_code | sign[over]) if saturate else f.overflow_code(neg[over])
    if nan.any():
        code[nan] = f.nan_code(neg[nan])
    return code.astype(np.uint8).reshape(shape)


def encode_decode(x, fmt, saturate: bool = False, round_mode: str = "nearest", float64: str = "direct") -> np.ndarray:
    """The float32 value x rounds to (encode, then decode)."""
    return decode(encode(x, fmt, saturate, round_mode, float64), fmt)


__all__ = ["MiniFloat", "FORMATS", "E8M0_ROUND_MODES", "FLOAT64_RULES", "get_minifloat", "encode", "decode", "decode_table", "encode_decode"]


# ---------------------------------------------------------------------------------------------
# registry: element formats as byte rows (ml_dtypes' cast semantics, saturate=False)
#   8-bit and 6-bit formats: one code a byte (as ml_dtypes and torchao hold them)
#   E2M1: two codes a byte, element 2i in the low nibble (torchao's pack_uint4 order)
# ---------------------------------------------------------------------------------------------

def _records() -> list:
    from .format import Format

    def rows(f: MiniFloat):
        if f.nbits == 4:
            def quantize_rows(x, imatrix=None):
                c = encode(x, f)
                return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)

            def dequantize_rows(data):
                c = np.stack([data & 0x0F, data >> 4], axis=-1).reshape(*data.shape[:-1], -1)
                return decode(np.ascontiguousarray(c), f)
        else:
            def quantize_rows(x, imatrix=None):
                return encode(x, f)

            def dequantize_rows(data):
                if f.nbits < 8:   # a row format takes any byte: bits above the code are ignored
                    data = data & np.uint8((1 << f.nbits) - 1)
                return decode(np.ascontiguousarray(data), f)
        quantize_rows.__name__ = f"quantize_{f.name.lower()}"
        dequantize_rows.__name__ = f"dequantize_{f.name.lower()}"
        return quantize_rows, dequantize_rows

    return [Format(f.name, "minifloat", 2 if f.nbits == 4 else 1, 1, *rows(f), spec_page=f.spec_page)
            for f in FORMATS.values()]


RECORDS = _records()   # the registry's rows (FORMATS above are the element formats themselves)
