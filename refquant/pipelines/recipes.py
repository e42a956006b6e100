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

import os
import re
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
from gguf import GGUFValueType

from ..errors import FileFormatError, FormatError, InputError
from ..io.files import one_sweep, pwrite_all
from ..io.gguf import KV, GGUFFile, StringArray, TensorInfo, write_gguf
from ..registry import all_formats

F32 = np.float32

# ------------------------------------------------------------------------------------ ggml types
# (id, elements per block, bytes per block, is_quantized), as ggml.c's type_traits: every format
# record with a ggml type id (refquant.registry) gives its row; the types no format module
# defines (plain integers and F64: no block, nothing to quantize) are listed here.


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int
    blck_size: int
    type_size: int
    quantized: bool


_PLAIN_TYPE_ROWS = [("I8", 24, 1, 1), ("I16", 25, 1, 2), ("I32", 26, 1, 4), ("I64", 27, 1, 8), ("F64", 28, 1, 8)]


def _ggml_type_rows() -> list[GGMLType]:
    rows = [GGMLType(f.name, f.ggml_type, f.block_size, f.type_size, f.block_size > 1)  # blocks are quantized
            for f in all_formats() if f.ggml_type is not None]
    rows += [GGMLType(name, i, blck, size, False) for name, i, blck, size in _PLAIN_TYPE_ROWS]
    return sorted(rows, key=lambda t: t.id)


GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in _ggml_type_rows()}
_BY_ID: dict[int, GGMLType] = {t.id: t for t in GGML_TYPES.values()}
GGML_TYPE_COUNT = max(_BY_ID) + 1


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
    raise FormatError(f"unknown ggml type {t!r}; {suggest(str(name), list(GGML_TYPES))}")


# ------------------------------------------------------------------------------------ file types

@dataclass(frozen=True)
class FileType:
    name: str                  # LLAMA_FTYPE_* without the prefix: "Q4_K_M", "F16", "ALL_F32" is "F32"
    id: int                    # the value written to general.file_type
    default: Optional[str]     # llama_ftype_get_default_type; None: llama.cpp refuses the file type


# LLAMA_FTYPE_MOSTLY_<TYPE> whose default is <TYPE> itself comes from that type's format record
# (its `file_type`); the mixtures (a name that is not their default type's) and NVFP4, which
# llama.cpp names but refuses to quantize to, are listed here.
_MIXTURE_FTYPE_ROWS = [
    ("Q3_K_S", 11, "Q3_K"), ("Q3_K_M", 12, "Q3_K"), ("Q3_K_L", 13, "Q3_K"), ("Q4_K_S", 14, "Q4_K"),
    ("Q4_K_M", 15, "Q4_K"), ("Q5_K_S", 16, "Q5_K"), ("Q5_K_M", 17, "Q5_K"), ("Q2_K_S", 21, "Q2_K"),
    ("IQ3_XS", 22, "IQ3_S"), ("IQ3_M", 27, "IQ3_S"), ("IQ2_S", 28, "IQ2_XS"), ("IQ2_M", 29, "IQ2_S"),
    ("MXFP4_MOE", 38, "MXFP4"), ("NVFP4", 39, None),
]


def _file_type_rows() -> list[FileType]:
    rows = [FileType(f.name, f.file_type, f.name) for f in all_formats() if f.file_type is not None]
    rows += [FileType(*r) for r in _MIXTURE_FTYPE_ROWS]
    return sorted(rows, key=lambda t: t.id)


FILE_TYPES: dict[str, FileType] = {ft.name: ft for ft in _file_type_rows()}
# llama-quantize's aliases (QUANT_OPTIONS: "Q4_K" is Q4_K_M, ...); ALL_F32 is LLAMA_FTYPE_ALL_F32
FTYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
_FTYPE_ALIASES = {"ALL_F32": "F32", **FTYPE_ALIASES}


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
    if key.isdigit():  # llama-quantize takes a file type's number too
        return file_type(int(key))
    if key not in FILE_TYPES:
        raise FormatError(f"unknown llama.cpp file type {ftype!r}; "
                          f"{suggest(ftype, list(FILE_TYPES) + list(FTYPE_ALIASES))}")
    return FILE_TYPES[key]


# llama_model_loader's guess of a file's type (when it has no general.file_type): the ggml type of
# the most tensors (the first to reach that count, in tensor order) -> LLAMA_FTYPE_*, marked
# LLAMA_FTYPE_GUESSED: a type's own MOSTLY_ file type (its record's), else the one below; a
# type in neither guesses ALL_F32.
_GUESS = {**{f.default: f.id for f in FILE_TYPES.values() if f.name == f.default},
          "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "IQ2_S": 28, "NVFP4": 39}
LLAMA_FTYPE_GUESSED = 1024


def input_file_type(f, kv_overrides=()) -> FileType:
    """The loader's file type of a model (llama_model_loader::ftype): its general.file_type (an
    int kv override in its place), else the guess above. What llama-quantize's COPY writes."""
    value = f.get("general.file_type")
    for o in kv_overrides:
        if o.key == "general.file_type" and o.tag == "int":
            value = o.value
    if value is None:
        counts: dict[str, int] = {}
        best, top = "F32", 0
        for t in sorted(f.tensors, key=lambda t: tensor_order_key(t.name)):
            name = ggml_type(t.ggml_type).name
            counts[name] = counts.get(name, 0) + 1
            if counts[name] > top:
                best, top = name, counts[name]
        value = _GUESS.get(best, 0) | LLAMA_FTYPE_GUESSED
    value = int(value) & 0xFFFFFFFF
    known = next((ft for ft in FILE_TYPES.values() if ft.id == value), None)
    return FileType(known.name if known else f"#{value}", value, None)


# ------------------------------------------------------------------------------------ options
# llama-quantize's option strings (tools/quantize/quantize.cpp, common/common.cpp), parsed as it
# parses them; the parsed values are the fields of llama_model_quantize_params.


@dataclass(frozen=True)
class KVOverride:
    """llama_model_kv_override: a metadata key set in the output (and seen by the loader)."""
    key: str
    tag: str                   # "int", "float", "bool" or "str" (LLAMA_KV_OVERRIDE_TYPE_*)
    value: object


def _atol(s: str) -> int:
    """C's atol: leading blanks, an optional sign, the digits that follow; 0 when there are none."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?\d+)", s)
    return int(m.group(1)) if m else 0


def _atof(s: str) -> float:
    """C's atof (strtod) on the longest prefix that reads as a number; 0.0 when none does."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))",
                 s, re.IGNORECASE)
    return float(m.group(1)) if m else 0.0


