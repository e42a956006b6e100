"""CuPy twin of refquant/ggml/legacy.py: dequantization of Q4_0 and Q8_0 (legacy.cu)."""
from ._dequant import host

DEQUANTIZE = {"Q4_0": host("ggml/legacy.cu", "dequantize_q4_0", 32, 18),
              "Q8_0": host("ggml/legacy.cu", "dequantize_q8_0", 32, 34)}
