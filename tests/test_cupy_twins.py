"""The CuPy backend's twin modules, read without CuPy or a GPU: what each declares is what its
tables hold."""
from refquant_backends.cupy import CupyBackend


def test_declared_claims_are_the_twin_modules_tables():
    assert set(CupyBackend.modules()) == {"ggml.legacy", "ggml.kquants", "ggml.iquants", "ggml.fp4", "gemm"}
    assert set(CupyBackend.declarations()) == set(CupyBackend.modules())
    assert CupyBackend.declared() == CupyBackend.loaded()
