"""The Numba IQ1_S / IQ1_M quantizers against ggml C and the spec, measured in the same run.

    python benchmarks/bench_numba_iq1.py [--rows 256 --cols 4096 --repeat 3 --spec-rows 4]

Quantize of a rows x cols float32 matrix (N(0, 0.02²)) with an importance matrix: ggml's
ggml_quantize_chunk (single-threaded C; ggml_quantize_init's table building done before timing)
against the Numba kernels with numba.set_num_threads(1), best of `repeat`, wall clock and the
process's CPU time; the spec (refquant.quantize) on the first `spec-rows` rows, scaled to the
whole matrix. All three outputs are compared byte for byte. Then the first-call time of the
kernels in a fresh process: with an empty on-disk cache (compile) and with the cache that run
left (cache=True: load).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402

import refquant  # noqa: E402
from refquant_backends.numba.ggml import iquants_iq1  # noqa: E402
from tools.oracles import ggml  # noqa: E402

TYPES = ["IQ1_S", "IQ1_M"]


def best(fn, repeat):
    """(best wall seconds, best CPU seconds, the last result) over `repeat` calls."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - w)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu, out


def first_call_times():
    """(wall, CPU) seconds to import the module and quantize a small matrix with both types in a
    fresh process: (empty cache, warm cache)."""
    code = ("import time, numpy as np; t = time.perf_counter(); c = time.process_time(); "
            "from refquant_backends.numba.ggml import iquants_iq1 as m; "
            "x = np.ones((1, 256), np.float32); m.quantize_iq1_s(x, x[0]); m.quantize_iq1_m(x, x[0]); "
            "print(time.perf_counter() - t, time.process_time() - c)")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d, PYTHONPATH=str(ROOT))
        run = lambda: tuple(float(v) for v in subprocess.run(  # noqa: E731
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
        return run(), run()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--spec-rows", type=int, default=4)
    ap.add_argument("--skip-compile", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    im = (rng.random(a.cols) ** 2).astype(np.float32)
    numba.set_num_threads(1)
    print(f"quantize {a.rows}x{a.cols} float32 with an importance matrix, one thread; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'type':<6} {'ggml ms':>9} {'numba ms':>9} {'ratio':>6} {'(cpu ggml':>10} {'numba':>7} {'ratio)':>7} "
          f"{'spec ms (scaled)':>17} {'spec/numba':>10}")
    for qt in TYPES:
        ggml.quantize(x[:1], qt, im)                       # ggml_quantize_init: its tables
        nbq = iquants_iq1.QUANTIZE[qt]
        nbq(x[:1], im)                                     # compile or load
        gw, gc, g = best(lambda: ggml.quantize(x, qt, im), a.repeat)
        nw, nc, q = best(lambda: nbq(x, im), a.repeat)
        xs = x[:a.spec_rows]
        sw, _, s = best(lambda: refquant.quantize(xs, qt, im), 1)
        assert np.array_equal(q, g), f"{qt}: numba differs from ggml"
        assert np.array_equal(s, g[:a.spec_rows]), f"{qt}: the spec differs from ggml"
        sw *= a.rows / a.spec_rows
        print(f"{qt:<6} {gw * 1e3:9.1f} {nw * 1e3:9.1f} {nw / gw:6.2f} {gc * 1e3:10.1f} {nc * 1e3:7.1f} "
              f"{nc / gc:7.2f} {sw * 1e3:17.0f} {sw / nw:10.0f}")
    if not a.skip_compile:
        cold, warm = first_call_times()
        print(f"first call in a fresh process (import + both types): empty cache {cold[0]:.1f} s "
              f"(CPU {cold[1]:.1f} s), with the cache {warm[0]:.2f} s (CPU {warm[1]:.2f} s)")


if __name__ == "__main__":
    main()
