"""Affine INT-N quantization (2..8 bits) over an explicit block-size granularity.

Shaped like torchao's quant_primitives: three orthogonal pieces over a `block_size` that names
the granularity (one scale per block of that shape):

    scale, zero_point = choose_qparams(x, block_size, bits, convention, ...)
    q                 = quantize(x, scale, zero_point, block_size, bits, convention, ...)
    x_hat             = dequantize(q, scale, zero_point, block_size, convention, ...)

    granularity     block_size for x of shape (R, K)      scale shape
    per-tensor      (R, K)            per_tensor(shape)      (1, 1)
    per-channel     (1, K)            per_channel(shape)     (R, 1)
    per-group g     (1, g)            per_group(shape, g)    (R, K/g)
    2-D block       (bh, bw)          per_block(shape, ...)  (ceil(R/bh), ceil(K/bw))

Scales and zero points always have shape ceil(shape / block_size) (torchao's keepdim=True
shape). Four conventions are named, each with its own scale rule, rounding rule, code range and
arithmetic dtype, and each is checked against the implementation that defines it:

    "torchao"             choose_qparams_affine / quantize_affine / dequantize_affine
    "compressed-tensors"  calculate_qparams + lifecycle.forward quantize / dequantize
    "gptq"                AutoGPTQ's Quantizer (find_params, quantize)
    "awq"                 AutoAWQ's pseudo_quantize_tensor

Every one rounds with torch.round: half to even (np.rint), unlike ggml's roundf (half away from
zero) or its +0.5-and-truncate. Arithmetic is pinned to the dtype torch computes in: an operation
on float16/bfloat16 tensors is done in float32 and rounded once to the result dtype (torch's CPU
kernels do exactly that; for + - * / the result equals the correctly rounded one), with torch's
type promotion (float32 wins; float16 with bfloat16 gives float32).

Float inputs are NumPy float32, float16 or ml_dtypes.bfloat16 arrays.
"""
from __future__ import annotations

import operator

from dataclasses import dataclass
from typing import Callable, Optional

import ml_dtypes
import numpy as np

from .api import check_floats
from .errors import InputError

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (F32, F16, BF16)
_FNAMES = {F32: "float32", F16: "float16", BF16: "bfloat16"}

MAPPING_TYPES = ("SYMMETRIC", "SYMMETRIC_NO_CLIPPING_ERR", "ASYMMETRIC")  # torchao's MappingType


# ============================================================================ dtype arithmetic

def float_dtype(d) -> np.dtype:
    """A float dtype by NumPy dtype or name ("float32", "float16", "bfloat16")."""
    if isinstance(d, str):
        for k, v in _FNAMES.items():
            if v == d:
                return k
        raise InputError(f"unknown float dtype {d!r}; expected one of {list(_FNAMES.values())}")
    try:
        d = np.dtype(d)
    except TypeError as e:
        raise InputError(f"not a dtype: {d!r}") from e
    if d not in FLOAT_DTYPES:
        raise InputError(f"float dtype must be one of {list(_FNAMES.values())}, got {d}")
    return d


def promote(*dtypes) -> np.dtype:
    """torch's promotion among float tensors: float32 if any is float32 or if float16 meets
    bfloat16; otherwise the one dtype."""
    ds = {np.dtype(d) for d in dtypes}
    return ds.pop() if len(ds) == 1 else F32


def rnd(a, dtype) -> np.ndarray:
    """A float32 result rounded once (to nearest, ties to even) to `dtype`."""
    a = np.asarray(a, dtype=F32)
    with np.errstate(over="ignore"):
        return a.astype(dtype)


def f32(a) -> np.ndarray:
    return np.asarray(a).astype(F32)


def _op(fn, a, b, dtype):
    """fn on float32 values, rounded to `dtype` (how torch's CPU kernels do f16/bf16 math)."""
    with np.errstate(all="ignore"):
        return rnd(fn(f32(a), f32(b)), dtype)


def div(a, b, dtype):
    return _op(np.divide, a, b, dtype)


def mul(a, b, dtype):
    return _op(np.multiply, a, b, dtype)


def add(a, b, dtype):
    return _op(np.add, a, b, dtype)


