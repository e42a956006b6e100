"""The conformance suite's fixed cases: inputs built by construction, not drawn at random.

Every claimed path of a backend runs, before the Hypothesis examples:

- the shape ladder: rows in LADDER_ROWS x blocks per row in LADDER_BLOCKS (the tile-of-8/16
  and tail sizes SIMD and GPU kernels get wrong), cut by the format's cost budget, and one
  realistic matrix (64 x 4096; 256 x 4096 where the spec is fast enough); for vec_dot and matmul,
  M in MATMUL_M against N and K past every plausible tile, and act-order permutations;
- layouts: a row stride, a Fortran-ordered (transposed) view, a view at an odd byte offset and a
  read-only array, each compared with the spec on a contiguous copy;
- threads (backends that declare `threaded`): rows that do not divide by the thread count, with
  one thread;
- the edge catalog (refquant.conformance.catalog), level 1 or 2.

A case is named by a short id ("ladder 3x9", "layout fortran", "catalog ties") and built from it
alone, deterministically: `build(path, key, case_id)` gives the same arrays in any process, so a
failure's reproducer calls it, and shards (`shard_of`) split the case list without coordination.
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

from ..backend import operation_key, operation_paths
from ..registry import get_format
from . import catalog

F32 = np.float32

LADDER_ROWS = (1, 2, 3, 5, 8, 17, 65)
LADDER_BLOCKS = (1, 2, 3, 7, 8, 9, 16, 17, 33)
REALISTIC = ((64, 4096), (256, 4096))
LAYOUTS = ("row-stride", "fortran", "offset", "readonly")
THREAD_ROWS = (3, 5, 17, 65)
MATMUL_M = (1, 2, 3, 17)
# (N, blocks of K) for vec_dot: one and a few, then N and K past every tile (65 rows, 9 and 17 blocks)
VEC_DOT_NK = ((1, 1), (3, 2), (65, 9), (8, 17))

# What the spec costs per element, relative to Q8_0's quantizer, for the cost budget. The
# lattice searches and the K-quant searches are the slow ones; F16/BF16 and the element formats
# are cheapest. A format not named costs 1.
SPEC_COST = {
    "ggml-k": 6, "ggml-iq": 6,
    "IQ1_S": 200, "IQ1_M": 300, "IQ2_XXS": 150, "IQ2_XS": 150, "IQ2_S": 150, "IQ3_XXS": 100, "IQ3_S": 100,
    "TQ1_0": 2, "TQ2_0": 2,
}
# The ladder of one path holds at most this many element-costs (a fast format takes the whole
# ladder, 101 x 96 blocks of 32; the lattice types take the small shapes); the realistic
# matrices at most REALISTIC_BUDGET each.
LADDER_BUDGET = 1_000_000
REALISTIC_BUDGET = 1_200_000
LEVEL2_FACTOR = 8


def spec_cost(fmt) -> float:
    return SPEC_COST.get(fmt.name, SPEC_COST.get(fmt.family, 1))


def _unit(fmt) -> int:
    """The ladder's block: the format's block, or 32 values for element formats of block 1."""
    return fmt.block_size


def ladder_shapes(fmt, level: int = 1) -> list[tuple[int, int]]:
    """(rows, blocks) of the ladder for `fmt`, smallest first, within the cost budget; (3, 9) —
    a third row and a ninth block — is always in."""
    budget = LADDER_BUDGET * (LEVEL2_FACTOR if level >= 2 else 1)
    per_block = _unit(fmt) * spec_cost(fmt)
    shapes = sorted(((r, b) for r in LADDER_ROWS for b in LADDER_BLOCKS), key=lambda s: (s[0] * s[1], s))
    out, used = [], 0
    for r, b in shapes:
        c = r * b * per_block
        if used + c <= budget or (r, b) in ((1, 1), (3, 9)):
            out.append((r, b))
            used += c
    return out


def realistic_shapes(fmt, level: int = 1) -> list[tuple[int, int]]:
    budget = REALISTIC_BUDGET * (LEVEL2_FACTOR if level >= 2 else 1)
    out = []
    for r, n in REALISTIC:
        n = max(n // fmt.block_size, 1) * fmt.block_size
        if r * n * spec_cost(fmt) <= budget:
            out.append((r, n))
    return out


def case_ids(path: str, key: str, level: int = 1, threaded: bool = False) -> list[str]:
    """The fixed cases of one path, in the order they run: catalog first, then shapes, layouts
    and threads."""
    op = path.split("+")[0].split("[")[0]
    ids = [f"catalog {n}" for n in catalog.names(op, key, path, level)]
    if op in ("quantize", "dequantize"):
        fmt = get_format(key)
        shapes = ladder_shapes(fmt, level)
        ids += [f"ladder {r}x{b}" for r, b in shapes]
        ids += [f"matrix {r}x{n}" for r, n in realistic_shapes(fmt, level)]
        ids += [f"layout {lay}" for lay in LAYOUTS]
        if threaded:
            ids += [f"threads=1 {r}x{b}" for r, b in shapes if r in THREAD_ROWS and b in (1, 9)]
    elif op == "vec_dot":
        fmt = get_format(key)
        big = fmt.block_size > 32
        cost = spec_cost(fmt) if fmt.name in SPEC_COST else 1
        for m in MATMUL_M:
            for n, kb in VEC_DOT_NK:
                if m * n * kb * fmt.block_size * min(cost, 20) <= LADDER_BUDGET // (1 if big else 4) * level \
                        or (n, kb) == (65, 9):
                    ids.append(f"ladder M={m} N={n} K={kb}")
        ids += [f"layout {lay}" for lay in LAYOUTS]
        if threaded:
            ids += ["threads=1 M=3 N=65 K=9", "threads=1 M=17 N=17 K=3"]
    elif op == "matmul":
        for m in MATMUL_M:
            ids += [f"ladder M={m} N=65 {g}" for g in _matmul_shapes(key)]
        if key == "W4A16":
            ids += [f"act-order {o}" for o in ("permuted", "reversed", "interleaved")]
        ids += [f"layout {lay}" for lay in LAYOUTS]
        if threaded:
            ids += ["threads=1 M=3 N=65 " + _matmul_shapes(key)[-1]]
    return ids


def _matmul_shapes(key: str) -> list[str]:
    if key == "W4A16":
        return ["G=32 groups=9", "G=128 groups=3"]
    if key == "W8A8":
        return ["K=288"]
    return ["K=288 gran=block", "K=160 gran=channel", "K=96 gran=tensor"]


def shard_of(key: str, path: str, case_id: str, n: int) -> int:
    """Which of n shards runs a case: a hash of its name, the same in every process."""
    return zlib.crc32(f"{key}|{path}|{case_id}".encode()) % n


def _rng(key: str, path: str, case_id: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{key}|{path}|{case_id}".encode()))


# ------------------------------------------------------------------------------- value blocks

BLOCK_KINDS = ("gaussian", "gaussian", "gaussian", "ties", "zeros", "constant", "outlier", "positive",
               "subnormal", "extremes", "wide")


def value_block(kind: str, n: int, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    if kind == "gaussian":
        return (rng.standard_normal(n) * rng.choice([1e-3, 0.02, 1.0])).astype(F32)
    if kind == "ties":
        s = F32(2.0) ** F32(rng.integers(-12, 4))
        x = (rng.integers(-2 * grid + 1, 2 * grid, n).astype(F32) * F32(0.5)) * s
        x[rng.integers(n)] = F32(grid) * s * F32(rng.choice([-1, 1]))
        return x.astype(F32)
    if kind == "zeros":
        return np.where(rng.random(n) < 0.5, F32(-0.0), F32(0.0)).astype(F32)
    if kind == "constant":
        return np.full(n, F32(rng.standard_normal()))
    if kind == "outlier":
        x = (rng.standard_normal(n) * 0.01).astype(F32)
        x[rng.integers(n)] = F32(rng.choice([-1, 1]) * rng.uniform(1, 100))
        return x
    if kind == "positive":
        return rng.uniform(1.0, 2.0, n).astype(F32)
    if kind == "subnormal":
        bits = rng.integers(1, 0x007FFFFF, n, dtype=np.uint32) | (rng.integers(0, 2, n, dtype=np.uint32) << 31)
        return bits.view(F32)
    if kind == "extremes":
        # +m and -m both present: which one a kernel keeps decides the scale's sign
        x = (rng.standard_normal(n) * 0.1).astype(F32)
        if n > 1:
            i, j = rng.choice(n, 2, replace=False)
            x[i], x[j] = F32(1.5), F32(-1.5)
        return x
    if kind == "wide":
        return (rng.standard_normal(n) * F32(10.0) ** rng.integers(-6, 6, n).astype(F32)).astype(F32)
    raise AssertionError(kind)


def value_rows(rows: int, n: int, unit: int, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    """(rows, n) float32, every unit-wide block (32 values at least) of a kind drawn from BLOCK_KINDS."""
    if unit < 32:
        flat = value_rows(1, -(-rows * n // 32) * 32, 32, rng, grid).reshape(-1)
        return flat[:rows * n].reshape(rows, n)
    nb = rows * (n // unit)
    kinds = rng.choice(len(BLOCK_KINDS), nb)
    return np.concatenate([value_block(BLOCK_KINDS[k], unit, rng, grid) for k in kinds]).reshape(rows, n)


def importance_row(n: int, rng: np.random.Generator) -> np.ndarray:
    im = rng.uniform(0.0, 4.0, n).astype(F32)
    im[rng.random(n) < 0.1] = 0
    return im


def _tie_grid(fmt) -> int:
    from .strategies import FORMAT_TIE_GRIDS
    return FORMAT_TIE_GRIDS.get(fmt.name, 8)


# ------------------------------------------------------------------------------------- layouts

def with_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as `a` (2-D), laid out as `layout` says."""
    if layout == "row-stride":
        base = np.zeros((a.shape[0], a.shape[1] + 7), a.dtype)
        base[:, :a.shape[1]] = a
        return base[:, :a.shape[1]]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "offset":
        raw = np.zeros(a.nbytes + 3, np.uint8)
        v = raw[3:3 + a.nbytes].view(a.dtype).reshape(a.shape)   # an odd byte address
        v[...] = a
        return v
    if layout == "readonly":
        v = a.copy()
        v.setflags(write=False)
        return v
    raise AssertionError(layout)


