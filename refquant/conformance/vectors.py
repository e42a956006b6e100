"""Golden test vectors: inputs, encoded bytes and decoded values per format, in files any
language can read (.npy, .json, and one .gguf holding every encoded tensor).

    refquant vectors --out DIR [--formats Q4_0,Q8_0]

DIR/<FORMAT>/input.npy          float32 (rows, n): the values to quantize
DIR/<FORMAT>/imatrix.npy        float32 (n,): the importance matrix (formats that take one)
DIR/<FORMAT>/encoded.npy        uint8 (rows, row_bytes): quantize(input)
DIR/<FORMAT>/encoded_imatrix.npy  uint8: quantize(input, imatrix)
DIR/<FORMAT>/decoded.npy        float32 (rows, n): dequantize(encoded)
DIR/<FORMAT>/vectors.json       the same, as hex strings (float32 as bit patterns), with the
                                format's block size, bytes per block and the row kinds
DIR/vectors.gguf                every GGUF type's `encoded` as a GGUF tensor named after it

The formats: every quantizable GGUF type, and every minifloat element format (one code a byte,
E2M1 two; their NaN and Inf codes show in `decoded` as float32 bit patterns).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..backend import SPEC
from ..registry import IMATRIX_NONE, all_formats, get_format
from .strategies import FORMAT_TIE_GRIDS

F32 = np.float32
SEED = 20260101

ROW_KINDS = ("gaussian", "ties", "zeros", "neg_zeros", "constant", "subnormal", "outlier",
             "fp16_overflow", "positive")


def _block(kind: str, n: int, rng: np.random.Generator, grid: int) -> np.ndarray:
    if kind == "gaussian":
        return (rng.standard_normal(n) * 0.02).astype(F32)
    if kind == "ties":
        s = F32(2.0 ** -6)
        x = (rng.integers(-2 * grid + 1, 2 * grid, n).astype(F32) * F32(0.5)) * s
        x[rng.integers(n)] = F32(grid) * s * F32(rng.choice([-1, 1]))
        return x
    if kind == "zeros":
        return np.zeros(n, F32)
    if kind == "neg_zeros":
        return np.full(n, F32(-0.0))
    if kind == "constant":
        return np.full(n, F32(0.75))
    if kind == "subnormal":
        bits = rng.integers(1, 0x007FFFFF, n, dtype=np.uint32) | (rng.integers(0, 2, n, dtype=np.uint32) << 31)
        return bits.view(F32)
    if kind == "outlier":
        x = (rng.standard_normal(n) * 0.01).astype(F32)
        x[rng.integers(n)] = F32(5.0)
        return x
    if kind == "fp16_overflow":
        return (rng.uniform(-1, 1, n) * 1e7).astype(F32)
    if kind == "positive":
        return rng.uniform(1.0, 2.0, n).astype(F32)
    raise AssertionError(kind)


def vector_input(name: str) -> tuple[np.ndarray, list[str]]:
    """The deterministic input for a format: one row per kind, each row a few blocks long."""
    fmt = get_format(name)
    rng = np.random.default_rng(SEED)
    grid = FORMAT_TIE_GRIDS.get(fmt.name, 8)
    n = max(fmt.block_size, 64) if fmt.block_size < 256 else fmt.block_size
    n = n // fmt.block_size * fmt.block_size
    rows = [_block(k, n, rng, grid) for k in ROW_KINDS]
    return np.stack(rows), list(ROW_KINDS)


def vector_imatrix(n: int) -> np.ndarray:
    return np.random.default_rng(SEED + 1).uniform(0.0, 2.0, n).astype(F32)


def _hex_rows(a: np.ndarray) -> list[str]:
    a = np.ascontiguousarray(a)
    return [row.tobytes().hex() for row in a.reshape(a.shape[0], -1).view(np.uint8)]


def build(name: str) -> dict[str, np.ndarray]:
    fmt = get_format(name)
    x, _ = vector_input(fmt.name)
    im = vector_imatrix(x.shape[1]) if fmt.imatrix != IMATRIX_NONE else None
    out = {"input": x}
    with np.errstate(all="ignore"):
        enc = SPEC.quantize(x, fmt, None if not fmt.needs_imatrix else im)
        out["encoded"] = enc
        if im is not None:
            out["imatrix"] = im
            out["encoded_imatrix"] = SPEC.quantize(x, fmt, im)
        if fmt.can_dequantize:
            out["decoded"] = SPEC.dequantize(enc, fmt)
    return out


VECTOR_FAMILIES = ("minifloat",)   # formats beyond the GGUF types that get vectors


def vector_formats() -> list[str]:
    return [f.name for f in all_formats()
            if f.can_quantize and (f.ggml_type is not None or f.family in VECTOR_FAMILIES)]


def write_vectors(out_dir, formats=None) -> list[Path]:
    """Write the vectors of `formats` (default: vector_formats()) under out_dir."""
    from ..io.gguf import KV, TensorInfo, write_gguf
    from gguf import GGUFValueType

    out_dir = Path(out_dir)
    names = [get_format(f).name for f in formats] if formats else vector_formats()
    written, tensors = [], {}
    for name in names:
        fmt = get_format(name)
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        arrays = build(name)
        for key, a in arrays.items():
            np.save(d / f"{key}.npy", a, allow_pickle=False)
            written.append(d / f"{key}.npy")
        _, kinds = vector_input(name)
        doc = {"format": name, "block_size": fmt.block_size, "type_size": fmt.type_size,
               "row_kinds": kinds, "note": "float32 values are hex strings of their little-endian bytes"}
        doc.update({key: _hex_rows(a) for key, a in arrays.items()})
        (d / "vectors.json").write_text(json.dumps(doc, indent=1) + "\n")
        written.append(d / "vectors.json")
        if fmt.ggml_type is not None:          # GGUF holds ggml's types only
            tensors[name] = (fmt, arrays["input"].shape, arrays["encoded"])
    if tensors:
        infos = [TensorInfo(n, f.ggml_type, shape) for n, (f, shape, _) in tensors.items()]
        kvs = [KV("general.architecture", GGUFValueType.STRING, "refquant-vectors"),
               KV("general.name", GGUFValueType.STRING, "refquant golden vectors")]
        write_gguf(out_dir / "vectors.gguf", kvs, infos, lambda t: tensors[t.name][2])
        written.append(out_dir / "vectors.gguf")
    return written
