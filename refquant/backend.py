"""Backends: the spec itself ("numpy") and accelerated implementations found by entry point.

A backend subclasses `Backend` and overrides the row functions it claims. Every operation it
does not claim falls back to the spec, and `supports(op, qtype)` says which is which, so a
caller can always see whether it gets the backend's code or the spec's.

Operations: "quantize" and "dequantize" are keyed by registered format; "vec_dot" by the ggml
weight types that have one (refquant.ggml.dot.VEC_DOT_TYPE: ggml's CPU mul_mat); "matmul" by the
schemes of refquant.gemm (W4A16, W8A8, FP8). `operation_keys(op)` lists what the spec defines.

Each (operation, key) has paths, claimed one by one (`operation_paths`): "quantize" (no importance
matrix) and "quantize+imatrix", each again per extra search of the format ("quantize[prefix-sums]"
for IQ1_M's second split search); "dequantize"; "vec_dot[ref]" and "vec_dot[x86]" (the activation
variants); "matmul" per option value ("matmul[activation=per_token]"). A claim (path, key) claims
one path; a claim (operation, key) claims every path of it whose call the row function receives
in full (all but the extra searches). `runs(path, key)` says whose code a call takes.

Third-party packages register a backend object (or a zero-argument factory) under the entry
point group `refquant.backends`; `get_backend("module:object")` loads one by path. A backend
whose modules list what they implement in tables (as Numba's and CuPy's do) subclasses
`TableBackend` and names its modules.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import io
import itertools
import os
import re
import sys
import tokenize
from importlib.metadata import entry_points
import pathlib
from typing import NamedTuple

import numpy as np

from .api import all_finite, check_bytes, check_floats, check_imatrix, dequantized_shape, quantized_shape
from .errors import FormatError, RefquantError
from .registry import IMATRIX_NONE, IMATRIX_REQUIRED, all_formats, get_format

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


class Path(NamedTuple):
    """One separately claimable path of an operation."""
    op: str          # the Backend method: quantize, dequantize, vec_dot, matmul
    label: str       # how claims and the conformance matrix name it
    call: dict       # what selects it: imatrix (bool) and search; variant; options


def quantize_searches(fmt) -> dict:
    """A format's quantizers other than its registered one: search name -> row function
    (x, imatrix) -> bytes. IQ1_M: ggml's second split search ("prefix-sums")."""
    fmt = get_format(fmt)
    if fmt.name == "IQ1_M":
        from .ggml import iquants_grid
        return {iquants_grid.IQ1M_PREFIX_SUMS:
                lambda x, imatrix: iquants_grid.quantize_iq1_m(x, imatrix, variant=iquants_grid.IQ1M_PREFIX_SUMS)}
    return {}


def operation_paths(op: str, key) -> list[Path]:
    """The paths of (op, key), each claimed on its own."""
    key = operation_key(op, key)
    if op == "quantize":
        fmt = get_format(key)
        out = []
        for search in [None, *quantize_searches(fmt)]:
            tail = "" if search is None else f"[{search}]"
            if not fmt.needs_imatrix:
                out.append(Path(op, "quantize" + tail, {"imatrix": False, "search": search}))
            if fmt.imatrix != IMATRIX_NONE:
                out.append(Path(op, "quantize+imatrix" + tail, {"imatrix": True, "search": search}))
        return out
    if op == "dequantize":
        return [Path(op, op, {})]
    if op == "vec_dot":
        from .ggml.dot import ACTIVATION_VARIANTS
        return [Path(op, f"vec_dot[{v}]", {"variant": v}) for v in ACTIVATION_VARIANTS]
    from .gemm import get_scheme
    opts = get_scheme(key).options
    if not opts:
        return [Path(op, op, {"options": {}})]
    names = sorted(opts)
    return [Path(op, "matmul[" + ",".join(f"{n}={v}" for n, v in zip(names, vals)) + "]",
                 {"options": dict(zip(names, vals))})
            for vals in itertools.product(*(opts[n] for n in names))]


def path_label(op: str, imatrix=None, search=None, variant=None, options=None) -> str:
    """The label of the path a call takes."""
    if op == "quantize":
        return ("quantize+imatrix" if imatrix is not None else "quantize") + (f"[{search}]" if search else "")
    if op == "vec_dot":
        return f"vec_dot[{variant}]"
    if op == "matmul" and options:
        return "matmul[" + ",".join(f"{n}={options[n]}" for n in sorted(options)) + "]"
    return op


class NonFiniteInput(Exception):
    """Raised by a row function that tests its input itself (Backend.finite_in_kernel) on meeting
    a NaN or an infinity; Backend.quantize turns it into the input check's error."""