def parse_kv_override(text) -> KVOverride:
    """`KEY=TYPE:VALUE` as string_parse_kv_override reads it: TYPE is int, float, bool or str;
    int and float values as atol/atof read them, bool only `true`/`false`, str at most 127 bytes."""
    if isinstance(text, KVOverride):
        return text
    key, sep, rest = str(text).partition("=")
    if not sep or len(key.encode("utf-8")) >= 128:
        raise InputError(f"--override-kv {text!r}: expected KEY=TYPE:VALUE (a key under 128 bytes)")
    for tag in ("int", "float", "bool", "str"):
        if rest.startswith(tag + ":"):
            v = rest[len(tag) + 1:]
            break
    else:
        raise InputError(f"--override-kv {text!r}: TYPE must be int, float, bool or str")
    if tag == "int":
        return KVOverride(key, tag, _atol(v))
    if tag == "float":
        return KVOverride(key, tag, _atof(v))
    if tag == "bool":
        if v not in ("true", "false"):
            raise InputError(f"--override-kv {text!r}: a bool is true or false")
        return KVOverride(key, tag, v == "true")
    if len(v.encode("utf-8")) > 127:
        raise InputError(f"--override-kv {text!r}: a str value cannot exceed 127 bytes")
    return KVOverride(key, tag, v)


def parse_tensor_type(text) -> tuple[str, str]:
    """`PATTERN=TYPE` as llama-quantize's --tensor-type reads it: the pattern is lowered (it is
    matched against tensor names with std::regex_search), TYPE is a ggml type name in any case."""
    pattern, sep, tname = str(text).partition("=")
    if not sep:
        raise InputError(f"--tensor-type {text!r}: expected PATTERN=TYPE (e.g. attn_v=q8_0)")
    if not pattern:
        raise InputError(f"--tensor-type {text!r}: missing tensor name")
    if not tname:
        raise InputError(f"--tensor-type {text!r}: missing quantization type")
    try:
        t = ggml_type(tname)
    except FormatError:
        raise InputError(f"--tensor-type {text!r}: {tname!r} is not a ggml type; "
                         + suggest(tname, list(GGML_TYPES))) from None
    return pattern.lower(), t.name


def read_tensor_type_file(path) -> list[tuple[str, str]]:
    """--tensor-type-file: PATTERN=TYPE entries separated by blanks or newlines."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            words = fh.read().split()
    except OSError as e:
        raise InputError(f"--tensor-type-file {path}: cannot read: {e.strerror}") from None
    return [parse_tensor_type(w) for w in words]


def parse_prune_layers(text) -> list[int]:
    """--prune-layers L0,L1,...: layer numbers, sorted, without duplicates (parse_layer_prune)."""
    ids = []
    for part in str(text).split(","):
        try:
            i = int(part.strip()) if part.strip() else -1
        except ValueError:
            i = -1
        if i < 0:
            raise InputError(f"--prune-layers {text!r}: invalid layer id {part!r}")
        ids.append(i)
    return sorted(set(ids))


def suggest(name: str, accepted, n: int = 3) -> str:
    """"did you mean ...?" from the accepted names only, compared without case, '_' or '-'."""
    import difflib

    def norm(s):
        return s.upper().replace("_", "").replace("-", "")
    by_norm = {}
    for a in accepted:
        by_norm.setdefault(norm(a), a)
    close = difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(by_norm[c] for c in close) + "?"
    return "accepted: " + ", ".join(accepted)


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


def model_info(f: GGUFFile, kv_overrides=()) -> ModelInfo:
    """The hyperparameters as llama_model_loader reads them: an override of the key's own kind
    (an integer for a count) takes the file's value's place (llama_model_loader::get_key)."""
    meta = f.metadata
    for o in kv_overrides:
        if o.tag == "int":
            meta[o.key] = o.value
        elif o.tag == "str" and o.key == "general.architecture":
            meta[o.key] = o.value
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


# tensor_type_fallback's table: the type a 256-block type falls back to when the row length is not
# a multiple of 256 (each format record's `fallback`)
_FALLBACK = {f.name: f.fallback for f in all_formats() if f.fallback is not None}


# llama_tensor_get_type's token_embd type for a file type named after its default type (the
# record's `token_embd`: IQ2_XXS -> Q2_K, TQ1_0 -> Q4_K, ...)
_TOKEN_EMBD = {f.name: f.token_embd for f in all_formats() if f.file_type is not None and f.token_embd is not None}


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
        elif f in ("IQ2_S", "IQ2_M"):           # the mixtures' rule; the other file types' is in their record
            new = "IQ3_S"
        elif f in _TOKEN_EMBD:
            new = _TOKEN_EMBD[f]
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
    name: str                  # as written (a pruned model's layers renumbered)
    ne: tuple[int, ...]        # ggml order (innermost first), trailing 1s dropped as written
    src_type: str
    dst_type: str
    allows_quantization: bool
    requires_imatrix: bool
    offset: int                # data offset in its input file's data section
    nbytes: int                # bytes in the input
    source_name: str = ""      # the input's name (the imatrix is looked up by it); "" = name
    split: int = 0             # which file of a split input holds it (and, with keep_split, of the output)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def converted(self) -> bool:
        return self.src_type != self.dst_type

    @property
    def input_name(self) -> str:
        return self.source_name or self.name

    @property
    def out_nbytes(self) -> int:
        t = GGML_TYPES[self.dst_type]
        n = 1
        for d in self.ne[1:]:
            n *= d
        return n * (self.ne[0] // t.blck_size * t.type_size)


def tensor_order_key(name: str):
    """weight_name_comparer: by layer (sscanf "blk.%d.", -1 when absent), then by name's bytes."""
    layer = _layer_of(name)
    return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))


