"""CuPy twin of refquant/ggml/kquants.py: dequantization of Q4_K, Q5_K, Q6_K (kquants.cu)."""
from ._dequant import host

# What the table below holds, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_cupy_twins.py holds it equal to the table.
DECLARES = {"dequantize": "Q4_K Q5_K Q6_K"}
DEQUANTIZE = {"Q4_K": host("ggml/kquants.cu", "Q4_K"),
              "Q5_K": host("ggml/kquants.cu", "Q5_K"),
              "Q6_K": host("ggml/kquants.cu", "Q6_K")}
