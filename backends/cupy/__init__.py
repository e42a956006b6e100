"""The CuPy GPU backend of refquant (CUDA sources beside thin Python launchers).

    cu = refquant.get_backend("cupy")    # registered under the `refquant.backends` entry point
    cu.dequantize(q, "Q4_K"); cu.matmul("W4A16", a, weight); cu.matmul("FP8", a, w8)

Its modules mirror the spec's (backends/cupy/ggml/legacy.py is the twin of
refquant/ggml/legacy.py, backends/cupy/gemm.py of refquant/gemm.py); each lists what it runs in
tables named after the operation (DEQUANTIZE, MATMUL) and names their keys in a DECLARES literal
beside them, and the claims are their union. The twin modules are found in this package's files
(refquant.backend.TableBackend), so a new one joins by existing. The kernels' block sizes and
byte offsets come from the formats' declared layouts (refquant.ggml.layout): host-side from the
format record, and in the CUDA sources as macros (RQ_Q4_K_TYPE_SIZE, RQ_Q4_K_SCALES, ...)
generated from the layouts and put in front of each source when it is compiled
(_runtime.layout_defines; tests/test_cupy_twins.py holds them to the C structs).
Importing this package needs neither CuPy nor a GPU; running a claimed operation needs both.
Nothing here has been run on a GPU yet: see spec/backends/cupy.md.
"""
from __future__ import annotations

from refquant.backend import TableBackend


def gpu_available() -> tuple[bool, str]:
    """(True, device name) when CuPy imports and a CUDA device answers; else (False, why not)."""
    try:
        import cupy
    except ImportError as e:
        return False, f"cupy is not installed ({e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - no driver / no device: say which
        return False, f"no CUDA device or driver ({type(e).__name__}: {e})"
    if n == 0:
        return False, "no CUDA device"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return True, props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])


class CupyBackend(TableBackend):
    name = "cupy"

    def accumulation(self, op, key, K, weight=None):
        from .gemm import accumulation
        return accumulation(op, key, K, weight)