_BLK_RE = re.compile(r"blk\.(\d+)\.")


def prune_names(names, prune: list[int]) -> tuple[dict[str, str], int]:
    """remap_layer over the tensors in loader order: pruned layers' tensors dropped (absent from
    the result), the layers after them renumbered down. Returns (old name -> new name, the new
    block count)."""
    mapped: dict[int, str] = {}
    next_id = 0
    out = {}
    for name in names:
        m = _BLK_RE.search(name)
        if not prune or m is None:
            out[name] = name
            continue
        blk = int(m.group(1))
        if blk in mapped:
            pass
        elif blk in prune:
            mapped[blk] = ""
        elif blk < prune[0]:
            mapped[blk] = str(blk)
            next_id = blk + 1
        else:
            mapped[blk] = str(next_id)
            next_id += 1
        if mapped[blk]:
            out[name] = name[:m.start(1)] + mapped[blk] + name[m.end(1):]
    return out, next_id


def plan(f: GGUFFile, ftype, *, has_imatrix: bool = False, output_tensor_type=None, token_embedding_type=None,
         pure: bool = False, quantize_output_tensor: bool = True, tensor_types=(), prune_layers=(),
         kv_overrides=(), keep_split: bool = False, only_copy: bool = False) -> list[TensorPlan]:
    """The output's tensors in file order with the type llama.cpp chooses for each (the
    preliminary loop of llama_model_quantize_impl).

    tensor_types: (pattern, type) pairs (llama_model_tensor_override), tried in order, the first
    whose regular expression is found in a tensor's name choosing its type; prune_layers: layer
    numbers dropped (the others renumbered); kv_overrides: `KVOverride`s (or their KEY=TYPE:VALUE
    strings), which the loader's hyperparameters see too; keep_split: tensors in split-file order;
    only_copy: no tensor is quantized (llama-quantize's COPY).
    """
    ft = file_type(ftype)
    if ft.default is None:
        raise FormatError(f"llama.cpp has no default tensor type for file type {ft.name} (id {ft.id}): "
                          f"llama_model_quantize refuses it as an invalid output file type")
    default = ft.default
    ott = None if output_tensor_type is None else ggml_type(output_tensor_type).name
    tet = None if token_embedding_type is None else ggml_type(token_embedding_type).name
    patterns = []
    for pat, t in tensor_types:
        try:
            patterns.append((re.compile(pat), ggml_type(t).name))
        except re.error as e:
            raise InputError(f"--tensor-type pattern {pat!r} is not a regular expression: {e}") from None
    overrides = [parse_kv_override(o) for o in kv_overrides]
    prune = sorted(set(int(i) for i in prune_layers))
    st = _State(model_info(f, overrides), has_imatrix=has_imatrix)
    tensors = sorted(f.tensors, key=lambda t: tensor_order_key(t.name))
    renamed, _ = prune_names([t.name for t in tensors], prune)
    tensors = [t for t in tensors if t.name in renamed]
    split_of = getattr(f, "split_of", {})
    if keep_split:  # sorted by (split index, offset in it)
        tensors.sort(key=lambda t: (split_of.get(t.name, 0), t.offset))
    names = [renamed[t.name] for t in tensors]
    cats = [category(n) for n in names]
    st.n_attention_wv = sum(_is_attn_v(c) for c in cats)
    st.has_tied_embeddings = OUTPUT not in cats
    out = []
    for t, name, cat in zip(tensors, names, cats):
        ne_full = tuple(reversed(t.shape)) if t.shape else (1,)
        ne = ne_full[:n_dims(ne_full)]
        src = ggml_type(t.ggml_type).name
        allowed = not only_copy and allows_quantization(name, ne, st.model.arch,
                                                        quantize_output_tensor=quantize_output_tensor)
        dst = src
        if allowed:
            dst = _tensor_type(st, name, ne, default, ft, cat, ott, tet, pure, patterns)
        out.append(TensorPlan(name, ne, src, dst, allowed, requires_imatrix(name, dst, ft), t.offset, t.nbytes,
                              t.name if name != t.name else "", split_of.get(t.name, 0)))
    return out


def _tensor_type(st: _State, name, ne, default, ft, cat, ott, tet, pure, patterns=()) -> str:
    """llama_tensor_get_type (for a tensor that allows quantization)."""
    if tet is not None and cat == TOKEN_EMBD:
        # per_layer_token_embd follows the token-embedding type unless a --tensor-type names it
        if not (name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns)):
            return tet  # taken as given: no fallback (see _check_rows)
    if ott is not None and cat == OUTPUT:
        return ott
    new = default
    if GGML_TYPES[default].quantized:
        manual = False
        for p, t in patterns:  # the first pattern found in the name (std::regex_search) wins
            if p.search(name):
                new, manual = t, True
                break
        if not manual and not pure:
            new = _type_impl(st, new, name, ne, ft, cat, ott, tet)
        try:
            fb = fallback(ne[0], new)
        except FormatError as e:
            raise FormatError(f"tensor {name!r}: {e}") from None
        if fb != new:
            st.n_fallback += 1
        new = fb
    return new


