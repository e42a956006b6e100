"""Whole-model quantization: refquant's quantize_model against llama.cpp's llama_model_quantize
(llama-cpp-python's binding, nthread=1) on the same input and file type in the same run.

    python benchmarks/bench_recipes.py [--ftypes Q4_0,Q8_0,Q4_K_M] [--repeat 1]

The input is SmolLM2-135M dequantized to F32 (by refquant; byte-identical with llama.cpp's own
dequantization). Both outputs are compared byte for byte. llama.cpp runs in its worker process
(tools.oracles.llama_cpp), started and warmed before timing; refquant runs here, with the
NumPy spec backend, one thread of Python (NumPy's element-wise kernels are single-threaded)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tools/


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftypes", default="Q4_0,Q8_0,Q4_K_M")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs each")
    a = ap.parse_args()

    from refquant.pipelines import recipes
    from tools.models import smollm2_path
    from tools.oracles import llama_cpp

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "smol-F32.gguf"
        recipes.dequantize_model(smollm2_path(), src, "F32")
        llama_cpp.tensor_types(src, recipes.file_type("Q4_0").id)  # start and warm the worker
        print(f"input: SmolLM2-135M F32, {src.stat().st_size / 2**20:.0f} MiB; best of {a.repeat}")
        print(f"{'file type':<10} {'refquant s':>11} {'llama.cpp s':>12} {'ratio':>7} {'same bytes':>11}")
        for ft in a.ftypes.split(","):
            ours, ref = d / f"ours-{ft}.gguf", d / f"ref-{ft}.gguf"
            t_ours = t_ref = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                recipes.quantize_model(src, ours, ft)
                t_ours = min(t_ours, time.perf_counter() - t)
                t = time.perf_counter()
                rc = llama_cpp.quantize(src, ref, recipes.file_type(ft).id, nthread=1)
                t_ref = min(t_ref, time.perf_counter() - t)
                assert rc == 0, f"llama.cpp failed on {ft}"
            same = ours.read_bytes() == ref.read_bytes()
            print(f"{ft:<10} {t_ours:>11.2f} {t_ref:>12.2f} {t_ours / t_ref:>7.1f} {str(same):>11}", flush=True)
            os.remove(ours)
            os.remove(ref)


if __name__ == "__main__":
    main()
