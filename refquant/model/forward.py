"""A readable NumPy forward of decoder-only llama-family models, as llama.cpp builds its graph.

Supported architectures (`general.architecture`): `llama` (SmolLM2 and the Llama family) and
`gemma3`. Tensors carry llama.cpp's names (`blk.N.attn_q.weight`, ...) and its layouts:

- llama: convert_hf_to_gguf.py permutes the rows of attn_q and attn_k so that each head's
  rotary pairs are adjacent, (x0, x1), (x2, x3), ... where Hugging Face pairs x_i with
  x_{i + d/2} (`rotate_half`). llama.cpp then applies RoPE in its "normal" mode (adjacent
  pairs); this forward does the same on the GGUF layout. refquant.model.convert undoes the
  permutation for the Hugging Face layout and redoes it on the way back.
- gemma3: no permutation; RoPE in NeoX mode (pairs i, i + d/2). Embeddings scaled by
  sqrt(n_embd); RMS norms before and after attention and FFN; RMS norms on each head's q and k;
  q scaled by 1/sqrt(head_dim) (the scaled q is what the softmax sees, with scale 1); GeGLU with
  the tanh GELU; every sliding-window layer attends to the last `sliding_window` positions and
  uses rope base 10000 (`rope.freq_base_swa` when the file has it), every 6th layer
  (il % 6 == 5, or `attention.sliding_window_pattern`) is global with `rope.freq_base`; the
  logits are soft-capped when `final_logit_softcapping` is set. Gemma's norm weights are stored
  with the +1 of Hugging Face's `(1 + w)` already added (convert_hf_to_gguf does it).

Numerics: float32 by default (every activation float32, matmuls through BLAS), float64 on
request. `Model(..., llamacpp_numerics=True)` also reproduces the roundings llama.cpp's CPU
backend adds to the mathematical forward: each matmul's input quantized to the weight's
vec_dot_type (Q8_0, Q8_1, Q8_K), K and V stored in an F16 cache and q and the softmax
probabilities rounded to F16 for the products with them, RoPE angles computed as ggml does
(theta *= theta_scale, in float32), and GELU read from ggml's F16 table. What remains is float32
summation order: spec/model.md derives the bound that leaves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError
from . import ggml_cpu
from .weights import Weights

F32 = np.float32


@dataclass
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_base_swa: float
    eps: float
    n_vocab: int
    rope_neox: bool
    sliding_window: int = 0
    swa_layers: list = field(default_factory=list)
    attn_scale: float = 1.0
    final_softcap: float = 0.0
    embd_scale: float = 1.0

    @classmethod
    def from_metadata(cls, md: dict, n_vocab: int) -> "Config":
        arch = md.get("general.architecture")
        if arch not in ("llama", "gemma3"):
            raise FormatError(f"architecture {arch!r} is not supported (llama, gemma3)")

        def k(key, default=None):
            v = md.get(f"{arch}.{key}", default)
            if v is None:
                raise FormatError(f"GGUF metadata lacks {arch}.{key}")
            return v

        n_layer, n_embd, n_head = int(k("block_count")), int(k("embedding_length")), int(k("attention.head_count"))
        head_dim = int(md.get(f"{arch}.attention.key_length", n_embd // n_head))
        c = cls(arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=int(k("feed_forward_length")),
                n_head=n_head, n_head_kv=int(k("attention.head_count_kv", n_head)), head_dim=head_dim,
                n_rot=int(md.get(f"{arch}.rope.dimension_count", head_dim)),
                rope_base=float(k("rope.freq_base", 10000.0)),
                rope_base_swa=float(md.get(f"{arch}.rope.freq_base_swa", 10000.0)),
                eps=float(k("attention.layer_norm_rms_epsilon")), n_vocab=n_vocab,
                rope_neox=arch != "llama")
        c.attn_scale = 1.0 / math.sqrt(head_dim)
        if arch == "gemma3":
            c.embd_scale = math.sqrt(n_embd)
            c.final_softcap = float(md.get("gemma3.final_logit_softcapping", 0.0))
            c.sliding_window = int(md.get("gemma3.attention.sliding_window", 0))
            if c.sliding_window > 0:
                pat = md.get("gemma3.attention.sliding_window_pattern", 6)
                if isinstance(pat, (list, tuple, np.ndarray)):
                    c.swa_layers = [bool(v) for v in pat]
                else:
                    p = int(pat)
                    c.swa_layers = [p == 0 or il % p < p - 1 for il in range(n_layer)]
            if n_layer == 62:   # 27B: llama.cpp scales by 1/sqrt(n_embd / n_head)
                c.attn_scale = 1.0 / math.sqrt(n_embd // n_head)
        if not c.swa_layers:
            c.swa_layers = [False] * n_layer
        return c


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """ggml_rms_norm then the weight: x / sqrt(mean(x²) + eps) * w. ggml squares in the
    forward's precision, sums the squares in double and scales by the float32
    1/sqrtf(mean + eps)."""
    dt = x.dtype
    mean = np.mean((x * x).astype(np.float64), axis=-1, keepdims=True)
    scale = (1.0 / np.sqrt((mean.astype(dt) + dt.type(eps)))).astype(dt)
    return (x * scale) * w


@functools.lru_cache(maxsize=None)
def _libm():
    return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")


def _libm_f32(name: str, *args) -> np.ndarray:
    """The C library's float function `name` (powf, cosf, sinf) applied elementwise: ggml calls
    these, and NumPy's float32 versions round differently (np.cos differs from cosf in about 6%
    of RoPE's angles, np.power from powf in theta_scale's last bit)."""
    fn = getattr(_libm(), name)
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * len(args)
    arrs = np.broadcast_arrays(*[np.asarray(a, dtype=F32) for a in args])
    out = np.empty(arrs[0].shape, F32)
    flat = [a.ravel().tolist() for a in arrs]
    out.ravel()[:] = [fn(*v) for v in zip(*flat)]
    return out


def rope_cos_sin(pos: np.ndarray, n_rot: int, base: float, dtype, ggml_order: bool):
    """cos, sin (T, n_rot/2) of the angles pos * base^(-2i/n_rot).

    ggml_order: as ggml-cpu's rope cache (ggml_rope_cache_init, rope_yarn without scaling):
    theta_scale = powf(base, -2.0f/n_rot), theta_0 = pos, theta_{i+1} = theta_i * theta_scale in
    float32, then cosf(theta) and sinf(theta) from the C library. Otherwise float64 angles."""
    half = n_rot // 2
    if ggml_order:
        theta_scale = _libm_f32("powf", F32(base), F32(-2.0) / F32(n_rot))
        theta = np.empty((len(pos), half), F32)
        t = pos.astype(F32)
        for i in range(half):
            theta[:, i] = t
            t = (t * theta_scale).astype(F32)
        uniq, inv = np.unique(theta, return_inverse=True)       # each angle once through libm
        cos, sin = _libm_f32("cosf", uniq)[inv], _libm_f32("sinf", uniq)[inv]
        return cos.reshape(theta.shape).astype(dtype), sin.reshape(theta.shape).astype(dtype)
    inv = np.power(np.float64(base), -np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    theta = pos.astype(np.float64)[:, None] * inv[None, :]
    return np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool, fma: bool = False) -> np.ndarray:
    """x (T, heads, head_dim); rotates the first n_rot dims. Normal mode rotates adjacent pairs
    (x[2i], x[2i+1]); NeoX mode rotates (x[i], x[i + n_rot/2]).

    fma: ggml-cpu's rotate_pairs as GCC contracts it with FMA enabled (float32 only):
    x0*cos - x1*sin -> fmaf(x0, cos, -(x1*sin)) and x0*sin + x1*cos -> fmaf(x0, sin, x1*cos)."""
    n_rot = cos.shape[-1] * 2
    out = x.copy()
    c, s = cos[:, None, :], sin[:, None, :]
    if neox:
        a, b = x[..., :n_rot // 2], x[..., n_rot // 2:n_rot]
        lo, hi = slice(0, n_rot // 2), slice(n_rot // 2, n_rot)
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        lo, hi = slice(0, n_rot, 2), slice(1, n_rot, 2)
    if fma:
        from ..numerics import fma_f32
        out[..., lo] = fma_f32(a, c, -(b * s))
        out[..., hi] = fma_f32(a, s, b * c)
    else:
        out[..., lo] = a * c - b * s
        out[..., hi] = a * s + b * c
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, max subtracted (ggml sums the exponentials in double)."""
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return (e / np.sum(e.astype(np.float64), axis=-1, keepdims=True).astype(x.dtype)).astype(x.dtype)


