"""Scale-out: whole-model quantization on N local workers against one, and against llama.cpp at
the same core count, with time and peak memory, in the same run on the same input.

    nice python benchmarks/bench_scale.py                # SmolLM2 Q4_K_M: --workers 1 vs --workers N
    python benchmarks/bench_scale.py [--workers 2] [--repeat 5] [--ftypes Q4_K_M]
                                     [--synthetic-gib 8 --synthetic-ftypes Q4_K_M,Q8_0] [--dir DIR]

* SmolLM2-135M decoded to F32: `refquant quantize IN OUT --type T --backend numba --workers 1`
  (one task after another on one core) and `--workers N` (N threads of one process, one kernel
  thread each); the speed-up of N workers over one. Runs alternate (1, N, 1, N, ...) so that
  a change of load falls on both.
* With --synthetic-gib: a llama-shaped F16 file of that many GiB (hidden 4096, FFN 11008,
  written once, deleted after) quantized with 1 and N workers, and by llama.cpp's
  `llama_model_quantize` with nthread = N; wall time and peak resident memory of each process.

Every refquant run is the command line in a fresh process (start-up and imports included); a
warm Numba cache (one untimed run first). Every output pair is compared byte for byte. Figures:
the median of --repeat runs, the CPU time of the median run, and the load average before and
after each row."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_quantize_model import child, load, same, synthetic, theirs  # noqa: E402


def ours(src, out, ft, workers, env):
    """(wall s, CPU s, peak RSS MiB) of `refquant quantize` in a fresh process."""
    wall, cpu, rss, _ = child([sys.executable, "-m", "refquant.cli", "quantize", str(src), str(out), "--type", ft,
                               "--backend", "numba", "--workers", str(workers), "--no-progress"], env)
    return wall, cpu, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=5)
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
        print(f"\n{'model':<10}{'type':<8}{'1 worker s':>11}{'CPU s':>7}{f'{n} workers s':>13}{'CPU s':>7}"
              f"{'speed-up':>9}{'same':>6}")
        for ft in [] if a.skip_smollm2 else a.ftypes.split(","):
            l0 = load()
            one, many = d / "one.gguf", d / "many.gguf"
            ours(src, one, ft, 1, env)         # untimed: warms the Numba cache
            r1, rn = [], []
            for _ in range(a.repeat):
                r1.append(ours(src, one, ft, 1, env))
                rn.append(ours(src, many, ft, n, env))
            m1, mn = (sorted(r)[len(r) // 2] for r in (r1, rn))
            print(f"{'smollm2':<10}{ft:<8}{m1[0]:11.2f}{m1[1]:7.2f}{mn[0]:13.2f}{mn[1]:7.2f}{m1[0] / mn[0]:9.2f}"
                  f"{str(same(one, many)):>6}  {l0} -> {load()}", flush=True)
        os.remove(src)
        if a.synthetic_gib:
            from refquant.io.gguf import GGUFFile
            src = synthetic(d / "synthetic-F16.gguf", a.synthetic_gib, dtype="F16")
            with GGUFFile(src) as f:
                largest = max(t.nbytes for t in f.tensors) / 2**20
            print(f"\nsynthetic F16: {src.stat().st_size / 2**30:.2f} GiB, largest tensor {largest:.0f} MiB")
            print(f"{'type':<8}{'1 worker s':>11}{f'{n} workers s':>13}{'llama s':>9}{'ratio':>7}{'1 worker MiB':>13}"
                  f"{f'{n} workers MiB':>15}{'llama MiB':>10}{'same':>6}")
            for ft in a.synthetic_ftypes.split(","):
                l0 = load()
                r1 = [ours(src, d / "one.gguf", ft, 1, env) for _ in range(a.synthetic_repeat)]
                ro = [ours(src, d / "ours.gguf", ft, n, env) for _ in range(a.synthetic_repeat)]
                rl = [theirs(src, d / "ref.gguf", ft, n, env) for _ in range(a.synthetic_repeat)]
                w1 = statistics.median(r[0] for r in r1)
                w, wl = statistics.median(r[0] for r in ro), statistics.median(r[0] for r in rl)
                ok = same(d / "ours.gguf", d / "ref.gguf") and same(d / "one.gguf", d / "ref.gguf")
                print(f"{ft:<8}{w1:11.1f}{w:13.1f}{wl:9.1f}{w / wl:7.2f}{max(r[2] for r in r1):13.0f}"
                      f"{max(r[2] for r in ro):15.0f}{max(r[2] for r in rl):10.0f}"
                      f"{str(ok):>6}  {l0} -> {load()}", flush=True)
                for f in ("one.gguf", "ours.gguf", "ref.gguf"):
                    os.remove(d / f)
            os.remove(src)


if __name__ == "__main__":
    main()
