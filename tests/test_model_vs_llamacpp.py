"""The NumPy forward, tokenizer and perplexity against llama.cpp (llama-cpp-python) on real
models: SmolLM2-135M (llama, Q4_1) and Gemma-3-270M (gemma3, Q4_K_M), on Botchan.

The logit and perplexity bounds are the ones spec/model.md derives: with llama.cpp's numerics
reproduced (every elementwise operation bit for bit, tests/test_model_ops_vs_llamacpp.py), this
forward and llama.cpp differ only in the summation order of their matrix products, so each lies
about as far from R, the same forward with those sums taken in float64, and their distance is at
most twice this forward's distance from R."""
import os

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from refquant.io.gguf import GGUFFile
from refquant.model import Model
from refquant.model.weights import Weights
from refquant.model.perplexity import perplexity
from refquant.model.tokenizer import PRE_TOKENIZERS, Tokenizer
from tools.models import botchan_path, gemma3_path, llama_cpp_vocab_dir, smollm2_path

MODELS = {"smollm2": smollm2_path, "gemma3": gemma3_path}


@pytest.fixture(scope="module")
def botchan():
    return botchan_path().read_bytes().decode("utf-8")   # as llama-perplexity reads it


def _llama(path, n_ctx=128, vocab_only=False):
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                           vocab_only=vocab_only, n_threads=2)


@pytest.mark.parametrize("name", MODELS)
def test_tokenizer_on_botchan(name, botchan):
    path = MODELS[name]()
    tk = Tokenizer.from_gguf(path)
    llm = _llama(path, vocab_only=True)
    lines = botchan.splitlines(keepends=True)
    for i in range(0, 600, 20):
        s = "".join(lines[i:i + 20])
        assert tk.encode(s) == llm.tokenize(s.encode(), add_bos=True, special=False), s[:80]
    whole = "".join(lines[:600])
    assert tk.encode(whole) == llm.tokenize(whole.encode(), add_bos=True, special=False)


VOCAB_DIR = str(llama_cpp_vocab_dir())


# Every vocabulary in llama.cpp's test set whose type (gpt2 BPE, llama SPM) and pre-tokenizer
# refquant supports (listed by name: reading each file's metadata at collection is slow).
SUPPORTED_VOCABS = ["command-r", "falcon", "gpt-2", "llama-bpe", "llama-spm", "mpt", "phi-3",
                    "qwen2", "refact", "starcoder"]


def _vocab_files():
    return [os.path.join(VOCAB_DIR, f"ggml-vocab-{v}.gguf") for v in SUPPORTED_VOCABS]


@pytest.mark.parametrize("path", _vocab_files(), ids=os.path.basename)
def test_tokenizer_vocab_pairs(path):
    with GGUFFile(path) as f:
        md = f.metadata
    assert md["tokenizer.ggml.model"] == "llama" or md["tokenizer.ggml.pre"] in PRE_TOKENIZERS
    tk = Tokenizer(md)
    inp = open(path + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    out = open(path + ".out", encoding="utf-8").read().split("\n")
    for s, o in zip(inp, out):
        assert tk.encode(s, add_special=False) == [int(x) for x in o.split()], repr(s)


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory):
    """SmolLM2 with every weight decoded to F32 (llama.cpp's own dequantization, spec/model.md)."""
    from refquant.pipelines.recipes import dequantize_model
    out = tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf"
    dequantize_model(smollm2_path(), out, "F32")
    return out


def _mean_abs(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).mean())


@pytest.mark.parametrize("name,n", [("smollm2-f32", 48), ("smollm2", 48), ("gemma3", 24)])
def test_logits_within_summation_order_bound(name, n, botchan, request):
    """mean|ours - llama.cpp| <= 2 mean|ours - R| (spec/model.md): R is this forward with every
    linear layer's sums taken in float64, so ours and llama.cpp differ from it only by their
    summation orders."""
    path = request.getfixturevalue("smollm2_f32") if name == "smollm2-f32" else MODELS[name]()
    tk = Tokenizer.from_gguf(path)
    toks = tk.encode(botchan[:2000])[:n]
    llm = _llama(path, n_ctx=64)
    llm.eval(toks)
    ref = np.array(llm.scores[:len(toks)], dtype=np.float32)
    ours = Model.from_gguf(path, llamacpp_numerics=True).forward(toks)
    R = Model(Weights.from_gguf(path, accumulate=np.float64), llamacpp_numerics=True).forward(toks)
    assert _mean_abs(ours, ref) <= 2 * _mean_abs(ours, R)


def test_perplexity_within_logit_bound(botchan):
    """|log PPL_ours - log PPL_llama.cpp| <= 2 mean_t max_v |Δlogit_t,v| (spec/model.md): each
    token's -log p moves by at most twice the largest change of its position's logits."""
    path = smollm2_path()
    tk = Tokenizer.from_gguf(path)
    toks = tk.encode(botchan[:3000])
    n_ctx = 64
    first = n_ctx // 2
    llm = _llama(path, n_ctx=n_ctx)
    scored = {"llama": [], "ours": []}

    def recording(key, f):
        def g(t):
            y = np.asarray(f(t), dtype=np.float32)
            scored[key].append(y[first:n_ctx - 1])
            return y
        return g

    def lf(t):
        llm.reset()
        llm.eval(t)
        return np.array(llm.scores[:len(t)])
    bos = tk.bos if tk.add_bos else None
    ref = perplexity(recording("llama", lf), toks, n_ctx, bos, 2)
    ours = perplexity(recording("ours", Model.from_gguf(path, llamacpp_numerics=True).forward), toks, n_ctx, bos, 2)
    assert ref.n_tokens == ours.n_tokens == 2 * (n_ctx - 1 - n_ctx // 2)
    d = np.abs(np.concatenate(scored["ours"]).astype(np.float64) - np.concatenate(scored["llama"]))
    assert abs(np.log(ours.ppl) - np.log(ref.ppl)) <= 2 * d.max(axis=-1).mean()
