"""`refquant perplexity` and `refquant imatrix` against llama.cpp's own tools, `llama-perplexity`
and `llama-imatrix`, on SmolLM2-135M Q4_1 and Botchan (4 chunks of 128 tokens).

The tools are not part of any Python package: they are built by hand from the llama.cpp sources
vendored in the llama-cpp-python 0.3.36 sdist (spec/model.md, "Against llama.cpp's tools"):

    cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF
    cmake --build build --target llama-perplexity llama-imatrix

(GGML_NATIVE=OFF gives an AVX2 build; a native one serves as well, the test reads which)

and named by the environment variables LLAMA_PERPLEXITY and LLAMA_IMATRIX. Without them (CI)
these tests skip.

The bounds are the ones spec/model.md derives for the logits: with llama.cpp's numerics
reproduced (every elementwise operation bit for bit, with the vector expf of the ISA the tool was
built for, read from its system_info line), this forward and llama.cpp differ only in the
summation order of their matrix products. R is the same forward with every linear layer's sums
taken in float64; llama.cpp's distance from R being no larger than this forward's (measured), the
triangle inequality gives |ours - llama.cpp| <= 2 |ours - R| for any quantity computed from the
forward: the perplexity, and each imatrix tensor's sums of squares.
"""
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from refquant.cli import main
from refquant.io.gguf import GGUFFile
from refquant.model import Model, Weights
from refquant.model.imatrix import collect_imatrix
from refquant.model.tokenizer import Tokenizer
from tools.models import botchan_path, smollm2_path

N_CTX, N_CHUNKS = 128, 4
BUILT_BY_HAND = ("built by hand from the llama-cpp-python 0.3.36 sdist (cmake -S vendor/llama.cpp -B build; "
                 "cmake --build build --target llama-perplexity llama-imatrix), so CI skips this")


def _tool(var):
    exe = os.environ.get(var)
    return exe if exe and Path(exe).is_file() else None


needs_perplexity = pytest.mark.skipif(
    _tool("LLAMA_PERPLEXITY") is None,
    reason=f"set LLAMA_PERPLEXITY to a llama-perplexity binary {BUILT_BY_HAND}")
needs_imatrix = pytest.mark.skipif(
    _tool("LLAMA_IMATRIX") is None,
    reason=f"set LLAMA_IMATRIX to a llama-imatrix binary {BUILT_BY_HAND}")


def _run(args):
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def _isa(log: str) -> str:
    """Which ggml_v_expf the tool's build runs: its system_info line lists AVX512 when built for it."""
    info = re.search(r"system_info:.*", log).group(0)
    return "avx512" if re.search(r"AVX512 = 1", info) else "avx2"


def _common():
    # -fa off: the tools' default (auto) takes ggml's flash-attention kernel on the CPU, which
    # accumulates softmax(qk) v in F16 (online softmax); this forward reproduces the separate
    # KQ, softmax and KQV products llama.cpp builds without it (llama-cpp-python's default)
    return ["-m", str(smollm2_path()), "-f", str(botchan_path()), "-c", str(N_CTX), "--chunks", str(N_CHUNKS),
            "-t", "1", "-b", str(N_CTX), "-fa", "off"]


_R = {}


def _reference(isa):
    """R: the forward with float64 sums in every linear layer (llama.cpp's numerics otherwise),
    its perplexity and importance matrix on the same chunks; computed once per ISA."""
    if isa not in _R:
        from refquant.model.imatrix import ImatrixCollector
        from refquant.model.perplexity import perplexity
        path = smollm2_path()
        tk = Tokenizer.from_gguf(path)
        toks = tk.encode(botchan_path().read_bytes().decode("utf-8"))
        bos = int(tk.bos) if tk.add_bos and tk.bos is not None else None
        m = Model(Weights.from_gguf(path, accumulate=np.float64), llamacpp_numerics=True, isa=isa)
        col = ImatrixCollector()
        m.w.hooks["imatrix"] = col
        r = perplexity(m.forward, toks, N_CTX, bos, N_CHUNKS)
        _R[isa] = (r, col, toks)
    return _R[isa]


def _parse_ppl(log):
    chunks = [float(v) for v in re.findall(r"\[\d+\]([0-9]+\.[0-9]+)", log)]
    final = float(re.search(r"PPL = ([0-9.]+)", log).group(1))
    return chunks, final


