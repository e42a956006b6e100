"""bitsandbytes' formats: NF4/FP4 4-bit blockwise, double quantization, the dynamic 8-bit map
and LLM.int8(), as bitsandbytes computes them on the CPU."""
from .blockwise import (QuantState, dequantize_4bit, dequantize_blockwise, quantize_4bit,  # noqa: F401
                        quantize_blockwise)
from .codebooks import create_dynamic_map, create_normal_map, fp4_code, get_4bit_type, nf4_code  # noqa: F401