def sub(a, b, dtype):
    return _op(np.subtract, a, b, dtype)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """[-2^(b-1), 2^(b-1)-1] for signed codes, [0, 2^b-1] for unsigned."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def code_dtype(bits: int, signed: bool) -> np.dtype:
    return np.dtype(np.int8 if signed else np.uint8)


# ============================================================================ granularity

def per_tensor(shape) -> tuple:
    return tuple(int(s) for s in shape)


def per_channel(shape, axis: int = 0) -> tuple:
    """One scale per index along `axis` (for a weight (out, in): one per output channel)."""
    shape = tuple(int(s) for s in shape)
    if not -len(shape) <= axis < len(shape):
        raise InputError(f"per_channel: axis {axis} out of range for shape {shape}")
    axis %= len(shape)
    return tuple(1 if i == axis else s for i, s in enumerate(shape))


def per_token(shape) -> tuple:
    """One scale per vector along the last axis (activations (..., tokens, hidden))."""
    shape = tuple(int(s) for s in shape)
    return (1,) * (len(shape) - 1) + (shape[-1],)


def per_group(shape, group_size: int) -> tuple:
    """Groups of `group_size` consecutive elements along the last (input) axis."""
    shape = tuple(int(s) for s in shape)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise InputError(f"group size must be a positive integer, got {group_size!r}")
    return (1,) * (len(shape) - 1) + (int(group_size),)


def per_block(shape, block) -> tuple:
    """2-D blocks (bh, bw) over the last two axes."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or len(block) != 2:
        raise InputError(f"per_block needs a shape of at least 2 dimensions and a (rows, cols) block, "
                         f"got shape {shape} and block {tuple(block)}")
    return (1,) * (len(shape) - 2) + tuple(int(b) for b in block)


def check_block_size(shape, block_size, pad: bool = False, who: str = "affine") -> tuple:
    """Validate block_size against shape. Without `pad`, each block extent must divide its axis;
    with it, edge blocks may be partial (they are treated as padded)."""
    shape = tuple(int(s) for s in shape)
    try:
        block = tuple(operator.index(b) for b in block_size)   # 1.5 is refused, not truncated to 1
    except TypeError as e:
        raise InputError(f"{who}: block_size must be a tuple of integers, got {block_size!r}") from e
    if len(block) != len(shape):
        raise InputError(f"{who}: block_size {block} has {len(block)} entries; the tensor has "
                         f"{len(shape)} dimensions {shape}")
    for i, (s, b) in enumerate(zip(shape, block)):
        if b < 1:
            raise InputError(f"{who}: block_size[{i}] = {b}; block extents must be positive")
        if not pad and (b > s or s % b):
            raise InputError(f"{who}: dimension {i} has size {s}, which is not a multiple of the block/group "
                             f"size {b} (block_size {block}, shape {shape})")
    return block


