"""Numba twin of refquant/ggml/search.py: the scale searches, for one block at a time.

Loops over positions keep C's order, so every float32 sum is the spec's (and ggml's)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..numerics import INLINE, ONE, ZERO, nearest_int

F32 = np.float32
U64 = np.uint64
GROUP_MAX_EPS = F32(1e-15)
TENTH = F32(0.1)


@njit(**INLINE)
def _max_abs(x):
    """`if (ax > amax) { amax = ax; max = x[i]; }` from 0: (amax, the signed value at it)."""
    amax = ZERO
    vmax = ZERO
    for i in range(x.shape[0]):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    return amax, vmax


@njit(**INLINE)
def make_qx_quants(x, nmax, w, L):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=w) for one block; writes L (l + nmax),
    returns the scale. (rmse_type 1 with weights: the only variant the legacy types use.)"""
    n = x.shape[0]
    amax, vmax = _max_abs(x)
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


NCAND = 32  # scratch lanes for make_qx_quants_lanes: its 19 candidates, padded to two vectors of 16


@njit(**INLINE)
def make_qx_quants_lanes(x, nmax, w, L, isc, slx, sl2):
    """make_qx_quants (the same result, bit for bit) with the 19 candidate scales evaluated side
    by side: candidate 0 is the first pass (iscale = -nmax/max), candidates 1..18 are is = -9..-1,
    1..9 in C's order. Each candidate's two sums still run over i in C's order; the loop over
    candidates (length isc.shape[0] = NCAND at run time, unsigned offsets) is the one LLVM
    vectorises. The best candidate is then chosen in C's order, with C's comparisons, and L is
    computed for it. isc, slx, sl2: float32 scratch of NCAND."""
    n = x.shape[0]
    amax, vmax = _max_abs(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    nmaxf = F32(nmax)
    nm = np.int32(nmax)
    nc = U64(isc.shape[0])
    isc[0] = -nmaxf / vmax
    c = 1
    for is_ in range(-9, 10):
        if is_ != 0:
            isc[c] = -(nmaxf + TENTH * F32(is_)) / vmax
            c += 1
    for k in range(c, isc.shape[0]):
        isc[k] = ZERO
    for k in range(nc):
        slx[k] = ZERO
        sl2[k] = ZERO
    for i in range(n):
        xi = x[i]
        wi = w[i]
        wx = wi * xi
        for k in range(nc):
            lf = F32(min(max(nearest_int(isc[k] * xi), -nm), nm - np.int32(1)))
            slx[k] += wx * lf
            sl2[k] += wi * lf * lf
    best_c = 0
    scale = slx[0] / sl2[0] if sl2[0] != ZERO else ZERO
    best = scale * slx[0]
    for k in range(1, 19):
        if sl2[k] > ZERO and slx[k] * slx[k] > best * sl2[k]:
            scale = slx[k] / sl2[k]
            best = scale * slx[k]
            best_c = k
    iscale = isc[best_c]
    for i in range(n):
        L[i] = min(max(nearest_int(iscale * x[i]), -nm), nm - np.int32(1)) + nm
    return scale


@njit(**INLINE)
def make_qx_quants_x2_lanes(x, nmax, w, L, isc, slx, sl2):
    """make_qx_quants_x2 through make_qx_quants_lanes."""
    for i in range(x.shape[0]):
        w[i] = x[i] * x[i]
    return make_qx_quants_lanes(x, nmax, w, L, isc, slx, sl2)


@njit(**INLINE)
def make_qkx3_quants(x, nmax, w, rmin, rdelta, nstep, L, laux):
    """make_qkx3_quants(..., use_mad=false) for one block: make_qkx2_quants with explicit weights
    (C's `max <= min` and make_qkx2_quants' `max == min` agree once min <= 0). Writes L,
    returns (scale, -min)."""
    return make_qkx2_quants(x, nmax, w, rmin, rdelta, nstep, False, L, laux)


@njit(**INLINE)
def make_qx_quants_w(x, nmax, w, L):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=w) with L holding l + nmax; the K-quants'
    name for the same search (Q3_K's impl, Q6_K)."""
    return make_qx_quants(x, nmax, w, L)


@njit(**INLINE)
def make_qx_quants_x2(x, nmax, w, L):
    """make_qx_quants(..., rmse_type=1, qw=NULL): the weights are x[i]*x[i] (w: scratch)."""
    for i in range(x.shape[0]):
        w[i] = x[i] * x[i]
    return make_qx_quants(x, nmax, w, L)


@njit(**INLINE)
def make_q3_quants(x, nmax, do_rmse, L):
    """make_q3_quants for one block: writes L (l + nmax; 0 for an all-zero block), returns the
    scale. The refinement passes (weights x²) stop after a pass that changes nothing."""
    n = x.shape[0]
    amax, vmax = _max_abs(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    iscale = -F32(nmax) / vmax
    for i in range(n):
        L[i] = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
    if not do_rmse:
        for i in range(n):
            L[i] += nmax
        return ONE / iscale
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        w = x[i] * x[i]
        lf = F32(L[i])
        sumlx += w * x[i] * lf
        suml2 += w * lf * lf
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            li = F32(L[i])
            slx = sumlx - w * x[i] * li
            if slx > ZERO:
                sl2 = suml2 - w * li * li
                new_l = min(max(nearest_int(x[i] * sl2 / slx), -nmax), nmax - 1)
                if new_l != L[i]:
                    nl = F32(new_l)
                    slx = slx + w * x[i] * nl
                    sl2 = sl2 + w * nl * nl
                    if sl2 > ZERO and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > ZERO else ZERO


@njit(**INLINE)
def make_qp_quants(x, nmax, w, L):
    """make_qp_quants for one block of non-negative values: writes L (uint8 stores, so a
    negative level is kept mod 256), returns the scale."""
    n = x.shape[0]
    vmax = ZERO
    for i in range(n):
        vmax = vmax if vmax > x[i] else x[i]           # MAX(max, x[i])
    if vmax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    nmaxf = F32(nmax)
    iscale = nmaxf / vmax
    scale = ONE / iscale
    best_mse = ZERO
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF       # unclamped, stored as uint8
        diff = x[i] - scale * F32(L[i])
        best_mse += w[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (TENTH * F32(is_) + nmaxf) / vmax
        scale_is = ONE / iscale_is
        mse = ZERO
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F32(l)
            mse += w[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        lf = F32(l)
        sumlx += w[i] * x[i] * lf
        suml2 += w[i] * lf * lf
    for _ in range(5):
        changed = 0
        for i in range(n):
            li = F32(L[i])
            slx = sumlx - w[i] * x[i] * li
            sl2 = suml2 - w[i] * li * li
            if slx > ZERO and sl2 > ZERO:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    nl = F32(new_l)
                    slx = slx + w[i] * x[i] * nl
                    sl2 = sl2 + w[i] * nl * nl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > ZERO else ZERO


@njit(**INLINE)
def make_qkx2_quants(x, nmax, w, rmin, rdelta, nstep, use_mad, L, laux):
    """make_qkx2_quants for one block: writes L, returns (scale, -min). The sums start from the
    first term (`sum_w = weights[0]`), the error is |diff| with use_mad, else diff²; a winning
    candidate's least-squares min is the min every later candidate is built from."""
    n = x.shape[0]
    vmin = x[0]
    vmax = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < vmin:
            vmin = x[i]
        if x[i] > vmax:
            vmax = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if vmin > ZERO:
        vmin = ZERO
    if vmax == vmin:
        for i in range(n):
            L[i] = 0
        return ZERO, -vmin
    nmaxf = F32(nmax)
    iscale = nmaxf / (vmax - vmin)
    scale = ONE / iscale
    best_error = ZERO
    for i in range(n):
        l = min(max(nearest_int(iscale * (x[i] - vmin)), 0), nmax)
        L[i] = l
        diff = scale * F32(l) + vmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += w[i] * diff
    for is_ in range(nstep + 1 if nstep >= 1 else 0):
        iscale = (rmin + rdelta * F32(is_) + nmaxf) / (vmax - vmin)
        sum_l = ZERO
        sum_l2 = ZERO
        sum_xl = ZERO
        for i in range(n):
            l = min(max(nearest_int(iscale * (x[i] - vmin)), 0), nmax)
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
            cur_error = ZERO
            for i in range(n):
                diff = this_scale * F32(laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += w[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = laux[i]
                best_error = cur_error
                scale = this_scale
                vmin = this_min
    return scale, -vmin


LANES = 32  # make_qkx2_quants_lanes' lanes: 32 blocks side by side (two 16-wide vectors)


@njit(**INLINE)
def make_qkx2_quants_lanes(xt, wt, n, nl, nmax, rmin, rdelta, nstep, use_mad, Lt, lt, v, upd, scale_out, min_out):
    """make_qkx2_quants (the same results, bit for bit) for `nl` independent blocks of n values
    side by side, one block per lane: xt[i * nl + k], wt[i * nl + k] are position i of block k.
    Each lane runs C's search on its own block with C's operations in C's order (every sum over
    i in order, the candidates in order, a winner's least-squares min the one the lane's later
    candidates use); only the loops over lanes (length nl at run time, unsigned offsets) are
    new, and those LLVM vectorises. C's branches become per-lane selects. Writes Lt[i * nl + k]
    (block k's levels), scale_out[k] and min_out[k] (C's scale and -min). Scratch: lt (int32,
    n * nl), v (float32, 15 x nl), upd (int32, nl)."""
    nmaxf = F32(nmax)
    nm = np.int32(nmax)
    L = U64(nl)
    vmin, vmax, sum_w, sum_x = v[0], v[1], v[2], v[3]
    scale, best, sl, sl2, sxl = v[4], v[5], v[6], v[7], v[8]
    tsc, tmn, cur, iscv, dd, flat = v[9], v[10], v[11], v[12], v[13], v[14]
    for k in range(L):
        x0 = xt[k]
        vmin[k] = x0
        vmax[k] = x0
        sum_w[k] = wt[k]
        sum_x[k] = wt[k] * x0
    for i in range(1, n):
        o = U64(i) * L
        for k in range(L):
            xi = xt[o + k]
            vmin[k] = xi if xi < vmin[k] else vmin[k]
            vmax[k] = xi if xi > vmax[k] else vmax[k]
            sum_w[k] += wt[o + k]
            sum_x[k] += wt[o + k] * xi
    for k in range(L):
        vmin[k] = ZERO if vmin[k] > ZERO else vmin[k]
        flat[k] = ONE if vmax[k] == vmin[k] else ZERO   # C returns here: L = 0, (0, -min)
        iscv[k] = nmaxf / (vmax[k] - vmin[k])
        scale[k] = ONE / iscv[k]
        best[k] = ZERO
    for i in range(n):
        o = U64(i) * L
        for k in range(L):
            l = min(max(nearest_int(iscv[k] * (xt[o + k] - vmin[k])), np.int32(0)), nm)
            Lt[o + k] = l
            diff = scale[k] * F32(l) + vmin[k] - xt[o + k]
            diff = abs(diff) if use_mad else diff * diff
            best[k] += wt[o + k] * diff
    for is_ in range(nstep + 1 if nstep >= 1 else 0):
        num = rmin + rdelta * F32(is_) + nmaxf
        for k in range(L):
            iscv[k] = num / (vmax[k] - vmin[k])
            sl[k] = ZERO
            sl2[k] = ZERO
            sxl[k] = ZERO
        for i in range(n):
            o = U64(i) * L
            for k in range(L):
                l = min(max(nearest_int(iscv[k] * (xt[o + k] - vmin[k])), np.int32(0)), nm)
                lt[o + k] = l
                wl = wt[o + k] * F32(l)
                sl[k] += wl
                sl2[k] += wl * F32(l)
                sxl[k] += wl * xt[o + k]
        for k in range(L):
            D = sum_w[k] * sl2[k] - sl[k] * sl[k]
            dd[k] = D
            ts = (sum_w[k] * sxl[k] - sum_x[k] * sl[k]) / D
            tm = (sl2[k] * sum_x[k] - sl[k] * sxl[k]) / D
            pos = tm > ZERO
            tsc[k] = sxl[k] / sl2[k] if pos else ts
            tmn[k] = ZERO if pos else tm
            cur[k] = ZERO
        for i in range(n):
            o = U64(i) * L
            for k in range(L):
                diff = tsc[k] * F32(lt[o + k]) + tmn[k] - xt[o + k]
                diff = abs(diff) if use_mad else diff * diff
                cur[k] += wt[o + k] * diff
        for k in range(L):
            u = flat[k] == ZERO and dd[k] > ZERO and cur[k] < best[k]
            upd[k] = np.int32(1) if u else np.int32(0)
            best[k] = cur[k] if u else best[k]
            scale[k] = tsc[k] if u else scale[k]
            vmin[k] = tmn[k] if u else vmin[k]
        for i in range(n):
            o = U64(i) * L
            for k in range(L):
                Lt[o + k] = lt[o + k] if upd[k] != np.int32(0) else Lt[o + k]
    for k in range(L):
        scale_out[k] = ZERO if flat[k] != ZERO else scale[k]
        min_out[k] = -vmin[k]
    for i in range(n):
        o = U64(i) * L
        for k in range(L):
            Lt[o + k] = np.int32(0) if flat[k] != ZERO else Lt[o + k]
