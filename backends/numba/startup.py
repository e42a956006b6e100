"""What this backend does to Numba's start-up, before its first kernel loads (imported by
numerics.py, which every twin module imports).

Numba sets up its CPU target at the first compilation or cache load of a process: it imports its
implementation registries, among them numba.np.arraymath, whose import probes for a BLAS by
importing scipy.linalg.cython_blas. That import runs SciPy's whole linalg package (~0.15 s of CPU
and more of wall time, measured on the 2-core benchmark host): as much as quantizing a small
model's tensors, for a probe whose answer only one overload reads (`np.dot`/`np.vdot` of 1-D
arrays chooses BLAS or a loop when it is compiled), and none of this backend's kernels.

`defer_blas_probe` imports numba.np.arraymath with that probe made to fail, then puts back a
probe that runs Numba's own check (`arraymath._check_blas`) the first time it is read: the
answer, and any error the check raises, are the same as Numba's, only later or never. Where
Numba's internals are not as described (another version), nothing is changed.
"""
from __future__ import annotations

import sys

_BLAS_MODULE = "scipy.linalg.cython_blas"


class _DeferredProbe:
    """Numba's BLAS probe, run once when its truth value is first read."""

    def __init__(self, check):
        self._check, self._value = check, None

    def __bool__(self) -> bool:
        if self._value is None:
            self._value = bool(self._check())
        return self._value

    def __repr__(self):
        return f"<deferred BLAS probe: {'not run' if self._value is None else self._value}>"


def defer_blas_probe() -> bool:
    """Import numba.np.arraymath without its SciPy import; True where the probe was deferred."""
    if "numba.np.arraymath" in sys.modules:
        return False                      # too late: Numba's target is set up already
    blocked = _BLAS_MODULE not in sys.modules
    if blocked:
        sys.modules[_BLAS_MODULE] = None  # an import of it raises ImportError at once
    try:
        from numba.np import arraymath
    finally:
        if blocked and _BLAS_MODULE in sys.modules and sys.modules[_BLAS_MODULE] is None:
            del sys.modules[_BLAS_MODULE]
    check = getattr(arraymath, "_check_blas", None)
    if check is None or getattr(arraymath, "_HAVE_BLAS", None) is not False:
        return False
    arraymath._HAVE_BLAS = _DeferredProbe(check)
    return True


defer_blas_probe()
