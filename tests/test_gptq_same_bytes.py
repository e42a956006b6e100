"""GPTQ's bytes depend on the values of its weight and Hessian (or activations) and on the BLAS
thread count only: not on the memory they come in (alignment, order, a read-only map, a buffer
received from another process), the float type they were converted from, or the thread or
process that runs it (spec/algorithms/gptq.md, "Same input, same bytes"). Every variant is
compared with the same call on fresh C-ordered float32 arrays at the same BLAS thread count
(1 and 2: a BLAS partitions its sums by it, which is why a task runs with the client's count)."""
import hashlib
import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from refquant.algorithms.gptq import gptq, hessian
from refquant.numerics import bf16_bits_to_fp32
from refquant.pipelines.hf_quantize import Source, calibrated_linear, quantize_linear

ROOT = Path(__file__).resolve().parents[1]
BF16 = ml_dtypes.bfloat16


def layer(seed=1, N=128, K=256, n=64):
    """A layer big enough for the BLAS to split its sums by thread, and for XᵀX's syrk and gemm
    to differ: weights exactly representable in bfloat16 and float16, uneven input scales."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((N, K)) * 0.05).astype(BF16).astype(np.float16).astype(np.float32)
    X = (rng.standard_normal((n, K)) * rng.uniform(0.1, 3, K)).astype(np.float32)
    return W, X


def digest(q) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes()
                                   for a in (q.codes, q.scales, q.zeros, q.g_idx))).hexdigest()


def at_offset(a: np.ndarray, off: int) -> np.ndarray:
    """a's bytes `off` bytes past a 64-byte boundary of a bigger buffer."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + off
    b = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    b[...] = a
    return b


def received(a: np.ndarray, off: int) -> np.ndarray:
    """a as pickle protocol 5 rebuilds it from an out-of-band frame at byte `off` of a
    message (as a Dask worker receives an array: read-only, at any address)."""
    if a.dtype == BF16:                   # pickled in band: its bits out of band instead
        return received(a.view(np.uint16), off).view(BF16)
    bufs = []
    data = pickle.dumps(a, protocol=5, buffer_callback=bufs.append)
    msg = bytes(off) + bytes(bufs[0].raw())
    return pickle.loads(data, buffers=[memoryview(msg)[off:]])


def layouts(a: np.ndarray, tmp: Path, name: str):
    """(label, the same values in other memory)."""
    for off in (1, 2, 16, 32, 64):
        yield f"offset {off}", at_offset(a, off)
    ro = a.copy()
    ro.flags.writeable = False
    yield "read-only", ro
    np.save(tmp / f"{name}.npy", a)
    yield "np.load memmap", np.load(tmp / f"{name}.npy", mmap_mode="r")
    yield "Fortran order", np.asfortranarray(a)
    yield "received at byte 49", received(a, 49)
    yield "received at byte 16", received(a, 16)


BLAS = (1, 2)


@pytest.mark.parametrize("blas", BLAS)
def test_layouts_and_dtypes(tmp_path, blas):
    W, X = layer()
    with threadpool_limits(limits=blas, user_api="blas"):
        want = digest(gptq(W, X=X, bits=4, group_size=64))
        H = hessian(X)
        assert digest(gptq(W, H=H, bits=4, group_size=64)) == want
        for label, x in layouts(X, tmp_path, "x"):
            assert hessian(x).tobytes() == H.tobytes(), f"X {label}"
            assert digest(gptq(W, X=x, bits=4, group_size=64)) == want, f"X {label}"
        for label, w in layouts(W, tmp_path, "w"):
            assert digest(gptq(w, X=X, bits=4, group_size=64)) == want, f"W {label}"
        for label, h in layouts(H, tmp_path, "h"):
            assert digest(gptq(W, H=h, bits=4, group_size=64)) == want, f"H {label}"
        # a 16-bit source: bfloat16 widened by ml_dtypes (the pipelines' astype) or by its
        # bits (refquant.numerics); float16 converted before or by gptq itself
        wb = W.astype(BF16)
        for label, w in (("bfloat16 astype", wb.astype(np.float32)),
                         ("bfloat16 bits", bf16_bits_to_fp32(wb.view(np.uint16))),
                         ("float16", W.astype(np.float16)),
                         ("float16 astype", W.astype(np.float16).astype(np.float32))):
            assert digest(gptq(w, X=X, bits=4, group_size=64)) == want, label