def gelu_tanh(x: np.ndarray, f16_table: bool) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x²))). ggml's CPU backend (GGML_GELU_FP16)
    rounds x to F16 and reads the F16-rounded GELU of that from a table, for -10 < x < 10
    (0 below, x above)."""
    dt = x.dtype.type
    def g(v):
        return dt(0.5) * v * (dt(1) + np.tanh(dt(0.7978845608028654) * v * (dt(1) + dt(0.044715) * v * v)))
    if not f16_table:
        return g(x)
    h = x.astype(np.float16).astype(F32)
    t = g(h).astype(np.float16).astype(F32)
    return np.where(x <= -10, F32(0), np.where(x >= 10, x, t)).astype(x.dtype)


class Model:
    """A decoder-only model read from GGUF (or from safetensors, refquant.model.convert).

    forward(tokens) -> logits (T, n_vocab) for one sequence starting at position 0."""

    def __init__(self, weights: Weights, llamacpp_numerics: bool = False, isa: str | None = None):
        self.w = weights
        n_vocab = weights.shape("token_embd.weight")[0]
        self.cfg = Config.from_metadata(weights.metadata, n_vocab)
        self.llamacpp_numerics = llamacpp_numerics
        self._rope: dict = {}
        if llamacpp_numerics:
            if weights.dtype != F32:
                raise FormatError("llama.cpp's numerics are float32 ones")
            weights.act_quant = True
        self.isa = isa or ggml_cpu.isa()
        self.output_name = "output.weight" if "output.weight" in weights else "token_embd.weight"

    @classmethod
    def from_gguf(cls, path, dtype=F32, llamacpp_numerics=False, cache=True) -> "Model":
        return cls(Weights.from_gguf(path, dtype=dtype, cache=cache), llamacpp_numerics)

    @property
    def dtype(self):
        return self.w.dtype

    def _f16(self, x):
        return x.astype(np.float16).astype(x.dtype) if self.llamacpp_numerics else x

    def attention(self, il: int, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        c, w, dt = self.cfg, self.w, self.dtype
        p = f"blk.{il}."
        T = x.shape[0]
        q = w.linear(p + "attn_q.weight")(x).reshape(T, c.n_head, c.head_dim)
        k = w.linear(p + "attn_k.weight")(x).reshape(T, c.n_head_kv, c.head_dim)
        v = w.linear(p + "attn_v.weight")(x).reshape(T, c.n_head_kv, c.head_dim)
        if p + "attn_q_norm.weight" in w:
            q = rms_norm(q, w.get(p + "attn_q_norm.weight"), c.eps)
            k = rms_norm(k, w.get(p + "attn_k_norm.weight"), c.eps)
        swa = c.swa_layers[il]
        base = c.rope_base_swa if swa else c.rope_base
        key = (tuple(pos), base)
        if key not in self._rope:                      # the same angles in every layer
            self._rope = {key: rope_cos_sin(pos, c.n_rot, base, dt, self.llamacpp_numerics)} | {
                k: v for k, v in self._rope.items() if k[0] == key[0]}
        cos, sin = self._rope[key]
        q = apply_rope(q, cos, sin, c.rope_neox, self.llamacpp_numerics)
        k = apply_rope(k, cos, sin, c.rope_neox, self.llamacpp_numerics)
        kq_scale = c.attn_scale
        if c.arch == "gemma3":            # llama.cpp scales q itself, then softmax with scale 1
            q = q * dt(c.attn_scale)
            kq_scale = 1.0
        # llama.cpp keeps K and V in an F16 cache and rounds q (and the probabilities) to F16
        # for the products with them (vec_dot_type of F16 is F16)
        q, k, v = self._f16(q), self._f16(k), self._f16(v)
        group = c.n_head // c.n_head_kv
        qh = q.transpose(1, 0, 2)                               # (H, T, d)
        kh = np.repeat(k.transpose(1, 0, 2), group, axis=0)     # (H, T, d)
        vh = np.repeat(v.transpose(1, 0, 2), group, axis=0)
        scores = (qh @ kh.transpose(0, 2, 1)) * dt(kq_scale)   # (H, Tq, Tk)
        i, j = pos[:, None], pos[None, :]
        masked = j > i
        if swa:
            masked |= (i - j) >= c.sliding_window
        scores = np.where(masked[None], dt(-np.inf), scores)
        if self.llamacpp_numerics:
            probs = self._f16(ggml_cpu.softmax(scores, self.isa))
        else:
            probs = softmax(scores)
        out = (probs @ vh).transpose(1, 0, 2).reshape(T, c.n_head * c.head_dim)
        return w.linear(p + "attn_output.weight")(out)

    def ffn(self, il: int, x: np.ndarray) -> np.ndarray:
        w = self.w
        p = f"blk.{il}."
        gate = w.linear(p + "ffn_gate.weight")(x)
        up = w.linear(p + "ffn_up.weight")(x)
        if self.cfg.arch == "gemma3":
            h = gelu_tanh(gate, self.llamacpp_numerics) * up
        else:
            silu = ggml_cpu.silu(gate, self.isa) if self.llamacpp_numerics else gate / (self.dtype(1) + np.exp(-gate))
            h = silu * up
        return w.linear(p + "ffn_down.weight")(h)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """The embedding rows of `tokens` (scaled by sqrt(n_embd) for gemma3)."""
        x = self.w.embedding_rows("token_embd.weight", np.asarray(tokens, dtype=np.int64))
        if self.cfg.embd_scale != 1.0:
            x = x * self.dtype(self.cfg.embd_scale)
        return x

    def block(self, il: int, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Decoder block `il` on the hidden states x (T, n_embd) at positions pos: the residual
        stream after its attention and feed-forward halves."""
        c, w = self.cfg, self.w
        p = f"blk.{il}."
        h = rms_norm(x, w.get(p + "attn_norm.weight"), c.eps)
        a = self.attention(il, h, pos)
        if p + "post_attention_norm.weight" in w:
            a = rms_norm(a, w.get(p + "post_attention_norm.weight"), c.eps)
        x = x + a
        h = rms_norm(x, w.get(p + "ffn_norm.weight"), c.eps)
        f = self.ffn(il, h)
        if p + "post_ffw_norm.weight" in w:
            f = rms_norm(f, w.get(p + "post_ffw_norm.weight"), c.eps)
        return x + f

    def forward(self, tokens, last_hidden: bool = False) -> np.ndarray:
        c, w, dt = self.cfg, self.w, self.dtype
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or len(tokens) == 0:
            raise FormatError("forward takes one non-empty sequence of token ids")
        if tokens.min() < 0 or tokens.max() >= c.n_vocab:
            raise FormatError(f"token ids must lie in [0, {c.n_vocab}); got {tokens.min()}..{tokens.max()}")
        pos = np.arange(len(tokens))
        x = self.embed(tokens)
        for il in range(c.n_layer):
            x = self.block(il, x, pos)
        x = rms_norm(x, w.get("output_norm.weight"), c.eps)
        if last_hidden:
            return x
        logits = w.linear(self.output_name)(x)
        if c.final_softcap:
            s = dt(c.final_softcap)
            logits = np.tanh(logits / s) * s
        return logits

    __call__ = forward
