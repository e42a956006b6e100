"""Moving between rows of floats and rows of ggml blocks.

A ggml row of n values is n // block_size blocks laid end to end; a block is a packed C struct
(little-endian, no padding in any ggml block) whose fields each type declares once
(refquant.ggml.layout: its `split` and `join` move between rows and fields). These helpers give
the spec code (nblocks, ...) views of values and pack bits within a field.
"""
from __future__ import annotations

import numpy as np


def as_blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    """(nrows, n) float32 -> (nrows * n // block_size, block_size): every block of every row."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, block_size)


def u16(field: np.ndarray) -> np.ndarray:
    """A 2-byte little-endian field (nblocks, 2) as uint16 (nblocks,)."""
    return np.ascontiguousarray(field).view("<u2")[:, 0]


def pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """qs[j] = lo[j] | hi[j] << 4, keeping the low byte as the uint8 store does."""
    return ((lo.astype(np.int32) & 0xFF) | (hi.astype(np.int32) << 4)).astype(np.uint8)


def pack_high_bits(hbits: np.ndarray) -> np.ndarray:
    """Bit j of a little-endian uint32 from hbits[..., j] (0/1, 32 of them) -> (nblocks, 4) uint8.
    The `qh |= ((xi & 0x10) >> 4) << j` of Q5_0/Q5_1."""
    weights = (np.uint32(1) << np.arange(32, dtype=np.uint32))
    qh = (hbits.astype(np.uint32) * weights).sum(axis=-1, dtype=np.uint32)  # disjoint bits: exact
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """(nblocks, 4) uint8 -> (nblocks, 32) uint8 of bits, bit j of the little-endian uint32."""
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
