"""GGUF <-> safetensors for llama and gemma3 on small random models with quantized weights:
both forms give the same logits; the Hugging Face layout undoes llama.cpp's q/k permutation."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType

import refquant
from refquant.io.gguf import KV, TensorInfo, tensor_nbytes, write_gguf
from refquant.model import Model
from refquant.model.convert import _permute, gguf_to_safetensors, load_safetensors, safetensors_to_gguf

U32, F32V, STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING


def tiny_model(path, arch, seed=0):
    rng = np.random.default_rng(seed)
    E, FF, H, HKV, D, L, V = 64, 128, 4, 2, 32, 2, 96
    kvs = [KV("general.architecture", STR, arch), KV(f"{arch}.block_count", U32, L),
           KV(f"{arch}.embedding_length", U32, E if arch == "llama" else E),
           KV(f"{arch}.feed_forward_length", U32, FF), KV(f"{arch}.attention.head_count", U32, H),
           KV(f"{arch}.attention.head_count_kv", U32, HKV),
           KV(f"{arch}.attention.layer_norm_rms_epsilon", F32V, 1e-6),
           KV(f"{arch}.rope.freq_base", F32V, 10000.0),
           KV("tokenizer.ggml.model", STR, "gpt2"),
           KV("tokenizer.ggml.tokens", GGUFValueType.ARRAY, [f"t{i}" for i in range(V)], STR)]
    if arch == "gemma3":
        kvs += [KV("gemma3.attention.key_length", U32, D), KV("gemma3.attention.value_length", U32, D),
                KV("gemma3.attention.sliding_window", U32, 3)]
        hd = D
    else:
        hd = E // H
    shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,)}
    for il in range(L):
        p = f"blk.{il}."
        shapes.update({p + "attn_norm.weight": (E,), p + "ffn_norm.weight": (E,),
                       p + "attn_q.weight": (H * hd, E), p + "attn_k.weight": (HKV * hd, E),
                       p + "attn_v.weight": (HKV * hd, E), p + "attn_output.weight": (E, H * hd),
                       p + "ffn_gate.weight": (FF, E), p + "ffn_up.weight": (FF, E), p + "ffn_down.weight": (E, FF)})
        if arch == "gemma3":
            shapes.update({p + "attn_q_norm.weight": (hd,), p + "attn_k_norm.weight": (hd,),
                           p + "post_attention_norm.weight": (E,), p + "post_ffw_norm.weight": (E,)})
    data, infos = {}, []
    for i, (n, s) in enumerate(shapes.items()):
        if len(s) == 1:
            t, b = GGMLQuantizationType.F32, (1 + 0.1 * rng.standard_normal(s)).astype("<f4")
        else:
            t = [GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q5_0][i % 3]
            b = refquant.quantize((0.2 * rng.standard_normal(s)).astype(np.float32), t.name)
        data[n] = b
        infos.append(TensorInfo(n, int(t), s, 0, tensor_nbytes(int(t), s)))
    write_gguf(path, kvs, infos, lambda ti: data[ti.name])
    return path


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_both_forms_same_logits(arch, tmp_path):
    g = tiny_model(tmp_path / "m.gguf", arch)
    d = gguf_to_safetensors(g, tmp_path / "hf")
    toks = [1, 5, 7, 90, 3, 3, 12, 40]
    a = Model.from_gguf(g).forward(toks)
    b = Model(load_safetensors(d)).forward(toks)
    assert np.array_equal(a, b)
    safetensors_to_gguf(d, tmp_path / "back.gguf")
    c = Model.from_gguf(tmp_path / "back.gguf").forward(toks)
    assert np.array_equal(a, c)
    assert Model.from_gguf(g, dtype=np.float64).forward(toks).dtype == np.float64


def test_llama_qk_permutation_matches_rotate_half(tmp_path):
    """Hugging Face applies RoPE with rotate_half (pairs i, i + d/2) to its rows; llama.cpp
    applies it to adjacent pairs of the permuted rows: same rotated vectors, rows permuted."""
    from refquant.model.forward import apply_rope, rope_cos_sin
    rng = np.random.default_rng(1)
    H, d, E, T = 3, 16, 24, 5
    w_hf = rng.standard_normal((H * d, E))
    x = rng.standard_normal((T, E))
    cos, sin = rope_cos_sin(np.arange(T), d, 10000.0, np.float64, False)
    q_hf = apply_rope((x @ w_hf.T).reshape(T, H, d), cos, sin, neox=True)
    q_gg = apply_rope((x @ _permute(w_hf, H).T).reshape(T, H, d), cos, sin, neox=False)
    # within a head, GGUF position 2i + j holds Hugging Face position j * d/2 + i
    idx = np.arange(d).reshape(2, d // 2).T.reshape(-1)
    np.testing.assert_allclose(q_gg, q_hf[..., idx], rtol=1e-12, atol=1e-12)


def test_imatrix_gguf_layout(tmp_path):
    """The importance matrix file has llama-imatrix's layout, read back by gguf-py: one
    `<weight>.in_sum2` (ne = n_in x 1) and `<weight>.counts` (1 x 1) per blk.* linear layer,
    sorted by name, and the imatrix.* keys; counts are the rows seen (chunks x n_ctx)."""
    import gguf

    from refquant.model.imatrix import collect_imatrix, read_imatrix_gguf, write_imatrix_gguf
    m = Model.from_gguf(tiny_model(tmp_path / "m.gguf", "llama"))
    col, n = collect_imatrix(m, list(range(1, 90)), 16, 2, 3)
    assert n == 3
    write_imatrix_gguf(tmp_path / "i.gguf", col, ["botchan.txt"], n, 16)
    r = gguf.GGUFReader(tmp_path / "i.gguf")
    names = [t.name for t in r.tensors]
    weights = [n[:-len(".in_sum2")] for n in names[::2]]
    assert weights == sorted(weights) and len(names) == 2 * 2 * 7
    assert names[1::2] == [w + ".counts" for w in weights]
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.chunk_count"].contents() == 3
    assert r.fields["imatrix.chunk_size"].contents() == 16
    t = {t.name: t for t in r.tensors}
    assert t["blk.0.ffn_down.weight.in_sum2"].shape.tolist() == [128, 1]
    assert float(t["blk.0.attn_q.weight.counts"].data.reshape(-1)[0]) == 48
    im = read_imatrix_gguf(tmp_path / "i.gguf")
    assert set(im) == set(col.sums) and all(v.shape == (col.sums[k].size,) for k, v in im.items())
