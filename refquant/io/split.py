"""Split GGUF models (`NAME-00001-of-00003.gguf`, ...), read as one, as llama.cpp's loader does.

A split model is a set of GGUF files named `PREFIX-%05d-of-%05d.gguf` (llama_split_path). The
first holds the model's metadata and `split.no` = 0 (u16), `split.count` (u16) and
`split.tensors.count` (i32); each of the others holds its own `split.no` and the same
`split.count`, and tensors. Every tensor lives in exactly one file, at an offset in that file's
data section. llama.cpp (llama_model_loader) opens the first file, reads `split.count`, derives
the others' names from the first one's (llama_split_prefix), and refuses a model whose files do
not say they are its parts, whose tensors repeat, or whose tensor count is not
`split.tensors.count`.

`open_gguf(path)` returns a `GGUFFile` for a single file and a `SplitGGUF` for the first file of
a split model; both have `kvs`, `metadata`, `get`, `tensors`, `info`, `raw` and `dequantize`.
The spec page is spec/gguf.md ("Split files").
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FileFormatError
from .gguf import GGUFFile

KEY_SPLIT_NO = "split.no"
KEY_SPLIT_COUNT = "split.count"
KEY_SPLIT_TENSORS_COUNT = "split.tensors.count"
SPLIT_KEYS = (KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT)


def split_path(prefix, split_no: int, split_count: int) -> str:
    """llama_split_path: "%s-%05d-of-%05d.gguf" with the 1-based file number."""
    return f"{prefix}-{split_no + 1:05d}-of-{split_count:05d}.gguf"


def split_prefix(path, split_no: int, split_count: int) -> str | None:
    """llama_split_prefix: the path without its "-%05d-of-%05d.gguf" ending, or None when the
    name does not end so."""
    s = str(path)
    post = f"-{split_no + 1:05d}-of-{split_count:05d}.gguf"
    if len(s) <= len(post) or not s.endswith(post):
        return None
    return s[:-len(post)]


class SplitGGUF:
    """The files of a split GGUF model, opened together and read as one model."""

    def __init__(self, path, first: GGUFFile | None = None):
        first = first if first is not None else GGUFFile(path)
        self.parts: list[GGUFFile] = [first]
        try:
            self._open_rest(path, first)
        except BaseException:
            self.close()
            raise
        self.path = first.path
        self.kvs = first.kvs
        self.alignment = first.alignment
        self.data_offset = first.data_offset

    def _open_rest(self, path, first: GGUFFile) -> None:
        n = int(first.get(KEY_SPLIT_COUNT, 0))
        idx = int(first.get(KEY_SPLIT_NO, 0))
        if idx != 0:
            raise FileFormatError(f"{path}: {KEY_SPLIT_NO} is {idx}: a split model is opened by its first file "
                                  f"(-00001-of-{n:05d}.gguf)")
        prefix = split_prefix(path, idx, n)
        if prefix is None:
            raise FileFormatError(f"{path}: {KEY_SPLIT_COUNT} is {n}, but the name does not end in "
                                  f"-{idx + 1:05d}-of-{n:05d}.gguf, from which the other files' names are made")
        for i in range(1, n):
            p = split_path(prefix, i, n)
            if not Path(p).exists():
                raise FileFormatError(f"{path}: split {i + 1} of {n} ({p}) not found")
            part = GGUFFile(p)
            self.parts.append(part)
            no = part.get(KEY_SPLIT_NO)
            if no is None:
                raise FileFormatError(f"{p}: key {KEY_SPLIT_NO} not found: not a split file")
            if int(no) != i:
                raise FileFormatError(f"{p}: {KEY_SPLIT_NO} is {int(no)}, expected {i}")
        self.tensors = []
        self.split_of: dict[str, int] = {}
        for i, part in enumerate(self.parts):
            for t in part.tensors:
                if t.name in self.split_of:
                    raise FileFormatError(f"{part.path}: tensor {t.name!r} is also in split "
                                          f"{self.split_of[t.name] + 1}: duplicated")
                self.split_of[t.name] = i
                self.tensors.append(t)
        want = first.get(KEY_SPLIT_TENSORS_COUNT)
        if want is not None and int(want) != len(self.tensors):
            raise FileFormatError(f"{path}: {KEY_SPLIT_TENSORS_COUNT} is {int(want)}, but the {n} files hold "
                                  f"{len(self.tensors)} tensors")

    # -- metadata (the first file's)
    @property
    def metadata(self):
        return self.parts[0].metadata

    def get(self, key: str, default=None):
        return self.parts[0].get(key, default)

    # -- tensors, wherever they are
    def part(self, name: str) -> GGUFFile:
        """The file that holds the tensor."""
        try:
            return self.parts[self.split_of[name]]
        except KeyError:
            raise FileFormatError(f"{self.path}: no tensor named {name!r}") from None

    def info(self, name: str):
        return self.part(name).info(name)

    def raw(self, name: str):
        return self.part(name).raw(name)

    def dequantize(self, name: str, rows):
        """GGUFFile.dequantize on the file that holds the tensor (`rows`: the row decoder)."""
        return self.part(name).dequantize(name, rows)

    @property
    def paths(self) -> list[Path]:
        return [p.path for p in self.parts]

    def close(self):
        for p in self.parts:
            p.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_gguf(path):
    """A GGUF model, split or not: a `GGUFFile`, or a `SplitGGUF` when the file is the first of
    several (`split.count` > 1)."""
    f = GGUFFile(path)
    if int(f.get(KEY_SPLIT_COUNT, 0) or 0) > 1:
        return SplitGGUF(path, f)
    return f
