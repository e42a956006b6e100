"""Whole-model quantization as a user runs it, against llama.cpp, in the same run on the same input.

    python benchmarks/bench_quantize_model.py [--threads 2] [--repeat 3] [--models smollm2,gemma3]
                                              [--ftypes Q4_K_M,Q8_0,Q4_0,Q2_K,IQ4_XS]
                                              [--synthetic-gib 4.2 --synthetic-ftypes Q8_0,Q4_K_M]

* refquant: `refquant quantize IN OUT --type FT --backend numba --workers T` (T = --threads:
  T slabs at a time, one kernel thread each) in a fresh process (Python and NumPy start-up,
  imports, the Numba cache loads, reading the metadata, the whole write loop), with
  NUMBA_NUM_THREADS = T, a warm Numba cache and the modules' bytecode written (one untimed run
  first; PYTHONDONTWRITEBYTECODE is dropped for the child, as an install compiles it);
* llama.cpp: llama-cpp-python's `llama_model_quantize` with nthread = --threads, in a fresh
  process too; its time is the call alone (the process's start-up and the library's load are
  not counted), its CPU time the whole process's;
* "warm s": refquant's `quantize_model` on the same input in one process that has run it once
  (the work without the start-up), with the fixed cost of a fresh process printed first
  (Python with NumPy alone, and the command on a one-tensor file).

Inputs: SmolLM2-135M and Gemma-3-270M decoded to F32 (the test fixtures' way: refquant's
dequantize_model, byte-identical with llama.cpp's), and with --synthetic-gib a llama-shaped F32
file of that many GiB (hidden 4096, FFN 11008, random weights; written once, deleted after).
Every output pair is compared byte for byte. Figures: the median of --repeat runs, wall and CPU
time (user + system of the child process), peak resident memory of each child, and the load
average before and after each row."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARM = """
import statistics, sys, time
from refquant.pipelines import recipes
src, out, ft, threads, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ts = []
for _ in range(n + 1):
    t = time.perf_counter()
    recipes.quantize_model(src, out, ft, backend="numba", workers=threads)
    ts.append(time.perf_counter() - t)
print(statistics.median(ts[1:]))
"""

LLAMA = """
import sys, time
from tools.oracles.llama_cpp import quantize_here, lib
lib()
t = time.perf_counter()
rc = quantize_here(sys.argv[1], sys.argv[2], int(sys.argv[3]), nthread=int(sys.argv[4]))
print(time.perf_counter() - t, rc)
"""


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def child(cmd, env) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, stdout) of one child process (its own rusage, os.wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise RuntimeError(f"{cmd[:4]} failed: {err.read()[-2000:]}")
        return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out.read()


def ours(src, out, ft, env, threads):
    return child([sys.executable, "-m", "refquant.cli", "quantize", str(src), str(out), "--type", ft,
                  "--backend", "numba", "--workers", str(threads)], env)


def warm(src, out, ft, env, threads, repeat) -> float:
    """The same quantization inside one process, after a first untimed call: the work alone,
    without the process's start-up (median of `repeat` calls)."""
    return float(child([sys.executable, "-c", WARM, str(src), str(out), ft, str(threads), str(repeat)], env)[3])


def startup(env, repeat) -> tuple[float, float]:
    """The command's fixed cost, median wall s: Python with NumPy alone, and `refquant quantize`
    of a one-tensor file to Q4_0 (imports, the Numba target set-up, one kernel loaded,
    the exit), to read the rows' ratios against."""
    with tempfile.TemporaryDirectory() as d:
        from refquant.io.gguf import KV, GGUFValueType, TensorInfo, write_gguf
        src, out = Path(d) / "one.gguf", Path(d) / "q.gguf"
        write_gguf(src, [KV("general.architecture", GGUFValueType.STRING, "llama"),
                         KV("llama.block_count", GGUFValueType.UINT32, 1)],
                   [TensorInfo("blk.0.ffn_up.weight", 0, (32, 256))],
                   lambda t: [np.ones(t.shape, np.float32)])
        py = statistics.median(child([sys.executable, "-c", "import numpy"], env)[0] for _ in range(repeat))
        cmd = [sys.executable, "-m", "refquant.cli", "quantize", str(src), str(out), "--type", "Q4_0",
               "--backend", "numba", "--no-progress"]
        child(cmd, env)
        one = statistics.median(child(cmd, env)[0] for _ in range(repeat))
    return py, one


def theirs(src, out, ft, threads, env):
    from refquant.pipelines.recipes import file_type
    wall, cpu, rss, stdout = child([sys.executable, "-c", LLAMA, str(src), str(out), str(file_type(ft).id),
                                    str(threads)], env)
    call, rc = stdout.split()
    assert rc == "0", f"llama.cpp failed on {ft}"
    return float(call), cpu, rss