# -------------------------------------------------------------------------------------- build

def _parse_shape(text: str) -> dict:
    out = {}
    for part in text.split():
        if "=" in part:
            k, v = part.split("=")
            out[k] = int(v) if v.isdigit() else v
        elif "x" in part:
            r, b = part.split("x")
            out["rows"], out["blocks"] = int(r), int(b)
    return out


def _quantize_inputs(fmt, with_imatrix: bool, rows: int, n: int, rng) -> dict:
    x = value_rows(rows, n, _unit(fmt), rng, _tie_grid(fmt))
    im = importance_row(n, rng) if with_imatrix else None
    return {"x": x, "imatrix": im}


def _bytes_rows(fmt, rows: int, nblocks: int, rng) -> np.ndarray:
    """Encoded rows: bytes a quantizer writes, with every fourth block arbitrary bytes."""
    from ..backend import SPEC
    n = nblocks * fmt.block_size
    raw = rng.integers(0, 256, (rows, nblocks * fmt.type_size), dtype=np.uint8)
    if not fmt.can_quantize:
        return raw
    x = value_rows(rows, n, _unit(fmt), rng, _tie_grid(fmt))
    try:
        with np.errstate(all="ignore"):
            enc = SPEC.quantize(x, fmt, np.ones(n, F32) if fmt.needs_imatrix else None)
    except Exception:  # noqa: BLE001 - an input the quantizer refuses: arbitrary bytes then
        return raw
    enc = enc.reshape(rows, nblocks, fmt.type_size)
    mix = enc.copy()
    mix[:, 3::4] = raw.reshape(rows, nblocks, fmt.type_size)[:, 3::4]
    try:
        SPEC.dequantize(mix.reshape(rows, -1), fmt)
        return mix.reshape(rows, -1)
    except Exception:  # noqa: BLE001 - the dequantizer refuses some bytes (non-finite scales)
        return enc.reshape(rows, -1)


