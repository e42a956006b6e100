"""GGUF v3 files: read (header parsed and checked here, tensors memory-mapped) and write (streamed, atomic).

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

import struct
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from ..errors import FileFormatError, FormatError
from ..registry import get_format
from . import files
from .files import AtomicFile, check_signal, start_writeback  # AtomicFile re-exported: writers import it from here

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
    """The registry's name for a ggml type id, then gguf-py's (for types refquant does not
    define: I8, I32, F64, ...)."""
    try:
        return get_format(int(ggml_type)).name
    except FormatError:
        pass
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


# Limits a file's header values are held to before anything is allocated from them. gguf.cpp's
# own: GGUF_MAX_STRING_LENGTH, GGUF_MAX_ARRAY_ELEMENTS (both 2^30), GGML_MAX_DIMS = 4, no arrays of
# arrays, an alignment that is a power of two in a UINT32 general.alignment, element counts that
# fit int64. refquant's: an alignment of at most MAX_ALIGNMENT, every length bounded by the bytes
# left in the file (so metadata memory is proportional to the file's size).
MAX_STRING_LENGTH = 1 << 30
MAX_ARRAY_ELEMENTS = 1 << 30
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 20
INT64_MAX = (1 << 63) - 1

_NUMPY = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"), GGUFValueType.FLOAT64: np.dtype("<f8"),
    GGUFValueType.BOOL: np.dtype("<u1"),
}
_VALUE_TYPES = {int(t): t for t in GGUFValueType}


class StringArray(Sequence):
    """A GGUF array of strings, kept as the bytes it was read from and one offset per element
    (8 bytes each, fewer than the element's own length prefix): a string is decoded when asked
    for. Compares equal to a list of the same strings."""

    def __init__(self, raw: bytes, starts: np.ndarray, lengths: np.ndarray):
        self._raw, self._starts, self._lengths = raw, starts, lengths

    def __len__(self):
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        a = int(self._starts[i])
        return self._raw[a:a + int(self._lengths[i])].decode("utf-8")

    def __iter__(self):
        raw = self._raw
        for a, n in zip(self._starts.tolist(), self._lengths.tolist()):
            yield raw[a:a + n].decode("utf-8")

    def tolist(self) -> list:
        return list(self)

    def in_strings(self) -> np.ndarray:
        """A mask over the raw bytes: True on the strings' own bytes (not on the key, the
        header or the length prefixes). The strings do not overlap: +1 where one begins, -1
        where it ends, summed."""
        edge = np.zeros(len(self._raw) + 1, np.int8)
        edge[self._starts] += 1
        edge[self._starts + self._lengths] -= 1
        return np.cumsum(edge[:-1], dtype=np.int8).view(bool)

    def any_contains_nul(self) -> bool:
        """Whether any string holds a NUL byte, without decoding them."""
        if len(self) == 0:
            return False
        return bool(np.any((np.frombuffer(self._raw, np.uint8) == 0) & self.in_strings()))

    def __eq__(self, other):
        if isinstance(other, (StringArray, list, tuple)):
            return len(self) == len(other) and all(x == y for x, y in zip(self, other))
        return NotImplemented

    def __repr__(self):
        head = ", ".join(repr(x) for x in self[:4])
        return f"StringArray([{head}{', ...' if len(self) > 4 else ''}], {len(self)} strings)"


_U64 = struct.Struct("<Q")


class _Header:
    """The header of a little-endian GGUF v3 file, parsed and checked against the file: every
    length is bounded by the bytes left before anything is made from it, and every error names
    the file, the key or tensor and the byte offset."""

    def __init__(self, path: Path, buf, size: int):
        self.path, self.buf, self.size = path, buf, size
        self.at = 0

    def fail(self, msg: str, at: Optional[int] = None):
        raise FileFormatError(f"{self.path}: {msg} (byte offset {self.at if at is None else at})")

    def need(self, n: int, what: str):
        if n > self.size - self.at:
            self.fail(f"{what}: {n} bytes needed, {max(self.size - self.at, 0)} left in the file")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.at)
        self.at += n
        return v if len(v) > 1 else v[0]

    def string(self, what: str) -> str:
        at = self.at
        n = self.unpack("<Q", what)
        if n > MAX_STRING_LENGTH:
            self.fail(f"{what}: string length {n} exceeds the limit of {MAX_STRING_LENGTH}", at)
        self.need(n, what)
        b = bytes(self.buf[self.at:self.at + n])
        self.at += n
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what}: not UTF-8 ({e.reason} at byte {e.start} of the string)", at + 8 + e.start)

    def value_type(self, what: str, at: int) -> GGUFValueType:
        t = self.unpack("<I", what)
        if t not in _VALUE_TYPES:
            self.fail(f"{what}: unknown value type {t}", at)
        return _VALUE_TYPES[t]

    def kv(self, index: int, seen: set) -> KV:
        start = self.at
        key = self.string(f"key/value pair {index}: key")
        if not key:
            self.fail(f"key/value pair {index}: empty key", start)
        if key in seen:
            self.fail(f"key {key!r} appears twice", start)
        seen.add(key)
        at = self.at
        vtype = self.value_type(f"key {key!r}: value type", at)
        sub = None
        if vtype == GGUFValueType.ARRAY:
            sub = self.value_type(f"key {key!r}: array element type", self.at)
            if sub == GGUFValueType.ARRAY:   # gguf.cpp refuses arrays of arrays
                self.fail(f"key {key!r}: an array of arrays (GGUF readers take arrays of scalars or strings)", at)
            n = self.unpack("<Q", f"key {key!r}: array length")
            if n > MAX_ARRAY_ELEMENTS:
                self.fail(f"key {key!r}: array length {n} exceeds the limit of {MAX_ARRAY_ELEMENTS}", at)
            body = self.at
            if sub == GGUFValueType.STRING:
                starts, lengths = self._string_array(key, n)
            else:
                dt = _NUMPY[sub]
                self.need(n * dt.itemsize, f"key {key!r}: array of {n} {sub.name}")
                self.at += n * dt.itemsize
            raw = bytes(self.buf[start:self.at])
            if sub == GGUFValueType.STRING:
                base = body - start
                value = StringArray(raw, starts - start + 0, lengths)
                self._check_utf8(key, raw, value, start, base)
            else:
                value = np.frombuffer(raw, dt, n, body - start)
                if sub == GGUFValueType.BOOL:
                    value = value != 0
            return KV(key, vtype, value, sub, raw)
        if vtype == GGUFValueType.STRING:
            value = self.string(f"key {key!r}: value")
        else:
            fmt = _SCALAR[vtype]
            value = self.unpack(fmt if vtype != GGUFValueType.BOOL else "<B", f"key {key!r}: value")
            if vtype == GGUFValueType.BOOL:
                value = value != 0
        return KV(key, vtype, value, None, bytes(self.buf[start:self.at]))

    def _string_array(self, key: str, n: int):
        # every element is at least its 8-byte length: bounded by the file before allocating
        self.need(8 * n, f"key {key!r}: array of {n} strings")
        starts, lengths = [0] * n, [0] * n
        buf, at, size, unpack = self.buf, self.at, self.size, _U64.unpack_from
        i = 0
        try:                              # the walk: a 49k-token vocabulary is walked at every open
            for i in range(n):
                (m,) = unpack(buf, at)    # struct.error past the end of the buffer
                starts[i] = at = at + 8
                lengths[i] = m
                at += m
                if at > size:
                    break
            else:
                self.at = at
                return np.array(starts, np.int64), np.array(lengths, np.int64)
        except struct.error:
            pass
        # string i runs past the end of the file: its 8-byte length, or its bytes
        at = starts[i] - 8 if at > size else at
        if at + 8 > size:
            self.at = at
            self.need(8, f"key {key!r}: string {i} of {n}")
        self.fail(f"key {key!r}: string {i} of {n}: length {lengths[i]} runs past the end of the file", at)

    def _check_utf8(self, key: str, raw: bytes, value: StringArray, start: int, base: int):
        """Every element is UTF-8: the elements' bytes joined decode, and no element begins or
        ends inside a character (a joined boundary on a continuation byte)."""
        if not len(value):
            return
        region = np.frombuffer(raw, np.uint8)
        joined = region[value.in_strings()].tobytes()
        ends = np.cumsum(value._lengths)
        firsts = ends - value._lengths
        bad = None
        try:
            joined.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = int(np.searchsorted(ends, e.start, side="right"))
        if bad is None:
            inner = firsts[(firsts < len(joined)) & (value._lengths > 0)]
            cont = (np.frombuffer(joined, np.uint8)[inner] & 0xC0) == 0x80
            if cont.any():
                bad = int(np.searchsorted(ends, inner[np.argmax(cont)], side="right"))
            else:
                return
        bad = min(bad, len(value) - 1)
        self.fail(f"key {key!r}: string {bad} of {len(value)} is not UTF-8", start + int(value._starts[bad]) - 8)

    def tensor_info(self, index: int, seen: set):
        start = self.at
        name = self.string(f"tensor info {index}: name")
        if name in seen:
            self.fail(f"tensor {name!r} appears twice", start)
        seen.add(name)
        n_dims = self.unpack("<I", f"tensor {name!r}: n_dims")
        if n_dims > MAX_DIMS:
            self.fail(f"tensor {name!r}: {n_dims} dimensions, more than ggml's {MAX_DIMS}", self.at - 4)
        ne = self.unpack(f"<{n_dims}q", f"tensor {name!r}: dimensions") if n_dims else ()
        ne = (ne,) if isinstance(ne, int) else tuple(ne)
        n = 1
        for j, d in enumerate(ne):
            if d < 0:
                self.fail(f"tensor {name!r}: dimension {j} is {d} (negative, or above 2^63)", start)
            n *= d
            if n > INT64_MAX:
                self.fail(f"tensor {name!r}: shape {list(ne)} has more than 2^63 - 1 elements", start)
        t = self.unpack("<I", f"tensor {name!r}: ggml type")
        try:
            bs, ts = block_sizes(t)      # the registry's types, then gguf-py's table
        except FormatError:
            self.fail(f"tensor {name!r}: unknown ggml type id {t}", self.at - 4)
        ne0 = ne[0] if ne else 1
        if ne0 % bs:
            self.fail(f"tensor {name!r}: row length {ne0} is not a multiple of {type_name(t)}'s block size {bs}",
                      start)
        offset = self.unpack("<Q", f"tensor {name!r}: data offset")
        shape = tuple(reversed(ne))
        return name, t, shape, offset, n // bs * ts


class GGUFFile:
    """A GGUF file opened for reading. Tensors are memory-mapped, never read whole; key/value
    pairs are read once, each array as one NumPy array (strings: a StringArray)."""

    def __init__(self, path):
        from .files import register_input
        self.path = Path(path)
        try:
            if self.path.is_dir():
                raise FileFormatError(f"{path}: is a directory, not a GGUF file")
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(8)
        except OSError as e:
            raise FileFormatError(f"{path}: cannot open: {e.strerror}") from None
        if size < 24:
            raise FileFormatError(f"{path}: {size} bytes is too short for a GGUF header (24 bytes)")
        magic, version = struct.unpack("<II", head)
        if magic != GGUF_MAGIC:
            raise FileFormatError(f"{path}: bad magic {head[:4]!r}, expected b'GGUF': not a GGUF file")
        if version != 0 and version & 0xFFFF == 0:   # gguf.cpp's test: a byte-swapped version field
            raise FileFormatError(f"{path}: a big-endian GGUF file (version field {version:#010x}); refquant "
                                  f"reads little-endian GGUF v3 only (see spec/robustness.md)")
        if version != GGUF_VERSION:
            raise FileFormatError(f"{path}: GGUF version {version}; refquant reads version 3")
        try:
            self._mm = np.memmap(self.path, np.uint8, "r")
        except (OSError, ValueError) as e:
            raise FileFormatError(f"{path}: cannot map: {e}") from None
        h = _Header(self.path, memoryview(self._mm), size)
        h.at = 8
        n_tensors, n_kv = h.unpack("<QQ", "tensor and key/value counts")
        # a key/value pair takes at least 14 bytes (8 + 1 + 4 + 1), a tensor info 24 (8 + 1 + 4 + 4 + 8 less 1)
        if n_kv > (size - 24) // 14:
            h.fail(f"{n_kv} key/value pairs cannot fit in {size} bytes", 16)
        if n_tensors > (size - 24) // 24:
            h.fail(f"{n_tensors} tensors cannot fit in {size} bytes", 8)
        seen: set = set()
        self.kvs: list[KV] = [h.kv(i, seen) for i in range(n_kv)]
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        for kv in self.kvs:
            if kv.key == ALIGNMENT_KEY:   # gguf.cpp: a UINT32, a power of two
                if kv.vtype != GGUFValueType.UINT32:
                    raise FileFormatError(f"{path}: {ALIGNMENT_KEY} must be a UINT32, not {kv.vtype.name}")
                a = int(kv.value)
                if a == 0 or a & (a - 1) or a > MAX_ALIGNMENT:
                    raise FileFormatError(f"{path}: {ALIGNMENT_KEY} = {a} is not a power of two from 1 to "
                                          f"{MAX_ALIGNMENT}")
                self.alignment = a
        names: set = set()
        infos = [h.tensor_info(i, names) for i in range(n_tensors)]
        self.data_offset = pad(h.at, self.alignment)
        if infos and self.data_offset > size:
            raise FileFormatError(f"{path}: the data section would start at byte {self.data_offset}, past the "
                                  f"end of the file ({size} bytes)")
        self.tensors: list[TensorInfo] = []
        for name, t, shape, offset, nbytes in infos:
            if offset % self.alignment:
                raise FileFormatError(f"{path}: tensor {name!r}: offset {offset} is not a multiple of the "
                                      f"alignment {self.alignment}")
            begin = self.data_offset + offset
            if begin + nbytes > size:
                raise FileFormatError(f"{path}: tensor {name!r}: data at byte offset {begin}..{begin + nbytes} "
                                      f"runs past the end of the file ({size} bytes)")
            self.tensors.append(TensorInfo(name, t, shape, offset, nbytes))
        self._by_name = {t.name: t for t in self.tensors}
        self._input_key = register_input(self.path, self)

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

    def dequantize(self, name: str, rows: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
        """The tensor as float32 in its NumPy shape. The integer types and F64 are read as they
        are; the others are decoded by `rows(raw rows as uint8, ggml type id)` -> float32 rows
        (refquant.dequantize, or a backend's `dequantize`)."""
        t = self.info(name)
        raw = self.raw(name)
        if t.n_elements == 0:            # zero rows, or rows of zero elements
            return np.zeros(t.shape, np.float32)
        if t.ggml_type in _PLAIN_NUMPY:
            return np.asarray(raw).view(_PLAIN_NUMPY[t.ggml_type]).astype(np.float32).reshape(t.shape)
        return rows(np.asarray(raw), t.ggml_type).reshape(t.shape)

    def close(self):
        from .files import unregister_input
        self._mm = None
        unregister_input(getattr(self, "_input_key", None), self)
        self._input_key = None

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


def header(kvs: list[KV], tensors: Iterable[TensorInfo]) -> tuple[bytes, list[TensorInfo], int]:
    """A GGUF file's header up to its data (padded to the alignment), the tensors with their
    offsets relative to the data, and the alignment: the plan of the file before any data."""
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
    parts = [struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(infos), len(kvs))]
    parts += [pack_kv(kv) for kv in kvs]
    parts += [_pack_tensor_info(t) for t in infos]
    head = b"".join(parts)
    return head + b"\0" * (pad(len(head), alignment) - len(head)), infos, alignment


