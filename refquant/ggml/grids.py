"""The lattice tables of ggml's IQ types: codebooks, sign tables, and the maps and neighbour
lists the quantizers search (ggml-common.h; `iq2xs_init_impl` / `iq3xs_init_impl` in
ggml-quants.c).

Every codebook is a list of points whose coordinates are small integer *levels*: 8
coordinates of 3 levels each (0, 1, 2) for IQ2_XXS, IQ2_XS, IQ2_S and IQ1_S/IQ1_M, 4
coordinates of 8 levels each (0..7) for IQ3_XXS and IQ3_S. The packed level lists are data
(`grid_data.py`, generated from ggml's sources); everything else here is built from them:

* the dequantization tables, one byte per coordinate, as ggml-common.h spells them:
  IQ2 grids map levels 0, 1, 2 to 8, 25, 43; IQ3_XXS maps level l to 4, 12, 20, ..., 52, 62
  (8l+4, except the top level, 62); IQ3_S maps l to 2l+1; IQ1_S maps l to l-1 (int8);
* the quantizer's view of the same points: coordinate values 2l+1 (the odd integers), so that
  a point q approximates x/scale with x ≈ scale*q;
* `map[u]`: for every packed code u of levels, its index in the codebook, or -1;
* for every code u that is not in the codebook, its neighbour list: all codebook points whose
  squared distance to u (in 2l+1 coordinates) is among the `nwant` smallest distinct distances,
  ordered by (distance², index) — the order in which ggml sorts them with qsort and a
  comparator on both keys, so the order is total and the list unique.

ggml builds neighbour lists for every code below the map size (43692 for the 2-bit grids,
4096 for the 3-bit ones), including 2-bit codes that contain level 3. The quantizers clamp
levels to 0..2, so those codes are never looked up; refquant builds lists only for the codes
a quantizer can produce (every 3-level code for the 2-bit grids, every code for the 3-bit ones).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import grid_data

# kmask_iq2xs: bit j of a sign byte flips coordinate j
KMASK_IQ2XS = (np.uint8(1) << np.arange(8, dtype=np.uint8)).astype(np.uint8)


def _ksigns() -> np.ndarray:
    """ksigns_iq2xs: 7 stored sign bits i -> 8 sign bits, the eighth chosen so that the number
    of minus signs is even (bit 7 = parity of i)."""
    i = np.arange(128, dtype=np.uint8)
    parity = np.zeros(128, dtype=np.uint8)
    for b in range(7):
        parity ^= (i >> b) & 1
    return (i | (parity << 7)).astype(np.uint8)


KSIGNS_IQ2XS = _ksigns()

IQ1S_DELTA = np.float32(0.125)
IQ1M_DELTA = np.float32(0.125)


def unpack_levels(codes, bits: int, dims: int) -> np.ndarray:
    """Packed codes (N,) -> levels (N, dims): coordinate i is (code >> bits*i) & (2**bits - 1)."""
    c = np.asarray(codes, dtype=np.int64)
    shifts = bits * np.arange(dims)
    return ((c[:, None] >> shifts) & ((1 << bits) - 1)).astype(np.int8)


def pack_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """Levels (..., dims) -> packed codes (...): u |= level_i << bits*i."""
    lv = np.asarray(levels, dtype=np.int64)
    shifts = bits * np.arange(lv.shape[-1])
    return (lv << shifts).sum(axis=-1)  # disjoint bit fields: exact


def _byte_table(levels: np.ndarray, values) -> np.ndarray:
    return np.asarray(values, dtype=np.int16)[levels]


# ------------------------------------------------------------------ dequantization tables
# (N, dims) arrays of the bytes ggml-common.h holds, as signed ints (int8 for IQ1S).

@functools.lru_cache(maxsize=None)
def dequant_grid(name: str) -> np.ndarray:
    """The to_float codebook `name` (iq2xxs, iq2xs, iq2s, iq3xxs, iq3s, iq1s) as int16 (N, dims)."""
    if name in ("iq2xxs", "iq2xs", "iq2s"):
        lv = unpack_levels(getattr(grid_data, name.upper() + "_CODES"), 2, 8)
        return _byte_table(lv, [8, 25, 43])
    if name == "iq1s":
        lv = unpack_levels(grid_data.IQ1S_CODES, 2, 8)
        return lv.astype(np.int16) - 1
    if name == "iq3xxs":
        lv = unpack_levels(grid_data.IQ3XXS_CODES, 3, 4)
        return _byte_table(lv, [4, 12, 20, 28, 36, 44, 52, 62])
    if name == "iq3s":
        lv = unpack_levels(grid_data.IQ3S_CODES, 3, 4)
        return (2 * lv.astype(np.int16) + 1)
    raise KeyError(name)


# ------------------------------------------------------------------ quantizer structures

@dataclass(frozen=True)
class Lattice:
    """A codebook as the quantizers search it.

    pos:        (N, dims) int8, coordinates 2*level + 1
    levels:     (N, dims) int8, the levels (pos - 1) / 2
    bits:       bits per level in a packed code
    map:        (2**(bits*dims) capped to ggml's map size,) int32: code -> index, or -1
    nbr_row:    same shape: code -> its neighbour list's number, or -1 (codes on the grid, and
                codes no quantizer can produce)
    nbr_start:  (lists + 1,) int64: list r is nbr_flat[nbr_start[r]:nbr_start[r+1]]
    nbr_flat:   the neighbour lists end to end, int32 codebook indices
    nbr_levels: (len(nbr_flat), dims) int8, the levels of each nbr_flat entry
    """
    pos: np.ndarray
    levels: np.ndarray
    bits: int
    map: np.ndarray
    nbr_row: np.ndarray
    nbr_start: np.ndarray
    nbr_flat: np.ndarray
    nbr_levels: np.ndarray

    @property
    def dims(self) -> int:
        return self.pos.shape[1]

    def neighbours(self, code: int) -> np.ndarray:
        """The neighbour list of an off-grid code, in search order."""
        r = self.nbr_row[code]
        if r < 0:
            raise KeyError(f"code {code} is on the grid or cannot be produced")
        return self.nbr_flat[self.nbr_start[r]:self.nbr_start[r + 1]]


def _neighbour_lists(pos: np.ndarray, points: np.ndarray, nwant: int) -> list[np.ndarray]:
    """For each point (M, dims) (2l+1 coordinates): the codebook indices at the `nwant`
    smallest distinct squared distances, ordered by (distance², index)."""
    n = pos.shape[0]
    out = []
    p = pos.astype(np.int32)
    for start in range(0, points.shape[0], 512):
        pts = points[start:start + 512].astype(np.int32)
        d2 = ((p[None, :, :] - pts[:, None, :]) ** 2).sum(axis=2)        # (m, N) integers
        key = np.sort(d2.astype(np.int64) * n + np.arange(n), axis=1)   # (d2, index) order
        dist = key // n
        # rank of each distinct distance along the sorted row: 1 for the smallest
        rank = np.cumsum(np.concatenate([np.ones((dist.shape[0], 1), bool),
                                         dist[:, 1:] != dist[:, :-1]], axis=1), axis=1)
        for r in range(dist.shape[0]):
            out.append((key[r][rank[r] <= nwant] % n).astype(np.int32))
    return out


@functools.lru_cache(maxsize=None)
def lattice(name: str) -> Lattice:
    """The quantizer's structures for `name`: iq2xxs, iq2xs, iq2s, iq1s (IQ1_S and IQ1_M),
    iq3xxs, iq3s. nwant (distinct distances kept per neighbour list) as in ggml: 2 for IQ2_XXS,
    IQ2_XS and IQ3_XXS; 1 for IQ2_S; 3 for IQ1_S/IQ1_M and IQ3_S."""
    if name in ("iq2xxs", "iq2xs", "iq2s", "iq1s"):
        bits, dims, map_size, max_level = 2, 8, 43692, 2
        nwant = {"iq2xxs": 2, "iq2xs": 2, "iq2s": 1, "iq1s": 3}[name]
    elif name in ("iq3xxs", "iq3s"):
        bits, dims, map_size, max_level = 3, 4, 4096, 7
        nwant = {"iq3xxs": 2, "iq3s": 3}[name]
    else:
        raise KeyError(name)
    levels = unpack_levels(getattr(grid_data, name.upper() + "_CODES"), bits, dims)
    pos = (2 * levels + 1).astype(np.int8)
    kmap = np.full(map_size, -1, dtype=np.int32)
    kmap[pack_levels(levels, bits)] = np.arange(levels.shape[0], dtype=np.int32)

    # every code a quantizer can produce: each level in 0..max_level
    grids = np.meshgrid(*[np.arange(max_level + 1)] * dims, indexing="ij")
    all_levels = np.stack([g.ravel() for g in grids[::-1]], axis=1)  # any order: keyed by code
    codes = pack_levels(all_levels, bits)
    off = kmap[codes] < 0
    off_codes, off_levels = codes[off], all_levels[off]
    lists = _neighbour_lists(pos, 2 * off_levels + 1, nwant)
    start = np.concatenate([[0], np.cumsum([len(l) for l in lists])]).astype(np.int64)
    nbr_row = np.full(map_size, -1, dtype=np.int32)
    nbr_row[off_codes] = np.arange(len(lists), dtype=np.int32)
    flat = np.concatenate(lists).astype(np.int32)
    return Lattice(pos, levels, bits, kmap, nbr_row, start, flat, levels[flat])
