"""refquant.bnb against bitsandbytes' CPU path, timed in the same run.

    python benchmarks/bench_bnb.py [--rows 2048] [--cols 2048] [--repeat 3]

Prints, per operation, the best-of-N wall time of each and the ratio refquant / bitsandbytes
(> 1: refquant is slower). refquant is the readable NumPy specification, not a fast path;
the ratio says what checking against it costs. Results are also checked for equality.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402


def best(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import torch
    import bitsandbytes.functional as F
    from refquant.bnb import blockwise as rbw
    from refquant.bnb import int8 as ri8

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float16)
    a = rng.standard_normal((16, args.cols)).astype(np.float16)
    tw = torch.from_numpy(w)
    threads = torch.get_num_threads()
    kernel = rbw.bnb_cpu_dequantize_4bit_kernel(w.shape, 64, torch.backends.cpu.get_cpu_capability() == "AVX512")

    rows = []

    def bench(name, ours, theirs, same):
        t_ours, r_ours = best(ours, args.repeat)
        t_theirs, r_theirs = best(theirs, args.repeat)
        ok = same(r_ours, r_theirs)
        rows.append((name, t_ours, t_theirs, t_ours / t_theirs, ok))

    eq = lambda x, y: np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))  # noqa: E731

    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            tag = f"quantize_4bit {qt}{' +DQ' if dq else ''}"
            bench(tag, lambda: rbw.quantize_4bit(w, 64, qt, dq, num_threads=threads)[0],
                  lambda: F.quantize_4bit(tw, blocksize=64, quant_type=qt, compress_statistics=dq)[0].numpy(), eq)
    packed, state = rbw.quantize_4bit(w, 64, "nf4", True, num_threads=threads)
    tp, ts = F.quantize_4bit(tw, blocksize=64, quant_type="nf4", compress_statistics=True)
    bench("dequantize_4bit nf4 +DQ", lambda: rbw.dequantize_4bit(packed, state, kernel=kernel, bf16_daz=bool(F.has_avx512bf16())),
          lambda: F.dequantize_4bit(tp, ts).numpy(), eq)
    bench("quantize_blockwise 4096", lambda: rbw.quantize_blockwise(w, blocksize=4096)[0],
          lambda: F.quantize_blockwise(tw, blocksize=4096)[0].numpy(), eq)
    q8, s8 = rbw.quantize_blockwise(w, blocksize=4096)
    tq8, ts8 = F.quantize_blockwise(tw, blocksize=4096)
    bench("dequantize_blockwise 4096", lambda: rbw.dequantize_blockwise(q8, s8),
          lambda: F.dequantize_blockwise(tq8, ts8).numpy(), eq)
    bench("int8_vectorwise_quant", lambda: ri8.int8_vectorwise_quant(w)[0],
          lambda: F.int8_vectorwise_quant(tw)[0].numpy(), eq)
    ca, sa, _ = ri8.int8_vectorwise_quant(a)
    cb, sb, _ = ri8.int8_vectorwise_quant(w)
    tca, tsa, tcb, tsb = (torch.from_numpy(v) for v in (ca, sa, cb, sb))
    bench("int8 matmul + mm_dequant (16 rows)",
          lambda: ri8.int8_mm_dequant(ri8.int8_linear_matmul(ca, cb), sa, sb),
          lambda: torch.ops.bitsandbytes.int8_scaled_mm(tca, tcb, tsa, tsb, dtype=torch.float16).numpy(), eq)

    print(f"refquant.bnb vs bitsandbytes (CPU, {torch.backends.cpu.get_cpu_capability()}, {threads} threads), "
          f"weight {args.rows}x{args.cols} float16, best of {args.repeat}")
    print(f"{'operation':38s} {'refquant s':>11s} {'bnb s':>9s} {'ratio':>7s}  equal")
    for name, to, tt, r, ok in rows:
        print(f"{name:38s} {to:11.4f} {tt:9.4f} {r:7.1f}  {'yes' if ok else 'NO'}")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
