"""Numba twin of refquant/ggml/search.py: the scale searches, for one block at a time.

Loops over positions keep C's order, so every float32 sum is the spec's (and ggml's)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..numerics import INLINE, ONE, ZERO, nearest_int

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
TENTH = F32(0.1)


@njit(**INLINE)
def make_qx_quants(x, nmax, w, L):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=w) for one block; writes L (l + nmax),
    returns the scale. (rmse_type 1 with weights: the only variant the legacy types use.)"""
    n = x.shape[0]
    amax = ZERO
    vmax = ZERO
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    nmaxf = F32(nmax)
    iscale = -nmaxf / vmax
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        l = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
        L[i] = l + nmax
        lf = F32(l)
        sumlx += w[i] * x[i] * lf
        suml2 += w[i] * lf * lf
    scale = sumlx / suml2 if suml2 != ZERO else ZERO
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(nmaxf + TENTH * F32(is_)) / vmax
        sumlx = ZERO
        suml2 = ZERO
        for i in range(n):
            l = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
            lf = F32(l)
            sumlx += w[i] * x[i] * lf
            suml2 += w[i] * lf * lf
        if suml2 > ZERO and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1) + nmax
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(**INLINE)
def make_qkx3_quants(x, nmax, w, rmin, rdelta, nstep, L, laux):
    """make_qkx3_quants(..., use_mad=false) for one block; writes L, returns (scale, -min)."""
    n = x.shape[0]
    vmin = x[0]
    vmax = x[0]
    for i in range(1, n):
        if x[i] < vmin:
            vmin = x[i]
        if x[i] > vmax:
            vmax = x[i]
    if vmin > ZERO:
        vmin = ZERO
    sum_w = ZERO
    sum_x = ZERO
    for i in range(n):
        sum_w += w[i]
    for i in range(n):
        sum_x += w[i] * x[i]
    if vmax <= vmin:
        for i in range(n):
            L[i] = 0
        return ZERO, -vmin
    nmaxf = F32(nmax)
    iscale = nmaxf / (vmax - vmin)
    scale = ONE / iscale
    best_mad = ZERO
    for i in range(n):
        l = min(max(nearest_int(iscale * (x[i] - vmin)), 0), nmax)
        L[i] = l
        diff = scale * F32(l) + vmin - x[i]
        best_mad += w[i] * (diff * diff)
    the_min = vmin
    if nstep >= 1:
        for is_ in range(nstep + 1):
            iscale = (rmin + rdelta * F32(is_) + nmaxf) / (vmax - the_min)
            sum_l = ZERO
            sum_l2 = ZERO
            sum_xl = ZERO
            for i in range(n):
                l = min(max(nearest_int(iscale * (x[i] - the_min)), 0), nmax)
                laux[i] = l
                wl = w[i] * F32(l)
                sum_l += wl
                sum_l2 += wl * F32(l)
                sum_xl += wl * x[i]
            D = sum_w * sum_l2 - sum_l * sum_l
            if D > ZERO:
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
                if this_min > ZERO:
                    this_min = ZERO
                    this_scale = sum_xl / sum_l2
                mad = ZERO
                for i in range(n):
                    diff = this_scale * F32(laux[i]) + this_min - x[i]
                    mad += w[i] * (diff * diff)
                if mad < best_mad:
                    for i in range(n):
                        L[i] = laux[i]
                    best_mad = mad
                    scale = this_scale
                    the_min = this_min
    return scale, -the_min
