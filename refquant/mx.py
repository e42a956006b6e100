"""OCP Microscaling (MX) block formats, and NVIDIA's NVFP4.

MX (OCP Microscaling Formats v1.0): blocks of 32 elements share one E8M0 scale X = 2^(e - 127);
element i holds P_i and stands for X * P_i.

    format       element          emax_elem  stored (as torchao's MXTensor holds it)
    MXFP8_E4M3   E4M3FN           8          scales uint8 (..., n/32), codes uint8 (..., n)
    MXFP8_E5M2   E5M2             15         scales, codes uint8 (..., n)
    MXFP6_E2M3   E2M3             2          scales, codes uint8 (..., n): one 6-bit code a byte
    MXFP6_E3M2   E3M2             4          scales, codes uint8 (..., n): one 6-bit code a byte
    MXFP4_E2M1   E2M1             2          scales, codes packed (..., n/2): element 2i in the
                                             low nibble of byte i, element 2i+1 in the high one
    MXINT8       int8 / 64        0          scales, codes: int8 two's complement bytes (..., n)

The shared scale is chosen by a *scale rule*; each is named after the implementation it matches:

    "ocp"    OCP v1.0 section 6.3: e = floor(log2(amax)) - emax_elem, clamped to [-127, 127];
             P_i = V_i / 2^e rounded to nearest even, saturating at the element's largest value.
    "floor"  torchao ScaleCalculationMode.FLOOR: as "ocp", with floor(log2(amax)) read from the
             float32 exponent field (a subnormal amax gives -127), and the elements divided by
             max(X, 2^-126): a block whose scale is 2^-127 is divided by 2^-126.
    "ceil"   torchao CEIL: the exponent field, plus one when amax's mantissa is non-zero.
    "even"   torchao EVEN: amax rounded to the element's mantissa width (round half up on the
             float32 bits) before the exponent is read.
    "rceil"  torchao RCEIL (NVIDIA's cuBLAS/TransformerEngine rule, eager fallback):
             e = ceil(log2(float32(amax / max_elem))) with log2 rounded to float32, clamped
             to [-127, 127]; elements are x * 2^(127 - code) (x * 1.0 when code is 0), clamped.
    "compressed-tensors"  compressed-tensors 0.20 (generate_mx_scales, llm-compressor's MX
             presets): amax rounded to a power of two as "even" does, but with E2M1's one
             mantissa bit for MXFP4 and MXFP8 alike (E2M3's three for MXFP6); code =
             clamp(127 + floor(log2) - emax_elem, 0, 255); elements x / 2^(code - 127) exactly
             (no 2^-126 floor), clamped, rounded to nearest even; an FP4 or FP8 element of -0.0
             is +0 (FP4: torch.sign(-0.0) is 0; FP8: the zero point added first), an FP6 one
             keeps its sign, and a negative element that rounds to zero keeps its sign. A
             block whose amax that rounding carries to 2^128 (float32 Inf) is refused:
             compressed-tensors' scale is then Inf converted to integers, which C leaves
             undefined.

NVFP4 (NVIDIA): blocks of 16 E2M1 elements, each block with an E4M3 scale, and one float32
global scale for the whole tensor, computed as compressed-tensors does (see quantize_nvfp4).

All quantizers take float32 arrays (..., n), n a multiple of the block size, finite values only;
they work on every block at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import minifloat as mf
from .api import check_floats
from .errors import FormatError, InputError
from .format import Format

F32 = np.float32
MX_BLOCK = 32
NVFP4_BLOCK = 16
E8M0_NAN = 0xFF
FLT_MIN_NORMAL = F32(2.0 ** -126)

SCALE_RULES = ("ocp", "floor", "ceil", "even", "rceil", "compressed-tensors")
DEFAULT_SCALE_RULE = "ocp"


@dataclass(frozen=True)
class MXFormat:
    name: str
    element: Optional[str]   # minifloat name; None for MXINT8
    emax_elem: int           # exponent of the element format's largest power of two
    max_elem: float          # the element format's largest finite magnitude
    mbits: int               # mantissa bits of the element (the "even" rule rounds amax to these)
    packed: bool             # two codes a byte (FP4)
    spec_page: str

    @property
    def bytes_per_block(self) -> int:
        return 1 + (MX_BLOCK // 2 if self.packed else MX_BLOCK)


MX_FORMATS: dict[str, MXFormat] = {f.name: f for f in [
    MXFormat("MXFP8_E4M3", "E4M3FN", 8, 448.0, 3, False, "mx/mxfp8_e4m3.md"),
    MXFormat("MXFP8_E5M2", "E5M2", 15, 57344.0, 2, False, "mx/mxfp8_e5m2.md"),
    MXFormat("MXFP6_E2M3", "E2M3", 2, 7.5, 3, False, "mx/mxfp6_e2m3.md"),
    MXFormat("MXFP6_E3M2", "E3M2", 4, 28.0, 2, False, "mx/mxfp6_e3m2.md"),
    MXFormat("MXFP4_E2M1", "E2M1", 2, 6.0, 1, True, "mx/mxfp4_e2m1.md"),
    MXFormat("MXINT8", None, 0, 127.0 / 64.0, 6, False, "mx/mxint8.md"),
]}
_MX_ALIASES = {"MXFP8": "MXFP8_E4M3", "MXFP6": "MXFP6_E2M3", "MXFP4": "MXFP4_E2M1"}


def get_mx_format(fmt) -> MXFormat:
    if isinstance(fmt, MXFormat):
        return fmt
    if not isinstance(fmt, str):
        raise FormatError(f"an MX format must be a name such as 'MXFP8_E4M3', got {type(fmt).__name__}")
    key = _MX_ALIASES.get(fmt.upper(), fmt.upper())
    if key not in MX_FORMATS:
        raise FormatError(f"unknown MX format {fmt!r}; known: {', '.join(MX_FORMATS)} "
                          f"(MXFP8, MXFP6, MXFP4 name the E4M3, E2M3, E2M1 variants)")
    return MX_FORMATS[key]


# ---------------------------------------------------------------------------------------------
# input checks (floats: refquant.api.check_floats)
# ---------------------------------------------------------------------------------------------

_NAN_SCALE = "a block scale of NaN or Inf is not a quantization, so refquant refuses it"


def _check_u8(a, name: str, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise InputError(f"{name}: {what} must be a numpy.ndarray of uint8, got {type(a).__name__}")
    if a.dtype != np.uint8:
        raise InputError(f"{name}: {what} must have dtype uint8, got {a.dtype}")
    if a.ndim == 0:
        raise InputError(f"{name}: {what} must have at least one dimension, got a scalar")
    return a


# ---------------------------------------------------------------------------------------------
# nibble packing (torchao pack_uint4 / compressed-tensors pack_fp4_to_uint8)
# ---------------------------------------------------------------------------------------------

def pack_fp4(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (..., n) -> bytes (..., n/2): byte i = codes[2i] | codes[2i+1] << 4."""
    c = np.asarray(codes, dtype=np.uint8)
    return (c[..., 0::2] & 0x0F) | ((c[..., 1::2] & 0x0F) << 4)


