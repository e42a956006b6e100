"""GGUF <-> safetensors (Hugging Face layout) for the llama and gemma3 architectures.

GGUF -> safetensors: every tensor decoded to float32 and renamed to its transformers name;
for llama, attn_q/attn_k rows put back in Hugging Face's order (llama.cpp's converter permutes
them: within each head, row r = 2i + j of GGUF is row j * d/2 + i of Hugging Face); for
gemma3, 1 taken off every RMS-norm weight (Hugging Face computes x * (1 + w), llama.cpp's
converter stores 1 + w). The directory gets `model.safetensors`, a transformers-style
`config.json`, and `gguf_metadata.json`: the GGUF key/value pairs (tokenizer included), so the
way back loses nothing but the quantization.

safetensors -> GGUF: the inverse, written as an F32 GGUF (quantize it with `refquant quantize`).
`load_safetensors(dir)` gives the same `Weights` in memory, so `Model` runs on either form and
gives the same logits (tests/test_model_convert.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..backend import SPEC
from ..errors import FormatError
from ..io.gguf import KV, GGUFFile, TensorInfo, write_gguf
from .weights import Weights

F32 = np.float32

_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}
_LAYER_ARCH = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(name: str, arch: str) -> str:
    base, _, suffix = name.rpartition(".")
    if base.startswith("blk."):
        _, il, part = base.split(".", 2)
        table = {**_LAYER, **_LAYER_ARCH[arch]}
        if part not in table:
            raise FormatError(f"{name}: no Hugging Face name for {part!r} in {arch}")
        return f"model.layers.{il}.{table[part]}.{suffix}"
    if base not in _TOP:
        raise FormatError(f"{name}: no Hugging Face name")
    return f"{_TOP[base]}.{suffix}"


def gguf_name(hf: str, arch: str) -> str:
    inv_top = {v: k for k, v in _TOP.items()}
    inv_layer = {v: k for k, v in {**_LAYER, **_LAYER_ARCH[arch]}.items()}
    base, _, suffix = hf.rpartition(".")
    if base.startswith("model.layers."):
        _, _, il, part = base.split(".", 3)
        if part not in inv_layer:
            raise FormatError(f"{hf}: no GGUF name in {arch}")
        return f"blk.{il}.{inv_layer[part]}.{suffix}"
    if base not in inv_top:
        raise FormatError(f"{hf}: no GGUF name")
    return f"{inv_top[base]}.{suffix}"


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF (llama.cpp) q/k rows -> Hugging Face rows: per head, (d/2, 2) pairs -> (2, d/2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows -> GGUF rows, as convert_hf_to_gguf.py's LlamaModel.permute."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def _to_hf(name: str, w: np.ndarray, md: dict) -> np.ndarray:
    arch = md["general.architecture"]
    if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
        n = md["llama.attention.head_count"] if "attn_q" in name else md.get("llama.attention.head_count_kv", md["llama.attention.head_count"])
        return _unpermute(w, int(n))
    if arch == "gemma3" and _is_norm(name):
        return (w - F32(1)).astype(F32)
    return w


def _from_hf(name: str, w: np.ndarray, md: dict) -> np.ndarray:
    arch = md["general.architecture"]
    if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
        n = md["llama.attention.head_count"] if "attn_q" in name else md.get("llama.attention.head_count_kv", md["llama.attention.head_count"])
        return _permute(w, int(n))
    if arch == "gemma3" and _is_norm(name):
        return (w + F32(1)).astype(F32)
    return w


def _kv_json(kv: KV):
    v = kv.value
    if isinstance(v, np.ndarray) or hasattr(v, "tolist"):   # a NumPy array or a StringArray
        v = v.tolist()
    elif isinstance(v, (list, tuple)):
        v = [x.item() if isinstance(x, np.generic) else x for x in v]
    elif isinstance(v, np.generic):
        v = v.item()
    return {"key": kv.key, "vtype": int(kv.vtype), "value": v,
            "sub_type": None if kv.sub_type is None else int(kv.sub_type)}


def _hf_config(md: dict) -> dict:
    arch = md["general.architecture"]
    g = lambda k, d=None: md.get(f"{arch}.{k}", d)  # noqa: E731
    cfg = {"architectures": ["LlamaForCausalLM" if arch == "llama" else "Gemma3ForCausalLM"],
           "model_type": "llama" if arch == "llama" else "gemma3_text",
           "hidden_size": g("embedding_length"), "intermediate_size": g("feed_forward_length"),
           "num_hidden_layers": g("block_count"), "num_attention_heads": g("attention.head_count"),
           "num_key_value_heads": g("attention.head_count_kv", g("attention.head_count")),
           "rms_norm_eps": g("attention.layer_norm_rms_epsilon"), "rope_theta": g("rope.freq_base"),
           "max_position_embeddings": g("context_length"),
           "vocab_size": len(md["tokenizer.ggml.tokens"]),
           "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
           "eos_token_id": md.get("tokenizer.ggml.eos_token_id"), "torch_dtype": "float32"}
    if arch == "gemma3":
        cfg.update(head_dim=g("attention.key_length"), sliding_window=g("attention.sliding_window"),
                   rope_local_base_freq=g("rope.freq_base_swa", 10000.0), query_pre_attn_scalar=g("attention.key_length"),
                   hidden_activation="gelu_pytorch_tanh")
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in cfg.items()}


def gguf_to_safetensors(gguf_path, out_dir, n_layers: int | None = None) -> Path:
    """Write the Hugging Face form of a GGUF model; `n_layers`: keep only the first n blocks
    (block_count and num_hidden_layers say so), a smaller model for quick runs."""
    from safetensors.numpy import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with GGUFFile(gguf_path) as f:
        md = dict(f.metadata)
        arch = md.get("general.architecture")
        if arch not in _LAYER_ARCH:
            raise FormatError(f"{gguf_path}: architecture {arch!r} is not supported (llama, gemma3)")
        keep = [t for t in f.tensors
                if n_layers is None or not t.name.startswith("blk.") or int(t.name.split(".")[1]) < n_layers]
        tensors = {hf_name(t.name, arch): np.ascontiguousarray(_to_hf(t.name, f.dequantize(t.name, SPEC.dequantize), md))
                   for t in keep}
        kvs = [_kv_json(kv) for kv in f.kvs]
        if n_layers is not None:
            if not 1 <= n_layers <= int(md[f"{arch}.block_count"]):
                raise FormatError(f"n_layers must be from 1 to {md[f'{arch}.block_count']}, got {n_layers}")
            md[f"{arch}.block_count"] = n_layers
            for kv in kvs:
                if kv["key"] == f"{arch}.block_count":
                    kv["value"] = n_layers
    tmp = out / "model.safetensors.partial"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    cfg = _hf_config(md)
    cfg["tie_word_embeddings"] = "lm_head.weight" not in tensors   # no output.weight: tied to the embedding
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "gguf_metadata.json").write_text(json.dumps(kvs) + "\n")
    return out


def _read_dir(st_dir):
    from gguf import GGUFValueType

    from ..errors import FileFormatError
    from ..io.safetensors import SafetensorsFile, read_json
    d = Path(st_dir)
    for need in ("model.safetensors", "gguf_metadata.json"):
        if not (d / need).is_file():
            raise FormatError(f"{d}: {need} is missing (write the directory with gguf_to_safetensors)")
    meta = d / "gguf_metadata.json"
    raw = read_json(meta, "GGUF metadata")
    if not isinstance(raw, list):
        raise FileFormatError(f"{meta}: not a JSON list of key/value records")
    kvs = []
    for i, r in enumerate(raw):
        try:
            kvs.append(KV(str(r["key"]), GGUFValueType(r["vtype"]), r["value"],
                          None if r["sub_type"] is None else GGUFValueType(r["sub_type"])))
        except (KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"{meta}: record {i} is not a key/value record "
                                  f"(key, vtype, value, sub_type): {type(e).__name__} {e}") from None
    md = {kv.key: kv.value for kv in kvs}
    arch = md.get("general.architecture")
    if arch not in _LAYER_ARCH:
        raise FormatError(f"{d}: architecture {arch!r} is not supported (llama, gemma3)")
    tensors = {gguf_name(k, arch): _from_hf(gguf_name(k, arch), v.astype(F32), md)
               for k, v in SafetensorsFile(d / "model.safetensors").items()}
    return kvs, md, tensors


def load_safetensors(st_dir, **kw) -> Weights:
    """A Hugging Face-layout directory as Weights in llama.cpp's layout (float32 tensors)."""
    _, md, tensors = _read_dir(st_dir)

    def dec(v):
        return lambda rows=None: v if rows is None else v[rows]
    return Weights({n: ("F32", v.shape, dec(v)) for n, v in tensors.items()}, md, **kw)


def safetensors_to_gguf(st_dir, gguf_path) -> None:
    """Write an F32 GGUF from a directory gguf_to_safetensors wrote (general.file_type = 0)."""
    from gguf import GGMLQuantizationType, GGUFValueType
    kvs, md, tensors = _read_dir(st_dir)
    kvs = [kv for kv in kvs if kv.key != "general.file_type"]
    kvs.append(KV("general.file_type", GGUFValueType.UINT32, 0))
    infos = [TensorInfo(n, int(GGMLQuantizationType.F32), v.shape, 0, v.size * 4) for n, v in tensors.items()]
    write_gguf(gguf_path, kvs, infos, lambda t: tensors[t.name].astype("<f4"))
