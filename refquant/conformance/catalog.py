"""Edge catalogs: per format, deterministic inputs built to sit where implementations part —
TestFloat's idea, run before any random example.

Level 1 (every default run):

- element formats (a code of at most 16 bits per value: F16, BF16, the FP8/FP6/FP4 minifloats,
  ONNX's INT2 ... UINT16 and FLOAT8E8M0 casts):
  every code decoded; quantized: every representable value, every midpoint between neighbours,
  one float32 ulp either side of each, ±0, ±Inf, NaN, the largest finite float32 and values past
  the format's largest;
- block formats, quantized: a tie at every position relative to the scale (values (k + 1/2) * s
  with the extreme at ±M * s, M the format's grid), duplicated ±amax in both orders at several
  position pairs (which of two equal magnitudes a kernel keeps), all-equal, all-zero and -0
  blocks, subnormal and max-finite values, fp16 scale overflow and underflow; with an importance
  matrix also one of zeros and one of huge weights;
- block formats, dequantized: every byte value at every byte offset of a block (every code at
  every position, every scale byte);
- vec_dot and matmul: activations of the block patterns above against fixed weights, and weights
  from the byte sweep.

Level 2 (deep runs) adds every float16 value as a float32 input of the element formats, a dense
float32 sweep (±64 ulps) around every boundary between codes, ties at more scales and every
position pair of the duplicated extremes.
"""
from __future__ import annotations

import numpy as np

from ..registry import get_format

F32 = np.float32
FLT_MAX = F32(np.finfo(np.float32).max)
FP16_MAX = 65504.0


def is_element_format(fmt) -> bool:
    """A few values per block and no scale: F32, F16, BF16, the minifloats (E2M1 two a byte) and
    ONNX's integer types (INT4 two a byte, INT2 four)."""
    return fmt.block_size <= 4


def names(op: str, key: str, path: str, level: int = 1) -> list[str]:
    if op == "quantize":
        fmt = get_format(key)
        if is_element_format(fmt):
            out = ["grid", "midpoints", "ulps", "specials"]
            return out + (["float16-all", "sweep"] if level >= 2 else [])
        out = ["ties", "extremes", "constant", "zeros", "subnormal", "max-finite", "fp16-overflow", "fp16-underflow"]
        if "imatrix" in path:
            out += ["imatrix-zeros", "imatrix-huge"]
        return out + (["ties-wide", "extremes-all-pairs"] if level >= 2 else [])
    if op == "dequantize":
        fmt = get_format(key)
        return ["every-code"] if is_element_format(fmt) and fmt.type_size <= 2 else ["byte-sweep"]
    if op == "vec_dot":
        return ["activations", "weight-bytes"]
    if op == "matmul":
        return ["activations"]
    raise AssertionError(op)


# ---------------------------------------------------------------------- element formats

def _codes(fmt) -> np.ndarray:
    """Every byte string of one block of an element format: (count, type_size) uint8."""
    n = 1 << (8 * fmt.type_size)
    return np.arange(n, dtype="<u2" if fmt.type_size == 2 else np.uint8).view(np.uint8).reshape(n, fmt.type_size)


def _grid_values(fmt) -> np.ndarray:
    """The distinct finite values the format represents, ascending (from its own decoder)."""
    from ..backend import SPEC
    if fmt.type_size > 2:   # float32 itself: powers of two across the range, and their neighbours
        p = np.ldexp(F32(1), np.arange(-149, 128)).astype(F32)
        return np.unique(np.concatenate([p, np.nextafter(p, F32(np.inf)), [F32(1.5), F32(3.0)]]))
    v = SPEC.dequantize(_codes(fmt), fmt).reshape(-1).astype(F32)
    v = v[np.isfinite(v)]
    return np.unique(v)


def _as_rows(v: np.ndarray, fmt) -> np.ndarray:
    v = np.asarray(v, F32).reshape(-1)
    per = 64 * fmt.block_size
    pad = (-v.size) % per
    v = np.concatenate([v, np.zeros(pad, F32)])
    return v.reshape(-1, per)


