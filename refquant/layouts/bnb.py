"""bitsandbytes checkpoints as Hugging Face transformers saves them (safetensors).

4-bit (Linear4bit, QuantState.as_dict(packed=True)), for a linear layer `<p>`:

    <p>.weight                                   uint8 ((n + 1) // 2, 1)  the packed nibbles
                                                 (another dtype when bnb_4bit_quant_storage is
                                                 not uint8: the same bytes viewed as it)
    <p>.weight.absmax                            float32 (nblocks,), or uint8 when nested
    <p>.weight.quant_map                         float32 (16,)   the NF4/FP4 table
    <p>.weight.nested_absmax                     float32 (ceil(nblocks / 256),)   nested only
    <p>.weight.nested_quant_map                  float32 (256,)  the dynamic map   nested only
    <p>.weight.quant_state.bitsandbytes__<nf4|fp4>
                                                 uint8: UTF-8 JSON of the non-tensor fields,
        {"quant_type": .., "blocksize": .., "dtype": .., "shape": [..],
         "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": <float>}

8-bit (Linear8bitLt):

    <p>.weight         int8 (N, K)     CB, row-wise int8 codes
    <p>.SCB            float32 (N,)    row absmax
    <p>.weight_format  uint8 ()        0 = "row" (the only layout bitsandbytes still loads)

config.json carries "quantization_config" with "quant_method": "bitsandbytes" (see
quantization_config_4bit / quantization_config_8bit).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import numpy as np

from ..bnb.blockwise import NESTED_BLOCKSIZE, QuantState, dtype_name
from ..bnb.codebooks import create_dynamic_map, get_4bit_type
from ..errors import FileFormatError, InputError

QS_KEY = "quant_state.bitsandbytes__"
WEIGHT_FORMAT_ROW = 0


def _json_fields(state: QuantState) -> dict:
    """The non-tensor fields in QuantState.as_dict's order, serialised as json.dumps does."""
    d = {"quant_type": state.quant_type, "blocksize": int(state.blocksize), "dtype": state.dtype,
         "shape": [int(s) for s in state.shape]}
    if state.nested:
        d.update({"nested_blocksize": int(state.state2.blocksize), "nested_dtype": state.state2.dtype,
                  "nested_offset": float(np.float32(state.offset))})
    return d


def quant_state_entries(prefix: str, packed: np.ndarray, state: QuantState,
                        quant_storage: str = "uint8") -> dict[str, np.ndarray]:
    """The state-dict entries of one 4-bit weight, named as transformers saves them."""
    if state.quant_type not in ("nf4", "fp4"):
        raise InputError(f"{prefix}: a 4-bit checkpoint needs quant_type nf4 or fp4, got {state.quant_type!r}")
    weight = np.ascontiguousarray(packed, np.uint8).reshape(-1, 1)
    if quant_storage != "uint8":
        st = {"float16": np.float16, "float32": np.float32, "int8": np.int8}
        if quant_storage == "bfloat16":
            import ml_dtypes
            st["bfloat16"] = ml_dtypes.bfloat16
        if quant_storage not in st:
            raise InputError(f"{prefix}: unsupported quant_storage {quant_storage!r}")
        weight = weight.reshape(-1).view(st[quant_storage]).reshape(-1, 1)
    out = {f"{prefix}.weight": weight}
    w = f"{prefix}.weight."
    out[w + "absmax"] = np.ascontiguousarray(state.absmax)
    out[w + "quant_map"] = np.ascontiguousarray(state.code, np.float32)
    if state.nested:
        out[w + "nested_absmax"] = np.ascontiguousarray(state.state2.absmax, np.float32)
        out[w + "nested_quant_map"] = np.ascontiguousarray(state.state2.code, np.float32)
    blob = json.dumps(_json_fields(state)).encode("utf-8")
    out[w + QS_KEY + state.quant_type] = np.frombuffer(blob, np.uint8).copy()
    return out


