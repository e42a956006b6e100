"""CuPy twin of refquant/ggml/fp4.py: dequantization of MXFP4 (fp4.cu)."""
from ._dequant import host

DEQUANTIZE = {"MXFP4": host("ggml/fp4.cu", "dequantize_mxfp4", 32, 17)}
