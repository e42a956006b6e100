"""Calibration: run a model on a text one decoder block at a time and collect, for every linear
layer, the statistics of its inputs that GPTQ, AWQ and SmoothQuant take (spec/algorithms/calibration.md).

The text is tokenized with the model's own tokenizer (refquant.model.tokenizer, from the GGUF
metadata) and cut into chunks of `ctx` tokens, each run as its own sequence from position 0
(BOS first when the vocabulary adds one). Then, block by block:

  1. every chunk's hidden state goes through block l with a hook on each linear layer's input
     (Weights.hooks): the statistics of block l's linear layers are accumulated, chunk after chunk;
  2. `on_block(l, stats)` quantizes block l's layers and returns the tensors to replace in the
     model (the weights decoded back from their codes, the norms a scale was folded into);
  3. sequential (the default): the chunks go through block l again, now quantized, and that is
     block l+1's input, as llm-compressor's sequential pipeline and GPTQModel propagate it; with
     `sequential=False` block l's float output (step 1) is, as AutoAWQ's quantizer propagates it.

Memory is bounded: the hidden states of the chunks (n_tokens x n_embd) and, per linear layer of
the current block, the statistics asked for:

    "hessian"   Σ xᵀx over every input row, float64 (K, K): GPTQ's H = 2/n Σ xᵀx
    "mean_abs"  Σ |x| per input column, float64 (K,): AWQ's mean |x|
    "absmax"    max |x| per input column (K,): SmoothQuant's activation maxima
    "sample"    every `stride`-th input row (at most `max_rows` rows): AWQ's loss
    "all"       every input row (tests and small inputs only)

Layers fed the same array (q/k/v, gate/up) share one statistics object.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..errors import InputError

F32 = np.float32
KINDS = ("hessian", "mean_abs", "absmax", "sample", "all")


class InputStats:
    """Running statistics of one linear layer's inputs (rows of K values)."""

    def __init__(self, K: int, kinds, stride: int = 1):
        bad = set(kinds) - set(KINDS)
        if bad:
            raise InputError(f"calibration: unknown statistics {sorted(bad)} (known: {KINDS})")
        self.K, self.kinds, self.stride, self.n = K, set(kinds), max(int(stride), 1), 0
        self.xtx = np.zeros((K, K), np.float64) if "hessian" in self.kinds else None
        self.abs_sum = np.zeros(K, np.float64) if "mean_abs" in self.kinds else None
        self.amax = np.zeros(K, F32) if "absmax" in self.kinds else None
        self.rows: list = []

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, F32).reshape(-1, self.K)
        if self.xtx is not None:
            x64 = x.astype(np.float64)
            self.xtx += x64.T @ x64
        if self.abs_sum is not None:
            self.abs_sum += np.abs(x).sum(axis=0, dtype=np.float64)
        if self.amax is not None:
            self.amax = np.maximum(self.amax, np.abs(x).max(axis=0))
        if "all" in self.kinds:
            self.rows.append(x.copy())
        elif "sample" in self.kinds:
            idx = np.arange(self.n, self.n + len(x))       # global row numbers
            self.rows.append(x[idx % self.stride == 0].copy())
        self.n += len(x)

    def hessian(self) -> np.ndarray:
        """H = 2/n Σ xᵀx, rounded once to float32 (the references' H, accumulated exactly)."""
        return (self.xtx * (2.0 / self.n)).astype(F32)

    def mean_abs(self) -> np.ndarray:
        return (self.abs_sum / self.n).astype(F32)

    def absmax(self) -> np.ndarray:
        return self.amax.copy()

    def inputs(self) -> np.ndarray:
        """The rows kept ("sample" or "all"), in the order they were seen."""
        return np.concatenate(self.rows, axis=0) if self.rows else np.zeros((0, self.K), F32)