@pytest.mark.parametrize("blas", BLAS)
def test_threads_and_a_fresh_process(tmp_path, blas):
    """Runs on threads of a pool at once, and a process that imports refquant afresh (its BLAS
    started on that many threads), give the bytes of one run here; X arrives at an odd address."""
    W, X = layer(seed=2)
    with threadpool_limits(limits=blas, user_api="blas"):
        want = digest(gptq(W, X=X, bits=4, group_size=64))
        with ThreadPoolExecutor(3) as ex:
            got = list(ex.map(lambda i: digest(gptq(W, X=received(X, i), bits=4, group_size=64)), range(6)))
    assert got == [want] * 6
    np.save(tmp_path / "w.npy", W)
    np.save(tmp_path / "x.npy", X)
    code = ("import sys, numpy as np, test_gptq_same_bytes as t; from refquant.algorithms.gptq import gptq; "
            "print(t.digest(gptq(np.load(sys.argv[1]), X=t.received(np.load(sys.argv[2]), 49), bits=4, "
            "group_size=64)))")
    path = [str(ROOT), str(ROOT / "tests")] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.npy"), str(tmp_path / "x.npy")],
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(path), OPENBLAS_NUM_THREADS=str(blas)),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == want


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_pipeline_tasks(tmp_path, fmt):
    """A GPTQ layer's task (quantize_linear: its bfloat16 weight read from a safetensors file by
    offset, or handed over in memory; its activations mapped from .npy or received at an odd
    address; and calibrated_linear on the Hessian) gives the same tensors every way, at the BLAS
    thread count the task is given (the client's)."""
    from refquant.io.safetensors import Checkpoint, save_checkpoint
    W, X = layer(seed=3)
    module = "model.layers.0.mlp.up_proj"
    save_checkpoint(tmp_path / "ck", {f"{module}.weight": W.astype(BF16)},
                    extra_files={"config.json": json.dumps({"model_type": "llama"})})
    np.save(tmp_path / "x.npy", X)
    src = Source.of(Checkpoint(tmp_path / "ck"), f"{module}.weight")

    def tensors(t):
        return {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in t.items()}
    for blas in BLAS:
        job = dict(module=module, fmt=fmt, method="gptq", bits=4, group_size=64, sym=True, scheme=None,
                   xa=None, w_amax=None, x_amax=None, blas=blas)
        want = tensors(quantize_linear(dict(job, w=W.astype(BF16), x=X)))
        for label, w in (("read by offset", src), ("received", received(W.astype(BF16), 49))):
            for xl, x in (("mapped", np.load(tmp_path / "x.npy", mmap_mode="r")), ("received", received(X, 49))):
                assert tensors(quantize_linear(dict(job, w=w, x=x))) == want, (label, xl, blas)
        with threadpool_limits(limits=blas, user_api="blas"):       # the client's H, at its count
            H = hessian(X)
        t, _ = calibrated_linear(dict(job, w=W, dtype=BF16, h=received(H, 49)))
        assert tensors(t) == want


def test_tasks_on_concurrent_threads():
    """A Runner's thread workers (or a Dask worker of several threads) run GPTQ tasks at once,
    each with its client's BLAS count (blas_like), a count the process shares: every task's
    bytes are those of its count, tasks of 1 and 2 threads mixed, and the process's own count
    is back after."""
    from refquant.pipelines.scale import current_blas_threads
    W, X = layer(seed=4)
    own = current_blas_threads()

    def run(blas):
        job = dict(module="m", w=W, x=X, fmt="compressed-tensors", method="gptq", bits=4, group_size=64, sym=True,
                   scheme=None, xa=None, w_amax=None, x_amax=None, blas=blas)
        return {k: a.tobytes() for k, a in quantize_linear(job).items()}
    want = {blas: run(blas) for blas in BLAS}
    assert want[1] != want[2]                 # the count is a parameter of the bytes (else no test)
    counts = [1, 1, 1, 2, 2, 1, 2, 2, 1, 1, 2, 1]
    with ThreadPoolExecutor(3) as ex:
        got = list(ex.map(run, counts))
    assert [g == want[b] for g, b in zip(got, counts)] == [True] * len(counts)
    assert current_blas_threads() == own
