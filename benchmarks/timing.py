"""The one timing rule every benchmark here uses: the best of `repeat` runs."""
from __future__ import annotations

import time


def best_of(fn, repeat: int, clock=time.perf_counter):
    """(seconds of the fastest of `repeat` calls of fn, what the last call returned)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out