def _unchecked(x) -> bool:
    """The finiteness test of a call whose row function does its own (Backend.finite_in_kernel)."""
    return True


class Backend:
    """The interface every backend offers. The base class is the spec: subclasses override
    `quantize_rows` / `dequantize_rows` for what they claim in `claims()`."""

    name = "numpy"

    def claims(self) -> set[tuple[str, str]]:
        """(operation, key) pairs this backend implements itself; the key is a format name
        (quantize, dequantize, vec_dot) or a matmul scheme name (matmul)."""
        return {(op, k) for op in OPERATIONS for k in operation_keys(op)}

    def supports(self, op: str, qtype) -> bool:
        """Whether this backend runs `op` for `qtype` itself on at least one of its paths (False:
        the spec runs every call)."""
        key = operation_key(op, qtype)
        return any(self._runs(p.label, key) is self for p in operation_paths(op, key))

    def runs(self, path: str, qtype) -> bool:
        """Whether this backend's own code runs `path` (a label of operation_paths) for `qtype`."""
        return self._runs(path, operation_key(path.split("+")[0].split("[")[0], qtype)) is self

    def _runs(self, path: str, key: str) -> "Backend":
        """Who runs `path` of `key` (key already canonical): this backend where it claims the path,
        or its operation bare (every path but a format's extra searches), else the spec. The
        claims are read once per backend object."""
        claimed = self.__dict__.get("_claimed")
        if claimed is None:
            if type(self).claims is Backend.claims:   # the spec claims all it defines
                return self
            claimed = self.__dict__["_claimed"] = frozenset(self.claims())
        if (path, key) in claimed:
            return self
        op = path.split("+")[0].split("[")[0]
        return self if (op, key) in claimed and not (op == "quantize" and "[" in path) else SPEC

    # Threads: a backend whose row functions run on several threads says so, and lets the
    # conformance suite pick how many (it checks with one and with max_threads()).
    threaded = False

    def max_threads(self) -> int:
        return 1

    def set_num_threads(self, n: int) -> None:
        pass

    def get_num_threads(self) -> int:
        """The thread count set for this thread (set_num_threads)."""
        return self.max_threads()

    # The input check's test of float32 values (refquant.api.all_finite): a backend may run it its
    # own way (the Numba backend: on its threads), with the same answer.
    @staticmethod
    def all_finite(x: np.ndarray) -> bool:
        return all_finite(x)

    # A row function may test its input for NaN and Inf itself, in the pass it makes anyway (one
    # pass over the values instead of two, on the kernel's threads): quantize then skips the
    # separate all_finite pass for an unweighted, unsearched call, and the row function raises
    # NonFiniteInput when it meets such a value; quantize answers with the input check's own
    # error, and an imatrix error still comes only after the input's (as with the check first).
    def finite_in_kernel(self, fmt) -> bool:
        return False

    # Row functions: x (nrows, n) float32 -> (nrows, row_bytes) uint8 and back. Overridden.
    def quantize_rows(self, fmt, x, imatrix, search=None):
        if search is not None:
            return quantize_searches(fmt)[search](x, imatrix)
        return fmt.quantize_rows(x, imatrix)

    def dequantize_rows(self, fmt, data):
        return fmt.dequantize_rows(data)

    def quantize(self, x, qtype, imatrix=None, search=None) -> np.ndarray:
        """search: one of quantize_searches(qtype) instead of the registered quantizer."""
        fmt = get_format(qtype)
        if not fmt.can_quantize:
            raise FormatError(f"{fmt.name} has no quantizer (it is only ever dequantized)")
        if search is not None and search not in quantize_searches(fmt):
            raise RefquantError(f"{fmt.name} has no quantizer search {search!r}; "
                                f"known: {', '.join(quantize_searches(fmt)) or 'none'}")
        # the kernel tests the input itself: only with nothing that check_imatrix could refuse
        # first (the input's error comes before a missing required imatrix's)
        defer = (imatrix is None and search is None and fmt.imatrix != IMATRIX_REQUIRED
                 and self._runs("quantize", fmt.name) is self and self.finite_in_kernel(fmt))
        x = check_floats(x, fmt, finite=_unchecked if defer else self.all_finite)
        im = check_imatrix(imatrix, fmt, x.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 0:           # zero rows: zero rows of bytes
            return np.zeros(quantized_shape(x.shape, fmt), np.uint8)
        impl = self._runs(path_label("quantize", im if fmt.imatrix != IMATRIX_NONE else None, search), fmt.name)
        with np.errstate(all="ignore"):  # overflow to inf is part of the C arithmetic reproduced
            try:
                if search is None:
                    out = impl.quantize_rows(fmt, rows, im)
                else:
                    out = impl.quantize_rows(fmt, rows, im, search=search)
            except NonFiniteInput:
                if not defer:
                    raise
                check_floats(x, fmt)     # raises the input check's error, naming the first bad value
                raise RefquantError(f"{fmt.name}: the {self.name} backend's kernel reported a "
                                    f"non-finite value in a finite input") from None
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
        a = check_floats(a, fmt, "activations", finite=self.all_finite)
        if a.ndim != 2 or a.shape[1] != w.shape[1] // fmt.type_size * fmt.block_size:
            raise RefquantError(f"{fmt.name} vec_dot: activations must be (M, {w.shape[1] // fmt.type_size * fmt.block_size}), "
                                f"got {a.shape}")
        impl = self._runs(path_label("vec_dot", variant=variant), fmt.name)
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
        full = {k: options.get(k, vals[0]) for k, vals in sc.options.items()}  # the first value is the default
        impl = self._runs(path_label("matmul", options=full), sc.name)
        with np.errstate(all="ignore"):
            return impl.matmul_rows(sc, a, weight, **options)

    def accumulation(self, op: str, key: str, K: int, weight=None):
        """The summation order of a float-accumulating (op, key), as refquant.gemm.depth's
        arguments; None (the default) holds the backend to the hard cap of any order."""
        return None

    def __repr__(self):
        return f"<refquant backend {self.name!r}>"


SPEC = Backend()


_TABLE_LINE = re.compile(r"^(?:QUANTIZE|DEQUANTIZE|VEC_DOT|MATMUL|DECLARES)\s*=", re.M)
_DECLARES_LINE = re.compile(r"^DECLARES\s*=", re.M)


def _declares(path, src: str):
    """The literal assigned to DECLARES at the top of a module's source (None where there is
    none), read by tokenizing that one statement: the module is neither imported nor parsed."""
    m = _DECLARES_LINE.search(src)
    if m is None:
        return None
    rest = src[m.end():]
    lines = rest.splitlines(keepends=True)
    for tok in tokenize.generate_tokens(io.StringIO(rest).readline):
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            row, col = tok.start
            break
    text = "".join(lines[:row - 1]) + (lines[row - 1][:col] if row <= len(lines) else "")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as e:
        raise RefquantError(f"{path}: DECLARES must be a literal (op -> keys): {e}") from None
    if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise RefquantError(f"{path}: DECLARES must map each operation to a string of keys")
    return value


@functools.lru_cache(maxsize=None)
def twin_modules(package: str) -> dict:
    """module path relative to `package` -> its DECLARES (or None), for every module of the
    package whose source defines a table (QUANTIZE, DEQUANTIZE, VEC_DOT, MATMUL) or DECLARES at
    its top level; modules whose name begins with "_" are the package's own helpers. Reads the
    files once per process; imports nothing."""
    pkg = importlib.import_module(package)
    out = {}
    for root in getattr(pkg, "__path__", ()):
        root = pathlib.Path(root)
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            if any(part.startswith("_") for part in rel):
                continue
            src = path.read_text(encoding="utf-8")
            if _TABLE_LINE.search(src):
                out[".".join(rel)] = _declares(path, src)
    return out


def _put(where: dict, op: str, key: str, module: str) -> None:
    if where.setdefault(key, module) != module:
        raise RefquantError(f"{op} {key} is in two twin modules: {where[key]} and {module}")


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
    the format or scheme argument). Its twin modules are found in its package's files: every
    module (not one whose name begins with "_") that defines a table at the top of its source, by
    its path relative to the package, mirroring the spec's ("ggml.legacy" twins
    refquant/ggml/legacy.py). The claims are the union of the tables, so an implementation joins
    by its module's table.

    Each twin module also declares what its tables hold in a literal beside them,

        DECLARES = {"quantize": "Q4_0 Q4_1", "dequantize": "Q4_0 Q4_1"}

    (op -> keys, space-separated; or "module:attribute", a spec table whose keys they are:
    "refquant.minifloat:FORMATS"), which the backend reads from the source without importing the
    module: a module is imported at the first call of one of its keys, not when the backend is
    made, so a call pays only for the module it needs (its import, and its kernels' compilation
    or cache loads). A key missing from the declarations is still found: asking for it (or for
    all the claims) imports every twin module once. `declared()` and `loaded()` give the two
    views, for a test that they agree."""

    TABLES = {"quantize": "QUANTIZE", "dequantize": "DEQUANTIZE", "vec_dot": "VEC_DOT", "matmul": "MATMUL"}

    @classmethod
    def _package(cls) -> str:
        return next(c for c in cls.__mro__ if TableBackend in c.__bases__).__module__

    @classmethod
    def modules(cls) -> tuple:
        """The twin modules, by their path relative to the package ("ggml.legacy")."""
        return tuple(twin_modules(cls._package()))

    @classmethod
    def declarations(cls) -> dict:
        """module -> its DECLARES literal, for the twin modules that have one."""
        return {m: d for m, d in twin_modules(cls._package()).items() if d is not None}

    @classmethod
    def declared(cls) -> dict:
        """op -> {key: module path} from the twin modules' DECLARES."""
        out = {op: {} for op in cls.TABLES}
        for m, ops in cls.declarations().items():
            for op, keys in ops.items():
                if op not in out:
                    raise RefquantError(f"{cls._package()}.{m}: DECLARES names {op!r}, not an operation "
                                        f"({', '.join(cls.TABLES)})")
                if ":" in keys:
                    module, _, attr = keys.partition(":")
                    keys = " ".join(getattr(importlib.import_module(module), attr))
                for k in keys.split():
                    _put(out[op], op, k, f"{cls._package()}.{m}")
        return out

    @classmethod
    def loaded(cls) -> dict:
        """op -> {key: module path} from the modules' own tables (imports every module)."""
        out = {op: {} for op in cls.TABLES}
        for m in cls.modules():
            mod = importlib.import_module(f"{cls._package()}.{m}")
            for op, attr in cls.TABLES.items():
                for k in getattr(mod, attr, {}):
                    _put(out[op], op, k, mod.__name__)
        return out

    def __init__(self):
        self._complete = False
        self._use(self.declared())

    def _use(self, where: dict) -> None:
        self._t = {op: _LazyTable(attr, where[op]) for op, attr in self.TABLES.items()}
        self._claimed = frozenset((op, key) for op, table in where.items() for key in table)

    def _load_all(self) -> None:
        if not self._complete:
            self._complete = True
            self._use(self.loaded())

    def claims(self):
        self._load_all()
        return set(self._claimed)

    def _runs(self, path: str, key: str) -> "Backend":
        op = path.split("+")[0].split("[")[0]
        if (op, key) not in self._claimed:   # not declared: every module's tables say
            self._load_all()
        return super()._runs(path, key)

    def finite_in_kernel(self, fmt) -> bool:
        """Whether the quantize function of `fmt` tests its input for NaN and Inf (it says so by
        its attribute checks_finite = True, and raises NonFiniteInput; see Backend)."""
        return bool(getattr(self._t["quantize"][fmt.name], "checks_finite", False))

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


