"""Backends: the spec itself ("numpy") and accelerated implementations found by entry point.

A backend subclasses `Backend` and overrides the row functions it claims. Every operation it
does not claim falls back to the spec, and `supports(op, qtype)` says which is which, so a
caller can always see whether it gets the backend's code or the spec's.

Operations: "quantize" and "dequantize" are keyed by registered format; "vec_dot" by the ggml
weight types that have one (refquant.ggml.dot.VEC_DOT_TYPE: ggml's CPU mul_mat); "matmul" by the
schemes of refquant.gemm (W4A16, W8A8, FP8). `operation_keys(op)` lists what the spec defines.

Third-party packages register a backend object (or a zero-argument factory) under the entry
point group `refquant.backends`; `get_backend("module:object")` loads one by path. A backend
whose modules list what they implement in tables (as Numba's and CuPy's do) subclasses
`TableBackend` and names its modules.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import numpy as np

from .api import check_bytes, check_floats, check_imatrix, dequantized_shape, quantized_shape
from .errors import FormatError, RefquantError
from .registry import all_formats, get_format

ENTRY_POINT_GROUP = "refquant.backends"
FORMAT_OPERATIONS = ("quantize", "dequantize")
OPERATIONS = ("quantize", "dequantize", "vec_dot", "matmul")


def operation_keys(op: str) -> list[str]:
    """Every key the spec defines `op` for: format names, or matmul scheme names."""
    if op == "quantize":
        return [f.name for f in all_formats() if f.can_quantize]
    if op == "dequantize":
        return [f.name for f in all_formats() if f.can_dequantize]
    if op == "vec_dot":
        from .ggml.dot import vec_dot_formats
        return vec_dot_formats()
    if op == "matmul":
        from .gemm import SCHEMES
        return list(SCHEMES)
    raise RefquantError(f"unknown operation {op!r}; known: {', '.join(OPERATIONS)}")


def operation_key(op: str, key) -> str:
    """The canonical key of `key` for `op` (a format name or a scheme name); raises if unknown."""
    if op in FORMAT_OPERATIONS:
        return get_format(key).name
    if op == "vec_dot":
        from .ggml.dot import vec_dot_type
        fmt = get_format(key)
        vec_dot_type(fmt)  # raises FormatError for types without a vec_dot
        return fmt.name
    if op == "matmul":
        from .gemm import get_scheme
        return get_scheme(key).name
    raise RefquantError(f"unknown operation {op!r}; known: {', '.join(OPERATIONS)}")


class Backend:
    """The interface every backend offers. The base class is the spec: subclasses override
    `quantize_rows` / `dequantize_rows` for what they claim in `claims()`."""

    name = "numpy"

    def claims(self) -> set[tuple[str, str]]:
        """(operation, key) pairs this backend implements itself; the key is a format name
        (quantize, dequantize, vec_dot) or a matmul scheme name (matmul)."""
        return {(op, k) for op in OPERATIONS for k in operation_keys(op)}

    def supports(self, op: str, qtype) -> bool:
        """Whether this backend runs `op` for `qtype` itself (False: the spec runs it)."""
        return self._runs(op, operation_key(op, qtype)) is self

    def _runs(self, op: str, key: str) -> "Backend":
        """Who runs (op, key), key already canonical: this backend where it claims it, else the
        spec. The claims are read once per backend object."""
        claimed = self.__dict__.get("_claimed")
        if claimed is None:
            if type(self).claims is Backend.claims:   # the spec claims all it defines
                return self
            claimed = self.__dict__["_claimed"] = frozenset(self.claims())
        return self if (op, key) in claimed else SPEC

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
        if rows.shape[0] == 0:           # zero rows: zero rows of bytes
            return np.zeros(quantized_shape(x.shape, fmt), np.uint8)
        impl = self._runs("quantize", fmt.name)
        with np.errstate(all="ignore"):  # overflow to inf is part of the C arithmetic reproduced
            out = impl.quantize_rows(fmt, rows, im)
        return out.reshape(quantized_shape(x.shape, fmt))

    def dequantize(self, data, qtype) -> np.ndarray:
        fmt = get_format(qtype)
        if not fmt.can_dequantize:
            raise FormatError(f"{fmt.name} has no dequantizer")
        data = check_bytes(data, fmt)
        rows = data.reshape(-1, data.shape[-1])
        if rows.shape[0] == 0:           # zero rows: zero rows of floats
            return np.zeros(dequantized_shape(data.shape, fmt), np.float32)
        impl = self._runs("dequantize", fmt.name)
        with np.errstate(all="ignore"):
            out = impl.dequantize_rows(fmt, rows)
        return out.reshape(dequantized_shape(data.shape, fmt))

    # vec_dot: weight rows (N, row_bytes) and float32 activations (M, K) -> (M, N). Overridden.
    def vec_dot_rows(self, fmt, w, a, variant):
        from .ggml.dot import vec_dot
        return vec_dot(w, fmt, a, variant)

    def vec_dot(self, w, qtype, a, variant: str = "ref") -> np.ndarray:
        """ggml's CPU mul_mat semantics (refquant.ggml.dot): Y[m, n] = vec_dot(w[n], q8(a[m]))."""
        from .ggml.dot import ACTIVATION_VARIANTS, vec_dot_type
        fmt = get_format(qtype)
        vec_dot_type(fmt)
        if variant not in ACTIVATION_VARIANTS:
            raise RefquantError(f"unknown activation variant {variant!r}; known: {', '.join(ACTIVATION_VARIANTS)}")
        w = check_bytes(w, fmt)
        if w.ndim != 2:
            raise RefquantError(f"{fmt.name} vec_dot: weights must be 2-D (N, row_bytes), got shape {w.shape}")
        a = check_floats(a, fmt, "activations")
        if a.ndim != 2 or a.shape[1] != w.shape[1] // fmt.type_size * fmt.block_size:
            raise RefquantError(f"{fmt.name} vec_dot: activations must be (M, {w.shape[1] // fmt.type_size * fmt.block_size}), "
                                f"got {a.shape}")
        impl = self._runs("vec_dot", fmt.name)
        with np.errstate(all="ignore"):
            return impl.vec_dot_rows(fmt, w, a, variant)

    # matmul: a quantized matmul scheme of refquant.gemm. Overridden.
    def matmul_rows(self, scheme, a, weight, **options):
        return scheme.matmul(a, weight, **options)

    def matmul(self, scheme, a, weight, **options) -> np.ndarray:
        """Y = A @ W^T for a refquant.gemm scheme ("W4A16", "W8A8", "FP8") -> (M, N) float32.
        Integer schemes are bit-exact; float ones meet refquant.gemm's bound."""
        from .gemm import _check_acts, get_scheme
        sc = get_scheme(scheme)
        for k, v in options.items():
            if k not in sc.options or v not in sc.options[k]:
                raise RefquantError(f"{sc.name}: unknown option {k}={v!r}; allowed: {sc.options}")
        weight.check()
        _check_acts(a, weight.shape[1], sc.name)
        impl = self._runs("matmul", sc.name)
        with np.errstate(all="ignore"):
            return impl.matmul_rows(sc, a, weight, **options)

    def accumulation(self, op: str, key: str, K: int, weight=None):
        """The summation order of a float-accumulating (op, key), as refquant.gemm.depth's
        arguments; None (the default) holds the backend to the hard cap of any order."""
        return None

    def __repr__(self):
        return f"<refquant backend {self.name!r}>"


