"""Numba twin of refquant/minifloat.py: encode/decode of the element formats (every row of its
FORMATS table: E4M3FN ... E8M0), bit-exact with it, and their registered row formats.

One encode kernel serves every format: the format's constants (field widths, bias, largest
magnitude code, the codes it writes for NaN and for overflow) are arguments. Rounding is the
spec's: the significand scaled to M bits by an exact power-of-two multiply, then rint (ties to
even); E8M0 rounds on the float32 bit pattern. Decoding is a lookup in the spec's decode table."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant.minifloat import E8M0_ROUND_MODES, FORMATS, _as_float32, decode_table, get_minifloat

from .numerics import F32, JIT, bits_f32, f32_bits

PJIT = dict(JIT, parallel=True)
_KIND = {"ieee": 0, "fn": 1, "fnuz": 2, "none": 3, "e8m0": 4}


def _params(f, saturate, round_mode="nearest"):
    """(kind, mbits, bias, emin, max_code, sign_bit, nan+, nan-, over+, over-, saturate,
    E8M0 round mode: its index in E8M0_ROUND_MODES) as int64."""
    t, fl = np.array([True]), np.array([False])
    return np.array([_KIND[f.specials], f.mbits, f.bias, f.emin, f.max_code, f.sign_bit,
                     int(f.nan_code(fl)[0]), int(f.nan_code(t)[0]),
                     int(f.overflow_code(fl)[0]), int(f.overflow_code(t)[0]), int(saturate),
                     E8M0_ROUND_MODES.index(round_mode)], np.int64)


@njit(**dict(JIT, inline="always"))
def encode_one(x, p):
    kind, mbits, bias, emin, max_code, sign_bit = p[0], p[1], p[2], p[3], p[4], p[5]
    saturate = p[10] != 0
    u = f32_bits(x)
    neg = u < 0
    nan = x != x
    inf = (not nan) and abs(x) == np.inf
    a = F32(0) if (nan or inf) else abs(x)
    ua = f32_bits(a)
    efield = (ua >> 23) & 0xFF
    if kind == 4:   # E8M0, by round mode (refquant.minifloat._round_e8m0)
        code = efield
        frac = ua & 0x7FFFFF
        mode = p[11]
        if mode == 0:                                # nearest: subnormals tie at 0x00600000
            if (efield > 0 and (frac & 0x400000) != 0) or (efield == 0 and frac >= 0x600000):
                code += 1
        elif mode == 1:                              # nearest_bits (ml_dtypes 0.6, ONNX)
            if (frac & 0x400000) != 0 and (efield > 0 or (frac & 0x3FFFFF) != 0):
                code += 1
        elif mode == 2:                              # up
            if frac != 0:
                code += 1
        zero = a == F32(0) and not inf
        over = code > max_code or inf
        if saturate:
            if over:
                code = max_code
            if zero:
                code = 0
            if nan or neg:
                code = 0xFF
        elif over or zero or nan or neg:
            code = 0xFF
        return np.uint8(code)
    e = max(efield - 127, emin)
    k = mbits - e                                # |x| * 2^k: exact (a power of two, normal)
    n = np.int64(np.rint(a * bits_f32(np.int32((k + 127) << 23))))
    mag = ((e + bias) << mbits) + n - (1 << mbits)
    over = mag > max_code or inf
    sign = sign_bit if neg else 0
    if kind == 2 and mag == 0 and not inf:       # fnuz: no negative zero
        sign = 0
    code = mag | sign
    if over:
        if saturate:
            code = max_code | sign
        else:
            code = p[9] if neg else p[8]
    if nan:
        code = p[7] if neg else p[6]
    return np.uint8(code & 0xFF)


@njit(**PJIT)
def _encode(x, p, out):
    for i in prange(x.shape[0]):
        out[i] = encode_one(x[i], p)


@njit(**PJIT)
def _encode_pack4(x, p, out):
    """Two 4-bit codes a byte, element 2i in the low nibble."""
    for i in prange(out.shape[0]):
        out[i] = np.uint8(encode_one(x[2 * i], p) | (encode_one(x[2 * i + 1], p) << 4))


@njit(**PJIT)
def _decode(codes, mask, table, out):
    for i in prange(codes.shape[0]):
        out[i] = table[codes[i] & mask]


@njit(**PJIT)
def _decode_unpack4(data, table, out):
    for i in prange(data.shape[0]):
        out[2 * i] = table[data[i] & 0x0F]
        out[2 * i + 1] = table[data[i] >> 4]


def encode(x, fmt, saturate: bool = False, round_mode: str = "nearest", float64: str = "direct") -> np.ndarray:
    """refquant.minifloat.encode: float array -> uint8 codes of `fmt`, same shape. float64 input
    rounded once from float64 (float64="direct") is the spec's own (these kernels take float32),
    and so are the spec's errors."""
    from refquant.minifloat import FLOAT64_RULES
    from refquant.minifloat import encode as spec_encode
    f = get_minifloat(fmt)
    direct64 = float64 == "direct" and (f.specials != "e8m0" or round_mode == "nearest") and \
        (not isinstance(x, np.ndarray) or x.dtype == np.float64)
    if direct64 or float64 not in FLOAT64_RULES or \
            (round_mode != "nearest" and (f.specials != "e8m0" or round_mode not in E8M0_ROUND_MODES)):
        return spec_encode(x, f, saturate, round_mode, float64)
    x = _as_float32(x, f)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, np.uint8)
    _encode(flat, _params(f, saturate, round_mode), out)
    return out.reshape(x.shape)


