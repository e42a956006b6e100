"""Fill Numba's on-disk cache with every kernel of the backend, so that a first call loads them.

    python -m refquant_backends.numba.warm [--types Q4_K,Q6_K] [--quiet]

Every kernel is compiled with cache=True: the first call of a kernel in a process compiles it
(seconds to a minute of CPU for the K-quant searches) and writes the machine code to Numba's
cache (the __pycache__ folders beside these modules, or NUMBA_CACHE_DIR), and every later
process loads it in milliseconds. `make install` runs this once, so that a new user's first
`refquant quantize --backend numba` loads instead of compiling; it calls each claimed operation
the way the public API and the file pipelines do (C-contiguous float32 rows, with and without
an importance matrix; bytes both writable and read-only, as a file's mapped tensors are), which
gives the argument types the cache is keyed by.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def warm(types=None, log=None) -> int:
    """Call every claimed (operation, key) once on small inputs; returns how many were called."""
    import refquant
    from refquant.registry import IMATRIX_NONE, IMATRIX_REQUIRED, get_format

    from . import NumbaBackend
    nb = NumbaBackend()
    rng = np.random.default_rng(0)
    n = 256  # a multiple of every block size
    x = (rng.standard_normal((2, n)) * 0.1).astype(np.float32)
    im = (rng.random(n) + 0.5).astype(np.float32)
    claims = sorted(nb.claims())
    done = 0
    from .api import PARALLEL_MIN, _max_magnitude_bits
    nb.all_finite(np.zeros(PARALLEL_MIN, np.float32))   # the input check's kernels (backends/numba/api.py)
    _max_magnitude_bits(np.zeros(PARALLEL_MIN, np.float32).view(np.uint32), 2)
    for op, key in claims:
        if types is not None and key not in types:
            continue
        t = time.process_time()
        if op in ("quantize", "dequantize", "vec_dot"):
            fmt = get_format(key)
            n_k = n if n % fmt.block_size == 0 else fmt.block_size
            xk = x[:, :n_k] if n_k <= n else (rng.standard_normal((2, n_k)) * 0.1).astype(np.float32)
            imk = im[:n_k] if n_k <= n else (rng.random(n_k) + 0.5).astype(np.float32)
            needs = fmt.imatrix != IMATRIX_NONE
            if op == "quantize":
                if fmt.imatrix != IMATRIX_REQUIRED:
                    try:
                        nb.quantize(xk, key)
                    except refquant.RefquantError:
                        pass
                if needs:
                    nb.quantize(xk, key, imk)
            else:
                q = refquant.quantize(xk, key, imk if needs else None)
                if op == "dequantize":
                    nb.dequantize(q, key)
                    ro = q.copy()
                    ro.flags.writeable = False
                    nb.dequantize(ro, key)
                else:
                    nb.vec_dot(q, key, xk[:1])
        else:
            continue  # matmul: compiled at its first call (not on the quantize path)
        done += 1
        if log:
            log(f"{op:<11}{key:<10}{time.process_time() - t:7.1f} s")
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refquant_backends.numba.warm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", help="comma-separated keys (default: every claimed one)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    c = time.process_time()
    log = None if a.quiet else (lambda s: print(s, flush=True))
    n = warm(set(a.types.split(",")) if a.types else None, log)
    print(f"numba cache: {n} operations compiled or loaded in {time.perf_counter() - t:.0f} s "
          f"({time.process_time() - c:.0f} s of CPU)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
