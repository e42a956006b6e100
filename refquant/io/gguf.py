"""GGUF v3 files: read (memory-mapped, on gguf-py's GGUFReader) and write (streamed, atomic).

Layout written, all little-endian:

    magic "GGUF" | version u32 = 3 | n_tensors u64 | n_kv u64
    n_kv × (key: u64 length + UTF-8 bytes | value type u32 | value)
    n_tensors × (name | n_dims u32 | ne[n_dims] u64, innermost first | ggml type u32 | offset u64)
    zero padding to `general.alignment` (default 32)
    tensor data, each tensor at its offset (relative to here), each padded to the alignment

Reading a file and writing it back with the same key/values and tensors gives the same bytes:
key/value pairs that were read are written back from their original bytes.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFReader, GGUFValueType

from ..errors import FileFormatError, FormatError
from ..registry import get_format

GGUF_VERSION = 3
ALIGNMENT_KEY = "general.alignment"


def block_sizes(ggml_type: int) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type: refquant's registry first (it has
    the current Q8_1 size, 36 bytes; gguf-py's table still says 40), then gguf-py's table."""
    try:
        fmt = get_format(int(ggml_type))
        return fmt.block_size, fmt.type_size
    except FormatError:
        pass
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(int(ggml_type))]
    except (ValueError, KeyError):
        raise FormatError(f"unknown ggml type id {int(ggml_type)}") from None


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(int(ggml_type)).name
    except ValueError:
        return f"type#{int(ggml_type)}"


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    bs, ts = block_sizes(ggml_type)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return n // bs * ts


def pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


@dataclass
class KV:
    """One metadata pair. `raw` holds the bytes it was read from (key included); a KV built in
    code has raw None and is packed from (vtype, value, sub_type)."""
    key: str
    vtype: GGUFValueType
    value: Any
    sub_type: Optional[GGUFValueType] = None
    raw: Optional[bytes] = field(default=None, repr=False)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]   # NumPy order: outermost first (GGUF's ne reversed)
    offset: int = 0          # relative to the start of the data section
    nbytes: int = 0

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.shape[-1:])


class _CheckedReader(GGUFReader):
    """GGUFReader that checks every tensor info against the file before using it, so that a bad
    file gets an error naming the tensor and the offset."""

    def _build_fields(self, offs, count):
        end = super()._build_fields(offs, count)
        self._kv_end = int(end)   # where the last key/value pair ends
        return end

    def _get_field_parts(self, orig_offs, raw_type):
        # Arrays of strings or scalars: the same parts gguf-py builds, but as views of one copy of
        # the bytes instead of one memory-mapped view per element (which takes seconds for a
        # vocabulary of 100k tokens).
        if int(raw_type) != int(GGUFValueType.ARRAY) or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        mv = memoryview(self.data)
        itype, alen = struct.unpack_from("<IQ", mv, orig_offs)
        if alen == 0 or itype == int(GGUFValueType.ARRAY):
            return super()._get_field_parts(orig_offs, raw_type)
        start = orig_offs + 12
        if itype == int(GGUFValueType.STRING):
            bounds, at = [], start
            for _ in range(alen):
                (n,) = struct.unpack_from("<Q", mv, at)
                bounds.append((at, n))
                at += 8 + n
            end = at
        else:
            nptype = self.gguf_scalar_to_np.get(GGUFValueType(itype))
            if nptype is None:
                return super()._get_field_parts(orig_offs, raw_type)
            size = np.dtype(nptype).itemsize
            end = start + size * alen
        region = np.array(self.data[orig_offs:end])  # one copy; parts are views into it
        if region.size != end - orig_offs:
            raise ValueError("array runs past the end of the file")
        parts = [region[0:4].view(np.uint32), region[4:12].view(np.uint64)]
        if itype == int(GGUFValueType.STRING):
            for at, n in bounds:
                a = at - orig_offs
                parts.append(region[a:a + 8].view(np.uint64))
                parts.append(region[a + 8:a + 8 + n])
            idxs = list(range(3, 2 + 2 * alen + 1, 2))
        else:
            body = region[12:]
            parts += [body[i * size:(i + 1) * size].view(nptype) for i in range(alen)]
            idxs = list(range(2, 2 + alen))
        return end - orig_offs, parts, idxs, [GGUFValueType.ARRAY, GGUFValueType(itype)]

    def _build_tensors(self, start_offs, fields):
        size = len(self.data)
        for f in fields:
            _nl, name_data, _nd, dims, raw_dtype, offset_tensor = f.parts
            name = bytes(name_data).decode("utf-8", "replace")
            t = int(raw_dtype[0])
            try:
                GGMLQuantizationType(t)
            except ValueError:
                raise FileFormatError(f"tensor {name!r}: unknown ggml type id {t}") from None
            bs, _ = block_sizes(t)
            ne0 = int(dims[0]) if len(dims) else 1
            if ne0 % bs:
                raise FileFormatError(f"tensor {name!r}: row length {ne0} is not a multiple of "
                                      f"{type_name(t)}'s block size {bs}")
            nbytes = tensor_nbytes(t, tuple(int(d) for d in dims))
            begin = start_offs + int(offset_tensor[0])
            if begin % self.alignment and int(offset_tensor[0]) % self.alignment:
                raise FileFormatError(f"tensor {name!r}: offset {int(offset_tensor[0])} is not a multiple "
                                      f"of the alignment {self.alignment}")
            if begin + nbytes > size:
                raise FileFormatError(f"tensor {name!r}: data at byte offset {begin}..{begin + nbytes} "
                                      f"runs past the end of the file ({size} bytes)")
        super()._build_tensors(start_offs, fields)


