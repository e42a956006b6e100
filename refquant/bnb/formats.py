"""bitsandbytes' 4-bit types in the registry, as row formats at blocksize 64 (bitsandbytes'
default): BNB_NF4, BNB_FP4.

bitsandbytes keeps the packed nibbles and the absmax scales in separate tensors (see
refquant.layouts.bnb for that checkpoint layout). A registry row format needs one byte string
per block, so refquant's row view puts each block's scale in front of its codes:

    | absmax: float32 LE | qs[32]: byte k = code[2k] << 4 | code[2k+1] |     36 bytes / 64 values

Quantizing and dequantizing a row this way gives exactly bitsandbytes' codes, scales and
float32 values (quantize_4bit / dequantize_4bit on the row's tensor).
"""
from __future__ import annotations

import numpy as np

from ..numerics import F32
from ..format import Format
from .blockwise import dequantize_4bit, quantize_4bit, QuantState

BLOCK = 64
TYPE_SIZE = 4 + BLOCK // 2


def _quantize_rows(quant_type):
    def quantize_rows(x, imatrix=None):
        nrows, n = x.shape
        packed, state = quantize_4bit(np.ascontiguousarray(x, F32), BLOCK, quant_type)
        nb = nrows * n // BLOCK
        out = np.empty((nb, TYPE_SIZE), np.uint8)
        out[:, :4] = state.absmax.astype("<f4").view(np.uint8).reshape(nb, 4)
        out[:, 4:] = packed.reshape(nb, BLOCK // 2)
        return out.reshape(nrows, -1)
    return quantize_rows


def _dequantize_rows(quant_type):
    def dequantize_rows(data):
        nrows = data.shape[0]
        blocks = np.ascontiguousarray(data, np.uint8).reshape(-1, TYPE_SIZE)
        nb = blocks.shape[0]
        absmax = np.ascontiguousarray(blocks[:, :4]).view("<f4").reshape(nb).astype(F32)
        packed = np.ascontiguousarray(blocks[:, 4:]).reshape(-1, 1)
        state = QuantState(absmax, (nb * BLOCK,), None, BLOCK, "float32", quant_type)
        return dequantize_4bit(packed, state).reshape(nrows, -1)
    return dequantize_rows


RECORDS = [
    Format("BNB_NF4", "bnb", BLOCK, TYPE_SIZE, _quantize_rows("nf4"), _dequantize_rows("nf4"), spec_page="bnb/nf4.md"),
    Format("BNB_FP4", "bnb", BLOCK, TYPE_SIZE, _quantize_rows("fp4"), _dequantize_rows("fp4"), spec_page="bnb/fp4.md"),
]
