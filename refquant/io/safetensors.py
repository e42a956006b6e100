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
from .files import AtomicFile, check_signal, confined, register_input, temp_dir

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


class TensorSpec:
    """A tensor's dtype and shape, known before its bytes (a planned output: `PlannedCheckpoint`)."""

    def __init__(self, dtype, shape):
        self.dtype, self.shape = np.dtype(dtype), tuple(int(d) for d in shape)
        self.nbytes = self.dtype.itemsize * int(np.prod(self.shape, dtype=object))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __eq__(self, other):
        return isinstance(other, TensorSpec) and (self.dtype, self.shape) == (other.dtype, other.shape)

    def __repr__(self):
        return f"TensorSpec({dtype_name(self.dtype)}, {list(self.shape)})"


def spec_of(a) -> TensorSpec:
    return a if isinstance(a, TensorSpec) else TensorSpec(np.asarray(a).dtype, np.asarray(a).shape)


def header(tensors: Mapping, metadata: Optional[dict] = None) -> tuple[bytes, list]:
    """The header bytes (length prefix included) and the (name, array) order of the data; the
    values may be arrays or `TensorSpec`s."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InputError("safetensors: __metadata__ must map strings to strings")
    order = sorted(tensors.items())
    h, off = {}, 0
    if metadata:
        h["__metadata__"] = dict(sorted(metadata.items()))
    for name, a in order:
        a = a if isinstance(a, TensorSpec) else np.asarray(a)
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


def _json(path, data: bytes, what: str):
    """Parse JSON as the safetensors and transformers readers do (strict UTF-8, no BOM), with one
    clear error for whatever is wrong."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise FileFormatError(f"{path}: {what} starts with a UTF-8 byte-order mark (JSON readers such as "
                              f"transformers' refuse it): remove the first 3 bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: {what} is not UTF-8 ({e.reason} at byte offset {e.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}: {what} is not JSON: {e.msg} (line {e.lineno}, column {e.colno}, "
                              f"byte offset {len(text[:e.pos].encode())})") from None
    except RecursionError:
        raise FileFormatError(f"{path}: {what} nests too deeply") from None
    except ValueError as e:
        raise FileFormatError(f"{path}: {what} is not JSON: {e}") from None


def read_json(path, what: str):
    """A JSON file read as _json reads it (strict UTF-8, no BOM, no NaN), errors naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FileFormatError(f"{path}: cannot read: {e.strerror}") from None
    return _json(path, data, what)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _is_uint(x) -> bool:
    return type(x) is int and x >= 0


def read_config(model_dir) -> dict:
    """A checkpoint's config.json: one JSON object."""
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise FileFormatError(f"{model_dir}: no config.json" + (" (it is not a file)" if p.exists() else ""))
    c = read_json(p, "config")
    if not isinstance(c, dict):
        raise FileFormatError(f"{p}: not a JSON object but a {type(c).__name__}")
    return c


