"""Scale-out: whole-model quantization on N local workers against one, and against llama.cpp at
the same core count, with time and peak memory, in the same run on the same input.

    nice python benchmarks/bench_scale.py                # SmolLM2 Q4_K_M: --workers 1 vs --workers N
    python benchmarks/bench_scale.py [--workers 2] [--repeat 5] [--ftypes Q4_K_M]
                                     [--synthetic-gib 8 --synthetic-ftypes Q4_K_M,Q8_0] [--dir DIR]
                                     [--checkpoint-gib 2 --checkpoint-formats gptq,fp8-block]
    python benchmarks/bench_scale.py --dispatch 10000   # the thread runner's own cost a task
    python benchmarks/bench_scale.py --many 50000 [--many-kinds tensors,slabs,parts,checkpoint]
                                                        # costs a tensor, slab, part: N/4 vs N

* SmolLM2-135M decoded to F32: `refquant quantize IN OUT --type T --backend numba --workers 1`
  (one task after another on one core) and `--workers N` (N threads of one process, one kernel
  thread each); the speed-up of N workers over one. Runs alternate (1, N, 1, N, ...) so that
  a change of load falls on both.
* With --synthetic-gib: a llama-shaped F16 file of that many GiB (hidden 4096, FFN 11008,
  written once, deleted after) quantized with 1 and N workers, and by llama.cpp's
  `llama_model_quantize` with nthread = N; wall time and peak resident memory of each process.
* With --checkpoint-gib: a llama-shaped BF16 Hugging Face checkpoint of that many GiB (written
  from its plan, tensor by tensor; deleted after) quantized with round to nearest to each
  --checkpoint-formats on N workers, planned (the default) and gathered whole in memory
  (`hf_quantize.PLANNED = False`, the writer before plans); wall time and peak memory against
  the bound 2 x the largest tensor + 300 MiB. Same directory both ways.

* With --many N: the whole-file pipelines' own costs, on inputs whose counts are a large
  model's but whose tensors are tiny, at N/4 and N (a cost that grows faster than the count
  shows as a CPU ratio above 4): a GGUF of N F16 tensors of 2 x 256 (`tensors`); a GGUF whose
  tensors split into 2N slabs (400 x 256 tensors, `_SLAB_ELEMENTS` set to one row: `slabs`);
  a split GGUF of N/25 parts of 4 tensors written with --keep-split (`parts`); a BF16
  checkpoint of 2N/5 tensors in 40 shards, round to nearest to GPTQ (`checkpoint`). Each
  to Q8_0 on 1 worker and on --workers threads (the checkpoint: --workers), in a fresh
  process; the figures are the call's own (imports and the input's writing excluded) and the
  process's peak memory.

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


CKPT = """
import sys
from refquant.pipelines import hf_quantize
hf_quantize.PLANNED = sys.argv[5] == "1"
hf_quantize.quantize_checkpoint(sys.argv[1], sys.argv[2], "rtn", 8 if sys.argv[3] in ("fp8-block", "modelopt-fp8") else 4,
                                128, sys.argv[3], workers=int(sys.argv[4]))
"""


def synthetic_checkpoint(d: Path, gib: float, seed=0) -> tuple[Path, int]:
    """A llama-shaped BF16 checkpoint of about `gib` GiB (hidden 4096, FFN 11008, 32000 tokens),
    5 GiB shards, written tensor by tensor at its planned offsets; (directory, largest tensor
    bytes)."""
    import json
    import ml_dtypes
    import numpy as np
    from refquant.io.safetensors import PlannedCheckpoint, TensorSpec, write_at
    W, FF, V = 4096, 11008, 32000
    per_layer = 2 * (2 * W * W + 2 * W * W // 4 + 3 * W * FF + 2 * W)
    n_layer = max(1, round((gib * 2**30 - 2 * 2 * V * W) / per_layer))
    shapes = {"model.embed_tokens.weight": (V, W), "model.norm.weight": (W,), "lm_head.weight": (V, W)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (W,), p + "post_attention_layernorm.weight": (W,),
                       p + "self_attn.q_proj.weight": (W, W), p + "self_attn.k_proj.weight": (W // 4, W),
                       p + "self_attn.v_proj.weight": (W // 4, W), p + "self_attn.o_proj.weight": (W, W),
                       p + "mlp.gate_proj.weight": (FF, W), p + "mlp.up_proj.weight": (FF, W),
                       p + "mlp.down_proj.weight": (W, FF)})
    bf16 = np.dtype(ml_dtypes.bfloat16)
    specs = {k: TensorSpec(bf16, s) for k, s in shapes.items()}
    block = (np.random.default_rng(seed).standard_normal(1 << 22) * 0.02).astype(bf16)
    out = d / "synthetic-hf"
    with PlannedCheckpoint(out, specs, extra_files={"config.json": json.dumps({"model_type": "llama"})}) as pc:
        for k, t in specs.items():
            path, at = pc.where[k]
            n = t.nbytes // 2
            for i in range(0, n, block.size):
                write_at(path, at + 2 * i, np.roll(block, i % 9973)[:min(block.size, n - i)])
    return out, max(t.nbytes for t in specs.values())


def ours_checkpoint(src, out, fmt, workers, planned, env):
    import shutil
    wall, cpu, rss, _ = child([sys.executable, "-c", CKPT, str(src), str(out), fmt, str(workers),
                               "1" if planned else "0"], env)
    return wall, cpu, rss


def same_dirs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(same(a / n, b / n) for n in names)


def ours(src, out, ft, workers, env):
    """(wall s, CPU s, peak RSS MiB) of `refquant quantize` in a fresh process."""
    wall, cpu, rss, _ = child([sys.executable, "-m", "refquant.cli", "quantize", str(src), str(out), "--type", ft,
                               "--backend", "numba", "--workers", str(workers), "--no-progress"], env)
    return wall, cpu, rss


def dispatch(n_tasks: int, workers: int, task_s: float = 0.0005) -> None:
    """The thread runner's own cost: `n_tasks` tasks of `task_s` s each (a sleep: no CPU), all in
    flight at once as the GGUF writer submits a model's slabs; CPU time of this process per task.
    A cost that grows with the tasks in flight shows here as CPU time growing faster than
    n_tasks."""
    import time
    from refquant.pipelines.scale import Runner
    for n in (n_tasks // 4, n_tasks):
        with Runner(workers=workers) as rn:
            t, c = time.perf_counter(), time.process_time()
            done = sum(1 for _ in rn.imap_unordered(lambda x: time.sleep(task_s) or x, range(n), window=n))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert done == n
        print(f"dispatch: {n} tasks of {task_s * 1e3:.1f} ms in flight on {workers} threads: {wall:.2f} s wall, "
              f"{cpu:.2f} s CPU ({cpu / n * 1e6:.0f} us a task)", flush=True)


MANY = """
import sys, time
from refquant.pipelines import hf_quantize, recipes
kind, src, out, workers, slab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if slab:
    recipes._SLAB_ELEMENTS = slab