class GGUFFile:
    """A GGUF file opened for reading. Tensors are memory-mapped, never read whole."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as e:
            raise FileFormatError(f"{path}: cannot open: {e.strerror}") from None
        if size < 24:
            raise FileFormatError(f"{path}: {size} bytes is too short for a GGUF header (24 bytes)")
        with open(self.path, "rb") as fh:
            magic = fh.read(4)
        if struct.unpack("<I", magic)[0] != GGUF_MAGIC:
            raise FileFormatError(f"{path}: bad magic {magic!r}, expected b'GGUF': not a GGUF file")
        try:
            r = _CheckedReader(self.path, "r")
        except FileFormatError as e:
            raise FileFormatError(f"{path}: {e}") from None
        except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError, OverflowError) as e:
            raise FileFormatError(f"{path}: truncated or corrupt GGUF header: {e}") from None
        self._reader = r
        self._mm = r.data
        self.alignment = int(r.alignment)
        self.data_offset = int(r.data_offset)
        version = r.fields["GGUF.version"].parts[0][0]
        if int(version) != GGUF_VERSION:
            raise FileFormatError(f"{path}: GGUF version {int(version)}; refquant reads version 3")
        self.kvs: list[KV] = []
        kv_fields = [(key, f) for key, f in r.fields.items() if not key.startswith("GGUF.")]
        # key/value pairs lie end to end: each one's bytes run up to the next one's offset
        ends = [f.offset for _, f in kv_fields[1:]] + [getattr(r, "_kv_end", None)]
        for (key, f), end in zip(kv_fields, ends):
            if end is not None and end > f.offset:
                raw = bytes(r.data[f.offset:end])
            else:
                raw = bytes(np.concatenate([np.asarray(p).reshape(-1).view(np.uint8) for p in f.parts]))
            sub = f.types[1] if f.types[0] == GGUFValueType.ARRAY and len(f.types) > 1 else None
            self.kvs.append(KV(key, f.types[0], f.contents(), sub, raw))
        self.tensors: list[TensorInfo] = []
        for t in r.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.tensors.append(TensorInfo(t.name, int(t.tensor_type), shape,
                                           t.data_offset - self.data_offset,
                                           tensor_nbytes(int(t.tensor_type), shape)))
        self._by_name = {t.name: t for t in self.tensors}

    # -- metadata
    @property
    def metadata(self) -> dict[str, Any]:
        return {kv.key: kv.value for kv in self.kvs}

    def get(self, key: str, default=None):
        for kv in self.kvs:
            if kv.key == key:
                return kv.value
        return default

    # -- tensors
    def info(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise FileFormatError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 (rows..., row_bytes), memory-mapped."""
        t = self.info(name)
        begin = self.data_offset + t.offset
        data = self._mm[begin:begin + t.nbytes]
        return data.reshape(t.shape[:-1] + (t.row_bytes,)) if t.shape else data

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32 in its NumPy shape, decoded by the spec."""
        from ..backend import SPEC
        t = self.info(name)
        raw = self.raw(name)
        if t.ggml_type in _PLAIN_NUMPY:
            return np.asarray(raw).view(_PLAIN_NUMPY[t.ggml_type]).astype(np.float32).reshape(t.shape)
        return SPEC.dequantize(np.asarray(raw), t.ggml_type).reshape(t.shape)

    def close(self):
        self._mm = None
        self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_PLAIN_NUMPY = {int(GGMLQuantizationType.I8): "<i1", int(GGMLQuantizationType.I16): "<i2",
                int(GGMLQuantizationType.I32): "<i4", int(GGMLQuantizationType.I64): "<i8",
                int(GGMLQuantizationType.F64): "<f8"}


# ------------------------------------------------------------------------------ writing

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "<?",
}


def _pack_string(s) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype: GGUFValueType, value, sub_type=None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _pack_string(value)
    if vtype == GGUFValueType.ARRAY:
        if sub_type is None:
            raise FormatError("an array KV needs its element type (sub_type)")
        out = [struct.pack("<IQ", int(sub_type), len(value))]
        if sub_type in _SCALAR:
            out.append(np.asarray(value, dtype=_SCALAR[sub_type]).tobytes())
        else:
            out.extend(_pack_value(sub_type, v) for v in value)
        return b"".join(out)
    return struct.pack(_SCALAR[vtype], value)


def pack_kv(kv: KV) -> bytes:
    if kv.raw is not None:
        return kv.raw
    return _pack_string(kv.key) + struct.pack("<I", int(kv.vtype)) + _pack_value(kv.vtype, kv.value, kv.sub_type)


def _pack_tensor_info(t: TensorInfo) -> bytes:
    ne = tuple(reversed(t.shape)) if t.shape else (1,)
    return (_pack_string(t.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
            + struct.pack("<IQ", int(t.ggml_type), t.offset))


def layout(tensors: Iterable[TensorInfo], alignment: int) -> list[TensorInfo]:
    """Give each tensor its offset: laid end to end in order, each padded to the alignment."""
    out, at = [], 0
    for t in tensors:
        nbytes = tensor_nbytes(t.ggml_type, t.shape)
        out.append(TensorInfo(t.name, int(t.ggml_type), tuple(t.shape), at, nbytes))
        at += pad(nbytes, alignment)
    return out


class AtomicFile:
    """A file written under a temporary name beside its destination and renamed into place only
    when complete; on any error (or interrupt) the temporary file is removed and nothing appears."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        d = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=d)
        self._tmp = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets ordinary permissions
        self.fh = os.fdopen(fd, "wb")
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
            self.fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
        return False


