"""Every intermediate tensor of llama.cpp's forward, through its graph evaluation callback: the
oracle for refquant.model's operations one at a time.

llama.cpp calls `cb_eval` (a `llama_context_params` field) for every node of its compute graph
after computing it; this module reads each float32 node's data and, for every matrix product
(GGML_OP_MUL_MAT), the product's input and output under the weight's name. The `ggml_tensor`
layout is the one in the binding's ggml.h (llama-cpp-python 0.3.36). Flash attention is off by
default, as in `llama_cpp.Llama`.

    capture(model_path, tokens) -> {"<node name>|<OP>": array, ...,
                                    "MUL_MAT|<weight name>|x": input, "MUL_MAT|<weight name>|y": output}

Arrays have ggml's dimensions reversed (numpy order) with unit dimensions dropped. Like
tools.oracles.llama_cpp, the work runs in a process started with "spawn" that loads only
llama.cpp's ggml. Nothing in the spec imports this module; tests do.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np


def _tensor_struct():
    class Tensor(ctypes.Structure):
        pass
    Tensor._fields_ = [
        ("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
        ("src", ctypes.POINTER(Tensor) * 10), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8)]
    return Tensor


def capture_here(model_path, tokens, n_threads: int = 1, n_ctx: int = 512, flash_attn: bool = False) -> dict:
    """Evaluate `tokens` as one batch and return the captured tensors (in this process)."""
    from .llama_cpp import lib
    L = lib()                       # logging routed, backend initialised
    base = ctypes.CDLL(os.path.join(os.path.dirname(L.__file__), "lib", "libggml-base.so"))
    base.ggml_op_name.restype = ctypes.c_char_p
    base.ggml_op_name.argtypes = [ctypes.c_int]
    base.ggml_is_contiguous.restype = ctypes.c_bool
    base.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    Tensor = _tensor_struct()
    out: dict[str, np.ndarray] = {}

    def read(t):
        if t.type != 0 or not base.ggml_is_contiguous(ctypes.addressof(t)):   # F32, contiguous
            return None
        ne = list(t.ne)
        n = ne[0] * ne[1] * ne[2] * ne[3]
        a = np.ctypeslib.as_array((ctypes.c_float * n).from_address(t.data)).copy()
        return a.reshape(ne[::-1]).squeeze()

    @L.ggml_backend_sched_eval_callback
    def cb(tp, ask, user_data):
        if ask:
            return True
        t = ctypes.cast(tp, ctypes.POINTER(Tensor)).contents
        op = base.ggml_op_name(t.op).decode()
        a = read(t)
        if a is not None:
            out[f"{t.name.decode()}|{op}"] = a
        if op == "MUL_MAT" and a is not None:
            x = read(t.src[1].contents)
            if x is not None:
                w = t.src[0].contents.name.decode()
                out[f"MUL_MAT|{w}|x"], out[f"MUL_MAT|{w}|y"] = x, a
        return True

    model = L.llama_model_load_from_file(str(model_path).encode(), L.llama_model_default_params())
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_path}")
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
    cp.n_threads = cp.n_threads_batch = n_threads
    cp.cb_eval = cb
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, cp)
    try:
        toks = (L.llama_token * len(tokens))(*[int(t) for t in tokens])
        if L.llama_decode(ctx, L.llama_batch_get_one(toks, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)
    return out


def capture(model_path, tokens, **kw) -> dict:
    """`capture_here` in the llama.cpp worker process (see tools.oracles.llama_cpp)."""
    from .llama_cpp import _worker
    return _worker().submit(capture_here, str(model_path), [int(t) for t in tokens], **kw).result()
