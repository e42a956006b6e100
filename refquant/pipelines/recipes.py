"""Whole-model quantization as llama.cpp does it (src/llama-quant.cpp, `llama_model_quantize`).

A file type ("Q4_K_M", ...) is a recipe: a default ggml type plus rules that move single tensors
to other types by their role (token_embd, output, attn_v, ffn_down, ...), their layer, the
model's shape (grouped-query attention, experts) and the row length. This module states those
rules (`tensor_type`, `plan`), reads an importance matrix (`refquant.ggml.imatrix`), and writes
the quantized GGUF file the way llama.cpp lays it out (`quantize_model`):

* metadata: the input's key/value pairs in order, without `split.*`, then
  `general.quantization_version` = 2 and `general.file_type` = the file type (both u32, moved to
  the end), then the imatrix keys llama-quantize adds;
* tensors sorted by (layer number, name), `blk.N.` giving the layer, -1 for the others;
* n_dims with trailing ne=1 dimensions dropped; alignment 32; data padded with zeros.

Each tensor's rows are quantized by the registered row quantizers, except where the ggml that
llama.cpp vendors quantizes a type differently from the one refquant registers (`LLAMA_CPP_ROWS`:
IQ1_M's split search, spec/ggml/iq1_m.md). `quantize_model(..., backend=...)` runs the rows on an
accelerated backend for the (operation, type) pairs it claims, the spec for the rest.

The spec page is spec/ggml/recipes.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from gguf import GGUFValueType

from ..errors import FileFormatError, FormatError, InputError
from ..io.gguf import KV, GGUFFile, TensorInfo, write_gguf

F32 = np.float32

# ------------------------------------------------------------------------------------ ggml types
# (id, elements per block, bytes per block, is_quantized), from ggml.c's type_traits.


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int
    blck_size: int
    type_size: int
    quantized: bool


_TYPE_ROWS = [
    ("F32", 0, 1, 4, False), ("F16", 1, 1, 2, False), ("Q4_0", 2, 32, 18, True), ("Q4_1", 3, 32, 20, True),
    ("Q5_0", 6, 32, 22, True), ("Q5_1", 7, 32, 24, True), ("Q8_0", 8, 32, 34, True), ("Q8_1", 9, 32, 36, True),
    ("Q2_K", 10, 256, 84, True), ("Q3_K", 11, 256, 110, True), ("Q4_K", 12, 256, 144, True),
    ("Q5_K", 13, 256, 176, True), ("Q6_K", 14, 256, 210, True), ("Q8_K", 15, 256, 292, True),
    ("IQ2_XXS", 16, 256, 66, True), ("IQ2_XS", 17, 256, 74, True), ("IQ3_XXS", 18, 256, 98, True),
    ("IQ1_S", 19, 256, 50, True), ("IQ4_NL", 20, 32, 18, True), ("IQ3_S", 21, 256, 110, True),
    ("IQ2_S", 22, 256, 82, True), ("IQ4_XS", 23, 256, 136, True), ("I8", 24, 1, 1, False),
    ("I16", 25, 1, 2, False), ("I32", 26, 1, 4, False), ("I64", 27, 1, 8, False), ("F64", 28, 1, 8, False),
    ("IQ1_M", 29, 256, 56, True), ("BF16", 30, 1, 2, False), ("TQ1_0", 34, 256, 54, True),
    ("TQ2_0", 35, 256, 66, True), ("MXFP4", 39, 32, 17, True), ("NVFP4", 40, 64, 36, True),
    ("Q1_0", 41, 128, 18, True), ("Q2_0", 42, 64, 18, True),
]
GGML_TYPES: dict[str, GGMLType] = {r[0]: GGMLType(*r) for r in _TYPE_ROWS}
_BY_ID: dict[int, GGMLType] = {t.id: t for t in GGML_TYPES.values()}
GGML_TYPE_COUNT = 43


def ggml_type(t) -> GGMLType:
    """A ggml type by name (any case), id, or GGMLQuantizationType."""
    if isinstance(t, GGMLType):
        return t
    name = getattr(t, "name", None)
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if int(t) in _BY_ID:
            return _BY_ID[int(t)]
        raise FormatError(f"unknown ggml type id {int(t)}")
    if name is None:
        name = t
    if isinstance(name, str) and name.upper() in GGML_TYPES:
        return GGML_TYPES[name.upper()]
    raise FormatError(f"unknown ggml type {t!r}; known: {', '.join(GGML_TYPES)}")


# ------------------------------------------------------------------------------------ file types

@dataclass(frozen=True)
class FileType:
    name: str                  # LLAMA_FTYPE_* without the prefix: "Q4_K_M", "F16", "ALL_F32" is "F32"
    id: int                    # the value written to general.file_type
    default: Optional[str]     # llama_ftype_get_default_type; None: llama.cpp refuses the file type


_FTYPE_ROWS = [
    ("F32", 0, "F32"), ("F16", 1, "F16"), ("Q4_0", 2, "Q4_0"), ("Q4_1", 3, "Q4_1"), ("Q8_0", 7, "Q8_0"),
    ("Q5_0", 8, "Q5_0"), ("Q5_1", 9, "Q5_1"), ("Q2_K", 10, "Q2_K"), ("Q3_K_S", 11, "Q3_K"),
    ("Q3_K_M", 12, "Q3_K"), ("Q3_K_L", 13, "Q3_K"), ("Q4_K_S", 14, "Q4_K"), ("Q4_K_M", 15, "Q4_K"),
    ("Q5_K_S", 16, "Q5_K"), ("Q5_K_M", 17, "Q5_K"), ("Q6_K", 18, "Q6_K"), ("IQ2_XXS", 19, "IQ2_XXS"),
    ("IQ2_XS", 20, "IQ2_XS"), ("Q2_K_S", 21, "Q2_K"), ("IQ3_XS", 22, "IQ3_S"), ("IQ3_XXS", 23, "IQ3_XXS"),
    ("IQ1_S", 24, "IQ1_S"), ("IQ4_NL", 25, "IQ4_NL"), ("IQ3_S", 26, "IQ3_S"), ("IQ3_M", 27, "IQ3_S"),
    ("IQ2_S", 28, "IQ2_XS"), ("IQ2_M", 29, "IQ2_S"), ("IQ4_XS", 30, "IQ4_XS"), ("IQ1_M", 31, "IQ1_M"),
    ("BF16", 32, "BF16"), ("TQ1_0", 36, "TQ1_0"), ("TQ2_0", 37, "TQ2_0"), ("MXFP4_MOE", 38, "MXFP4"),
    ("NVFP4", 39, None), ("Q1_0", 40, "Q1_0"), ("Q2_0", 41, "Q2_0"),
]
FILE_TYPES: dict[str, FileType] = {r[0]: FileType(*r) for r in _FTYPE_ROWS}
_FTYPE_ALIASES = {"ALL_F32": "F32"}


def file_type(ftype) -> FileType:
    """A llama.cpp file type by name ("Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M", any case) or id."""
    if isinstance(ftype, FileType):
        return ftype
    if isinstance(ftype, (int, np.integer)) and not isinstance(ftype, bool):
        for f in FILE_TYPES.values():
            if f.id == int(ftype):
                return f
        raise FormatError(f"unknown llama.cpp file type id {int(ftype)}")
    if not isinstance(ftype, str):
        raise FormatError(f"file type must be a name or an id, got {type(ftype).__name__}")
    key = ftype.upper()
    for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = _FTYPE_ALIASES.get(key, key)
    if key not in FILE_TYPES:
        raise FormatError(f"unknown llama.cpp file type {ftype!r}; known: {', '.join(FILE_TYPES)}")
    return FILE_TYPES[key]


# ------------------------------------------------------------------------------------ the model

@dataclass(frozen=True)
class ModelInfo:
    """What the recipe reads from the model's hyperparameters (llama_hparams, llama_model)."""
    arch: str
    n_layer: int               # {arch}.block_count (n_layer_all)
    n_expert: int = 0          # {arch}.expert_count
    n_head: int = 0            # {arch}.attention.head_count, layer 0
    n_head_kv: int = 0         # {arch}.attention.head_count_kv, layer 0 (default: n_head)
    n_layer_nextn: int = 0     # {arch}.nextn_predict_layers
    is_70b: bool = False       # llama_model::type == LLM_TYPE_70B

    @property
    def n_gqa(self) -> int:
        return 0 if self.n_head_kv == 0 else self.n_head // self.n_head_kv


