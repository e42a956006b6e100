"""llama.cpp's whole-model quantizer, called through the `llama-cpp-python` binding: the oracle
for refquant.pipelines.recipes. `llama_model_quantize` takes an importance matrix as an array of
{name, data, size} records and metadata overrides as `llama_model_kv_override` records, so what
llama-quantize does after reading its files can be done from here.

Every call runs in one worker process of its own (started with "spawn", kept for the session):
llama.cpp ships its own ggml, and in a process that has also loaded ggml-python's, the dynamic
linker binds one library's ggml symbols to the other's (llama.cpp then sees an older ggml that
has no Q2_0, for instance). Nothing in the spec imports this module; tests do.

The second half of this module is a row-level oracle for that newer ggml: `ggml_quantize`,
`ggml_dequantize` and `ggml_requires_imatrix` call `ggml_quantize_chunk`, the type's `to_float`
and `ggml_quantize_requires_imatrix` of the libggml-base that llama-cpp-python ships (the ggml
llama_model_quantize runs), in the same worker process. `tools.oracles.ggml` is the same
oracle for ggml-python's older ggml; where the two ggml versions quantize a type differently
(IQ1_M's scale search, spec/ggml/iq1_m.md), each is checked against its own.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import importlib.util
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from .ggml import _ROW_FN, _VEC_DOT_FN, _TypeTraitsCpu, _f32p, declare_quantize_api


_LOG: list[str] | None = None   # while not None, llama.cpp's log lines are collected here


def _on_log(level, text, user_data):
    if _LOG is not None and text:
        _LOG.append(text.decode("utf-8", "replace"))


@functools.lru_cache(maxsize=None)
def lib():
    import llama_cpp
    # llama.cpp's log (it reports every tensor) is dropped unless collected
    cb = llama_cpp.llama_log_callback(_on_log)
    lib._log_cb = cb  # keep the callback alive
    llama_cpp.llama_log_set(cb, ctypes.c_void_p())
    llama_cpp.llama_backend_init()
    return llama_cpp


_POOL = None


def _worker():
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_POOL.shutdown)
    return _POOL


def _call(fn, *args, **kw):
    """fn(*args, **kw) in the worker process. A worker that died (a ggml abort) is replaced
    before the error is raised again, so later calls get a fresh one."""
    global _POOL
    try:
        return _worker().submit(fn, *args, **kw).result()
    except BrokenProcessPool:
        _POOL.shutdown(wait=False)
        _POOL = None
        raise


def quantize(*args, **kw) -> int:
    """Run llama_model_quantize in the worker process; returns its status (0: success).
    Arguments as `quantize_here`."""
    return _call(quantize_here, *args, **kw)


def tensor_types(*args, **kw):
    """The type llama.cpp chooses for each tensor (a dry run, in the worker process): name ->
    ggml type name in upper case; on failure, llama.cpp's error message."""
    return _call(tensor_types_here, *args, **kw)