@functools.lru_cache(maxsize=8)
def vec_dot_weights(name: str, N: int, kb: int) -> np.ndarray:
    """(N, kb blocks) weight rows for vec_dot cases, from the spec's quantizer (the same for every
    M and variant, so built once)."""
    from ..backend import SPEC
    from ..ggml.dot import IQ1, LATTICE
    fmt = get_format(name)
    rng = _rng(name, "vec_dot weights", f"{N}x{kb}")
    K = kb * fmt.block_size
    x = value_rows(N, K, fmt.block_size, rng, _tie_grid(fmt))
    if fmt.name in LATTICE or fmt.name in IQ1:
        x = (rng.standard_normal((N, K)) * 0.02).astype(F32)
        w = SPEC.quantize(x, fmt, importance_row(K, rng) + F32(0.01))
    else:
        w = SPEC.quantize(x, fmt)
    w.setflags(write=False)
    return w


def _vec_dot_inputs(fmt, M: int, N: int, kb: int, rng) -> dict:
    K = kb * fmt.block_size
    w = vec_dot_weights(fmt.name, N, kb).copy()
    kinds = ("gaussian", "gaussian", "ties", "zeros", "outlier", "positive", "extremes")
    a = np.concatenate([value_block(kinds[k], 32, rng) for k in rng.choice(len(kinds), M * K // 32)]).reshape(M, K)
    return {"w": w, "a": a}


def _matmul_inputs(key: str, M: int, N: int, spec: dict, rng) -> dict:
    from ..gemm import FP8_BLOCK, FP8Weight, W4A16Weight, W8A8Weight
    kinds = ("gaussian", "gaussian", "ties", "zeros", "outlier", "positive")
    if key == "W4A16":
        G, ng = spec["G"], spec["groups"]
        K = G * ng
        codes = rng.integers(0, 16, (N, K)).astype(np.uint8)
        zeros = rng.integers(0, 16, (N, ng)).astype(np.uint8)
        scales = (rng.random((N, ng)) * 1e-2 + 1e-4).astype(F32)
        g_idx = (np.arange(K) // G).astype(np.int32)
        order = spec.get("order")
        if order == "permuted":
            g_idx = rng.permutation(g_idx).astype(np.int32)
        elif order == "reversed":
            g_idx = g_idx[::-1].copy()
        elif order == "interleaved":
            g_idx = (np.arange(K) % ng).astype(np.int32)
        weight = W4A16Weight(codes, scales, zeros, g_idx)
    elif key == "W8A8":
        K = spec["K"]
        codes = rng.integers(-128, 128, (N, K)).astype(np.int8)
        weight = W8A8Weight(codes, (rng.random(N) * 1e-2 + 1e-4).astype(F32))
        kinds = kinds + ("subnormal",)
    else:
        K = spec["K"]
        codes = rng.integers(0, 256, (N, K)).astype(np.uint8)
        codes[(codes & 0x7F) == 0x7F] = 0x7E
        shape = {"tensor": (), "channel": (N,), "block": (-(-N // FP8_BLOCK), -(-K // FP8_BLOCK))}[spec["gran"]]
        weight = FP8Weight(codes, np.asarray(rng.random(shape) * 1e-2 + 1e-4, dtype=F32))
    a = np.concatenate([value_block(kinds[k], 32, rng) for k in rng.choice(len(kinds), M * K // 32)]).reshape(M, K)
    return {"weight": weight, "a": a}


def build(path: str, key: str, case_id: str) -> dict:
    """The inputs of one fixed case, as keyword arrays for the path's operation: quantize:
    x, imatrix (+ search); dequantize: data; vec_dot: w, a, variant; matmul: a, weight, options.
    "threads" in the result is the thread count the case runs with (None: all)."""
    op = path.split("+")[0].split("[")[0]
    key = operation_key(op, key)
    (p,) = [p for p in operation_paths(op, key) if p.label == path]
    kind, _, rest = case_id.partition(" ")
    rng = _rng(key, path, case_id)
    threads = None
    if kind == "catalog":
        c = catalog.build(op, key, path, rest, _rng(key, path, "catalog " + rest), _matmul_inputs)
    else:
        if kind.startswith("threads="):
            threads = int(kind.split("=")[1])
        shape = _parse_shape(rest)
        layout = rest if kind == "layout" else None
        if op in ("quantize", "dequantize"):
            fmt = get_format(key)
            if kind == "matrix":
                rows, n = (int(v) for v in rest.split("x"))
                nblocks = n // fmt.block_size
            elif layout:
                rows, nblocks = 5, 9
            else:
                rows, nblocks = shape["rows"], shape["blocks"]
            n = nblocks * _unit(fmt)
            if op == "quantize":
                c = _quantize_inputs(fmt, p.call["imatrix"], rows, n, rng)
                if c["imatrix"] is None and fmt.needs_imatrix:
                    c["imatrix"] = np.ones(n, F32)
            else:
                c = {"data": _bytes_rows(fmt, rows, nblocks, rng)}
        elif op == "vec_dot":
            fmt = get_format(key)
            if layout:
                shape = {"M": 3, "N": 17, "K": 3}
            c = _vec_dot_inputs(fmt, shape["M"], shape["N"], shape["K"], rng)
        else:
            if kind == "act-order":
                shape = {"M": 3, "G": 32, "groups": 9, "order": rest}
            elif layout:
                shape = {"M": 3, **_parse_shape(_matmul_shapes(key)[0])}
            if key == "W4A16" and kind == "ladder":
                shape["order"] = "permuted" if shape["M"] % 2 else None
            c = _matmul_inputs(key, shape["M"], shape.get("N", 65), shape, rng)
        if layout:
            for name in ("x", "data", "w", "a"):
                if name in c:
                    c[name] = with_layout(c[name], layout)
    c.update({k: v for k, v in p.call.items() if k != "imatrix"})
    if op == "quantize" and not p.call["imatrix"] and not get_format(key).needs_imatrix:
        c["imatrix"] = None
    c["threads"] = threads
    return c
