"""Scale-out (refquant.pipelines.scale): whole-model quantization on Dask distributed writes the
bytes llama_model_quantize writes, with any number of workers, in any completion order; worker
deaths are survived, task errors and interrupts leave no output."""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refquant.errors import InputError
from refquant.pipelines import recipes
from refquant.pipelines.scale import Runner
from test_recipes_vs_llama_cpp import no_leftovers, same_bytes, synthetic_model

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def llama():
    from tools.oracles import llama_cpp
    return llama_cpp


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    return {"dense": synthetic_model(d / "dense.gguf", n_layer=3, width=256, ff=512),
            "moe": synthetic_model(d / "moe.gguf", n_expert=4, n_layer=2, tied=False),
            "f16": synthetic_model(d / "f16.gguf", n_layer=2, dtype="F16", width=256, ff=512)}


@pytest.fixture
def small_slabs(monkeypatch):
    """Slabs of a few rows, so tensors split into many tasks and experts into several slabs."""
    monkeypatch.setattr(recipes, "_SLAB_ELEMENTS", 3000)
    monkeypatch.setattr(recipes, "_TASK_ELEMENTS", 7000)


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of two worker processes (--scheduler local); the workers import tests/
    too (the dying and failing backends below)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)] + ([old] if old else []))
    try:
        with Runner(2, "local") as rn:
            yield rn
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class Shuffled(Runner):
    """A runner whose tasks finish in a random order, and whose client writes the bytes (as with
    a remote scheduler): the offsets alone must put every slab in its place."""

    def __init__(self, seed):
        super().__init__(1)
        self.rng = random.Random(seed)
        self.scheduler = "shuffled"

    @property
    def serial(self):
        return False

    def imap_unordered(self, fn, tasks, window=None):
        done = [(i, fn(t)) for i, t in enumerate(tasks)]
        self.rng.shuffle(done)
        yield from done


@pytest.mark.parametrize("ft", ["Q4_K_M", "Q8_0", "IQ4_XS", "Q2_K"])
@pytest.mark.parametrize("which", ["dense", "moe", "f16"])
def test_any_completion_order_byte_identical(llama, models, tmp_path, small_slabs, which, ft):
    ref = tmp_path / "ref.gguf"
    assert llama.quantize(models[which], ref, recipes.file_type(ft).id) == 0
    for seed in range(2):
        ours = tmp_path / f"ours{seed}.gguf"
        recipes.quantize_model(models[which], ours, ft, runner=Shuffled(seed))
        same_bytes(ours, ref)


@pytest.mark.parametrize("ft", ["Q4_K_M", "Q6_K", "Q4_0"])
def test_local_cluster_byte_identical(llama, models, cluster, tmp_path, small_slabs, ft):
    ref = tmp_path / "ref.gguf"
    for which in ("dense", "moe"):
        assert llama.quantize(models[which], ref, recipes.file_type(ft).id) == 0
        ours = tmp_path / f"{which}.gguf"
        recipes.quantize_model(models[which], ours, ft, runner=cluster, backend="numba")
        same_bytes(ours, ref)


@pytest.mark.parametrize("ft", ["Q4_K_M", "Q8_0"])
def test_threads_byte_identical(llama, models, tmp_path, small_slabs, ft):
    """--workers 2 without a scheduler: two threads of this process, one kernel thread each,
    writing their slabs at the planned offsets."""
    ref = tmp_path / "ref.gguf"
    for which in ("dense", "moe", "f16"):
        assert llama.quantize(models[which], ref, recipes.file_type(ft).id) == 0
        ours = tmp_path / f"{which}.gguf"
        with Runner(2) as rn:
            assert rn._pool is not None and rn._client is None and rn.n_slots == 2
            recipes.quantize_model(models[which], ours, ft, runner=rn, backend="numba")
        same_bytes(ours, ref)


