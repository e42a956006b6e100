"""CuPy twin of refquant/ggml/kquants.py: dequantization of Q4_K, Q5_K, Q6_K (kquants.cu)."""
from ._dequant import host

# What the table below holds, read from this line by the backend without importing the module
# (refquant.backend.TableBackend); tests/test_cupy_host.py holds it equal to the table.
DECLARES = {"dequantize": "Q4_K Q5_K Q6_K"}
DEQUANTIZE = {"Q4_K": host("ggml/kquants.cu", "dequantize_q4_k", 256, 144),
              "Q5_K": host("ggml/kquants.cu", "dequantize_q5_k", 256, 176),
              "Q6_K": host("ggml/kquants.cu", "dequantize_q6_k", 256, 210)}
