"""The Numba CPU backend of refquant.

    import refquant
    nb = refquant.get_backend("numba")   # registered under the `refquant.backends` entry point
    nb.quantize(x, "Q4_0"); nb.dequantize(q, "Q4_0"); nb.vec_dot(w, "Q4_0", a)
    nb.matmul("W4A16", a, weight)

Its modules mirror the spec's: backends/numba/ggml/legacy.py is the twin of
refquant/ggml/legacy.py, backends/numba/gemm.py of refquant/gemm.py. Each twin module lists what
it implements in tables named after the operation (QUANTIZE, DEQUANTIZE, VEC_DOT, MATMUL: key ->
function with the spec's signature) and names their keys in a literal beside them
(`DECLARES = {"quantize": "Q4_0 Q4_1 ...", ...}`), which the backend reads from the source
without importing the module, so a call imports only the twin module it needs. The backend's
claims are the union of the tables, and the twin modules are found in this package's files: a
format joins the backend when its twin module's tables and DECLARES name it, and a new twin
module joins by existing; nothing here lists them. Everything else falls back to the spec
(`supports(op, key)` says which).

Claimed (the tables are the list: `supports(op, key)` answers per key, `refquant formats` lists
the types): quantize (with and without an importance matrix) and dequantize of every GGUF block
type the spec has except F32, and of the minifloat row formats (backends/numba/minifloat.py also
has encode/decode with the spec's saturate option);
affine encode/decode (quantize/dequantize given the scale and zero point) of every
refquant.affine convention — torchao in both zero-point domains, compressed-tensors, GPTQ,
AWQ — in backends/numba/affine.py, with the spec's signatures (choose_qparams is the spec's;
a block_size whose leading axes do not fold to 2-D runs the spec);
vec_dot of every ggml weight type the spec has; the W4A16, W8A8 and FP8 matmuls. Not claimed (the spec runs): the OCP MX and
bitsandbytes formats.

Encode/decode and integer operations are bit-exact with the spec; float-accumulating matmuls
meet refquant.gemm's bound for the order stated in ACCUMULATION.
"""
from __future__ import annotations

import importlib
import os

from refquant.backend import TableBackend

# Numba's default threading layer on Linux is GNU OpenMP, whose threads spin for a while after
# each parallel loop waiting for the next. On a host whose cores are busy with other processes
# a spinning thread takes the core from the thread it waits for: measured on a 2-core host at a
# load of 15, quantizing SmolLM2 to Q8_0 on two threads took 8.0 s of wall and 1.6 s of CPU time
# spinning, 1.5 s and 0.25 s with passive waits (each kernel call is a millisecond or more, so
# waking a sleeping thread costs nothing measurable). Read by libgomp when it loads, i.e. at the
# first parallel kernel; a value set by the user stands.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class NumbaBackend(TableBackend):
    name = "numba"
    # The twin modules are the package's modules that define tables (found in its files), and each
    # names its keys in its DECLARES, so that a call imports only the module it needs (a quantize
    # to Q4_0 loads ggml.legacy alone; see TableBackend). tests/test_backend_numba.py checks the
    # declarations against every module's tables.

    # Types whose rows are strings of independent blocks (ggml's quantize without an importance
    # matrix, and every dequantize, work block by block): a call with fewer rows than
    # SPLIT_ROWS is cut into more, shorter rows (a reshape: C order keeps every block's bytes
    # where they were), so that the parallel loop over rows has work for every thread. With an
    # importance matrix a row's weights can depend on the whole row (the legacy types' sigma2),
    # so those calls keep their rows. tests/test_backend_numba.py checks the result against the
    # spec, which runs rows whole.
    BLOCKWISE = frozenset("Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K IQ4_NL IQ4_XS "
                          "TQ1_0 TQ2_0 MXFP4 F16 BF16".split())
    SPLIT_ROWS = 64
    MIN_PIECE = 4096   # values: a piece keeps whole groups of super-blocks for the K-quant searches

    def _split(self, fmt, nrows: int, nblocks: int) -> int:
        """How many pieces to cut each row into: the smallest divisor k of the row's block count
        with nrows * k >= SPLIT_ROWS among those leaving pieces of MIN_PIECE values or more, else
        the largest of those (1 when the call has rows enough or the type is not block by
        block)."""
        if nrows >= self.SPLIT_ROWS or fmt.name not in self.BLOCKWISE:
            return 1
        best = 1
        for k in range(2, nblocks + 1):
            if nblocks % k:
                continue
            if nblocks // k * fmt.block_size < self.MIN_PIECE:
                break
            best = k
            if nrows * k >= self.SPLIT_ROWS:
                break
        return best

    def quantize_rows(self, fmt, x, imatrix):
        k = self._split(fmt, x.shape[0], x.shape[1] // fmt.block_size) if imatrix is None else 1
        if k == 1:
            return super().quantize_rows(fmt, x, imatrix)
        out = super().quantize_rows(fmt, x.reshape(x.shape[0] * k, x.shape[1] // k), None)
        return out.reshape(x.shape[0], -1)

    def dequantize_rows(self, fmt, data):
        k = self._split(fmt, data.shape[0], data.shape[1] // fmt.type_size)
        if k == 1:
            return super().dequantize_rows(fmt, data)
        out = super().dequantize_rows(fmt, data.reshape(data.shape[0] * k, data.shape[1] // k))
        return out.reshape(data.shape[0], -1)

    @staticmethod
    def all_finite(x):
        """The input check's NaN/Inf test on the backend's threads (backends/numba/api.py)."""
        from .api import all_finite
        return all_finite(x)

    def accumulation(self, op, key, K, weight=None):
        from .gemm import accumulation
        return accumulation(op, key, K, weight)

    threaded = True   # rows run in parallel (prange): the conformance suite checks 1 and all threads

    def max_threads(self) -> int:
        import numba
        return numba.config.NUMBA_NUM_THREADS

    @staticmethod
    def set_num_threads(n: int) -> None:
        import numba
        numba.set_num_threads(n)     # for the calling thread only: each task thread sets its own

    @staticmethod
    def get_num_threads() -> int:
        import numba
        return numba.get_num_threads()


def accumulation(op: str, key: str, K: int) -> dict:
    """The summation order of a float-accumulating kernel, as refquant.gemm.depth's arguments."""
    mod = importlib.import_module(f"{__name__}.gemm")
    return mod.accumulation(op, key, K)