def unpack_fp4(packed: np.ndarray) -> np.ndarray:
    """bytes (..., m) -> 4-bit codes (..., 2m), low nibble first."""
    p = np.asarray(packed, dtype=np.uint8)
    return np.stack([p & 0x0F, p >> 4], axis=-1).reshape(*p.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# the shared scale
# ---------------------------------------------------------------------------------------------

def _float32_exponent(a: np.ndarray) -> np.ndarray:
    """The unbiased exponent field of float32 a (int64): floor(log2 a) for normal a, -127 for
    zero and subnormals."""
    return (a.view(np.uint32) >> 23).astype(np.int64) - 127


def shared_exponent(amax: np.ndarray, fmt, rule: str = DEFAULT_SCALE_RULE) -> np.ndarray:
    """Block amax (float32, >= 0, finite) -> E8M0 scale code (uint8) by `rule`."""
    f = get_mx_format(fmt)
    a = np.asarray(amax, dtype=F32)
    if rule == "ocp":
        # floor(log2(amax)) exactly, subnormals included (frexp is exact in float64); amax = 0
        # has no exponent, and takes the smallest scale.
        _, ex = np.frexp(a.astype(np.float64))
        e = np.where(a == 0, -127, ex.astype(np.int64) - 1 - f.emax_elem)
        return (np.clip(e, -127, 127) + 127).astype(np.uint8)
    if rule == "compressed-tensors":
        # round_to_power_2(amax, mantissa): amax's bits + 2^(22 - m), masked to sign and exponent,
        # m = E2M3's 3 for FP6, E2M1's 1 otherwise (FP8 too); then 127 + floor(log2) - offset,
        # cast to uint8 after a clamp to [0, 255] (log2(0) = -inf clamps to 0)
        m = 3 if f.element == "E2M3" else 1
        u = a.view(np.uint32).astype(np.int64) + (1 << (23 - m - 1))
        r = (u & 0xFF800000).astype(np.uint32).view(F32)
        _, ex = np.frexp(r.astype(np.float64))          # floor(log2 r) exactly, subnormals too
        e = np.where(r == 0, -(1 << 20), ex.astype(np.int64) - 1)
        return np.clip(e + 127 - f.emax_elem, 0, 255).astype(np.uint8)
    if rule in ("floor", "ceil", "even"):
        if rule == "even":
            # amax's bits + 2^(22 - mbits), masked to sign and exponent: round amax to the
            # element's mantissa width, half up, before reading the exponent.
            u = a.view(np.uint32).astype(np.int64) + (1 << (23 - f.mbits - 1))
            a = (u & 0xFF800000).astype(np.uint32).view(F32)
        e = _float32_exponent(a)
        if rule == "ceil":
            e = e + ((a.view(np.uint32) & 0x7FFFFF) > 0)
        e = np.clip(e - f.emax_elem, -127, 128)        # torchao's upper clamp 128 is never reached
        return (e + 127).astype(np.uint8)
    if rule == "rceil":
        with np.errstate(divide="ignore"):
            descale = (a / F32(f.max_elem)).astype(F32)
            # ceil of log2 rounded to float32 (torch's float32 log2 on CPU is correctly rounded
            # here): a descale just above 2^k whose log2 rounds to k gives k, not k + 1.
            lg = np.log2(descale.astype(np.float64)).astype(F32)
        e = np.clip(np.ceil(lg), -127, 127)             # log2(0) = -inf clamps to -127
        return (e.astype(np.int64) + 127).astype(np.uint8)
    raise FormatError(f"unknown MX scale rule {rule!r}; known: {', '.join(SCALE_RULES)}")


def e8m0_to_float32(codes: np.ndarray) -> np.ndarray:
    """E8M0 code -> 2^(code - 127) as float32 (2^-127 is a float32 subnormal); 0xFF -> NaN."""
    return mf.decode(np.asarray(codes, dtype=np.uint8), "E8M0")


def _scaled_elements(xb: np.ndarray, codes: np.ndarray, f: MXFormat, rule: str) -> np.ndarray:
    """x / X for every element, in float32, as each rule's implementation forms it."""
    if rule == "rceil":
        # torchao: rcp = 2^(127 - code) as float32, but 1.0 for code 0; data = x * rcp
        rcp = np.where(codes == 0, F32(1.0), np.ldexp(F32(1.0), 127 - codes.astype(np.int32)).astype(F32))
        return (xb * rcp[..., None]).astype(F32)
    x_scale = e8m0_to_float32(codes)
    if rule in ("floor", "ceil", "even"):
        x_scale = np.maximum(x_scale, FLT_MIN_NORMAL)   # torchao: clamp(scale, min=2^-126)
        return (xb / x_scale[..., None]).astype(F32)
    # "ocp": V_i / X exactly; the quotient of a float32 by a power of two that stays above the
    # elements' smallest subnormal is exact in float32, and anything below it rounds to zero.
    return np.ldexp(xb.astype(np.float64), (127 - codes.astype(np.int32))[..., None]).astype(F32)


def _round_int8(v: np.ndarray) -> np.ndarray:
    """MXINT8 element: v * 64 rounded to nearest even, clamped to [-127, 127]."""
    q = np.clip(np.rint(v.astype(np.float64) * 64.0), -127, 127)
    return q.astype(np.int8).view(np.uint8)


def quantize_mx(x: np.ndarray, fmt, rule: str = DEFAULT_SCALE_RULE) -> tuple[np.ndarray, np.ndarray]:
    """float32 (..., n) -> (scales uint8 (..., n/32), data uint8) for MX format `fmt`.

    data is (..., n) one code a byte, or (..., n/2) packed for MXFP4_E2M1 (see the module
    docstring). Elements are rounded to nearest even and saturate at the element's largest
    finite value under every rule."""
    f = get_mx_format(fmt)
    if rule not in SCALE_RULES:
        raise FormatError(f"unknown MX scale rule {rule!r}; known: {', '.join(SCALE_RULES)}")
    if f.element is None and rule != "ocp":
        raise FormatError(f"{f.name}: only the 'ocp' scale rule is defined (the other rules are torchao's, "
                          f"and torchao has no MXINT8)")
    x = np.ascontiguousarray(check_floats(x, f.name, block=MX_BLOCK, why=_NAN_SCALE))
    xb = x.reshape(*x.shape[:-1], -1, MX_BLOCK)
    amax = np.max(np.abs(xb), axis=-1)                  # max is order-free
    if rule == "compressed-tensors":
        # round_to_power_2 carries an amax within half an element ulp of 2^128 into the
        # exponent field's all-ones: Inf. compressed-tensors then turns Inf into integers
        # (log2 -> int32, the E8M0 byte), conversions C leaves undefined.
        m = 3 if f.element == "E2M3" else 1
        over = amax.view(np.uint32).astype(np.int64) + (1 << (23 - m - 1)) >= 0x7F800000
        if over.any():
            idx = tuple(int(i) for i in np.argwhere(over)[0])
            raise InputError(f"{f.name}: the block at {idx} has amax {amax[idx]!r}, which compressed-tensors' "
                             f"round_to_power_2 rounds to Inf; its scale is then an integer conversion of Inf, "
                             f"which C leaves undefined, so refquant refuses it")
    codes = shared_exponent(amax, f, rule)
    with np.errstate(over="ignore", under="ignore"):
        v = _scaled_elements(xb, codes, f, rule)
    if f.element is None:
        elems = _round_int8(v)
    else:
        v = np.clip(v, F32(-f.max_elem), F32(f.max_elem))   # torchao's clamp; saturating encode
        elems = mf.encode(v, f.element, saturate=True)
        if rule == "compressed-tensors" and f.element in ("E2M1", "E4M3FN"):
            # FP4: cast_to_fp4 rounds |v| and multiplies by torch.sign(v), 0 for -0.0; FP8: the
            # compressor adds the (zero) zero point before the cast, -0.0 + 0 = +0. Either way
            # a v of -0.0 comes out +0; E2M3 (copysign, no zero point) keeps -0.
            elems = np.where(v == 0, np.uint8(0), elems).astype(np.uint8)
    elems = elems.reshape(x.shape)
    if f.packed:
        elems = pack_fp4(elems)
    return codes, elems


def dequantize_mx(scales: np.ndarray, data: np.ndarray, fmt) -> np.ndarray:
    """(scales, data) -> float32 (..., n): element value * 2^(scale - 127), one float32 multiply
    (torchao's to_dtype); a block with scale 0xFF decodes to NaN."""
    f = get_mx_format(fmt)
    scales = _check_u8(scales, f.name, "scales")
    data = _check_u8(data, f.name, "data")
    n = data.shape[-1] * (2 if f.packed else 1)
    if scales.shape != data.shape[:-1] + (n // MX_BLOCK,) or n % MX_BLOCK:
        raise InputError(f"{f.name}: scales have shape {scales.shape} but data of shape {data.shape} holds "
                         f"{n} elements per row, which needs scales of shape {data.shape[:-1] + (n // MX_BLOCK,)} "
                         f"and a multiple of {MX_BLOCK} elements")
    codes = unpack_fp4(data) if f.packed else data
    if f.element is None:
        vals = codes.view(np.int8).astype(F32) * F32(1.0 / 64.0)
    else:
        vals = mf.decode(codes, f.element)
    s = e8m0_to_float32(scales)
    vb = vals.reshape(*vals.shape[:-1], -1, MX_BLOCK)
    with np.errstate(over="ignore", invalid="ignore"):
        return (vb * s[..., None]).astype(F32).reshape(vals.shape)


# ---------------------------------------------------------------------------------------------
# NVFP4
# ---------------------------------------------------------------------------------------------

FP8_E4M3_MAX = F32(448.0)
FP4_MAX = F32(6.0)


def nvfp4_global_scale(x: np.ndarray) -> np.float32:
    """compressed-tensors' generate_gparam over the whole tensor: 448 * 6 / amax in float32 (as
    (1 / amax) * 2688, the way torch divides a number by a tensor), with
    amax = max(|min(x, 0)|, max(x, 0)) clamped below at 2^-126; Inf (or NaN) becomes 1.0."""
    amax = max(abs(min(F32(x.min()), F32(0))), max(F32(x.max()), F32(0)))
    amax = max(F32(amax), FLT_MIN_NORMAL)
    with np.errstate(over="ignore", divide="ignore"):
        # `2688.0 / tensor` is torch's __rtruediv__: tensor.reciprocal() * 2688.0, two float32
        # roundings (448.0 * 6.0 = 2688.0 is exact)
        gs = (F32(1.0) / F32(amax)) * F32(2688.0)
    return F32(1.0) if not np.isfinite(gs) else F32(gs)


def quantize_nvfp4(x: np.ndarray, global_scale=None) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """float32 (rows, n), n a multiple of 16 -> (packed uint8 (rows, n/2), block scales as E4M3
    codes uint8 (rows, n/16), global scale float32), as compressed-tensors' NVFP4 does:

      1. gs = nvfp4_global_scale(x) unless given (a finite positive float32).
      2. per block: s = E4M3(clamp(gs * (amax / 6), +-448)) rounded to nearest even; a scale
         that rounds to 0 is replaced by 0.125.
      3. per element: y = x / (s / gs) in float32 (two roundings, as written), clamped to +-6,
         rounded to the nearest E2M1 value, ties to even; a negative y that rounds to zero
         keeps its sign (code 0x8), but a y that is -0.0 itself gives +0 (code 0).
      4. pack two codes a byte, element 2i in the low nibble.
    """
    x = np.ascontiguousarray(check_floats(x, "NVFP4", block=NVFP4_BLOCK, why=_NAN_SCALE))
    if x.ndim != 2:
        raise InputError(f"NVFP4: x must be a matrix (rows, n) as compressed-tensors quantizes weights, "
                         f"got shape {x.shape}")
    if global_scale is None:
        gs = nvfp4_global_scale(x)
    else:
        gs = np.asarray(global_scale)
        if gs.size != 1 or not np.issubdtype(gs.dtype, np.floating) or not np.isfinite(gs).all() or gs.ravel()[0] <= 0:
            raise InputError(f"NVFP4: global_scale must be one finite positive float, got {global_scale!r}")
        gs = F32(gs.ravel()[0])
    xb = x.reshape(x.shape[0], -1, NVFP4_BLOCK)
    amax = np.max(np.abs(xb), axis=-1)
    with np.errstate(over="ignore"):
        s = (gs * (amax / FP4_MAX)).astype(F32)
    s_codes = mf.encode(np.clip(s, -FP8_E4M3_MAX, FP8_E4M3_MAX), "E4M3FN")
    s_codes = np.where(s_codes == 0, np.uint8(0x20), s_codes).astype(np.uint8)    # 0 -> 0.125 (0x20)
    s_val = mf.decode(s_codes, "E4M3FN")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        eff = (s_val / gs).astype(F32)
        y = (xb / eff[..., None]).astype(F32)
    y = np.clip(y, -FP4_MAX, FP4_MAX)
    codes = mf.encode(y, "E2M1", saturate=True)
    # compressed-tensors rounds |y| and multiplies by torch.sign(y): a y of -0.0 has sign 0 and
    # comes out +0 (code 0), while a negative y that rounds to zero comes out -0 (code 0x8).
    codes = np.where(y == 0, np.uint8(0), codes).reshape(x.shape)
    return pack_fp4(codes), s_codes, gs


def quantize_nvfp4_modelopt(x: np.ndarray, global_amax=None) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """float32 (rows, n), n a multiple of 16 -> (packed uint8 (rows, n/2), block scales as E4M3
    codes uint8 (rows, n/16), weight_scale_2 float32), as NVIDIA ModelOpt 0.47's NVFP4QTensor
    (get_weights_scaling_factor_2, get_weights_scaling_factor, quantize) computes them:

      1. amax = global_amax if given (ModelOpt's calibrated, possibly shared with fused layers),
         else max |x|; weight_scale_2 = amax / 2688 in float32 (2688 = 6 · 448).
      2. per block: s = block_amax / (6 · weight_scale_2) in float32 (6 · weight_scale_2 rounded
         first); s == 0 becomes 1.0; clamped to [2^-9, 448]; E4M3, round to nearest even.
         (compressed-tensors instead computes gs · (amax / 6) with gs = 2688 / amax, and sends a
         scale that rounds to 0 to 0.125.)
      3. per element: y = x / (s · weight_scale_2), the product rounded to float32 first; E2M1,
         round to nearest even, saturating at ±6; the sign bit is (y < 0): a negative y that
         rounds to zero is code 0x8, a y of -0.0 code 0 (ModelOpt's _cast_fp4).
      4. pack two codes a byte, element 2i in the low nibble.

    An all-zero x (amax 0) has weight_scale_2 = 0, and ModelOpt's block scales become 0/0 = NaN;
    refquant refuses it with an InputError."""
    x = np.ascontiguousarray(check_floats(x, "NVFP4 (ModelOpt)", block=NVFP4_BLOCK, why=_NAN_SCALE))
    if x.ndim != 2:
        raise InputError(f"NVFP4 (ModelOpt): x must be a matrix (rows, n), got shape {x.shape}")
    amax = F32(np.max(np.abs(x))) if global_amax is None else np.asarray(global_amax)
    if amax.size != 1 or not np.isfinite(amax).all() or F32(amax.ravel()[0]) < F32(np.max(np.abs(x))):
        raise InputError(f"NVFP4 (ModelOpt): global_amax must be one finite float >= max |x|, got {global_amax!r}")
    amax = F32(np.asarray(amax).ravel()[0])
    if amax == 0:
        raise InputError("NVFP4 (ModelOpt): x is all zeros: weight_scale_2 = amax / 2688 = 0, and ModelOpt's "
                         "block scales become 0 / 0 = NaN")
    wsf2 = F32(amax / F32(2688.0))
    xb = x.reshape(x.shape[0], -1, NVFP4_BLOCK)
    bamax = np.max(np.abs(xb), axis=-1)
    s = (bamax / F32(FP4_MAX * wsf2)).astype(F32)
    s = np.where(s == 0, F32(1.0), s)
    s_codes = mf.encode(np.clip(s, F32(2.0 ** -9), FP8_E4M3_MAX), "E4M3FN")
    eff = (mf.decode(s_codes, "E4M3FN") * wsf2).astype(F32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        y = (xb / eff[..., None]).astype(F32)
    codes = mf.encode(np.clip(y, -FP4_MAX, FP4_MAX), "E2M1", saturate=True)
    codes = np.where(y == 0, np.uint8(0), codes).reshape(x.shape)    # -0.0 has no sign bit (y < 0)
    return pack_fp4(codes), s_codes.astype(np.uint8), wsf2


E4M3_EPS = F32(2.0 ** -6)     # torch.finfo(torch.float8_e4m3fn).tiny: the smallest normal, code 0x08


def nvfp4_per_tensor_scale_torchao(amax) -> np.float32:
    """torchao's per_tensor_amax_to_scale: amax / (448 * 6) in float32 (one division by 2688)."""
    return F32(F32(amax) / F32(2688.0))


def quantize_nvfp4_torchao(x: np.ndarray, per_tensor_scale=None) -> tuple[np.ndarray, np.ndarray]:
    """float32 or bfloat16 (rows, n), n a multiple of 16 -> (packed uint8 (rows, n/2), block
    scales as E4M3 codes uint8 (rows, n/16)), as torchao 0.18's `nvfp4_quantize` computes them on
    the CPU (bfloat16 is widened to float32 first, exactly, as torchao does).

    One level (per_tensor_scale None):
      1. per block: s = amax / 6 in float32; clamped to [2^-6, 448] (2^-6 = E4M3_EPS, code 0x08:
         a block of zeros gets it); E4M3, round to nearest even.
      2. per element: y = x * (1 / s) — the reciprocal rounded to float32 first, then the product.
    Two levels (per_tensor_scale p, a positive float32; torchao derives it from a calibrated amax
    as nvfp4_per_tensor_scale_torchao(amax) = amax / 2688):
      1. per block: s = E4M3(clamp((amax / 6) / p, 2^-6, 448)), each division rounded to float32.
      2. per element: y = x * ((1 / p) / s), three float32 roundings in that order.
    Then, in both: y clamped to ±6 and rounded to the nearest E2M1 value, ties to even, the sign
    bit taken from y (so −0.0 gives code 0x8); two codes a byte, element 2i in the low nibble.

    compressed-tensors (quantize_nvfp4) differs: it divides by its global scale's inverse, sends a
    block scale that rounds to 0 to 0.125 (0x20) where torchao clamps to 2^-6 (0x08) first, and
    gives −0.0 code 0; see spec/divergences-nvfp4.md.
    """
    if isinstance(x, np.ndarray) and x.dtype.name == "bfloat16":
        x = x.astype(F32)                     # torchao: data_hp.float(), exact
    x = np.ascontiguousarray(check_floats(x, "NVFP4 (torchao)", block=NVFP4_BLOCK, why=_NAN_SCALE))
    if x.ndim != 2:
        raise InputError(f"NVFP4 (torchao): x must be a matrix (rows, n), got shape {x.shape}")
    if per_tensor_scale is not None:
        p = np.asarray(per_tensor_scale)
        if p.size != 1 or not np.issubdtype(p.dtype, np.floating) or not np.isfinite(p).all() or p.ravel()[0] <= 0:
            raise InputError(f"NVFP4 (torchao): per_tensor_scale must be one finite positive float, "
                             f"got {per_tensor_scale!r}")
        p = F32(p.ravel()[0])
    xb = x.reshape(x.shape[0], -1, NVFP4_BLOCK)
    amax = np.max(np.abs(xb), axis=-1)
    block_scale = (amax / FP4_MAX).astype(F32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if per_tensor_scale is None:
            s_codes = mf.encode(np.clip(block_scale, E4M3_EPS, FP8_E4M3_MAX), "E4M3FN")
            s_val = mf.decode(s_codes, "E4M3FN")
            rcp = (F32(1.0) / s_val).astype(F32)
        else:
            scaled = (block_scale / p).astype(F32)
            s_codes = mf.encode(np.clip(scaled, E4M3_EPS, FP8_E4M3_MAX), "E4M3FN")
            s_val = mf.decode(s_codes, "E4M3FN")
            rcp = ((F32(1.0) / p) / s_val).astype(F32)
        y = (xb * rcp[..., None]).astype(F32)
    if np.isnan(y).any():
        idx = tuple(int(i) for i in np.argwhere(np.isnan(y))[0])
        raise InputError(f"NVFP4 (torchao): per_tensor_scale {per_tensor_scale!r} makes x * (1 / p) / s "
                         f"0 * Inf at block index {idx[:2]}: the reciprocal overflows float32")
    codes = mf.encode(np.clip(y, -FP4_MAX, FP4_MAX), "E2M1", saturate=True).reshape(x.shape)
    return pack_fp4(codes), s_codes.astype(np.uint8)


def dequantize_nvfp4_torchao(packed: np.ndarray, scales: np.ndarray, per_tensor_scale=None) -> np.ndarray:
    """(packed, E4M3 scale codes, per-tensor scale or None) -> float32, as torchao's
    NVFP4Tensor.dequantize: e2m1 * s, or e2m1 * (p * s) with p * s rounded to float32 first."""
    packed = _check_u8(packed, "NVFP4 (torchao)", "packed")
    scales = _check_u8(scales, "NVFP4 (torchao)", "scales")
    n = packed.shape[-1] * 2
    if n % NVFP4_BLOCK or scales.shape != packed.shape[:-1] + (n // NVFP4_BLOCK,):
        raise InputError(f"NVFP4 (torchao): packed data of shape {packed.shape} needs scales of shape "
                         f"{packed.shape[:-1] + (n // NVFP4_BLOCK,)}; got {scales.shape}")
    s = mf.decode(scales, "E4M3FN")
    if per_tensor_scale is not None:
        p = np.asarray(per_tensor_scale)
        if p.size != 1 or not np.issubdtype(p.dtype, np.floating) or not np.isfinite(p).all():
            raise InputError(f"NVFP4 (torchao): per_tensor_scale must be one finite float, got {per_tensor_scale!r}")
        s = (F32(p.ravel()[0]) * s).astype(F32)
    vals = mf.decode(unpack_fp4(packed), "E2M1")
    vb = vals.reshape(*vals.shape[:-1], -1, NVFP4_BLOCK)
    with np.errstate(over="ignore", invalid="ignore"):
        return (vb * s[..., None]).astype(F32).reshape(vals.shape)


def dequantize_nvfp4(packed: np.ndarray, scales: np.ndarray, global_scale) -> np.ndarray:
    """(packed, E4M3 scale codes, global scale) -> float32: e2m1 * (s / gs), with s / gs rounded
    to float32 first (compressed-tensors' dequantize)."""
    packed = _check_u8(packed, "NVFP4", "packed")
    scales = _check_u8(scales, "NVFP4", "scales")
    gs = np.asarray(global_scale)
    if gs.size != 1 or not np.issubdtype(gs.dtype, np.floating) or not np.isfinite(gs).all() or gs.ravel()[0] == 0:
        raise InputError(f"NVFP4: global_scale must be one finite non-zero float, got {global_scale!r}")
    gs = F32(gs.ravel()[0])
    n = packed.shape[-1] * 2
    if n % NVFP4_BLOCK or scales.shape != packed.shape[:-1] + (n // NVFP4_BLOCK,):
        raise InputError(f"NVFP4: packed data of shape {packed.shape} holds {n} elements per row, which needs "
                         f"scales of shape {packed.shape[:-1] + (n // NVFP4_BLOCK,)} and a multiple of "
                         f"{NVFP4_BLOCK} elements; got scales of shape {scales.shape}")
    vals = mf.decode(unpack_fp4(packed), "E2M1")
    s = mf.decode(scales, "E4M3FN")
    with np.errstate(over="ignore", invalid="ignore"):
        eff = (s / gs).astype(F32)
        vb = vals.reshape(*vals.shape[:-1], -1, NVFP4_BLOCK)
        return (vb * eff[..., None]).astype(F32).reshape(vals.shape)


# ---------------------------------------------------------------------------------------------
# registry: MX blocks as byte rows | e8m0 scale | element bytes |, default (OCP) scale rule
# ---------------------------------------------------------------------------------------------

def _row_quantizer(f: MXFormat):
    def quantize_rows(x, imatrix=None):
        scales, data = quantize_mx(x, f, DEFAULT_SCALE_RULE)
        nrows, nblocks = scales.shape
        per = f.bytes_per_block - 1
        out = np.concatenate([scales.reshape(-1, 1), data.reshape(-1, per)], axis=1)
        return out.reshape(nrows, nblocks * f.bytes_per_block)
    quantize_rows.__name__ = f"quantize_{f.name.lower()}"
    return quantize_rows


def _row_dequantizer(f: MXFormat):
    def dequantize_rows(data):
        nrows = data.shape[0]
        blocks = np.ascontiguousarray(data).reshape(-1, f.bytes_per_block)
        scales = blocks[:, 0].reshape(nrows, -1)
        elems = np.ascontiguousarray(blocks[:, 1:]).reshape(nrows, -1)
        return dequantize_mx(scales, elems, f)
    dequantize_rows.__name__ = f"dequantize_{f.name.lower()}"
    return dequantize_rows


# MXFP6 is left out of the registry: no implementation defines a byte layout for 6-bit codes
# (torchao keeps one code a byte), so quantize_mx/dequantize_mx are its interface.
RECORDS = [Format(name, "mx", MX_BLOCK, MX_FORMATS[name].bytes_per_block, _row_quantizer(MX_FORMATS[name]),
                  _row_dequantizer(MX_FORMATS[name]), spec_page=MX_FORMATS[name].spec_page)
           for name in ("MXFP8_E4M3", "MXFP8_E5M2", "MXFP4_E2M1", "MXINT8")]


# torchao's NVFP4 with one level (no per-tensor scale) is a row format: per 16 values
# | E4M3 scale code | 8 bytes, two E2M1 codes a byte, element 2i in the low nibble |, as the MX
# rows above. Its two-level form and compressed-tensors' NVFP4 need a per-tensor scale beside
# the rows, so they are the functions above (quantize_nvfp4_torchao(x, p), quantize_nvfp4).
NVFP4_TORCHAO_BYTES = 1 + NVFP4_BLOCK // 2


def quantize_nvfp4_torchao_rows(x, imatrix=None):
    packed, scales = quantize_nvfp4_torchao(x)
    nrows, nblocks = scales.shape
    blocks = np.concatenate([scales.reshape(-1, 1), packed.reshape(-1, NVFP4_BLOCK // 2)], axis=1)
    return blocks.reshape(nrows, nblocks * NVFP4_TORCHAO_BYTES)


def dequantize_nvfp4_torchao_rows(data):
    nrows = data.shape[0]
    blocks = np.ascontiguousarray(data).reshape(-1, NVFP4_TORCHAO_BYTES)
    scales = np.ascontiguousarray(blocks[:, 0]).reshape(nrows, -1)
    packed = np.ascontiguousarray(blocks[:, 1:]).reshape(nrows, -1)
    return dequantize_nvfp4_torchao(packed, scales)


RECORDS.append(Format("NVFP4_TORCHAO", "torchao", NVFP4_BLOCK, NVFP4_TORCHAO_BYTES, quantize_nvfp4_torchao_rows,
                      dequantize_nvfp4_torchao_rows, spec_page="mx/nvfp4_torchao.md"))


__all__ = ["MXFormat", "MX_FORMATS", "SCALE_RULES", "get_mx_format", "shared_exponent", "quantize_mx",
           "dequantize_mx", "pack_fp4", "unpack_fp4", "e8m0_to_float32", "nvfp4_global_scale",
           "quantize_nvfp4", "quantize_nvfp4_modelopt", "dequantize_nvfp4", "quantize_nvfp4_torchao",
           "dequantize_nvfp4_torchao", "nvfp4_per_tensor_scale_torchao"]
