"""Scale-out: whole-model quantization on N local workers against one process, and against
llama.cpp at the same core count, with time and peak memory, in the same run on the same input.

    python benchmarks/bench_scale.py [--workers 2] [--repeat 3] [--ftypes Q4_K_M]
                                     [--synthetic-gib 8 --synthetic-ftypes Q4_K_M,Q8_0] [--dir DIR]

* SmolLM2-135M decoded to F32: `refquant quantize --backend numba` with `--workers 1` (this
  process, Numba's kernels on every core) and `--workers N` (a local Dask cluster of N
  processes, one kernel thread each); the speed-up of N workers over one.
* With --synthetic-gib: a llama-shaped F16 file of that many GiB (hidden 4096, FFN 11008,
  written once, deleted after) quantized with N workers, and by llama.cpp's
  `llama_model_quantize` with nthread = N; wall time, and peak resident memory of the client
  and of the largest worker (each process's own maximum RSS) against llama.cpp's process.

Every refquant run is a fresh process (start-up, imports, the cluster's start included); a
warm Numba cache (one untimed run first). Every output pair is compared byte for byte. Figures:
the median of --repeat runs and the load average before and after each row."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_quantize_model import child, load, same, synthetic, theirs  # noqa: E402

# a refquant run that reports its own and its workers' peak memory
OURS = """
import json, resource, sys, time
from refquant.pipelines import recipes
from refquant.pipelines.scale import Runner
src, out, ft, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
with Runner(workers) as rn:
    recipes.quantize_model(src, out, ft, backend="numba", runner=rn)
    wall = time.perf_counter() - t
    peaks = list(rn._client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values()) \\
        if rn._client is not None else []
print(json.dumps({"wall": wall, "workers_mib": [p / 1024 for p in peaks],
                  "client_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ours(src, out, ft, workers, env):
    wall, cpu, rss, stdout = child([sys.executable, "-c", OURS, str(src), str(out), ft, str(workers)], env)
    r = json.loads(stdout.strip().splitlines()[-1])
    return wall, r["client_mib"], max(r["workers_mib"], default=0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ftypes", default="Q4_K_M")
    ap.add_argument("--synthetic-gib", type=float, default=0.0)
    ap.add_argument("--synthetic-ftypes", default="Q4_K_M,Q8_0")
    ap.add_argument("--synthetic-repeat", type=int, default=1)
    ap.add_argument("--skip-smollm2", action="store_true", help="only the synthetic file")
    ap.add_argument("--dir", default=None, help="where inputs and outputs go (default: a temporary directory)")
    a = ap.parse_args()
    from refquant.pipelines import recipes
    from tools.models import smollm2_path
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    n = a.workers
    print(f"{len(os.sched_getaffinity(0))} cores; {n} workers; median of {a.repeat}; load average "
          f"(1/5/15 min) before -> after each row")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        d = Path(d)
        src = d / "smollm2-F32.gguf"
        recipes.dequantize_model(smollm2_path(), src, "F32")
        print(f"\n{'model':<10}{'type':<8}{'1 worker s':>11}{f'{n} workers s':>13}{'speed-up':>9}{'same':>6}")
        for ft in [] if a.skip_smollm2 else a.ftypes.split(","):
            l0 = load()
            one, many = d / "one.gguf", d / "many.gguf"
            ours(src, one, ft, 1, env)         # untimed: warms the Numba cache
            r1 = [ours(src, one, ft, 1, env)[0] for _ in range(a.repeat)]
            rn = [ours(src, many, ft, n, env)[0] for _ in range(a.repeat)]
            w1, wn = statistics.median(r1), statistics.median(rn)
            print(f"{'smollm2':<10}{ft:<8}{w1:11.2f}{wn:13.2f}{w1 / wn:9.2f}{str(same(one, many)):>6}  "
                  f"{l0} -> {load()}", flush=True)
        os.remove(src)
        if a.synthetic_gib:
            from refquant.io.gguf import GGUFFile
            src = synthetic(d / "synthetic-F16.gguf", a.synthetic_gib, dtype="F16")
            with GGUFFile(src) as f:
                largest = max(t.nbytes for t in f.tensors) / 2**20
            print(f"\nsynthetic F16: {src.stat().st_size / 2**30:.2f} GiB, largest tensor {largest:.0f} MiB")
            print(f"{'type':<8}{'1 worker s':>11}{f'{n} workers s':>13}{'llama s':>9}{'ratio':>7}{'client MiB':>11}"
                  f"{'worker MiB':>11}{'1-proc MiB':>11}{'llama MiB':>10}{'same':>6}")
            for ft in a.synthetic_ftypes.split(","):
                l0 = load()
                r1 = [ours(src, d / "one.gguf", ft, 1, env) for _ in range(a.synthetic_repeat)]
                ro = [ours(src, d / "ours.gguf", ft, n, env) for _ in range(a.synthetic_repeat)]
                rl = [theirs(src, d / "ref.gguf", ft, n, env) for _ in range(a.synthetic_repeat)]
                w1 = statistics.median(r[0] for r in r1)
                w, wl = statistics.median(r[0] for r in ro), statistics.median(r[0] for r in rl)
                ok = same(d / "ours.gguf", d / "ref.gguf") and same(d / "one.gguf", d / "ref.gguf")
                print(f"{ft:<8}{w1:11.1f}{w:13.1f}{wl:9.1f}{w / wl:7.2f}{max(r[1] for r in ro):11.0f}"
                      f"{max(r[2] for r in ro):11.0f}{max(r[1] for r in r1):11.0f}{max(r[2] for r in rl):10.0f}"
                      f"{str(ok):>6}  {l0} -> {load()}", flush=True)
                for f in ("one.gguf", "ours.gguf", "ref.gguf"):
                    os.remove(d / f)
            os.remove(src)


if __name__ == "__main__":
    main()
