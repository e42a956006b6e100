"""What ggml's CPU backend computes for the forward's elementwise operations, bit for bit.

llama.cpp builds ggml for the machine it runs on (GGML_NATIVE), and on x86 the exponential
inside SiLU and softmax is not the C library's expf but a vector polynomial
(ggml-cpu/vec.h `ggml_v_expf`, after ARM's optimized-routines): one version for AVX-512
(AVX512F and AVX512DQ), another for AVX2 with FMA. They agree with expf to about 1.5 ulp, and
with each other nearly everywhere, but not bit for bit. `isa()` names the one this machine's
build uses; the functions take it as an argument so that another machine's can be reproduced.

    ggml_v_expf(x)     r = 0x1.8p23; z = fma(x, log2(e), r); n = z - r    (n = round(x log2 e))
                       b = fnma(n, 0x1.7f7d1cp-20, fnma(n, 0x1.62e4p-1, x))   (x - n ln 2)
                       u = b*b
                       avx512: j = fma(fma(fma(c4, b, c3), u, fma(c2, b, c1)), u, fma(c0, b, 1))
                               exp = j * 2^n (scalef); |n| > 192: 0 if n <= 0 else inf
                       avx2:   j = fma(fma(fma(c4, b, c3), u, fma(c2, b, c1)), u, c0*b)
                               k = 2^n built in the exponent bits; exp = fma(j, k, k);
                               |n| > 126: split 2^n in two factors; |n| > 192: 0 or inf
    silu(x)            x / (1 + ggml_v_expf(0 - x))                     (ggml_v_silu)
    softmax(row)       w = row * scale + mask; m = max(w); e = ggml_v_expf(w - m) in vectors of
                       16 (avx512) or 8 (avx2) lanes, each vector's lanes summed in float32 by
                       the reduction tree of the intrinsic, the vector sums accumulated in
                       double; out = e * (float)(1.0 / sum)              (ggml_vec_soft_max_f32)

The row lengths llama.cpp's attention sees are multiples of the vector width (the KV cache is
padded and its unused cells masked with -inf, whose exponential is 0), so no scalar tail runs;
`softmax` pads a row with -inf the same way.
"""
from __future__ import annotations

import numpy as np

from ..numerics import fma_f32

F32 = np.float32
_U32 = np.uint32


def _hex(s: str) -> np.float32:
    return F32(float.fromhex(s))


_R = _hex("0x1.8p23")
_LOG2E = _hex("0x1.715476p+0")
_LN2_HI, _LN2_LO = _hex("0x1.62e4p-1"), _hex("0x1.7f7d1cp-20")
_C = [_hex(s) for s in ("0x1.ffffecp-1", "0x1.fffdb6p-2", "0x1.555e66p-3", "0x1.573e2ep-5",
                        "0x1.0e4020p-7")]


def isa() -> str:
    """'avx512' or 'avx2': the ggml_v_expf a native x86 build of ggml uses on this machine."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        flags = set()
    if {"avx512f", "avx512dq"} <= flags:
        return "avx512"
    return "avx2"


def _bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, F32).view(_U32)


def _float(b: np.ndarray) -> np.ndarray:
    return np.asarray(b, _U32).view(F32)


def ggml_v_expf(x: np.ndarray, isa_name: str) -> np.ndarray:
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        z = fma_f32(x, _LOG2E, _R)
        n = (z - _R).astype(F32)
        b = fma_f32(-n, _LN2_LO, fma_f32(-n, _LN2_HI, x))
        u = (b * b).astype(F32)
        poly = fma_f32(fma_f32(_C[4], b, _C[3]), u, fma_f32(_C[2], b, _C[1]))
        big = np.abs(n) > F32(192)
        if isa_name == "avx512":
            j = fma_f32(poly, u, fma_f32(_C[0], b, F32(1)))
            nn = np.where(np.isfinite(n), n, 0).astype(np.int32)
            res = np.ldexp(j, np.clip(nn, -400, 400)).astype(F32)             # _mm512_scalef_ps
            return np.where(big, np.where(n <= 0, F32(0), F32(np.inf)), res).astype(F32)
        if isa_name != "avx2":
            raise ValueError(f"unknown ggml_v_expf variant {isa_name!r}: avx512 or avx2")
        j = fma_f32(poly, u, (_C[0] * b).astype(F32))
        e = (_bits(z) << _U32(23)).astype(_U32)
        k = _float((e + _bits(F32(1))).astype(_U32))
        normal = fma_f32(j, k, k)
        c = np.abs(n) > F32(126)
        g = np.where(n <= 0, _U32(0x82000000), _U32(0)).astype(_U32)
        s1 = _float((g + _U32(0x7F000000)).astype(_U32))
        s2 = _float((e - g).astype(_U32))
        scaled = (fma_f32(s2, j, s2) * s1).astype(F32)
        return np.where(big, (s1 * s1).astype(F32), np.where(c, scaled, normal)).astype(F32)


def silu(x: np.ndarray, isa_name: str) -> np.ndarray:
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        return (x / (F32(1) + ggml_v_expf((F32(0) - x).astype(F32), isa_name))).astype(F32)


def _lane_sum(v: np.ndarray, isa_name: str) -> np.ndarray:
    """The float32 sum of each vector's lanes (last axis), in the intrinsic's tree."""
    if isa_name == "avx512":        # _mm512_reduce_add_ps: 512 -> 256 -> 128 -> 64 -> 32 bits
        v = (v[..., 8:] + v[..., :8]).astype(F32)
    v = (v[..., 4:] + v[..., :4]).astype(F32)    # avx2: extractf128(hi) + castps256_ps128(lo)
    v = (v[..., 2:] + v[..., :2]).astype(F32)    # movehl
    return (v[..., 1] + v[..., 0]).astype(F32)   # movehdup / last shuffle


def softmax(w: np.ndarray, isa_name: str) -> np.ndarray:
    """Softmax over the last axis of w (already scaled and masked), as ggml's soft_max."""
    w = np.asarray(w, F32)
    width = 16 if isa_name == "avx512" else 8
    n = w.shape[-1]
    pad = -n % width
    if pad:
        w = np.concatenate([w, np.full(w.shape[:-1] + (pad,), -np.inf, F32)], axis=-1)
    m = np.max(w, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = ggml_v_expf((w - m).astype(F32), isa_name)
    vec = e.reshape(e.shape[:-1] + (-1, width))
    partial = _lane_sum(vec, isa_name).astype(np.float64)
    total = np.zeros(e.shape[:-1], np.float64)
    for i in range(partial.shape[-1]):           # sum += (ggml_float) reduce(val), in order
        total = total + partial[..., i]
    scale = (1.0 / total).astype(F32)
    return (e * scale[..., None]).astype(F32)[..., :n]
