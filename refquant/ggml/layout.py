"""ggml block layouts as data: a block is named fields in struct order, each a C type and a count.

Every ggml block type declares its layout once, as a row of `Field`s beside its code (the table
at the top of its family module), the way the spec page draws it:

    Layout("Q4_0", 32, [
        Field("d", "f16", 1, "scale"),
        Field("qs", "u8", 16, "4-bit codes: low nibble element j, high nibble element j + 16"),
    ])

and the rest is read from it: the type size (the sum of the fields: ggml's blocks are packed C
structs, little-endian, no padding), the split of a row of bytes into fields (`split`) and the
join of fields back into rows (`join`) for quantize, dequantize and vec_dot, the byte offsets
the backends' kernels index (`offset`), the generated table on each spec page (`markdown`) and
the failure messages that name a field and an element instead of a byte (`first_difference`).

A field's `parts` name what its elements hold where one field packs several things
(Q4_K's `scales`: bytes 0-3 the low 6 bits of the scales, 4-7 of the mins, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# C type -> (bytes, NumPy dtype of one element, how the spec pages spell it)
CTYPES = {
    "u8": (1, "u1", "uint8"),
    "i8": (1, "i1", "int8"),
    "u16": (2, "<u2", "uint16"),
    "i16": (2, "<i2", "int16"),
    "u32": (4, "<u4", "uint32"),
    "f16": (2, "<u2", "fp16"),        # ggml_half: the bits of an IEEE binary16
    "bf16": (2, "<u2", "bf16"),
    "f32": (4, "<f4", "float32"),
    "e8m0": (1, "u1", "E8M0"),        # a power of two, 2^(e - 127)
    "ue4m3": (1, "u1", "UE4M3"),      # an unsigned E4M3 scale
}


@dataclass(frozen=True)
class Field:
    name: str                   # as the C struct and the spec page spell it
    ctype: str                  # a key of CTYPES
    count: int = 1              # elements (1: a scalar)
    packing: str = ""           # what the bits mean, as the page draws it
    parts: tuple = ()           # ((first, stop, meaning), ...): what elements first..stop-1 hold

    @property
    def nbytes(self) -> int:
        return CTYPES[self.ctype][0] * self.count

    @property
    def itemsize(self) -> int:
        return CTYPES[self.ctype][0]

    def label(self, element: int) -> str:
        """`scales[5] (6-bit min)`, `d`: the element as a message names it."""
        name = self.name if self.count == 1 else f"{self.name}[{element}]"
        for first, stop, meaning in self.parts:
            if first <= element < stop:
                return f"{name} ({meaning})"
        return name

    def value(self, raw: np.ndarray) -> str:
        """One element's bytes as the page reads them: fp16 as its value and bits, ints as ints."""
        v = np.ascontiguousarray(raw, dtype=np.uint8).view(CTYPES[self.ctype][1])[0]
        if self.ctype == "f16":
            return f"{float(v.view(np.float16))!r} (0x{int(v):04x})"
        if self.ctype == "f32":
            return repr(float(v))
        return str(int(v))


class Layout:
    """A ggml block type's fields in struct order; `block_size` values per block."""

    def __init__(self, name: str, block_size: int, fields: list[Field]):
        self.name = name
        self.block_size = block_size
        self.fields = tuple(fields)
        self._at, at = {}, 0
        for f in self.fields:
            if f.ctype not in CTYPES:
                raise ValueError(f"{name}.{f.name}: unknown C type {f.ctype!r}")
            if f.name in self._at:
                raise ValueError(f"{name}: field {f.name} declared twice")
            self._at[f.name] = at
            at += f.nbytes
        self.type_size = at

    def __repr__(self):
        return f"<layout {self.name}: " + " | ".join(f"{f.name}:{f.ctype}[{f.count}]" for f in self.fields) + ">"

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}; fields: {', '.join(f.name for f in self.fields)}")

    def offset(self, name: str) -> int:
        """The byte offset of field `name` in a block."""
        self.field(name)
        return self._at[name]

    def split(self, data: np.ndarray) -> dict[str, np.ndarray]:
        """(nrows, nbytes) uint8 -> {field: (nblocks, field bytes) uint8 views}, every block of every row."""
        blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, self.type_size)
        return {f.name: blocks[:, self._at[f.name]:self._at[f.name] + f.nbytes] for f in self.fields}

    def join(self, nrows: int, **values: np.ndarray) -> np.ndarray:
        """Every field by name, each (nblocks, ...) of a dtype of its width -> (nrows, row bytes) uint8."""
        missing = [f.name for f in self.fields if f.name not in values]
        extra = sorted(set(values) - {f.name for f in self.fields})
        if missing or extra:
            raise TypeError(f"{self.name}.join: missing fields {missing}, unknown fields {extra}")
        parts = []
        for f in self.fields:
            v = np.ascontiguousarray(values[f.name])
            b = v.reshape(v.shape[0], -1).view(np.uint8)
            if b.shape[1] != f.nbytes:
                raise AssertionError(f"{self.name}.{f.name}: {b.shape[1]} bytes per block, the layout has {f.nbytes}")
            parts.append(b)
        return np.concatenate(parts, axis=1).reshape(nrows, -1)

    def locate(self, byte: int) -> tuple[Field, int]:
        """The field and element holding byte `byte` of a block."""
        for f in self.fields:
            at = self._at[f.name]
            if at <= byte < at + f.nbytes:
                return f, (byte - at) // f.itemsize
        raise IndexError(f"byte {byte} is past a {self.type_size}-byte {self.name} block")

    def markdown(self) -> str:
        """The generated field table of the spec page (tests/test_spec_pages.py holds them equal)."""
        rows = [f"| offset | field | type | count | bytes | holds |", "|---|---|---|---|---|---|"]
        for f in self.fields:
            rows.append(f"| {self._at[f.name]} | `{f.name}` | {CTYPES[f.ctype][2]} | {f.count} | {f.nbytes} | {f.packing} |")
        rows.append(f"| | | | | **{self.type_size}** | {self.block_size} values |")
        return "\n".join(rows)


def first_difference(layout: Layout, got: np.ndarray, want: np.ndarray) -> str | None:
    """Where two rows of blocks first differ, by field and element:
    "Q4_K block 9, row 17: scales[5] (6-bit min) 12, spec 13" (`got` the backend's bytes, `want`
    the spec's, both (nrows, row bytes) or flat); None where they are equal."""
    got = np.asarray(got, dtype=np.uint8)
    want = np.asarray(want, dtype=np.uint8)
    rows = want.reshape(-1, want.shape[-1]) if want.ndim else want.reshape(1, -1)
    g = got.reshape(rows.shape)
    diff = np.flatnonzero(g.reshape(-1) != rows.reshape(-1))
    if diff.size == 0:
        return None
    row, at = divmod(int(diff[0]), rows.shape[1])
    block, byte = divmod(at, layout.type_size)
    f, element = layout.locate(byte)
    start = block * layout.type_size + layout.offset(f.name) + element * f.itemsize
    gv = f.value(g[row, start:start + f.itemsize])
    wv = f.value(rows[row, start:start + f.itemsize])
    return f"{layout.name} block {block}, row {row}: {f.label(element)} {gv}, spec {wv}"


PAGE_BEGIN = "<!-- fields: generated from the declared layout by tools/gen_spec_layouts.py; do not edit -->"
PAGE_END = "<!-- end fields -->"


def page_section(layout: Layout) -> str:
    """The generated block a spec page carries, between its markers."""
    return f"{PAGE_BEGIN}\n{layout.markdown()}\n{PAGE_END}"
