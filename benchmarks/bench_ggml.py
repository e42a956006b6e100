"""Speed of refquant's spec against ggml's C (ggml-python) and gguf-py, on the same matrix, in
the same run. Prints times and ratios (refquant time / peer time: above 1 is slower).

    python benchmarks/bench_ggml.py [--rows 1024] [--cols 4096] [--types Q4_0,Q8_0] [--repeat 3]

ggml_quantize_chunk and to_float run on one thread; NumPy is single-threaded for this work.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tools/

import numpy as np

import refquant
from tools.oracles import ggml

try:
    import gguf.quants as gguf_quants
except ImportError:  # pragma: no cover
    gguf_quants = None

import timing  # benchmarks/timing.py


def best_of(fn, repeat):
    return timing.best_of(fn, repeat)[0]


def gguf_py(op, x, name):
    if gguf_quants is None:
        return None
    t = gguf_quants.GGMLQuantizationType[name]
    try:
        fn = (lambda: gguf_quants.quantize(x, t)) if op == "quantize" else (lambda: gguf_quants.dequantize(x, t))
        fn()
        return fn
    except (NotImplementedError, KeyError, ValueError, AssertionError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--types", default="")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--imatrix", action="store_true", help="quantize with an importance matrix")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    im = rng.random(args.cols).astype(np.float32) if args.imatrix else None
    names = ([t.strip().upper() for t in args.types.split(",") if t.strip()] or
             [r["name"] for r in refquant.formats() if r["quantize"] and r["ggml_type"] is not None
              and r["name"] not in ("F32", "Q8_1", "Q8_K") and args.cols % r["block_size"] == 0])
    mb = x.nbytes / 1e6
    print(f"matrix {args.rows}x{args.cols} float32 ({mb:.0f} MB), best of {args.repeat}"
          f"{', with imatrix' if im is not None else ''}")
    print(f"{'type':<8} {'op':<10} {'refquant s':>11} {'ggml C s':>9} {'ratio':>7} {'gguf-py s':>10} {'ratio':>7}")
    for name in names:
        rec = refquant.get_format(name)
        imx = im if rec.imatrix != "none" else None
        if rec.needs_imatrix and imx is None:
            imx = np.ones(args.cols, np.float32)
        q = refquant.quantize(x, name, imx)
        for op in ("quantize", "dequantize"):
            if op == "quantize":
                ours = best_of(lambda: refquant.quantize(x, name, imx), args.repeat)
                theirs = best_of(lambda: ggml.quantize(x, name, imx), args.repeat)
                g = gguf_py("quantize", x, name) if imx is None else None
            else:
                ours = best_of(lambda: refquant.dequantize(q, name), args.repeat)
                theirs = best_of(lambda: ggml.dequantize(q, name), args.repeat)
                g = gguf_py("dequantize", q, name)
            gt = best_of(g, args.repeat) if g else None
            gcol = f"{gt:>10.4f} {ours / gt:>7.2f}" if gt else f"{'-':>10} {'-':>7}"
            print(f"{name:<8} {op:<10} {ours:>11.4f} {theirs:>9.4f} {ours / theirs:>7.2f} {gcol}")


if __name__ == "__main__":
    main()
