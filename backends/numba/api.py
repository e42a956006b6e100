"""Numba twin of refquant/api.py's all_finite: the input check's test for NaN and Inf, on the
backend's threads.

The spec's all_finite runs two NumPy reductions (min and max) on one thread; before a
multi-threaded kernel that serial pass bounded the call's speed-up (a quarter of a Q4_0
quantize's time on one thread). Here one pass over the float32 bits (on large arrays cut into
one chunk per thread) takes the integer max of |x|'s bits (the sign bit cleared): a value is NaN or an
infinity exactly when those bits are at least 0x7F800000. Integer operations only, so there is
no float order to keep; the answer is the spec's for every input."""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from refquant.api import all_finite as _spec_all_finite
from refquant.backend import NonFiniteInput

from .numerics import JIT

# Below PARALLEL_MIN values the spec's reductions run (no kernel to load for a small call); up to
# THREADS_FROM values one pass on the calling thread: measured on the 2-core host, starting a
# parallel region costs 60-80 µs (waking the other thread), more than it saves on an array that
# the last-level cache holds (16 MiB: 0.17 ms on one thread, 0.20 on two; 64 MiB: 1.57 and 1.10).
PARALLEL_MIN = 1 << 16
THREADS_FROM = 1 << 23
_EXP = np.uint32(0x7F800000)
_MAG = np.uint32(0x7FFFFFFF)


@njit(**dict(JIT, parallel=True))
def _max_magnitude_bits(u, nchunks):
    """max(u[i] & 0x7FFFFFFF) over a 1-D uint32 array, in `nchunks` contiguous chunks, one per
    iteration of the parallel loop; the chunk's loop has unsigned offsets (vectorised)."""
    n = u.shape[0]
    step = (n + nchunks - 1) // nchunks
    part = np.zeros(nchunks, np.uint32)
    for c in prange(nchunks):
        lo = np.uint64(min(n, c * step))
        hi = np.uint64(min(n, (c + 1) * step))
        m = np.uint32(0)
        for i in range(lo, hi):
            m = max(m, u[i] & _MAG)
        part[c] = m
    m = np.uint32(0)
    for c in range(nchunks):
        m = max(m, part[c])
    return m


@njit(**JIT)
def _max_magnitude_bits_here(u):
    """_max_magnitude_bits on the calling thread alone."""
    m = np.uint32(0)
    for i in range(np.uint64(u.shape[0])):
        m = max(m, u[i] & _MAG)
    return m


def all_finite(x: np.ndarray) -> bool:
    """refquant.api.all_finite (the same answer), for a C-contiguous float32 array on the
    backend's threads; other arrays, and small ones, go to the spec's."""
    if x.dtype != np.float32 or x.size < PARALLEL_MIN or not x.flags.c_contiguous:
        return _spec_all_finite(x)
    u = x.reshape(-1).view(np.uint32)
    if x.size < THREADS_FROM or numba.get_num_threads() == 1:
        return bool(_max_magnitude_bits_here(u) < _EXP)
    return bool(_max_magnitude_bits(u, numba.get_num_threads()) < _EXP)


def checked(kernel, x, *args) -> None:
    """kernel(x, *args, bad) for a quantize kernel that tests its input for NaN and Inf itself
    (refquant.backend.Backend.finite_in_kernel; its function says so by checks_finite = True):
    bad[r] = 1 for a row holding one, and then NonFiniteInput, which Backend.quantize turns into
    the input check's error."""
    bad = np.zeros(x.shape[0], np.uint8)
    kernel(x, *args, bad)
    if bad.any():
        raise NonFiniteInput