# architectures whose load_arch_hparams gives LLM_TYPE_70B, by layer count (n_layer - nextn)
_SEVENTY_B_LAYERS = {"qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


def _first(v):
    if isinstance(v, (list, tuple, np.ndarray)):
        return int(v[0]) if len(v) else 0
    return int(v)


def model_info(f: GGUFFile) -> ModelInfo:
    meta = f.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise FileFormatError(f"{f.path}: no general.architecture key: not a llama.cpp model file")
    try:
        n_layer = int(meta[f"{arch}.block_count"])
    except KeyError:
        raise FileFormatError(f"{f.path}: key {arch}.block_count not found") from None
    n_expert = int(meta.get(f"{arch}.expert_count", 0))
    n_head = _first(meta.get(f"{arch}.attention.head_count", 0))
    n_head_kv = _first(meta.get(f"{arch}.attention.head_count_kv", n_head))
    nextn = int(meta.get(f"{arch}.nextn_predict_layers", 0))
    n_main = n_layer - nextn
    if arch == "llama":
        is_70b = n_expert != 8 and n_main == 80 and n_head != n_head_kv
    else:
        is_70b = _SEVENTY_B_LAYERS.get(arch) == n_main
    return ModelInfo(arch, n_layer, n_expert, n_head, n_head_kv, nextn, is_70b)


# ------------------------------------------------------------------------------------ categories

TOKEN_EMBD, ATTN_Q, ATTN_V, ATTN_K, ATTN_QKV, ATTN_KV_B, ATTN_OUTPUT = \
    "token_embd", "attn_q", "attn_v", "attn_k", "attn_qkv", "attn_kv_b", "attn_output"
FFN_UP, FFN_GATE, FFN_DOWN, OUTPUT, OTHER = "ffn_up", "ffn_gate", "ffn_down", "output", "other"


def is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def category(name: str) -> str:
    """tensor_get_category: the first rule that matches, in this order (substring matches)."""
    if name == "output.weight":
        return OUTPUT
    if is_token_embd(name):
        return TOKEN_EMBD
    for sub, cat in (("attn_qkv.weight", ATTN_QKV), ("attn_kv_b.weight", ATTN_KV_B), ("attn_v.weight", ATTN_V),
                     ("attn_k.weight", ATTN_K), ("attn_q.weight", ATTN_Q), ("attn_output.weight", ATTN_OUTPUT),
                     ("ffn_up", FFN_UP), ("ffn_gate", FFN_GATE), ("ffn_down", FFN_DOWN)):
        if sub in name:
            return cat
    return OTHER


def _is_attn_v(cat: str) -> bool:
    return cat in (ATTN_V, ATTN_QKV, ATTN_KV_B)


_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_GLM5_NEXT_NEVER = ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
                    "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
                    "attn_v_b.weight")


