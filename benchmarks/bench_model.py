"""Speed and memory of the NumPy forward: tokens per second over one 512-token context, and the
process's peak resident memory, for SmolLM2-135M (Q4_1) and Gemma-3-270M (Q4_K_M); llama.cpp's
time for the same context is measured in the same run when llama-cpp-python is installed.

    python benchmarks/bench_model.py [--ctx 512] [--models smollm2,gemma3] [--llamacpp-numerics]

A model may also be named `smollm2:METHOD[:BACKEND]`: SmolLM2 decoded to F32, its linear layers
through a weight-only format of refquant.pipelines.quality (RTN-W4G128, FP8, ...), the products run
on the decoded float32 weights through BLAS (no BACKEND) or as BACKEND's refquant.gemm matmul on
the codes (`numba`: W4A16 and FP8; `numpy`: the spec's float64 reference).

Each model runs in its own subprocess so that the peak memory is that model's alone."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tools/


def one(name: str, ctx: int, numerics: bool, dtype: str, threads=None) -> dict:
    import resource

    import numpy as np

    from refquant.model import Model
    from refquant.model.tokenizer import Tokenizer
    from tools.models import botchan_path, gemma3_path, smollm2_path
    model, _, rest = name.partition(":")
    method, _, backend = rest.partition(":")
    path = {"smollm2": smollm2_path, "gemma3": gemma3_path}[model]()
    toks = Tokenizer.from_gguf(path).encode(botchan_path().read_bytes().decode("utf-8"))[:ctx]
    if method:
        import tempfile

        from refquant.pipelines.quality import base_file, linear_model
        tmp = tempfile.TemporaryDirectory()
        base = Model.from_gguf(base_file(path, tmp.name))
        # the in-tree path works with or without the package's entry point installed
        backend = {"numba": "refquant_backends.numba:NumbaBackend"}.get(backend, backend) or None
        w, _ = linear_model(base.w, method, None, backend)
        m = Model(w)
        del base
    else:
        m = Model.from_gguf(path, dtype=np.dtype(dtype).type, llamacpp_numerics=numerics)
    from refquant.model.threads import blas_threads
    with blas_threads(threads) as nthreads:   # None: the default, the cores not already busy
        t0 = time.perf_counter()
        m.forward(toks)                       # first call: decodes and caches the weights
        t1 = time.perf_counter()
        c1 = time.process_time()
        m.forward(toks)
        t2 = time.perf_counter()
        c2 = time.process_time()
    out = {"model": name, "ctx": len(toks), "dtype": dtype, "llamacpp_numerics": numerics,
           "first_s": t1 - t0, "warm_s": t2 - t1, "warm_cpu_s": c2 - c1, "tok_per_s": len(toks) / (t2 - t1),
           "threads": nthreads,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if method:
        return out
    try:
        import llama_cpp
        llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False,
                              n_threads=nthreads or None)
        t = time.perf_counter()
        llm.eval(toks)
        out["llamacpp_tok_per_s"] = len(toks) / (time.perf_counter() - t)
    except ImportError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--llamacpp-numerics", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads of the forward, and llama.cpp's (default: refquant's default, the idle cores)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.ctx, a.llamacpp_numerics, a.dtype, a.threads)))
        return
    print(f"{'model':<24} {'ctx':>4} {'dtype':<8} {'threads':>7} {'first s':>8} {'warm s':>7} {'cpu s':>6} {'tok/s':>7} "
          f"{'llama.cpp tok/s':>16} {'peak RSS MiB':>13}  load {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
    for name in a.models.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--ctx", str(a.ctx), "--dtype", a.dtype]
        if a.llamacpp_numerics:
            cmd.append("--llamacpp-numerics")
        if a.threads is not None:
            cmd += ["--threads", str(a.threads)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"{r['model']:<24} {r['ctx']:>4} {r['dtype']:<8} {str(r['threads']):>7} {r['first_s']:>8.2f} "
              f"{r['warm_s']:>7.2f} {r['warm_cpu_s']:>6.2f} "
              f"{r['tok_per_s']:>7.1f} {r.get('llamacpp_tok_per_s', float('nan')):>16.1f} {r['peak_rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()