def test_threads_hold_a_few_slabs_in_flight(models, tmp_path, small_slabs):
    """On threads the slabs are submitted a few a thread ahead, not all at once: a model's
    hundreds of thousands of slabs would all be futures held here (about 2 KiB each). The bytes
    are those of one worker."""
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    recipes.quantize_model(models["dense"], one, "Q8_0", workers=1)
    with Runner(2) as rn:
        slots = rn.n_slots
        submit, live, most, n = rn._pool.submit, [0], [0], [0]

        def counted(fn, *a):
            fut = submit(fn, *a)
            live[0] += 1
            n[0] += 1
            most[0] = max(most[0], live[0])
            fut.add_done_callback(lambda f: live.__setitem__(0, live[0] - 1))
            return fut
        rn._pool.submit = counted
        recipes.quantize_model(models["dense"], two, "Q8_0", runner=rn)
    assert slots == 2 and n[0] > 40 * slots and most[0] <= 4 * slots, (n[0], most[0])
    same_bytes(two, one)


def ctrl_c_at(count):
    """A progress callback that raises KeyboardInterrupt (Ctrl-C) at the count-th tensor."""
    seen = []

    def progress(tp, i, n):
        seen.append(tp.name)
        if len(seen) == count:
            raise KeyboardInterrupt
    return progress


def test_threads_task_error_and_interrupt_leave_nothing(models, tmp_path, small_slabs):
    import scale_backends
    ours = tmp_path / "ours.gguf"
    with Runner(2) as rn:
        with pytest.raises(InputError, match=r"^tensor '.+' \(rows from \d+\): Q8_0 refused by this backend$"):
            recipes.quantize_model(models["dense"], ours, "Q8_0", runner=rn, backend=scale_backends.FAILING)
        no_leftovers(ours)
        with pytest.raises(KeyboardInterrupt):
            recipes.quantize_model(models["dense"], ours, "Q4_K_M", runner=rn, progress=ctrl_c_at(8))
        no_leftovers(ours)


def test_tasks_run_on_one_kernel_thread():
    """--workers N is N cores' worth of work: a task's Numba kernels run on one thread (or
    --threads), serially and on the worker threads; the caller's own count is left as it was."""
    from refquant.backend import get_backend
    from refquant.pipelines.scale import task_threads
    be = get_backend("numba")
    before = be.get_num_threads()

    def seen(_):
        with task_threads(be):
            return be.get_num_threads()
    for workers, threads, want in ((1, None, 1), (2, None, 1), (2, 2, min(2, be.max_threads()))):
        with Runner(workers, threads=threads) as rn:
            assert set(rn.imap(seen, range(6))) == {want}
            assert {r for _, r in rn.imap_unordered(seen, range(6))} == {want}
        assert be.get_num_threads() == before


def test_local_cluster_with_imatrix(llama, models, cluster, tmp_path, small_slabs):
    from test_recipes_vs_llama_cpp import imatrix_for, imatrix_overrides, normalized
    from refquant.ggml.imatrix import write_imatrix_gguf
    sc = imatrix_for(models["moe"], skip=("token_embd.weight",))
    im = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(im, sc, ["calibration.txt"], chunk_count=7, chunk_size=512)
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    assert llama.quantize(models["moe"], ref, recipes.file_type("Q4_0").id, imatrix=normalized(sc),
                          kv_overrides=imatrix_overrides(im, len(sc), "calibration.txt", 7)) == 0
    recipes.quantize_model(models["moe"], ours, "Q4_0", imatrix=im, runner=cluster, backend="numba")
    same_bytes(ours, ref)


def test_worker_death_is_survived(llama, models, cluster, tmp_path, small_slabs):
    """The first worker that quantizes a slab dies (os._exit) in the middle of the run; the
    scheduler re-runs its tasks on the restarted worker and the file is still llama.cpp's."""
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    marker = tmp_path / "died"
    from scale_backends import set_env
    cluster._client.run(set_env, "REFQUANT_TEST_DIE_MARKER", str(marker))
    assert llama.quantize(models["dense"], ref, recipes.file_type("Q8_0").id) == 0
    recipes.quantize_model(models["dense"], ours, "Q8_0", runner=cluster, backend="scale_backends:DYING")
    assert marker.exists()          # a worker did die
    same_bytes(ours, ref)


def test_task_error_stops_the_run(models, cluster, tmp_path, small_slabs):
    ours = tmp_path / "ours.gguf"
    with pytest.raises(InputError, match=r"^tensor '.+' \(rows from \d+\): Q8_0 refused by this backend$"):
        recipes.quantize_model(models["dense"], ours, "Q8_0", runner=cluster, backend="scale_backends:FAILING")
    no_leftovers(ours)


