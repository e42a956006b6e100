"""The Numba twin of refquant/numerics.py: the same pinned rules, as scalar functions that the
kernels inline. Every function is compiled with fastmath off (numba's default), so LLVM neither
reassociates nor contracts `a*b + c` into an FMA; where the spec wants an FMA, `fmaf` asks for one.

Vectorising the loops over positions (read in inspect_asm / inspect_llvm output, numba 0.68
with LLVM 22): Numba runs LLVM's loop vectoriser but not its SLP vectoriser, so
* a loop with a constant trip count (`for j in range(32)`) is fully unrolled first and then
  stays scalar: a hot loop over a block's positions takes its length as an argument (`n32`,
  32 passed by the Python wrapper at run time), which the vectoriser handles with a runtime
  alias check between input and output;
* an array index of a signed type gets Numba's negative-index wraparound (`i < 0 ? i + n : i`),
  which turns a vectorised load into sixteen scalar loads: such a loop indexes with unsigned
  integers (U64 offsets, `range(U64(n32))`), for which Numba emits no wraparound;
* Numba computes integer arithmetic in int64, and a shift by a variable amount keeps the
  vector lanes 64 bits wide: shift uint8 values by constants and truncate to int32 before the
  float conversion, and LLVM narrows the lanes to 32 bits.

float32 discipline: a Python float or int mixed into float32 arithmetic would promote it to
float64 in Numba, so every constant here is a np.float32 and every int is converted explicitly.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from . import startup  # noqa: F401  (before the first kernel loads: see startup.py)
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from refquant.numerics import fp16_bits_to_fp32

F32 = np.float32
U64 = np.uint64  # unsigned array offsets: no wraparound code (see above)
JIT = dict(cache=True, fastmath=False, nogil=True)          # every kernel
INLINE = dict(cache=True, fastmath=False, inline="always")  # scalar helpers

# GGML_FP16_TO_FP32 for every code, from the spec (NaN payloads quieted as ggml does).
FP16_TABLE = fp16_bits_to_fp32(np.arange(65536, dtype=np.uint32).astype(np.uint16))

ZERO = F32(0.0)
ONE = F32(1.0)
HALF = F32(0.5)
MAGIC = F32(12582912.0)       # 1.5 * 2^23, nearest_int's shifter
INT_MIN_F = F32(-2147483904.0)  # the first float below INT32_MIN that truncates outside the range
INT_LIM_F = F32(2147483648.0)


@intrinsic
def f32_bits(typingctx, x):
    """The bits of a float32 as int32 (a bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, x):
    """int32 bits -> float32 (a bitcast)."""
    if x != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def fmaf(typingctx, a, b, c):
    """C's fmaf: a*b + c rounded once (llvm.fma.f32)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        f = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f, f]), "llvm.fma.f32")
        return builder.call(fn, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(**INLINE)
def nearest_int(f):
    """ggml's nearest_int: bits(f + 12582912.f) & 0x7fffff - 0x400000."""
    return (f32_bits(F32(f) + MAGIC) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


@njit(**INLINE)
def c_float_to_int32(x):
    """cvttss2si: truncation; NaN and out-of-range give INT_MIN."""
    if x > INT_MIN_F and x < INT_LIM_F:
        return np.int32(np.int64(x))
    return np.int32(-2147483648)


@njit(**INLINE)
def c_float_to_int8(x):
    """(int8_t) f: to int32, keep the low byte."""
    v = np.int32(c_float_to_int32(x) & 0xFF)
    return np.int8(v - 256 if v > 127 else v)


@njit(**INLINE)
def c_float_to_uint8(x):
    return np.uint8(c_float_to_int32(x) & 0xFF)


@njit(**INLINE)
def roundf(x):
    """C's roundf (half away from zero), float32."""
    t = np.float32(np.trunc(x))
    frac = x - t
    if abs(frac) >= HALF:
        return t + (ONE if x > ZERO else -ONE)
    return t


@njit(**INLINE)
def reciprocal_or_zero(d):
    """`d ? 1.0f/d : 0.0f`."""
    return ONE / d if d != ZERO else ZERO


@njit(**INLINE)
def fp32_to_fp16_bits(x):
    """Round to nearest even; subnormal halves kept; |x| >= 65520 -> inf; NaN -> 0x7E00|sign."""
    u = f32_bits(F32(x))
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a > 0x7F800000:
        return np.uint16(sign | 0x7E00)
    if a >= 0x477FF000:              # 65520: rounds up to inf
        return np.uint16(sign | 0x7C00)
    if a >= 0x38800000:              # a normal half: rebias the exponent, round 13 bits off
        h = a - 0x38000000
        h = (h + 0x0FFF + ((h >> 13) & 1)) >> 13
        return np.uint16(sign | h)
    if a <= 0x33000000:              # at most 2^-25: rounds to zero (2^-25 is a tie to even 0)
        return np.uint16(sign)
    e = a >> 23                      # a subnormal half: value = m * 2^(e-150), unit 2^-24
    m = (a & 0x007FFFFF) | 0x00800000
    sh = 126 - e
    h = (m + (1 << (sh - 1)) - 1 + ((m >> sh) & 1)) >> sh
    return np.uint16(sign | h)


@njit(**INLINE)
def fp32_to_bf16_bits(x):
    u = np.uint32(f32_bits(F32(x)))
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(64))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


@njit(**INLINE)
def fp16_to_fp32(lo, hi):
    """A little-endian fp16 field from two bytes -> float32 (table lookup)."""
    return FP16_TABLE[np.int64(lo) | (np.int64(hi) << 8)]


@njit(**INLINE)
def store_fp16(out, at, x):
    h = fp32_to_fp16_bits(x)
    out[at] = np.uint8(h & 0xFF)
    out[at + 1] = np.uint8(h >> 8)


@njit(**INLINE)
def order_key_inverse(k):
    return np.int32(k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@njit(**INLINE)
def order_key(v):
    """float32 -> int32 ordered as the floats are (-0 just below +0): the bits, with the
    magnitude bits flipped for negative values. Its own inverse on the bits."""
    return order_key_inverse(f32_bits(v))


MAG = np.int32(0x7FFFFFFF)        # a float32's magnitude bits; from INF_BITS up: NaN or an infinity
INF_BITS = np.int32(0x7F800000)
# order keys of +inf and -inf: a block's values are all finite exactly when its key range lies
# strictly between them (a NaN's key lies beyond the infinity of its sign)
KEY_INF = INF_BITS
KEY_NEG_INF = np.int32(0x807FFFFF - (1 << 32))


@njit(**INLINE)
def keys_nonfinite(kmin, kmax):
    """Whether a block whose order keys span [kmin, kmax] (key_range) holds a NaN or an infinity."""
    return kmax >= KEY_INF or kmin <= KEY_NEG_INF


@njit(**INLINE)
def key_range(x, r, x0, n):
    """(min, max) of order_key over x[r, x0:x0 + n]: a block's smallest and largest values as
    integers, in one loop the compiler vectorises (no float compare, no NaN rule to keep)."""
    kmin = np.int32(0x7FFFFFFF)
    kmax = np.int32(-0x80000000)
    for j in range(U64(n)):
        k = order_key(x[r, x0 + j])
        kmin = min(kmin, k)
        kmax = max(kmax, k)
    return kmin, kmax
