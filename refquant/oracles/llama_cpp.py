"""llama.cpp's whole-model quantizer, called through the `llama-cpp-python` binding: the oracle
for refquant.ggml.recipes. `llama_model_quantize` takes an importance matrix as an array of
{name, data, size} records and metadata overrides as `llama_model_kv_override` records, so what
llama-quantize does after reading its files can be done from here.

Every call runs in one worker process of its own (started with "spawn", kept for the session):
llama.cpp ships its own ggml, and in a process that has also loaded ggml-python's, the dynamic
linker binds one library's ggml symbols to the other's (llama.cpp then sees an older ggml that
has no Q2_0, for instance). Nothing in the spec imports this module; tests do.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np


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


def quantize(*args, **kw) -> int:
    """Run llama_model_quantize in the worker process; returns its status (0: success).
    Arguments as `quantize_here`."""
    return _worker().submit(quantize_here, *args, **kw).result()


def tensor_types(*args, **kw):
    """The type llama.cpp chooses for each tensor (a dry run, in the worker process): name ->
    ggml type name in upper case; on failure, llama.cpp's error message."""
    return _worker().submit(tensor_types_here, *args, **kw).result()


def quantize_here(in_path, out_path, ftype: int, *, imatrix: dict[str, np.ndarray] | None = None,
             kv_overrides: list[tuple[str, object]] = (), allow_requantize: bool = False,
             output_tensor_type: int | None = None, token_embedding_type: int | None = None,
             pure: bool = False, quantize_output_tensor: bool = True, nthread: int = 2,
             dry_run: bool = False) -> int:
    """Run llama_model_quantize; returns its status (0: success).
    kv_overrides: (key, value) with value a str (STR) or an int (INT, written as u32)."""
    ll = lib()
    p = ll.llama_model_quantize_default_params()
    p.ftype = int(ftype)
    p.nthread = nthread
    p.allow_requantize = allow_requantize
    p.pure = pure
    p.quantize_output_tensor = quantize_output_tensor
    p.dry_run = dry_run
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
        for i, (key, val) in enumerate(kv_overrides):
            ov[i].key = key.encode("utf-8")
            if isinstance(val, str):
                ov[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_STR
                ov[i].value.val_str = val.encode("utf-8")[:127]
            else:
                ov[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_INT
                ov[i].value.val_i64 = int(val)
        ov[len(kv_overrides)].key = b""
        keep.append(ov)
        p.kv_overrides = ctypes.cast(ov, ctypes.POINTER(ll.llama_model_kv_override))
    return int(ll.llama_model_quantize(str(in_path).encode(), str(out_path).encode(), ctypes.byref(p)))


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