def n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: the number of dimensions up to the last one that is not 1 (at least 1)."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] != 1:
            return i + 1
    return 1


def allows_quantization(name: str, ne: tuple[int, ...], arch: str, *, quantize_output_tensor: bool = True) -> bool:
    """tensor_allows_quantization: 2-D and 3-D tensors whose name ends in "weight", except norms,
    routers, tiny or positional tensors (the list above)."""
    if n_dims(ne) < 2:
        return False
    if not name.endswith("weight"):
        return False
    if not quantize_output_tensor and name == "output.weight":
        return False
    if any(s in name for s in _NEVER_QUANTIZED):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    if arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_NEVER):
        return False
    return True


def requires_imatrix(name: str, dst: str, ftype: FileType) -> bool:
    """tensor_requires_imatrix."""
    if is_token_embd(name) or name == "output.weight":
        return False
    if dst in ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"):
        return True
    return dst == "Q2_K" and ftype.name == "Q2_K_S"


# the types a 256-block type falls back to when the row length is not a multiple of 256
_FALLBACK = {"IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
             "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_0": "Q4_0", "Q2_K": "Q4_0",
             "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def fallback(ncols: int, target: str) -> str:
    """tensor_type_fallback: a type whose block does not divide the row length is replaced."""
    blck = GGML_TYPES[target].blck_size
    if ncols % blck == 0:
        return target
    if target in _FALLBACK:
        out = _FALLBACK[target]
    elif blck <= 32:
        out = target
    else:
        raise FormatError(f"no tensor type fallback is defined for type {target} "
                          f"(row length {ncols} is not a multiple of its block size {blck})")
    if ncols % GGML_TYPES[out].blck_size:
        out = "F16"
    return out


@dataclass
class _State:
    """quantize_state_impl: the counters the rules read and advance, in tensor order."""
    model: ModelInfo
    has_imatrix: bool = False
    has_tied_embeddings: bool = True
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0

    @property
    def n_ffn(self) -> int:
        return self.model.n_layer


def _use_more_bits(i: int, n: int) -> bool:
    # C integer division truncates toward zero; i and n are never negative here
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


_LAYER_RE = re.compile(r"blk\.\s*([+-]?\d+)")


def _layer_of(name: str) -> Optional[int]:
    """sscanf(name, "blk.%d.", &i): the layer number after a leading "blk.", or None."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def _layer_info(st: _State, counter: int, name: str) -> tuple[int, int]:
    n_layer = st.n_ffn
    if max(1, st.model.n_expert) > 1:
        i = _layer_of(name)
        if i is None:
            raise FormatError(f"failed to determine layer for tensor {name}")
        if i < 0 or i >= n_layer:
            raise FormatError(f"bad layer {i} for tensor {name}: must be in [0, {n_layer})")
        return i, n_layer
    return counter, n_layer


_IQ2_GROUP = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")


def _type_impl(st: _State, new: str, name: str, ne: tuple[int, ...], ft: FileType, cat: str,
               output_tensor_type: Optional[str], token_embedding_type: Optional[str]) -> str:
    """llama_tensor_get_type_impl: the recipe proper. Branches are taken in llama.cpp's order."""
    m, f, arch = st.model, ft.name, st.model.arch
    gqa = m.n_gqa
    if arch == "glm5-next" and ("attn_q_a" in name or "attn_q_b" in name or "nextn.eh_proj" in name):
        if new not in ("F32", "BF16", "F16"):
            return "Q8_0"
    if cat == OUTPUT or (st.has_tied_embeddings and cat == TOKEN_EMBD):
        if output_tensor_type is not None:
            new = output_tensor_type
        else:
            nx = ne[0]
            if f == "MXFP4_MOE":
                new = "Q8_0"
            elif arch == "falcon" or nx % GGML_TYPES[new].blck_size:
                new = "Q8_0"
            elif f in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                new = "Q5_K"
            elif new != "Q8_0":
                new = "Q6_K"
    elif f == "MXFP4_MOE":
        expert_role = cat in (FFN_UP, FFN_GATE, FFN_DOWN)
        ne2 = ne[2] if len(ne) > 2 else 1
        new = "MXFP4" if ne2 > 1 and (arch != "bailingmoe3" or expert_role) else "Q8_0"
    elif cat == TOKEN_EMBD:
        if token_embedding_type is not None:
            new = token_embedding_type
        elif f in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            new = "Q2_K"
        elif f in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            new = "IQ3_S"
        elif f in ("TQ1_0", "TQ2_0", "Q2_0"):
            new = "Q4_K"
    elif f in _IQ2_GROUP:
        if _is_attn_v(cat):
            if gqa >= 4 or m.n_expert >= 4:
                new = "Q4_K"
            else:
                new = "IQ3_S" if f in ("IQ2_S", "IQ2_M") else "Q2_K"
            st.i_attention_wv += 1
        elif m.n_expert == 8 and cat == ATTN_K:
            new = "Q4_K"
        elif cat == FFN_DOWN:
            if st.i_ffn_down < st.n_ffn // 8:
                new = "IQ3_S" if f in ("IQ2_S", "IQ2_M") else "Q2_K"
            st.i_ffn_down += 1
        elif cat == ATTN_OUTPUT:
            if m.n_expert == 8:
                new = "Q5_K"
            elif f in ("IQ1_S", "IQ1_M"):
                new = "IQ2_XXS"
            elif f in ("IQ2_S", "IQ2_M"):
                new = "IQ3_S"
    elif _is_attn_v(cat):
        if f == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
        elif f == "Q2_K_S" and gqa >= 4:
            new = "Q4_K"
        elif f == "IQ3_XXS":
            new = "Q4_K" if gqa >= 4 else ("IQ3_S" if not st.has_imatrix else "IQ3_XXS")
        elif f in ("IQ3_XS", "IQ3_S") and gqa >= 4:
            new = "Q4_K"
        elif f == "IQ3_M":
            new = "Q4_K"
        elif f == "Q3_K_M":
            new = "Q5_K" if st.i_attention_wv < 2 else "Q4_K"
        elif f == "Q3_K_L":
            new = "Q5_K"
        elif f in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new = "Q5_K"
        elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(st.i_attention_wv, st.n_attention_wv):
            new = "Q6_K"
        elif f == "Q4_K_S" and st.i_attention_wv < 4:
            new = "Q5_K"
        if m.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if m.n_expert == 8:
            new = "Q8_0"
        st.i_attention_wv += 1
    elif cat == ATTN_K:
        if m.n_expert == 8:
            new = "Q8_0"
        elif f == "IQ3_XS":
            new = "IQ3_XXS"
        elif f == "IQ3_XXS":
            new = "IQ2_S"
    elif cat == ATTN_Q:
        if f == "IQ3_XS":
            new = "IQ3_XXS"
        elif f == "IQ3_XXS":
            new = "IQ2_S"
    elif cat == FFN_DOWN:
        i, n = _layer_info(st, st.i_ffn_down, name)
        if f == "Q2_K":
            new = "Q3_K"
        elif f == "Q2_K_S":
            if i < n // 8:
                new = "Q4_K"
        elif f == "IQ3_XXS" and not st.has_imatrix:
            new = "Q4_K" if i < n // 8 else "Q3_K"
        elif f == "Q3_K_M":
            new = ("Q5_K" if i < n // 16 else
                   "Q4_K" if arch != "falcon" or _use_more_bits(i, n) else "Q3_K")
        elif f == "IQ3_M" and (i < n // 8 or (m.n_expert == 8 and _use_more_bits(i, n))):
            new = "Q4_K"
        elif f == "Q3_K_L":
            new = "Q4_K" if arch == "falcon" else "Q5_K"
        elif f == "Q4_K_M":
            if arch == "falcon":
                new = "Q6_K" if i < n // 16 else ("Q5_K" if _use_more_bits(i, n) else "Q4_K")
            elif _use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and f in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
            new = "Q5_K"
        elif f == "Q5_K_M" and _use_more_bits(i, n):
            new = "Q6_K"
        elif f == "Q4_K_S" and arch != "falcon" and i < n // 8:
            new = "Q5_K"
        elif f in ("Q4_0", "Q5_0") and st.has_imatrix and i < n // 8:
            new = "Q4_1" if f == "Q4_0" else "Q5_1"
        st.i_ffn_down += 1
    elif cat == ATTN_OUTPUT:
        if arch != "falcon":
            if m.n_expert == 8:
                if f in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                         "IQ3_S", "IQ3_M", "IQ4_XS"):
                    new = "Q5_K"
            else:
                new = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K",
                       "IQ3_M": "Q4_K"}.get(f, new)
        elif f == "Q3_K_L":
            new = "Q4_K"
    elif cat == ATTN_QKV:  # never reached: attn_qkv is taken by the attn_v branch above
        pass
    elif cat in (FFN_GATE, FFN_UP):
        counter = st.i_ffn_gate if cat == FFN_GATE else st.i_ffn_up
        i, n = _layer_info(st, counter, name)
        if f == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            new = "IQ3_XXS"
        if cat == FFN_GATE:
            st.i_ffn_gate += 1
        else:
            st.i_ffn_up += 1
    return new


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output: where it comes from and what it becomes."""
    name: str
    ne: tuple[int, ...]        # ggml order (innermost first), trailing 1s dropped as written
    src_type: str
    dst_type: str
    allows_quantization: bool
    requires_imatrix: bool
    offset: int                # data offset in the input file's data section
    nbytes: int                # bytes in the input

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def converted(self) -> bool:
        return self.src_type != self.dst_type


def tensor_order_key(name: str):
    """weight_name_comparer: by layer (sscanf "blk.%d.", -1 when absent), then by name's bytes."""
    layer = _layer_of(name)
    return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))


