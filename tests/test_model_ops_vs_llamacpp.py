"""The forward's operations one at a time against llama.cpp's own intermediate tensors
(tools.oracles.llama_cpp_graph), on SmolLM2-135M and Botchan: each operation is given
llama.cpp's input and must give llama.cpp's output bit for bit (norms, RoPE, softmax, SwiGLU,
residual adds), or within the derived bound of refquant.ggml.dot for the quantized matrix
products. These checks do not suffer the chaos of whole-model logits (spec/model.md)."""
import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from refquant.ggml import dot
from refquant.io.gguf import GGUFFile
from refquant.model import Model, ggml_cpu
from refquant.model.forward import apply_rope, rms_norm, rope_cos_sin
from refquant.model.tokenizer import Tokenizer
from tools.models import botchan_path, smollm2_path
from tools.oracles.llama_cpp_graph import capture
from refquant.registry import get_format

T = 40
LAYERS = (0, 1, 17)


@pytest.fixture(scope="module")
def run():
    path = smollm2_path()
    toks = Tokenizer.from_gguf(path).encode(botchan_path().read_bytes().decode("utf-8")[:3000])[:T]
    return path, capture(path, toks, n_ctx=64), Model.from_gguf(path, llamacpp_numerics=True)


def test_rms_norms_and_residual_adds_exact(run):
    path, g, m = run
    eps = m.cfg.eps
    for il in LAYERS:
        if il:
            x = g[f"l_out-{il - 1}|ADD"]
            assert np.array_equal(rms_norm(x, m.w.get(f"blk.{il}.attn_norm.weight"), eps), g[f"attn_norm-{il}|MUL"])
        fi = g[f"ffn_inp-{il}|ADD"]
        if il:
            assert np.array_equal(g[f"l_out-{il - 1}|ADD"] + g[f"attn_out-{il}|MUL_MAT"], fi)
        assert np.array_equal(rms_norm(fi, m.w.get(f"blk.{il}.ffn_norm.weight"), eps), g[f"ffn_norm-{il}|MUL"])
        assert np.array_equal(fi + g[f"ffn_out-{il}|MUL_MAT"], g[f"l_out-{il}|ADD"])


def test_rope_exact(run):
    path, g, m = run
    c = m.cfg
    cos, sin = rope_cos_sin(np.arange(T), c.n_rot, c.rope_base, np.float32, ggml_order=True)
    for il in LAYERS:
        for name, heads in (("Qcur", c.n_head), ("Kcur", c.n_head_kv)):
            x = g[f"{name}-{il}|MUL_MAT"].reshape(T, heads, c.head_dim)
            assert np.array_equal(apply_rope(x, cos, sin, c.rope_neox, fma=True), g[f"{name}-{il}|ROPE"])
    # without the contraction to fmaf, or with NumPy's cos/sin, most values differ
    x = g["Qcur-0|MUL_MAT"].reshape(T, c.n_head, c.head_dim)
    assert not np.array_equal(apply_rope(x, cos, sin, c.rope_neox), g["Qcur-0|ROPE"])


def test_softmax_exact(run):
    path, g, m = run
    isa = ggml_cpu.isa()
    for il in LAYERS:
        kq, sm = g[f"kq-{il}|MUL_MAT"], g[f"kq_soft_max-{il}|SOFT_MAX"]   # (heads, T, n_kv)
        n_kv = kq.shape[-1]
        masked = np.arange(n_kv)[None, :] > np.arange(T)[:, None]
        w = np.where(masked[None], np.float32(-np.inf), kq * np.float32(m.cfg.attn_scale))
        assert np.array_equal(ggml_cpu.softmax(w, isa), sm)
        # the forward's rows are T long, not n_kv: the -inf padding must not change them
        assert np.array_equal(ggml_cpu.softmax(w[..., :T], isa), sm[..., :T])


def test_swiglu_exact(run):
    path, g, m = run
    isa = ggml_cpu.isa()
    for il in LAYERS:
        gate, up = g[f"ffn_gate-{il}|MUL_MAT"], g[f"ffn_up-{il}|MUL_MAT"]
        assert np.array_equal(ggml_cpu.silu(gate, isa) * up, g[f"ffn_swiglu-{il}|GLU"])
        assert not np.array_equal(gate / (np.float32(1) + np.exp(-gate)) * up, g[f"ffn_swiglu-{il}|GLU"])