def scale_shape(shape, block_size) -> tuple:
    return tuple(-(-int(s) // int(b)) for s, b in zip(shape, block_size))


def block_reduce(x: np.ndarray, block_size, fn, fill) -> np.ndarray:
    """fn over every block (edge blocks padded with `fill`), result shape scale_shape(...).
    x is float32; fn is an exact reduction (np.max / np.min)."""
    shape, block = x.shape, tuple(block_size)
    nb = scale_shape(shape, block)
    padw = [(0, n * b - s) for s, b, n in zip(shape, block, nb)]
    if any(p for _, p in padw):
        x = np.pad(x, padw, constant_values=fill)
    inter = [v for n, b in zip(nb, block) for v in (n, b)]
    return fn(x.reshape(inter), axis=tuple(range(1, 2 * len(shape), 2)))


def expand(s: np.ndarray, block_size, shape) -> np.ndarray:
    """A per-block array broadcast back to the element shape (edge blocks cropped)."""
    for ax, b in enumerate(block_size):
        if b > 1:
            s = np.repeat(s, b, axis=ax)
    return s[tuple(slice(0, n) for n in shape)]


def block_min(x, block_size):
    return block_reduce(f32(x), block_size, np.min, np.inf).astype(x.dtype)


def block_max(x, block_size):
    return block_reduce(f32(x), block_size, np.max, -np.inf).astype(x.dtype)


# ============================================================================ input checks

def check_bits(bits, who: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise InputError(f"{who}: bits must be an integer from 2 to 8, got {bits!r}")
    return int(bits)


def check_scale(scale, shape, block_size, who: str, reciprocal: bool = False) -> np.ndarray:
    """A scale array of the block grid's shape: positive, finite, and (when the rule multiplies
    by it) with a finite reciprocal in its own dtype."""
    want = scale_shape(shape, block_size)
    s = check_floats(scale if isinstance(scale, np.ndarray) else np.asarray(scale), who, "scale", dtypes=FLOAT_DTYPES)
    if s.shape != want:
        if s.size == int(np.prod(want)):
            s = s.reshape(want)
        else:
            raise InputError(f"{who}: scale has shape {s.shape}; block_size {tuple(block_size)} on shape "
                             f"{tuple(shape)} needs {want}")
    bad = ~(f32(s) > 0)
    if reciprocal:
        with np.errstate(divide="ignore", over="ignore"):
            bad |= ~np.isfinite(rnd(F32.type(1) / f32(s), s.dtype).astype(F32))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        why = "has no finite reciprocal in " + _FNAMES[s.dtype] if f32(s)[idx] > 0 else "is not positive"
        raise InputError(f"{who}: scale {s[idx]!r} at block {idx} {why}; it cannot quantize")
    return s


def _check_zero(zero_point, shape, block_size, lo, hi, who) -> Optional[np.ndarray]:
    if zero_point is None:
        return None
    z = np.asarray(zero_point)
    want = scale_shape(shape, block_size)
    if z.shape != want:
        if z.size == int(np.prod(want)):
            z = z.reshape(want)
        else:
            raise InputError(f"{who}: zero_point has shape {z.shape}; expected {want}")
    zf = z.astype(np.float64)
    bad = ~np.isfinite(zf) | (zf < lo) | (zf > hi)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{who}: zero_point {z[idx]!r} at block {idx} is outside the code range [{lo}, {hi}]")
    return z


def _check_codes(q, lo, hi, who) -> np.ndarray:
    if not isinstance(q, np.ndarray) or not np.issubdtype(q.dtype, np.integer):
        raise InputError(f"{who}: codes must be a numpy integer array, got "
                         f"{getattr(q, 'dtype', type(q).__name__)}")
    if q.size and (q.min() < lo or q.max() > hi):
        idx = tuple(int(i) for i in np.argwhere((q < lo) | (q > hi))[0])
        raise InputError(f"{who}: code {int(q[idx])} at index {idx} is outside [{lo}, {hi}]")
    return q


# ============================================================================ torchao

def choose_qparams_torchao(x: np.ndarray, block_size, bits: int, mapping_type: str = "SYMMETRIC",
                           signed: bool = True, eps: Optional[float] = None, scale_dtype=None,
                           zero_point_dtype=np.int32):
    """torchao's choose_qparams_affine (quant_min/quant_max = the `bits` code range).

    In x's dtype: min_neg = min(block min, 0), max_pos = max(block max, 0);
      SYMMETRIC                  scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2), zp = (qmax+qmin+1)//2
      SYMMETRIC_NO_CLIPPING_ERR  scale = max(min_neg / qmin, max_pos / qmax),          zp = (qmax+qmin+1)//2
      ASYMMETRIC                 scale = (max_pos - min_neg) / (qmax - qmin),
                                 zp = clamp(qmin - round(min_neg / scale), qmin, qmax)  (after the eps clamp)
    scale = max(scale, eps) (eps: x dtype's smallest normal unless given), then cast to
    scale_dtype (default x's dtype); zp cast to zero_point_dtype (default int32).
    """
    who = "choose_qparams(torchao)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    if mapping_type not in MAPPING_TYPES:
        raise InputError(f"{who}: mapping_type must be one of {MAPPING_TYPES}, got {mapping_type!r}")
    qmin, qmax = code_range(bits, signed)
    if mapping_type == "SYMMETRIC_NO_CLIPPING_ERR" and qmin == 0:
        raise InputError(f"{who}: SYMMETRIC_NO_CLIPPING_ERR divides by quant_min; it needs signed codes")
    dt = x.dtype
    sdt = dt if scale_dtype is None else float_dtype(scale_dtype)
    eps_v = float(np.finfo(np.float32).tiny) if dt != F16 else float(np.finfo(np.float16).tiny)
    if eps is not None:
        eps_v = float(eps)
    eps_d = rnd(F32.type(eps_v), dt)  # the Python scalar as torch converts it: double -> float -> dtype
    mn, mx = block_min(x, block), block_max(x, block)
    min_neg = np.minimum(f32(mn), 0).astype(dt)
    max_pos = np.maximum(f32(mx), 0).astype(dt)
    with np.errstate(all="ignore"):
        if mapping_type == "SYMMETRIC":
            m = np.maximum(-f32(min_neg), f32(max_pos)).astype(dt)
            scale = div(m, F32.type((qmax - qmin) / 2), dt)
        elif mapping_type == "SYMMETRIC_NO_CLIPPING_ERR":
            smin = div(min_neg, F32.type(qmin), dt)
            smax = div(max_pos, F32.type(qmax), dt)
            scale = np.where(f32(smin) > f32(smax), smin, smax)
        if mapping_type != "ASYMMETRIC":
            zp = np.full(scale.shape, int((qmax + qmin + 1) / 2), dtype=np.float64)
            scale = np.maximum(f32(scale), f32(eps_d)).astype(dt)
        else:
            scale = div(sub(max_pos, min_neg, dt), F32.type(qmax - qmin), dt)
            scale = np.maximum(f32(scale), f32(eps_d)).astype(dt)
            r = np.rint(f32(div(min_neg, scale, dt)))             # torch.round: half to even
            zp = np.clip(f32(sub(F32.type(qmin), r, dt)), qmin, qmax).astype(np.float64)
    scale = rnd(f32(scale), sdt) if sdt != dt else scale
    return scale, _cast_zero(zp, zero_point_dtype)


def _cast_zero(zp: np.ndarray, zdt) -> np.ndarray:
    zdt = np.dtype(zdt)
    if zdt in FLOAT_DTYPES:
        return rnd(zp.astype(F32), zdt)
    if not np.issubdtype(zdt, np.integer):
        raise InputError(f"zero_point_dtype must be an integer or float dtype, got {zdt}")
    return zp.astype(zdt)


def quantize_torchao(x: np.ndarray, scale: np.ndarray, zero_point, block_size, bits: int,
                     signed: bool = True) -> np.ndarray:
    """torchao's quantize_affine (integer zero-point domain):
        q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)
    1/scale is a reciprocal in the scale's dtype; the product is in promote(x, scale) dtype;
    round is half to even; the zero point is added in that float dtype. Codes come back as int8
    (signed) or uint8 (unsigned)."""
    who = "quantize(torchao)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    qmin, qmax = code_range(bits, signed)
    s = check_scale(scale, x.shape, block, who, reciprocal=True)
    z = _check_zero(zero_point, x.shape, block, qmin, qmax, who)
    with np.errstate(all="ignore"):
        inv = rnd(F32.type(1) / f32(s), s.dtype)               # torch: 1.0 / t is t.reciprocal() * 1.0
        pdt = promote(x.dtype, s.dtype)
        y = mul(x, expand(inv, block, x.shape), pdt)
        y = np.rint(f32(y)).astype(pdt)
        if z is not None:
            zdt = promote(pdt, z.dtype) if z.dtype in FLOAT_DTYPES else pdt
            zz = expand(z, block, x.shape)
            zz = zz.astype(zdt) if z.dtype in FLOAT_DTYPES else rnd(zz.astype(F32), zdt)
            y = add(y, zz, zdt)
        q = np.clip(f32(y), qmin, qmax)
    return q.astype(code_dtype(bits, signed))


def dequantize_torchao(q: np.ndarray, scale: np.ndarray, zero_point, block_size,
                       output_dtype=F32) -> np.ndarray:
    """torchao's dequantize_affine: ((q.to(out) - zp.to(out)) * scale).to(out); the product is
    in promote(out, scale) dtype, then cast to out."""
    who = "dequantize(torchao)"
    q = _check_codes(q, -(2**31), 2**31 - 1, who)
    block = check_block_size(q.shape, block_size, who=who)
    out = float_dtype(output_dtype)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=FLOAT_DTYPES).reshape(scale_shape(q.shape, block))
    with np.errstate(all="ignore"):
        d = rnd(q.astype(np.float64).astype(F32), out)
        if zero_point is not None:
            z = np.asarray(zero_point).reshape(s.shape)
            zo = z.astype(out) if z.dtype in FLOAT_DTYPES else rnd(z.astype(np.float64).astype(F32), out)
            d = sub(d, expand(zo, block, q.shape), out)
        d = mul(d, expand(s, block, q.shape), promote(out, s.dtype))
        return d.astype(out)


def choose_qparams_torchao_float_zero(x: np.ndarray, block_size, bits: int, eps: Optional[float] = None,
                                      scale_dtype=None, zero_point_dtype=None):
    """torchao's FLOAT zero-point domain (`_choose_qparams_affine_tinygemm`, the int4 tinygemm
    layout): asymmetric over the block's own [min, max] — zero is not forced onto the grid —
    with unsigned codes [0, 2^b - 1] and mid_point = 2^(b-1):

        scale = max((max - min) / (2^b - 1), eps)          in x's dtype
        zero_point = min + scale * mid_point               a float, in x's dtype
    Returns (scale cast to scale_dtype, zero_point cast to zero_point_dtype; both default x's)."""
    who = "choose_qparams(torchao, float zero point)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    qmin, qmax = code_range(bits, False)
    dt = x.dtype
    eps_v = float(np.finfo(np.float16 if dt == F16 else np.float32).tiny) if eps is None else float(eps)
    mid = F32.type((qmax + qmin + 1) / 2)
    with np.errstate(all="ignore"):
        mn, mx = block_min(x, block), block_max(x, block)
        scale = div(sub(mx, mn, dt), F32.type(qmax - qmin), dt)
        scale = np.maximum(f32(scale), f32(rnd(F32.type(eps_v), dt))).astype(dt)
        zp = add(mn, mul(scale, mid, dt), dt)
    sdt = dt if scale_dtype is None else float_dtype(scale_dtype)
    zdt = dt if zero_point_dtype is None else float_dtype(zero_point_dtype)
    return rnd(f32(scale), sdt), rnd(f32(zp), zdt)


def quantize_torchao_float_zero(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, block_size,
                                bits: int) -> np.ndarray:
    """torchao `_quantize_affine_tinygemm`: min_val = zero_point - scale * mid_point;
    q = clamp(round((x - min_val) / scale), 0, 2^b - 1), each step in torch's promoted dtype."""
    who = "quantize(torchao, float zero point)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    qmin, qmax = code_range(bits, False)
    s = check_scale(scale, x.shape, block, who)
    z = check_floats(np.asarray(zero_point), who, "zero_point", dtypes=FLOAT_DTYPES).reshape(s.shape)
    mid = F32.type((qmax + qmin + 1) / 2)
    with np.errstate(all="ignore"):
        mdt = promote(z.dtype, s.dtype)
        min_val = sub(z, mul(s, mid, s.dtype), mdt)
        d1 = promote(x.dtype, mdt)
        y = sub(x, expand(min_val, block, x.shape), d1)
        d2 = promote(d1, s.dtype)
        y = np.rint(f32(div(y, expand(s, block, x.shape), d2)))
        return np.clip(y, qmin, qmax).astype(np.uint8)


def dequantize_torchao_float_zero(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, block_size,
                                  bits: int, output_dtype=F32) -> np.ndarray:
    """torchao `_dequantize_affine_tinygemm`: d = float32(q - mid_point).to(out);
    d *= scale; d += zero_point (in place: computed in the promoted dtype, stored as out)."""
    who = "dequantize(torchao, float zero point)"
    bits = check_bits(bits, who)
    qmin, qmax = code_range(bits, False)
    q = _check_codes(q, qmin, qmax, who)
    block = check_block_size(q.shape, block_size, who=who)
    out = float_dtype(output_dtype)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=FLOAT_DTYPES).reshape(scale_shape(q.shape, block))
    z = check_floats(np.asarray(zero_point), who, "zero_point", dtypes=FLOAT_DTYPES).reshape(s.shape)
    mid = F32.type((qmax + qmin + 1) / 2)
    with np.errstate(all="ignore"):
        d = rnd(q.astype(F32) - mid, out)
        d = mul(d, expand(s, block, q.shape), out)
        return add(d, expand(z, block, q.shape), out)


# ============================================================================ compressed-tensors

def choose_qparams_compressed_tensors(x: np.ndarray, block_size, bits: int, symmetric: bool = True,
                                      zero_dim_minmax: bool = False):
    """compressed-tensors' calculate_qparams on the block's min and max (INT type, no
    scale_dtype, no global scale), in x's dtype:

        min = min(block min, 0), max = max(block max, 0), bit range = 2^b - 1
        symmetric:  scale = max(|min|, |max|) / ((2^b - 1) / 2),           zp = 0
        asymmetric: scale = (max - min) / (2^b - 1),
                    zp = clamp(-2^(b-1) - min / scale, -2^(b-1), 2^(b-1) - 1)   (no rounding yet)
        scale == 0 -> the scale dtype's machine epsilon (after zp was computed)
        zp -> int8: round (half even) after clamping to int8's range; a NaN zp (0/0, an all-zero
              block) becomes 0, as torch's float -> int8 conversion gives on x86.

    The dynamic TENSOR strategy reduces to 0-dim min/max (aminmax), and torch's promotion then
    computes `bit_min - min / scale` in float32 instead of x's dtype: `zero_dim_minmax=True`
    reproduces that path. Every other path (channel, group, block, token, or an observer's
    (1, 1) min/max for a whole tensor) keeps the min/max dimensions: the default.
    """
    who = "choose_qparams(compressed-tensors)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, pad=True, who=who)
    dt = x.dtype
    bit_min, bit_max = code_range(bits, True)
    mn = np.minimum(f32(block_min(x, block)), 0).astype(dt)
    mx = np.maximum(f32(block_max(x, block)), 0).astype(dt)
    with np.errstate(all="ignore"):
        if symmetric:
            m = np.maximum(np.abs(f32(mn)), np.abs(f32(mx))).astype(dt)
            half_range = div(rnd(F32.type(2**bits - 1), dt), F32.type(2), dt)
            scale = div(m, half_range, dt)
            zp = np.zeros(scale.shape, F32)
        else:
            scale = div(sub(mx, mn, dt), rnd(F32.type(2**bits - 1), dt), dt)
            zdt = F32 if zero_dim_minmax else dt
            zp = f32(sub(F32.type(bit_min), div(mn, scale, dt), zdt))
            zp = np.clip(zp, bit_min, bit_max)
        scale = np.where(f32(scale) == 0, rnd(np.finfo(np.float32).eps if dt == F32 else
                                               (F32.type(2**-10) if dt == F16 else F32.type(2**-7)), dt),
                         scale).astype(dt)
        zp = np.clip(zp, -128, 127)
        zq = np.where(np.isnan(zp), 0, np.rint(zp)).astype(np.int8)
    return scale, zq


def quantize_compressed_tensors(x: np.ndarray, scale: np.ndarray, zero_point, block_size,
                                bits: int) -> np.ndarray:
    """compressed-tensors' forward.quantize (INT type):
        scaled = x / scale                      (promote(x, scale) dtype, true division)
        scaled += zero_point.to(x.dtype)        (in place: stays in scaled's dtype)
        q = round(clamp(scaled, -2^(b-1), 2^(b-1) - 1))  -> int8     (half to even)
    Edge blocks of a 2-D block granularity are padded (the padding is cropped again)."""
    who = "quantize(compressed-tensors)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, pad=True, who=who)
    qmin, qmax = code_range(bits, True)
    s = check_scale(scale, x.shape, block, who)
    z = _check_zero(zero_point, x.shape, block, qmin, qmax, who)
    with np.errstate(all="ignore"):
        pdt = promote(x.dtype, s.dtype)
        y = div(x, expand(s, block, x.shape), pdt)
        if z is not None:
            y = add(y, rnd(expand(z, block, x.shape).astype(F32), x.dtype), pdt)
        q = np.rint(np.clip(f32(y), qmin, qmax))
    return q.astype(np.int8)


def dequantize_compressed_tensors(q: np.ndarray, scale: np.ndarray, zero_point, block_size,
                                  dtype=None) -> np.ndarray:
    """compressed-tensors' forward.dequantize: (q.to(s.dtype) - zp.to(s.dtype)) * scale in the
    scale's dtype, then cast to `dtype` (default: the scale's)."""
    who = "dequantize(compressed-tensors)"
    q = _check_codes(q, -128, 127, who)
    block = check_block_size(q.shape, block_size, pad=True, who=who)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=FLOAT_DTYPES).reshape(scale_shape(q.shape, block))
    sdt = s.dtype
    out = sdt if dtype is None else float_dtype(dtype)
    with np.errstate(all="ignore"):
        d = rnd(q.astype(F32), sdt)
        if zero_point is not None:
            z = np.asarray(zero_point).reshape(s.shape)
            d = sub(d, rnd(expand(z, block, q.shape).astype(F32), sdt), sdt)
        d = mul(d, expand(s, block, q.shape), sdt)
    return rnd(f32(d), out) if out != sdt else d


