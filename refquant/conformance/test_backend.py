"""The conformance suite as pytest tests, for `pytest --pyargs refquant.conformance`.

The backend comes from the environment, as array-api-tests takes its module:

    REFQUANT_BACKEND=numba pytest --pyargs refquant.conformance
    REFQUANT_BACKEND=mypkg.backend:MyBackend pytest --pyargs refquant.conformance
    REFQUANT_BACKEND=./mybackend.py:MyBackend pytest --pyargs refquant.conformance -n auto

REFQUANT_LEVEL (1 or 2) picks the edge catalog and shape budget, REFQUANT_MAX_EXAMPLES and
REFQUANT_SEED the Hypothesis budget and seed, REFQUANT_FORMATS a comma-separated subset. One
test per (key, path); unclaimed paths are reported as skipped with that reason. The tests are
independent, so pytest-xdist's `-n auto` runs them in parallel. A failure prints the case and a
reproducer that runs as printed.
"""
import os

import pytest

from refquant.backend import get_backend
from refquant.conformance.suite import BOUND, DEFAULT_MAX_EXAMPLES, EXACT, NOT_CLAIMED, plan, run

BACKEND = os.environ.get("REFQUANT_BACKEND", "numpy")
LEVEL = int(os.environ.get("REFQUANT_LEVEL", "1"))
MAX_EXAMPLES = int(os.environ.get("REFQUANT_MAX_EXAMPLES", str(DEFAULT_MAX_EXAMPLES)))
SEED = int(os.environ.get("REFQUANT_SEED", "0"))
FORMATS = [f for f in os.environ.get("REFQUANT_FORMATS", "").split(",") if f] or None

CASES = [(key, p.label) for key, p in plan(formats=FORMATS)]


@pytest.fixture(scope="module")
def backend():
    return get_backend(BACKEND)


@pytest.mark.parametrize("key, path", CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_conformance(backend, key, path):
    if not backend.runs(path, key):
        pytest.skip(f"backend {BACKEND!r} does not claim {path} of {key}: callers get the spec")
    report = run(BACKEND, max_examples=MAX_EXAMPLES, seed=SEED, formats=[key], paths=[path], level=LEVEL)
    status = report.results.get((key, path))
    assert status != NOT_CLAIMED
    if status not in (EXACT, BOUND):
        print(report.matrix())   # the failure and its reproducer, unprefixed under "Captured stdout call"
    assert status in (EXACT, BOUND), "; ".join(f"[{f.case}] {f.message}" for f in report.failures) or status