def _element_quantize(fmt, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return _element_values(fmt, name)


def _element_values(fmt, name: str) -> np.ndarray:
    g = _grid_values(fmt)
    g = g[g != 0] if g.size > 2 else g
    g = np.unique(np.concatenate([g, -g, [F32(0)]]))
    mids = ((g[:-1].astype(np.float64) + g[1:]) / 2).astype(F32)
    if name == "grid":
        return _as_rows(g, fmt)
    if name == "midpoints":
        return _as_rows(mids, fmt)
    if name == "ulps":
        both = np.concatenate([g, mids])
        return _as_rows(np.concatenate([np.nextafter(both, F32(np.inf)), np.nextafter(both, F32(-np.inf))]), fmt)
    if name == "specials":
        top = F32(np.abs(g).max())
        vals = [0.0, -0.0, np.inf, -np.inf, np.nan, FLT_MAX, -FLT_MAX, top * 2, -top * 2, top * F32(1.5),
                np.nextafter(top, F32(np.inf)), F32(2.0 ** -149), F32(-(2.0 ** -149)), F32(2.0 ** -126)]
        return _as_rows(np.array(vals, F32), fmt)
    if name == "float16-all":
        h = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)
        return _as_rows(h, fmt)
    if name == "sweep":
        steps = np.arange(-64, 65, dtype=np.int64)
        both = np.concatenate([g, mids])
        both = both[np.isfinite(both) & (both != 0)]
        bits = both.view(np.int32).astype(np.int64)[:, None] + steps[None, :]
        bits = bits[(bits >= 0) & (bits < (1 << 31))] if True else bits
        return _as_rows(bits.astype(np.uint32).view(F32), fmt)
    raise AssertionError(name)


# ---------------------------------------------------------------------------- block formats

def _grid(fmt) -> int:
    from .strategies import FORMAT_TIE_GRIDS
    return FORMAT_TIE_GRIDS.get(fmt.name, 8)


def _tie_block(B: int, M: int, s: float, p: int, sign: int, shift: int) -> np.ndarray:
    """Every element a tie (k + 1/2) * s, k running over -M..M-1 from `shift`, the extreme ±M * s at p."""
    k = (np.arange(B) + shift) % (2 * M) - M
    x = (k.astype(np.float64) + 0.5) * s
    x[p] = sign * M * s
    return x.astype(F32)