@needs_perplexity
def test_perplexity_vs_llama_perplexity(tmp_path, capsys):
    base = tmp_path / "smollm2.kld"
    log = _run([_tool("LLAMA_PERPLEXITY"), *_common(), "--kl-divergence-base", str(base)])
    isa = _isa(log)
    tool_chunks, tool_ppl = _parse_ppl(log)
    n_chunk = int(re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", log).group(1))
    assert n_chunk == N_CHUNKS and len(tool_chunks) == N_CHUNKS and tool_chunks[-1] == tool_ppl

    # the tokens the tool evaluated, as its --kl-divergence-base file records them
    raw = base.read_bytes()
    assert raw[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk_file = np.frombuffer(raw[8:20], "<i4")
    assert (n_ctx, n_chunk_file) == (N_CTX, N_CHUNKS)
    tool_tokens = np.frombuffer(raw[20:20 + 4 * N_CTX * N_CHUNKS], "<i4")

    assert main(["perplexity", str(smollm2_path()), "--text", str(botchan_path()), "--ctx", str(N_CTX),
                 "--chunks", str(N_CHUNKS), "--llamacpp-numerics", "--isa", isa]) == 0
    out = capsys.readouterr().out
    ours_chunks, ours_ppl = _parse_ppl(out)
    n_scored = int(re.search(r"\((\d+) scored tokens\)", out).group(1))

    R, _, toks = _reference(isa)
    assert list(tool_tokens) == toks[:N_CTX * N_CHUNKS]
    assert n_scored == R.n_tokens == n_chunk * (N_CTX - 1 - N_CTX // 2)
    # the printed values carry 4 decimals: R's are rounded the same way. Each chunk's running
    # perplexity is a function of the forward too, so the bound holds for each.
    assert ours_chunks[-1] == ours_ppl
    for o, t, r in zip(ours_chunks, tool_chunks, R.chunk_ppl):
        assert abs(o - t) <= 2 * abs(o - round(r, 4)) + 1e-4, (ours_chunks, tool_chunks, R.chunk_ppl)


def _read_imatrix(path):
    out = {}
    with GGUFFile(path) as f:
        for t in f.tensors:
            if t.name.endswith(".in_sum2"):
                w = t.name[:-len(".in_sum2")]
                s = np.asarray(f.raw(t.name)).reshape(-1).view("<f4")
                c = np.asarray(f.raw(w + ".counts")).reshape(-1).view("<f4")
                out[w] = (s.astype(np.float32), c.astype(np.float32))
        md = f.metadata
    return out, md


@needs_imatrix
def test_imatrix_vs_llama_imatrix(tmp_path):
    ref_path, ours_path = tmp_path / "tool.gguf", tmp_path / "ours.gguf"
    log = _run([_tool("LLAMA_IMATRIX"), *_common(), "-o", str(ref_path), "--no-ppl"])
    isa = _isa(log)
    assert main(["imatrix", str(smollm2_path()), "--text", str(botchan_path()), "-o", str(ours_path),
                 "--ctx", str(N_CTX), "--chunks", str(N_CHUNKS), "--llamacpp-numerics", "--isa", isa]) == 0
    tool, tool_md = _read_imatrix(ref_path)
    ours, ours_md = _read_imatrix(ours_path)
    _, R, _ = _reference(isa)

    for k in ("imatrix.chunk_count", "imatrix.chunk_size"):
        assert int(ours_md[k]) == int(tool_md[k]), k
    assert sorted(ours) == sorted(tool)
    for name in tool:
        assert np.array_equal(ours[name][1], tool[name][1]), name        # rows seen, exactly
        assert ours[name][1][0] == R.counts[name]
    # layer 0's q, k and v see the normalised embeddings: no matrix product upstream, so the
    # sums are llama.cpp's bit for bit
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        assert np.array_equal(ours[name][0], tool[name][0]), name
    # elsewhere the summation-order bound, tensor by tensor: sum |Δ in_sum2| against llama.cpp
    # at most twice that against R
    for name in tool:
        s_ours = ours[name][0].astype(np.float64)
        d_tool = np.abs(s_ours - tool[name][0]).sum()
        d_R = np.abs(s_ours - R.sums[name]).sum()
        assert d_tool <= 2 * d_R, (name, d_tool / np.abs(s_ours).sum(), d_R / np.abs(s_ours).sum())