def decode(codes, fmt) -> np.ndarray:
    """refquant.minifloat.decode, for codes the spec accepts (the spec checks them)."""
    from refquant.minifloat import decode as spec_decode
    f = get_minifloat(fmt)
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or \
            (f.nbits < 8 and codes.size and int(codes.max()) >= (1 << f.nbits)):
        return spec_decode(codes, f)                 # the spec's clear error
    flat = np.ascontiguousarray(codes).reshape(-1)
    out = np.empty(flat.shape, np.float32)
    _decode(flat, np.uint8(0xFF), decode_table(f), out)
    return out.reshape(codes.shape)


def _rows(f):
    p = _params(f, False)
    table = np.ascontiguousarray(decode_table(f))
    if f.nbits == 4:
        def quantize_rows(x, imatrix=None):
            x = np.ascontiguousarray(x, dtype=np.float32)
            out = np.empty((x.shape[0], x.shape[1] // 2), np.uint8)
            _encode_pack4(x.reshape(-1), p, out.reshape(-1))
            return out

        def dequantize_rows(data):
            data = np.ascontiguousarray(data)
            out = np.empty((data.shape[0], data.shape[1] * 2), np.float32)
            _decode_unpack4(data.reshape(-1), table, out.reshape(-1))
            return out
    else:
        mask = np.uint8((1 << f.nbits) - 1)

        def quantize_rows(x, imatrix=None):
            x = np.ascontiguousarray(x, dtype=np.float32)
            out = np.empty(x.shape, np.uint8)
            _encode(x.reshape(-1), p, out.reshape(-1))
            return out

        def dequantize_rows(data):   # a row format takes any byte: bits above the code are ignored
            data = np.ascontiguousarray(data)
            out = np.empty(data.shape, np.float32)
            _decode(data.reshape(-1), mask, table, out.reshape(-1))
            return out
    quantize_rows.__name__ = f"quantize_{f.name.lower()}"
    dequantize_rows.__name__ = f"dequantize_{f.name.lower()}"
    return quantize_rows, dequantize_rows


_ROWS = {name: _rows(f) for name, f in FORMATS.items()}
# What the tables below hold, read from this line by the backend without importing the module
# (refquant.backend.TableBackend): every format of the spec's table, named as "module:table".
DECLARES = {"quantize": "refquant.minifloat:FORMATS", "dequantize": "refquant.minifloat:FORMATS"}
QUANTIZE = {name: q for name, (q, _) in _ROWS.items()}
DEQUANTIZE = {name: dq for name, (_, dq) in _ROWS.items()}