def _check_rows(tp: "TensorPlan") -> None:
    """The token-embedding and output types are taken as given, without tensor_type_fallback
    (the dry run reports them so): with a type whose block does not divide the row, llama.cpp
    quantizes past the row's end and fails ("quantized data validation failed", naming no
    tensor); refquant refuses it, naming the tensor, before writing anything."""
    blck = GGML_TYPES[tp.dst_type].blck_size
    if tp.ne[0] % blck:
        option = ("--token-embedding-type" if is_token_embd(tp.name) else
                  "--output-tensor-type" if category(tp.name) == OUTPUT else "the type")
        raise InputError(f"tensor {tp.name!r}: {option} {tp.dst_type} needs rows that are a multiple of {blck} "
                         f"values; this tensor's rows have {tp.ne[0]} (llama.cpp fails on it too)")


def tensor_types(path, ftype, **kw) -> dict[str, str]:
    """name -> ggml type name of every tensor llama.cpp would write for `ftype`."""
    with GGUFFile(path) as f:
        return {p.name: p.dst_type for p in plan(f, ftype, **kw)}


# ------------------------------------------------------------------------------------ validation
# ggml_validate_row_data: the fp16 scale fields that must be finite, by type (byte offsets): every
# f16 field of a block type's layout (refquant.ggml.layout)
_FP16_FIELDS = {f.name: offs for f in all_formats() if f.layout is not None and f.block_size > 1
                for offs in [tuple(f.layout.offset(x.name) for x in f.layout.fields if x.ctype == "f16")] if offs}


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
_SLAB_ELEMENTS = 1 << 21      # rows are quantized in slabs of about this many values (8 MiB of F32)
_TASK_ELEMENTS = 1 << 24      # and, on workers, in tasks of about this many (a few slabs)


def _c_str_kv(kv: KV) -> KV:
    """gguf_set_kv copies strings through c_str(): a string value stops at its first NUL."""
    if kv.vtype == GGUFValueType.STRING and isinstance(kv.value, str) and "\0" in kv.value:
        return KV(kv.key, kv.vtype, kv.value.split("\0", 1)[0])
    if (kv.vtype == GGUFValueType.ARRAY and kv.sub_type == GGUFValueType.STRING
            and (kv.value.any_contains_nul() if isinstance(kv.value, StringArray)
                 else any("\0" in str(v) for v in kv.value))):
        return KV(kv.key, kv.vtype, [str(v).split("\0", 1)[0] for v in kv.value], kv.sub_type)
    return kv


def _str_override(s: str) -> str:
    """A string kv override: at most 127 bytes (strncpy into char[128])."""
    b = s.encode("utf-8", "surrogateescape")[:127].split(b"\0", 1)[0]
    return b.decode("utf-8", "surrogateescape")


def _set(kvs: list[KV], kv: KV) -> list[KV]:
    """gguf_set_val_*: remove the key where it is, append it."""
    return [k for k in kvs if k.key != kv.key] + [kv]


def override_kv(o: KVOverride) -> KV:
    """The pair llama_model_quantize writes for a kv override: an int as u32 of its absolute
    value (`(uint32_t)std::abs(val_i64)`), a float as f32, a bool, a string."""
    if o.tag == "int":
        return KV(o.key, GGUFValueType.UINT32, abs(int(o.value)) & 0xFFFFFFFF)
    if o.tag == "float":
        return KV(o.key, GGUFValueType.FLOAT32, float(np.float32(o.value)))
    if o.tag == "bool":
        return KV(o.key, GGUFValueType.BOOL, bool(o.value))
    return KV(o.key, GGUFValueType.STRING, str(o.value))


def imatrix_overrides(imatrix, imatrix_file: Optional[str] = None) -> list[KVOverride]:
    """The kv overrides llama-quantize adds for an importance matrix (after the user's): the
    file's name and first dataset (at most 127 bytes each), the entry count (after
    --include-weights / --exclude-weights), the chunk count when known."""
    out = [KVOverride(KEY_IMATRIX_FILE, "str", _str_override(imatrix_file or imatrix.path))]
    if imatrix.datasets:
        out.append(KVOverride(KEY_IMATRIX_DATASET, "str", _str_override(imatrix.datasets[0])))
    out.append(KVOverride(KEY_IMATRIX_N_ENTRIES, "int", len(imatrix.entries)))
    if imatrix.chunk_count > 0:
        out.append(KVOverride(KEY_IMATRIX_N_CHUNKS, "int", int(imatrix.chunk_count)))
    return out


def output_kvs(f: GGUFFile, ft: FileType, imatrix=None, imatrix_file: Optional[str] = None, *,
               kv_overrides=(), block_count: Optional[int] = None) -> list[KV]:
    """The output's metadata (the first file's, when split): the input's pairs without
    `split.*`, then quantization_version and file_type, the overrides in order (the user's, then
    the imatrix's), then the block count of a pruned model; each set moves its key to the end."""
    kvs = [_c_str_kv(kv) for kv in f.kvs if kv.key not in _SPLIT_KEYS]
    kvs = _set(kvs, KV("general.quantization_version", GGUFValueType.UINT32, QUANTIZATION_VERSION))
    kvs = _set(kvs, KV("general.file_type", GGUFValueType.UINT32, ft.id))
    overrides = [parse_kv_override(o) for o in kv_overrides]
    if imatrix is not None:
        overrides += imatrix_overrides(imatrix, imatrix_file)
    for o in overrides:
        kvs = _set(kvs, override_kv(o))
    if block_count is not None:
        arch = f.get("general.architecture")
        kvs = _set(kvs, KV(f"{arch}.block_count", GGUFValueType.UINT32, int(block_count)))
    return kvs