def plan(f: GGUFFile, ftype, *, has_imatrix: bool = False, output_tensor_type=None, token_embedding_type=None,
         pure: bool = False, quantize_output_tensor: bool = True) -> list[TensorPlan]:
    """The output's tensors in file order with the type llama.cpp chooses for each (the
    preliminary loop of llama_model_quantize_impl)."""
    ft = file_type(ftype)
    if ft.default is None:
        raise FormatError(f"llama.cpp has no default tensor type for file type {ft.name} (id {ft.id}): "
                          f"llama_model_quantize refuses it as an invalid output file type")
    default = ft.default
    ott = None if output_tensor_type is None else ggml_type(output_tensor_type).name
    tet = None if token_embedding_type is None else ggml_type(token_embedding_type).name
    st = _State(model_info(f), has_imatrix=has_imatrix)
    tensors = sorted(f.tensors, key=lambda t: tensor_order_key(t.name))
    cats = [category(t.name) for t in tensors]
    st.n_attention_wv = sum(_is_attn_v(c) for c in cats)
    st.has_tied_embeddings = OUTPUT not in cats
    out = []
    for t, cat in zip(tensors, cats):
        ne_full = tuple(reversed(t.shape)) if t.shape else (1,)
        ne = ne_full[:n_dims(ne_full)]
        src = ggml_type(t.ggml_type).name
        allowed = allows_quantization(t.name, ne, st.model.arch, quantize_output_tensor=quantize_output_tensor)
        dst = src
        if allowed:
            dst = _tensor_type(st, t.name, ne, default, ft, cat, ott, tet, pure)
        out.append(TensorPlan(t.name, ne, src, dst, allowed, requires_imatrix(t.name, dst, ft), t.offset, t.nbytes))
    return out