def calibration_chunks(tokens, ctx: int, bos: Optional[int], n_tokens: Optional[int] = None) -> list:
    """The text's tokens (no BOS) cut into sequences of at most `ctx` tokens, each starting with
    BOS when `bos` is given (then ctx - 1 text tokens a chunk); the first `n_tokens` text tokens
    only, when given. A shorter last chunk is kept."""
    if not isinstance(ctx, (int, np.integer)) or ctx < 2:
        raise InputError(f"calibration: context must be an integer >= 2, got {ctx!r}")
    tokens = list(tokens)
    if n_tokens is not None:
        if n_tokens < 1:
            raise InputError(f"calibration: --calibration-tokens must be >= 1, got {n_tokens}")
        tokens = tokens[:n_tokens]
    if not tokens:
        raise InputError("calibration: the calibration text gives no tokens")
    step = ctx - 1 if bos is not None else ctx
    out = []
    for i in range(0, len(tokens), step):
        part = tokens[i:i + step]
        out.append(np.array(([bos] if bos is not None else []) + part, np.int64))
    return out


def tokenize(model, text: str, ctx: int, n_tokens: Optional[int] = None) -> list:
    """Chunks of the calibration text for `model` (its GGUF metadata carries the tokenizer)."""
    from .tokenizer import Tokenizer
    if not isinstance(text, str) or not text:
        raise InputError("calibration: the calibration text is empty")
    tk = Tokenizer(model.w.metadata)
    bos = int(tk.bos) if tk.add_bos and tk.bos is not None else None
    return calibration_chunks(tk.encode(text, add_special=False), ctx, bos, n_tokens)


def run_blocks(model, chunks: list, kinds, on_block: Optional[Callable] = None, sequential: bool = True,
               max_rows: int = 4096, progress: Optional[Callable] = None) -> list:
    """Run `chunks` (token arrays) through `model` block by block, collecting `kinds` of input
    statistics for every linear layer of each block; `on_block(il, {weight name: InputStats})`
    may return {tensor name: float array} to put in the model before the next block. Returns the
    final hidden states (one array per chunk, before the output norm)."""
    if not chunks:
        raise InputError("calibration: no calibration chunks")
    kinds = set(kinds)
    n_total = sum(len(c) for c in chunks)
    stride = -(-n_total // max_rows) if max_rows else 1
    w = model.w
    xs = [model.embed(c) for c in chunks]
    poss = [np.arange(len(c)) for c in chunks]
    for il in range(model.cfg.n_layer):
        prefix = f"blk.{il}."
        stats: dict = {}
        last = [None, None]                      # the array last seen and its statistics

        def hook(name, x):
            if not name.startswith(prefix):
                return
            st = stats.get(name)
            if x is last[0] and (st is None or st is last[1]):
                stats[name] = last[1]             # the same input as the previous layer
                return
            if st is None:
                st = stats[name] = InputStats(x.shape[-1], kinds, stride)
            st.add(x)
            last[0], last[1] = x, st

        w.hooks["calibrate"] = hook
        try:
            outs = [model.block(il, x, p) for x, p in zip(xs, poss)]
        finally:
            del w.hooks["calibrate"]
        last[0] = None
        updates = on_block(il, stats) if on_block is not None else None
        for name, v in (updates or {}).items():
            w.replace(name, v)
        if sequential and updates:
            outs = [model.block(il, x, p) for x, p in zip(xs, poss)]
        xs = outs
        if progress:
            progress(il)
    return xs


def capture_inputs(model, chunks: list, layers: Optional[list] = None) -> dict:
    """Every input row of the linear layers named `layers` (all when None), from the float model
    (nothing quantized): {weight name: (n_tokens, K) float array}, chunks in order."""
    got: dict = {}

    def on_block(il, stats):
        for name, st in stats.items():
            if layers is None or name in layers:
                got[name] = st.inputs()
        return None
    run_blocks(model, chunks, {"all"}, on_block, sequential=False)
    return got
