"""The Numba backend's quantize kernels that test their input for NaN and Inf themselves
(refquant.backend.Backend.finite_in_kernel: Q4_1, Q5_1 and MXFP4 without an imatrix, and Q8_K):
the same error as the spec's input check, word for word, and the same precedence when the
imatrix is bad too (the input's error first)."""
import numpy as np
import pytest

pytest.importorskip("numba")

from refquant import quantize                                            # noqa: E402
from refquant.backend import get_backend                                 # noqa: E402
from refquant.registry import get_format                                 # noqa: E402

TYPES = ("Q4_1", "Q5_1", "MXFP4", "Q8_K")
N = 256


def _error(f):
    try:
        f()
    except Exception as e:          # the class and the message are compared
        return type(e), str(e)
    return None


@pytest.fixture(scope="module")
def numba_backend():
    return get_backend("numba")


@pytest.mark.parametrize("t", TYPES)
def test_the_kernel_checks(numba_backend, t):
    assert numba_backend.finite_in_kernel(get_format(t))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("v", [np.nan, np.inf, -np.inf, -np.nan])
@pytest.mark.parametrize("imatrix", ["none", "negative", "nan", "shape"])
@pytest.mark.parametrize("where", [(0, 0), (5, 31), (70, 255)])
def test_the_spec_error_and_its_precedence(numba_backend, t, v, imatrix, where):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, N)).astype(np.float32)   # 80 rows: not split into pieces
    x[where] = v
    x[79, 200] = -v                                        # a later bad value is not the one named
    im = {"none": None, "negative": np.full(N, -1, np.float32), "nan": np.full(N, np.nan, np.float32),
          "shape": np.ones(N + 1, np.float32)}[imatrix]
    got = _error(lambda: numba_backend.quantize(x, t, imatrix=im))
    want = _error(lambda: quantize(x, t, imatrix=im))
    assert want is not None and want[1].startswith(f"{t}: x has a non-finite value")
    assert got == want


@pytest.mark.parametrize("t", TYPES)
def test_a_few_rows_split_into_pieces(numba_backend, t):
    x = np.zeros((2, 8192), np.float32)
    x[1, 5000] = np.inf
    assert _error(lambda: numba_backend.quantize(x, t)) == _error(lambda: quantize(x, t))


@pytest.mark.parametrize("t", TYPES)
def test_finite_input_near_the_infinities(numba_backend, t):
    """The largest finite floats are not taken for infinities."""
    f = np.finfo(np.float32)
    x = np.resize(np.array([f.max, -f.max, 0, -0.0, f.tiny, -f.smallest_subnormal], np.float32), (4, N))
    with np.errstate(all="ignore"):
        assert np.array_equal(numba_backend.quantize(x, t), quantize(x, t))


class _Deferring(type(get_backend("numpy"))):
    """The spec's backend, saying its kernels test the input (they never do): the input's error
    must still come before a missing required imatrix's."""
    name = "deferring"

    def finite_in_kernel(self, fmt):
        return True


def test_a_missing_required_imatrix_comes_after_the_input():
    x = np.zeros((2, 256), np.float32)
    x[1, 3] = np.nan
    got = _error(lambda: _Deferring().quantize(x, "IQ2_XXS"))
    assert got == _error(lambda: quantize(x, "IQ2_XXS"))
    assert "x has a non-finite value nan at row 1, column 3" in got[1]


def test_a_kernel_that_reports_on_finite_input_is_an_error():
    from refquant.backend import NonFiniteInput
    from refquant.errors import RefquantError

    class Lying(_Deferring):
        def quantize_rows(self, fmt, x, imatrix, search=None):
            raise NonFiniteInput

    with pytest.raises(RefquantError, match="reported a non-finite value in a finite input"):
        Lying().quantize(np.zeros((1, 32), np.float32), "Q4_1")
