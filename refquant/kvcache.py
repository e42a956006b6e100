"""KV-cache quantization and what attention computes from a quantized cache.

A layer's cache is K and V of shape (heads, tokens, head_dim), float32. A scheme encodes a cache
and decodes it back; attention is then computed from the decoded cache in float64 and compared
with float64 attention on the unquantized cache, so the error a scheme costs is measured, not
assumed.

    INT8 per-tensor / per-head / per-token    compressed-tensors' symmetric INT8 rule
                                              (scale = absmax / 127.5, round half to even,
                                              codes clamped to [-128, 127])
    FP8 (E4M3) per-tensor / per-head / per-token  compressed-tensors' FP8 rule (absmax / 448)
        per-tensor: one k_scale / v_scale (vLLM's FP8 cache); per-head: compressed-tensors'
        ATTN_HEAD strategy, scale (heads, 1, 1); per-token: one scale per (head, token) row.
    llama.cpp cache types (--cache-type-k / -v): F32 F16 BF16 Q8_0 Q4_0 Q4_1 IQ4_NL Q5_0 Q5_1,
        each row of head_dim values quantized as a ggml row (refquant.quantize). The list comes
        from the registry: a type joins as soon as its format is registered.

Attention (one query block against the cache, no mask): scores = q k^T / sqrt(head_dim),
p = softmax(scores) over tokens, out = p v; all in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import affine as A
from . import fp8_scaling as F8
from .errors import FormatError, InputError

# The cache types llama.cpp accepts for --cache-type-k / --cache-type-v (common/arg.cpp).
LLAMA_CPP_CACHE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1")
GRANULARITIES = ("per-tensor", "per-head", "per-token")


@dataclass(frozen=True)
class KVScheme:
    name: str
    family: str                                   # "int8", "fp8", "llama.cpp"
    quantize: Callable[[np.ndarray], object]      # (H, T, D) float32 -> encoded cache
    dequantize: Callable[[object], np.ndarray]    # encoded cache -> (H, T, D) float32
    bits_per_value: Callable[[tuple], float]      # cache shape -> stored bits per value


def _block(shape, granularity):
    H, T, D = shape
    return {"per-tensor": (H, T, D), "per-head": (1, T, D), "per-token": (1, 1, D)}[granularity]


def _int8_scheme(g):
    def q(x):
        b = _block(x.shape, g)
        s, z = A.choose_qparams_compressed_tensors(x, b, 8, symmetric=True)
        return A.quantize_compressed_tensors(x, s, z, b, 8), s, z

    def dq(enc):
        codes, s, z = enc
        return A.dequantize_compressed_tensors(codes, s, z, _block(codes.shape, g))

    return KVScheme(f"int8-{g}", "int8", q, dq, lambda shp: 8 + 32 * _nscales(shp, g) / np.prod(shp))


def _fp8_scheme(g):
    def q(x):
        b = _block(x.shape, g)
        s = F8.choose_scale(x, b, "compressed-tensors")
        return F8.quantize(x, s, b, "compressed-tensors"), s

    def dq(enc):
        codes, s = enc
        return F8.dequantize(codes, s, _block(codes.shape, g), "compressed-tensors")

    return KVScheme(f"fp8-{g}", "fp8", q, dq, lambda shp: 8 + 32 * _nscales(shp, g) / np.prod(shp))


def _nscales(shape, g):
    return int(np.prod(A.scale_shape(shape, _block(shape, g))))


def _ggml_scheme(fmt):
    import refquant

    def q(x):
        H, T, D = x.shape
        if D % fmt.block_size:
            raise InputError(f"kv cache type {fmt.name}: head_dim {D} is not a multiple of its block size "
                             f"{fmt.block_size}")
        return refquant.quantize(np.ascontiguousarray(x.reshape(H * T, D)), fmt.name).reshape(H, T, -1)

    def dq(data):
        H, T, _ = data.shape
        return refquant.dequantize(np.ascontiguousarray(data.reshape(H * T, -1)), fmt.name).reshape(H, T, -1)

    return KVScheme(fmt.name, "llama.cpp", q, dq, lambda shp: fmt.bits_per_weight)


def llama_cpp_cache_types() -> list[str]:
    """The llama.cpp cache types whose formats are registered (in llama.cpp's order)."""
    from .registry import all_formats
    have = {f.name.upper(): f for f in all_formats() if f.can_quantize and f.can_dequantize}
    return [t for t in LLAMA_CPP_CACHE_TYPES if t in have]


def kv_schemes() -> list[KVScheme]:
    """Every KV-cache scheme: INT8 and FP8 at each granularity, then the llama.cpp types that
    the registry has now."""
    from .registry import get_format
    out = [_int8_scheme(g) for g in GRANULARITIES] + [_fp8_scheme(g) for g in GRANULARITIES]
    return out + [_ggml_scheme(get_format(t)) for t in llama_cpp_cache_types()]


def get_scheme(name: str) -> KVScheme:
    for s in kv_schemes():
        if s.name.lower() == name.lower():
            return s
    raise FormatError(f"unknown KV-cache scheme {name!r}; known: {', '.join(s.name for s in kv_schemes())}")


def _check_cache(x, what, shape=None) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise InputError(f"kv cache: {what} must be a float32 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 3 or 0 in x.shape:
        raise InputError(f"kv cache: {what} must have shape (heads, tokens, head_dim), got {x.shape}")
    if shape is not None and x.shape != shape:
        raise InputError(f"kv cache: {what} has shape {x.shape}; expected {shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"kv cache: {what} has a non-finite value {x[idx]!r} at (head, token, dim) {idx}")
    return x


def quantize_kv(x: np.ndarray, scheme) -> object:
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    with np.errstate(all="ignore"):
        return s.quantize(_check_cache(x, "cache"))


def dequantize_kv(enc, scheme) -> np.ndarray:
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    with np.errstate(all="ignore"):
        return s.dequantize(enc)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores (H, Tq, T) = q k^T / sqrt(D) and output (H, Tq, D) = softmax(scores) v.
    Queries may have more heads than the cache (grouped-query attention: head h of q reads
    cache head h // (Hq / Hkv))."""
    q64, k64, v64 = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    Hq, Hk = q64.shape[0], k64.shape[0]
    if Hq % Hk:
        raise InputError(f"attention: {Hq} query heads is not a multiple of {Hk} cache heads")
    rep = Hq // Hk
    k64, v64 = np.repeat(k64, rep, axis=0), np.repeat(v64, rep, axis=0)
    scores = np.einsum("htd,hsd->hts", q64, k64) / np.sqrt(q64.shape[-1])
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return scores, np.einsum("hts,hsd->htd", p, v64)


def kv_error_table(q: np.ndarray, k: np.ndarray, v: np.ndarray, schemes=None) -> list[dict]:
    """For each scheme: bits per value, and the largest absolute error of K, V, the attention
    scores and the attention output computed from the quantized cache, plus the output's
    relative error ||out - ref|| / ||ref||, all against the float64 reference on the
    unquantized cache. A scheme that cannot take this cache (head_dim not a multiple of its
    block) gets an `error` entry instead of numbers."""
    k = _check_cache(k, "K")
    v = _check_cache(v, "V", k.shape)
    qa = _check_cache(q, "q")
    if qa.shape[2] != k.shape[2]:
        raise InputError(f"kv cache: q has head_dim {qa.shape[2]}, the cache {k.shape[2]}")
    ref_s, ref_o = attention(qa, k, v)
    rows = []
    for s in (kv_schemes() if schemes is None else [get_scheme(x) if isinstance(x, str) else x for x in schemes]):
        try:
            kd = dequantize_kv(quantize_kv(k, s), s)
            vd = dequantize_kv(quantize_kv(v, s), s)
        except InputError as e:
            rows.append({"scheme": s.name, "family": s.family, "error": str(e)})
            continue
        sc, out = attention(qa, kd, vd)
        kd64, vd64 = kd.astype(np.float64), vd.astype(np.float64)
        with np.errstate(all="ignore"):
            rel = float(np.linalg.norm(out - ref_o) / np.linalg.norm(ref_o)) if np.linalg.norm(ref_o) else \
                float(np.linalg.norm(out - ref_o))
        rows.append({
            "scheme": s.name, "family": s.family, "bits_per_value": float(s.bits_per_value(k.shape)),
            "k_max_abs": float(np.max(np.abs(kd64 - k))), "v_max_abs": float(np.max(np.abs(vd64 - v))),
            "scores_max_abs": float(np.max(np.abs(sc - ref_s))),
            "out_max_abs": float(np.max(np.abs(out - ref_o))), "out_rel": rel,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """The error table as aligned text."""
    cols = ["scheme", "bits_per_value", "k_max_abs", "v_max_abs", "scores_max_abs", "out_max_abs", "out_rel"]
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['scheme']:>14}  {r['error']}")
            continue
        lines.append("  ".join(f"{r[c]:>14}" if c == "scheme" else f"{r[c]:>14.4g}" for c in cols))
    return "\n".join(lines)


def main(argv=None) -> None:
    """python -m refquant.kvcache [--heads 8] [--tokens 256] [--head-dim 128]: the error table
    on a synthetic cache (normal values, K with outlier channels as real K caches have)."""
    import argparse
    ap = argparse.ArgumentParser(description="KV-cache quantization error per scheme")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    shape = (a.heads, a.tokens, a.head_dim)
    k = rng.standard_normal(shape).astype(np.float32)
    k[:, :, rng.choice(a.head_dim, max(1, a.head_dim // 32), replace=False)] *= 20
    v = rng.standard_normal(shape).astype(np.float32)
    q = rng.standard_normal((a.heads, 4, a.head_dim)).astype(np.float32)
    print(format_table(kv_error_table(q, k, v)))


if __name__ == "__main__":
    main()
