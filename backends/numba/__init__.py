"""The Numba CPU backend of refquant.

    import refquant
    nb = refquant.get_backend("numba")   # registered under the `refquant.backends` entry point
    nb.quantize(x, "Q4_0"); nb.dequantize(q, "Q4_0"); nb.vec_dot(w, "Q4_0", a)
    nb.matmul("W4A16", a, weight)

Its modules mirror the spec's: backends/numba/ggml/legacy.py is the twin of
refquant/ggml/legacy.py, backends/numba/gemm.py of refquant/gemm.py. Each twin module lists what
it implements in tables named after the operation (QUANTIZE, DEQUANTIZE, VEC_DOT, MATMUL: key ->
function with the spec's signature); the backend's claims are the union of those tables, so a
format joins the backend when its twin module is added to MODULES and its keys to DECLARED (which
lets a call import only the twin module it needs). Everything else falls back to the spec
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


def _minifloats():
    from refquant.minifloat import FORMATS  # the names the minifloat twin builds its tables from
    return tuple(FORMATS)


class NumbaBackend(TableBackend):
    name = "numba"
    # The twin modules, by their path relative to the spec's package. New families join this list.
    MODULES = ("ggml.floats", "ggml.legacy", "ggml.kquants", "ggml.iquants", "ggml.iquants_grid", "ggml.lowbit",
               "ggml.fp4", "ggml.dot", "minifloat", "affine", "gemm", "ggml.iquants_iq1")
    # What each module's tables hold, so that a call imports only the module it needs (a quantize
    # to Q4_0 loads ggml.legacy alone; see TableBackend). tests/test_backend_numba.py checks this
    # against every module's tables.
    DECLARED = {
        "ggml.floats": {"quantize": "F16 BF16", "dequantize": "F16 BF16"},
        "ggml.legacy": {"quantize": "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1", "dequantize": "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1"},
        "ggml.kquants": {"quantize": "Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K", "dequantize": "Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K"},
        "ggml.iquants": {"quantize": "IQ4_NL IQ4_XS", "dequantize": "IQ4_NL IQ4_XS"},
        "ggml.iquants_grid": {"quantize": "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S",
                              "dequantize": "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M"},
        "ggml.iquants_iq1": {"quantize": "IQ1_S IQ1_M"},
        "ggml.lowbit": {"quantize": "TQ1_0 TQ2_0 Q1_0 Q2_0", "dequantize": "TQ1_0 TQ2_0 Q1_0 Q2_0", "vec_dot": "Q2_0"},
        "ggml.fp4": {"quantize": "MXFP4 NVFP4", "dequantize": "MXFP4 NVFP4"},
        "ggml.dot": {"vec_dot": "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL MXFP4 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS TQ1_0 TQ2_0 "
                                "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M Q1_0 NVFP4"},
        "minifloat": {"quantize": _minifloats, "dequantize": _minifloats},
        "affine": {},
        "gemm": {"matmul": "W8A8 W4A16 FP8"},
    }

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
        numba.set_num_threads(n)


def accumulation(op: str, key: str, K: int) -> dict:
    """The summation order of a float-accumulating kernel, as refquant.gemm.depth's arguments."""
    mod = importlib.import_module(f"{__name__}.gemm")
    return mod.accumulation(op, key, K)