def _tensor_type(st: _State, name, ne, default, ft, cat, ott, tet, pure) -> str:
    """llama_tensor_get_type (for a tensor that allows quantization)."""
    if tet is not None and cat == TOKEN_EMBD:
        return tet
    if ott is not None and cat == OUTPUT:
        return ott
    new = default
    if GGML_TYPES[default].quantized:
        if not pure:
            new = _type_impl(st, new, name, ne, ft, cat, ott, tet)
        fb = fallback(ne[0], new)
        if fb != new:
            st.n_fallback += 1
        new = fb
    return new


def tensor_types(path, ftype, **kw) -> dict[str, str]:
    """name -> ggml type name of every tensor llama.cpp would write for `ftype`."""
    with GGUFFile(path) as f:
        return {p.name: p.dst_type for p in plan(f, ftype, **kw)}


# ------------------------------------------------------------------------------------ validation
# ggml_validate_row_data: the fp16 scale fields that must be finite, by type (byte offsets).
_FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q8_1": (0, 2),
                "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
                "TQ1_0": (52,), "TQ2_0": (64,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,),
                "IQ3_XXS": (0,), "IQ3_S": (0,), "IQ1_S": (0,), "IQ4_NL": (0,), "IQ4_XS": (0,),
                "Q1_0": (0,), "Q2_0": (0,)}


