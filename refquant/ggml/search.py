"""The scale searches ggml's quantizers share (ggml-quants.c), vectorised across blocks.

Each function takes a batch of blocks `x` (nblocks, n) and works on all of them at once; the
loops that remain are C's loops over positions and candidate scales, so every float32 sum is
accumulated in C's order, with C's association (`w*x[i]*l` is `(w*x[i])*l`).
"""
from __future__ import annotations

import numpy as np

from ..numerics import F32, c_max, c_max_abs, c_min, nearest_int, seq_sum

GROUP_MAX_EPS = F32(1e-15)


def _err(diff: np.ndarray, use_mad: bool) -> np.ndarray:
    return np.abs(diff) if use_mad else diff * diff


def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None = None):
    """Symmetric quantization to integers in [-nmax, nmax-1], scale chosen by a search over
    19 candidate inverse scales -(nmax + 0.1*is)/max. Returns (scale (nblocks,), L (nblocks, n)
    int8 holding l + nmax)."""
    x = np.asarray(x, dtype=F32)
    amax, vmax = c_max_abs(x)  # `if (ax > amax) { amax = ax; max = x[i]; }`
    zero = amax < GROUP_MAX_EPS  # all zero: L = 0 and scale 0
    vmax = np.where(zero, F32(1), vmax)

    def quant(iscale):
        l = nearest_int(iscale[:, None] * x)
        return np.clip(l, -nmax, nmax - 1)

    iscale = F32(-nmax) / vmax
    l = quant(iscale)
    L = l + nmax
    if rmse_type == 0:
        scale = F32(1) / iscale
        return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L).astype(np.int8)

    return_early = rmse_type < 0
    rmse_type = abs(rmse_type)
    if qw is not None:
        w = np.asarray(qw, dtype=F32)
    elif rmse_type == 1:
        w = x * x
    elif rmse_type == 2:
        w = np.ones_like(x)
    elif rmse_type == 3:
        w = np.abs(x)
    else:
        w = np.sqrt(np.abs(x))
    wx = w * x

    def sums(l):
        lf = l.astype(F32)
        return seq_sum(wx * lf), seq_sum(w * lf * lf)  # sumlx += w*x[i]*l; suml2 += w*l*l

    sumlx, suml2 = sums(l)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    if return_early:
        early = np.where(suml2 > 0, F32(0.5) * (scale + F32(1) / iscale), F32(1) / iscale)
        return np.where(zero, F32(0), early), np.where(zero[:, None], 0, L).astype(np.int8)

    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(is_)) / vmax
        l = quant(iscale)
        sumlx, suml2 = sums(l)
        with np.errstate(invalid="ignore"):
            take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(take[:, None], l + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(F32)
        scale = np.where(take, new_scale, scale)
        best = np.where(take, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L).astype(np.int8)


def make_qkx3_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool):
    """Asymmetric quantization to [0, nmax] with a minimum: the least-squares (scale, min) over
    nstep+1 candidate inverse scales (rmin + rdelta*is + nmax)/(max - min), weighted by
    `weights` (or x²). Returns (scale, the_min = -min, L uint8)."""
    x = np.asarray(x, dtype=F32)
    w = x * x if weights is None else np.asarray(weights, dtype=F32)
    vmin = c_min(x)
    vmin = np.where(vmin > 0, F32(0), vmin)  # `if (min > 0) min = 0;`
    vmax = c_max(x)
    # `float sum_w = w[0]; float sum_x = sum_w * x[0];` then += from i = 1: the sums start
    # from the first term, not from +0 (which would turn a -0 sum into +0)
    sum_w = seq_sum(w[:, 1:], start=w[:, 0])
    sum_x = seq_sum((w * x)[:, 1:], start=w[:, 0] * x[:, 0])
    flat = vmax <= vmin  # all equal (and <= 0): L = 0, scale 0
    vmax = np.where(flat, vmin + F32(1), vmax)

    iscale = F32(nmax) / (vmax - vmin)
    scale = F32(1) / iscale
    L = np.clip(nearest_int(iscale[:, None] * (x - vmin[:, None])), 0, nmax)
    best_mad = seq_sum(w * _err(scale[:, None] * L.astype(F32) + vmin[:, None] - x, use_mad))
    the_min = vmin.copy()
    if nstep >= 1:
        for is_ in range(nstep + 1):
            # C updates `min` when a candidate wins, and later candidates use the updated value
            iscale = (F32(rmin) + F32(rdelta) * F32(is_) + F32(nmax)) / (vmax - the_min)
            laux = np.clip(nearest_int(iscale[:, None] * (x - the_min[:, None])), 0, nmax)
            lf = laux.astype(F32)
            wl = w * lf
            sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * lf), seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            ok = D > 0
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
                pos = this_min > 0
                this_min = np.where(pos, F32(0), this_min)
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
                mad = seq_sum(w * _err(this_scale[:, None] * lf + this_min[:, None] - x, use_mad))
            take = ok & (mad < best_mad)
            L = np.where(take[:, None], laux, L)
            best_mad = np.where(take, mad, best_mad)
            scale = np.where(take, this_scale, scale)
            the_min = np.where(take, this_min, the_min)
    scale = np.where(flat, F32(0), scale).astype(F32)
    the_min = np.where(flat, vmin, the_min)
    L = np.where(flat[:, None], 0, L).astype(np.uint8)
    return scale, (-the_min).astype(F32), L
