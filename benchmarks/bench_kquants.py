"""refquant (NumPy, vectorised) against ggml's C (ggml_quantize_chunk, one thread) on the
K-quants: quantize and dequantize a 1024 x 4096 float32 matrix, print times and ratios.

    python benchmarks/bench_kquants.py [--rows 1024] [--cols 4096] [--repeat 1] [--types Q4_K,...]

Each refquant result is checked against ggml's bytes (a benchmark of a wrong answer is no use).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tools/

import numpy as np

import refquant
from tools.oracles import ggml

import timing  # benchmarks/timing.py


best_time = timing.best_of


K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--types", default=",".join(K_TYPES))
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    x[7, 123] = 2.5
    im = (rng.random(args.cols) ** 2).astype(np.float32)

    print(f"{args.rows} x {args.cols} float32, best of {args.repeat}; ratio = refquant / ggml (1 thread)")
    print(f"{'type':6} {'op':16} {'ggml s':>9} {'refquant s':>11} {'ratio':>7}  same bytes")
    for qtype in args.types.split(","):
        cases = [("quantize", None)] if qtype == "Q8_K" else [("quantize", None), ("quantize+imatrix", im)]
        for op, imx in cases:
            if qtype == "Q8_K":
                tc, ref = best_time(lambda: ggml.quantize_row_ref(x, qtype), args.repeat)
            else:
                tc, ref = best_time(lambda: ggml.quantize(x, qtype, imx), args.repeat)
            tr, ours = best_time(lambda: refquant.quantize(x, qtype, imatrix=imx), args.repeat)
            print(f"{qtype:6} {op:16} {tc:9.3f} {tr:11.3f} {tr / tc:7.1f}  {np.array_equal(ours, ref)}")
        q = ggml.quantize_row_ref(x, qtype) if qtype == "Q8_K" else ggml.quantize(x, qtype)
        deq = ggml.dequantize_row if qtype == "Q8_K" else ggml.dequantize
        tc, ref = best_time(lambda: deq(q, qtype), args.repeat)
        tr, ours = best_time(lambda: refquant.dequantize(q, qtype), args.repeat)
        same = np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
        print(f"{qtype:6} {'dequantize':16} {tc:9.3f} {tr:11.3f} {tr / tc:7.1f}  {same}")


if __name__ == "__main__":
    main()