def write_gguf(path, kvs: list[KV], tensors: list[TensorInfo],
               tensor_data: Callable[[TensorInfo], np.ndarray],
               on_tensor: Optional[Callable[[TensorInfo], None]] = None) -> None:
    """Write a GGUF v3 file atomically, one tensor at a time.

    `tensors` gives names, types and shapes in file order (offsets are computed);
    `tensor_data(info)` returns that tensor's bytes (any array whose buffer is exactly nbytes, or
    an iterable of arrays that together are), called once per tensor in order, so a model never
    has to be in memory whole.
    """
    alignment = GGUF_DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == ALIGNMENT_KEY:
            alignment = int(kv.value)
    infos = layout(tensors, alignment)
    names = set()
    for t in infos:
        if t.name in names:
            raise FormatError(f"tensor {t.name!r} appears twice")
        names.add(t.name)
    with AtomicFile(path) as fh:
        fh.write(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(infos), len(kvs)))
        for kv in kvs:
            fh.write(pack_kv(kv))
        for t in infos:
            fh.write(_pack_tensor_info(t))
        at = fh.tell()
        fh.write(b"\0" * (pad(at, alignment) - at))
        for t in infos:
            data = tensor_data(t)
            # an array, or an iterable of arrays written one after the other (row slabs)
            chunks = [data] if isinstance(data, np.ndarray) else data
            size = 0
            for chunk in chunks:
                b = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1)
                size += b.size
                if size <= t.nbytes:
                    fh.write(memoryview(b))
            if size != t.nbytes:
                raise FormatError(f"tensor {t.name!r}: {size} bytes given, {t.type_name} {t.shape} "
                                  f"takes {t.nbytes}")
            fh.write(b"\0" * (pad(t.nbytes, alignment) - t.nbytes))
            if on_tensor is not None:
                on_tensor(t)


def copy_gguf(src: GGUFFile, dst) -> None:
    """Write `src` back out unchanged."""
    write_gguf(dst, src.kvs, src.tensors, lambda t: src.raw(t.name))