def test_interrupt_cancels_and_leaves_nothing(models, cluster, tmp_path, small_slabs):
    ours = tmp_path / "ours.gguf"
    with pytest.raises(KeyboardInterrupt):
        recipes.quantize_model(models["dense"], ours, "Q4_K_M", runner=cluster, progress=ctrl_c_at(8))
    no_leftovers(ours)
    deadline = time.time() + 20         # the cancelled tasks leave the cluster
    while cluster._client.processing() and any(cluster._client.processing().values()) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(cluster._client.processing().values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_and_two_workers(llama, models, tmp_path, small_slabs):
    """A real cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1, started and
    stopped here; the client sends tasks, the workers read the input, the client writes."""
    dask = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), NUMBA_NUM_THREADS="1")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--no-dashboard",
                                           "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        deadline = time.time() + 60
        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=max(1, deadline - time.time()))
        ref = tmp_path / "ref.gguf"
        assert llama.quantize(models["moe"], ref, recipes.file_type("Q4_K_M").id) == 0
        ours = tmp_path / "ours.gguf"
        recipes.quantize_model(models["moe"], ours, "Q4_K_M", scheduler=addr, backend="numba")
        same_bytes(ours, ref)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_default_workers_is_every_core(monkeypatch):
    from refquant.pipelines.scale import default_workers
    monkeypatch.delenv("REFQUANT_WORKERS", raising=False)
    assert default_workers() == len(os.sched_getaffinity(0))
    with Runner(None) as rn:        # the command line's default, whatever the input's size
        assert rn.n_slots == default_workers() and rn._client is None
    with Runner(1) as rn:
        assert rn.serial and rn.n_slots == 1
    monkeypatch.setenv("REFQUANT_WORKERS", "3")
    assert default_workers() == 3
    with Runner(None) as rn:
        assert rn.n_slots == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("REFQUANT_WORKERS", bad)
        with pytest.raises(InputError, match="REFQUANT_WORKERS|--workers"):
            default_workers()


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q8_K"])
def test_cli_workers(llama, models, tmp_path, monkeypatch, ftype):
    """`refquant quantize --workers 2`: a llama.cpp file type (against llama.cpp) and a single
    ggml type everywhere (against the same command on one worker)."""
    from refquant.cli import main
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(recipes, "_SLAB_ELEMENTS", 5000)
    monkeypatch.setattr(recipes, "_TASK_ELEMENTS", 12000)
    ours, one = tmp_path / "ours.gguf", tmp_path / "one.gguf"
    assert main(["quantize", str(models["dense"]), str(ours), "--type", ftype, "--workers", "2",
                 "--no-progress"]) == 0
    if ftype in recipes.FILE_TYPES:
        assert llama.quantize(models["dense"], one, recipes.file_type(ftype).id) == 0
    else:
        assert main(["quantize", str(models["dense"]), str(one), "--type", ftype, "--workers", "1",
                     "--no-progress"]) == 0
    same_bytes(ours, one)
    assert main(["quantize", str(models["dense"]), str(tmp_path / "x.gguf"), "--type", ftype,
                 "--workers", "0"]) == 2
    no_leftovers(tmp_path / "x.gguf")


# ------------------------------------------------------------------ Hugging Face checkpoints

@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from hf_checkpoint import smollm2_checkpoint, with_activations
    d = tmp_path_factory.mktemp("hf") / "smollm2-1layer"
    return d, with_activations(d, smollm2_checkpoint(d, n_layers=1))


def same_dirs(a: Path, b: Path):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