class PlannedGGUF:
    """A GGUF file written by offset: the header first, the file sized to its end (the padding
    is zeros), then each tensor's bytes put at `data_offset + info.offset + byte` by anyone who
    opens `self.tmp` for writing — in any order, by any process on the same filesystem; this
    process can write through `self.fd` (os.pwrite), the descriptor the file was created with,
    open until the exit. Renamed into place on a clean exit, removed otherwise (AtomicFile)."""

    def __init__(self, path, kvs: list[KV], tensors: Iterable[TensorInfo]):
        self.head, self.tensors, alignment = header(kvs, tensors)
        self.data_offset = len(self.head)
        self.size = self.data_offset + sum(pad(t.nbytes, alignment) for t in self.tensors)
        self._atomic = AtomicFile(path)

    def __enter__(self) -> "PlannedGGUF":
        fh = self._atomic.__enter__()
        fh.write(self.head)
        fh.truncate(self.size)
        fh.flush()
        self.tmp = str(self._atomic._tmp)
        self.fd = fh.fileno()         # unbuffered writes by offset only from here (the header is flushed)
        return self

    def __exit__(self, *exc):
        return self._atomic.__exit__(*exc)


def write_gguf(path, kvs: list[KV], tensors: list[TensorInfo],
               tensor_data: Callable[[TensorInfo], np.ndarray],
               on_tensor: Optional[Callable[[TensorInfo], None]] = None) -> None:
    """Write a GGUF v3 file atomically, one tensor at a time.

    `tensors` gives names, types and shapes in file order (offsets are computed);
    `tensor_data(info)` returns that tensor's bytes (any array whose buffer is exactly nbytes, or
    an iterable of arrays that together are), called once per tensor in order, so a model never
    has to be in memory whole.
    """
    head, infos, alignment = header(kvs, tensors)
    with AtomicFile(path) as fh:
        fh.write(head)
        written = 0                                   # where the bytes not yet in writeback start
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
            end = fh.tell()
            if end - written >= files.WRITEBACK_BATCH:
                fh.flush()
                start_writeback(fh.fileno(), written, end - written)
                written = end // files.PAGE * files.PAGE      # the partial page: with the next batch
            if on_tensor is not None:
                on_tensor(t)
            check_signal()


def copy_gguf(src: GGUFFile, dst) -> None:
    """Write `src` back out unchanged."""
    write_gguf(dst, src.kvs, src.tensors, lambda t: src.raw(t.name))
