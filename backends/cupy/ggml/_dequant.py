"""The launcher shared by the dequantization twins: four output values per thread."""
from __future__ import annotations

import numpy as np

from .._runtime import kernel

THREADS = 256


def launch(src: str, name: str, data: np.ndarray, block_size: int, type_size: int, out=None):
    """data (nrows, row_bytes) uint8 (host or device) -> (nrows, nvalues) float32 on the device."""
    import cupy as cp
    d = cp.asarray(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data)
    nrows = d.shape[0]
    n = d.shape[1] // type_size * block_size
    if out is None:
        from .. import gemm
        out = cp.full((nrows, n), np.nan, cp.float32) if gemm.POISON else cp.empty((nrows, n), cp.float32)
    total = nrows * n
    if total:
        grid = min((total // 4 + THREADS - 1) // THREADS, 1 << 20)   # four values per thread
        kernel(src, name)((grid,), (THREADS,), (d, out, np.int64(total)))
    return out


def host(src: str, fmt: str):
    """The row function of `fmt`'s kernel dequantize_<fmt> in `src`; block and type size from
    the format's declared layout."""
    from refquant.registry import get_format
    f = get_format(fmt)
    name = f"dequantize_{fmt.lower()}"

    def run(data):
        return launch(src, name, data, f.block_size, f.type_size).get()
    run.__name__ = name
    return run