def _validate(name: str, dst: str, data: np.ndarray, first_row: int) -> None:
    t = GGML_TYPES[dst]
    rows = data.reshape(data.shape[0], -1)
    bad = None
    if dst == "F32":
        v = rows.view("<u4")
        bad = (v & 0x7F800000) == 0x7F800000
    elif dst in ("F16", "BF16"):
        v = rows.view("<u2")
        bad = (v & 0x7C00) == 0x7C00 if dst == "F16" else (v & 0x7F80) == 0x7F80
    elif dst in _FP16_FIELDS:
        blocks = rows.reshape(rows.shape[0], -1, t.type_size)
        bad = np.zeros(blocks.shape[:2], dtype=bool)
        for off in _FP16_FIELDS[dst]:
            h = blocks[:, :, off].astype(np.uint16) | (blocks[:, :, off + 1].astype(np.uint16) << 8)
            bad |= (h & 0x7C00) == 0x7C00
    elif dst == "MXFP4":
        bad = rows.reshape(rows.shape[0], -1, t.type_size)[:, :, 0] == 0xFF
    if bad is not None and bad.any():
        r = int(np.argwhere(bad)[0][0])
        raise InputError(f"tensor {name!r}: quantized data validation failed in row {first_row + r}: "
                         f"{dst} gets an infinite or NaN scale (values too large for it); llama.cpp refuses it too")


# ------------------------------------------------------------------------------------ writing

QUANTIZATION_VERSION = 2      # GGML_QNT_VERSION
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"
_SLAB_ELEMENTS = 1 << 22      # rows are quantized in slabs of about this many values


def _c_str_kv(kv: KV) -> KV:
    """gguf_set_kv copies strings through c_str(): a string value stops at its first NUL."""
    if kv.vtype == GGUFValueType.STRING and isinstance(kv.value, str) and "\0" in kv.value:
        return KV(kv.key, kv.vtype, kv.value.split("\0", 1)[0])
    if (kv.vtype == GGUFValueType.ARRAY and kv.sub_type == GGUFValueType.STRING
            and any("\0" in str(v) for v in kv.value)):
        return KV(kv.key, kv.vtype, [str(v).split("\0", 1)[0] for v in kv.value], kv.sub_type)
    return kv


def _str_override(s: str) -> str:
    """A string kv override: at most 127 bytes (strncpy into char[128])."""
    b = s.encode("utf-8", "surrogateescape")[:127].split(b"\0", 1)[0]
    return b.decode("utf-8", "surrogateescape")


def output_kvs(f: GGUFFile, ft: FileType, imatrix=None, imatrix_file: Optional[str] = None) -> list[KV]:
    kvs = [_c_str_kv(kv) for kv in f.kvs
           if kv.key not in _SPLIT_KEYS + ("general.quantization_version", "general.file_type")]
    kvs.append(KV("general.quantization_version", GGUFValueType.UINT32, QUANTIZATION_VERSION))
    kvs.append(KV("general.file_type", GGUFValueType.UINT32, ft.id))
    if imatrix is not None:
        extra = [KV(KEY_IMATRIX_FILE, GGUFValueType.STRING, _str_override(imatrix_file or imatrix.path))]
        if imatrix.datasets:
            extra.append(KV(KEY_IMATRIX_DATASET, GGUFValueType.STRING, _str_override(imatrix.datasets[0])))
        extra.append(KV(KEY_IMATRIX_N_ENTRIES, GGUFValueType.UINT32, len(imatrix.entries)))
        if imatrix.chunk_count > 0:
            extra.append(KV(KEY_IMATRIX_N_CHUNKS, GGUFValueType.UINT32, int(imatrix.chunk_count)))
        for e in extra:  # gguf_set_val_*: remove the key where it is, append it
            kvs = [kv for kv in kvs if kv.key != e.key] + [e]
    return kvs


def _to_f32(raw: np.ndarray, src: str, nrows: int, backend=None) -> np.ndarray:
    """Rows of the input as float32 (llama_tensor_dequantize_impl): exact for every type."""
    from ..backend import SPEC
    from ..numerics import bf16_bits_to_fp32, fp16_bits_to_fp32
    if src == "F32":
        return raw.view("<f4").astype(F32).reshape(nrows, -1)
    if src == "F16":
        return fp16_bits_to_fp32(raw.view("<u2")).reshape(nrows, -1)
    if src == "BF16":
        return bf16_bits_to_fp32(raw.view("<u2")).reshape(nrows, -1)
    return (backend or SPEC).dequantize(raw.reshape(nrows, -1), src)