SPEC = Backend()


class _LazyTable(dict):
    """key -> function of one operation, importing the key's module at the key's first use."""

    def __init__(self, attr: str, where: dict):
        super().__init__()
        self.attr, self.where = attr, where

    def __missing__(self, key):
        fn = getattr(importlib.import_module(self.where[key]), self.attr)[key]
        self[key] = fn
        return fn

    def __contains__(self, key):
        return key in self.where

    def __iter__(self):
        return iter(self.where)

    def __len__(self):
        return len(self.where)


class TableBackend(Backend):
    """A backend whose modules export what they implement as tables named after the operation
    (QUANTIZE, DEQUANTIZE, VEC_DOT, MATMUL: key -> function with the spec's row signature, without
    the format or scheme argument). Subclasses name their package's modules in MODULES (paths
    relative to the package, mirroring the spec's: "ggml.legacy" twins refquant/ggml/legacy.py);
    the claims are the union of the tables, so an implementation joins by its module's table.

    A subclass may also declare what each module's tables hold in DECLARED (module -> {op: keys,
    as a space-separated string or a function returning them}): then a module is imported at the
    first call of one of its keys, not when the backend is made, so a call pays only for the
    module it needs (its import, and its kernels' compilation or cache loads). `declared()` and
    `loaded()` give the two views, for a test that they agree."""

    MODULES: tuple = ()
    DECLARED: dict | None = None
    TABLES = {"quantize": "QUANTIZE", "dequantize": "DEQUANTIZE", "vec_dot": "VEC_DOT", "matmul": "MATMUL"}

    @classmethod
    def _package(cls) -> str:
        return next(c for c in cls.__mro__ if "MODULES" in c.__dict__).__module__

    @classmethod
    def declared(cls) -> dict:
        """op -> {key: module path} from DECLARED."""
        out = {op: {} for op in cls.TABLES}
        for m, ops in (cls.DECLARED or {}).items():
            for op, keys in ops.items():
                for k in (keys() if callable(keys) else keys.split()):
                    out[op][k] = f"{cls._package()}.{m}"
        return out

    @classmethod
    def loaded(cls) -> dict:
        """op -> {key: module path} from the modules' own tables (imports every module)."""
        out = {op: {} for op in cls.TABLES}
        for m in cls.MODULES:
            mod = importlib.import_module(f"{cls._package()}.{m}")
            for op, attr in cls.TABLES.items():
                out[op].update({k: mod.__name__ for k in getattr(mod, attr, {})})
        return out

    def __init__(self):
        where = self.declared() if self.DECLARED is not None else self.loaded()
        self._t = {op: _LazyTable(attr, where[op]) for op, attr in self.TABLES.items()}
        self._claimed = frozenset((op, key) for op, table in where.items() for key in table)

    def claims(self):
        return set(self._claimed)

    def supports(self, op: str, qtype) -> bool:
        return (op, operation_key(op, qtype)) in self._claimed

    def quantize_rows(self, fmt, x, imatrix):
        return self._t["quantize"][fmt.name](x, imatrix)

    def dequantize_rows(self, fmt, data):
        return self._t["dequantize"][fmt.name](data)

    def vec_dot_rows(self, fmt, w, a, variant):
        return self._t["vec_dot"][fmt.name](w, a, variant)

    def matmul_rows(self, scheme, a, weight, **options):
        return self._t["matmul"][scheme.name](a, weight, **options)


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