def same(a, b) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def synthetic(path: Path, gib: float, seed=0, dtype: str = "F32") -> Path:
    """A llama-shaped GGUF of about `gib` GiB, its weights F32 or F16 (`dtype`; norms F32, as
    converters write them): hidden 4096, FFN 11008, 32 heads (8 KV), as many layers as fit,
    written slab by slab."""
    from refquant.io.gguf import KV, TensorInfo, write_gguf
    from refquant.io.gguf import GGUFValueType as V
    W, FF, V_ = 4096, 11008, 32000
    size, gtype = {"F32": (4, 0), "F16": (2, 1)}[dtype]
    per_layer = size * (2 * W * W + 2 * W * W // 4 + 3 * W * FF) + 4 * 2 * W
    n_layer = max(1, -(-int(gib * 2**30 - 2 * size * V_ * W) // per_layer))  # rounded up
    kvs = [KV("general.architecture", V.STRING, "llama"), KV("general.name", V.STRING, "synthetic"),
           KV("llama.block_count", V.UINT32, n_layer), KV("llama.context_length", V.UINT32, 4096),
           KV("llama.embedding_length", V.UINT32, W), KV("llama.feed_forward_length", V.UINT32, FF),
           KV("llama.attention.head_count", V.UINT32, 32), KV("llama.attention.head_count_kv", V.UINT32, 8),
           KV("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
           KV("general.file_type", V.UINT32, gtype), KV("general.quantization_version", V.UINT32, 2)]
    shapes = {"token_embd.weight": (V_, W)}
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (W,), b + "attn_q.weight": (W, W), b + "attn_k.weight": (W // 4, W),
                       b + "attn_v.weight": (W // 4, W), b + "attn_output.weight": (W, W),
                       b + "ffn_norm.weight": (W,), b + "ffn_gate.weight": (FF, W), b + "ffn_up.weight": (FF, W),
                       b + "ffn_down.weight": (W, FF)})
    shapes.update({"output_norm.weight": (W,), "output.weight": (V_, W)})
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(1 << 22) * 0.02).astype(np.float32)  # 16 MiB of values, reused with offsets

    def data(t):
        n = int(np.prod(t.shape))
        at = 0
        while at < n:
            k = min(n - at, block.size)
            x = np.roll(block, at % 9973)[:k] * np.float32(1 + (at % 7) / 8)
            yield x if t.ggml_type == 0 else x.astype(np.float16)
            at += k
    infos = [TensorInfo(n, 0 if len(s) == 1 else gtype, s) for n, s in shapes.items()]
    write_gguf(path, kvs, infos, data)
    return path


def row(label, src, ft, threads, repeat, env, d):
    a, b = d / "ours.gguf", d / "ref.gguf"
    l0 = load()
    if label != "synthetic":  # the real models' rows have warmed the same kernels
        ours(src, a, ft, env, threads)  # untimed: warms the Numba cache for this file type's kernels
    r_ours = [ours(src, a, ft, env, threads) for _ in range(repeat)]
    r_ref = [theirs(src, b, ft, threads, env) for _ in range(repeat)]
    ok = same(a, b)
    ww = warm(src, a, ft, env, threads, repeat)
    med = lambda rs, i: statistics.median(r[i] for r in rs)  # noqa: E731
    w, c, m = med(r_ours, 0), med(r_ours, 1), max(r[2] for r in r_ours)
    wr, cr, mr = med(r_ref, 0), med(r_ref, 1), max(r[2] for r in r_ref)
    print(f"{label:<10}{ft:<8}{w:9.2f}{wr:9.2f}{w / wr:7.2f}{ww:8.2f}{ww / wr:7.2f}{c:9.2f}{cr:9.2f}{c / cr:7.2f}{m:9.0f}{mr:9.0f}"
          f"{str(ok):>6}  {l0} -> {load()}", flush=True)
    os.remove(a)
    os.remove(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--ftypes", default="Q4_K_M,Q8_0,Q4_0,Q2_K,IQ4_XS")
    ap.add_argument("--synthetic-gib", type=float, default=0.0)
    ap.add_argument("--synthetic-ftypes", default="Q8_0,Q4_K_M")
    ap.add_argument("--dir", default=None, help="where the inputs and outputs go (default: a temporary directory)")
    ap.add_argument("--inputs", default=None, help="a directory holding <model>-F32.gguf already (not deleted)")
    a = ap.parse_args()
    from refquant.pipelines import recipes
    from tools.models import gemma3_path, smollm2_path
    env = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads), PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # an install has its modules' bytecode compiled
    print(f"{a.threads} thread(s) each; median of {a.repeat}; {os.cpu_count()} cores; load average (1/5/15 min) "
          f"before -> after each row")
    py, one = startup(env, 5)
    print(f"fixed cost of a fresh process: python + numpy {py:.3f} s; refquant quantize of a one-tensor file "
          f"{one:.3f} s (imports, Numba's target set-up, one kernel loaded, exit). 'warm s': the same "
          f"quantization in a process that has done it once (the work without the start-up)")
    print(f"{'model':<10}{'type':<8}{'ours s':>9}{'llama s':>9}{'ratio':>7}{'warm s':>8}{'ratio':>7}{'ours cpu':>9}{'ll cpu':>9}{'ratio':>7}"
          f"{'ours MiB':>9}{'ll MiB':>9}{'same':>6}")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        d = Path(d)
        for name in [m for m in a.models.split(",") if m]:
            src = Path(a.inputs or d) / f"{name}-F32.gguf"
            if not a.inputs:
                recipes.dequantize_model({"smollm2": smollm2_path, "gemma3": gemma3_path}[name](), src, "F32")
            for ft in a.ftypes.split(","):
                row(name, src, ft, a.threads, a.repeat, env, d)
            if not a.inputs:
                os.remove(src)
        if a.synthetic_gib:
            src = synthetic(d / "synthetic-F32.gguf", a.synthetic_gib)
            print(f"synthetic: {src.stat().st_size / 2**30:.2f} GiB")
            for ft in a.synthetic_ftypes.split(","):
                row("synthetic", src, ft, a.threads, a.repeat, env, d)
            os.remove(src)


if __name__ == "__main__":
    main()