# ============================================================================ GPTQ

def choose_qparams_gptq(x: np.ndarray, block_size, bits: int, symmetric: bool = True):
    """GPTQ's Quantizer.find_params (AutoGPTQ, IST-DASLab), in float32 (GPTQ quantizes W.float()):

        xmin = min(block min, 0), xmax = max(block max, 0)
        symmetric: xmax = max(|xmin|, xmax); xmin = -xmax where xmin < 0   (an all-non-negative
                   block keeps xmin = 0: its codes above the zero point are all that is used)
        xmin = -1, xmax = +1 where both are 0
        scale = (xmax - xmin) / (2^b - 1)
        zero  = 2^(b-1) (symmetric) or round(-xmin / scale), a float32 holding an integer

    Codes are unsigned [0, 2^b - 1]; the zero here is the real zero point (what GPTQ v1
    checkpoints store minus one, v2 as is)."""
    who = "choose_qparams(gptq)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    maxq = F32.type(2**bits - 1)
    xs = f32(x)
    with np.errstate(all="ignore"):
        xmin = np.minimum(block_reduce(xs, block, np.min, np.inf), F32.type(0))
        xmax = np.maximum(block_reduce(xs, block, np.max, -np.inf), F32.type(0))
        if symmetric:
            xmax = np.maximum(np.abs(xmin), xmax)
            xmin = np.where(xmin < 0, -xmax, xmin)
        both = (xmin == 0) & (xmax == 0)
        xmin = np.where(both, F32.type(-1), xmin).astype(F32)
        xmax = np.where(both, F32.type(1), xmax).astype(F32)
        scale = ((xmax - xmin) / maxq).astype(F32)
        if symmetric:
            zero = np.full(scale.shape, (maxq + 1) / 2, F32)
        else:
            zero = np.rint(-xmin / scale).astype(F32) + F32.type(0)  # +0: the sign of a zero is no part of it
    return scale, zero