def _llama_cpp_rows() -> dict[str, Callable]:
    """Row quantizers where llama.cpp's ggml (llama-cpp-python 0.3.36) differs from the ggml the
    registered quantizer follows (ggml-python 0.0.45): type name -> f(x, imatrix)."""
    from functools import partial
    from ..ggml.iquants_grid import IQ1M_PREFIX_SUMS, quantize_iq1_m
    return {"IQ1_M": partial(quantize_iq1_m, variant=IQ1M_PREFIX_SUMS)}


LLAMA_CPP_ROWS = _llama_cpp_rows()


def _quantize_rows(backend, x: np.ndarray, dst: str, imatrix) -> np.ndarray:
    """One slab of rows of type dst, as llama_model_quantize writes it: LLAMA_CPP_ROWS' variant
    where there is one (the spec's; a backend's quantizer is the registered one), otherwise the
    backend's quantizer when it claims dst, the spec's when not."""
    from ..api import check_floats, check_imatrix
    from ..registry import get_format
    rows = LLAMA_CPP_ROWS.get(dst)
    if rows is None:
        return backend.quantize(x, dst, imatrix)
    fmt = get_format(dst)
    x = check_floats(x, fmt)
    im = check_imatrix(imatrix, fmt, x.shape[-1])
    with np.errstate(all="ignore"):
        return rows(x, im)


def _check_input(f: GGUFFile, allow_requantize: bool) -> None:
    align = f.get("general.alignment", 32)
    if int(align) != 32:
        raise InputError(f"{f.path}: general.alignment is {int(align)}; llama.cpp writes its output with "
                         f"alignment 32 but copies the key, so refquant refuses such an input")
    for t in f.tensors:
        tt = ggml_type(t.ggml_type)
        if tt.quantized and not allow_requantize:
            raise InputError(f"{f.path}: input is already quantized (tensor {t.name!r} is {tt.name}); "
                             f"quantize_model reads F32, F16 or BF16 models")


def _quantize_fn(dst: str):
    from ..registry import get_format
    try:
        fmt = get_format(dst)
    except FormatError:
        fmt = None
    if fmt is None or not fmt.can_quantize:
        raise FormatError(f"llama.cpp's recipe chooses {dst} for some tensors, and refquant has no {dst} "
                          f"quantizer yet")
    return fmt


def _imatrix_for(im, tp: TensorPlan) -> Optional[np.ndarray]:
    """The importance weights llama.cpp uses for one tensor: looked up by name, checked by size."""
    if im is None:
        return None
    vals = im.entries.get(tp.name)
    if vals is None:
        return None
    ne2 = tp.ne[2] if len(tp.ne) > 2 else 1
    want = tp.ne[0] * ne2
    if vals.size != want:
        if is_token_embd(tp.name):
            return None
        raise InputError(f"imatrix entry {tp.name!r} has {vals.size} values; the tensor {tp.name} "
                         f"{list(tp.ne)} needs {want} (row length x experts): the imatrix is not for this model")
    return vals.reshape(ne2, tp.ne[0])