t, c = time.perf_counter(), time.process_time()
if kind == "checkpoint":
    hf_quantize.quantize_checkpoint(src, out, "rtn", 4, 128, "gptq", workers=workers)
else:
    recipes.quantize_model(src, out, "Q8_0", workers=workers, keep_split=kind == "parts")
print(time.perf_counter() - t, time.process_time() - c)
"""


def many_gguf(path: Path, n_tensors: int, rows: int = 2, parts: int = 1) -> Path:
    """A llama GGUF of n_tensors F16 tensors of rows x 256 (4 a layer), split into `parts`
    files (split_path names); the first file's path."""
    import numpy as np
    from refquant.io.gguf import KV, TensorInfo, write_gguf
    from refquant.io.gguf import GGUFValueType as V
    from refquant.io.split import split_path
    n_layer = max(1, n_tensors // 4)
    names = [f"blk.{i}.{k}.weight" for i in range(n_layer) for k in ("attn_q", "attn_v", "ffn_up", "ffn_down")]
    x = np.full(rows * 256, 0.01, np.float16)
    per = -(-len(names) // parts)
    for p in range(parts):
        kvs = [KV("general.architecture", V.STRING, "llama"), KV("llama.block_count", V.UINT32, n_layer),
               KV("llama.attention.head_count", V.UINT32, 4), KV("llama.attention.head_count_kv", V.UINT32, 4),
               KV("general.file_type", V.UINT32, 1)] if p == 0 else []
        if parts > 1:
            kvs += [KV("split.no", V.UINT16, p), KV("split.count", V.UINT16, parts),
                    KV("split.tensors.count", V.INT32, len(names))]
        write_gguf(split_path(path, p, parts) if parts > 1 else path, kvs,
                   [TensorInfo(n, 1, (rows, 256)) for n in names[p * per:(p + 1) * per]], lambda t: x)
    return Path(split_path(path, 0, parts)) if parts > 1 else path


def many_checkpoint(d: Path, n_tensors: int, shards: int = 40) -> Path:
    """A llama-shaped BF16 checkpoint of about n_tensors tiny tensors (hidden 128) in `shards` shards."""
    import json
    import ml_dtypes
    import numpy as np
    from refquant.io.safetensors import PlannedCheckpoint, TensorSpec, write_at
    W, bf16 = 128, np.dtype(ml_dtypes.bfloat16)
    shapes = {"model.embed_tokens.weight": (256, W), "model.norm.weight": (W,), "lm_head.weight": (256, W)}
    for i in range(max(1, n_tensors // 9)):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (W,), p + "post_attention_layernorm.weight": (W,),
                       p + "self_attn.q_proj.weight": (16, W), p + "self_attn.k_proj.weight": (16, W),
                       p + "self_attn.v_proj.weight": (16, W), p + "self_attn.o_proj.weight": (W, W),
                       p + "mlp.gate_proj.weight": (16, W), p + "mlp.up_proj.weight": (16, W),
                       p + "mlp.down_proj.weight": (W, W)})
    specs = {k: TensorSpec(bf16, s) for k, s in shapes.items()}
    out = d / f"many-hf-{n_tensors}"
    with PlannedCheckpoint(out, specs, max_shard_bytes=sum(t.nbytes for t in specs.values()) // shards + 1,
                           extra_files={"config.json": json.dumps({"model_type": "llama"})}) as pc:
        for k, t in specs.items():
            write_at(*pc.where[k], (np.arange(t.nbytes // 2) % 251 * 0.001).astype(bf16))
    return out


def many_counts(n: int, workers: int, kinds: list, d: Path, env) -> None:
    """The pipelines' cost a tensor, slab, part and checkpoint tensor at n // 4 and n."""
    import shutil
    print(f"{'kind':<11}{'count':>8}{'workers':>8}{'wall s':>8}{'CPU s':>7}{'MiB':>6}{'CPU ratio':>10}")
    for kind in kinds:
        for w in ([workers] if kind == "checkpoint" else [1, workers]):
            cpu = {}
            for m in (n // 4, n):
                count = {"parts": m // 25, "checkpoint": m * 2 // 5, "slabs": max(4, 2 * m // 400) * 400}.get(kind, m)
                src = d / f"many-{kind}-{m}.gguf"
                if kind == "tensors":
                    src = many_gguf(src, m) if not src.exists() else src
                elif kind == "slabs":
                    src = many_gguf(src, count // 400, rows=400) if not src.exists() else src
                elif kind == "parts":
                    (d / f"parts-{m}").mkdir(exist_ok=True)
                    src = many_gguf(d / f"parts-{m}" / "in", count * 4, parts=count)
                else:
                    src = d / f"many-hf-{count}"
                    src = many_checkpoint(d, count) if not src.exists() else src
                out = d / f"many-out-{kind}"
                if kind == "parts":
                    out.mkdir()
                    dst = out / "q"
                else:
                    dst = out if kind == "checkpoint" else d / "many-out.gguf"
                _, _, rss, res = child([sys.executable, "-c", MANY, kind, str(src), str(dst), str(w),
                                        "256" if kind == "slabs" else "0"], env)
                wall, cpu[m] = (float(v) for v in res.split())
                ratio = f"{cpu[m] / cpu[n // 4]:10.2f}" if m == n else ""
                print(f"{kind:<11}{count:>8}{w:>8}{wall:8.2f}{cpu[m]:7.2f}{rss:6.0f}{ratio}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
                if kind == "parts":
                    shutil.rmtree(d / f"parts-{m}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ftypes", default="Q4_K_M")
    ap.add_argument("--synthetic-gib", type=float, default=0.0)
    ap.add_argument("--synthetic-ftypes", default="Q4_K_M,Q8_0")
    ap.add_argument("--synthetic-repeat", type=int, default=1)
    ap.add_argument("--checkpoint-gib", type=float, default=0.0)
    ap.add_argument("--checkpoint-formats", default="gptq,fp8-block")
    ap.add_argument("--skip-smollm2", action="store_true", help="only the synthetic files")
    ap.add_argument("--dir", default=None, help="where inputs and outputs go (default: a temporary directory)")
    ap.add_argument("--dispatch", type=int, default=0, metavar="N",
                    help="only the thread runner's cost a task, with N and N/4 tasks in flight")
    ap.add_argument("--many", type=int, default=0, metavar="N",
                    help="only the pipelines' costs a tensor, slab, part: N/4 and N of them")
    ap.add_argument("--many-kinds", default="tensors,slabs,parts,checkpoint")
    a = ap.parse_args()
    if a.dispatch:
        return dispatch(a.dispatch, a.workers)
    if a.many:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        print(f"{len(os.sched_getaffinity(0))} cores; --many {a.many}: N/4 and N; load average {load()}")
        with tempfile.TemporaryDirectory(dir=a.dir) as d:
            many_counts(a.many, a.workers, a.many_kinds.split(","), Path(d), env)
        print(f"load average after: {load()}")
        return
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
        if a.checkpoint_gib:
            import shutil
            src, largest = synthetic_checkpoint(d, a.checkpoint_gib)
            size = sum(f.stat().st_size for f in src.iterdir())
            bound = 2 * largest / 2**20 + 300
            print(f"\nsynthetic BF16 checkpoint: {size / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB "
                  f"(bound 2 x largest + 300 MiB = {bound:.0f} MiB); {n} workers, round to nearest")
            print(f"{'format':<12}{'planned s':>10}{'MiB':>7}{'whole s':>9}{'MiB':>7}{'same':>6}")
            for fmt in a.checkpoint_formats.split(","):
                l0 = load()
                p, w = d / "planned", d / "whole"
                rp = ours_checkpoint(src, p, fmt, n, True, env)
                rw = ours_checkpoint(src, w, fmt, n, False, env)
                print(f"{fmt:<12}{rp[0]:10.1f}{rp[2]:7.0f}{rw[0]:9.1f}{rw[2]:7.0f}{str(same_dirs(p, w)):>6}  "
                      f"{l0} -> {load()}", flush=True)
                shutil.rmtree(p)
                shutil.rmtree(w)
            shutil.rmtree(src)


if __name__ == "__main__":
    main()
