"""Speed of the NumPy spec against ggml's C, measured in the same run, for IQ4_NL, IQ4_XS,
TQ1_0, TQ2_0, Q1_0, MXFP4 and NVFP4.

One 1024 x 4096 float32 matrix (normal weights, scale 0.02); ggml runs single-threaded
(`ggml_quantize_chunk` and the type's `to_float`, as tools.oracles.ggml calls them). Each
figure is the best of `--repeat` runs; the ratio is spec time / ggml time (higher = slower).
The output is checked bit-exact against ggml before it is timed.

    python benchmarks/bench_iq_simple.py [--rows 1024] [--cols 4096] [--repeat 3] [--imatrix]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import refquant  # noqa: E402
from tools.oracles import ggml  # noqa: E402

import timing  # benchmarks/timing.py


best_of = timing.best_of


TYPES = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "Q1_0", "MXFP4", "NVFP4"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--imatrix", action="store_true", help="quantize with an importance matrix")
    ap.add_argument("--types", nargs="*", default=TYPES)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    im = rng.random(args.cols).astype(np.float32) if args.imatrix else None
    print(f"{args.rows} x {args.cols} float32, ggml single-threaded, best of {args.repeat}"
          f"{', with imatrix' if im is not None else ''}")
    print(f"{'type':8} {'quant spec':>11} {'quant ggml':>11} {'ratio':>7}   "
          f"{'deq spec':>9} {'deq ggml':>9} {'ratio':>7}")
    for t in args.types:
        tq_ref, q_ref = best_of(lambda: ggml.quantize(x, t, im), args.repeat)
        tq, q = best_of(lambda: refquant.quantize(x, t, imatrix=im), args.repeat)
        if not np.array_equal(q, q_ref):
            raise SystemExit(f"{t}: quantized bytes differ from ggml")
        td_ref, d_ref = best_of(lambda: ggml.dequantize(q_ref, t), args.repeat)
        td, d = best_of(lambda: refquant.dequantize(q_ref, t), args.repeat)
        if not np.array_equal(d.view(np.uint32), d_ref.view(np.uint32)):
            raise SystemExit(f"{t}: dequantized values differ from ggml")
        print(f"{t:8} {tq * 1e3:9.1f}ms {tq_ref * 1e3:9.1f}ms {tq / tq_ref:6.1f}x   "
              f"{td * 1e3:7.1f}ms {td_ref * 1e3:7.1f}ms {td / td_ref:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