def quantize_model(in_path, out_path, ftype, imatrix=None, progress: Optional[Callable[[TensorPlan, int, int], None]] = None,
                   *, output_tensor_type=None, token_embedding_type=None, pure: bool = False,
                   quantize_output_tensor: bool = True, imatrix_file: Optional[str] = None,
                   allow_requantize: bool = False, backend="numpy") -> list[TensorPlan]:
    """Quantize a GGUF model (F32, F16 or BF16 tensors) to llama.cpp's file type `ftype`, writing
    the same bytes as `llama_model_quantize` (and llama-quantize, for the imatrix keys).

    imatrix: a path to a GGUF or legacy .dat imatrix file, or an `Imatrix`. `imatrix_file` is the
    name written to `quantize.imatrix.file` (default: the path as given).
    progress(plan, index, total) is called after each tensor is written.
    backend: a refquant backend (or its name, as refquant.get_backend takes it) that quantizes
    (and, with allow_requantize, dequantizes) the rows of each type it claims (`supports`); the
    spec runs the others. Default: the spec itself. Use a bit-exact backend only: the output is
    meant to be llama.cpp's bytes.
    Streams one tensor at a time (in row slabs); the output appears only when complete.
    Returns the plan: each tensor's name, shape and types.
    """
    from ..backend import get_backend
    from ..ggml.imatrix import Imatrix, read_imatrix
    be = get_backend(backend)
    ft = file_type(ftype)
    im = None
    if imatrix is not None:
        im = imatrix if isinstance(imatrix, Imatrix) else read_imatrix(imatrix)
        if imatrix_file is None and not isinstance(imatrix, Imatrix):
            imatrix_file = str(imatrix)
        for name, v in im.entries.items():
            bad = ~np.isfinite(v)
            if bad.any():
                raise InputError(f"imatrix entry {name!r} has a non-finite value {v[bad][0]!r}; llama.cpp refuses it too")
    with GGUFFile(in_path) as f:
        _check_input(f, allow_requantize)
        tps = plan(f, ft, has_imatrix=im is not None, output_tensor_type=output_tensor_type,
                   token_embedding_type=token_embedding_type, pure=pure,
                   quantize_output_tensor=quantize_output_tensor)
        converted = [tp for tp in tps if tp.converted]
        for tp in converted:
            if tp.src_type not in ("F32", "F16", "BF16") and not (
                    allow_requantize and GGML_TYPES[tp.src_type].quantized):
                raise InputError(f"tensor {tp.name!r}: cannot convert {tp.src_type} to {tp.dst_type}; "
                                 f"quantize_model reads F32, F16 or BF16 tensors")
            if len(tp.ne) > 3:
                raise InputError(f"tensor {tp.name!r} has {len(tp.ne)} dimensions; llama.cpp quantizes 2-D and "
                                 f"3-D tensors only")
        weights = {}
        if im is not None:
            for tp in converted:
                weights[tp.name] = _imatrix_for(im, tp)
            if converted and all(w is None for w in weights.values()):
                raise InputError(f"imatrix {im.path or ''}: none of its {len(im.entries)} entries names a tensor "
                                 f"that is quantized (e.g. {next(iter(im.entries), '?')!r} vs "
                                 f"{converted[0].name!r}): the imatrix is not for this model")
        for tp in converted:
            if tp.requires_imatrix and weights.get(tp.name) is None:
                raise InputError(f"tensor {tp.name!r}: {tp.dst_type} in a {ft.name} file needs an importance "
                                 f"matrix (imatrix=...), " + ("and the imatrix has no entry for it" if im is not None
                                                            else "none was given"))
        for tp in converted:
            _quantize_fn(tp.dst_type)
        kvs = output_kvs(f, ft, im, imatrix_file)
        infos = [TensorInfo(tp.name, GGML_TYPES[tp.dst_type].id, tp.shape) for tp in tps]
        by_name = {tp.name: tp for tp in tps}
        fd = open(f.path, "rb")

        def read(offset: int, n: int) -> np.ndarray:
            fd.seek(f.data_offset + offset)
            b = fd.read(n)
            if len(b) != n:
                raise FileFormatError(f"{f.path}: truncated at byte {f.data_offset + offset + len(b)}")
            return np.frombuffer(b, dtype=np.uint8)

        def tensor_data(info: TensorInfo):
            tp = by_name[info.name]
            src = GGML_TYPES[tp.src_type]
            ncols = tp.ne[0]
            row_src = ncols // src.blck_size * src.type_size
            nrows = tp.nbytes // row_src if row_src else 0
            slab = max(1, _SLAB_ELEMENTS // max(ncols, 1))
            if not tp.converted:
                step = max(slab * row_src, 1)   # a tensor of zero-length rows has no bytes
                for at in range(0, tp.nbytes, step):
                    yield read(tp.offset + at, min(step, tp.nbytes - at))
                return
            w = weights.get(tp.name)
            per_expert = tp.ne[1]
            r = 0
            while r < nrows:
                n = min(slab, nrows - r, per_expert - r % per_expert)  # a slab never crosses an expert
                try:
                    x = _to_f32(read(tp.offset + r * row_src, n * row_src), tp.src_type, n, be)
                except FormatError as e:
                    raise FormatError(f"tensor {tp.name!r}: cannot dequantize {tp.src_type}: {e}") from None
                wi = None if w is None else w[r // per_expert]
                try:
                    q = _quantize_rows(be, x, tp.dst_type, wi)
                except InputError as e:
                    raise InputError(f"tensor {tp.name!r} (rows from {r}): {e}") from None
                _validate(tp.name, tp.dst_type, q, r)
                yield q
                r += n

        done = [0]

        def on_tensor(info):
            done[0] += 1
            if progress is not None:
                progress(by_name[info.name], done[0], len(tps))

        try:
            write_gguf(out_path, kvs, infos, tensor_data, on_tensor)
        finally:
            fd.close()
    return tps


def dequantize_model(in_path, out_path, ftype="F32", progress=None, backend="numpy") -> list[TensorPlan]:
    """Convert a GGUF model, quantized or not, to an F32, F16 or BF16 file type: every tensor
    the recipe quantizes becomes that type, the others are copied. The same bytes as
    `llama_model_quantize` with that file type and `allow_requantize`."""
    ft = file_type(ftype)
    if ft.name not in ("F32", "F16", "BF16"):
        raise FormatError(f"dequantize_model writes F32, F16 or BF16 files, not {ft.name}")
    return quantize_model(in_path, out_path, ft, progress=progress, allow_requantize=True, backend=backend)