def quantize_gptq(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, block_size, bits: int) -> np.ndarray:
    """GPTQ's quantize: q = clamp(round(x / scale) + zero, 0, 2^b - 1), float32, half to even;
    codes as uint8."""
    who = "quantize(gptq)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    s = check_scale(np.asarray(scale, F32), x.shape, block, who)
    # GPTQ never clamps its zero: with a subnormal scale, round(-xmin / scale) can pass maxq
    # (a zero no checkpoint can store); the codes are still clamped. Any finite zero is taken.
    z = _check_zero(zero, x.shape, block, -np.inf, np.inf, who)
    with np.errstate(all="ignore"):
        y = np.rint(f32(x) / expand(s, block, x.shape)) + expand(f32(z), block, x.shape)
        q = np.clip(y.astype(F32), 0, 2**bits - 1)
    return q.astype(np.uint8)


def dequantize_gptq(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, block_size) -> np.ndarray:
    """GPTQ's dequantize: scale * (q - zero), float32."""
    who = "dequantize(gptq)"
    q = _check_codes(q, 0, 255, who)
    block = check_block_size(q.shape, block_size, who=who)
    s = np.asarray(scale, F32).reshape(scale_shape(q.shape, block))
    z = f32(np.asarray(zero)).reshape(s.shape)
    with np.errstate(all="ignore"):
        return (expand(s, block, q.shape) * (q.astype(F32) - expand(z, block, q.shape))).astype(F32)


