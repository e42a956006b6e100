"""Backends: the spec itself ("numpy") and accelerated implementations found by entry point.

A backend subclasses `Backend` and overrides the row functions it claims. Every operation it
does not claim falls back to the spec, and `supports(op, qtype)` says which is which, so a
caller can always see whether it gets the backend's code or the spec's.

Third-party packages register a backend object (or a zero-argument factory) under the entry
point group `refquant.backends`; `get_backend("module:object")` loads one by path.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import numpy as np

from .api import check_bytes, check_floats, check_imatrix, dequantized_shape, quantized_shape
from .errors import FormatError, RefquantError
from .registry import all_formats, get_format

ENTRY_POINT_GROUP = "refquant.backends"
OPERATIONS = ("quantize", "dequantize")


class Backend:
    """The interface every backend offers. The base class is the spec: subclasses override
    `quantize_rows` / `dequantize_rows` for what they claim in `claims()`."""

    name = "numpy"

    def claims(self) -> set[tuple[str, str]]:
        """(operation, format name) pairs this backend implements itself."""
        return {(op, f.name) for f in all_formats() for op in OPERATIONS
                if (f.can_quantize if op == "quantize" else f.can_dequantize)}

    def supports(self, op: str, qtype) -> bool:
        if op not in OPERATIONS:
            raise RefquantError(f"unknown operation {op!r}; known: {', '.join(OPERATIONS)}")
        return (op, get_format(qtype).name) in self.claims()

    # Row functions: x (nrows, n) float32 -> (nrows, row_bytes) uint8 and back. Overridden.
    def quantize_rows(self, fmt, x, imatrix):
        return fmt.quantize_rows(x, imatrix)

    def dequantize_rows(self, fmt, data):
        return fmt.dequantize_rows(data)

    def quantize(self, x, qtype, imatrix=None) -> np.ndarray:
        fmt = get_format(qtype)
        if not fmt.can_quantize:
            raise FormatError(f"{fmt.name} has no quantizer (it is only ever dequantized)")
        x = check_floats(x, fmt)
        im = check_imatrix(imatrix, fmt, x.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        impl = self if self.supports("quantize", fmt) else SPEC
        with np.errstate(all="ignore"):  # overflow to inf is part of the C arithmetic reproduced
            out = impl.quantize_rows(fmt, rows, im)
        return out.reshape(quantized_shape(x.shape, fmt))

    def dequantize(self, data, qtype) -> np.ndarray:
        fmt = get_format(qtype)
        if not fmt.can_dequantize:
            raise FormatError(f"{fmt.name} has no dequantizer")
        data = check_bytes(data, fmt)
        rows = data.reshape(-1, data.shape[-1])
        impl = self if self.supports("dequantize", fmt) else SPEC
        with np.errstate(all="ignore"):
            out = impl.dequantize_rows(fmt, rows)
        return out.reshape(dequantized_shape(data.shape, fmt))

    def __repr__(self):
        return f"<refquant backend {self.name!r}>"


SPEC = Backend()


def _instantiate(obj):
    return obj() if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Backend)) else obj


def available_backends() -> dict[str, object]:
    """name -> entry point, for every backend registered in the environment (plus "numpy")."""
    found = {"numpy": None}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def get_backend(name: str = "numpy") -> Backend:
    if isinstance(name, Backend):
        return name
    if name == "numpy":
        return SPEC
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise RefquantError(f"cannot load backend {name!r}: {e}") from None
    else:
        eps = available_backends()
        if name not in eps:
            raise RefquantError(f"unknown backend {name!r}; installed: {', '.join(sorted(eps))} "
                                f"(or give a 'module:object' path)")
        try:
            obj = eps[name].load()
        except ImportError as e:
            raise RefquantError(f"backend {name!r} is registered but cannot be imported: {e}") from None
    backend = _instantiate(obj)
    if not isinstance(backend, Backend):
        raise RefquantError(f"backend {name!r} is a {type(backend).__name__}, not a refquant.Backend")
    return backend
