"""Dense bit packing of small unsigned codes into words: the one packer every checkpoint layout
(GPTQ qweight/qzeros, AWQ, compressed-tensors pack-quantized, nvfp4 uint8) builds on.

Codes of `bits` bits (1..8) are laid end to end as one little-endian bit stream: code i of a
line occupies stream bits [i*bits, (i+1)*bits), lowest bit first, and stream bit k lives in
word k // W at bit k % W (W = 32 for int32 words, 8 for uint8). A code may straddle two words
(3-, 5-, 6-, 7-bit widths); nothing is padded between codes. The last word of a line is
zero-filled past the last code. Lines are independent: packing runs along one axis.

    bits=3, int32 words:  word 0 = c0 | c1<<3 | ... | c9<<27 | (c10 & 0b11)<<30
                          word 1 = c10>>2 | c11<<1 | ... | c20<<28 | (c21 & 0b1)<<31
                          word 2 = c21>>1 | c22<<2 | ... | c31<<29
    bits=4, uint8 words:  byte j = c(2j) | c(2j+1)<<4        (low nibble first)

Codes are unsigned; a signed format adds its offset first (compressed-tensors stores q + 2^(b-1),
GPTQ v1 stores zero - 1): that belongs to the layout, not to the packer.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

WORD_TYPES = {"int32": (np.int32, np.uint32, 32), "uint8": (np.uint8, np.uint8, 8)}


def _word(word: str):
    if word not in WORD_TYPES:
        raise InputError(f"pack_bits: word must be one of {sorted(WORD_TYPES)}, got {word!r}")
    return WORD_TYPES[word]


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
        raise InputError(f"pack_bits: bits must be an integer from 1 to 8, got {bits!r}")
    return int(bits)


def packed_length(count: int, bits: int, word: str = "int32") -> int:
    """Words needed for `count` codes of `bits` bits: ceil(count * bits / W)."""
    bits = _check_bits(bits)
    w = _word(word)[2]
    return -(-count * bits // w)


def pack_bits(codes: np.ndarray, bits: int, axis: int = -1, word: str = "int32") -> np.ndarray:
    """Pack unsigned `codes` (any integer dtype, every value in [0, 2^bits)) along `axis` into
    int32 (the bit pattern of the uint32 word) or uint8 words, densely, lowest bits first."""
    bits = _check_bits(bits)
    out_t, acc_t, w = _word(word)
    c = np.asarray(codes)
    if not np.issubdtype(c.dtype, np.integer):
        raise InputError(f"pack_bits: codes must be integers, got dtype {c.dtype}")
    if c.ndim == 0:
        raise InputError("pack_bits: codes must have at least one dimension, got a scalar")
    axis = _axis(axis, c.ndim)
    if c.size and (c.min() < 0 or c.max() >= (1 << bits)):
        bad = np.argwhere((c < 0) | (c >= (1 << bits)))[0]
        raise InputError(f"pack_bits: code {int(c[tuple(bad)])} at index {tuple(int(i) for i in bad)} "
                         f"does not fit in {bits} bits (allowed 0..{(1 << bits) - 1})")
    c = np.moveaxis(c, axis, -1).astype(np.uint64)
    count = c.shape[-1]
    nwords = -(-count * bits // w)
    out = np.zeros(c.shape[:-1] + (nwords,), dtype=np.uint64)
    for i in range(count):           # code i starts at stream bit i*bits
        start = i * bits
        k, off = divmod(start, w)
        out[..., k] |= (c[..., i] << np.uint64(off)) & np.uint64((1 << w) - 1)
        if off + bits > w:            # the high part spills into the next word
            out[..., k + 1] |= c[..., i] >> np.uint64(w - off)
    return np.moveaxis(out.astype(acc_t).view(out_t), -1, axis)


def unpack_bits(words: np.ndarray, bits: int, count: int, axis: int = -1, word: str = "int32") -> np.ndarray:
    """Inverse of pack_bits: the first `count` codes of each line of `words` along `axis`,
    as uint8 (values in [0, 2^bits))."""
    bits = _check_bits(bits)
    out_t, acc_t, w = _word(word)
    a = np.asarray(words)
    if a.dtype != out_t:
        raise InputError(f"unpack_bits: {word} words must have dtype {np.dtype(out_t)}, got {a.dtype}")
    if a.ndim == 0:
        raise InputError("unpack_bits: words must have at least one dimension, got a scalar")
    axis = _axis(axis, a.ndim)
    a = np.moveaxis(a.view(acc_t), axis, -1).astype(np.uint64)
    need = -(-count * bits // w)
    if count < 0 or a.shape[-1] < need:
        raise InputError(f"unpack_bits: {count} codes of {bits} bits need {need} {word} words per line, "
                         f"got {a.shape[-1]}")
    mask = np.uint64((1 << bits) - 1)
    out = np.empty(a.shape[:-1] + (count,), dtype=np.uint8)
    for i in range(count):
        k, off = divmod(i * bits, w)
        v = a[..., k] >> np.uint64(off)
        if off + bits > w:
            v = v | (a[..., k + 1] << np.uint64(w - off))
        out[..., i] = (v & mask).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def _axis(axis, ndim) -> int:
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise InputError(f"axis {axis!r} is out of range for an array of {ndim} dimensions")
    return int(axis) % ndim
