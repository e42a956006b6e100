"""Importance matrix capture, as llama-imatrix (tools/imatrix/imatrix.cpp) collects it, written
in its GGUF format.

For every linear layer whose weight is named `blk.*` (and `output.weight` when asked), the sum
over every input row of the squared input, per input column — `acc[j] += x[j] * x[j]` in float32,
row after row — and the number of rows seen. The input is the float32 activation the matmul
receives (before ggml rounds it to Q8). The text is evaluated as llama-imatrix does:
perplexity's chunks of n_ctx tokens, the first token of each replaced by BOS when the
vocabulary adds BOS, every position.

File (GGUF v3, `general.type = "imatrix"`):

    imatrix.datasets     array of strings   the text files' names
    imatrix.chunk_count  u32                chunks evaluated
    imatrix.chunk_size   u32                n_ctx
    <weight>.in_sum2     F32 (nmat, n_in)   the sums of squares (nmat = 1 for a dense layer)
    <weight>.counts      F32 (nmat, 1)      the rows seen

tensors in sorted name order. `refquant quantize --imatrix` style consumers divide in_sum2 by
counts to get the per-column mean square.
"""
from __future__ import annotations

import numpy as np

from ..io.gguf import KV, TensorInfo, write_gguf

F32 = np.float32


class ImatrixCollector:
    def __init__(self, process_output: bool = False):
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, x: np.ndarray):
        if not (name.startswith("blk.") or (self.process_output and name == "output.weight")):
            return
        rows = np.asarray(x, dtype=F32).reshape(-1, x.shape[-1])
        acc = self.sums.get(name)
        if acc is None:
            acc = np.zeros(rows.shape[1], F32)
        sq = rows * rows
        for r in range(rows.shape[0]):       # acc[j] += x[j]*x[j], one row after another
            acc = acc + sq[r]
        self.sums[name] = acc
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]

    def mean_squares(self) -> dict[str, np.ndarray]:
        """in_sum2 / counts: the importance vector refquant's quantizers take."""
        return {n: self.sums[n] / F32(self.counts[n]) for n in self.sums}


def collect_imatrix(model, tokens, n_ctx: int, bos: int | None, n_chunks: int | None = None,
                    process_output: bool = False) -> tuple[ImatrixCollector, int]:
    from .perplexity import chunks
    col = ImatrixCollector(process_output)
    model.w.hooks["imatrix"] = col
    try:
        parts = chunks(tokens, n_ctx, n_chunks)
        for c in parts:
            inp = list(c)
            if bos is not None:
                inp[0] = bos
            model.forward(inp)
    finally:
        del model.w.hooks["imatrix"]
    return col, len(parts)


def write_imatrix_gguf(path, col: ImatrixCollector, datasets: list[str], chunk_count: int,
                       chunk_size: int) -> None:
    from gguf import GGMLQuantizationType, GGUFValueType
    kvs = [KV("general.type", GGUFValueType.STRING, "imatrix"),
           KV("imatrix.datasets", GGUFValueType.ARRAY, list(datasets), GGUFValueType.STRING),
           KV("imatrix.chunk_count", GGUFValueType.UINT32, chunk_count),
           KV("imatrix.chunk_size", GGUFValueType.UINT32, chunk_size)]
    data, infos = {}, []
    f32 = int(GGMLQuantizationType.F32)
    for name in sorted(col.sums):
        s = col.sums[name].reshape(1, -1).astype("<f4")
        c = np.array([[col.counts[name]]], "<f4")
        for tname, arr in ((f"{name}.in_sum2", s), (f"{name}.counts", c)):
            data[tname] = arr
            infos.append(TensorInfo(tname, f32, arr.shape, 0, arr.size * 4))
    write_gguf(path, kvs, infos, lambda t: data[t.name])


def read_imatrix_gguf(path) -> dict[str, np.ndarray]:
    """{weight name: in_sum2 / counts} from an imatrix GGUF (llama-imatrix's or ours)."""
    from ..backend import SPEC
    from ..io.gguf import GGUFFile
    out = {}
    with GGUFFile(path) as f:
        names = {t.name for t in f.tensors}
        for n in names:
            if n.endswith(".in_sum2"):
                w = n[:-len(".in_sum2")]
                s = f.dequantize(n, SPEC.dequantize)
                c = f.dequantize(w + ".counts", SPEC.dequantize)
                out[w] = (s / c).reshape(-1) if s.shape[0] == 1 else s / c
    return out