def quantize_here(in_path, out_path, ftype: int, *, imatrix: dict[str, np.ndarray] | None = None,
             kv_overrides: list[tuple[str, object]] = (), allow_requantize: bool = False,
             output_tensor_type: int | None = None, token_embedding_type: int | None = None,
             pure: bool = False, quantize_output_tensor: bool = True, nthread: int = 2,
             dry_run: bool = False, tensor_types: list[tuple[str, int]] = (), prune_layers: list[int] = (),
             keep_split: bool = False, only_copy: bool = False) -> int:
    """Run llama_model_quantize; returns its status (0: success). Each argument is the
    llama_model_quantize_params field of its name (tensor_types: tt_overrides).
    kv_overrides: (key, value) with value a str (STR), a bool (BOOL), a float (FLOAT) or an int
    (INT, written as u32); or (key, tag, value) with tag "int", "float", "bool" or "str".
    tensor_types: (pattern, ggml type id) pairs, in order; prune_layers: layer numbers."""
    ll = lib()
    p = ll.llama_model_quantize_default_params()
    p.ftype = int(ftype)
    p.nthread = nthread
    p.allow_requantize = allow_requantize
    p.pure = pure
    p.quantize_output_tensor = quantize_output_tensor
    p.dry_run = dry_run
    p.keep_split = keep_split
    p.only_copy = only_copy
    if output_tensor_type is not None:
        p.output_tensor_type = int(output_tensor_type)
    if token_embedding_type is not None:
        p.token_embedding_type = int(token_embedding_type)
    keep = []
    if imatrix is not None:
        arr = (ll.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, vals) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(vals, dtype=np.float32)
            nm = ctypes.create_string_buffer(name.encode("utf-8"))
            keep += [v, nm]
            arr[i].name = ctypes.cast(nm, ctypes.c_char_p)
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        keep.append(arr)
        p.imatrix = ctypes.cast(arr, ctypes.POINTER(ll.llama_model_imatrix_data))
    if kv_overrides:
        ov = (ll.llama_model_kv_override * (len(kv_overrides) + 1))()
        for i, o in enumerate(kv_overrides):
            if len(o) == 3:
                key, tag, val = o
            else:
                key, val = o
                tag = ("str" if isinstance(val, str) else "bool" if isinstance(val, bool)
                       else "float" if isinstance(val, float) else "int")
            ov[i].key = key.encode("utf-8")
            if tag == "str":
                ov[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_STR
                ov[i].value.val_str = val.encode("utf-8")[:127]
            elif tag == "bool":
                ov[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_BOOL
                ov[i].value.val_bool = bool(val)
            elif tag == "float":
                ov[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_FLOAT
                ov[i].value.val_f64 = float(val)
            else:
                ov[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_INT
                ov[i].value.val_i64 = int(val)
        ov[len(kv_overrides)].key = b""
        keep.append(ov)
        p.kv_overrides = ctypes.cast(ov, ctypes.POINTER(ll.llama_model_kv_override))
    if tensor_types:
        tt = (ll.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, t) in enumerate(tensor_types):
            pb = ctypes.create_string_buffer(pattern.encode("utf-8"))
            keep.append(pb)
            tt[i].pattern = ctypes.cast(pb, ctypes.c_char_p)
            tt[i].type = int(t)
        tt[len(tensor_types)].pattern = None
        tt[len(tensor_types)].type = 43  # GGML_TYPE_COUNT, as llama-quantize ends the list
        keep.append(tt)
        p.tt_overrides = ctypes.cast(tt, ctypes.POINTER(ll.llama_model_tensor_override))
    if prune_layers:
        pl = (ctypes.c_int32 * (len(prune_layers) + 1))(*[int(i) for i in prune_layers], -1)
        keep.append(pl)
        p.prune_layers = ctypes.cast(pl, ctypes.POINTER(ctypes.c_int32))
    return int(ll.llama_model_quantize(str(in_path).encode(), str(out_path).encode(), ctypes.byref(p)))


def quantize_log_here(*args, **kw) -> tuple[int, str]:
    """quantize_here, and the log llama.cpp wrote meanwhile (its per-tensor lines: a dry run's
    table)."""
    global _LOG
    lib()
    _LOG = []
    try:
        rc = quantize_here(*args, **kw)
        return rc, "".join(_LOG)
    finally:
        _LOG = None


def quantize_log(*args, **kw) -> tuple[int, str]:
    """quantize_log_here in the worker process."""
    return _call(quantize_log_here, *args, **kw)


_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), "
                   r"size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((\S+)\))?")


def tensor_types_here(in_path, ftype: int, **kw) -> dict[str, str] | str:
    """The type llama.cpp chooses for each tensor, from a dry run (nothing is written): name ->
    ggml type name in upper case. On failure, returns llama.cpp's error message."""
    global _LOG
    lib()
    _LOG = []
    try:
        rc = quantize_here(in_path, "/nonexistent/dry-run.gguf", ftype, dry_run=True, **kw)
        text = "".join(_LOG)
    finally:
        _LOG = None
    if rc != 0:
        errs = [ln for ln in text.splitlines() if "failed to quantize" in ln]
        return errs[-1] if errs else text[-500:]
    out = {}
    for m in _LINE.finditer(text):
        name, cur, new = m.groups()
        out[name] = (new or cur).upper()
    return out


# ---------------------------------------------------------------------------------------------
# llama.cpp's ggml, row by row: ggml_quantize_chunk, to_float, ggml_quantize_requires_imatrix
# ---------------------------------------------------------------------------------------------

def ggml_lib_path() -> Path:
    """llama-cpp-python's libggml-base (found without importing the binding)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llama.cpp oracle needs the llama-cpp-python package")
    libdir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    for n in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (libdir / n).exists():
            return libdir / n
    raise RuntimeError(f"no libggml-base in {libdir}")


@functools.lru_cache(maxsize=None)
def ggml_lib() -> ctypes.CDLL:
    """llama.cpp's libggml-base, loaded in this process: call it in the worker only (the
    public functions below do). Refuses to load where ggml-python's ggml is already loaded."""
    if "ggml" in sys.modules:
        raise RuntimeError("ggml-python is loaded in this process; llama.cpp's ggml must run in the worker "
                           "(use ggml_quantize / ggml_dequantize, not the *_here functions)")
    return declare_quantize_api(ctypes.CDLL(str(ggml_lib_path())))


def _type_id(qtype) -> int:
    from refquant.registry import get_format
    t = get_format(qtype).ggml_type
    if t is None:
        raise ValueError(f"{qtype} is not a ggml type")
    return t


def ggml_quantize_here(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk (after ggml_quantize_init) over all rows of x (nrows, n), in this
    process -> (nrows, row_bytes) uint8."""
    L = ggml_lib()
    t = _type_id(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    nrows = x.size // n if n else 0
    rs = int(L.ggml_row_size(t, n))
    out = np.zeros((nrows, rs), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    L.ggml_quantize_init(t)
    L.ggml_quantize_chunk(t, x.ctypes.data_as(_f32p), ctypes.c_void_p(out.ctypes.data), 0, nrows, n,
                          None if im is None else im.ctypes.data_as(_f32p))
    return out.reshape(x.shape[:-1] + (rs,))


def ggml_dequantize_here(data: np.ndarray, qtype) -> np.ndarray:
    """The type's to_float (ggml_get_type_traits) over all rows, in this process."""
    L = ggml_lib()
    tr = L.ggml_get_type_traits(_type_id(qtype)).contents
    if not tr.to_float:
        raise ValueError(f"llama.cpp's ggml has no to_float for {qtype}")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    k = data.size // tr.type_size * tr.blck_size
    out = np.empty(k, dtype=np.float32)
    _ROW_FN(tr.to_float)(ctypes.c_void_p(data.ctypes.data), ctypes.c_void_p(out.ctypes.data), k)
    return out.reshape(data.shape[:-1] + (data.shape[-1] // tr.type_size * tr.blck_size,))


def ggml_requires_imatrix_here(qtype) -> bool:
    return bool(ggml_lib().ggml_quantize_requires_imatrix(_type_id(qtype)))


def ggml_quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's ggml_quantize_chunk over all rows of x (nrows, n) -> (nrows, row_bytes) uint8,
    run in the worker process. A ggml abort kills the worker and raises BrokenProcessPool (the
    next call starts a new worker); `ggml_quantize_dies` asks that question on purpose."""
    return _call(ggml_quantize_here, x, qtype, imatrix)


def ggml_dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """llama.cpp's to_float for `qtype` over all rows of data (nrows, row_bytes), in the worker."""
    return _call(ggml_dequantize_here, data, qtype)


def ggml_requires_imatrix(qtype) -> bool:
    """llama.cpp's ggml_quantize_requires_imatrix, in the worker."""
    return _call(ggml_requires_imatrix_here, qtype)


def ggml_quantize_row_ref_here(x: np.ndarray, qtype) -> np.ndarray:
    """The exported `quantize_row_<type>_ref` (Q8_1 and Q8_K, which ggml_quantize_chunk lacks),
    in this process."""
    from refquant.registry import get_format
    fmt = get_format(qtype)
    fn = getattr(ggml_lib(), f"quantize_row_{fmt.name.lower().replace('_k', '_K')}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(x.size // fmt.block_size * fmt.type_size, dtype=np.uint8)
    fn(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data), x.size)
    return out.reshape(x.shape[:-1] + (x.shape[-1] // fmt.block_size * fmt.type_size,))


def ggml_quantize_row_ref(x: np.ndarray, qtype) -> np.ndarray:
    """llama.cpp's `quantize_row_<type>_ref` over all rows of x, in the worker."""
    return _call(ggml_quantize_row_ref_here, x, qtype)


def ggml_quantize_dies_here(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, timeout: float = 120) -> bool:
    """In this process (the worker): ggml_quantize_init, then the quantizer in a forked child
    (which inherits the initialized tables, so IQ1_M's long init runs once); True when the
    child is killed or exits with a non-zero status (a GGML_ASSERT / GGML_ABORT)."""
    import signal
    import time
    ggml_lib().ggml_quantize_init(_type_id(qtype))
    pid = os.fork()
    if pid == 0:  # the child: no backtrace (ggml_abort would start gdb), no stderr
        try:
            os.environ["GGML_NO_BACKTRACE"] = "1"
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            ggml_quantize_here(x, qtype, imatrix)
        finally:
            os._exit(0)
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status != 0
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"llama.cpp's ggml quantizing {qtype} did not finish in {timeout} s")
        time.sleep(0.01)


def ggml_quantize_dies(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, timeout: float = 120) -> bool:
    """Whether llama.cpp's quantizer aborts on x (GGML_ASSERT / GGML_ABORT): run in a child
    forked from the worker, so the worker survives."""
    return _call(ggml_quantize_dies_here, x, qtype, imatrix, timeout)


# ---------------------------------------------------------------------------------------------
# llama.cpp's CPU backend (libggml-cpu): the vec_dot kernel its type traits select
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def ggml_cpu_lib() -> ctypes.CDLL:
    """llama-cpp-python's libggml-cpu, loaded in this process (the worker)."""
    ggml_lib()
    L = ctypes.CDLL(str(ggml_lib_path().parent / ggml_lib_path().name.replace("ggml-base", "ggml-cpu")))
    L.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    L.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
    L.ggml_cpu_init.argtypes = []
    L.ggml_cpu_init()
    return L


def ggml_vec_dot_here(w: np.ndarray, qa: np.ndarray, qtype) -> np.ndarray:
    """The CPU type traits' vec_dot of every weight row w (N, row_bytes) with every activation
    row qa (M, row_bytes of the vec_dot type, already quantized) -> (M, N) float32, in this process."""
    from refquant.registry import get_format
    fmt = get_format(qtype)
    tr = ggml_cpu_lib().ggml_get_type_traits_cpu(_type_id(qtype)).contents
    if not tr.vec_dot:
        raise ValueError(f"llama.cpp's ggml-cpu has no vec_dot for {fmt.name}")
    fn = _VEC_DOT_FN(tr.vec_dot)
    w = np.ascontiguousarray(w, dtype=np.uint8)
    qa = np.ascontiguousarray(qa, dtype=np.uint8)
    n = w.shape[1] // fmt.type_size * fmt.block_size
    out = np.zeros((qa.shape[0], w.shape[0]), dtype=np.float32)
    s = np.zeros(1, dtype=np.float32)
    for i in range(qa.shape[0]):
        for j in range(w.shape[0]):
            fn(n, s.ctypes.data_as(_f32p), 0, ctypes.c_void_p(w[j].ctypes.data), 0,
               ctypes.c_void_p(qa[i].ctypes.data), 0, 1)
            out[i, j] = s[0]
    return out


def ggml_vec_dot(w: np.ndarray, qa: np.ndarray, qtype) -> np.ndarray:
    """llama.cpp's CPU vec_dot for `qtype` (the kernel its type traits select), in the worker."""
    return _call(ggml_vec_dot_here, w, qa, qtype)
