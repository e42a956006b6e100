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
DIR/<FORMAT>/cases.txt          the level-1 edge catalog (refquant.conformance.catalog) and the rows
                                above, one block per line in plain hex (see CASES_FORMAT)

`refquant verify-vectors` reads such lines on stdin, with an implementation's answer as the
last field, and checks each against the spec: a C, Rust or CUDA implementation needs no Python
binding, only to read a line and write one.

The formats: every quantizable GGUF type, every minifloat element format (one code a byte,
E2M1 two; their NaN and Inf codes show in `decoded` as float32 bit patterns), ONNX's types
(family onnx) and torchao's NVFP4 (family torchao); the last two hold the level-1 edge catalog
too (`catalog_rows`). Operations that take more than a byte row (ONNX's QuantizeLinear, casts
from DOUBLE, torchao's two-level NVFP4): refquant.conformance.tensor_vectors. And the sets of
refquant.conformance.vector_sets: the OCP MX formats under each scale rule, bitsandbytes' NF4,
FP4 (plain and double-quantized) and 8-bit dynamic map, NVFP4 as compressed-tensors and torchao
(two levels) compute it. A set's folder holds its first member's arrays under the plain names
and each other member's as `encoded.<rule>.npy`, `decoded.<rule>.npy`; its cases are
committed, gzipped, as `cases.txt.gz` (the same lines as cases.txt).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from ..backend import SPEC
from ..errors import RefquantError
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


def vector_format(name):
    """A format by name: a member of a vector set (refquant.conformance.vector_sets), else the
    registry's."""
    from .vector_sets import FORMATS
    if not isinstance(name, str):
        return get_format(name)
    return FORMATS.get(name.upper()) or get_format(name)


def _set_members(name: str):
    from .vector_sets import SETS
    return SETS.get(name)


def vector_input(name: str) -> tuple[np.ndarray, list[str]]:
    """The deterministic input for a format: one row per kind, each row a few blocks long."""
    fmt = vector_format(name)
    rng = np.random.default_rng(SEED)
    grid = FORMAT_TIE_GRIDS.get(fmt.name, 8)
    n = max(fmt.block_size, 64) if fmt.block_size < 256 else fmt.block_size
    n = n // fmt.block_size * fmt.block_size
    rows = [_block(k, n, rng, grid) for k in ROW_KINDS]
    x, kinds = np.stack(rows), list(ROW_KINDS)
    if fmt.family in CATALOG_ROW_FAMILIES:
        extra, extra_kinds = catalog_rows(fmt, n)
        x, kinds = np.concatenate([x, extra]), kinds + extra_kinds
    members = _set_members(fmt.name) or []       # a set's rows: those every member quantizes
    keep = [all(_quantize_blocks(m, r[None, :], None)[0] is not None for m in members) for r in x]
    return x[np.array(keep, bool)], [k for k, ok in zip(kinds, keep) if ok]


CATALOG_ROW_FAMILIES = ("onnx", "torchao")   # whose vectors hold the level-1 edge catalog too
CATALOG_ROWS_KEPT = 16                        # a catalog entry of more rows keeps 6 + 4 + 6 of them


def catalog_rows(fmt, n: int) -> tuple[np.ndarray, list[str]]:
    """The level-1 catalog's quantize inputs (refquant.conformance.catalog) as rows of n values,
    kind "catalog <entry>": the blocks the spec accepts (no NaN or Inf: the public quantize
    refuses them), end to end, the last row padded with zeros. An entry longer than
    CATALOG_ROWS_KEPT rows (the 16-bit types' every value) keeps its first 6, middle 4 and last 6
    rows: the catalog lists values in ascending order, so both ends and zero stay."""
    from . import cases, catalog
    rows, kinds = [], []
    for name in catalog.names("quantize", fmt.name, "quantize", 1):
        x = cases.build("quantize", fmt.name, f"catalog {name}")["x"]
        with np.errstate(all="ignore"):
            if catalog.is_element_format(fmt):
                v = x.reshape(-1)
                v = v[np.isfinite(v)]
            else:
                b = x.reshape(-1, fmt.block_size)
                v = b[np.all(np.isfinite(b), axis=1)].reshape(-1)
        v = np.concatenate([v, np.zeros((-v.size) % n, F32)]).reshape(-1, n)
        if v.shape[0] > CATALOG_ROWS_KEPT:
            mid = v.shape[0] // 2
            v = np.concatenate([v[:6], v[mid - 2:mid + 2], v[-6:]])
        rows.append(v)
        kinds += [f"catalog {name}"] * v.shape[0]
    return np.concatenate(rows).astype(F32), kinds


def vector_imatrix(n: int) -> np.ndarray:
    return np.random.default_rng(SEED + 1).uniform(0.0, 2.0, n).astype(F32)


def _hex_rows(a: np.ndarray) -> list[str]:
    a = np.ascontiguousarray(a)
    return [row.tobytes().hex() for row in a.reshape(a.shape[0], -1).view(np.uint8)]


def build(name: str) -> dict[str, np.ndarray]:
    members = _set_members(name)
    if members:
        out = {}
        for m in members:
            key = m.name[len(members[0].name):]
            for k, a in _build_one(m).items():
                if k == "input" and key:
                    continue
                out[k + key] = a
        return out
    return _build_one(vector_format(name))


def _build_one(fmt) -> dict[str, np.ndarray]:
    x, _ = vector_input(fmt)
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


VECTOR_FAMILIES = ("minifloat", "onnx", "torchao")   # registry families beyond the GGUF types that get vectors


def vector_formats() -> list[str]:
    """The folders of spec/vectors: the GGUF types, the element formats, the vector sets."""
    from .vector_sets import SETS
    return [f.name for f in all_formats()
            if f.can_quantize and (f.ggml_type is not None or f.family in VECTOR_FAMILIES)] + list(SETS)


# ------------------------------------------------------------------------------ plain text

CASES_FORMAT = """\
# One case per line, fields separated by one space, hex little-endian bytes (TestFloat's style):
#   FORMAT quantize   INPUT IMATRIX RESULT   INPUT: one block of float32 values (block_size * 4
#                                            bytes); IMATRIX: its block_size float32 weights or -;
#                                            RESULT: the block's type_size bytes, or `refused`
#                                            where the spec refuses the input (ggml aborts)
#   FORMAT dequantize INPUT - RESULT         INPUT: one block's type_size bytes; RESULT: its
#                                            block_size float32 values
# Lines starting with # are comments. Each block is quantized on its own (a row of one block)."""


def _hex(a: np.ndarray) -> str:
    return np.ascontiguousarray(a).view(np.uint8).tobytes().hex()


def _quantize_blocks(fmt, x: np.ndarray, im) -> list:
    """Each row of x (one block) quantized on its own by the spec: bytes, or None where refused."""
    try:
        with np.errstate(all="ignore"):
            return list(SPEC.quantize(x, fmt, im))
    except RefquantError:
        if x.shape[0] == 1:
            return [None]
        h = x.shape[0] // 2
        return _quantize_blocks(fmt, x[:h], im) + _quantize_blocks(fmt, x[h:], im)


def _set_text_cases(members) -> list[str]:
    """A vector set's cases: each input block of the level-1 catalog (with MX's scale-rule edges)
    and of the vector rows quantized by every member, one line each, in turn; then the decoding
    of every block they encode to and of the set's extra blocks (every scale byte and code)."""
    from . import cases, catalog
    from .vector_sets import LAYOUTS, extra_dequantize_blocks, mx_edge_blocks
    base = members[0]
    bs = base.block_size
    lines = [f"# {m.name}: block_size {m.block_size}, type_size {m.type_size}; "
             f"{LAYOUTS.get(m.name, LAYOUTS['MX'] if m.family == 'mx' else m.name)}" for m in members]
    entries = [(n, catalog.build("quantize", base, "quantize", n, cases._rng(base.name, "quantize", "catalog " + n), None)["x"])
               for n in catalog.names("quantize", base, "quantize", 1)]
    if base.family == "mx":
        entries.append(("mx-scale-edges", mx_edge_blocks(base)))
    entries.append(("rows", vector_input(base)[0]))
    encoded = {m.name: [] for m in members}
    for n, x in entries:
        lines.append(f"# quantize: {n}")
        xb = x.reshape(-1, bs)
        results = [_quantize_blocks(m, xb, None) for m in members]
        for i, row in enumerate(xb):
            for m, res in zip(members, results):
                out = res[i]
                lines.append(f"{m.name} quantize {_hex(row)} - {'refused' if out is None else _hex(out)}")
                if out is not None:
                    encoded[m.name].append(out)
    lines.append("# dequantize")
    same_decoder = base.family == "mx"        # a scale rule changes the encoder only
    groups = [(base, [b for v in encoded.values() for b in v])] if same_decoder else [(m, encoded[m.name]) for m in members]
    for m, blocks in groups:
        extra = extra_dequantize_blocks(m)
        data = np.stack(blocks + ([] if extra is None else list(extra)))
        _, first = np.unique(data, axis=0, return_index=True)
        data = data[np.sort(first)]
        with np.errstate(all="ignore"):
            dec = SPEC.dequantize(data, m).reshape(data.shape[0], -1)
        lines += [f"{m.name} dequantize {_hex(b)} - {_hex(v)}" for b, v in zip(data, dec)]
    return lines


def text_cases(name: str) -> list[str]:
    """The plain-text cases of a format: the level-1 catalog's quantize entries (with and without
    an importance matrix, as the format takes one), the vector rows, and the decoding of every
    block they encode to (every code, for element formats)."""
    members = _set_members(name)
    if members:
        return _set_text_cases(members)
    from . import cases, catalog
    from ..backend import operation_paths
    fmt = get_format(name)
    bs = fmt.block_size
    lines = [f"# {fmt.name}: block_size {bs}, type_size {fmt.type_size}"]
    encoded = []
    x_rows, _ = vector_input(fmt.name)
    for p in operation_paths("quantize", fmt.name):
        if p.call["search"] is not None:
            continue
        entries = [(n, cases.build(p.label, fmt.name, f"catalog {n}")) for n in catalog.names("quantize", fmt.name, p.label, 1)]
        entries.append(("rows", {"x": x_rows, "imatrix": vector_imatrix(x_rows.shape[1]) if p.call["imatrix"] else None}))
        for n, c in entries:
            lines.append(f"# {p.label}: {n}")
            x = c["x"].reshape(-1, bs)
            im = c["imatrix"]
            groups = [(x, None)] if im is None else [
                (c["x"][:, j * bs:(j + 1) * bs].reshape(-1, bs), im[j * bs:(j + 1) * bs]) for j in range(c["x"].shape[1] // bs)]
            for xb, imb in groups:
                for row, out in zip(xb, _quantize_blocks(fmt, xb, imb)):
                    res = "refused" if out is None else _hex(out)
                    lines.append(f"{fmt.name} quantize {_hex(row)} {'-' if imb is None else _hex(imb)} {res}")
                    if out is not None:
                        encoded.append(out)
    if fmt.can_dequantize:
        lines.append("# dequantize")
        data = cases.build("dequantize", fmt.name, "catalog every-code")["data"].reshape(-1, fmt.type_size) \
            if catalog.is_element_format(fmt) and fmt.type_size <= 2 else np.unique(np.stack(encoded), axis=0) if encoded else None
        if data is not None:
            with np.errstate(all="ignore"):
                dec = SPEC.dequantize(data, fmt).reshape(data.shape[0], -1)
            lines += [f"{fmt.name} dequantize {_hex(b)} - {_hex(v)}" for b, v in zip(data, dec)]
    return lines


def verify_lines(lines) -> tuple[int, list[str]]:
    """Check case lines whose last field is an implementation's answer against the spec ->
    (cases checked, the lines that differ, each with the spec's answer)."""
    bad, n = [], 0
    batch, key = [], None

    def flush():
        nonlocal batch, n
        if not batch:
            return
        name, op, imhex = key
        fmt = vector_format(name)
        ins = [b[1] for b in batch]
        if op == "quantize":
            x = np.stack([np.frombuffer(bytes.fromhex(h), "<f4") for h in ins]).astype(F32)
            im = None if imhex == "-" else np.frombuffer(bytes.fromhex(imhex), "<f4").astype(F32)
            want = ["refused" if o is None else _hex(o) for o in _quantize_blocks(fmt, x, im)]
        else:
            data = np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in ins])
            with np.errstate(all="ignore"):
                want = [_hex(v) for v in SPEC.dequantize(data, fmt).reshape(data.shape[0], -1)]
        for (line, _, got), w in zip(batch, want):
            n += 1
            if got.lower() != w:
                bad.append(f"{line}\n  spec: {w}")
        batch = []

    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) != 5 or f[1] not in ("quantize", "dequantize"):
            raise RefquantError(f"verify-vectors: a case line has 5 fields (FORMAT OP INPUT IMATRIX RESULT), got {line[:80]!r}")
        try:
            bytes.fromhex(f[2])
        except ValueError:
            raise RefquantError(f"verify-vectors: INPUT is not hex in {line[:80]!r}") from None
        k = (vector_format(f[0]).name, f[1], f[3])
        if k != key or len(batch) >= 4096:
            flush()
            key = k
        batch.append((line, f[2], f[4]))
    flush()
    return n, bad