def filter_imatrix(im, include=(), exclude=()):
    """llama-quantize's --include-weights / --exclude-weights (prepare_imatrix): drop the entries
    whose name contains an excluded string; or keep only those that contain an included one.
    The two cannot be used together."""
    from dataclasses import replace
    include, exclude = list(include), list(exclude)
    if include and exclude:
        raise InputError("--include-weights and --exclude-weights cannot be used together")
    entries = dict(im.entries)
    if exclude:
        entries = {k: v for k, v in entries.items() if not any(s in k for s in exclude)}
    if include:
        entries = {k: v for k, v in entries.items() if any(s in k for s in include)}
    return replace(im, entries=entries)


def _to_f32(raw: np.ndarray, src: str, nrows: int, backend=None) -> np.ndarray:
    """Rows of the input as float32 (llama_tensor_dequantize_impl): exact for every type."""
    from ..backend import SPEC
    from ..numerics import bf16_bits_to_fp32, fp16_bits_to_fp32
    if src == "F32":
        return raw.view("<f4").astype(F32, copy=False).reshape(nrows, -1)  # a copy only on a big-endian host
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
    x = check_floats(x, fmt, finite=backend.all_finite)
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
    """The importance weights llama.cpp uses for one tensor: looked up by its input name (a
    pruned model's renumbered tensors by their old one, remap_imatrix), checked by size."""
    if im is None:
        return None
    vals = im.entries.get(tp.input_name)
    if vals is None:
        return None
    ne2 = tp.ne[2] if len(tp.ne) > 2 else 1
    want = tp.ne[0] * ne2
    if vals.size != want:
        if is_token_embd(tp.name):
            return None
        raise InputError(f"imatrix entry {tp.input_name!r} has {vals.size} values; the tensor {tp.name} "
                         f"{list(tp.ne)} needs {want} (row length x experts): the imatrix is not for this model")
    return vals.reshape(ne2, tp.ne[0])


@dataclass(frozen=True)
class Slab:
    """One task of a whole-model quantization: rows [first_row, first_row + nrows) of a tensor,
    read from the input at `offset` (absolute), converted from `src` to `dst`."""
    path: str
    tensor: str
    offset: int
    nbytes: int
    nrows: int
    first_row: int
    src: str
    dst: str
    imatrix: Optional[np.ndarray]
    backend: object               # a backend name (or a picklable Backend)
    recipe: bool = True           # as llama_model_quantize: LLAMA_CPP_ROWS, then validated