def _load_module(module: str):
    """A module by import name, or by file path ("./mybackend.py", "/abs/dir/mod.py"); an import
    name not found on sys.path is looked for in the current directory too."""
    if module.endswith(".py") or os.sep in module or "/" in module:
        path = os.path.abspath(module)
        if not os.path.isfile(path):
            raise OSError(f"no such file: {path}")
        mod_name = "_refquant_backend_" + os.path.splitext(os.path.basename(path))[0]
        if mod_name in sys.modules and getattr(sys.modules[mod_name], "__file__", None) == path:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name != top or os.getcwd() in sys.path or not (
                os.path.isfile(f"{top}.py") or os.path.isdir(top)):
            raise
    sys.path.insert(0, os.getcwd())   # a module in the current directory, without PYTHONPATH
    return importlib.import_module(module)


def backend_reference(backend) -> str | None:
    """A string get_backend() loads `backend` from in a fresh process ("numba",
    "pkg.mod:Class", "/abs/path/mod.py:obj"), or None where there is none."""
    if isinstance(backend, str):
        module, sep, attr = backend.rpartition(":")
        if sep and (module.endswith(".py") or "/" in module):
            return f"{os.path.abspath(module)}:{attr}"
        return backend
    if backend is SPEC:
        return "numpy"
    ref = getattr(backend, "reference", None)
    if isinstance(ref, str):
        return ref
    cls = type(backend)
    mod = sys.modules.get(cls.__module__)
    if mod is None or cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    f = getattr(mod, "__file__", None)
    if f and ("." not in cls.__module__ or cls.__module__.startswith("_refquant_backend_")):
        return f"{f}:{cls.__qualname__}"   # a single-file module: by its path, loadable from anywhere
    return f"{cls.__module__}:{cls.__qualname__}"


def get_backend(name: str = "numpy") -> Backend:
    if isinstance(name, Backend):
        return name
    if name == "numpy":
        return SPEC
    if ":" in name:
        module, _, attr = name.rpartition(":")
        try:
            obj = getattr(_load_module(module), attr)
        except (ImportError, AttributeError, OSError) as e:
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