def quant_state_from_entries(entries: dict, prefix: str) -> tuple[np.ndarray, QuantState]:
    """(packed uint8 ((n+1)//2, 1), QuantState) from a state dict holding `<prefix>.weight...`
    (QuantState.from_dict's reading)."""
    w = f"{prefix}.weight"
    if w not in entries:
        raise FileFormatError(f"{prefix}: no tensor {w!r} in the checkpoint")
    blobs = [k for k in entries if k.startswith(w + "." + QS_KEY)]
    if len(blobs) != 1:
        raise FileFormatError(f"{prefix}: expected exactly one '{w}.{QS_KEY}<nf4|fp4>' entry, found {blobs}")
    try:
        fields = json.loads(bytes(np.asarray(entries[blobs[0]], np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{blobs[0]}: not the UTF-8 JSON bitsandbytes packs ({e})") from None
    for key in ("quant_type", "blocksize", "dtype", "shape"):
        if key not in fields:
            raise FileFormatError(f"{blobs[0]}: missing field {key!r}")
    for key in ("absmax", "quant_map"):
        if f"{w}.{key}" not in entries:
            raise FileFormatError(f"{prefix}: no tensor '{w}.{key}'")
    packed = np.ascontiguousarray(entries[w])
    packed = packed.reshape(-1).view(np.uint8).reshape(-1, 1)
    state2 = offset = None
    if f"{w}.nested_absmax" in entries:
        state2 = QuantState(np.asarray(entries[f"{w}.nested_absmax"], np.float32), None,
                            np.asarray(entries[f"{w}.nested_quant_map"], np.float32),
                            int(fields["nested_blocksize"]), fields["nested_dtype"])
        offset = np.float32(fields["nested_offset"])
    state = QuantState(np.asarray(entries[f"{w}.absmax"]), tuple(fields["shape"]),
                       np.asarray(entries[f"{w}.quant_map"], np.float32), int(fields["blocksize"]),
                       fields["dtype"], fields["quant_type"], offset, state2)
    if not np.array_equal(state.code.view(np.uint32), get_4bit_type(state.quant_type).view(np.uint32)):
        raise FileFormatError(f"{w}.quant_map is not bitsandbytes' {state.quant_type} table")
    if state2 is not None and not np.array_equal(state2.code, create_dynamic_map()):
        raise FileFormatError(f"{w}.nested_quant_map is not the dynamic map")
    return packed, state


def int8_entries(prefix: str, CB: np.ndarray, SCB: np.ndarray) -> dict[str, np.ndarray]:
    """The state-dict entries of one LLM.int8() weight (Linear8bitLt._save_to_state_dict)."""
    CB, SCB = np.asarray(CB), np.asarray(SCB)
    if CB.dtype != np.int8 or CB.ndim != 2 or SCB.shape != (CB.shape[0],):
        raise InputError(f"{prefix}: need CB int8 (N, K) and SCB float32 (N,), got {CB.dtype} {CB.shape}, {SCB.shape}")
    return {f"{prefix}.weight": np.ascontiguousarray(CB),
            f"{prefix}.SCB": np.ascontiguousarray(SCB, np.float32),
            f"{prefix}.weight_format": np.array(WEIGHT_FORMAT_ROW, np.uint8)}


def int8_from_entries(entries: dict, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    for key in ("weight", "SCB"):
        if f"{prefix}.{key}" not in entries:
            raise FileFormatError(f"{prefix}: no tensor '{prefix}.{key}'")
    fmt = entries.get(f"{prefix}.weight_format")
    if fmt is not None and int(np.asarray(fmt)) != WEIGHT_FORMAT_ROW:
        raise FileFormatError(f"{prefix}.weight_format is {int(np.asarray(fmt))}; only 0 ('row') is loadable")
    return np.asarray(entries[f"{prefix}.weight"], np.int8), np.asarray(entries[f"{prefix}.SCB"], np.float32)


def quantization_config_4bit(quant_type: str = "nf4", double_quant: bool = True,
                             compute_dtype: str = "float16", quant_storage: str = "uint8",
                             skip_modules: Optional[list] = None) -> dict:
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double_quant,
            "bnb_4bit_compute_dtype": compute_dtype, "bnb_4bit_quant_storage": quant_storage,
            "llm_int8_skip_modules": skip_modules, "llm_int8_threshold": 6.0,
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}


def quantization_config_8bit(threshold: float = 6.0, skip_modules: Optional[list] = None) -> dict:
    return {"quant_method": "bitsandbytes", "load_in_4bit": False, "load_in_8bit": True,
            "llm_int8_threshold": threshold, "llm_int8_skip_modules": skip_modules,
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}


def write_safetensors(path: str, tensors: dict, metadata: Optional[dict] = None) -> None:
    """Write tensors to `path` atomically (a temporary file in the same folder, then renamed)."""
    from safetensors.numpy import save_file
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".refquant-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                  metadata=metadata if metadata is not None else {"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as NumPy (bfloat16 as ml_dtypes.bfloat16)."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 for safetensors' NumPy loader)
    from safetensors import safe_open
    out = {}
    try:
        with safe_open(path, "np") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except Exception as e:   # safetensors raises its own error types
        raise FileFormatError(f"{path}: not a readable safetensors file ({e})") from None
    return out


def dequantize_entries(entries: dict, prefix: str, kernel: str = "torch", bf16_daz: bool = False) -> np.ndarray:
    """The float weight of `<prefix>` from a bitsandbytes checkpoint, 4-bit or 8-bit."""
    from ..bnb.blockwise import dequantize_4bit
    from ..bnb.int8 import int8_vectorwise_dequant
    if f"{prefix}.SCB" in entries:
        CB, SCB = int8_from_entries(entries, prefix)
        return int8_vectorwise_dequant(CB, SCB)
    packed, state = quant_state_from_entries(entries, prefix)
    return dequantize_4bit(packed, state, kernel=kernel, bf16_daz=bf16_daz)


__all__ = ["quant_state_entries", "quant_state_from_entries", "int8_entries", "int8_from_entries",
           "quantization_config_4bit", "quantization_config_8bit", "write_safetensors", "read_safetensors",
           "dequantize_entries", "NESTED_BLOCKSIZE", "dtype_name"]
