"""refquant: LLM quantization formats defined exactly, in NumPy.

    quantize(x, qtype, imatrix=None) -> uint8 bytes, exactly as ggml stores them
    dequantize(data, qtype)          -> float32
    formats()                        -> one record per format
    get_backend(name)                -> "numpy" (the spec) or an accelerated backend
"""
from __future__ import annotations

import numpy as np

from .backend import SPEC, Backend, available_backends, get_backend
from .errors import FileFormatError, FormatError, InputError, RefquantError
from .registry import all_formats, get_format

__version__ = "0.1.0"


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 `x` (..., n) to `qtype` (a ggml type name in any case, or a
    gguf.GGMLQuantizationType). Returns uint8 (..., n // block_size * type_size)."""
    return SPEC.quantize(x, qtype, imatrix)


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """Decode uint8 `data` (..., nbytes) of `qtype` to float32 (..., n)."""
    return SPEC.dequantize(data, qtype)


def formats() -> list[dict]:
    """One record per registered format: name, family, block_size, type_size, bits_per_weight,
    quantize, dequantize, imatrix ("none" | "optional" | "required"), needs_imatrix, ..."""
    return [f.record() for f in all_formats()]


__all__ = ["quantize", "dequantize", "formats", "get_backend", "available_backends", "get_format",
           "Backend", "RefquantError", "FormatError", "InputError", "FileFormatError"]
