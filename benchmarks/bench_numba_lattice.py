"""The Numba backend's lattice IQ quantizers against ggml C and the spec, in the same run.

    python benchmarks/bench_numba_lattice.py [--rows 256 --cols 4096 --spec-rows 4 --repeat 3]
                                             [--types IQ2_XXS,IQ3_S] [--skip-compile]

* quantize of a rows x cols float32 matrix (N(0, 0.02²)) with an importance matrix (three of
  the types require one), and without one for the types where it is optional: the Numba kernels
  with numba.set_num_threads(1) against ggml's ggml_quantize_chunk (single-threaded C) and the
  spec (refquant's NumPy backend), the spec on the first --spec-rows rows only, its time scaled
  to the whole matrix (its cost is linear in the rows). Every output is compared: the Numba
  bytes with ggml's on the whole matrix and with the spec's on the slice.
* times are process CPU time (time.process_time), best of --repeat: the three run in this one
  process, so other load on a shared machine does not tilt the ratios. One-time set-up is done
  before timing (ggml_quantize_init, the spec's neighbour lists, Numba's compile or cache load).
* first-call times in a fresh process: quantize of each type with an empty Numba cache
  (compile), then again with the cache that run left (cache=True: load). The first type
  compiles the shared search kernel; the others add their packing kernel.
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
from refquant_backends.numba.ggml import iquants_grid  # noqa: E402
from tools.oracles import ggml  # noqa: E402

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]


def cpu_best(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def first_calls(types, cache_dir):
    """Wall and CPU seconds of the first quantize call of each type in a fresh process."""
    code = ("import time, numpy as np\n"
            "t0, c0 = time.perf_counter(), time.process_time()\n"
            "from refquant_backends.numba.ggml import iquants_grid as g\n"
            "print('import', time.perf_counter() - t0, time.process_time() - c0)\n"
            "x = (np.random.default_rng(0).standard_normal((2, 256)) * 0.02).astype(np.float32)\n"
            "im = np.ones(256, np.float32)\n"
            f"for t in {list(types)!r}:\n"
            "    t0, c0 = time.perf_counter(), time.process_time()\n"
            "    g.QUANTIZE[t](x, im)\n"
            "    print(t, time.perf_counter() - t0, time.process_time() - c0)\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return {ln.split()[0]: (float(ln.split()[1]), float(ln.split()[2])) for ln in out.splitlines()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--spec-rows", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args(argv)
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    im = rng.random(args.cols).astype(np.float32)
    xs = x[:args.spec_rows]
    scale = args.rows / args.spec_rows
    names = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    print(f"quantize {args.rows}x{args.cols} float32, CPU seconds, best of {args.repeat}; spec on "
          f"{args.spec_rows} rows, x{scale:g}; numba {numba.__version__}, 1 thread; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'type':<8} {'imatrix':<7} {'numba':>8} {'ggml':>8} {'spec':>9} | {'numba/ggml':>10} {'spec/numba':>10}")
    for name in names:
        fn = iquants_grid.QUANTIZE[name]
        for m in ((im,) if refquant.get_format(name).needs_imatrix else (im, None)):
            fn(x[:1], m)                     # compile or load
            ggml.quantize(x[:1], name, m)     # ggml_quantize_init
            refquant.quantize(x[:1], name, m)  # the spec's neighbour lists
            ours = fn(x, m)
            assert np.array_equal(ours, ggml.quantize(x, name, m)), f"{name}: numba and ggml disagree"
            assert np.array_equal(ours[:args.spec_rows], refquant.quantize(xs, name, m)), f"{name}: numba and spec"
            tn = cpu_best(lambda: fn(x, m), args.repeat)
            tg = cpu_best(lambda: ggml.quantize(x, name, m), args.repeat)
            ts = cpu_best(lambda: refquant.quantize(xs, name, m), 1) * scale
            print(f"{name:<8} {'yes' if m is not None else 'no':<7} {tn:>8.3f} {tg:>8.3f} {ts:>9.1f} | "
                  f"{tn / tg:>10.2f} {ts / tn:>10.0f}", flush=True)
    if args.skip_compile:
        return
    with tempfile.TemporaryDirectory() as d:
        cold = first_calls(names, d)
        warm = first_calls(names, d)
    print("\nfirst call in a fresh process (wall s / CPU s): empty cache (compile) | cache=True (load)")
    for k in cold:
        print(f"{k:<8} {cold[k][0]:>7.1f} / {cold[k][1]:>6.1f} | {warm[k][0]:>6.2f} / {warm[k][1]:>5.2f}")


if __name__ == "__main__":
    main()
