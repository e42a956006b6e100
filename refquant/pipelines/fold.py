"""Per-input-channel scales folded into a model's weights (AWQ, SmoothQuant), for every pipeline.

A scale group is a tensor and the linear layers that read its output (q, k and v read the
attention norm's). With s (K,) chosen for the group, the linear layers' columns are multiplied
by s and the tensor before them is divided by it, so the model computes the same function while
the quantizer sees the scaled columns (spec/algorithms/awq.md, spec/algorithms/smoothquant.md):

    linear W (N, K)          W · diag(s)
    norm weight w (K,)       w / s          Gemma's Hugging Face norms, stored as w in x · (1 + w):
                                            (1 + w) / s − 1
    linear before W' (K, M)  diag(1/s) · W' (its rows)

Every group of a layer has its scale chosen on the layer's weights before any is folded, then
all are folded: the v projection is both a member of the first group and the tensor before the
third. A group is skipped when one of its tensors is missing, or when the tensor before has an
output size other than K (v_proj -> o_proj under grouped-query attention), as llm-compressor
and AutoAWQ skip it.
"""
from __future__ import annotations

from typing import Callable, MutableMapping, Optional, Sequence

import numpy as np

F32 = np.float32

Groups = Sequence[tuple[str, Sequence[str]]]

# (the tensor before, the linear layers that read its output), in Hugging Face's names, as
# llm-compressor's llama mappings
HF_GROUPS: Groups = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                     ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
                     ("self_attn.v_proj", ("self_attn.o_proj",)),
                     ("mlp.up_proj", ("mlp.down_proj",)))
# Gemma 3: post_attention_layernorm normalises the attention's output; the FFN's input norm is
# pre_feedforward_layernorm, and Hugging Face stores its norms as w in x · (1 + w)
HF_GEMMA3_GROUPS: Groups = (("input_layernorm", HF_GROUPS[0][1]), ("pre_feedforward_layernorm", HF_GROUPS[1][1]),
                            HF_GROUPS[2], HF_GROUPS[3])
# the same groups in llama.cpp's GGUF names (a GGUF's Gemma norms already hold 1 + w)
GGUF_GROUPS: Groups = (("attn_norm", ("attn_q", "attn_k", "attn_v")),
                       ("ffn_norm", ("ffn_gate", "ffn_up")),
                       ("attn_v", ("attn_output",)),
                       ("ffn_up", ("ffn_down",)))


def hf_groups(model_type: str) -> Groups:
    """The Hugging Face groups of an architecture (config.json's model_type)."""
    return HF_GEMMA3_GROUPS if str(model_type).startswith("gemma3") else HF_GROUPS


def divide(before: np.ndarray, s: np.ndarray, offset_norm: bool = False) -> np.ndarray:
    """The tensor before a group with 1/s folded in: a norm's weight / s (offset_norm, Gemma's
    Hugging Face norms: (1 + w) / s − 1), a linear's rows / s. float32."""
    before = before.astype(F32)
    if before.ndim == 1:
        return ((F32(1) + before) / s - F32(1) if offset_norm else before / s).astype(F32)
    return (before / s[:, None]).astype(F32)


def fold_layer(weights: MutableMapping[str, np.ndarray], prefix: str, groups: Groups,
               scale: Callable[[str, list[str]], Optional[np.ndarray]], *,
               offset_norm: bool = False) -> set[str]:
    """Choose and fold the scales of one layer's groups, in place on `weights` (name -> float32
    array; names are prefix + group name + ".weight"). scale(before, members) returns s (K,) for
    a group, or None to leave it as it is. Returns the names of the tensors changed."""
    plans = []
    for before, members in groups:
        names = [f"{prefix}{m}.weight" for m in members]
        before_name = f"{prefix}{before}.weight"
        if not all(n in weights for n in names) or before_name not in weights:
            continue
        K = weights[names[0]].shape[1]
        if weights[before_name].shape[0] != K:       # grouped-query attention: v_proj -> o_proj
            continue
        s = scale(before_name, names)
        if s is not None:
            plans.append((names, before_name, s))
    changed = set()
    for names, before_name, s in plans:
        for n in names:
            weights[n] = (weights[n] * s[None, :]).astype(F32)
        weights[before_name] = divide(weights[before_name], s, offset_norm)
        changed.update(names)
        changed.add(before_name)
    return changed
