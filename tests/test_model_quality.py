"""The quality table (`refquant eval`, refquant.pipelines.quality) against independent computations:
the Q8_0 row against llama.cpp's own Q8_0 file (llama_model_quantize) scored by
`refquant.model.perplexity`, its bits per weight against that file's tensor sizes as gguf-py
reads them, and the RTN row's bytes against the GPTQ checkpoint layout's arithmetic."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refquant.cli import main
from refquant.pipelines import recipes
from tools.models import botchan_path, smollm2_path

CTX, CHUNKS = 64, 2
# The table and the independent forwards below run NumPy's BLAS on one thread: OpenBLAS's sums
# differ with its thread count, and `refquant eval`'s default count follows the load average
# (refquant/model/threads.py), so only a stated count makes the two comparable bit for bit.
THREADS = 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    base = d / "smol-F32.gguf"
    recipes.dequantize_model(smollm2_path(), base, "F32")
    text = d / "botchan.txt"
    text.write_bytes(botchan_path().read_bytes())
    args = ["eval", str(base), "--text", str(text), "--ctx", str(CTX), "--chunks", str(CHUNKS), "--rows", "Q8_0,RTN-W4G128",
            "--threads", str(THREADS), "--json", str(d / "q.json"), "--markdown", str(d / "q.md"), "--quiet"]
    try:
        import matplotlib  # noqa: F401  (the test extra installs it)
        args += ["--png", str(d / "q.png")]
    except ImportError:
        pass
    assert main(args) == 0
    return d, base, text, json.loads((d / "q.json").read_text())


def test_q8_0_row_is_llama_cpp_q8_0_file(run, tmp_path):
    from refquant.model.perplexity import model_perplexity
    from refquant.model.threads import blas_threads
    from tools.oracles import llama_cpp
    d, base, text, table = run
    rows = {r["name"]: r for r in table["rows"]}
    ref = tmp_path / "llama-Q8_0.gguf"
    assert llama_cpp.quantize(base, ref, recipes.file_type("Q8_0").id) == 0
    with blas_threads(THREADS):
        r = model_perplexity(ref, text.read_bytes().decode("utf-8"), CTX, CHUNKS, base_path=base)
    q8 = rows["Q8_0"]
    assert q8["ppl"] == r.ppl and q8["kld"] == r.kld and q8["top1"] == r.top1
    with blas_threads(THREADS):
        b = model_perplexity(base, text.read_bytes().decode("utf-8"), CTX, CHUNKS)
    assert rows["F32 (base)"]["ppl"] == b.ppl
    assert q8["delta_pct"] == pytest.approx(100 * (r.ppl / b.ppl - 1), rel=1e-12)

    import gguf
    rd = gguf.GGUFReader(str(ref))
    nbytes = sum(int(t.n_bytes) for t in rd.tensors)
    nel = sum(int(t.n_elements) for t in rd.tensors)
    assert (q8["n_bytes"], q8["n_weights"]) == (nbytes, nel)
    assert q8["bpw"] == 8 * nbytes / nel
    # the file is its header, then each tensor's bytes padded to 32
    assert ref.stat().st_size == rd.data_offset + sum(-(-int(t.n_bytes) // 32) * 32 for t in rd.tensors)


def test_rtn_row_bytes_are_the_gptq_layout(run):
    import gguf
    d, base, text, table = run
    rtn = next(r for r in table["rows"] if r["name"] == "RTN-W4G128")
    total = 0
    for t in gguf.GGUFReader(str(base)).tensors:
        shape = [int(v) for v in t.shape]        # gguf-py: ne order, (K, N) for a matrix
        if t.name.startswith("blk.") and len(shape) == 2:
            K, N = shape
            g = 128 if K % 128 == 0 else 64
            G = K // g
            # qweight int32 (K/8, N), qzeros int32 (G, N/8), scales float16 (G, N), g_idx int32 (K,)
            total += 4 * (K // 8) * N + 4 * G * (N // 8) + 2 * G * N + 4 * K
        elif t.name == "token_embd.weight":
            total += 2 * int(np.prod(shape))
        else:
            total += 4 * int(np.prod(shape))
    assert rtn["n_bytes"] == total
    assert rtn["bpw"] == 8 * total / rtn["n_weights"]
    # more bits, closer to the base
    q8 = next(r for r in table["rows"] if r["name"] == "Q8_0")
    assert q8["kld"] < rtn["kld"]


def test_outputs_written(run):
    d, base, text, table = run
    md = (d / "q.md").read_text()
    assert "| Q8_0 |" in md and "| RTN-W4G128 |" in md and "F32 (base)" in md
    if (d / "q.png").exists():
        assert (d / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_bad_row(tmp_path, capsys):
    assert main(["eval", str(smollm2_path()), "--text", str(botchan_path()), "--rows", "Q9_9", "--quiet"]) == 2
    assert "unknown row 'Q9_9'" in capsys.readouterr().err


def test_linear_runs_the_backend_matmul_on_the_codes(run):
    """With matmul_backend, a W4A16 / FP8 linear layer's product is the backend's refquant.gemm
    matmul on the codes: within gemm's bound of the exact product of the decoded operands."""
    pytest.importorskip("numba")
    from refquant_backends.numba.gemm import accumulation

    from refquant.conformance.suite import check
    from refquant.model import Model
    from refquant.pipelines.quality import capture_inputs, linear_model
    d, base, text, table = run
    m = Model.from_gguf(base)
    cap = capture_inputs(m, list(range(100, 164)), 32, None)
    import refquant
    nb = refquant.get_backend("refquant_backends.numba:NumbaBackend")
    for method, name in (("RTN-W4G128", "blk.3.ffn_down.weight"), ("FP8", "blk.5.attn_q.weight")):
        plain, _ = linear_model(m.w, method, None)
        x = cap.inputs(name)
        # without a backend: BLAS on the decoded weight
        np.testing.assert_array_equal(plain.linear(name)(x), x @ plain.dequantize(name).T)
        w = plain.with_tensors({}, plain.encoded, nb)
        scheme, enc = w.encoded[name]
        y = w.linear(name)(x)
        np.testing.assert_array_equal(y, nb.matmul(scheme, x, enc))
        check(nb, "matmul", scheme, {"a": x, "weight": enc, "options": {}},
              accumulation=accumulation("matmul", scheme, x.shape[1], enc))
        # the encoded weight is the one the plain forward decodes (GPTQ's loader rounds
        # scale * (code - zero), computed in float32, to F16; the W4A16 matmul does not)
        if scheme == "FP8":
            want = refquant.gemm.dequantize_fp8(enc).astype(np.float32)
        else:
            want = refquant.gemm.dequantize_w4a16(enc).astype(np.float32).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(plain.dequantize(name), want)