@pytest.mark.parametrize("kw", [dict(method="rtn", fmt="gptq"), dict(method="gptq", fmt="compressed-tensors"),
                                dict(method="awq", fmt="awq"), dict(method="rtn", fmt="compressed-tensors",
                                                                    scheme="FP8_DYNAMIC"),
                                dict(method="rtn", fmt="modelopt-fp8"), dict(method="rtn", fmt="fp8-block")],
                         ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_checkpoint_layers_as_tasks(hf_model, cluster, tmp_path, kw):
    """Each linear layer a task on the cluster: the directory written is the one a single process
    writes (whose layouts the loaders read back: tests/test_layouts_*.py)."""
    from refquant.pipelines.hf_quantize import quantize_checkpoint
    d, adir = hf_model
    kw = dict(kw)
    method, fmt = kw.pop("method"), kw.pop("fmt")
    acts = adir if method != "rtn" or fmt.startswith("modelopt-") else None
    bits = 8 if fmt.startswith("modelopt-fp8") or fmt == "fp8-block" else 4
    quantize_checkpoint(d, tmp_path / "one", method, bits, 64, fmt, acts, **kw)
    quantize_checkpoint(d, tmp_path / "two", method, bits, 64, fmt, acts, runner=cluster, **kw)
    same_dirs(tmp_path / "one", tmp_path / "two")


RTN_LAYOUTS = [dict(fmt="gptq"), dict(fmt="gptq_v2"), dict(fmt="awq"), dict(fmt="awq-gemv"),
               dict(fmt="compressed-tensors"), dict(fmt="compressed-tensors", scheme="FP8_DYNAMIC"),
               dict(fmt="compressed-tensors", scheme="W8A8"), dict(fmt="compressed-tensors", scheme="NVFP4"),
               dict(fmt="modelopt-fp8"), dict(fmt="modelopt-nvfp4"), dict(fmt="fp8-block"), dict(fmt="nvfp4")]
GPTQ_LAYOUTS = [dict(method="gptq", fmt="gptq"), dict(method="gptq", fmt="gptq_v2"), dict(method="gptq", fmt="awq"),
                dict(method="gptq", fmt="compressed-tensors"),
                dict(method="gptq", fmt="compressed-tensors", scheme="W4A16_ASYM")]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A llama-shaped BF16 checkpoint of two small layers (a tied-off lm_head, biases, norms),
    with calibration activations for every linear layer."""
    import json
    import ml_dtypes
    from refquant.io.safetensors import save_checkpoint
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    h, ff, vocab = 128, 256, 96
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                       p + "self_attn.k_proj.weight": (h // 2, h), p + "self_attn.v_proj.weight": (h // 2, h),
                       p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (ff, h),
                       p + "mlp.up_proj.weight": (ff, h), p + "mlp.down_proj.weight": (h, ff)})
    # rows that no block of 256 divides: a task quantizes them in chunks and a last partial one
    shapes["model.layers.1.mlp.gate_proj.weight"] = (1000, h)
    shapes["model.layers.1.mlp.up_proj.weight"] = (1000, h)
    shapes["model.layers.1.mlp.down_proj.weight"] = (h, 1024)
    t = {k: (rng.standard_normal(s) * 0.05).astype(ml_dtypes.bfloat16) for k, s in shapes.items()}
    save_checkpoint(d / "model", t, extra_files={"config.json": json.dumps({"model_type": "llama"})})
    acts = d / "acts"
    acts.mkdir()
    for k, s in shapes.items():
        if k.endswith("proj.weight"):
            np.save(acts / f"{k[:-len('.weight')]}.npy", rng.standard_normal((16, s[1])).astype(np.float32))
    return d / "model", acts


@pytest.mark.parametrize("kw", RTN_LAYOUTS + GPTQ_LAYOUTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_checkpoint_planned_at_offsets(tiny_checkpoint, tmp_path, monkeypatch, kw):
    """Round to nearest, every layout, and GPTQ on --activations: the shards' headers are planned
    first, the layers written at their offsets by two worker threads, or by the client in a
    random completion order; the directory (several shards and their index here) is the one the
    whole-in-memory writer (save_checkpoint) writes."""
    from refquant.pipelines import hf_quantize
    from refquant.pipelines.hf_quantize import quantize_checkpoint
    d, adir = tiny_checkpoint
    kw = dict(kw)
    method, fmt = kw.pop("method", "rtn"), kw.pop("fmt")
    scheme = kw.get("scheme")
    acts = adir if method == "gptq" or fmt.startswith("modelopt-") or scheme in ("W8A8", "NVFP4") else None
    bits = 8 if fmt in ("modelopt-fp8", "fp8-block") else 4
    opts = dict(max_shard_bytes=40 << 10, **kw)
    monkeypatch.setattr(hf_quantize, "PLANNED", False)
    quantize_checkpoint(d, tmp_path / "whole", method, bits, 64, fmt, acts, **opts)
    monkeypatch.setattr(hf_quantize, "PLANNED", True)
    with Runner(2) as rn:
        quantize_checkpoint(d, tmp_path / "threads", method, bits, 64, fmt, acts, runner=rn, **opts)
    quantize_checkpoint(d, tmp_path / "client", method, bits, 64, fmt, acts, runner=Shuffled(0), **opts)
    assert (tmp_path / "whole" / "model.safetensors.index.json").exists()
    same_dirs(tmp_path / "whole", tmp_path / "threads")
    same_dirs(tmp_path / "whole", tmp_path / "client")


def test_checkpoint_planned_error_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from refquant.pipelines import hf_quantize
    d, _ = tiny_checkpoint
    real = hf_quantize.quantize_linear
    calls = []

    def failing(job):
        calls.append(job["module"])
        if len(calls) > 2:              # a task's: the plan quantizes nothing, the shards exist
            raise InputError("refused")
        return real(job)
    monkeypatch.setattr(hf_quantize, "quantize_linear", failing)
    with Runner(2) as rn, pytest.raises(InputError, match="^refused$"):
        hf_quantize.quantize_checkpoint(d, tmp_path / "out", "rtn", 4, 64, "gptq", runner=rn)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_checkpoint_planned_gptq_error_leaves_nothing(tiny_checkpoint, tmp_path):
    """GPTQ's plan needs no activations (round to nearest's shapes): a layer whose activations
    hold a NaN fails in the second pass, with gptq's message, after the shards exist."""
    d, adir = tiny_checkpoint
    acts = tmp_path / "acts"
    shutil.copytree(adir, acts)
    x = np.load(acts / "model.layers.1.mlp.down_proj.npy")
    x[3, 5] = np.nan
    np.save(acts / "model.layers.1.mlp.down_proj.npy", x)
    from refquant.pipelines.hf_quantize import quantize_checkpoint
    with Runner(2) as rn, pytest.raises(InputError, match=r"^quantize: layer model\.layers\.1\.mlp\.down_proj "
                                                       r"\(activations .*model\.layers\.1\.mlp\.down_proj\.npy\): "
                                                       r"gptq: activations have non-finite values$"):
        quantize_checkpoint(d, tmp_path / "out", "gptq", 4, 64, "gptq", acts, runner=rn)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts"]