def _block_quantize(fmt, name: str, rng) -> tuple[np.ndarray, np.ndarray | None]:
    B = fmt.block_size
    M = _grid(fmt)
    rows, im = [], None
    small = lambda: (rng.standard_normal(B) * 0.05).astype(F32)  # noqa: E731
    if name in ("ties", "ties-wide"):
        grids = sorted({M, 1, 3, 4, 7, 15, 31, 127} if name == "ties-wide" else {M, 4, 15})
        exps = range(-20, 21, 4) if name == "ties-wide" else (-6, 0, 5)
        for g in grids:
            for e in exps:
                for p in sorted({0, B // 2, B - 1}):
                    for sign in (1, -1):
                        rows.append(_tie_block(B, g, 2.0 ** e, p, sign, p))
    elif name in ("extremes", "extremes-all-pairs"):
        if name == "extremes":
            pairs = {(0, 1), (1, 0), (0, B - 1), (B - 1, 0), (B // 2 - 1, B // 2), (B // 2, B // 2 - 1),
                     (B - 2, B - 1), (B - 1, B - 2)}
        else:
            pairs = {(i, j) for i in range(min(B, 16)) for j in range(min(B, 16)) if i != j}
        for m in (1.0, 3.5, 2.0 ** -10):
            for i, j in sorted(pairs):
                if i == j or min(i, j) < 0:
                    continue
                x = small() * F32(m)
                x[i], x[j] = F32(m), F32(-m)          # +m first, then -m
                rows.append(x)
                x = x.copy()
                x[i], x[j] = F32(m), F32(m)           # equal and of one sign
                rows.append(x)
            # every 16- and 32-value sub-block with its own ±m pair, alternating order
            x = small() * F32(m)
            for c0 in range(0, B, 16):
                a, b = (c0, c0 + 15) if (c0 // 16) % 2 == 0 else (c0 + 15, c0)
                if b < B and a < B:
                    x[a], x[b] = F32(m), F32(-m)
            rows.append(x)
    elif name == "constant":
        for v in (1.0, -1.0, 0.5, -7.0, 1e-3, 3e4, -2.0 ** -20, 448.0, 6.0):
            rows.append(np.full(B, F32(v)))
    elif name == "zeros":
        rows += [np.zeros(B, F32), np.full(B, F32(-0.0)), np.where(np.arange(B) % 2, F32(-0.0), F32(0)).astype(F32)]
        for p in sorted({0, B - 1}):
            x = np.zeros(B, F32)
            x[p] = F32(0.25)
            rows.append(x)
        if B >= 64:   # zero sub-blocks inside a super-block
            x = small()
            x[: B // 2] = 0
            rows.append(x)
            x = small()
            x[16:32] = 0
            rows.append(x)
    elif name == "subnormal":
        tiny = F32(2.0 ** -149)
        rows.append(np.full(B, tiny))
        rows.append(np.full(B, F32(2.0 ** -126) - tiny))
        rows.append((rng.integers(1, 1 << 23, B).astype(np.uint32) | (rng.integers(0, 2, B).astype(np.uint32) << 31)).view(F32))
        x = small()
        x[rng.integers(B)] = tiny
        rows.append(x)
    elif name == "max-finite":
        rows.append(np.full(B, FLT_MAX))
        rows.append(np.where(np.arange(B) % 2, FLT_MAX, -FLT_MAX).astype(F32))
        x = small()
        x[0] = FLT_MAX
        rows.append(x)
        x = small()
        x[B - 1] = -FLT_MAX
        rows.append(x)
        rows.append(np.full(B, FLT_MAX / F32(2)))
    elif name == "fp16-overflow":
        for grid in sorted({M, 1, 7, 15, 31, 127}):
            for f in (0.999, 1.0, 1.001, 2.0):
                x = small()
                x[B // 3] = F32(FP16_MAX * grid * f)
                rows.append(x)
        x = small() * F32(1e37)
        x[0] = F32(1e38)
        rows.append(x)
    elif name == "fp16-underflow":
        for grid in sorted({M, 1, 7, 15, 31, 127}):
            for d in (2.0 ** -26, 2.0 ** -25, 2.0 ** -24, 1.5 * 2.0 ** -24, 2.0 ** -15, 2.0 ** -14):
                x = (small() * F32(d * grid)).astype(F32)
                x[B // 2] = F32(d * grid)
                rows.append(x)
                x = np.nextafter(x, F32(np.inf))
                rows.append(x.astype(F32))
    elif name == "imatrix-zeros":
        rows = [small() for _ in range(4)] + [_tie_block(B, M, 2.0 ** -3, 0, 1, 0)]
        im = np.ones(B, F32)
        im[::2] = 0
        im[: min(16, B)] = 0
    elif name == "imatrix-huge":
        rows = [small() for _ in range(4)] + [_tie_block(B, M, 2.0 ** -3, B - 1, -1, 1)]
        im = np.full(B, F32(1e30))
        im[1::3] = F32(1e-30)
        im[2::5] = F32(3e36)
    else:
        raise AssertionError(name)
    return np.stack(rows).astype(F32), im


def build(op: str, key: str, path: str, name: str, rng, matmul_inputs) -> dict:
    """The inputs of one catalog entry (see `names`), drawn from rng; `matmul_inputs` is
    refquant.conformance.cases' matmul operand builder (passed in: cases imports this module)."""
    with np.errstate(all="ignore"):   # values past float32's range are inputs too
        return _build(op, key, path, name, rng, matmul_inputs)


def _build(op: str, key: str, path: str, name: str, rng, matmul_inputs) -> dict:
    from ..backend import SPEC
    if op == "quantize":
        fmt = get_format(key)
        if is_element_format(fmt):
            x, im = _element_quantize(fmt, name), None
        else:
            x, im = _block_quantize(fmt, name, rng)
        if "imatrix" in path and im is None:
            im = rng.uniform(0.25, 4.0, x.shape[1]).astype(F32)
        if "imatrix" not in path:
            im = None
        return {"x": x, "imatrix": im}
    if op == "dequantize":
        fmt = get_format(key)
        if is_element_format(fmt) and fmt.type_size <= 2:
            return {"data": _codes(fmt).reshape(-1, 16 * fmt.type_size) if fmt.type_size == 1
                    else _codes(fmt).reshape(-1, 64)}
        return {"data": byte_sweep(fmt, rng)}
    if op == "vec_dot":
        fmt = get_format(key)
        from ..ggml.dot import IQ1, LATTICE
        if name == "weight-bytes":
            w = byte_sweep(fmt, rng, values=np.array([0x00, 0x01, 0x0F, 0x10, 0x55, 0x7F, 0x80, 0xAA, 0xF0, 0xFF], np.uint8))
            w = _finite_rows(w, fmt)
            K = fmt.block_size
            a = (rng.standard_normal((2, K)) * 0.5).astype(F32)
            return {"w": w, "a": a}
        K = fmt.block_size * max(1, 64 // fmt.block_size)
        x = (rng.standard_normal((3, K)) * 0.02).astype(F32)
        im = np.ones(K, F32) if (fmt.name in LATTICE or fmt.name in IQ1) else None
        w = SPEC.quantize(x, fmt, im)
        pats = [_block_quantize(get_format("Q8_0"), n, rng)[0] for n in
                ("ties", "extremes", "constant", "zeros", "subnormal", "fp16-overflow", "fp16-underflow")]
        a32 = np.concatenate(pats)
        a32 = a32[np.all(np.abs(a32) < 1e30, axis=1)]
        reps = -(-a32.shape[0] * 32 // K)
        flat = np.resize(a32.reshape(-1), reps * K)
        return {"w": w, "a": flat.reshape(reps, K).astype(F32)}
    if op == "matmul":
        c = matmul_inputs(key, 1, 9, {"W4A16": {"G": 32, "groups": 2}, "W8A8": {"K": 64}}.get(
            key, {"K": 64, "gran": "channel"}), rng)
        pats = [_block_quantize(get_format("Q8_0"), n, rng)[0] for n in ("ties", "extremes", "constant", "zeros")]
        a32 = np.concatenate(pats)
        K = c["a"].shape[1]
        reps = -(-a32.shape[0] * 32 // K)
        c["a"] = np.resize(a32.reshape(-1), reps * K).reshape(reps, K).astype(F32)
        return c
    raise AssertionError(op)


SWEEP_VALUES = np.arange(256, dtype=np.uint8)


def byte_sweep(fmt, rng, values=SWEEP_VALUES) -> np.ndarray:
    """(type_size * len(values), type_size) uint8: one realistic block (a quantizer's bytes, or
    arbitrary ones) with byte o set to v, for every offset o and value v."""
    from ..backend import SPEC
    base = rng.integers(0, 256, fmt.type_size, dtype=np.uint8)
    if fmt.can_quantize:
        x = (rng.standard_normal((1, fmt.block_size)) * 0.05).astype(F32)
        try:
            with np.errstate(all="ignore"):
                base = SPEC.quantize(x, fmt, np.ones(fmt.block_size, F32) if fmt.needs_imatrix else None).reshape(-1)
        except Exception:  # noqa: BLE001
            pass
    out = np.repeat(base[None, :], fmt.type_size * len(values), axis=0)
    o = np.repeat(np.arange(fmt.type_size), len(values))
    out[np.arange(out.shape[0]), o] = np.tile(values, fmt.type_size)
    return out


def _finite_rows(w: np.ndarray, fmt) -> np.ndarray:
    """Rows the dequantizer accepts and decodes to finite values (vec_dot weights)."""
    from ..backend import SPEC
    keep = []
    with np.errstate(all="ignore"):
        for i in range(0, w.shape[0], 256):
            chunk = w[i:i + 256]
            try:
                d = SPEC.dequantize(chunk, fmt)
            except Exception:  # noqa: BLE001
                continue
            keep.append(chunk[np.all(np.isfinite(d), axis=1)])
    return np.concatenate(keep) if keep else w[:1]
