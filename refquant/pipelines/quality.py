"""The quality table: one model quantized many ways, each scored on the same text against the
unquantized model (`refquant eval MODEL --text FILE`).

The base is the model with every tensor in float: a GGUF whose tensors are F32/F16/BF16 is used
as it is; a quantized one (SmolLM2 ships as Q4_1) is first decoded to F32 with
`recipes.dequantize_model`, and that F32 model is the base every row starts from. Each row:

* llama.cpp file types (F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, IQ4_XS, or any
  other in `recipes.FILE_TYPES` that needs no importance matrix): `recipes.quantize_model`
  writes the file llama-quantize would write (its per-tensor mixture), the forward reads it.
* weight-only formats on the linear layers (`blk.*` matrices: attention q/k/v/output, FFN
  gate/up/down), quantized then decoded as the checkpoint's loader decodes them, the forward
  run on those weights; the token embedding (and `output.weight` if the model has one) is
  kept in F16 and the norms in F32, as these checkpoints keep them:
  (W4G128: groups of 128 input columns; a layer whose input size is no multiple of 128 takes
  groups of 64, as SmolLM2's 576-input layers do: see `group_size`)
    RTN-W4G128   4-bit GPTQ grid (symmetric), groups of 128, no data; GPTQ v1 layout
    GPTQ-W4G128  GPTQ (symmetric, groups of 128, damp 0.01, no act-order); GPTQ v1 layout
    AWQ-W4G128   AWQ scale search (asymmetric, groups of 128), scales folded into the
                 preceding norm / linear, then round to nearest; AWQ GEMM layout
    FP8          E4M3 per output channel, scale amax/448 (refquant.gemm's FP8 channel
                 scheme); compressed-tensors float-quantized layout
    MXFP4        OCP MXFP4 (E2M1, E8M0 scale per 32); compressed-tensors mxfp4 layout
    NVFP4        E2M1, E4M3 scale per 16, float32 global scale (compressed-tensors' rule)

Columns: bits per weight = 8 * (bytes of every tensor as stored: codes, scales, zero points,
group indices, embeddings and norms) / (number of weights in the model); perplexity as
llama-perplexity computes it (refquant.model.perplexity) on the first `n_chunks` chunks of
`n_ctx` tokens; Δ% against the base's perplexity; mean KL(p_base || p) and top-1 agreement
over the same scored positions (the base's logits computed once).

Calibration (GPTQ, AWQ): the inputs of every linear layer, captured with `Weights.hooks` while
the base model runs the `calib_chunks` chunks of `n_ctx` tokens that follow the evaluation
chunks in the text: the two slices never overlap. Every layer's calibration inputs come from
the unquantized model (not layer by layer from the already quantized ones, as the GPTQ and AWQ
references do); this is a small internal capture, not a calibration pipeline.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError
from ..io.gguf import GGUFFile
from ..model.perplexity import chunks, perplexity
from ..model.weights import Weights
from .fold import GGUF_GROUPS, fold_layer

F32 = np.float32

GGUF_ROWS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS")
LINEAR_ROWS = ("RTN-W4G128", "GPTQ-W4G128", "AWQ-W4G128", "FP8", "MXFP4", "NVFP4")
DEFAULT_ROWS = GGUF_ROWS + LINEAR_ROWS
def group_size(K: int) -> int:
    """128; a layer whose input size is no multiple of 128 (SmolLM2's 576) takes the next
    power-of-two divisor below (64), as the checkpoint layouts need whole groups."""
    for g in (128, 64, 32):
        if K % g == 0:
            return g
    raise InputError(f"a linear layer has {K} inputs, not a multiple of 32: no group size fits")
FLOAT_TYPES = ("F32", "F16", "BF16")

# linear layers that read the same input: the capture keeps one copy, under the first name
SAME_INPUT = {"attn_k": "attn_q", "attn_v": "attn_q", "ffn_up": "ffn_gate"}


@dataclass
class Row:
    name: str
    kind: str                 # "base", "gguf" (a llama.cpp file type) or "linear" (weight-only)
    bpw: float
    ppl: float
    delta_pct: float
    kld: float
    top1: float
    n_bytes: int              # every tensor's stored bytes
    n_weights: int            # every tensor's elements
    quantize_s: float
    eval_s: float


@dataclass
class Table:
    model: str
    text: str
    n_ctx: int
    n_chunks: int
    n_scored: int
    calib_tokens: int
    rows: list

    def markdown(self) -> str:
        head = (f"Model: {self.model}; text: {self.text}; {self.n_chunks} chunks of {self.n_ctx} tokens "
                f"({self.n_scored} scored tokens)"
                + (f"; GPTQ/AWQ calibrated on the next {self.calib_tokens} tokens" if self.calib_tokens else "")
                + ".\n\n")
        lines = ["| format | bits/weight | perplexity | Δ% | KL divergence | top-1 agreement |",
                 "|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            d = "—" if r.kind == "base" else f"{r.delta_pct:+.2f}"
            lines.append(f"| {r.name} | {r.bpw:.3f} | {r.ppl:.4f} | {d} | {r.kld:.5f} | {100 * r.top1:.2f}% |")
        return head + "\n".join(lines) + "\n"

    def text_table(self) -> str:
        out = [f"{'format':<12} {'bpw':>7} {'PPL':>10} {'Δ%':>8} {'KLD':>9} {'top-1':>8} {'quant s':>8} {'eval s':>7}"]
        for r in self.rows:
            d = "" if r.kind == "base" else f"{r.delta_pct:+.2f}"
            out.append(f"{r.name:<12} {r.bpw:>7.3f} {r.ppl:>10.4f} {d:>8} {r.kld:>9.5f} {100 * r.top1:>7.2f}% "
                       f"{r.quantize_s:>8.1f} {r.eval_s:>7.1f}")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Table":
        return cls(**{**d, "rows": [Row(**r) for r in d["rows"]]})

    def plot(self, path) -> None:
        """Perplexity against bits per weight (matplotlib, Agg backend)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        base = next((r for r in self.rows if r.kind == "base"), None)
        colors = {"gguf": "tab:blue", "linear": "tab:orange"}
        for kind, label in (("gguf", "llama.cpp file types"), ("linear", "weight-only linear formats")):
            rs = [r for r in self.rows if r.kind == kind]
            if rs:
                ax.scatter([r.bpw for r in rs], [r.ppl for r in rs], color=colors[kind], label=label, zorder=3)
                for r in rs:
                    ax.annotate(r.name, (r.bpw, r.ppl), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if base is not None:
            ax.axhline(base.ppl, color="gray", linestyle="--", linewidth=1,
                       label=f"{base.name} (unquantized, {base.bpw:.0f} bits/weight): {base.ppl:.3f}")
        ax.set_xlabel("bits per weight (every tensor, scales included)")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{self.model}: perplexity against bits per weight\n"
                     f"{self.text}, {self.n_chunks} x {self.n_ctx} tokens", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


# ------------------------------------------------------------------------------------ helpers

def gguf_storage(path) -> tuple[int, int]:
    """(bytes, elements) over every tensor of a GGUF file, as stored (padding excluded)."""
    with GGUFFile(path) as f:
        return sum(t.nbytes for t in f.tensors), sum(t.n_elements for t in f.tensors)


def base_file(model_path, workdir) -> Path:
    """The model itself when every tensor is F32/F16/BF16, else its F32 decode in workdir."""
    from . import recipes
    model_path = Path(model_path)
    with GGUFFile(model_path) as f:
        quantized = [t.name for t in f.tensors if t.type_name not in FLOAT_TYPES]
    if not quantized:
        return model_path
    out = Path(workdir) / (model_path.stem + ".F32.gguf")
    if not out.exists():
        recipes.dequantize_model(model_path, out, "F32")
    return out


def linear_names(w: Weights) -> list[str]:
    return [n for n in w.names() if n.startswith("blk.") and n.endswith(".weight") and len(w.shape(n)) == 2]


def _role(name: str) -> str:
    return name.split(".")[2]


def _layer(name: str) -> str:
    return ".".join(name.split(".")[:2])


class InputCapture:
    """Weights.hooks callback: every linear layer's input rows, concatenated over the calls
    (layers that read the same input keep one copy)."""

    def __init__(self):
        self.rows: dict[str, list] = {}

    def __call__(self, name, x):
        if not name.startswith("blk.") or _role(name) in SAME_INPUT:
            return
        self.rows.setdefault(name, []).append(np.array(x, F32).reshape(-1, x.shape[-1]))

    def inputs(self, name: str) -> np.ndarray:
        role = _role(name)
        key = f"{_layer(name)}.{SAME_INPUT.get(role, role)}.weight"
        return np.concatenate(self.rows[key], axis=0)


def capture_inputs(model, tokens, n_ctx: int, bos) -> InputCapture:
    cap = InputCapture()
    model.w.hooks["quality-calibration"] = cap
    try:
        for c in chunks(tokens, n_ctx):
            inp = list(c)
            if bos is not None:
                inp[0] = bos
            model.forward(inp)
    finally:
        del model.w.hooks["quality-calibration"]
    return cap


def _nbytes(tensors: dict) -> int:
    return sum(np.asarray(a).nbytes for a in tensors.values())


# ------------------------------------------------------------------- weight-only linear formats

def _int4_layout(q, layout: str):
    """(stored tensors, decoded float32 W (N, K), W4A16 weight) of a QuantizedLinear."""
    from ..gemm import W4A16Weight
    from ..layouts import awq as L_awq
    from ..layouts import gptq as L_gptq
    if layout == "gptq":
        t = L_gptq.pack(q.codes, q.scales, q.zeros, q.g_idx, 4, "v1")
        W = L_gptq.dequantize(t, 4, "v1").astype(F32)
        codes, scales, zeros, g_idx = L_gptq.unpack(t, 4, "v1")
    else:
        t = L_awq.pack(q.codes, q.scales, q.zeros)
        W = L_awq.dequantize(t).T.astype(F32)
        codes, scales, zeros = L_awq.unpack(t)
        g_idx = (np.arange(codes.shape[1]) // group_size(codes.shape[1])).astype(np.int32)
    enc = W4A16Weight(np.ascontiguousarray(codes, np.uint8), np.ascontiguousarray(scales, F32),
                      np.ascontiguousarray(zeros, np.uint8), np.ascontiguousarray(g_idx, np.int32))
    return t, W, ("W4A16", enc)


def quantize_linear(method: str, W: np.ndarray, X: Optional[np.ndarray] = None):
    """One linear layer's weight through `method` (not AWQ: see awq_fold): (stored tensors,
    decoded float32 W, (gemm scheme, encoded weight) or None)."""
    from .. import gemm, mx
    from ..algorithms.gptq import gptq, hessian
    from ..algorithms.rtn import rtn
    from ..layouts import compressed_tensors as L_ct
    g = group_size(W.shape[1])
    if method == "RTN-W4G128":
        return _int4_layout(rtn(W, 4, g, sym=True), "gptq")
    if method == "GPTQ-W4G128":
        return _int4_layout(gptq(W, H=hessian(X), bits=4, group_size=g, sym=True, damp=0.01), "gptq")
    if method == "AWQ-W4G128":        # W already carries the folded AWQ scales
        return _int4_layout(rtn(W, 4, g, sym=False), "awq")
    if method == "FP8":
        import ml_dtypes
        fw = gemm.quantize_fp8_weight(W, "channel")
        t = L_ct.float_quantized(fw.codes.view(ml_dtypes.float8_e4m3fn), fw.scale.reshape(-1, 1))
        return t, gemm.dequantize_fp8(fw).astype(F32), ("FP8", fw)
    if method == "MXFP4":
        scales, packed = mx.quantize_mx(W, "MXFP4")
        t = L_ct.mxfp4_pack_quantized(packed, scales)
        return t, mx.dequantize_mx(scales, packed, "MXFP4"), None
    if method == "NVFP4":
        packed, scales, gs = mx.quantize_nvfp4(W)
        t = L_ct.nvfp4_pack_quantized(packed, scales, gs)
        return t, mx.dequantize_nvfp4(packed, scales, gs), None
    raise InputError(f"unknown weight-only method {method!r}; known: {', '.join(LINEAR_ROWS)}")


def awq_fold(w: Weights, names: list[str], cap: InputCapture) -> dict[str, np.ndarray]:
    """AWQ's scales searched on the base weights and calibration inputs, then folded
    (refquant.pipelines.fold, llama.cpp's names). Returns every linear layer's weight and every
    other tensor the fold changed, float32."""
    from ..algorithms.awq import awq
    arrays = {n: w.dequantize(n).astype(F32) for n in names}
    layers = sorted({_layer(n) for n in names}, key=lambda s: int(s.split(".")[1]))
    for lay in layers:                   # the tensors before each group that are not linear layers
        for before, _ in GGUF_GROUPS:
            n = f"{lay}.{before}.weight"
            if n not in arrays and n in w:
                arrays[n] = w.dequantize(n).astype(F32)
    before_only = set(arrays) - set(names)

    def scale(before: str, members: list) -> np.ndarray:
        K = arrays[members[0]].shape[1]
        Wc = np.concatenate([arrays[m] for m in members], axis=0)
        return awq(Wc, cap.inputs(members[0]), bits=4, group_size=group_size(K), sym=False).input_scale

    changed = set()
    for lay in layers:
        changed |= fold_layer(arrays, lay + ".", GGUF_GROUPS, scale)
    return {n: a for n, a in arrays.items() if n not in before_only or n in changed}


def linear_model(base_w: Weights, method: str, cap: Optional[InputCapture], matmul_backend=None):
    """(Weights of the quantized model, stored bytes of every tensor)."""
    names = linear_names(base_w)
    arrays, encoded, nbytes = {}, {}, 0
    src = awq_fold(base_w, names, cap) if method == "AWQ-W4G128" else None
    for n in names:
        W = src[n] if src is not None else base_w.dequantize(n).astype(F32)
        X = cap.inputs(n) if method == "GPTQ-W4G128" else None
        t, Wq, enc = quantize_linear(method, W, X)
        arrays[n] = Wq
        nbytes += _nbytes(t)
        if enc is not None:
            encoded[n] = enc
    for n in base_w.names():          # the rest: embeddings (and an untied output) F16, norms F32
        if n in arrays:
            continue
        if n.endswith("token_embd.weight") or n == "output.weight":
            a = base_w.dequantize(n).astype(np.float16)
            arrays[n] = a.astype(F32)
            nbytes += a.nbytes
        elif src is not None and n in src:          # a norm carrying AWQ's 1/s
            arrays[n] = src[n]
            nbytes += 4 * src[n].size
        else:
            nbytes += 4 * int(np.prod(base_w.shape(n)))
    return base_w.with_tensors(arrays, encoded, matmul_backend), nbytes


# ------------------------------------------------------------------------------------ the table

def evaluate(model_path, text: str, rows=DEFAULT_ROWS, n_ctx: int = 256, n_chunks: int = 4,
             calib_chunks: int = 2, workdir=None, matmul_backend=None, text_name: str = "text",
             log: Optional[Callable[[str], None]] = None, backend="numpy") -> Table:
    """The quality table of `model_path` on `text` (see the module docstring). `backend` writes
    the llama.cpp file types' files (a bit-exact backend: the same bytes, sooner)."""
    from . import recipes
    from ..model.forward import Model
    from ..model.tokenizer import Tokenizer
    rows = [r.upper() for r in rows]
    for r in rows:
        if r not in LINEAR_ROWS and r not in recipes.FILE_TYPES:
            raise InputError(f"unknown row {r!r}: a llama.cpp file type ({', '.join(GGUF_ROWS)}, ...) "
                             f"or one of {', '.join(LINEAR_ROWS)}")
    log = log or (lambda s: None)
    tmp = tempfile.TemporaryDirectory(prefix="refquant-eval-") if workdir is None else None
    wd = Path(tmp.name if tmp else workdir)
    try:
        base_path = base_file(model_path, wd)
        tk = Tokenizer.from_gguf(base_path)
        tokens = tk.encode(text)
        bos = int(tk.bos) if tk.add_bos and tk.bos is not None else None
        need_calib = any(r in ("GPTQ-W4G128", "AWQ-W4G128") for r in rows)
        n_eval = n_ctx * n_chunks
        if len(tokens) < n_eval + (calib_chunks * n_ctx if need_calib else 0):
            raise InputError(f"the text has {len(tokens)} tokens; {n_chunks} evaluation chunks of {n_ctx}"
                             + (f" and {calib_chunks} calibration chunks after them" if need_calib else "")
                             + " need more")
        eval_tokens = tokens[:n_eval]
        calib_tokens = tokens[n_eval:n_eval + calib_chunks * n_ctx] if need_calib else []

        base = Model.from_gguf(base_path)
        memo: dict = {}

        def base_forward(inp):
            key = tuple(inp)
            if key not in memo:
                memo[key] = base.forward(inp)
            return memo[key]

        n_bytes, n_weights = gguf_storage(base_path)
        t0 = time.perf_counter()
        r0 = perplexity(base_forward, eval_tokens, n_ctx, bos, n_chunks, base_forward)
        with GGUFFile(base_path) as f:
            base_name = next(t.type_name for t in f.tensors if len(t.shape) == 2)
        table = Table(Path(model_path).name, text_name, n_ctx, r0.n_chunks, r0.n_tokens,
                      len(calib_tokens), [])

        def add(name, kind, res, nb, nw, qs, es):
            row = Row(name, kind, 8 * nb / nw, res.ppl, 100 * (res.ppl / r0.ppl - 1), res.kld, res.top1,
                      nb, nw, qs, es)
            table.rows.append(row)
            log(f"{name:<12} {row.bpw:7.3f} bpw  PPL {row.ppl:9.4f}  Δ {row.delta_pct:+7.2f}%  "
                f"KLD {row.kld:.5f}  top-1 {100 * row.top1:6.2f}%  ({qs:.1f} s + {es:.1f} s)")

        add(f"{base_name} (base)", "base", r0, n_bytes, n_weights, 0.0, time.perf_counter() - t0)

        cap = None
        if need_calib:
            t0 = time.perf_counter()
            cap = capture_inputs(base, calib_tokens, n_ctx, bos)
            log(f"captured the linear layers' inputs on {len(calib_tokens)} calibration tokens "
                f"in {time.perf_counter() - t0:.1f} s")

        for r in rows:
            t0 = time.perf_counter()
            if r in LINEAR_ROWS:
                w, nb = linear_model(base.w, r, cap, matmul_backend)
                m = Model(w)
                nw = n_weights
            else:
                out = wd / f"{r}.gguf"
                recipes.quantize_model(base_path, out, r, backend=backend)
                nb, nw = gguf_storage(out)
                m = Model.from_gguf(out)
            t1 = time.perf_counter()
            res = perplexity(m.forward, eval_tokens, n_ctx, bos, n_chunks, base_forward)
            t2 = time.perf_counter()
            del m
            if r not in LINEAR_ROWS:
                (wd / f"{r}.gguf").unlink()
            add(r, "linear" if r in LINEAR_ROWS else "gguf", res, nb, nw, t1 - t0, t2 - t1)
        return table
    finally:
        if tmp is not None:
            tmp.cleanup()
