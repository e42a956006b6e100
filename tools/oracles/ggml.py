"""ggml itself, called through ctypes: the oracle the GGUF formats are checked against.

Uses the shared libraries that the `ggml-python` package builds from ggml's sources
(`pip install refquant[oracles]`). Nothing in the spec imports this module; tests, the demo and
the benchmarks do.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np

from refquant.registry import get_format

_f32p = ctypes.POINTER(ctypes.c_float)


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml.h; the same layout in ggml-python's ggml and llama.cpp's)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class OracleUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """libggml-base from the ggml-python package."""
    try:
        import ggml  # noqa: F401  (ggml-python)
    except ImportError as e:
        raise OracleUnavailable("the ggml oracle needs the ggml-python package "
                                "(pip install 'refquant[oracles]')") from e
    libdir = Path(ggml.__file__).parent / "lib"
    names = ["libggml-base.so", "libggml-base.dylib", "ggml-base.dll"]
    for n in names:
        if (libdir / n).exists():
            mode = getattr(os, "RTLD_GLOBAL", 0)
            L = ctypes.CDLL(str(libdir / n), mode=mode)
            break
    else:
        raise OracleUnavailable(f"no libggml-base in {libdir}")
    return declare_quantize_api(L)


def declare_quantize_api(L: ctypes.CDLL) -> ctypes.CDLL:
    """The signatures of the libggml-base functions the oracles call (the same in ggml-python's
    ggml and in llama.cpp's)."""
    L.ggml_quantize_chunk.restype = ctypes.c_size_t
    L.ggml_quantize_chunk.argtypes = [ctypes.c_int, _f32p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, _f32p]
    L.ggml_quantize_init.argtypes = [ctypes.c_int]
    L.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    L.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    L.ggml_get_type_traits.argtypes = [ctypes.c_int]
    L.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    L.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    L.ggml_row_size.restype = ctypes.c_size_t
    return L


def _ptr(a: np.ndarray, t=ctypes.c_void_p):
    return a.ctypes.data_as(t) if t is not ctypes.c_void_p else ctypes.c_void_p(a.ctypes.data)


def type_id(qtype) -> int:
    fmt = get_format(qtype)
    if fmt.ggml_type is None:
        raise ValueError(f"{fmt.name} is not a ggml type")
    return fmt.ggml_type


def row_size(qtype, n: int) -> int:
    return int(lib().ggml_row_size(type_id(qtype), n))


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk over all rows of x (nrows, n) -> (nrows, row_bytes) uint8."""
    L = lib()
    t = type_id(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.reshape(-1, x.shape[-1]).shape
    rs = row_size(qtype, n)
    out = np.zeros((nrows, rs), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    L.ggml_quantize_init(t)
    L.ggml_quantize_chunk(t, _ptr(x, _f32p), _ptr(out), 0, nrows, n,
                          None if im is None else _ptr(im, _f32p))
    return out.reshape(x.shape[:-1] + (rs,))


def _row_fn(name: str):
    fn = getattr(lib(), name)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    return fn


def quantize_row_ref(x: np.ndarray, qtype) -> np.ndarray:
    """ggml's exported `quantize_row_<type>_ref` (Q8_1 and Q8_K have no ggml_quantize_chunk path)."""
    fmt = get_format(qtype)
    fn = _row_fn(f"quantize_row_{fmt.name.lower().replace('_k', '_K')}_ref")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    k = x.size
    out = np.zeros(k // fmt.block_size * fmt.type_size, dtype=np.uint8)
    fn(_ptr(x), _ptr(out), k)
    return out.reshape(x.shape[:-1] + (n // fmt.block_size * fmt.type_size,))


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """The type's `to_float` from ggml_get_type_traits, over all rows."""
    fmt = get_format(qtype)
    tr = lib().ggml_get_type_traits(type_id(qtype)).contents
    if not tr.to_float:
        raise ValueError(f"ggml has no to_float for {fmt.name}")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    k = data.size // fmt.type_size * fmt.block_size
    out = np.empty(k, dtype=np.float32)
    _ROW_FN(tr.to_float)(_ptr(data), _ptr(out), k)
    return out.reshape(data.shape[:-1] + (data.shape[-1] // fmt.type_size * fmt.block_size,))


def dequantize_row(data: np.ndarray, qtype) -> np.ndarray:
    """ggml's exported `dequantize_row_<type>` (used for Q8_K, which has no to_float trait)."""
    fmt = get_format(qtype)
    fn = _row_fn(f"dequantize_row_{fmt.name.lower().replace('_k', '_K')}")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    k = data.size // fmt.type_size * fmt.block_size
    out = np.empty(k, dtype=np.float32)
    fn(_ptr(data), _ptr(out), k)
    return out.reshape(data.shape[:-1] + (data.shape[-1] // fmt.type_size * fmt.block_size,))


def requires_imatrix(qtype) -> bool:
    return bool(lib().ggml_quantize_requires_imatrix(type_id(qtype)))


# ---------------------------------------------------------------------------------------------
# The CPU backend (libggml-cpu): activation quantizers and vec_dot kernels
# ---------------------------------------------------------------------------------------------

class _TypeTraitsCpu(ctypes.Structure):
    # struct ggml_type_traits_cpu (ggml-cpu.h)
    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


# void (*ggml_vec_dot_t)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc)
_VEC_DOT_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, _f32p, ctypes.c_size_t, ctypes.c_void_p,
                               ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


@functools.lru_cache(maxsize=1)
def cpu_lib() -> ctypes.CDLL:
    """libggml-cpu from the ggml-python package (the CPU backend: SIMD kernels and type traits)."""
    import ggml  # noqa: F401  (ggml-python)
    lib()  # libggml-base first, globally, for the symbols libggml-cpu needs
    libdir = Path(ggml.__file__).parent / "lib"
    for n in ["libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"]:
        if (libdir / n).exists():
            L = ctypes.CDLL(str(libdir / n), mode=getattr(os, "RTLD_GLOBAL", 0))
            break
    else:
        raise OracleUnavailable(f"no libggml-cpu in {libdir}")
    L.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    L.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
    L.ggml_cpu_init.argtypes = []
    L.ggml_cpu_init()
    return L


def cpu_traits(qtype) -> _TypeTraitsCpu:
    return cpu_lib().ggml_get_type_traits_cpu(type_id(qtype)).contents


def vec_dot_type(qtype) -> str:
    """The type ggml's CPU backend quantizes the activations to before calling vec_dot."""
    import gguf
    return gguf.GGMLQuantizationType(cpu_traits(qtype).vec_dot_type).name


def from_float(x: np.ndarray, qtype) -> np.ndarray:
    """The CPU backend's `from_float` for `qtype` (for Q8_0/Q8_1 the SIMD activation quantizer
    that ggml_compute_forward_mul_mat applies to src1), over all rows of x."""
    fmt = get_format(qtype)
    tr = cpu_traits(qtype)
    if not tr.from_float:
        raise ValueError(f"ggml-cpu has no from_float for {fmt.name}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    rs = n // fmt.block_size * fmt.type_size
    out = np.zeros((rows.shape[0], rs), dtype=np.uint8)
    fn = _ROW_FN(tr.from_float)
    for i in range(rows.shape[0]):  # row by row, as mul_mat calls it
        fn(_ptr(rows[i]), _ptr(out[i]), n)
    return out.reshape(x.shape[:-1] + (rs,))


def vec_dot(w: np.ndarray, qa: np.ndarray, qtype, generic: bool = False) -> np.ndarray:
    """ggml's vec_dot of every weight row w (N, row_bytes) with every quantized activation row
    qa (M, row_bytes of the vec_dot type) -> (M, N) float32. generic=False calls the kernel in the
    CPU type traits (the SIMD one this build selected); generic=True calls the exported scalar
    `ggml_vec_dot_<type>_<vec_dot_type>_generic`."""
    fmt = get_format(qtype)
    vt = vec_dot_type(qtype)
    w = np.ascontiguousarray(w, dtype=np.uint8)
    qa = np.ascontiguousarray(qa, dtype=np.uint8)
    n = w.shape[1] // fmt.type_size * fmt.block_size
    if generic:
        c_name = lambda t: t.lower()[:-2] + "_K" if t.endswith("_K") else t.lower()  # q4_K, q8_K
        # NVFP4 has no x86 kernel: arch-fallback.h names the generic one ggml_vec_dot_nvfp4_q8_0
        suffix = "" if fmt.name == "NVFP4" else "_generic"
        fn = getattr(cpu_lib(), f"ggml_vec_dot_{c_name(fmt.name)}_{c_name(vt)}{suffix}")
        fn.argtypes = [ctypes.c_int, _f32p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                       ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = None
    else:
        fn = _VEC_DOT_FN(cpu_traits(qtype).vec_dot)
    out = np.zeros((qa.shape[0], w.shape[0]), dtype=np.float32)
    s = np.zeros(1, dtype=np.float32)
    for i in range(qa.shape[0]):
        for j in range(w.shape[0]):
            fn(n, _ptr(s, _f32p), 0, _ptr(w[j]), 0, _ptr(qa[i]), 0, 1)
            out[i, j] = s[0]
    return out


def mul_mat_f32(a: np.ndarray, b: np.ndarray, threads: int = 1) -> np.ndarray:
    """ggml_mul_mat(a, b) of two float32 matrices computed by ggml-python's CPU backend in a
    one-node graph: a (N, K) as src0, b (M, K) as src1 -> (M, N), out[m, n] = a[n] · b[m] in
    whatever order ggml's CPU mul_mat takes for these shapes."""
    import ggml as G
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    (N, K), (M, K2) = a.shape, b.shape
    assert K == K2
    ctx = G.ggml_init(G.ggml_init_params(mem_size=(a.size + b.size + M * N) * 4 + 16 * 2**20, mem_buffer=None,
                                         no_alloc=False))
    try:
        ta = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, K, N)
        tb = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, K, M)
        ctypes.memmove(G.ggml_get_data(ta), a.ctypes.data, a.nbytes)
        ctypes.memmove(G.ggml_get_data(tb), b.ctypes.data, b.nbytes)
        y = G.ggml_mul_mat(ctx, ta, tb)
        gf = G.ggml_new_graph(ctx)
        G.ggml_build_forward_expand(gf, y)
        G.ggml_graph_compute_with_ctx(ctx, gf, threads)
        return np.ctypeslib.as_array(ctypes.cast(G.ggml_get_data(y), ctypes.POINTER(ctypes.c_float)),
                                     shape=(M, N)).copy()
    finally:
        G.ggml_free(ctx)