def test_calibrated_block_layers_as_tasks(cluster, tmp_path_factory, tmp_path):
    """--calibration: blocks in order, a block's linear layers in parallel; same directory."""
    from refquant.model.convert import gguf_to_safetensors
    from refquant.pipelines.hf_quantize import quantize_checkpoint
    from tools.models import botchan_path, smollm2_path
    d = tmp_path_factory.mktemp("calib") / "hf"
    gguf_to_safetensors(smollm2_path(), d, n_layers=2)
    text = botchan_path().read_bytes()[:3000].decode("utf-8", "ignore")
    for method in ("gptq", "smoothquant"):
        bits, g = (4, 64) if method == "gptq" else (8, -1)
        fmt = "gptq" if method == "gptq" else "compressed-tensors"
        quantize_checkpoint(d, tmp_path / f"one-{method}", method, bits, g, fmt, calibration=text, ctx=64,
                            calibration_tokens=256)
        quantize_checkpoint(d, tmp_path / f"two-{method}", method, bits, g, fmt, calibration=text, ctx=64,
                            calibration_tokens=256, runner=cluster)
        same_dirs(tmp_path / f"one-{method}", tmp_path / f"two-{method}")


# ------------------------------------------------------------------ the conformance suite

@pytest.mark.parametrize("backend", ["numba", "scale_backends:BROKEN"])
def test_conformance_on_the_cluster_prints_the_local_matrix(cluster, backend):
    from refquant.conformance.suite import run
    from refquant.pipelines.scale import conformance
    kw = dict(formats=["Q4_0", "Q8_0"], checks=["quantize", "dequantize"], max_examples=5)
    local = run(backend, **kw)
    spread = conformance(cluster, backend, shards=5, **kw)
    assert spread.matrix() == local.matrix()
    assert local.ok == (backend == "numba")


def test_workers_get_one_kernel_thread_and_this_process_keeps_its_environment(cluster):
    """Each worker runs Numba on one thread; the nannies' environment variables (which Dask
    writes into the process that starts them) do not stay in this process, where a changed
    NUMBA_NUM_THREADS would break Numba's running thread pool."""
    from scale_backends import get_env
    for v in cluster._client.run(get_env, "NUMBA_NUM_THREADS").values():
        assert v == "1"
    for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert os.environ.get(k) == ENV_BEFORE.get(k), k


