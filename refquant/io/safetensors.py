"""safetensors files and sharded checkpoints, read memory-mapped and written deterministically.

File layout (the safetensors format):

    bytes 0..8        u64 little-endian: N, the header's length
    bytes 8..8+N      UTF-8 JSON: {"__metadata__": {str: str}, name: {"dtype": "BF16",
                      "shape": [..], "data_offsets": [begin, end]}, ...}, padded with spaces
                      so that the data starts at a multiple of 8
    bytes 8+N..       the tensors' bytes, little-endian, C order, offsets relative to here

refquant writes tensors in name order, the JSON with sorted keys and no spaces, so the same
tensors and metadata always give the same bytes (the safetensors package orders tensors by
dtype then name and writes __metadata__ in hash order, which varies between runs). Every dtype
is read and written, FP8 included (the package's NumPy API cannot load F8_*; ml_dtypes provides
the types). Files are written atomically (refquant.io.files.AtomicFile); a sharded checkpoint is
written into a temporary directory renamed into place only when every shard is complete.

    model.safetensors                              one file, or
    model-00001-of-00003.safetensors ...           shards, and
    model.safetensors.index.json                   {"metadata": {"total_size": bytes of tensor
                                                   data}, "weight_map": {name: shard file}}
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Optional

import ml_dtypes
import numpy as np

from ..errors import FileFormatError, InputError
from .files import AtomicFile, temp_dir

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
NAMES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100_000_000


def dtype_name(dt) -> str:
    dt = np.dtype(dt).newbyteorder("<") if np.dtype(dt).byteorder == ">" else np.dtype(dt)
    if dt not in NAMES:
        raise InputError(f"safetensors: dtype {dt} has no safetensors name")
    return NAMES[dt]


def header(tensors: Mapping, metadata: Optional[dict] = None) -> tuple[bytes, list]:
    """The header bytes (length prefix included) and the (name, array) order of the data."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InputError("safetensors: __metadata__ must map strings to strings")
    order = sorted(tensors.items())
    h, off = {}, 0
    if metadata:
        h["__metadata__"] = dict(sorted(metadata.items()))
    for name, a in order:
        a = np.asarray(a)
        n = a.nbytes
        h[name] = {"dtype": dtype_name(a.dtype), "shape": [int(s) for s in a.shape], "data_offsets": [off, off + n]}
        off += n
    js = json.dumps(h, sort_keys=False, separators=(",", ":"), ensure_ascii=False).encode()
    js += b" " * (-(8 + len(js)) % 8)
    return struct.pack("<Q", len(js)) + js, order


def save_file(path, tensors: Mapping, metadata: Optional[dict] = None) -> None:
    """Write one safetensors file atomically; same input, same bytes."""
    head, order = header(tensors, metadata)
    with AtomicFile(path) as f:
        f.write(head)
        for _, a in order:
            f.write(np.ascontiguousarray(a).astype(np.asarray(a).dtype.newbyteorder("<"), copy=False).tobytes())


class SafetensorsFile(Mapping):
    """A safetensors file, memory-mapped: f[name] is a read-only array view of the file."""

    def __init__(self, path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise FileFormatError(f"{self.path}: too short for a safetensors header ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(MAX_HEADER, size - 8):
                raise FileFormatError(f"{self.path}: header length {n} runs past the file ({size} bytes)")
            try:
                h = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise FileFormatError(f"{self.path}: header is not JSON: {e}") from None
        self.metadata = h.pop("__metadata__", None) or {}
        self.start = 8 + n
        data = size - self.start
        self.entries = {}
        for name, e in h.items():
            if e.get("dtype") not in DTYPES:
                raise FileFormatError(f"{self.path}: tensor {name!r} has unknown dtype {e.get('dtype')!r}")
            b, end = e["data_offsets"]
            want = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
            if not 0 <= b <= end <= data or end - b != want:
                raise FileFormatError(f"{self.path}: tensor {name!r} has offsets [{b}, {end}] that do not hold "
                                      f"{want} bytes inside the {data}-byte data section")
            self.entries[name] = (DTYPES[e["dtype"]], tuple(e["shape"]), b)
        self._mm = np.memmap(self.path, np.uint8, "r") if size else None

    def __getitem__(self, name) -> np.ndarray:
        if name not in self.entries:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        dt, shape, b = self.entries[name]
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return self._mm[self.start + b:self.start + b + n].view(dt).reshape(shape)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)


class Checkpoint(Mapping):
    """A Hugging Face checkpoint directory: model.safetensors, or shards with their index."""

    def __init__(self, directory):
        self.dir = Path(directory)
        index = self.dir / INDEX
        self.files = {}
        if index.exists():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise FileFormatError(f"{index}: not a safetensors index ({e})") from None
            self.weight_map = dict(wm)
        elif (self.dir / SINGLE).exists():
            self.weight_map = {k: SINGLE for k in SafetensorsFile(self.dir / SINGLE)}
        else:
            raise FileFormatError(f"{self.dir}: neither {SINGLE} nor {INDEX}")

    def file(self, name) -> SafetensorsFile:
        if name not in self.files:
            p = self.dir / name
            if not p.exists():
                raise FileFormatError(f"{self.dir}: the index names shard {name!r}, which is missing")
            self.files[name] = SafetensorsFile(p)
        return self.files[name]

    def __getitem__(self, k):
        return self.file(self.weight_map[k])[k]

    def __iter__(self):
        return iter(sorted(self.weight_map))

    def __len__(self):
        return len(self.weight_map)


def shard_names(n: int) -> list:
    return [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def save_checkpoint(directory, tensors: Mapping, max_shard_bytes: int = 5 * 2**30,
                    metadata: Optional[dict] = None, extra_files: Optional[dict] = None) -> None:
    """Write tensors (name order) into shards of at most max_shard_bytes of data (a tensor larger
    than that gets a shard of its own), the index when there is more than one, and `extra_files`
    (name -> str or bytes, e.g. config.json). The directory appears complete or not at all."""
    out = Path(directory)
    if out.exists():
        raise InputError(f"{out}: output directory already exists")
    shards, cur, size = [], {}, 0
    for name, a in sorted(tensors.items()):
        n = np.asarray(a).nbytes
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = a
        size += n
    shards.append(cur)
    names = shard_names(len(shards))
    tmp = temp_dir(out)
    try:
        for fname, sh in zip(names, shards):
            save_file(tmp / fname, sh, metadata if metadata is not None else {"format": "pt"})
        if len(shards) > 1:
            idx = {"metadata": {"total_size": sum(np.asarray(a).nbytes for a in tensors.values())},
                   "weight_map": {k: f for f, sh in zip(names, shards) for k in sorted(sh)}}
            (tmp / INDEX).write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")
        for fname, content in (extra_files or {}).items():
            with AtomicFile(tmp / fname) as f:
                f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u
