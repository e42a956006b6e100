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


def c_max_abs_scan(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`if (fabsf(v) > amax) { amax = fabsf(v); max = v; }` from amax = max = 0, where v may be
    NaN (a search's scale can be, for huge inputs): a NaN never wins the strict comparison."""
    x = np.asarray(x, dtype=F32)
    return c_max_abs(np.where(np.isnan(x), F32(0), x))


def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None = None):
    """Symmetric quantization to integers in [-nmax, nmax-1], scale chosen by a search over
    19 candidate inverse scales -(nmax + 0.1*is)/max. Returns (scale (nblocks,), L (nblocks, n)
    int8 holding l + nmax)."""
    x = np.asarray(x, dtype=F32)
    amax, vmax = c_max_abs_scan(x)  # `if (ax > amax) { amax = ax; max = x[i]; }`
    zero = amax < GROUP_MAX_EPS  # all zero: L = 0 and scale 0
    vmax = np.where(zero, F32(1), vmax)
    x = x.T.copy()  # position-major: row i is position i of every block (see make_qkx2_quants)

    def quant(iscale):
        l = nearest_int(iscale * x)
        return np.clip(l, -nmax, nmax - 1)

    iscale = F32(-nmax) / vmax
    l = quant(iscale)
    L = l + nmax
    if rmse_type == 0:
        scale = F32(1) / iscale
        return np.where(zero, F32(0), scale), np.where(zero, 0, L).T.astype(np.int8)

    return_early = rmse_type < 0
    rmse_type = abs(rmse_type)
    if qw is not None:
        w = np.asarray(qw, dtype=F32).T
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
        return seq_sum(wx * lf, axis=0), seq_sum(w * lf * lf, axis=0)  # sumlx += w*x[i]*l; suml2 += w*l*l

    sumlx, suml2 = sums(l)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    if return_early:
        early = np.where(suml2 > 0, F32(0.5) * (scale + F32(1) / iscale), F32(1) / iscale)
        return np.where(zero, F32(0), early), np.where(zero, 0, L).T.astype(np.int8)

    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(is_)) / vmax
        l = quant(iscale)
        sumlx, suml2 = sums(l)
        with np.errstate(invalid="ignore"):
            take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(take, l + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(F32)
        scale = np.where(take, new_scale, scale)
        best = np.where(take, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero, 0, L).T.astype(np.int8)


def make_q3_quants(x: np.ndarray, nmax: int, do_rmse: bool):
    """Symmetric quantization to [-nmax, nmax-1] from iscale = -nmax/max (max: the value of
    largest magnitude); with do_rmse, refined by coordinate descent: up to 5 passes over the
    positions, each moving L[i] to the least-squares choice nearest_int(x[i]*Σwl²/Σwxl) (sums
    without position i, weights x²) when that raises (Σwxl)²/Σwl². Returns (scale, L int8 holding
    l + nmax); an all-zero block gives scale 0 and L = 0 (not nmax).

    C stops after a pass that changes nothing; such a pass leaves the state as it found it, so
    every later pass would change nothing too, and running them all gives the same result."""
    x = np.asarray(x, dtype=F32)
    amax, vmax = c_max_abs_scan(x)
    zero = amax < GROUP_MAX_EPS
    vmax = np.where(zero, F32(1), vmax)
    iscale = F32(-nmax) / vmax
    L = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
    if not do_rmse:
        scale = F32(1) / iscale
        return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L + nmax).astype(np.int8)
    w = x * x
    lf = L.astype(F32)
    sumlx = seq_sum(w * x * lf)     # sumlx += w*x[i]*l
    suml2 = seq_sum(w * lf * lf)    # suml2 += w*l*l
    # Position-major copies (one contiguous row per position), and only the blocks that changed
    # in the previous pass go through the next one: a block whose pass changed nothing is final.
    xt, wt, Lt = x.T.copy(), w.T.copy(), L.T.copy()
    active = np.arange(len(x))
    for _ in range(5):
        xa, wa, La, sx, s2 = xt[:, active], wt[:, active], Lt[:, active], sumlx[active], suml2[active]
        changed = np.zeros(len(active), dtype=bool)
        for i in range(x.shape[1]):
            wi, xi, li = wa[i], xa[i], La[i].astype(F32)
            slx = sx - wi * xi * li                     # slx = sumlx - w*x[i]*L[i]
            sl2 = s2 - wi * li * li                     # sl2 = suml2 - w*L[i]*L[i]
            new_l = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
            nl = new_l.astype(F32)
            slx_new = slx + wi * xi * nl
            sl2_new = sl2 + wi * nl * nl
            take = ((slx > 0) & (new_l != La[i]) & (sl2_new > 0)
                    & (slx_new * slx_new * s2 > sx * sx * sl2_new))
            La[i] = np.where(take, new_l, La[i])
            sx = np.where(take, slx_new, sx)
            s2 = np.where(take, sl2_new, s2)
            changed |= take
        Lt[:, active], sumlx[active], suml2[active] = La, sx, s2
        active = active[changed]
        if not len(active):
            break
    L = Lt.T
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L + nmax).astype(np.int8)


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray):
    """Quantization of non-negative values (the sub-block scales and mins of a super-block) to
    [0, nmax]: pick the inverse scale (nmax + 0.1*is)/max, is = -4..4, of smallest weighted
    squared error, then refine L by coordinate descent as make_q3_quants does. Returns
    (scale, L uint8).

    C details kept: L is a uint8 array, so a negative level (from a negative input) is stored
    mod 256, and that stored value is what the error of the first grid and the refinement's
    `sumlx - w*x[i]*L[i]` read; `max` is `MAX(max, x[i])` from 0, so a NaN input becomes max."""
    x = np.asarray(x, dtype=F32)
    w = np.asarray(quant_weights, dtype=F32)
    vmax = np.zeros(len(x), dtype=F32)
    for i in range(x.shape[1]):
        vmax = np.where(vmax > x[:, i], vmax, x[:, i])    # MAX(a, b) = a > b ? a : b
    zero = vmax < GROUP_MAX_EPS
    vmax = np.where(zero, F32(1), vmax)

    def sq_error(scale, l):
        diff = x - scale[:, None] * l.astype(F32)         # diff = x[i] - scale*L[i]
        return seq_sum(w * diff * diff)                   # mse += w*diff*diff

    iscale = F32(nmax) / vmax
    first = (nearest_int(iscale[:, None] * x) & 0xFF).astype(np.uint8)  # unclamped, stored as uint8
    best_mse = sq_error(F32(1) / iscale, first)
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F32(0.1) * F32(is_) + F32(nmax)) / vmax
        l = np.minimum(nmax, nearest_int(iscale_is[:, None] * x))
        mse = sq_error(F32(1) / iscale_is, l)
        take = mse < best_mse
        best_mse = np.where(take, mse, best_mse)
        iscale = np.where(take, iscale_is, iscale)

    l = np.minimum(nmax, nearest_int(iscale[:, None] * x))
    L = l & 0xFF                                           # L[i] = l (uint8 store)
    lf = l.astype(F32)
    sumlx = seq_sum(w * x * lf)
    suml2 = seq_sum(w * lf * lf)
    for _ in range(5):
        changed = np.zeros(len(x), dtype=bool)
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new_l = np.minimum(nmax, nearest_int(xi * sl2 / slx))
            nl = new_l.astype(F32)
            slx_new = slx + wi * xi * nl
            sl2_new = sl2 + wi * nl * nl
            take = ((slx > 0) & (sl2 > 0) & (new_l != L[:, i])
                    & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
            L[:, i] = np.where(take, new_l & 0xFF, L[:, i])
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
            changed |= take
        if not changed.any():
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L).astype(np.uint8)