ENV_BEFORE = dict(os.environ)


CHUNKED_LAYOUTS = RTN_LAYOUTS + [
    dict(fmt="gptq", bits=8), dict(fmt="awq", sym=True),
    dict(fmt="compressed-tensors", scheme="W4A16_ASYM"), dict(fmt="compressed-tensors", scheme="FP8_BLOCK"),
    dict(fmt="compressed-tensors", scheme="NVFP4A16"), dict(fmt="compressed-tensors", scheme="MXFP6A16"),
    dict(fmt="compressed-tensors", scheme="MXFP8"), dict(fmt="compressed-tensors", scheme="FP8")]


@pytest.mark.parametrize("kw", CHUNKED_LAYOUTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_checkpoint_layer_in_row_chunks(tiny_checkpoint, tmp_path, monkeypatch, kw):
    """A layer's task quantizes 128 output rows at a time (its 1000-row layers in 7 chunks and
    one of 104 rows, no quantize call on all 1000 rows, none for the plan) and its tensors are the
    whole layer's, byte for byte, written by worker threads and by the client (FP8's and NVFP4's
    per-tensor scales from a pass over the whole layer first)."""
    from refquant.pipelines import hf_quantize
    from refquant.pipelines.hf_quantize import preset_needs_inputs, quantize_checkpoint
    d, adir = tiny_checkpoint
    kw = dict(kw)
    fmt = kw.pop("fmt")
    bits = kw.pop("bits", 8 if fmt in ("modelopt-fp8", "fp8-block") else 4)
    scheme = kw.get("scheme")
    acts = adir if fmt.startswith("modelopt-") or (scheme and preset_needs_inputs(scheme)) else None
    opts = dict(max_shard_bytes=40 << 10, **kw)
    monkeypatch.setattr(hf_quantize, "PLANNED", False)
    quantize_checkpoint(d, tmp_path / "whole", "rtn", bits, 64, fmt, acts, **opts)
    monkeypatch.setattr(hf_quantize, "PLANNED", True)
    monkeypatch.setattr(hf_quantize, "CHUNK_ROWS", 128)
    rows, real = [], hf_quantize.quantize_linear
    monkeypatch.setattr(hf_quantize, "quantize_linear", lambda job: rows.append(job["w"].shape[0]) or real(job))
    quantize_checkpoint(d, tmp_path / "client", "rtn", bits, 64, fmt, acts, runner=Shuffled(1), **opts)
    with Runner(2) as rn:
        quantize_checkpoint(d, tmp_path / "threads", "rtn", bits, 64, fmt, acts, runner=rn, **opts)
    same_dirs(tmp_path / "whole", tmp_path / "client")
    same_dirs(tmp_path / "whole", tmp_path / "threads")
    assert 1000 not in rows and rows.count(104) == 2 * 2          # gate/up, two runs: the last chunk
    assert set(rows) == {64, 128, 104}          # and nothing else: the plan quantizes no rows (shape rules)


@pytest.mark.parametrize("fmt,scheme", [("compressed-tensors", "FP8"), ("nvfp4", None), ("gptq", None)])
def test_row_chunks_refuse_a_nan_as_the_whole_layer(tmp_path, fmt, scheme):
    """A NaN in a layer's 551st row: the chunked task fails with the whole layer's message (its
    row as the layer's, not as a chunk's)."""
    import ml_dtypes
    from refquant.pipelines import hf_quantize as hq
    w = (np.random.default_rng(0).standard_normal((600, 64)) * 0.05).astype(ml_dtypes.bfloat16)
    w[550, 3] = np.nan
    (tmp_path / "w").write_bytes(w.tobytes())
    job = dict(module="m", w=hq.Source(tmp_path / "w", 0, w.dtype, w.shape), fmt=fmt, method="rtn", bits=4,
               group_size=64, sym=True, scheme=scheme, x=None, xa=None, w_amax=None, x_amax=None, blas=None)
    with pytest.raises(InputError) as whole:
        hq.quantize_linear(job)
    with pytest.raises(InputError) as chunked:
        hq.quantize_chunked(job)
    assert str(chunked.value) == str(whole.value)
    assert fmt == "gptq" or "row 550" in str(chunked.value)
