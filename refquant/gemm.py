"""What a quantized matmul must compute, and the error it may make (spec/gemm.md).

Y = A @ W^T with A (M, K) activations and W (N, K) weights held in an encoded form. Two kinds:

* Integer schemes (W8A8): the integer part is exact and the float epilogue is fixed to a few
  float32 roundings in a stated order, so every implementation must agree bit for bit.
* Float-accumulating schemes (W4A16, FP8): the operands are dequantized EXACTLY (in float64),
  R = A_deq @ W_deq^T is the reference, S = |A_deq| @ |W_deq|^T its magnitude, and an
  implementation that accumulates in float32 must satisfy, elementwise,

      |Y - R| <= gamma(h + p) * S * (1 + u_out) + u_out * |R| + gamma64(K + 1) * S

  where h is the depth of its summation tree (the number of float additions on the longest
  path to one output), p the float roundings inside one term, u_out the unit roundoff of the
  output dtype (0 when the float32 accumulator is the output), and the last term is the float64
  reference's own error. Like every gamma bound it assumes no float32 intermediate underflows
  (a subnormal partial result loses relative accuracy) or overflows. Every summation order has h <= K, so gamma(K + p) is the hard cap that
  holds whatever the order; `depth()` gives the tighter h of the common orders.

The schemes' layouts are defined here, self-contained:

  W4A16  codes (N, K) uint8 in [0, 15], scales (N, K/G) float32, zeros (N, K/G) uint8 in
         [0, 15], g_idx (K,) int32: column k belongs to group g_idx[k] (act-order: any
         permutation of the groups; the trivial order is g_idx[k] = k // G).
         W[n, k] = (codes[n, k] - zeros[n, g]) * scales[n, g], g = g_idx[k].
  W8A8   codes (N, K) int8, scales (N,) float32 (per output channel); activations quantized
         per token: s_a = amax/127, q = rint(a / s_a) (half to even), 0 where s_a = 0.
         acc = sum_k q_a * q_w in int32 (exact), Y = (float32(acc) * s_a[m]) * s_w[n].
  FP8    codes (N, K) uint8 holding float8_e4m3fn; scale () per tensor, (N,) per channel, or
         (ceil(N/128), ceil(K/128)) per 128x128 block. W[n, k] = e4m3(codes[n, k]) * scale.
         Activations as float32, or (activation="per_token") quantized to e4m3fn per token:
         s_a = amax/448, codes = e4m3(clip(a / s_a, -448, 448)) rounded to nearest even.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InputError

F32 = np.float32
FP8_BLOCK = 128
E4M3_MAX = 448.0
W8A8_MAX_K = (2**31 - 1) // (128 * 128)  # int32 accumulation cannot overflow below this


# ---------------------------------------------------------------------------------------------
# The bound
# ---------------------------------------------------------------------------------------------

def unit_roundoff(dtype) -> float:
    """u = 2^-p for a float type with p significand bits (round to nearest)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    table = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
    if name not in table:
        raise InputError(f"no unit roundoff for output dtype {name}; known: {', '.join(table)}")
    return table[name]


def gamma(k: int, dtype=np.float32) -> float:
    """Higham's gamma_k = k*u / (1 - k*u): |prod (1 + d_i)^(+-1) - 1| <= gamma_k for k roundings."""
    u = unit_roundoff(dtype)
    if k * u >= 1:
        raise InputError(f"gamma({k}) is undefined for {np.dtype(dtype).name}: k*u >= 1")
    return k * u / (1 - k * u)