# ============================================================================ AWQ

AWQ_MIN_RANGE = 1e-5  # AutoAWQ clamps (max - min), or the absmax, to at least this


def choose_qparams_awq(x: np.ndarray, block_size, bits: int, zero_point: bool = True):
    """AutoAWQ's pseudo_quantize_tensor scale rule, in x's dtype (AWQ groups are (1, g) along
    the input axis):

        zero_point=True (asymmetric, unsigned codes [0, 2^b - 1]):
            scale = max(block max - block min, 1e-5) / (2^b - 1)   (the range need not hold 0)
            zero  = clamp(-round(block min / scale), 0, 2^b - 1)     (clamped to the code range)
        zero_point=False (symmetric, signed codes [-2^(b-1), 2^(b-1) - 1]):
            scale = max(block absmax, 1e-5) / (2^(b-1) - 1),  no zero
    Returns (scale, zero) with zero in x's dtype (None when symmetric)."""
    who = "choose_qparams(awq)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    dt = x.dtype
    floor = rnd(F32.type(AWQ_MIN_RANGE), dt)
    with np.errstate(all="ignore"):
        if zero_point:
            mx, mn = block_max(x, block), block_min(x, block)
            rng = np.maximum(f32(sub(mx, mn, dt)), f32(floor)).astype(dt)
            scale = div(rng, F32.type(2**bits - 1), dt)
            z = (np.clip(-np.rint(f32(div(mn, scale, dt))), 0, 2**bits - 1) + F32.type(0)).astype(dt)
            return scale, z
        amax = block_reduce(np.abs(f32(x)), block, np.max, 0).astype(dt)
        amax = np.maximum(f32(amax), f32(floor)).astype(dt)
        return div(amax, F32.type(2 ** (bits - 1) - 1), dt), None


