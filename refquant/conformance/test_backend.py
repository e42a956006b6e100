"""The conformance suite as pytest tests, for `pytest --pyargs refquant.conformance`.

The backend comes from the environment, as array-api-tests takes its module:

    REFQUANT_BACKEND=numba pytest --pyargs refquant.conformance
    REFQUANT_BACKEND=mypkg.backend:MyBackend pytest --pyargs refquant.conformance

REFQUANT_MAX_EXAMPLES and REFQUANT_SEED set the Hypothesis budget and seed. One test per
(format, check); unclaimed ones are reported as skipped with that reason.
"""
import os

import pytest

from refquant.backend import get_backend
from refquant.conformance.suite import CHECKS, EXACT, NOT_CLAIMED, run
from refquant.registry import IMATRIX_NONE, all_formats

BACKEND = os.environ.get("REFQUANT_BACKEND", "numpy")
MAX_EXAMPLES = int(os.environ.get("REFQUANT_MAX_EXAMPLES", "50"))
SEED = int(os.environ.get("REFQUANT_SEED", "0"))

CASES = [(f.name, label) for f in all_formats() for label, op, with_im in CHECKS
         if (f.can_quantize if op == "quantize" else f.can_dequantize)
         and not (with_im and f.imatrix == IMATRIX_NONE)]


@pytest.fixture(scope="module")
def backend():
    return get_backend(BACKEND)


@pytest.mark.parametrize("fmt, check", CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_conformance(backend, fmt, check):
    report = run(backend if BACKEND != "numpy" else "numpy", max_examples=MAX_EXAMPLES, seed=SEED, formats=[fmt],
                 checks=[check])
    status = report.results.get((fmt, check))
    if status == NOT_CLAIMED:
        pytest.skip(f"backend {BACKEND!r} does not claim {check} of {fmt}: callers get the spec")
    failures = [f for f in report.failures if f.check == check]
    assert status == EXACT, "\n".join(f"{f.message}\n{f.snippet}" for f in failures) or status
