"""Numba twin of refquant/affine.py: quantize (encode) and dequantize (decode) of every affine
convention — torchao (integer and float zero-point domains), compressed-tensors, GPTQ and AWQ —
bit-exact with the spec, with the spec's signatures and options.

    from refquant_backends.numba import affine
    q = affine.quantize(x, scale, zero_point, block_size, bits, "torchao", signed=True)
    x_hat = affine.dequantize(q, scale, zero_point, block_size, "torchao")

The spec's own checks run first (same errors, same messages). The kernels work on a 2-D view
(R, K) with a block (bh, bw): element (i, j) uses scale[i // bh, j // bw], so per-tensor,
per-channel, per-group, 2-D block and per-token granularities (leading axes with block extent 1
folded into the rows) need no expanded scale arrays. A block_size that does not fold to 2-D
(a leading axis with an extent above 1) runs the spec.

float16 / bfloat16 arithmetic is the spec's: each operation in float32, rounded once to the
result dtype (round to nearest even, by the bit rules in ..numerics: fp16 via its table, bf16 on
the bit pattern), with torch's promotion decided in Python and passed as a dtype kind; rounding is
half to even (np.rint). No FMA, no fast-math (numba's defaults here)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refquant import affine as A
from refquant.api import check_floats

from .numerics import F32, FP16_TABLE, JIT, U64, bits_f32, fp32_to_bf16_bits, fp32_to_fp16_bits

PJIT = dict(JIT, parallel=True)
INL = dict(JIT, inline="always")
KIND = {A.F32: 0, A.F16: 1, A.BF16: 2}


@njit(**INL)
def _rd(v, kind):
    """A float32 value rounded once (to nearest, ties to even) to dtype kind 0 f32, 1 f16, 2 bf16,
    returned as float32."""
    if kind == 1:
        return FP16_TABLE[fp32_to_fp16_bits(v)]
    if kind == 2:
        return bits_f32(np.int32(np.int32(fp32_to_bf16_bits(v)) << 16))
    return v


@njit(**INL)
def _clip(v, lo, hi):
    """np.clip on a float32 (inputs here are never NaN)."""
    return lo if v < lo else (hi if v > hi else v)


# --------------------------------------------------------------------------- encode kernels
# Each kernel walks a row block by block: the block's scale and zero point are read once, and the
# loop over the block's positions (unsigned offsets, a length known at run time) has no division.

@njit(**PJIT)
def _q_torchao(x, s, z, has_z, bh, bw, kx, ks, kp, kz, qmin, qmax, out):
    """inv = rd_s(1 / s); y = rint(rd_p(x * inv)); y = rd_z(y + z); clip."""
    R, K = x.shape
    for i in prange(R):
        si = i // bh
        for jb in range(s.shape[1]):
            inv = _rd(F32(1) / s[si, jb], ks)
            zv = z[si, jb] if has_z else F32(0)
            for j in range(U64(jb * bw), U64(min(jb * bw + bw, K))):
                y = np.rint(_rd(x[i, j] * inv, kp))
                if has_z:
                    y = _rd(y + zv, kz)
                out[i, j] = np.int32(_clip(y, qmin, qmax))


@njit(**PJIT)
def _q_torchao_float_zero(x, s, z, bh, bw, ks, km, k1, k2, mid, qmax, out):
    """min_val = rd_m(z - rd_s(s * mid)); y = rint(rd_2(rd_1(x - min_val) / s)); clip to [0, qmax]."""
    R, K = x.shape
    for i in prange(R):
        si = i // bh
        for jb in range(s.shape[1]):
            sv = s[si, jb]
            min_val = _rd(z[si, jb] - _rd(sv * mid, ks), km)
            for j in range(U64(jb * bw), U64(min(jb * bw + bw, K))):
                y = _rd(x[i, j] - min_val, k1)
                y = np.rint(_rd(y / sv, k2))
                out[i, j] = np.int32(_clip(y, F32(0), qmax))


@njit(**PJIT)
def _q_div(x, s, z, has_z, zx, bh, bw, kp, kzr, qmin, qmax, clip_first, out):
    """The x / scale rules. compressed-tensors (clip_first): y = rd_p(x / s) [+ rd_p(y + rd_x(z))],
    q = rint(clip(y)). AWQ / GPTQ: y = rd_p(rint(rd_p(x / s))) [+ z, rounded to kzr], clip.
    zx: the zero point's rounding before the add (compressed-tensors: to x's dtype)."""
    R, K = x.shape
    for i in prange(R):
        si = i // bh
        for jb in range(s.shape[1]):
            sv = s[si, jb]
            zv = F32(0)
            if has_z:
                zv = _rd(z[si, jb], zx) if clip_first else z[si, jb]
            for j in range(U64(jb * bw), U64(min(jb * bw + bw, K))):
                y = _rd(x[i, j] / sv, kp)
                if clip_first:
                    if has_z:
                        y = _rd(y + zv, kp)
                    out[i, j] = np.int32(np.rint(_clip(y, qmin, qmax)))
                else:
                    y = np.rint(y)
                    if has_z:
                        y = _rd(y + zv, kzr)
                    out[i, j] = np.int32(_clip(y, qmin, qmax))


# --------------------------------------------------------------------------- decode kernels

@njit(**PJIT)
def _dq_sub_mul(q, s, z, has_z, bh, bw, kd, kz, kp, kout, out):
    """d = rd_d(q); [d = rd_d(d - rd_z(z))]; d = rd_p(d * s); out = rd_out(d).
    torchao (kd = out, kz = out, kp = promote(out, s)), compressed-tensors and AWQ (kd = kp = s's
    dtype)."""
    R, K = q.shape
    for i in prange(R):
        si = i // bh
        for jb in range(s.shape[1]):
            sv = s[si, jb]
            zv = _rd(z[si, jb], kz) if has_z else F32(0)
            for j in range(U64(jb * bw), U64(min(jb * bw + bw, K))):
                d = _rd(F32(q[i, j]), kd)
                if has_z:
                    d = _rd(d - zv, kd)
                out[i, j] = _rd(_rd(d * sv, kp), kout)


@njit(**PJIT)
def _dq_gptq(q, s, z, bh, bw, out):
    """s * (q - z), float32."""
    R, K = q.shape
    for i in prange(R):
        si = i // bh
        for jb in range(s.shape[1]):
            sv = s[si, jb]
            zv = z[si, jb]
            for j in range(U64(jb * bw), U64(min(jb * bw + bw, K))):
                out[i, j] = sv * (F32(q[i, j]) - zv)


@njit(**PJIT)
def _dq_float_zero(q, s, z, bh, bw, mid, kout, out):
    """d = rd_out(q - mid); d = rd_out(d * s); d = rd_out(d + z)."""
    R, K = q.shape
    for i in prange(R):
        si = i // bh
        for jb in range(s.shape[1]):
            sv = s[si, jb]
            zv = z[si, jb]
            for j in range(U64(jb * bw), U64(min(jb * bw + bw, K))):
                d = _rd(F32(q[i, j]) - mid, kout)
                d = _rd(d * sv, kout)
                out[i, j] = _rd(d + zv, kout)


# --------------------------------------------------------------------------- the 2-D view

def _fold(shape, block):
    """(R, K), (bh, bw) for a shape and block_size, or None when a leading axis (all but the last
    two) has a block extent above 1 or a partial block would straddle a folded row boundary."""
    shape, block = tuple(int(v) for v in shape), tuple(int(v) for v in block)
    if len(shape) == 1:
        return (1, shape[0]), (1, block[0])
    if any(b != 1 for b in block[:-2]):
        return None
    lead = int(np.prod(shape[:-2], dtype=np.int64))
    R, K = shape[-2], shape[-1]
    bh, bw = block[-2], block[-1]
    if lead > 1 and R % bh:
        return None
    return (lead * R, K), (bh, bw)


def _grid(a, shape2, block2):
    """A per-block array as float32 on the 2-D view's block grid."""
    return np.ascontiguousarray(np.asarray(a).astype(np.float64).astype(np.float32)
                                if np.asarray(a).dtype.kind in "iu" else A.f32(np.asarray(a))).reshape(
        A.scale_shape(shape2, block2))