def quantize_awq(x: np.ndarray, scale: np.ndarray, zero, block_size, bits: int) -> np.ndarray:
    """AutoAWQ: q = clamp(round(x / scale) + zero, 0, 2^b - 1) (uint8), or without a zero
    clamp(round(x / scale), -2^(b-1), 2^(b-1) - 1) (int8); in x's dtype, half to even."""
    who = "quantize(awq)"
    x = check_floats(x, who, dtypes=FLOAT_DTYPES)
    bits = check_bits(bits, who)
    block = check_block_size(x.shape, block_size, who=who)
    signed = zero is None
    qmin, qmax = code_range(bits, signed)
    s = check_scale(scale, x.shape, block, who)
    z = _check_zero(zero, x.shape, block, qmin, qmax, who)
    dt = promote(x.dtype, s.dtype)
    with np.errstate(all="ignore"):
        y = np.rint(f32(div(x, expand(s, block, x.shape), dt))).astype(dt)
        if z is not None:
            y = add(y, expand(z, block, x.shape), dt)
        q = np.clip(f32(y), qmin, qmax)
    return q.astype(code_dtype(bits, signed))


def dequantize_awq(q: np.ndarray, scale: np.ndarray, zero, block_size) -> np.ndarray:
    """AutoAWQ: (q - zero) * scale, or q * scale, in the scale's dtype."""
    who = "dequantize(awq)"
    q = _check_codes(q, -128, 255, who)
    block = check_block_size(q.shape, block_size, who=who)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=FLOAT_DTYPES).reshape(scale_shape(q.shape, block))
    dt = s.dtype
    with np.errstate(all="ignore"):
        d = rnd(q.astype(F32), dt)
        if zero is not None:
            d = sub(d, expand(np.asarray(zero).reshape(s.shape), block, q.shape), dt)
        return mul(d, expand(s, block, q.shape), dt)


