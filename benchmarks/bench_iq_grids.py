"""Speed of refquant's lattice IQ quantizers and dequantizers against ggml's C (ggml-python),
on the same 256x4096 gaussian matrix in the same run. Prints times and ratios (refquant time /
ggml time: above 1 is slower).

    python benchmarks/bench_iq_grids.py [--rows 256] [--cols 4096] [--types IQ2_XXS,IQ3_S] [--repeat 1]

Each type is quantized with an importance matrix (three of them require one). ggml's one-time
table set-up (ggml_quantize_init, several seconds for the 2-bit grids) and refquant's (building
the neighbour lists, about a second) are done before timing and reported separately.
ggml_quantize_chunk and to_float run on one thread; NumPy is single-threaded for this work.
Times are process CPU time (time.process_time), so that other load on a shared machine does
not skew the ratio; both sides run in this one process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tools/

import numpy as np

import refquant
from refquant.ggml import grids
from tools.oracles import ggml

import timing  # benchmarks/timing.py


def best_of(fn, repeat):
    return timing.best_of(fn, repeat, clock=time.process_time)[0]  # CPU time of this process


TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
LATTICE = {"IQ2_XXS": "iq2xxs", "IQ2_XS": "iq2xs", "IQ2_S": "iq2s", "IQ3_XXS": "iq3xxs",
           "IQ3_S": "iq3s", "IQ1_S": "iq1s", "IQ1_M": "iq1s"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    im = rng.random(args.cols).astype(np.float32)
    names = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    print(f"matrix {args.rows}x{args.cols} float32, with imatrix, best of {args.repeat}; CPU seconds")
    print(f"{'type':<8} {'init ours':>9} {'init ggml':>9} | {'quantize ours':>13} {'ggml':>8} {'ratio':>7}"
          f" | {'dequantize ours':>15} {'ggml':>8} {'ratio':>7}")
    for name in names:
        t0 = time.process_time()
        grids.lattice(LATTICE[name])
        init_ours = time.process_time() - t0
        t0 = time.process_time()
        ggml.quantize(x[:1], name, im)              # ggml_quantize_init(type) happens here
        init_ggml = time.process_time() - t0
        q = refquant.quantize(x, name, im)
        assert np.array_equal(q, ggml.quantize(x, name, im)), f"{name}: refquant and ggml disagree"
        qo = best_of(lambda: refquant.quantize(x, name, im), args.repeat)
        qg = best_of(lambda: ggml.quantize(x, name, im), args.repeat)
        do = best_of(lambda: refquant.dequantize(q, name), args.repeat)
        dg = best_of(lambda: ggml.dequantize(q, name), args.repeat)
        print(f"{name:<8} {init_ours:>9.2f} {init_ggml:>9.2f} | {qo:>13.3f} {qg:>8.3f} {qo / qg:>7.1f}"
              f" | {do:>15.4f} {dg:>8.4f} {do / dg:>7.1f}")


if __name__ == "__main__":
    main()
