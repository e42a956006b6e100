"""The plain kernels (dequantization, gemm_plain.cu) compiled as host C++ through host_shim.h and
run on the CPU: the same source the GPU runs, one simulated thread at a time, in a grid that
exercises the grid-stride loops and bounds checks. For tests on machines without a GPU; needs
a C++ compiler (c++ / g++ / clang++)."""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ._runtime import HERE, layout_defines

DEQUANT_KERNELS = ("dequantize_q4_0", "dequantize_q8_0", "dequantize_q4_k", "dequantize_q5_k",
                   "dequantize_q6_k", "dequantize_iq4_xs", "dequantize_mxfp4")
SOURCES = ("ggml/legacy.cu", "ggml/kquants.cu", "ggml/iquants.cu", "ggml/fp4.cu", "gemm_plain.cu")

_GRID = """
rq_dim3 threadIdx, blockIdx, blockDim, gridDim;
#define RQ_RUN(call) \\
    for (unsigned b = 0; b < gridDim.x; ++b) \\
        for (unsigned t = 0; t < blockDim.x; ++t) { blockIdx = {b, 0, 0}; threadIdx = {t, 0, 0}; call; }
"""


def compiler() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _wrappers() -> str:
    out = []
    for k in DEQUANT_KERNELS:
        out.append(f'extern "C" void host_{k}(const uint8_t* d, float* o, long long n, unsigned grid, unsigned block)'
                   f' {{ gridDim = {{grid, 1, 1}}; blockDim = {{block, 1, 1}}; RQ_RUN({k}(d, o, n)); }}')
    out.append('extern "C" void host_w4a16_plain(const float* ap, const uint8_t* codes, const float* scales, '
               'const uint8_t* zeros, const long long* gstart, const long long* gid, int nblk, int M, int N, int K, '
               'int ng, float* out, unsigned grid, unsigned block) { gridDim = {grid, 1, 1}; blockDim = {block, 1, 1}; '
               'RQ_RUN(w4a16_plain(ap, codes, scales, zeros, gstart, gid, nblk, M, N, K, ng, out)); }')
    out.append('extern "C" void host_fp8_plain(const float* a, const uint8_t* ac, const float* sa, int quant_a, '
               'const uint8_t* wc, const float* wsc, int gran, int M, int N, int K, float* out, unsigned grid, '
               'unsigned block) { gridDim = {grid, 1, 1}; blockDim = {block, 1, 1}; '
               'RQ_RUN(fp8_plain(a, ac, sa, quant_a, wc, wsc, gran, M, N, K, out)); }')
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def library():
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++, g++ or clang++) on this machine")
    tmp = Path(tempfile.mkdtemp(prefix="refquant-cupy-host-"))
    src = "#define RQ_HOST 1\n" + layout_defines() + "".join(f'#include "{s}"\n' for s in SOURCES) + _GRID + _wrappers() + "\n"
    (tmp / "host.cpp").write_text(src)
    so = tmp / "host.so"
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
           f"-I{HERE}", f"-I{HERE / 'ggml'}", "-o", str(so), str(tmp / "host.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"host build failed: {' '.join(cmd)}\n{r.stderr}")
    return ctypes.CDLL(str(so))


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def dequantize(kernel: str, data: np.ndarray, block_size: int, type_size: int, grid=3, block=32) -> np.ndarray:
    """Run dequantize_<fmt> on the CPU; the output is NaN-poisoned first."""
    d = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = d.shape[0]
    n = d.shape[1] // type_size * block_size
    out = np.full((nrows, n), np.nan, np.float32)
    getattr(library(), f"host_{kernel}")(_p(d), _p(out), ctypes.c_longlong(nrows * n), ctypes.c_uint(grid),
                                         ctypes.c_uint(block))
    return out


def w4a16_plain(a, w):
    from .gemm import group_order
    M, K = a.shape
    N = w.codes.shape[0]
    perm, gstart, gid = group_order(w.g_idx)
    ap = np.ascontiguousarray(a[:, perm], np.float32)
    codes = np.ascontiguousarray(w.codes[:, perm])
    sc = np.ascontiguousarray(w.scales, np.float32)
    z = np.ascontiguousarray(w.zeros)
    out = np.full((M, N), np.nan, np.float32)
    block = 32
    grid = -(-M * N // block)
    i = ctypes.c_int
    library().host_w4a16_plain(_p(ap), _p(codes), _p(sc), _p(z), _p(gstart), _p(gid), i(len(gid)), i(M), i(N), i(K),
                               i(w.scales.shape[1]), _p(out), ctypes.c_uint(grid), ctypes.c_uint(block))
    return out


def fp8_plain(a, w, activation="none"):
    from refquant.gemm import quantize_fp8_per_token
    M, K = a.shape
    N = w.codes.shape[0]
    ws = np.ascontiguousarray(np.asarray(w.scale, np.float32).reshape(-1))
    if activation == "per_token":
        ac, sa = quantize_fp8_per_token(a)
        fa, q = np.zeros(1, np.float32), 1
    else:
        fa, ac, sa, q = np.ascontiguousarray(a, np.float32), np.zeros(1, np.uint8), np.zeros(1, np.float32), 0
    ac = np.ascontiguousarray(ac)
    sa = np.ascontiguousarray(sa, np.float32)
    out = np.full((M, N), np.nan, np.float32)
    block = 32
    grid = -(-M * N // block)
    i = ctypes.c_int
    library().host_fp8_plain(_p(fa), _p(ac), _p(sa), i(q), _p(np.ascontiguousarray(w.codes)), _p(ws),
                             i(np.ndim(w.scale)), i(M), i(N), i(K), _p(out), ctypes.c_uint(grid), ctypes.c_uint(block))
    return out