# ============================================================================ the conventions

@dataclass(frozen=True)
class Convention:
    name: str
    implementation: str          # the code it is checked against
    rounding: str
    choose_qparams: Callable
    quantize: Callable
    dequantize: Callable
    spec_page: str


CONVENTIONS = {c.name: c for c in [
    Convention("torchao", "torchao.quantization.quant_primitives (choose_qparams_affine, quantize_affine, "
               "dequantize_affine)", "half to even (torch.round), on x * reciprocal(scale)",
               choose_qparams_torchao, quantize_torchao, dequantize_torchao, "affine/torchao.md"),
    Convention("compressed-tensors", "compressed_tensors.quantization (calculate_qparams, "
               "lifecycle.forward.quantize / dequantize)", "half to even (torch.round), on x / scale, "
               "clamped before rounding", choose_qparams_compressed_tensors, quantize_compressed_tensors,
               dequantize_compressed_tensors, "affine/compressed-tensors.md"),
    Convention("gptq", "auto_gptq.quantization.quantizer.Quantizer", "half to even (torch.round), on x / scale, "
               "float32", choose_qparams_gptq, quantize_gptq, dequantize_gptq, "affine/gptq.md"),
    Convention("awq", "awq.quantize.quantizer.AwqQuantizer.pseudo_quantize_tensor", "half to even "
               "(torch.round), on x / scale", choose_qparams_awq, quantize_awq, dequantize_awq, "affine/awq.md"),
]}


def get_convention(name: str) -> Convention:
    c = CONVENTIONS.get(name)
    if c is None:
        raise InputError(f"unknown affine convention {name!r}; known: {', '.join(CONVENTIONS)}")
    return c


def choose_qparams(x, block_size, bits, convention: str = "torchao", **options):
    """Scale and zero point per block under `convention` (options are the convention's own:
    torchao: mapping_type, signed, eps, scale_dtype, zero_point_dtype; compressed-tensors,
    gptq: symmetric; awq: zero_point)."""
    return get_convention(convention).choose_qparams(x, block_size, bits, **options)


def quantize(x, scale, zero_point, block_size, bits, convention: str = "torchao", **options):
    return get_convention(convention).quantize(x, scale, zero_point, block_size, bits, **options)


def dequantize(q, scale, zero_point, block_size, convention: str = "torchao", **options):
    return get_convention(convention).dequantize(q, scale, zero_point, block_size, **options)