def make_qkx2_quants(x: np.ndarray, nmax: int, weights: np.ndarray, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool):
    """Asymmetric quantization to [0, nmax] with a minimum (x ≈ scale*L - the_min): start from
    the min/max grid, then try nstep+1 inverse scales (rmin + rdelta*is + nmax)/(max - min) and
    keep the weighted least-squares (scale, min) of the candidate with the smallest weighted
    error (|diff| if use_mad, else diff²). Returns (scale, the_min, L uint8), one per block.

    C detail kept: when a candidate wins, `min` becomes its least-squares minimum, and every
    later candidate is built from that updated `min` (both `max - min` and `x - min`)."""
    x = np.asarray(x, dtype=F32)
    vmin = c_min(x)                            # min = x[0]; if (x[i] < min) min = x[i];
    vmax = c_max(x)
    # Position-major from here: row i holds position i of every block, so each step of a C loop
    # over positions is one contiguous vector operation, and per-block values broadcast.
    x = x.T.copy()
    w = np.asarray(weights, dtype=F32).T.copy()
    sum_w = seq_sum(w[1:], axis=0, start=w[0])            # sum_w = weights[0]; sum_w += w;
    wx = w * x
    sum_x = seq_sum(wx[1:], axis=0, start=wx[0])          # sum_x = sum_w * x[0]; sum_x += w * x[i];
    vmin = np.where(vmin > 0, F32(0), vmin)    # if (min > 0) min = 0;
    flat = vmax == vmin                        # all equal (and <= 0): L = 0, scale 0
    vmax = np.where(flat, vmin + F32(1), vmax)

    iscale = F32(nmax) / (vmax - vmin)
    scale = F32(1) / iscale
    L = np.clip(nearest_int(iscale * (x - vmin)), 0, nmax)
    # diff = scale * L[i] + min - x[i]; best_error += w * diff(²)
    best_error = seq_sum(w * _err(scale * L.astype(F32) + vmin - x, use_mad), axis=0)
    the_min = vmin
    for is_ in range(nstep + 1 if nstep >= 1 else 0):  # `if (nstep < 1) return` skips the search
        iscale = (F32(rmin) + F32(rdelta) * F32(is_) + F32(nmax)) / (vmax - the_min)
        laux = np.clip(nearest_int(iscale * (x - the_min)), 0, nmax)
        lf = laux.astype(F32)
        wl = w * lf
        sum_l = seq_sum(wl, axis=0)            # sum_l  += w*l
        sum_l2 = seq_sum(wl * lf, axis=0)      # sum_l2 += w*l*l
        sum_xl = seq_sum(wl * x, axis=0)       # sum_xl += w*l*x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0                     # if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        cur_error = seq_sum(w * _err(this_scale * lf + this_min - x, use_mad), axis=0)
        take = ok & (cur_error < best_error)
        np.copyto(L, laux, where=take)
        best_error = np.where(take, cur_error, best_error)
        scale = np.where(take, this_scale, scale)
        the_min = np.where(take, this_min, the_min)
    scale = np.where(flat, F32(0), scale).astype(F32)
    the_min = np.where(flat, vmin, the_min)
    L = np.where(flat, 0, L).T.astype(np.uint8)
    return scale, (-the_min).astype(F32), L


def make_qkx3_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool):
    """make_qkx2_quants with weights x² when none are given. (C tests `max <= min` where
    make_qkx2_quants tests `max == min`; after `if (min > 0) min = 0` max < min cannot happen,
    so the two searches are the same.) Returns (scale, the_min = -min, L uint8)."""
    x = np.asarray(x, dtype=F32)
    w = x * x if weights is None else np.asarray(weights, dtype=F32)
    return make_qkx2_quants(x, nmax, w, rmin, rdelta, nstep, use_mad)
