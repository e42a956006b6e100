"""The format registry: one record per format, read from the format modules' RECORDS lists.

Each format module exports its formats as a list of `refquant.format.Format` records named
RECORDS (as the backend twins export tables); the registry imports the modules of
FORMAT_MODULES, in that order, the first time a format is looked up. Format modules never import
the registry: the imports run one way. Everything else — the public `quantize`/`dequantize`, the
command line, the spec-page check, the conformance suite, the backends — looks formats up here.
The record and its row functions are described in refquant/format.py.
"""
from __future__ import annotations

import importlib

import numpy as np

from .errors import FormatError
from .format import IMATRIX_NONE, IMATRIX_OPTIONAL, IMATRIX_REQUIRED, Format, VecDot  # noqa: F401

# The modules that define formats, relative to this package, in the order `formats()` lists them.
FORMAT_MODULES = ("ggml.floats", "ggml.legacy", "ggml.kquants", "ggml.iquants", "ggml.iquants_grid", "ggml.lowbit",
                  "ggml.fp4", "minifloat", "mx", "bnb.formats", "onnx_ops")

_FORMATS: dict[str, Format] = {}
_BY_GGML_TYPE: dict[int, Format] = {}


def _load_all() -> dict[str, Format]:
    if not _FORMATS:
        found = {}
        for m in FORMAT_MODULES:
            for fmt in importlib.import_module(f"{__package__}.{m}").RECORDS:
                key = fmt.name.upper()
                if key in found:
                    raise ValueError(f"format {fmt.name} is defined twice ({m})")
                found[key] = fmt
        _BY_GGML_TYPE.update({f.ggml_type: f for f in found.values() if f.ggml_type is not None})
        _FORMATS.update(found)
    return _FORMATS


def all_formats() -> list[Format]:
    return list(_load_all().values())


def get_format(qtype) -> Format:
    """Look a format up by name (any case) or by gguf.GGMLQuantizationType / its integer."""
    if isinstance(qtype, Format):
        return qtype
    formats = _load_all()
    name = getattr(qtype, "name", None)
    if name is None and isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        fmt = _BY_GGML_TYPE.get(int(qtype))
        if fmt is None:
            raise FormatError(f"unknown format: ggml type id {int(qtype)}; known: {', '.join(sorted(formats))}")
        return fmt
    if name is None:
        name = qtype
    if not isinstance(name, str):
        raise FormatError(f"format must be a name or a GGMLQuantizationType, got {type(qtype).__name__}")
    fmt = formats.get(name.upper())
    if fmt is None:
        raise FormatError(f"unknown format {name!r}; known: {', '.join(sorted(formats))}")
    return fmt