def test_quantized_products_within_bound_with_x86_activations(run):
    """llama.cpp's Q4_1 products equal the exact value of W · Q8_1(x) within the bound of any
    SIMD combination order, with x quantized by the x86 quantizer; with the reference
    quantizer some products fall outside it (their activations rounded differently)."""
    path, g, m = run
    f = GGUFFile(path)
    outside_ref = 0
    for il in LAYERS:
        for wn in ("attn_q", "attn_k", "attn_v", "ffn_down"):
            name = f"blk.{il}.{wn}.weight"
            qtype = f.info(name).type_name
            x, y = g[f"MUL_MAT|{name}|x"], g[f"MUL_MAT|{name}|y"]
            w = np.asarray(f.raw(name)).reshape(y.shape[-1], -1)
            nb = x.shape[-1] // 32
            for variant in ("x86", "ref"):
                qa = dot.quantize_activation(x, dot.vec_dot_type(qtype), variant)
                R, S = dot.exact_quantized_dot(w, qtype, qa)
                ok = np.abs(y.astype(np.float64) - R) <= dot.simd_error_bound(qtype, nb, S)
                if variant == "x86":
                    assert ok.all(), (name, np.argwhere(~ok)[:3])
                else:
                    outside_ref += int((~ok).sum())
    assert outside_ref > 0


def test_gemma3_operations():
    """Gemma 3's own operations, given llama.cpp's inputs: the embedding scale, q/k norms, RoPE
    with both bases, the sliding-window softmax, the post-norms (bit for bit), and its Q5_0, Q8_0,
    Q4_K and Q6_K products within the derived bound (refquant.ggml.dot; Q4_K/Q6_K with Q8_K
    activations)."""
    from tools.models import gemma3_path
    path = gemma3_path()
    n = 24
    toks = Tokenizer.from_gguf(path).encode(botchan_path().read_bytes().decode("utf-8")[:2000])[:n]
    g = capture(path, toks, n_ctx=64)
    m = Model.from_gguf(path, llamacpp_numerics=True)
    c, w, isa = m.cfg, m.w, ggml_cpu.isa()
    pos = np.arange(n)
    assert np.array_equal((g["embd|GET_ROWS"] * np.float32(c.embd_scale)).astype(np.float32), g["inp_scaled|SCALE"])
    f = GGUFFile(path)
    for il in (0, 5):                        # a sliding-window layer and a global one
        x = g["inp_scaled|SCALE"] if il == 0 else g[f"l_out-{il - 1}|ADD"]
        assert np.array_equal(rms_norm(x, w.get(f"blk.{il}.attn_norm.weight"), c.eps), g[f"attn_norm-{il}|MUL"])
        base = c.rope_base_swa if c.swa_layers[il] else c.rope_base
        cos, sin = rope_cos_sin(pos, c.n_rot, base, np.float32, ggml_order=True)
        for name, heads in (("Qcur", c.n_head), ("Kcur", c.n_head_kv)):
            y = g[f"{name}-{il}|MUL_MAT"].reshape(n, heads, c.head_dim)
            normed = rms_norm(y, w.get(f"blk.{il}.attn_{name[0].lower()}_norm.weight"), c.eps)
            assert np.array_equal(normed, g[f"{name}_normed-{il}|MUL"].reshape(normed.shape))
            assert np.array_equal(apply_rope(normed, cos, sin, c.rope_neox, fma=True),
                                  g[f"{name}-{il}|ROPE"].reshape(normed.shape))
        kq = g[f"kq-{il}|MUL_MAT"]
        i, j = np.arange(n)[:, None], np.arange(kq.shape[-1])[None, :]
        masked = j > i
        if c.swa_layers[il]:
            masked |= (i - j) >= c.sliding_window
        assert np.array_equal(ggml_cpu.softmax(np.where(masked[None], np.float32(-np.inf), kq), isa),
                              g[f"kq_soft_max-{il}|SOFT_MAX"])
        a = g[f"MUL_MAT|blk.{il}.attn_output.weight|y"]
        assert np.array_equal(rms_norm(a, w.get(f"blk.{il}.post_attention_norm.weight"), c.eps),
                              g[f"attn_post_norm-{il}|MUL"])
        assert np.array_equal(rms_norm(g[f"sa_out-{il}|ADD"], w.get(f"blk.{il}.ffn_norm.weight"), c.eps),
                              g[f"ffn_norm-{il}|MUL"])
        for wn in ("attn_q", "attn_v", "attn_output", "ffn_down", "ffn_gate"):
            name = f"blk.{il}.{wn}.weight"
            qtype = f.info(name).type_name
            x, y = g[f"MUL_MAT|{name}|x"], g[f"MUL_MAT|{name}|y"]
            if qtype not in dot.VEC_DOT_TYPE:
                continue
            wr = np.asarray(f.raw(name)).reshape(y.shape[-1], -1)
            qa = dot.quantize_activation(x, dot.vec_dot_type(qtype), "x86")
            R, S = dot.exact_quantized_dot(wr, qtype, qa)
            nb = x.shape[-1] // get_format(qtype).block_size
            assert (np.abs(y.astype(np.float64) - R) <= dot.simd_error_bound(qtype, nb, S)).all(), name
