"""CuPy twin of refquant/ggml/iquants.py: dequantization of IQ4_XS (iquants.cu)."""
from ._dequant import host

DEQUANTIZE = {"IQ4_XS": host("ggml/iquants.cu", "dequantize_iq4_xs", 256, 136)}
