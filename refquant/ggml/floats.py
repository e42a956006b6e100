"""ggml's plain float types: F32, F16, BF16 (one element a "block").

    F32   | float32, little-endian |
    F16   | IEEE binary16: GGML_FP32_TO_FP16 (round to nearest even, NaN -> 0x7E00|sign) |
    BF16  | top 16 bits of float32, rounded to nearest even; NaN keeps its bits, quiet bit set |
"""
from __future__ import annotations

import gguf
import numpy as np

from ..numerics import F32, bf16_bits_to_fp32, fp16_bits_to_fp32, fp32_to_bf16_bits, fp32_to_fp16_bits
from ..format import block_format
from .layout import Field, Layout

T = gguf.GGMLQuantizationType

LAYOUTS = {L.name: L for L in [
    Layout("F32", 1, [Field("x", "f32", 1, "the value, little-endian")]),
    Layout("F16", 1, [Field("x", "f16", 1, "IEEE binary16, GGML_FP32_TO_FP16")]),
    Layout("BF16", 1, [Field("x", "bf16", 1, "the top 16 bits of the float32, rounded")]),
]}


def _as_u16(data):
    return np.ascontiguousarray(data, dtype=np.uint8).view("<u2")


def quantize_f32(x, imatrix=None):
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8)


def dequantize_f32(data):
    return np.ascontiguousarray(data, dtype=np.uint8).view("<f4").astype(F32)


def quantize_f16(x, imatrix=None):
    return fp32_to_fp16_bits(x).astype("<u2").view(np.uint8)


def dequantize_f16(data):
    return fp16_bits_to_fp32(_as_u16(data))


def quantize_bf16(x, imatrix=None):
    return fp32_to_bf16_bits(x).astype("<u2").view(np.uint8)


def dequantize_bf16(data):
    return bf16_bits_to_fp32(_as_u16(data))


# llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_BF16
RECORDS = [block_format(LAYOUTS[name], "ggml-float", q, dq, ggml_type=int(T[name]), spec_page=f"ggml/{name.lower()}.md",
                        file_type=ftype)
           for name, q, dq, ftype in [
               ("F32", quantize_f32, dequantize_f32, 0),
               ("F16", quantize_f16, dequantize_f16, 1),
               ("BF16", quantize_bf16, dequantize_bf16, 32)]]
