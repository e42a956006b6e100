"""bitsandbytes' formats, as bitsandbytes computes them on the CPU.

    blockwise.py   NF4 / FP4 4-bit blockwise, double quantization, the dynamic 8-bit map
    codebooks.py   the NF4, FP4 and dynamic tables, derived from their definitions
    int8.py        LLM.int8(): vector-wise int8, int32 matmul, dequantization, outlier columns
    torch_cpu.py   the PyTorch CPU arithmetic bitsandbytes inherits (linspace, sum, mean)
    formats.py     BNB_NF4 / BNB_FP4 in the registry
Checkpoints: refquant.layouts.bnb. Spec pages: spec/bnb/, spec/divergences-bnb.md.
"""
from .blockwise import (QuantState, bnb_cpu_dequantize_4bit_kernel, dequantize_4bit,  # noqa: F401
                        dequantize_blockwise, quantize_4bit, quantize_blockwise)
from .codebooks import create_dynamic_map, create_normal_map, fp4_code, get_4bit_type, nf4_code  # noqa: F401
from .int8 import (int8_linear_matmul, int8_mixed_matmul, int8_mm_dequant, int8_vectorwise_dequant,  # noqa: F401
                   int8_vectorwise_quant)

__all__ = ["QuantState", "bnb_cpu_dequantize_4bit_kernel", "dequantize_4bit", "dequantize_blockwise",
           "quantize_4bit", "quantize_blockwise", "create_dynamic_map", "create_normal_map", "fp4_code",
           "get_4bit_type", "nf4_code", "int8_linear_matmul", "int8_mixed_matmul", "int8_mm_dequant",
           "int8_vectorwise_dequant", "int8_vectorwise_quant"]