def _slabs(part: GGUFFile, tp: TensorPlan, w: Optional[np.ndarray], backend) -> Iterator[Slab]:
    """The slabs of one converted tensor (in the input file `part`), in row order; a slab never
    crosses an expert."""
    src = GGML_TYPES[tp.src_type]
    row_src = tp.ne[0] // src.blck_size * src.type_size
    nrows = tp.nbytes // row_src if row_src else 0
    slab = max(1, _SLAB_ELEMENTS // max(tp.ne[0], 1))
    per_expert = tp.ne[1]
    r = 0
    while r < nrows:
        n = min(slab, nrows - r, per_expert - r % per_expert)
        yield Slab(str(part.path), tp.name, part.data_offset + tp.offset + r * row_src, n * row_src, n, r,
                   tp.src_type, tp.dst_type, None if w is None else w[r // per_expert], backend)
        r += n


_BACKEND_CACHE: dict = {}


class Reader:
    """Reads input bytes into one buffer reused from read to read (each slab is quantized or
    written before the next is read): no fresh pages to fault in for every slab. At most
    `keep` input files stay open (the least recently read closed first): a split model's
    parts are read one after another, and hundreds open at once would exhaust the process's
    file descriptors (a soft limit of 1,024 by default)."""

    def __init__(self, keep: int = 4):
        self.files: dict = {}
        self.keep = keep
        self.buf = np.empty(0, np.uint8)

    def __call__(self, path: str, offset: int, n: int) -> np.ndarray:
        fd = self.files.pop(path, None)
        if fd is None:
            if len(self.files) >= self.keep:
                self.files.pop(next(iter(self.files))).close()
            fd = open(path, "rb")
        self.files[path] = fd                      # the most recently read last
        if self.buf.size < n:
            self.buf = np.empty(n, np.uint8)
        b = self.buf[:n]
        fd.seek(offset)
        got = fd.readinto(memoryview(b)) if n else 0
        if got != n:
            raise FileFormatError(f"{path}: truncated at byte {offset + (got or 0)}")
        return b

    def close(self) -> None:
        for fd in self.files.values():
            fd.close()
        self.files.clear()


def _read_once(path: str, offset: int, n: int) -> np.ndarray:
    """n bytes of a file into a fresh writable array (kernels get the same array types on a worker
    as in this process: a read-only buffer would make Numba compile a second signature)."""
    b = np.empty(n, np.uint8)
    with open(path, "rb") as fd:
        fd.seek(offset)
        got = fd.readinto(memoryview(b)) if n else 0
    if got != n:
        raise FileFormatError(f"{path}: truncated at byte {offset + (got or 0)}")
    return b


def quantize_slab(s: Slab, read: Callable[[str, int, int], np.ndarray] = _read_once) -> np.ndarray:
    """Read, convert to float32, quantize and validate one slab (runs on any worker)."""
    from ..backend import get_backend
    be = _BACKEND_CACHE.get(s.backend) if isinstance(s.backend, str) else s.backend
    if be is None:
        be = _BACKEND_CACHE[s.backend] = get_backend(s.backend)
    raw = read(s.path, s.offset, s.nbytes)
    try:
        x = _to_f32(raw, s.src, s.nrows, be)
    except FormatError as e:
        raise FormatError(f"tensor {s.tensor!r}: cannot dequantize {s.src}: {e}") from None
    from .scale import task_threads
    try:
        with task_threads(be):            # the runner's kernel threads a task (one by default)
            q = _quantize_rows(be, x, s.dst, s.imatrix) if s.recipe else be.quantize(x, s.dst, s.imatrix)
    except InputError as e:
        raise InputError(f"tensor {s.tensor!r} (rows from {s.first_row}): {e}") from None
    if s.recipe:
        _validate(s.tensor, s.dst, q, s.first_row)
    return q


@dataclass(frozen=True)
class Kept:
    """A tensor written as it is: `nbytes` from `offset` in the input file `path`, `step` at a time."""
    path: str
    offset: int
    nbytes: int
    step: int


def _kept(part: GGUFFile, tp: TensorPlan) -> Kept:
    src = GGML_TYPES[tp.src_type]
    row = tp.ne[0] // src.blck_size * src.type_size
    step = max(max(1, _SLAB_ELEMENTS // max(tp.ne[0], 1)) * row, 1)   # zero-length rows: no bytes
    return Kept(str(part.path), part.data_offset + tp.offset, tp.nbytes, step)


def put_slabs(task) -> object:
    """A worker's task: quantize slabs; with a file path, write each at its offset there and
    return the byte count, without one return the bytes (the client writes them)."""
    path, items = task
    out = [quantize_slab(s) for s, _ in items]
    if path is None:
        return out
    fd = os.open(path, os.O_WRONLY)
    try:
        for q, (_, at) in zip(out, items):
            pwrite_all(fd, q, at)
    finally:
        os.close(fd)
    return sum(q.nbytes for q in out)


@one_sweep()       # the output directory's stale temporaries: one scan for all the files written there
def write_tasks(rn, files: list, work: dict, on_tensor: Callable[[TensorInfo], None],
                together: bool = False) -> None:
    """Write GGUF files — `files` is [(path, kvs, infos)], the tensors in file order — whose
    tensors are each either `Kept` (copied from the input) or a list of `Slab`s (quantized), on
    the runner `rn`. `together`: several files that appear together (keep_split), even one.

    Serial: one tensor after another, streamed (write_gguf). Parallel: each output's plan
    (header, every tensor's offset) is written first; slabs, grouped into tasks of about
    _TASK_ELEMENTS values, run on the workers and their bytes land at their planned offsets in
    whatever order they finish (on a local cluster the workers write the files themselves, on
    a remote one the client does); the kept tensors are copied here meanwhile. Same bytes."""
    from ..io.files import check_signal
    from ..io.gguf import PlannedGGUF
    read = Reader()

    def copied(k: Kept) -> Iterator[np.ndarray]:
        for at in range(0, k.nbytes, k.step):
            yield read(k.path, k.offset + at, min(k.step, k.nbytes - at))

    try:
        if rn.serial:
            # every slab of every quantized tensor, in file order: results come back in that order
            stream = rn.imap(lambda s: quantize_slab(s, read),
                             (s for _, _, infos in files for t in infos if not isinstance(work[t.name], Kept)
                              for s in work[t.name]))

            def tensor_data(info: TensorInfo):
                w = work[info.name]
                if isinstance(w, Kept):
                    yield from copied(w)
                else:
                    for _ in w:
                        yield next(stream)

            if together:
                _write_all(files, tensor_data, on_tensor)
            else:
                (path, kvs, infos), = files
                write_gguf(path, kvs, infos, tensor_data, on_tensor)
            return
        with ExitStack() as stack:
            outs = [stack.enter_context(PlannedGGUF(path, kvs, infos)) for path, kvs, infos in files]
            jobs, cur, size, left, placed = [], [], 0, {}, {}
            group = _TASK_ELEMENTS if rn.batches else 0     # threads: every slab a task (no round trip)
            for out in outs:
                for t in out.tensors:
                    placed[t.name] = t
                    w = work[t.name]
                    if isinstance(w, Kept):
                        continue
                    left[t.name] = len(w)
                    rows = max(sum(s.nrows for s in w), 1)
                    for s in w:
                        cur.append((s, out.data_offset + t.offset + s.first_row * (t.nbytes // rows)))
                        size += t.n_elements * s.nrows // rows
                        if size >= group:
                            jobs.append((out.tmp, cur))
                            cur, size = [], 0
                if cur:                           # a task never spans two output files
                    jobs.append((out.tmp, cur))
                    cur, size = [], 0
            local = rn.writes_locally
            if not rn.batches:     # threads: the costliest slabs first, so none is left for the end alone
                jobs.sort(key=lambda job: -sum(_cost(s) for s, _ in job[1]))
            fds = {out.tmp: out.fd for out in outs}     # no second descriptor a file: a split model's
                                                        # hundreds of parts would run out of them
            for out in outs:                      # the kept tensors: copied here while workers quantize
                for t in out.tensors:
                    w = work[t.name]
                    if isinstance(w, Kept) or not w:
                        at = out.data_offset + t.offset
                        for chunk in copied(w) if isinstance(w, Kept) else ():
                            pwrite_all(fds[out.tmp], chunk, at)
                            at += chunk.size
                        on_tensor(t)
                        check_signal()
            # on a local cluster a task's result is a count (written in place): every task is
            # submitted at once, so no worker waits on a round trip to this process; returned bytes
            # are bounded by a window. Threads have no round trip: the runner's window (a few tasks
            # a thread) keeps them busy, and a model's hundreds of thousands of slabs are not all
            # futures at once (about 2 KiB each: 200,000 took 400 MiB)
            window = len(jobs) if local and rn.batches else None
            for i, res in rn.imap_unordered(put_slabs, ((tmp if local else None, items) for tmp, items in jobs),
                                            window=window):
                tmp, items = jobs[i]
                if not local:
                    for q, (_, at) in zip(res, items):
                        pwrite_all(fds[tmp], q, at)
                for s, _ in items:
                    left[s.tensor] -= 1
                    if left[s.tensor] == 0:
                        on_tensor(placed[s.tensor])
                check_signal()
            for fd in fds.values():
                os.fsync(fd)
    finally:
        read.close()


def _cost(s: Slab) -> int:
    """A slab's rough cost, to start the costliest first: its input bytes, four times over for
    the types whose quantizers search (K-quants, i-quants)."""
    return s.nbytes * (4 if s.dst.endswith("_K") or s.dst.startswith("IQ") else 1)


def quantize_model(in_path, out_path, ftype, imatrix=None, progress: Optional[Callable[[TensorPlan, int, int], None]] = None,
                   *, output_tensor_type=None, token_embedding_type=None, pure: bool = False,
                   quantize_output_tensor: bool = True, imatrix_file: Optional[str] = None,
                   allow_requantize: bool = False, backend="numpy", tensor_types=(), kv_overrides=(),
                   prune_layers=(), keep_split: bool = False, dry_run: bool = False, include_weights=(),
                   exclude_weights=(), workers: Optional[int] = 1, scheduler: Optional[str] = None,
                   runner=None, only_copy: bool = False, threads: Optional[int] = None) -> list[TensorPlan]:
    """Quantize a GGUF model (F32, F16 or BF16 tensors; split or not) to llama.cpp's file type
    `ftype`, writing the same bytes as `llama_model_quantize` with the same parameters (and as
    llama-quantize, for the imatrix keys and the options that only it has).

    The parameters are llama_model_quantize_params' fields, and llama-quantize's options:
    output_tensor_type / token_embedding_type (--output-tensor-type, --token-embedding-type; a
    ggml type, taken as given), pure (--pure), quantize_output_tensor (False:
    --leave-output-tensor), allow_requantize (--allow-requantize), tensor_types ((pattern, type)
    pairs: --tensor-type, see `plan`), kv_overrides (`KVOverride`s or KEY=TYPE:VALUE strings:
    --override-kv), prune_layers (layer numbers: --prune-layers), keep_split (--keep-split: a
    split input is written as as many files, named from the prefix `out_path` as
    `split_output_paths` says), dry_run (--dry-run: nothing is read past the metadata or written; the
    plan is returned), include_weights / exclude_weights (--include-weights /
    --exclude-weights: which imatrix entries are used, by substring), only_copy (llama-quantize's
    COPY: every tensor copied, quantized or not; the file type written is the input's, see
    `input_file_type`).

    imatrix: a path to a GGUF or legacy .dat imatrix file, or an `Imatrix`. `imatrix_file` is the
    name written to `quantize.imatrix.file` (default: the path as given).
    progress(plan, index, total) is called after each tensor is written.
    backend: a refquant backend (or its name, as refquant.get_backend takes it) that quantizes
    (and, with allow_requantize, dequantizes) the rows of each type it claims (`supports`); the
    spec runs the others. Default: the spec itself. Use a bit-exact backend only: the output is
    meant to be llama.cpp's bytes.
    Streams one tensor at a time (in row slabs); the output appears only when complete.
    workers, scheduler, threads: where the slabs are quantized (refquant.pipelines.scale.Runner):
    1 is this process on one core; N (None: every core) N threads of this process; scheduler
    "local" a local Dask cluster of N processes; a scheduler address a running cluster (the input
    must be at the same path on its workers). threads: kernel threads a slab (default 1).
    `runner`: an entered Runner to use instead. The bytes are the same in every case.
    `in_path` may also be a model already open (a GGUFFile or SplitGGUF, as open_gguf returns
    it; left open), so that a caller that read its metadata does not parse it twice.
    Returns the plan: each tensor's name, shape and types.
    """
    from ..backend import get_backend
    from ..ggml.imatrix import Imatrix, read_imatrix
    from ..io.split import SplitGGUF, open_gguf, split_path
    be = get_backend(backend)
    ft = file_type(ftype)
    im = None
    if imatrix is not None:
        im = imatrix if isinstance(imatrix, Imatrix) else read_imatrix(imatrix)
        if imatrix_file is None and not isinstance(imatrix, Imatrix):
            imatrix_file = str(imatrix)
        if include_weights or exclude_weights:
            im = filter_imatrix(im, include_weights, exclude_weights)
        if not im.entries:  # llama-quantize then passes no imatrix at all
            im = None
    elif include_weights or exclude_weights:
        raise InputError("--include-weights and --exclude-weights choose imatrix entries: give --imatrix too")
    if im is not None:
        for name, v in im.entries.items():
            bad = ~np.isfinite(v)
            if bad.any():
                raise InputError(f"imatrix entry {name!r} has a non-finite value {v[bad][0]!r}; llama.cpp refuses it too")
    overrides = [parse_kv_override(o) for o in kv_overrides]
    prune = sorted(set(int(i) for i in prune_layers))
    opened = isinstance(in_path, (GGUFFile, SplitGGUF))     # the caller's, left open
    with (nullcontext(in_path) if opened else open_gguf(in_path)) as f:
        parts = getattr(f, "parts", [f])
        _check_input(f, allow_requantize or only_copy)
        tps = plan(f, ft, has_imatrix=im is not None, output_tensor_type=output_tensor_type,
                   token_embedding_type=token_embedding_type, pure=pure,
                   quantize_output_tensor=quantize_output_tensor, tensor_types=tensor_types,
                   prune_layers=prune, kv_overrides=overrides, keep_split=keep_split, only_copy=only_copy)
        if dry_run:
            return tps
        if only_copy:  # the loader's file type of the input is written (llama_model_quantize_impl)
            ft = input_file_type(f, overrides)
        converted = [tp for tp in tps if tp.converted]
        for tp in converted:
            if tp.src_type not in ("F32", "F16", "BF16") and not (
                    allow_requantize and GGML_TYPES[tp.src_type].quantized):
                raise InputError(f"tensor {tp.name!r}: cannot convert {tp.src_type} to {tp.dst_type}; "
                                 f"quantize_model reads F32, F16 or BF16 tensors")
            if len(tp.ne) > 3:
                raise InputError(f"tensor {tp.name!r} has {len(tp.ne)} dimensions; llama.cpp quantizes 2-D and "
                                 f"3-D tensors only")
            _check_rows(tp)
        weights = {}
        if im is not None:
            for tp in converted:
                weights[tp.name] = _imatrix_for(im, tp)
            if converted and all(w is None for w in weights.values()) and not (include_weights or exclude_weights):
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
        block_count = None
        if prune:
            _, block_count = prune_names(sorted((t.name for t in f.tensors), key=tensor_order_key), prune)
        kvs = output_kvs(f, ft, im, imatrix_file, kv_overrides=overrides, block_count=block_count)
        n_split = max(tp.split for tp in tps) + 1 if keep_split and tps else 1
        by_name = {tp.name: tp for tp in tps}
        bname = backend if isinstance(backend, str) else be
        work = {tp.name: list(_slabs(parts[tp.split], tp, weights.get(tp.name), bname)) if tp.converted
                else _kept(parts[tp.split], tp) for tp in tps}
        done = [0]

        def on_tensor(info):
            done[0] += 1
            if progress is not None:
                progress(by_name[info.name], done[0], len(tps))

        if not keep_split:
            files = [(out_path, kvs, [TensorInfo(tp.name, GGML_TYPES[tp.dst_type].id, tp.shape) for tp in tps])]
        else:
            # keep_split names the files llama_split_path(out_path, i, n_split), even when
            # there is one; split.* keys only when there are several
            files = []
            by_split: list[list[TensorInfo]] = [[] for _ in range(n_split)]   # in one pass, not one a file
            for tp in tps:
                by_split[tp.split].append(TensorInfo(tp.name, GGML_TYPES[tp.dst_type].id, tp.shape))
            for i in range(n_split):
                meta = kvs if i == 0 else []
                if n_split > 1:
                    meta = meta + [KV("split.no", GGUFValueType.UINT16, i),
                                   KV("split.count", GGUFValueType.UINT16, n_split),
                                   KV("split.tensors.count", GGUFValueType.INT32, len(tps))]
                files.append((split_path(out_path, i, n_split), meta, by_split[i]))
        from .scale import Runner
        with (nullcontext(runner) if runner is not None else Runner(workers, scheduler, threads)) as rn:
            write_tasks(rn, files, work, on_tensor, together=keep_split)
    return tps


def split_output_paths(out_path, plan_: list[TensorPlan]) -> list[str]:
    """The files `quantize_model(..., keep_split=True)` writes: llama_split_path(out_path, i, n)
    for each of the input's n files (one file is "OUT-00001-of-00001.gguf")."""
    from ..io.split import split_path
    n = max((tp.split for tp in plan_), default=0) + 1
    return [split_path(out_path, i, n) for i in range(n)]


def _write_all(files, tensor_data, on_tensor) -> None:
    """Several GGUF files that appear together: each is written under a temporary name (as
    write_gguf writes one), and all are renamed into place only when every one is complete."""
    import os
    from pathlib import Path
    done = []
    try:
        for path, meta, infos in files:
            p = Path(path)
            tmp = p.with_name(f".{p.name}.part")
            write_gguf(tmp, meta, infos, tensor_data, on_tensor)
            done.append((tmp, p))
        for tmp, p in done:
            os.replace(tmp, p)
        done = []
    finally:
        for tmp, _ in done:
            if tmp.exists():
                tmp.unlink()


# ------------------------------------------------------------------------------------ the table

def ggml_type_name(name: str) -> str:
    """ggml_type_name's spelling: lower case, the K of a K-quant upper ("q4_K", "iq2_xxs")."""
    low = name.lower()
    return low[:-2] + "_K" if low.endswith("_k") else low


def tensor_line(index: int, total: int, tp: TensorPlan) -> str:
    """One line of llama_model_quantize's table (what --dry-run prints for each tensor):
    "[%4d/%4d] %-36s - [%s], type = %6s, size = ..." with the shape as llama_format_tensor_shape
    writes it (four ne, innermost first)."""
    ne = tuple(tp.ne) + (1,) * (4 - len(tp.ne))
    shape = f"{ne[0]:6d}" + "".join(f", {d:6d}" for d in ne[1:4])
    head = f"[{index:4d}/{total:4d}] {tp.name:<36s} - [{shape}], type = {ggml_type_name(tp.src_type):>6s}, "
    if tp.converted:
        return head + (f"size = {tp.nbytes / 1048576:8.2f} MiB -> {tp.out_nbytes / 1048576:8.2f} MiB "
                       f"({ggml_type_name(tp.dst_type)})")
    return head + f"size = {tp.nbytes / 1048576:8.3f} MiB"


def size_summary(tps: list[TensorPlan], n_elements: int) -> tuple[str, str]:
    """llama_model_quantize's closing lines: the input's and the output's size in MiB and bits
    per weight (over every element of the input, pruned layers included)."""
    org = sum(tp.nbytes for tp in tps)
    new = sum(tp.out_nbytes if tp.converted else tp.nbytes for tp in tps)
    n = max(n_elements, 1)
    return (f"model size  = {org / 1048576:8.2f} MiB ({org * 8.0 / n:.2f} BPW)",
            f"quant size  = {new / 1048576:8.2f} MiB ({new * 8.0 / n:.2f} BPW)")


def dequantize_model(in_path, out_path, ftype="F32", progress=None, backend="numpy") -> list[TensorPlan]:
    """Convert a GGUF model, quantized or not, to an F32, F16 or BF16 file type: every tensor
    the recipe quantizes becomes that type, the others are copied. The same bytes as
    `llama_model_quantize` with that file type and `allow_requantize`."""
    ft = file_type(ftype)
    if ft.name not in ("F32", "F16", "BF16"):
        raise FormatError(f"dequantize_model writes F32, F16 or BF16 files, not {ft.name}")
    return quantize_model(in_path, out_path, ft, progress=progress, allow_requantize=True, backend=backend)
