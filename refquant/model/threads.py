"""How many threads the reference forward's matrix products (NumPy's BLAS) run on.

A BLAS library starts one thread per core. On a host where other processes already keep cores
busy those threads fight them (and each other) for the same cores, and a forward slows down
several times over instead of speeding up. `refquant perplexity`, `imatrix` and `eval` take
`--threads N`; without it they use `default_threads()`: the cores this process may run on, less
the ones the 1-minute load average says are already busy, at least one.

The limit is set with threadpoolctl (the `model` extra), which finds the BLAS that NumPy loaded
(OpenBLAS, MKL, BLIS) and changes its thread count for the duration of a block. Without it the
BLAS keeps its own default, and `blas_threads` says so by yielding None.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from ..errors import InputError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """The cores not already busy: available_cores() less the 1-minute load average (rounded to
    the nearest whole core), between 1 and available_cores()."""
    n = available_cores()
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # no load average on this OS
        busy = 0
    return max(1, min(n, n - busy))


@contextmanager
def blas_threads(n: int | None = None):
    """Run the block with NumPy's BLAS on n threads (None: default_threads()). Yields the number
    of threads set, or None where threadpoolctl is not installed (the BLAS's own default runs)."""
    if n is not None and n < 1:
        raise InputError(f"--threads must be at least 1, got {n}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield None
        return
    n = default_threads() if n is None else n
    with threadpool_limits(limits=n, user_api="blas"):
        yield n
