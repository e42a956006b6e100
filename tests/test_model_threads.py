"""The reference forward's BLAS thread count (refquant/model/threads.py, `--threads`)."""
import os

import pytest

from refquant.cli import build_parser
from refquant.errors import InputError
from refquant.model.threads import blas_threads, default_threads

threadpoolctl = pytest.importorskip("threadpoolctl", reason="the model extra is not installed")


def _blas_threads():
    import numpy as np  # noqa: F401  (loads the BLAS)
    info = threadpoolctl.threadpool_info()
    return {i["num_threads"] for i in info if i["user_api"] == "blas"}


def test_blas_threads_sets_the_limit_and_restores_it():
    before = _blas_threads()
    if not before:
        pytest.skip("NumPy's BLAS is not one threadpoolctl controls")
    with blas_threads(1) as n:
        assert n == 1 and _blas_threads() == {1}
    assert _blas_threads() == before


def test_default_threads_are_the_idle_cores(monkeypatch):
    import refquant.model.threads as T
    monkeypatch.setattr(T, "available_cores", lambda: 8)
    for load, want in ((0.0, 8), (2.4, 6), (2.6, 5), (7.6, 1), (30.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert default_threads() == want, load
    with blas_threads() as m:
        assert m == 1  # the last load above


def test_threads_flag_on_the_forward_commands():
    p = build_parser()
    for argv in (["perplexity", "m.gguf", "--text", "t.txt"], ["imatrix", "m.gguf", "--text", "t.txt", "-o", "o"],
                 ["eval", "m.gguf", "--text", "t.txt"]):
        assert p.parse_args(argv + ["--threads", "3"]).threads == 3
        assert p.parse_args(argv).threads is None
    with pytest.raises(InputError):
        with blas_threads(0):
            pass
