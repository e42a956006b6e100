"""CuPy twin of refquant/ggml/legacy.py: dequantization of Q4_0 and Q8_0 (legacy.cu)."""
from ._dequant import host

# What the table below holds, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_cupy_twins.py holds it equal to the table.
DECLARES = {"dequantize": "Q4_0 Q8_0"}
DEQUANTIZE = {"Q4_0": host("ggml/legacy.cu", "Q4_0"),
              "Q8_0": host("ggml/legacy.cu", "Q8_0")}
