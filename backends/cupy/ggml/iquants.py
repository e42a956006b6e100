"""CuPy twin of refquant/ggml/iquants.py: dequantization of IQ4_XS (iquants.cu)."""
from ._dequant import host

# What the table below holds, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_cupy_twins.py holds it equal to the table.
DECLARES = {"dequantize": "IQ4_XS"}
DEQUANTIZE = {"IQ4_XS": host("ggml/iquants.cu", "IQ4_XS")}
