"""refquant.numerics.fma_f32 against the C library's fmaf."""
import ctypes
import ctypes.util

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant.numerics import fma_f32

_libm_name = ctypes.util.find_library("m")
if _libm_name is None:
    pytest.skip("no C math library to compare fmaf with", allow_module_level=True)
_libm = ctypes.CDLL(_libm_name)
_libm.fmaf.restype = ctypes.c_float
_libm.fmaf.argtypes = [ctypes.c_float] * 3

f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def c_fmaf(a, b, c):
    return np.float32(_libm.fmaf(float(a), float(b), float(c)))


@given(a=f32, b=f32, c=f32)
def test_fma_f32_matches_libm(a, b, c):
    ours = fma_f32(np.float32(a), np.float32(b), np.float32(c))
    theirs = c_fmaf(a, b, c)
    assert np.asarray(ours).view(np.uint32) == theirs.view(np.uint32) or (np.isnan(ours) and np.isnan(theirs))


def test_fma_f32_breaks_double_rounding_ties():
    """a*b exactly halfway between two float32s and c far below float64's precision there: the
    float64 sum is the midpoint itself, and only c's sign says which way the exact value lies."""
    a, b = np.float32(1.5), np.float32(1 + 2.0**-23)      # a*b = 1.5 + 2**-23 + 2**-24, a midpoint
    for c in (2.0**-60, -(2.0**-60), 2.0**-80, -(2.0**-100)):
        c = np.float32(c)
        ours = fma_f32(a, b, c)
        assert np.asarray(ours).view(np.uint32) == c_fmaf(a, b, c).view(np.uint32)
    assert fma_f32(a, b, np.float32(2.0**-60)) != fma_f32(a, b, np.float32(-(2.0**-60)))