def gzip_text(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _folder(name: str) -> str:
    """The spec/vectors folder of a format name: its set's, else its own."""
    from .vector_sets import SETS
    for k, members in SETS.items():
        if name.upper() in (k.upper(), *(m.name.upper() for m in members)):
            return k
    return get_format(name).name


def write_vectors(out_dir, formats=None) -> list[Path]:
    """Write the vectors of `formats` (default: vector_formats()) under out_dir."""
    from ..io.gguf import KV, TensorInfo, write_gguf
    from gguf import GGUFValueType

    out_dir = Path(out_dir)
    names = [_folder(f) for f in formats] if formats else vector_formats()
    written, tensors = [], {}
    for name in names:
        members = _set_members(name)
        fmt = members[0] if members else vector_format(name)
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        arrays = build(name)
        for key, a in arrays.items():
            np.save(d / f"{key}.npy", a, allow_pickle=False)
            written.append(d / f"{key}.npy")
        _, kinds = vector_input(name)
        doc = {"format": name, "block_size": fmt.block_size, "type_size": fmt.type_size,
               "row_kinds": kinds, "note": "float32 values are hex strings of their little-endian bytes"}
        if members:
            from .vector_sets import LAYOUTS
            doc["members"] = [{"format": m.name, "keys": [k + m.name[len(fmt.name):] for k in ("encoded", "decoded")],
                               "block_size": m.block_size, "type_size": m.type_size,
                               "layout": LAYOUTS.get(m.name, LAYOUTS["MX"] if m.family == "mx" else m.name)}
                              for m in members]
        doc.update({key: _hex_rows(a) for key, a in arrays.items()})
        (d / "vectors.json").write_text(json.dumps(doc, indent=1) + "\n")
        written.append(d / "vectors.json")
        text = CASES_FORMAT + "\n" + "\n".join(text_cases(name)) + "\n"
        (d / "cases.txt").write_text(text)
        written.append(d / "cases.txt")
        if members:     # committed: gzip with no name or time in its header, so the bytes repeat
            (d / "cases.txt.gz").write_bytes(gzip_text(text))
            written.append(d / "cases.txt.gz")
        if fmt.ggml_type is not None:          # GGUF holds ggml's types only
            tensors[name] = (fmt, arrays["input"].shape, arrays["encoded"])
    if tensors:
        infos = [TensorInfo(n, f.ggml_type, shape) for n, (f, shape, _) in tensors.items()]
        kvs = [KV("general.architecture", GGUFValueType.STRING, "refquant-vectors"),
               KV("general.name", GGUFValueType.STRING, "refquant golden vectors")]
        write_gguf(out_dir / "vectors.gguf", kvs, infos, lambda t: tensors[t.name][2])
        written.append(out_dir / "vectors.gguf")
    return written
