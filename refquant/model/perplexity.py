"""Perplexity as llama.cpp's `llama-perplexity` computes it (tools/perplexity/perplexity.cpp),
and the KL divergence and top-1 agreement of a model's predictions against a base model's.

1. The whole text is tokenized once, BOS first when the vocabulary asks for it.
2. It is cut into n_chunk = len(tokens) // n_ctx chunks of n_ctx tokens (at most `n_chunks`);
   the rest is dropped. Fewer than 2 * n_ctx tokens is an error, as in llama-perplexity.
3. Each chunk is evaluated on its own from position 0; when the vocabulary adds BOS, the chunk's
   first token is replaced by BOS for the evaluation.
4. Only the second half is scored: for j = n_ctx/2 .. n_ctx-2, the negative log-probability
   (log-softmax in double) of token j+1 given the logits at j; n_ctx - 1 - n_ctx/2 per chunk.
5. PPL = exp(mean NLL) over every scored token.

With a base model (`base`), each scored position also gives KL(p_base || p) =
sum p_base (log p_base - log p) and whether both argmaxes agree, averaged over the positions
(llama-perplexity's --kl-divergence reports the same two means).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    n_tokens: int
    n_chunks: int
    chunk_ppl: list
    kld: float | None = None
    top1: float | None = None

    def __str__(self):
        s = f"PPL = {self.ppl:.4f} over {self.n_chunks} chunks ({self.n_tokens} scored tokens)"
        if self.kld is not None:
            s += f"\nmean KLD = {self.kld:.6f}\nsame top-1 = {100 * self.top1:.3f}%"
        return s


def chunks(tokens, n_ctx: int, n_chunks: int | None = None):
    tokens = list(tokens)
    if n_ctx < 4:
        raise InputError(f"context {n_ctx} is too small (at least 4)")
    if len(tokens) < 2 * n_ctx:
        raise InputError(f"need at least {2 * n_ctx} tokens for a context of {n_ctx}; the text has {len(tokens)}")
    n = len(tokens) // n_ctx
    if n_chunks is not None and n_chunks > 0:
        n = min(n, n_chunks)
    return [tokens[i * n_ctx:(i + 1) * n_ctx] for i in range(n)]


def perplexity(forward, tokens, n_ctx: int, bos: int | None, n_chunks: int | None = None,
               base_forward=None, progress=None) -> PerplexityResult:
    """forward(chunk tokens) -> logits (n_ctx, n_vocab). bos: the BOS id when the vocabulary
    adds one (it replaces each chunk's first token), else None."""
    first = n_ctx // 2
    nll, count, kld, same = 0.0, 0, 0.0, 0
    chunk_ppl = []
    parts = chunks(tokens, n_ctx, n_chunks)
    for chunk in parts:
        inp = list(chunk)
        if bos is not None:
            inp[0] = bos
        lp = log_softmax(forward(inp)[first:n_ctx - 1])
        target = np.asarray(chunk[first + 1:n_ctx])
        nll += float(-lp[np.arange(len(target)), target].sum())
        count += len(target)
        chunk_ppl.append(float(np.exp(nll / count)))
        if base_forward is not None:
            blp = log_softmax(base_forward(inp)[first:n_ctx - 1])
            kld += float((np.exp(blp) * (blp - lp)).sum())
            same += int((blp.argmax(-1) == lp.argmax(-1)).sum())
        if progress:
            progress()
    r = PerplexityResult(float(np.exp(nll / count)), nll / count, count, len(parts), chunk_ppl)
    if base_forward is not None:
        r.kld, r.top1 = kld / count, same / count
    return r


def model_perplexity(model_path, text: str, n_ctx: int, n_chunks: int | None = None,
                     base_path=None, llamacpp_numerics: bool = False, dtype=np.float32,
                     progress=None, isa: str | None = None) -> PerplexityResult:
    """isa: whose ggml_v_expf llama.cpp's numerics reproduce ('avx512' or 'avx2',
    refquant.model.ggml_cpu); default this machine's, as a native build of llama.cpp would use."""
    from .forward import Model
    from .tokenizer import Tokenizer
    from .weights import Weights
    if isa not in (None, "avx512", "avx2"):
        raise InputError(f"isa must be 'avx512' or 'avx2', not {isa!r}")
    tk = Tokenizer.from_gguf(model_path)
    tokens = tk.encode(text)
    m = Model(Weights.from_gguf(model_path, dtype=dtype), llamacpp_numerics, isa)
    base = None
    if base_path is not None:
        b = Model.from_gguf(base_path, dtype=dtype)
        if b.cfg.n_vocab != m.cfg.n_vocab:
            raise InputError(f"the base model's vocabulary ({b.cfg.n_vocab}) differs from the model's ({m.cfg.n_vocab})")
        base = b.forward
    bos = int(tk.bos) if tk.add_bos and tk.bos is not None else None
    return perplexity(m.forward, tokens, n_ctx, bos, n_chunks, base, progress)
