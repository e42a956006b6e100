"""The Numba backend against ggml C, measured in the same run.

    python benchmarks/bench_numba.py [--rows 1024 --cols 4096 --repeat 5] [--types Q4_K,IQ4_XS]
                                     [--ops quantize,dequantize] [--skip-extras]
    python benchmarks/bench_numba.py --kernels [--repeat 7] [--types ...]    # `make bench-kernels`

* quantize / dequantize of a 1024x4096 float32 matrix for every type the backend claims (the
  issue's targets Q4_0, Q8_0, Q4_K, Q6_K, IQ4_XS first), one thread each: ggml's
  ggml_quantize_chunk / to_float (single-threaded C) against the backend's public API as users
  call it (`get_backend("numba").quantize(x, type)`: input checks, dispatch and kernel) with
  numba.set_num_threads(1); medians of --repeat calls; then the same on every core (prange over rows) and the
  speed-up (wall time, one thread against all). Ratio = Numba time / ggml time (below 1: Numba
  is faster), by the wall clock and by the process's CPU time (on a loaded host the wall clock
  also counts waiting for a core); the load average is printed before and after.
* --kernels: the kernel table alone (a couple of minutes on an idle 2-core host): per type,
  quantize and dequantize, ggml's C on one thread, the backend's public API on one thread and
  on two (numba.set_num_threads; one- and two-thread calls alternate, so that a burst of the
  host's load meets both), each timed by the wall clock and by the process's CPU time in
  the same calls (median of --repeat), the ratio ours / ggml on one thread (CPU and wall) and
  the two-thread speed-up (one-thread wall / two-thread wall). "est. idle": the speed-up an
  idle host would give if the work is split as it was here, one-thread CPU time over the
  calling thread's CPU time on two threads (its serial part and its share of the parallel
  loop; a thread waiting for the other sleeps, OMP_WAIT_POLICY=PASSIVE): an estimate that the
  load does not distort, not a measurement. The targets (issue 18): ratio
  <= 1.0 on one thread, speed-up >= 1.7 for a kernel whose one-thread call takes over 1 ms; the
  last column names what a row misses. The load average is printed before, every few rows,
  and after: only an idle host's speed-ups mean anything.
* batch-1 W4A16 matmul (N = K = 4096, groups of 128, act-order g_idx) in GB/s of the bytes one
  call actually reads and writes (the weight as the backend prepares it once: codes packed two
  per byte, fp32 scales, uint8 zeros; the activation; the output), against the machine's copy
  bandwidth measured here (bytes read + written per second by numpy.copyto of a 256 MiB
  buffer). Also printed: the same time over refquant.gemm's layout (codes 1 B/weight).
* a new user's first call in a fresh process (Q4_0 and Q4_K quantize through the public API,
  which imports only that type's twin module): with an empty on-disk cache (compile), and again
  with the cache that run left (cache=True: load; what `make install` leaves, see
  backends/numba/warm.py).
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

from refquant_backends.numba import NumbaBackend  # noqa: E402
from refquant_backends.numba.gemm import w4a16_bytes  # noqa: E402
from refquant import gemm  # noqa: E402
from tools.oracles import ggml  # noqa: E402

# The targets first (within 1.25x of ggml C single-threaded), then the rest.
TARGETS = ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS"]
TYPES = TARGETS + ["Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "Q8_K", "IQ4_NL", "TQ1_0", "TQ2_0",
                   "MXFP4", "NVFP4", "F16", "BF16"]


def ggml_fns(qt):
    """ggml's quantize (ggml_quantize_chunk; Q8_K, which has none, its quantize_row_q8_K_ref) and
    to_float (Q8_K: dequantize_row_q8_K)."""
    if qt == "Q8_K":
        return (lambda x: ggml.quantize_row_ref(x, qt)), (lambda q: ggml.dequantize_row(q, qt))
    if qt == "Q8_1":   # ggml has a quantize_row_q8_1_ref and no dequantizer of Q8_1 at all
        return (lambda x: ggml.quantize_row_ref(x, qt)), None
    return (lambda x: ggml.quantize(x, qt)), (lambda q: ggml.dequantize(q, qt))


def best(fn, repeat, clock=time.perf_counter):
    """The median of `repeat` timed calls, after one untimed call (compile or cache load, first
    touch of memory). The median rather than the best: on a shared host a lucky minimum says
    little."""
    fn()
    ts = []
    for _ in range(repeat):
        t = clock()
        fn()
        ts.append(clock() - t)
    return float(np.median(ts))


def best2(fn, repeat):
    """Median wall time and median CPU time of this process (time.process_time: all its
    threads). On a loaded host the wall clock also counts the time the process waited for a core;
    with one thread the CPU time does not, so both are reported."""
    return best(fn, repeat), best(fn, repeat, time.process_time)


def timed(fn, repeat, main=False):
    """(median wall s, median CPU s) over `repeat` calls after one untimed call, both clocks read
    around the same calls (CPU: time.process_time, every thread of the process); with main, also
    the median CPU time of the calling thread alone (time.thread_time)."""
    fn()
    walls, cpus, mains = [], [], []
    for _ in range(repeat):
        m, c, t = time.thread_time(), time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        mains.append(time.thread_time() - m)
    out = (float(np.median(walls)), float(np.median(cpus)))
    return out + (float(np.median(mains)),) if main else out


def timed_threads(fn, repeat, threads):
    """timed(fn) on one thread and on `threads` (with main=True), the calls alternating one and
    `threads` so that a burst of the shared host's load meets both sides of the speed-up alike
    (timing one side's calls and then the other's let a burst land on one side only)."""
    fns = [(1, fn), (threads, fn)]
    for n, f in fns:
        numba.set_num_threads(n)
        f()
    walls, cpus, mains = ([], []), ([], []), ([], [])
    for _ in range(repeat):
        for i, (n, f) in enumerate(fns):
            numba.set_num_threads(n)
            m, c, t = time.thread_time(), time.process_time(), time.perf_counter()
            f()
            walls[i].append(time.perf_counter() - t)
            cpus[i].append(time.process_time() - c)
            mains[i].append(time.thread_time() - m)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    med = lambda v: float(np.median(v))  # noqa: E731
    return (med(walls[0]), med(cpus[0])), (med(walls[1]), med(cpus[1]), med(mains[1]))


# The kernel table's types: legacy, K and IQ4 (issue 18's targets), then the others it states.
KERNEL_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
                "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "F16", "BF16"]


def kernel_table(nb, x, types, repeat, threads=2):
    """The per-kernel table: see the module's docstring (--kernels)."""
    print(f"{'op':<11}{'type':<7}{'C 1T ms':>9}{'ours 1T':>9}{'ratio':>7}{'wall ratio':>11}"
          f"{'ours ' + str(threads) + 'T':>9}{'2T cpu':>8}{'speed-up':>9}{'est.':>6}  {'misses':<}")
    print(f"{'':18}{'(cpu)':>9}{'(cpu)':>9}{'(cpu)':>7}{'':>11}{'(wall)':>9}{'ms':>8}{'(wall)':>9}{'idle':>6}")
    missed = []
    for i, qt in enumerate(types):
        if i and i % 5 == 0:
            print(f"  ... {load()}", flush=True)
        cq, cdq = ggml_fns(qt)
        q = cq(x)
        assert (nb.quantize(x, qt) == q).all(), f"{qt}: not ggml's bytes"
        if cdq is not None:
            assert (nb.dequantize(q, qt).view(np.uint32) == cdq(q).view(np.uint32)).all(), f"{qt}: not ggml's floats"
        for op, c_fn, nb_fn in [("quantize", lambda: cq(x), lambda: nb.quantize(x, qt)),
                                ("dequantize", cdq and (lambda: cdq(q)), lambda: nb.dequantize(q, qt))]:
            if c_fn is None:
                print(f"{op:<11}{qt:<7}  (ggml has no {op} of {qt} to compare with)")
                continue
            numba.set_num_threads(1)
            tc, cc = timed(c_fn, repeat)
            (t1, c1), (t2, c2, m2) = timed_threads(nb_fn, repeat, threads)
            miss = []
            if c1 / cc > 1.0:
                miss.append("ratio")
            if t1 > 1e-3 and t1 / t2 < 1.7:
                miss.append("speed-up")
            if miss:
                missed.append(f"{op} {qt} ({', '.join(miss)})")
            print(f"{op:<11}{qt:<7}{cc * 1e3:9.2f}{c1 * 1e3:9.2f}{c1 / cc:7.2f}{t1 / tc:11.2f}"
                  f"{t2 * 1e3:9.2f}{c2 * 1e3:8.2f}{t1 / t2:9.2f}{c1 / m2:6.2f}  {' '.join(miss)}", flush=True)
    print(f"after the table: {load()}")
    print("missed: " + ("; ".join(missed) if missed else "none"))


