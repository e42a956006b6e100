import os

import pytest
from hypothesis import HealthCheck, settings

# Both profiles are seeded (derandomize): the same run finds the same examples.
settings.register_profile("quick", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=2000, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


@pytest.fixture(scope="session")
def ggml():
    """The ggml oracle (ggml-python's build of ggml). Installed by `make test`."""
    from tools.oracles import ggml as oracle
    oracle.lib()
    return oracle


# The command line's default is every core (a local Dask cluster per quantize); the tests run
# in this process unless they ask for workers (tests/test_scale.py tests the default itself).
os.environ.setdefault("REFQUANT_WORKERS", "1")
