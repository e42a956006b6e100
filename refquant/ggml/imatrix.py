"""Importance-matrix files as llama.cpp reads them (common/imatrix-loader.cpp and the loader of
tools/quantize): the GGUF format written by current `llama-imatrix`, and the legacy `.dat` format.

GGUF imatrix: for each weight matrix `W` a pair of F32 tensors

    <W>.in_sum2   ne = (n_per_row, n_expert)   sum over the calibration tokens of x²
    <W>.counts    ne = (1, n_expert)            number of tokens seen (per expert)

and the metadata `imatrix.datasets` (array of strings), `imatrix.chunk_count` (u32),
`imatrix.chunk_size` (u32); all three must be present. The value handed to the quantizer is
`in_sum2 / (float) lround(count)` per expert (float32 division), or 1.0 for an expert never seen.

Legacy `.dat` (all little-endian):

    n_entries: i32 (>= 1)
    n_entries x ( name_len: i32 | name bytes | ncall: i32 | nval: i32 (>= 1) | nval x f32 )
    optional trailer: chunk_count: i32 | dataset_len: i32 | dataset bytes

The stored values are already averages times `ncall`; the quantizer gets `value / (float) ncall`
(float32 division), or the values as they are when ncall <= 0.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FileFormatError, InputError

F32 = np.float32
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class Imatrix:
    """Importance weights per tensor name: float32 arrays of n_per_row x n_expert values, as
    llama-quantize hands them to `llama_model_quantize`."""
    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    is_legacy: bool = False
    path: str = ""


def _c_string(b: bytes) -> str:
    """A C string built from bytes: it ends at the first NUL."""
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _lround(x: np.ndarray) -> np.ndarray:
    """lround: half away from zero, to int64."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def check_values(entries: dict, where: str) -> None:
    """Importance weights are sums of squares: every value finite (llama-quantize refuses an
    imatrix with a non-finite value, llama-quant.cpp) and not negative (a negative weight turns
    the quantizers' weighted error searches into maximizations)."""
    for name, v in entries.items():
        v = np.asarray(v)
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            i = int(np.argmax(bad.reshape(-1)))
            x = float(v.reshape(-1)[i])
            why = "a non-finite value" if not np.isfinite(x) else "a negative value"
            raise InputError(f"{where}: entry {name!r} has {why}, {x}, at {i}; importance weights are sums of "
                             f"squares, finite and >= 0 (llama-quantize refuses a non-finite one too)")


