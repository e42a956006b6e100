"""The format registry: one record per format, and the row-wise functions that define it.

A format module registers each of its formats with `register(...)`. Everything else — the
public `quantize`/`dequantize`, the command line, the spec-page check, the conformance suite,
the backends — looks formats up here.

Row functions work on whole matrices at once:

    quantize(x, imatrix) -> bytes     x: float32 (nrows, n); imatrix: float32 (n,) or None
                                      returns uint8 (nrows, n // block_size * type_size)
    dequantize(data)    -> floats     data: uint8 (nrows, nbytes); returns float32 (nrows, n)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .errors import FormatError

QuantizeFn = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]
DequantizeFn = Callable[[np.ndarray], np.ndarray]

IMATRIX_NONE = "none"          # an importance matrix is ignored
IMATRIX_OPTIONAL = "optional"  # with one, a different (weighted) search is taken
IMATRIX_REQUIRED = "required"  # refused without one


@dataclass(frozen=True)
class Format:
    name: str                       # as the field spells it: "Q4_0", "Q4_K", "IQ4_XS", ...
    family: str                     # "ggml-float", "ggml-legacy", "ggml-k", ...
    block_size: int                 # elements per block
    type_size: int                  # bytes per block
    quantize_rows: Optional[QuantizeFn] = field(default=None, repr=False, compare=False)
    dequantize_rows: Optional[DequantizeFn] = field(default=None, repr=False, compare=False)
    imatrix: str = IMATRIX_NONE
    ggml_type: Optional[int] = None  # gguf.GGMLQuantizationType value, for GGUF types
    spec_page: Optional[str] = None  # path under spec/, relative

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def can_quantize(self) -> bool:
        return self.quantize_rows is not None

    @property
    def can_dequantize(self) -> bool:
        return self.dequantize_rows is not None

    @property
    def needs_imatrix(self) -> bool:
        return self.imatrix == IMATRIX_REQUIRED

    def record(self) -> dict:
        """The public description returned by refquant.formats()."""
        return {
            "name": self.name,
            "family": self.family,
            "block_size": self.block_size,
            "type_size": self.type_size,
            "bits_per_weight": self.bits_per_weight,
            "quantize": self.can_quantize,
            "dequantize": self.can_dequantize,
            "imatrix": self.imatrix,
            "needs_imatrix": self.needs_imatrix,
            "ggml_type": self.ggml_type,
            "spec_page": self.spec_page,
        }


_FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    key = fmt.name.upper()
    if key in _FORMATS:
        raise ValueError(f"format {fmt.name} is registered twice")
    _FORMATS[key] = fmt
    return fmt


def _load_all() -> None:
    # Importing a format module registers its formats. New families join this list.
    from .ggml import floats, kquants, legacy  # noqa: F401
    from . import minifloat, mx  # noqa: F401


def all_formats() -> list[Format]:
    _load_all()
    return list(_FORMATS.values())


def get_format(qtype) -> Format:
    """Look a format up by name (any case) or by gguf.GGMLQuantizationType / its integer."""
    _load_all()
    if isinstance(qtype, Format):
        return qtype
    name = getattr(qtype, "name", None)
    if name is None and isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        for f in _FORMATS.values():
            if f.ggml_type == int(qtype):
                return f
        raise FormatError(f"unknown format: ggml type id {int(qtype)}; known: {', '.join(sorted(_FORMATS))}")
    if name is None:
        name = qtype
    if not isinstance(name, str):
        raise FormatError(f"format must be a name or a GGMLQuantizationType, got {type(qtype).__name__}")
    fmt = _FORMATS.get(name.upper())
    if fmt is None:
        raise FormatError(f"unknown format {name!r}; known: {', '.join(sorted(_FORMATS))}")
    return fmt