def _codes2(q, shape2):
    """The codes as they are (the kernels compile per integer dtype); bool-free integer arrays."""
    return np.ascontiguousarray(q).reshape(shape2)


def _x2(x, shape2):
    """x as float32 on the 2-D view (no copy for a contiguous float32 array)."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(shape2)


_NOZ = np.zeros((1, 1), np.float32)


# --------------------------------------------------------------------------- torchao

def quantize_torchao(x, scale, zero_point, block_size, bits, signed=True):
    who = "quantize(torchao)"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    bits = A.check_bits(bits, who)
    block = A.check_block_size(x.shape, block_size, who=who)
    f = _fold(x.shape, block)
    if f is None:
        return A.quantize_torchao(x, scale, zero_point, block_size, bits, signed)
    qmin, qmax = A.code_range(bits, signed)
    s = A.check_scale(scale, x.shape, block, who, reciprocal=True)
    z = A._check_zero(zero_point, x.shape, block, qmin, qmax, who)
    pdt = A.promote(x.dtype, s.dtype)
    zdt = pdt if z is None or z.dtype not in A.FLOAT_DTYPES else A.promote(pdt, z.dtype)
    (shape2, block2) = f
    out = np.empty(shape2, A.code_dtype(bits, signed))
    _q_torchao(_x2(x, shape2), _grid(s, shape2, block2),
               _NOZ if z is None else _grid(z, shape2, block2), z is not None, block2[0], block2[1],
               KIND[x.dtype], KIND[s.dtype], KIND[pdt], KIND[zdt], F32(qmin), F32(qmax), out)
    return out.reshape(x.shape)


def dequantize_torchao(q, scale, zero_point, block_size, output_dtype=A.F32):
    who = "dequantize(torchao)"
    q = A._check_codes(q, -(2**31), 2**31 - 1, who)
    block = A.check_block_size(q.shape, block_size, who=who)
    f = _fold(q.shape, block)
    if f is None:
        return A.dequantize_torchao(q, scale, zero_point, block_size, output_dtype)
    out_dt = A.float_dtype(output_dtype)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=A.FLOAT_DTYPES).reshape(A.scale_shape(q.shape, block))
    (shape2, block2) = f
    if zero_point is None:
        zg, kz = _NOZ, 0
    else:
        z = np.asarray(zero_point).reshape(s.shape)
        # a float zero point is cast to out (one rounding from its own dtype: exact in float32
        # first); an integer one goes through float32 (one rounding) and then to out (another)
        zg, kz = _grid(z, shape2, block2), KIND[out_dt]
    out = np.empty(shape2, np.float32)
    _dq_sub_mul(_codes2(q, shape2), _grid(s, shape2, block2), zg, zero_point is not None, block2[0],
                block2[1], KIND[out_dt], kz, KIND[A.promote(out_dt, s.dtype)], KIND[out_dt], out)
    return out.reshape(q.shape).astype(out_dt)


def quantize_torchao_float_zero(x, scale, zero_point, block_size, bits):
    who = "quantize(torchao, float zero point)"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    bits = A.check_bits(bits, who)
    block = A.check_block_size(x.shape, block_size, who=who)
    f = _fold(x.shape, block)
    if f is None:
        return A.quantize_torchao_float_zero(x, scale, zero_point, block_size, bits)
    qmin, qmax = A.code_range(bits, False)
    s = A.check_scale(scale, x.shape, block, who)
    z = check_floats(np.asarray(zero_point), who, "zero_point", dtypes=A.FLOAT_DTYPES).reshape(s.shape)
    mdt = A.promote(z.dtype, s.dtype)
    d1 = A.promote(x.dtype, mdt)
    d2 = A.promote(d1, s.dtype)
    (shape2, block2) = f
    out = np.empty(shape2, np.uint8)
    _q_torchao_float_zero(_x2(x, shape2), _grid(s, shape2, block2),
                          _grid(z, shape2, block2), block2[0], block2[1], KIND[s.dtype], KIND[mdt],
                          KIND[d1], KIND[d2], F32((qmax + qmin + 1) / 2), F32(qmax), out)
    return out.reshape(x.shape)


def dequantize_torchao_float_zero(q, scale, zero_point, block_size, bits, output_dtype=A.F32):
    who = "dequantize(torchao, float zero point)"
    bits = A.check_bits(bits, who)
    qmin, qmax = A.code_range(bits, False)
    q = A._check_codes(q, qmin, qmax, who)
    block = A.check_block_size(q.shape, block_size, who=who)
    f = _fold(q.shape, block)
    if f is None:
        return A.dequantize_torchao_float_zero(q, scale, zero_point, block_size, bits, output_dtype)
    out_dt = A.float_dtype(output_dtype)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=A.FLOAT_DTYPES).reshape(A.scale_shape(q.shape, block))
    z = check_floats(np.asarray(zero_point), who, "zero_point", dtypes=A.FLOAT_DTYPES).reshape(s.shape)
    (shape2, block2) = f
    out = np.empty(shape2, np.float32)
    _dq_float_zero(_codes2(q, shape2), _grid(s, shape2, block2), _grid(z, shape2, block2), block2[0],
                   block2[1], F32((qmax + qmin + 1) / 2), KIND[out_dt], out)
    return out.reshape(q.shape).astype(out_dt)


# --------------------------------------------------------------------------- compressed-tensors

def quantize_compressed_tensors(x, scale, zero_point, block_size, bits):
    who = "quantize(compressed-tensors)"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    bits = A.check_bits(bits, who)
    block = A.check_block_size(x.shape, block_size, pad=True, who=who)
    f = _fold(x.shape, block)
    if f is None:
        return A.quantize_compressed_tensors(x, scale, zero_point, block_size, bits)
    qmin, qmax = A.code_range(bits, True)
    s = A.check_scale(scale, x.shape, block, who)
    z = A._check_zero(zero_point, x.shape, block, qmin, qmax, who)
    pdt = A.promote(x.dtype, s.dtype)
    (shape2, block2) = f
    out = np.empty(shape2, np.int8)
    _q_div(_x2(x, shape2), _grid(s, shape2, block2),
           _NOZ if z is None else _grid(z, shape2, block2), z is not None, KIND[x.dtype], block2[0],
           block2[1], KIND[pdt], KIND[pdt], F32(qmin), F32(qmax), True, out)
    return out.reshape(x.shape)


def dequantize_compressed_tensors(q, scale, zero_point, block_size, dtype=None):
    who = "dequantize(compressed-tensors)"
    q = A._check_codes(q, -128, 127, who)
    block = A.check_block_size(q.shape, block_size, pad=True, who=who)
    f = _fold(q.shape, block)
    if f is None:
        return A.dequantize_compressed_tensors(q, scale, zero_point, block_size, dtype)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=A.FLOAT_DTYPES).reshape(A.scale_shape(q.shape, block))
    sdt = s.dtype
    out_dt = sdt if dtype is None else A.float_dtype(dtype)
    (shape2, block2) = f
    zg = _NOZ if zero_point is None else _grid(np.asarray(zero_point).reshape(s.shape), shape2, block2)
    out = np.empty(shape2, np.float32)
    ks = KIND[sdt]
    _dq_sub_mul(_codes2(q, shape2), _grid(s, shape2, block2), zg, zero_point is not None, block2[0],
                block2[1], ks, ks, ks, KIND[out_dt], out)
    return out.reshape(q.shape).astype(out_dt)


# --------------------------------------------------------------------------- GPTQ

def quantize_gptq(x, scale, zero, block_size, bits):
    who = "quantize(gptq)"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    bits = A.check_bits(bits, who)
    block = A.check_block_size(x.shape, block_size, who=who)
    f = _fold(x.shape, block)
    if f is None:
        return A.quantize_gptq(x, scale, zero, block_size, bits)
    s = A.check_scale(np.asarray(scale, A.F32), x.shape, block, who)
    z = A._check_zero(zero, x.shape, block, -np.inf, np.inf, who)
    (shape2, block2) = f
    out = np.empty(shape2, np.uint8)
    _q_div(_x2(x, shape2), _grid(s, shape2, block2), _grid(z, shape2, block2),
           True, 0, block2[0], block2[1], 0, 0, F32(0), F32(2**bits - 1), False, out)
    return out.reshape(x.shape)


def dequantize_gptq(q, scale, zero, block_size):
    who = "dequantize(gptq)"
    q = A._check_codes(q, 0, 255, who)
    block = A.check_block_size(q.shape, block_size, who=who)
    f = _fold(q.shape, block)
    if f is None:
        return A.dequantize_gptq(q, scale, zero, block_size)
    s = np.asarray(scale, A.F32).reshape(A.scale_shape(q.shape, block))
    z = A.f32(np.asarray(zero)).reshape(s.shape)
    (shape2, block2) = f
    out = np.empty(shape2, np.float32)
    _dq_gptq(_codes2(q, shape2), _grid(s, shape2, block2), _grid(z, shape2, block2), block2[0], block2[1], out)
    return out.reshape(q.shape)


# --------------------------------------------------------------------------- AWQ

def quantize_awq(x, scale, zero, block_size, bits):
    who = "quantize(awq)"
    x = check_floats(x, who, dtypes=A.FLOAT_DTYPES)
    bits = A.check_bits(bits, who)
    block = A.check_block_size(x.shape, block_size, who=who)
    f = _fold(x.shape, block)
    if f is None:
        return A.quantize_awq(x, scale, zero, block_size, bits)
    signed = zero is None
    qmin, qmax = A.code_range(bits, signed)
    s = A.check_scale(scale, x.shape, block, who)
    z = A._check_zero(zero, x.shape, block, qmin, qmax, who)
    dt = A.promote(x.dtype, s.dtype)
    (shape2, block2) = f
    out = np.empty(shape2, A.code_dtype(bits, signed))
    _q_div(_x2(x, shape2), _grid(s, shape2, block2),
           _NOZ if z is None else _grid(z, shape2, block2), z is not None, 0, block2[0], block2[1],
           KIND[dt], KIND[dt], F32(qmin), F32(qmax), False, out)
    return out.reshape(x.shape)


def dequantize_awq(q, scale, zero, block_size):
    who = "dequantize(awq)"
    q = A._check_codes(q, -128, 255, who)
    block = A.check_block_size(q.shape, block_size, who=who)
    f = _fold(q.shape, block)
    if f is None:
        return A.dequantize_awq(q, scale, zero, block_size)
    s = check_floats(np.asarray(scale), who, "scale", dtypes=A.FLOAT_DTYPES).reshape(A.scale_shape(q.shape, block))
    dt = s.dtype
    (shape2, block2) = f
    zg = _NOZ if zero is None else _grid(np.asarray(zero).reshape(s.shape), shape2, block2)
    out = np.empty(shape2, np.float32)
    k = KIND[dt]
    # the zero is subtracted as given (x's dtype, exact in float32), the difference rounded to dt
    _dq_sub_mul(_codes2(q, shape2), _grid(s, shape2, block2), zg, zero is not None, block2[0], block2[1],
                k, 0, k, k, out)
    return out.reshape(q.shape).astype(dt)


# --------------------------------------------------------------------------- the spec's entry points

# No row-format tables (QUANTIZE/DEQUANTIZE): the affine conventions are not registry formats; they
# are reached through these functions, by convention name as in refquant.affine.CONVENTIONS (the
# torchao float zero-point domain through its own pair of functions, as in the spec).
ENCODE = {"torchao": quantize_torchao, "compressed-tensors": quantize_compressed_tensors,
          "gptq": quantize_gptq, "awq": quantize_awq}
DECODE = {"torchao": dequantize_torchao, "compressed-tensors": dequantize_compressed_tensors,
          "gptq": dequantize_gptq, "awq": dequantize_awq}


def quantize(x, scale, zero_point, block_size, bits, convention: str = "torchao", **options):
    """refquant.affine.quantize, same arguments."""
    A.get_convention(convention)
    return ENCODE[convention](x, scale, zero_point, block_size, bits, **options)


def dequantize(q, scale, zero_point, block_size, convention: str = "torchao", **options):
    """refquant.affine.dequantize, same arguments."""
    A.get_convention(convention)
    return DECODE[convention](q, scale, zero_point, block_size, **options)


def choose_qparams(x, block_size, bits, convention: str = "torchao", **options):
    """The spec's own (per-block reductions and a formula per block: not a hot loop)."""
    return A.choose_qparams(x, block_size, bits, convention, **options)

