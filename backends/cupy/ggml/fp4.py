"""CuPy twin of refquant/ggml/fp4.py: dequantization of MXFP4 (fp4.cu)."""
from ._dequant import host

# What the table below holds, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_cupy_twins.py holds it equal to the table.
DECLARES = {"dequantize": "MXFP4"}
DEQUANTIZE = {"MXFP4": host("ggml/fp4.cu", "MXFP4")}