def depth(order: str, K: int, lanes: int = 1, block: int = 1) -> int:
    """h: float additions on the longest path of the sum tree of one output, for K terms.

    "sequential"  acc += t[k], k = 0..K-1                               h = K
    "lanes"       `lanes` strided accumulators, then a pairwise tree   h = ceil(K/lanes) + ceil(log2 lanes)
    "blocked"     sequential inside blocks of `block`, each block's sum added to a sequential
                  total (optionally scaled: one more rounding, counted in p)  h = block + ceil(K/block)
    "blocked_lanes"  blocks of `block`, `lanes` accumulators inside each, tree, then a sequential
                  total over blocks                                    h = ceil(block/lanes) + ceil(log2 lanes) + ceil(K/block)
    "any"         whatever the order                                   h = K
    """
    import math
    if order in ("sequential", "any"):
        return K
    if order == "lanes":
        return -(-K // lanes) + math.ceil(math.log2(lanes))
    if order == "blocked":
        return block + -(-K // block)
    if order == "blocked_lanes":
        return -(-block // lanes) + math.ceil(math.log2(lanes)) + -(-K // block)
    raise InputError(f"unknown accumulation order {order!r}")


def error_bound(R: np.ndarray, S: np.ndarray, K: int, h: int | None = None, products: int = 1,
                out_dtype=np.float32) -> np.ndarray:
    """The elementwise bound on |Y - R| (module docstring). h defaults to the hard cap K."""
    h = K if h is None else h
    u_out = 0.0 if np.dtype(out_dtype) == np.float32 else unit_roundoff(out_dtype)
    g = gamma(h + products)
    return g * S * (1 + u_out) + u_out * np.abs(R) + gamma(K + 1, np.float64) * S


def within_bound(Y: np.ndarray, R: np.ndarray, S: np.ndarray, K: int, **kw) -> np.ndarray:
    """Elementwise: does Y meet the bound? (Y is compared in float64; inf/NaN never do.)"""
    Y = np.asarray(Y, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(Y) & (np.abs(Y - R) <= error_bound(R, S, K, **kw))


def reference(a_deq: np.ndarray, w_deq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, S) = (A @ W^T, |A| @ |W|^T) in float64 from exactly dequantized operands."""
    a = np.asarray(a_deq, dtype=np.float64)
    w = np.asarray(w_deq, dtype=np.float64)
    return a @ w.T, np.abs(a) @ np.abs(w).T


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def _check_acts(a, K: int, scheme: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2:
        raise InputError(f"{scheme}: activations must be a float32 array (M, K), got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if a.shape[1] != K:
        raise InputError(f"{scheme}: activations have K = {a.shape[1]}, weights K = {K}")
    bad = ~np.isfinite(a)
    if bad.any():
        m, k = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{scheme}: activation [{m}, {k}] is {a[m, k]!r}; only finite values are accepted")
    return a


def _check_array(x, name: str, scheme: str, dtype, shape) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.dtype(dtype) or x.shape != shape:
        raise InputError(f"{scheme}: {name} must be {np.dtype(dtype).name} of shape {shape}, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    return np.ascontiguousarray(x)


def _check_finite(x, name, scheme):
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{scheme}: {name}{list(idx)} is {x[idx]!r}; scales must be finite")


# ---------------------------------------------------------------------------------------------
# W4A16: group-wise INT4 weights (act-order g_idx), float activations
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class W4A16Weight:
    codes: np.ndarray   # (N, K) uint8, 0..15
    scales: np.ndarray  # (N, K // G) float32
    zeros: np.ndarray   # (N, K // G) uint8, 0..15
    g_idx: np.ndarray   # (K,) int32, 0 .. K//G - 1

    def check(self) -> "W4A16Weight":
        c = self.codes
        if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 2:
            raise InputError("W4A16: codes must be a uint8 array (N, K)")
        N, K = c.shape
        if not isinstance(self.scales, np.ndarray) or self.scales.ndim != 2 or self.scales.shape[0] != N:
            raise InputError(f"W4A16: scales must be (N, K/G) = ({N}, groups)")
        ng = self.scales.shape[1]
        if ng == 0 or K % ng:
            raise InputError(f"W4A16: {ng} groups do not divide K = {K}")
        _check_array(self.scales, "scales", "W4A16", np.float32, (N, ng))
        _check_finite(self.scales, "scales", "W4A16")
        _check_array(self.zeros, "zeros", "W4A16", np.uint8, (N, ng))
        _check_array(self.g_idx, "g_idx", "W4A16", np.int32, (K,))
        if c.max(initial=0) > 15 or self.zeros.max(initial=0) > 15:
            raise InputError("W4A16: codes and zeros must lie in [0, 15]")
        if self.g_idx.min(initial=0) < 0 or self.g_idx.max(initial=0) >= ng:
            raise InputError(f"W4A16: g_idx values must lie in [0, {ng})")
        return self

    @property
    def shape(self):
        return self.codes.shape


def quantize_w4a16(w: np.ndarray, group_size: int, g_idx: np.ndarray | None = None) -> W4A16Weight:
    """Round-to-nearest asymmetric INT4 per group (a simple encoder for tests and benchmarks):
    scale = (max - min)/15 over the group's columns, zero = rint(-min/scale), code = rint(w/scale) + zero."""
    w = np.asarray(w, dtype=F32)
    N, K = w.shape
    if K % group_size:
        raise InputError(f"W4A16: group size {group_size} does not divide K = {K}")
    ng = K // group_size
    g_idx = (np.arange(K) // group_size).astype(np.int32) if g_idx is None else np.asarray(g_idx, np.int32)
    scales = np.zeros((N, ng), F32)
    zeros = np.zeros((N, ng), np.uint8)
    codes = np.zeros((N, K), np.uint8)
    with np.errstate(all="ignore"):
        for g in range(ng):
            cols = np.nonzero(g_idx == g)[0]
            if cols.size == 0:
                scales[:, g] = 1
                continue
            wg = w[:, cols]
            lo = np.minimum(wg.min(axis=1), 0)
            hi = np.maximum(wg.max(axis=1), 0)
            s = ((hi - lo) / F32(15)).astype(F32)
            s = np.where(s > 0, s, F32(1))
            z = np.clip(np.rint(-lo / s), 0, 15)
            scales[:, g] = s
            zeros[:, g] = z.astype(np.uint8)
            codes[:, cols] = np.clip(np.rint(wg / s[:, None]) + z[:, None], 0, 15).astype(np.uint8)
    return W4A16Weight(codes, scales, zeros, g_idx)


def dequantize_w4a16(w: W4A16Weight) -> np.ndarray:
    """W exactly, in float64: (code - zero) has 4 bits, the scale 24, the product 28."""
    w.check()
    g = w.g_idx.astype(np.int64)
    diff = w.codes.astype(np.int64) - w.zeros[:, g].astype(np.int64)
    return diff.astype(np.float64) * w.scales[:, g].astype(np.float64)


def w4a16_reference(a: np.ndarray, w: W4A16Weight) -> tuple[np.ndarray, np.ndarray]:
    """(R, S) for Y = A @ W^T; each product a * (code - zero) * scale is exact in float64
    (24 + 4 + 24 bits)."""
    w.check()
    _check_acts(a, w.shape[1], "W4A16")
    return reference(a, dequantize_w4a16(w))


def w4a16_matmul(a: np.ndarray, w: W4A16Weight) -> np.ndarray:
    """The spec's result: R rounded to float32."""
    return w4a16_reference(a, w)[0].astype(F32)


# ---------------------------------------------------------------------------------------------
# W8A8: per-channel int8 weights, per-token int8 activations, int32 accumulation
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class W8A8Weight:
    codes: np.ndarray   # (N, K) int8
    scales: np.ndarray  # (N,) float32

    def check(self) -> "W8A8Weight":
        c = self.codes
        if not isinstance(c, np.ndarray) or c.dtype != np.int8 or c.ndim != 2:
            raise InputError("W8A8: codes must be an int8 array (N, K)")
        N, K = c.shape
        if K > W8A8_MAX_K:
            raise InputError(f"W8A8: K = {K} could overflow the int32 accumulator (K <= {W8A8_MAX_K})")
        _check_array(self.scales, "scales", "W8A8", np.float32, (N,))
        _check_finite(self.scales, "scales", "W8A8")
        return self

    @property
    def shape(self):
        return self.codes.shape


def quantize_int8_symmetric(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: s = amax/127 (float32), q = rint(x / s) half to even, clipped to [-127, 127];
    q = 0 where s = 0. Used for activations (per token) and weights (per channel)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(x), axis=1)
        s = (amax / F32(127)).astype(F32)
        safe = np.where(s != 0, s, F32(1))
        q = np.where(s[:, None] != 0, np.rint(x / safe[:, None]), F32(0))
    return np.clip(q, -127, 127).astype(np.int8), s


def quantize_w8a8_weight(w: np.ndarray) -> W8A8Weight:
    codes, scales = quantize_int8_symmetric(w)
    return W8A8Weight(codes, scales)


def w8a8_accumulate(qa: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """acc[m, n] = sum_k qa[m, k] * qw[n, k]: exact, int32 (K <= W8A8_MAX_K cannot overflow)."""
    return (qa.astype(np.int64) @ qw.astype(np.int64).T).astype(np.int32)


def w8a8_epilogue(acc: np.ndarray, sa: np.ndarray, sw: np.ndarray) -> np.ndarray:
    """Y = (float32(acc) * s_a[m]) * s_w[n]: int32 -> float32 rounds to nearest even above 2^24."""
    with np.errstate(all="ignore"):
        return ((acc.astype(F32) * sa[:, None]) * sw[None, :]).astype(F32)


def w8a8_matmul(a: np.ndarray, w: W8A8Weight) -> np.ndarray:
    """Bit-exact definition: per-token quantization, exact int32 dot, two-rounding epilogue."""
    w.check()
    _check_acts(a, w.shape[1], "W8A8")
    qa, sa = quantize_int8_symmetric(a)
    return w8a8_epilogue(w8a8_accumulate(qa, w.codes), sa, w.scales)


# ---------------------------------------------------------------------------------------------
# FP8: e4m3fn weights with per-tensor, per-channel or 128x128-block scales
# ---------------------------------------------------------------------------------------------

def e4m3_decode_table() -> np.ndarray:
    """The 256 values of float8_e4m3fn as float32 (ml_dtypes decodes; 0x7F and 0xFF are NaN)."""
    import ml_dtypes
    return np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)


def e4m3_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> float8_e4m3fn codes, round to nearest even (ml_dtypes), after clipping to +-448."""
    import ml_dtypes
    x = np.clip(np.asarray(x, dtype=F32), F32(-E4M3_MAX), F32(E4M3_MAX))
    return x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


@dataclass(frozen=True)
class FP8Weight:
    codes: np.ndarray   # (N, K) uint8, float8_e4m3fn bits
    scale: np.ndarray   # () | (N,) | (ceil(N/128), ceil(K/128)) float32

    @property
    def granularity(self) -> str:
        return {0: "tensor", 1: "channel", 2: "block"}[np.ndim(self.scale)]

    def check(self) -> "FP8Weight":
        c = self.codes
        if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 2:
            raise InputError("FP8: codes must be a uint8 array (N, K) of float8_e4m3fn bits")
        N, K = c.shape
        shapes = {0: (), 1: (N,), 2: (-(-N // FP8_BLOCK), -(-K // FP8_BLOCK))}
        if not isinstance(self.scale, np.ndarray) or self.scale.ndim not in shapes:
            raise InputError("FP8: scale must be a float32 array of shape (), (N,) or (N/128, K/128)")
        _check_array(self.scale, "scale", "FP8", np.float32, shapes[self.scale.ndim])
        _check_finite(self.scale.reshape(-1), "scale", "FP8")
        nan = (c & 0x7F) == 0x7F
        if nan.any():
            n, k = (int(i) for i in np.argwhere(nan)[0])
            raise InputError(f"FP8: code [{n}, {k}] is 0x{c[n, k]:02X}, a NaN of float8_e4m3fn")
        return self

    @property
    def shape(self):
        return self.codes.shape

    def full_scale(self) -> np.ndarray:
        """The scale of every weight, (N, K) float32."""
        N, K = self.codes.shape
        s = self.scale
        if s.ndim == 0:
            return np.full((N, K), s, F32)
        if s.ndim == 1:
            return np.repeat(s[:, None], K, axis=1)
        return np.repeat(np.repeat(s, FP8_BLOCK, axis=0), FP8_BLOCK, axis=1)[:N, :K]


def quantize_fp8_weight(w: np.ndarray, granularity: str = "block") -> FP8Weight:
    """scale = amax/448 over the tensor, each row or each 128x128 block; codes = e4m3(w/scale)."""
    w = np.asarray(w, dtype=F32)
    N, K = w.shape
    with np.errstate(all="ignore"):
        if granularity == "tensor":
            s = np.asarray(np.max(np.abs(w)) / F32(E4M3_MAX), F32)
        elif granularity == "channel":
            s = (np.max(np.abs(w), axis=1) / F32(E4M3_MAX)).astype(F32)
        elif granularity == "block":
            nb, kb = -(-N // FP8_BLOCK), -(-K // FP8_BLOCK)
            s = np.zeros((nb, kb), F32)
            for i in range(nb):
                for j in range(kb):
                    blk = w[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK]
                    s[i, j] = np.max(np.abs(blk)) / F32(E4M3_MAX)
        else:
            raise InputError(f"FP8: granularity must be tensor, channel or block, not {granularity!r}")
        s = np.where(s > 0, s, F32(1)).astype(F32)
        tmp = FP8Weight(np.zeros((N, K), np.uint8), s)
        codes = e4m3_encode(w / tmp.full_scale())
    return FP8Weight(codes, s)


def quantize_fp8_per_token(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activations per token: s = amax/448 (1 where amax = 0), codes = e4m3(clip(a / s))."""
    a = np.asarray(a, dtype=F32)
    with np.errstate(all="ignore"):
        s = (np.max(np.abs(a), axis=1) / F32(E4M3_MAX)).astype(F32)
        s = np.where(s > 0, s, F32(1)).astype(F32)
        return e4m3_encode(a / s[:, None]), s


FP8_ACTIVATIONS = ("none", "per_token")


def fp8_dequantized_activations(a: np.ndarray, activation: str) -> np.ndarray:
    """The activations as the matmul uses them, float64 exactly."""
    if activation == "none":
        return a.astype(np.float64)
    if activation == "per_token":
        codes, s = quantize_fp8_per_token(a)
        return e4m3_decode_table()[codes].astype(np.float64) * s[:, None].astype(np.float64)
    raise InputError(f"FP8: activation must be one of {', '.join(FP8_ACTIVATIONS)}, not {activation!r}")


def dequantize_fp8(w: FP8Weight) -> np.ndarray:
    """W exactly in float64: e4m3 (4 significant bits) * scale (24 bits)."""
    w.check()
    return e4m3_decode_table()[w.codes].astype(np.float64) * w.full_scale().astype(np.float64)


def fp8_reference(a: np.ndarray, w: FP8Weight, activation: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(R, S). With float activations each product is exact in float64 (24 + 4 + 24 bits); with
    FP8 activations it has 56 bits and rounds once in float64, inside gamma64(K + 1)."""
    w.check()
    _check_acts(a, w.shape[1], "FP8")
    return reference(fp8_dequantized_activations(a, activation), dequantize_fp8(w))


def fp8_matmul(a: np.ndarray, w: FP8Weight, activation: str = "none") -> np.ndarray:
    return fp8_reference(a, w, activation)[0].astype(F32)


# ---------------------------------------------------------------------------------------------
# The schemes, by name (the keys of the backends' "matmul" operation)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scheme:
    name: str
    exact: bool                      # bit-exact (integer) or bounded (float accumulation)
    matmul: Callable                 # (a, weight, **options) -> (M, N) float32, the spec's result
    reference: Callable | None      # (a, weight, **options) -> (R, S) for bounded schemes
    options: dict                    # option name -> allowed values
    products: int                    # float roundings inside one term (p of the bound)


SCHEMES = {
    "W4A16": Scheme("W4A16", False, w4a16_matmul, w4a16_reference, {}, 2),
    "W8A8": Scheme("W8A8", True, w8a8_matmul, None, {}, 0),
    "FP8": Scheme("FP8", False, fp8_matmul, fp8_reference, {"activation": FP8_ACTIVATIONS}, 2),
}


def get_scheme(name) -> Scheme:
    if isinstance(name, Scheme):
        return name
    s = SCHEMES.get(str(name).upper())
    if s is None:
        raise InputError(f"unknown matmul scheme {name!r}; known: {', '.join(SCHEMES)}")
    return s


# ---------------------------------------------------------------------------------------------
# The bound for a result rounded to a narrower type (LLM.int8()'s float16/bfloat16 outputs)
# ---------------------------------------------------------------------------------------------

SMALLEST_SUBNORMAL = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}


def fp_accumulation_bound(A, W, out_dtype: str, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, bound) for Y ~ A @ W.T: A (M, K) and W (N, K) the exactly dequantized operands,
    summed in float32 in any order (the hard cap gamma(K + 1)), then rounded to `out_dtype`
    ("float32", "float16", "bfloat16"). Half the output type's smallest subnormal is added for
    results that underflow there (the no-underflow assumption of the gamma bound fails exactly
    for those)."""
    if out_dtype not in SMALLEST_SUBNORMAL:
        raise InputError(f"out_dtype must be one of {sorted(SMALLEST_SUBNORMAL)}, got {out_dtype!r}")
    R, S = reference(A, W)
    u_out = unit_roundoff(out_dtype)
    bound = (gamma(K + 1) * S * (1 + u_out) + u_out * np.abs(R) + gamma(K + 1, np.float64) * S
             + SMALLEST_SUBNORMAL[out_dtype] / 2)
    return R, bound