class SafetensorsFile(Mapping):
    """A safetensors file, memory-mapped: f[name] is a read-only array view of the file. The header
    is checked as the safetensors package checks it: a JSON object of at most MAX_HEADER bytes,
    each entry a dtype it knows, a shape of non-negative integers and [begin, end] data offsets
    inside the data section holding exactly the shape's bytes."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.is_dir():
            raise FileFormatError(f"{self.path}: is a directory, not a safetensors file")
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                raw = fh.read(8)
                if len(raw) < 8:
                    raise FileFormatError(f"{self.path}: too short for a safetensors header ({size} bytes)")
                (n,) = struct.unpack("<Q", raw)
                if n > min(MAX_HEADER, size - 8):
                    raise FileFormatError(f"{self.path}: header length {n} (byte offset 0) runs past the file "
                                          f"({size} bytes) or the {MAX_HEADER}-byte limit")
                text = fh.read(n)
        except OSError as e:
            raise FileFormatError(f"{self.path}: cannot read: {e.strerror}") from None
        if not text.lstrip(b" ").startswith(b"{"):
            raise FileFormatError(f"{self.path}: header (byte offset 8) is not a JSON object")
        h = _json(self.path, text, "header")
        if not isinstance(h, dict):
            raise FileFormatError(f"{self.path}: header (byte offset 8) is not a JSON object")
        meta = h.pop("__metadata__", None)
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise FileFormatError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata = meta or {}
        self.start = 8 + n
        data = size - self.start
        self.entries = {}
        for name, e in h.items():
            where = f"{self.path}: tensor {name!r}"
            if not isinstance(e, dict):
                raise FileFormatError(f"{where}: entry is a {type(e).__name__}, not an object")
            dt = e.get("dtype")
            if not isinstance(dt, str) or dt not in DTYPES:
                raise FileFormatError(f"{where}: unknown dtype {dt!r}")
            shape, offs = e.get("shape"), e.get("data_offsets")
            if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
                raise FileFormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
            if not (isinstance(offs, list) and len(offs) == 2 and all(_is_uint(o) for o in offs)):
                raise FileFormatError(f"{where}: data_offsets {offs!r} is not [begin, end]")
            want = DTYPES[dt].itemsize
            for d in shape:
                want *= d                 # Python integers: no overflow, no warning
            b, end = offs
            if not b <= end <= data or end - b != want:
                raise FileFormatError(f"{where}: data_offsets [{b}, {end}] do not hold its {want} bytes inside the "
                                      f"{data}-byte data section (byte offset {self.start})")
            self.entries[name] = (DTYPES[dt], tuple(shape), b)
        try:
            self._mm = np.memmap(self.path, np.uint8, "r") if size else None
        except (OSError, ValueError) as e:
            raise FileFormatError(f"{self.path}: cannot map: {e}") from None
        register_input(self.path, self)       # a write over this file is refused while it is open

    def __getitem__(self, name) -> np.ndarray:
        if name not in self.entries:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        dt, shape, b = self.entries[name]
        n = dt.itemsize
        for d in shape:
            n *= d
        return self._mm[self.start + b:self.start + b + n].view(dt).reshape(shape)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)


class Checkpoint(Mapping):
    """A Hugging Face checkpoint directory: model.safetensors, or shards with their index. Shard
    names in the index are relative paths without '..' (refquant.io.files.confined); a shard the
    directory itself links elsewhere is read (a Hugging Face cache snapshot is made of links)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FileFormatError(f"{self.dir}: not a directory" if self.dir.exists() else f"{self.dir}: no such directory")
        index = self.dir / INDEX
        self.files = {}
        if index.exists():
            if not index.is_file():
                raise FileFormatError(f"{index}: not a file")
            ix = read_json(index, "index")
            wm = ix.get("weight_map") if isinstance(ix, dict) else None
            if not isinstance(wm, dict):
                raise FileFormatError(f"{index}: not a safetensors index (no \"weight_map\" object)")
            for k, v in wm.items():
                if not isinstance(v, str):
                    raise FileFormatError(f"{index}: weight_map[{k!r}] is {v!r}, not a file name")
                confined(self.dir, v, f"shard of {k!r}", resolve=False)
            self.weight_map = dict(wm)
        elif (self.dir / SINGLE).exists():
            self.weight_map = {k: SINGLE for k in self.file(SINGLE)}
        else:
            raise FileFormatError(f"{self.dir}: neither {SINGLE} nor {INDEX}")

    def file(self, name) -> SafetensorsFile:
        if name not in self.files:
            p = confined(self.dir, name, "shard", resolve=False)
            if not p.exists():
                raise FileFormatError(f"{self.dir}: the index names shard {name!r}, which is missing")
            self.files[name] = SafetensorsFile(p)
        return self.files[name]

    def __getitem__(self, k):
        f = self.file(self.weight_map[k])
        if k not in f.entries:
            raise FileFormatError(f"{self.dir / INDEX}: names tensor {k!r} in {self.weight_map[k]!r}, "
                                  f"which does not hold it")
        return f[k]

    def __iter__(self):
        return iter(sorted(self.weight_map))

    def __len__(self):
        return len(self.weight_map)