def load():
    return "load average " + " / ".join(f"{v:.1f}" for v in os.getloadavg()) + f" (1/5/15 min) on {os.cpu_count()} cores"


def copy_bandwidth(repeat):
    src = np.ones(256 * 2**20, np.uint8)
    dst = np.empty_like(src)
    t = best(lambda: np.copyto(dst, src), repeat)
    return 2 * src.nbytes / t / 1e9


@numba.njit(parallel=True, cache=True)
def _parallel_copy(dst, src, nchunks):
    n = src.shape[0]
    step = (n + nchunks - 1) // nchunks
    for c in numba.prange(nchunks):
        lo = c * step
        dst[lo:min(n, lo + step)] = src[lo:min(n, lo + step)]


def copy_bandwidth_threads(repeat, threads):
    """The same copy cut into one chunk per thread, on `threads` threads (Numba prange)."""
    numba.set_num_threads(threads)
    src = np.ones(256 * 2**20, np.uint8)
    dst = np.empty_like(src)
    t = best(lambda: _parallel_copy(dst, src, threads), repeat)
    return 2 * src.nbytes / t / 1e9


def compile_times(qtype="Q4_0"):
    """A new user's first call, `get_backend("numba").quantize(x, qtype)` in a fresh process: with an
    empty on-disk cache (compiles the kernels of that type's twin module it calls), then again
    with the cache that run left (loads them). (wall s, CPU s) each, CPU from the child's rusage."""
    code = (f"import numpy as np, refquant; "
            f"refquant.get_backend('refquant_backends.numba:NumbaBackend').quantize(np.ones((4, 256), np.float32), {qtype!r})")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d, PYTHONPATH=str(ROOT))

        def run():
            t = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
            _, status, ru = os.wait4(p.pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            return time.perf_counter() - t, ru.ru_utime + ru.ru_stime
        return run(), run()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated ggml type names")
    ap.add_argument("--ops", default="quantize,dequantize", help="quantize, dequantize or both")
    ap.add_argument("--skip-extras", action="store_true", help="only the quantize/dequantize table")
    ap.add_argument("--kernels", action="store_true",
                    help="only the kernel table: ggml 1T, ours 1T and 2T, CPU and wall (make bench-kernels)")
    args = ap.parse_args()
    nb = NumbaBackend()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    ncores = numba.config.NUMBA_NUM_THREADS
    nb.dequantize(ggml.quantize(x[:1], "Q8_0"), "Q8_0")  # starts the threading layer
    print(f"matrix {args.rows}x{args.cols} float32; numba {numba.__version__}, {ncores} threads available, "
          f"threading layer {numba.threading_layer()}; median of {args.repeat} (1 thread) / "
          f"{4 * args.repeat} ({ncores} threads); {load()}")
    if args.kernels:
        types = KERNEL_TYPES if args.types == ",".join(TYPES) else args.types.split(",")
        print(f"kernel table: median of {args.repeat} calls per cell (after one untimed call), "
              f"ratio = ours / ggml C, both on one thread")
        kernel_table(nb, x, types, args.repeat, threads=min(2, ncores))
        return
    print(f"{'op':<11}{'type':<7}{'ggml C 1T ms':>13}{'numba 1T ms':>12}{'ratio':>7}"
          f"{'C cpu ms':>10}{'nb cpu ms':>10}{'ratio':>7}{'numba ' + str(ncores) + 'T ms':>14}{'speed-up':>9}")
    for qt in args.types.split(","):
        cq, cdq = ggml_fns(qt)
        q = cq(x)
        assert (nb.quantize(x, qt) == q).all(), f"{qt}: not ggml's bytes"
        # the public API, as users call it: input checks, the backend's dispatch, the kernel
        for op, c_fn, nb_fn in [("quantize", lambda: cq(x), lambda: nb.quantize(x, qt)),
                                ("dequantize", lambda: cdq(q), lambda: nb.dequantize(q, qt))]:
            if op not in args.ops.split(","):
                continue
            numba.set_num_threads(1)
            tc, cc = best2(c_fn, args.repeat)
            t1, c1 = best2(nb_fn, args.repeat)
            numba.set_num_threads(ncores)
            tn = best(nb_fn, 4 * args.repeat)  # more tries: a busy host delays a thread's wake-up
            print(f"{op:<11}{qt:<7}{tc * 1e3:13.2f}{t1 * 1e3:12.2f}{t1 / tc:7.2f}"
                  f"{cc * 1e3:10.2f}{c1 * 1e3:10.2f}{c1 / cc:7.2f}{tn * 1e3:14.2f}{t1 / tn:9.2f}", flush=True)
    print(f"after the table: {load()}")

    if args.skip_extras:
        return

    # batch-1 W4A16
    N = K = 4096
    G = 128
    W = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
    g_idx = rng.permutation(np.arange(K) // G).astype(np.int32)
    w = gemm.quantize_w4a16(W, G, g_idx)
    # W4A16's activations are float16 (or bfloat16): the kernel's fused path. A float32 row with
    # full 24-bit significands takes its unfused path, timed on one thread as well.
    a = rng.standard_normal((1, K)).astype(np.float16).astype(np.float32)
    a32 = rng.standard_normal((1, K)).astype(np.float32)
    mm = nb._t["matmul"]["W4A16"]
    nbytes = w4a16_bytes(w) + a.nbytes + 4 * N          # prepared weight, activation, output
    spec_bytes = w.codes.nbytes + w.scales.nbytes + w.zeros.nbytes + a.nbytes
    bw1 = copy_bandwidth(args.repeat)
    bwn = copy_bandwidth_threads(args.repeat, ncores)
    print(f"\ncopy bandwidth (read + write): {bw1:.1f} GB/s one thread (numpy.copyto), "
          f"{bwn:.1f} GB/s on {ncores} threads (prange, one chunk each)")
    for label, x, threads in (("float16 activations", a, 1), ("float16 activations", a, ncores),
                              ("float32 activations", a32, 1)):
        numba.set_num_threads(threads)
        t = best(lambda: mm(x, w), args.repeat if threads == 1 else 4 * args.repeat)
        gbs = nbytes / t / 1e9
        bw = bw1 if threads == 1 else bwn
        print(f"W4A16 batch-1 N=K={K} G={G} act-order, {label}, {threads} thread(s): {t * 1e3:.2f} ms, "
              f"{gbs:.1f} GB/s read+written ({nbytes / 1e6:.1f} MB a call) = {gbs / bw:.2f} of copy "
              f"bandwidth; over the 1 B/code layout ({spec_bytes / 1e6:.1f} MB) {spec_bytes / t / 1e9:.1f} GB/s")
    numba.set_num_threads(ncores)

    for qt in ("Q4_0", "Q4_K"):
        (cw, cc), (ww, wc) = compile_times(qt)
        print(f"\nfirst call of {qt} quantize in a fresh process: {cw:.1f} s wall / {cc:.1f} s CPU with an empty cache "
              f"(compile), {ww:.1f} s / {wc:.1f} s with the cache it left (load); {load()}")


if __name__ == "__main__":
    main()