def read_imatrix(path) -> Imatrix:
    """Read an imatrix file (GGUF or legacy .dat, told apart by the GGUF magic)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise FileFormatError(f"imatrix {path}: cannot open: {e.strerror}") from None
    im = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    im.path = str(path)
    check_values(im.entries, f"imatrix {path}")
    return im


def _read_gguf(p: Path) -> Imatrix:
    from ..io.gguf import GGUFFile
    try:
        f = GGUFFile(p)
    except FileFormatError:
        # llama.cpp falls back to the legacy reader when the GGUF parser fails
        return _read_legacy(p)
    with f:
        if not f.tensors:
            raise FileFormatError(f"imatrix {p}: no data (the GGUF file has no tensors)")
        meta = f.metadata
        datasets = []
        for kv in f.kvs:
            if kv.key == KEY_DATASETS and kv.sub_type is not None and int(kv.sub_type) == 8:  # string array
                datasets = [str(s) for s in kv.value]
        has_meta = all(k in meta for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE))
        if not has_meta:
            missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in meta]
            raise FileFormatError(f"imatrix {p}: missing imatrix metadata ({', '.join(missing)})")
        pairs: dict[str, list] = {}
        for t in f.tensors:
            if not t.name:
                continue
            if t.name.endswith(".in_sum2"):
                pairs.setdefault(t.name[:-len(".in_sum2")], [None, None])[0] = t
            elif t.name.endswith(".counts"):
                pairs.setdefault(t.name[:-len(".counts")], [None, None])[1] = t
        entries = {}
        for name in sorted(pairs):
            s, c = pairs[name]
            if s is None or c is None:
                raise FileFormatError(f"imatrix {p}: mismatched sums and counts for {name!r} "
                                      f"(one of {name}.in_sum2 / {name}.counts is missing)")
            if s.ggml_type != 0 or c.ggml_type != 0:
                raise FileFormatError(f"imatrix {p}: sums and counts for {name!r} must be F32")
            sums = np.asarray(f.raw(s.name)).reshape(-1).view("<f4").astype(F32)
            raw_counts = np.asarray(f.raw(c.name)).reshape(-1).view("<f4")
            bad = ~(np.abs(raw_counts) < 2.0**63)     # lround of NaN, Inf or beyond int64 is undefined
            if bad.any():
                j = int(np.argmax(bad))
                raise FileFormatError(f"imatrix {p}: {c.name!r} count {j} is {float(raw_counts[j])}; a token count is "
                                      f"finite")
            counts = _lround(raw_counts)
            if counts.size == 0 or sums.size % counts.size:
                raise FileFormatError(f"imatrix {p}: {name!r} has {sums.size} sums for {counts.size} counts")
            ne0 = sums.size // counts.size
            cnt = counts.astype(F32)  # (float) entry.counts[j]
            per = sums.reshape(counts.size, ne0)
            with np.errstate(all="ignore"):
                vals = np.where(cnt[:, None] > 0, per / np.where(cnt > 0, cnt, F32(1))[:, None], F32(1))
            entries[name] = vals.astype(F32).reshape(-1)
        chunk_count = int(meta[KEY_CHUNK_COUNT])
        chunk_size = int(meta[KEY_CHUNK_SIZE])
    return Imatrix(entries, datasets, chunk_count, chunk_size, False)


def _read_legacy(p: Path) -> Imatrix:
    data = p.read_bytes()
    at = 0

    def take(n, what):
        nonlocal at
        if at + n > len(data):
            raise FileFormatError(f"imatrix {p}: truncated legacy imatrix file while reading {what} "
                                  f"(offset {at}, {len(data)} bytes)")
        b = data[at:at + n]
        at += n
        return b

    if len(data) < 4:
        raise FileFormatError(f"imatrix {p}: no data ({len(data)} bytes): neither GGUF nor a legacy imatrix file")
    (n_entries,) = struct.unpack("<i", take(4, "the entry count"))
    if n_entries < 1:
        raise FileFormatError(f"imatrix {p}: no data (entry count {n_entries}): neither GGUF nor a legacy imatrix file")
    raw: dict[str, tuple[np.ndarray, int]] = {}
    for i in range(n_entries):
        (ln,) = struct.unpack("<i", take(4, f"entry {i + 1}'s name length"))
        if ln < 0:
            raise FileFormatError(f"imatrix {p}: entry {i + 1} has a negative name length {ln}")
        name = _c_string(take(ln, f"entry {i + 1}'s name"))
        ncall, nval = struct.unpack("<ii", take(8, f"entry {i + 1}'s counts"))
        if nval < 1:
            raise FileFormatError(f"imatrix {p}: entry {i + 1} ({name!r}) has {nval} values")
        sums = np.frombuffer(take(4 * nval, f"entry {i + 1}'s values"), dtype="<f4").astype(F32)
        raw[name] = (sums, ncall)
    chunk_count, datasets = 0, []
    if at < len(data):
        # the trailer is optional; a short read keeps the bytes it got (little-endian, rest zero)
        chunk_count = int.from_bytes(data[at:at + 4].ljust(4, b"\0"), "little", signed=True)
        at += 4
        if at + 4 <= len(data):
            (ln,) = struct.unpack("<i", data[at:at + 4])
            at += 4
            if ln > 0 and at + ln <= len(data):
                datasets.append(_c_string(data[at:at + ln]))
    entries = {}
    for name, (sums, ncall) in raw.items():
        if ncall > 0:
            entries[name] = (sums / F32(ncall)).astype(F32)  # float / (float) int64
        else:
            entries[name] = sums
    return Imatrix(entries, datasets, int(chunk_count), 0, True)


def write_imatrix_gguf(path, entries_sums: dict[str, tuple[np.ndarray, np.ndarray]], datasets: list[str],
                       chunk_count: int, chunk_size: int) -> None:
    """Write a GGUF imatrix: name -> (in_sum2 float32 (n_expert, n_per_row), counts float32 (n_expert,)).
    Tensors in name order, `.in_sum2` before `.counts`, as llama-imatrix writes them."""
    from gguf import GGUFValueType

    from ..io.gguf import KV, TensorInfo, write_gguf
    kvs = [KV("general.type", GGUFValueType.STRING, "imatrix"),
           KV(KEY_DATASETS, GGUFValueType.ARRAY, list(datasets), GGUFValueType.STRING),
           KV(KEY_CHUNK_COUNT, GGUFValueType.UINT32, int(chunk_count)),
           KV(KEY_CHUNK_SIZE, GGUFValueType.UINT32, int(chunk_size))]
    infos, data = [], {}
    for name in sorted(entries_sums):
        s, c = entries_sums[name]
        s = np.asarray(s, dtype=F32)
        s = s.reshape(1, -1) if s.ndim == 1 else s
        c = np.asarray(c, dtype=F32).reshape(-1, 1)
        if s.shape[0] == 1:  # ne = (n, 1) and (1, 1) are written with their trailing 1 dropped
            s, c = s.reshape(-1), c.reshape(-1)
        infos.append(TensorInfo(name + ".in_sum2", 0, s.shape))
        infos.append(TensorInfo(name + ".counts", 0, c.shape))
        data[name + ".in_sum2"] = s
        data[name + ".counts"] = c
    write_gguf(path, kvs, infos, lambda t: data[t.name].astype("<f4"))


def write_imatrix_legacy(path, entries: dict[str, tuple[np.ndarray, int]], chunk_count: int | None = None,
                         dataset: str | None = None) -> None:
    """Write a legacy .dat imatrix: name -> (values float32, ncall)."""
    from ..io.gguf import AtomicFile
    with AtomicFile(path) as fh:
        fh.write(struct.pack("<i", len(entries)))
        for name, (vals, ncall) in entries.items():
            b = name.encode("utf-8")
            v = np.asarray(vals, dtype="<f4").reshape(-1)
            fh.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", int(ncall), v.size) + v.tobytes())
        if chunk_count is not None:
            fh.write(struct.pack("<i", int(chunk_count)))
            d = (dataset or "").encode("utf-8")
            fh.write(struct.pack("<i", len(d)) + d)
