"""A small Hugging Face Llama checkpoint derived from a real model: SmolLM2-135M-Instruct's GGUF
(tools.models.smollm2_path(), Q4_1/Q8_0 weights dequantized by refquant) rewritten in
transformers' safetensors layout, truncated to its first layers. Minimal and private to the tests.

llama.cpp's converter permutes the rows of attn_q / attn_k for its rotary layout:
    w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
so they are un-permuted here: w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).
"""
import json

import numpy as np

import refquant
from refquant.io.gguf import GGUFFile
from refquant.io.safetensors import save_checkpoint
from tools.models import smollm2_path

NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def unpermute(w, heads):
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def smollm2_checkpoint(out_dir, n_layers=1):
    with GGUFFile(smollm2_path()) as f:
        kv = {k.key: k.value for k in f.kvs}
        heads, kv_heads = int(kv["llama.attention.head_count"]), int(kv["llama.attention.head_count_kv"])
        t = {"model.embed_tokens.weight": f.dequantize("token_embd.weight", refquant.dequantize),
             "model.norm.weight": f.dequantize("output_norm.weight", refquant.dequantize)}
        for i in range(n_layers):
            for g, h in NAMES.items():
                w = f.dequantize(f"blk.{i}.{g}.weight", refquant.dequantize)
                if g == "attn_q":
                    w = unpermute(w, heads)
                elif g == "attn_k":
                    w = unpermute(w, kv_heads)
                t[f"model.layers.{i}.{h}.weight"] = w
    t = {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": int(kv["llama.embedding_length"]), "intermediate_size": int(kv["llama.feed_forward_length"]),
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "num_hidden_layers": n_layers,
              "rms_norm_eps": float(kv["llama.attention.layer_norm_rms_epsilon"]),
              "rope_theta": float(kv["llama.rope.freq_base"]), "vocab_size": int(kv["llama.vocab_size"]),
              "max_position_embeddings": int(kv["llama.context_length"]), "tie_word_embeddings": True,
              "torch_dtype": "float32", "hidden_act": "silu"}
    save_checkpoint(out_dir, t, extra_files={"config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"})
    return t


def with_activations(d, t, rows=64, seed=0):
    """Random calibration inputs for every linear layer of the checkpoint tensors `t` (written at
    `d`), as `DIR/<module>.npy` beside it: returns DIR."""
    import numpy as np
    adir = d.parent / "acts"
    adir.mkdir()
    rng = np.random.default_rng(seed)
    for k, w in t.items():
        if k.startswith("model.layers.") and w.ndim == 2:
            np.save(adir / f"{k[:-len('.weight')]}.npy", rng.standard_normal((rows, w.shape[1])).astype(np.float32))
    return adir