def extra_files(model_dir, skip=("config.json", INDEX), max_bytes: int = 64 * 2**20) -> dict:
    """The checkpoint's other files (tokenizer files, gguf_metadata.json, ...) to copy as they
    are: regular files under max_bytes, not hidden, not .safetensors. A symlink is followed only
    when it stays inside the checkpoint (confined); one pointing elsewhere is refused."""
    d = Path(model_dir)
    out = {}
    for f in sorted(d.iterdir()):
        if f.name.endswith(".safetensors") or f.name in skip or f.name.startswith("."):
            continue
        if f.is_symlink():
            confined(d, f.name, "file")
        if f.is_file() and f.stat().st_size < max_bytes:
            out[f.name] = f.read_bytes()
    return out


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
    shards = plan_shards(tensors, max_shard_bytes)
    tmp = temp_dir(out)
    try:
        for fname, sh in shards:
            save_file(tmp / fname, sh, metadata if metadata is not None else {"format": "pt"})
        _finish(tmp, out, tensors, shards, extra_files)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def plan_shards(tensors: Mapping, max_shard_bytes: int) -> list:
    """[(file name, {name: tensor or TensorSpec})]: name order, at most max_shard_bytes of data a
    shard (a larger tensor gets a shard of its own)."""
    shards, cur, size = [], {}, 0
    for name, a in sorted(tensors.items()):
        n = spec_of(a).nbytes
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = a
        size += n
    shards.append(cur)
    return list(zip(shard_names(len(shards)), shards))


def _finish(tmp: Path, out: Path, tensors: Mapping, shards: list, extra_files: Optional[dict]) -> None:
    """The index (several shards), the extra files, then the directory renamed into place."""
    if len(shards) > 1:
        idx = {"metadata": {"total_size": sum(spec_of(a).nbytes for a in tensors.values())},
               "weight_map": {k: f for f, sh in shards for k in sorted(sh)}}
        with AtomicFile(tmp / INDEX) as f:             # on disk before the rename, as the shards
            f.write((json.dumps(idx, indent=2, sort_keys=True) + "\n").encode())
    for fname, content in (extra_files or {}).items():
        with AtomicFile(tmp / fname) as f:
            f.write(content.encode() if isinstance(content, str) else content)
    os.chmod(tmp, 0o777 & ~_umask())
    check_signal()
    os.replace(tmp, out)


class PlannedCheckpoint:
    """A checkpoint directory written from its plan: every tensor's dtype and shape (`specs`,
    name -> TensorSpec) fix the shards, their headers and each tensor's offset, so each shard is
    written (header) and sized first, and tensors are written at their offsets (`place`) in any
    order, by any process that sees the directory. On a clean exit the index and `extra_files`
    are written and the temporary directory renamed into place; on an error nothing appears.
    The bytes are those `save_checkpoint` writes for the same tensors."""

    def __init__(self, directory, specs: Mapping, max_shard_bytes: int = 5 * 2**30,
                 metadata: Optional[dict] = None, extra_files: Optional[dict] = None):
        self.out = Path(directory)
        self.specs = {k: spec_of(v) for k, v in specs.items()}
        self.max_shard_bytes, self.extra = max_shard_bytes, extra_files
        self.metadata = metadata if metadata is not None else {"format": "pt"}
        self.tmp = None

    def __enter__(self) -> "PlannedCheckpoint":
        if self.out.exists():
            raise InputError(f"{self.out}: output directory already exists")
        self.shards = plan_shards(self.specs, self.max_shard_bytes)
        self.tmp = temp_dir(self.out)
        self.where = {}
        try:
            for fname, sh in self.shards:
                head, order = header(sh, self.metadata)
                path = self.tmp / fname
                with open(path, "wb") as f:
                    f.write(head)
                    f.truncate(len(head) + sum(t.nbytes for _, t in order))
                off = len(head)
                for name, t in order:
                    self.where[name] = (str(path), off)
                    off += t.nbytes
        except BaseException:
            shutil.rmtree(self.tmp)
            raise
        return self

    def place(self, name: str, a) -> tuple[str, int]:
        """(shard path, byte offset) of tensor `name`, checking `a` (array or spec) against the plan."""
        got, want = spec_of(a), self.specs[name]
        if got != want:
            raise InputError(f"{name}: planned as {want}, computed as {got}")
        return self.where[name]

    def __exit__(self, et, ev, tb) -> bool:
        try:
            if et is None:
                for path in {p for p, _ in self.where.values()}:
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                _finish(self.tmp, self.out, self.specs, self.shards, self.extra)
        finally:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
        return False


def write_at(path: str, at: int, a) -> None:
    """Write an array's bytes (little-endian, C order) at byte `at` of an existing file."""
    from .files import pwrite_all
    a = np.ascontiguousarray(a)
    fd = os.open(path, os.O_WRONLY)
    try:
        pwrite_all(fd, a.astype(a.dtype.newbyteorder("<"), copy=False), at)
    finally:
        os.close(fd)


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u
