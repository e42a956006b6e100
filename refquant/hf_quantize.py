"""Quantize a Hugging Face safetensors checkpoint's linear layers into a checkpoint a real loader
reads: `refquant quantize MODEL_DIR OUT_DIR --method rtn|gptq|awq --bits B --group-size G
--format gptq|gptq_v2|awq|awq-gemv|compressed-tensors|fp8-block|nvfp4|modelopt-fp8|modelopt-nvfp4`.

Linear layers are the 2-D `*.weight` tensors under `model.layers.` (embeddings, norms and
lm_head stay as they are). GPTQ and AWQ read calibration activations from `--activations DIR`:

    DIR/<module>.npy     the inputs of linear <module> (its weight is <module>.weight), a 2-D
                         float array (n_tokens, in_features) in NumPy's .npy format — any framework
                         can write it (torch: np.save(path, x.float().numpy()) from a forward hook)

AWQ folds its input scales s into the operation before each layer group, as AutoAWQ does for
Llama-style blocks: input_layernorm → q/k/v_proj, post_attention_layernorm → gate/up_proj,
v_proj → o_proj (when their shapes match: not under grouped-query attention), up_proj →
down_proj. Scales are searched on the original weights, folded, then every layer is quantized.

The ModelOpt formats (modelopt-fp8, modelopt-nvfp4: NVIDIA ModelOpt's export_hf_checkpoint
layout, with hf_quant_config.json) take each linear's input amax from `--activations DIR` (its
input_scale). NVFP4 gives layers that share an input (q/k/v, gate/up) one weight amax and one
input amax, the largest of theirs, as ModelOpt 0.47 does for engines that fuse them; its FP8
export does not (each layer keeps its own weight_scale).
The output directory appears complete or not at all (refquant.io.safetensors.save_checkpoint).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import fp8_scaling, mx
from .algorithms.awq import awq as awq_search
from .algorithms.gptq import gptq as gptq_run
from .algorithms.rtn import rtn as rtn_run
from .errors import FormatError, InputError
from .io.safetensors import Checkpoint, save_checkpoint
from .layouts import awq as L_awq
from .layouts import compressed_tensors as L_ct
from .layouts import fp8_block as L_fp8
from .layouts import gptq as L_gptq
from .layouts.fp8_block import BF16

METHODS = ("rtn", "gptq", "awq")
FORMATS = ("gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors", "fp8-block", "nvfp4", "modelopt-fp8",
           "modelopt-nvfp4")
FLOAT_FORMATS = ("fp8-block", "nvfp4", "modelopt-fp8", "modelopt-nvfp4")
AWQ_GROUPS = [("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
              ("self_attn.v_proj", ("self_attn.o_proj",)),
              ("mlp.up_proj", ("mlp.down_proj",))]
# layers that read the same input: ModelOpt shares their amaxes (preprocess_linear_fusion)
SHARED_INPUT = [g for _, g in AWQ_GROUPS[:2]]


def linear_names(ck) -> list:
    return [k for k in ck if k.startswith("model.layers.") and k.endswith(".weight") and ck[k].ndim == 2]


def _check_options(method, bits, group_size, fmt, activations):
    if method not in METHODS:
        raise InputError(f"quantize: method must be one of {METHODS}, got {method!r}")
    if fmt not in FORMATS:
        raise FormatError(f"quantize: format must be one of {FORMATS}, got {fmt!r}")
    allowed = {"gptq": (2, 3, 4, 8), "gptq_v2": (2, 3, 4, 8), "awq": (4,), "awq-gemv": (4,), "compressed-tensors": tuple(range(2, 9)),
               "fp8-block": (8,), "nvfp4": (4,), "modelopt-fp8": (8,), "modelopt-nvfp4": (4,)}[fmt]
    if bits not in allowed:
        raise FormatError(f"quantize: format {fmt} holds {allowed}-bit weights, not {bits}")
    if fmt == "awq-gemv" and group_size not in (-1, 32, 64) and group_size < 128:
        raise FormatError(f"quantize: AWQ GEMV takes group size 32, 64 or >= 128, not {group_size}")
    if fmt in FLOAT_FORMATS and method != "rtn":
        raise FormatError(f"quantize: format {fmt} is a float format; only --method rtn applies")
    if method in ("gptq", "awq") and activations is None:
        raise InputError(f"quantize: --method {method} needs calibration activations (--activations DIR)")
    if fmt.startswith("modelopt-") and activations is None:
        raise InputError(f"quantize: format {fmt} stores input scales: it needs calibration activations (--activations DIR)")


def _activations(adir: Path, module: str, K: int) -> np.ndarray:
    p = adir / f"{module}.npy"
    if not p.exists():
        raise InputError(f"quantize: no calibration activations for layer {module} (expected {p})")
    X = np.load(p, mmap_mode="r")
    if X.ndim != 2 or X.shape[1] != K:
        raise InputError(f"quantize: activations {p} have shape {X.shape}; layer {module} needs (n, {K})")
    return np.asarray(X, np.float32)


def _awq_fold(weights: dict, adir: Path, bits, g, sym, progress) -> None:
    """Search each group's AWQ scale on the original weights, then fold it: the balance layers'
    columns · s, the preceding norm / linear rows / s. In place on `weights` (float32)."""
    prefixes = sorted({k.rsplit(".", 3)[0] for k in weights if k.startswith("model.layers.")})
    plans = []
    for p in prefixes:
        for prev, members in AWQ_GROUPS:
            names = [f"{p}.{m}.weight" for m in members]
            prev_name = f"{p}.{prev}.weight"
            if not all(n in weights for n in names) or prev_name not in weights:
                continue
            K = weights[names[0]].shape[1]
            if weights[prev_name].shape[0] != K:       # grouped-query attention: v_proj -> o_proj
                continue
            X = _activations(adir, names[0][:-len(".weight")], K)
            W = np.concatenate([weights[n] for n in names], axis=0)
            gs = K if g == -1 else g
            s = awq_search(W, X, bits=bits, group_size=gs, sym=sym).input_scale
            plans.append((names, prev_name, s))
    for names, prev_name, s in plans:
        for n in names:
            weights[n] = (weights[n] * s[None, :]).astype(np.float32)
        pw = weights[prev_name]
        weights[prev_name] = (pw / s if pw.ndim == 1 else pw / s[:, None]).astype(np.float32)


def quantize_checkpoint(model_dir, out_dir, method: str = "rtn", bits: int = 4, group_size: int = 128,
                        fmt: str = "gptq", activations=None, sym: Optional[bool] = None,
                        progress: Optional[Callable] = None, max_shard_bytes: int = 5 * 2**30) -> None:
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_options(method, bits, group_size, fmt, activations)
    if out_dir.exists():
        raise InputError(f"quantize: output directory {out_dir} already exists")
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise InputError(f"quantize: {model_dir} has no config.json")
    config = json.loads(cfg_path.read_text())
    ck = Checkpoint(model_dir)
    lin = linear_names(ck)
    if not lin:
        raise InputError(f"quantize: {model_dir} has no linear layers under model.layers.")
    adir = Path(activations) if activations is not None else None
    for k in lin:                      # every check that needs no computation, before any
        K = ck[k].shape[1]
        if fmt in ("gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors") and group_size != -1 and K % group_size:
            raise InputError(f"quantize: layer {k[:-len('.weight')]} has {K} inputs, not a multiple of group "
                             f"size {group_size}")
        if fmt in ("nvfp4", "modelopt-nvfp4") and K % 16:
            raise InputError(f"quantize: layer {k[:-len('.weight')]} has {K} inputs, not a multiple of NVFP4's 16")
        if adir is not None and (method != "rtn" or fmt.startswith("modelopt-")):
            _activations(adir, k[:-len(".weight")], K)
    if sym is None:
        sym = fmt not in ("awq", "awq-gemv")
    out = {}
    weights = {k: np.asarray(ck[k]) for k in ck}
    if fmt.startswith("modelopt-"):
        w_amax, x_amax = _modelopt_amaxes(weights, lin, adir, fuse=fmt == "modelopt-nvfp4")
    if method == "awq":
        floats = {k: weights[k].astype(np.float32) for k in weights if k.startswith("model.layers.")}
        _awq_fold(floats, adir, bits, group_size, sym, progress)
        weights.update({k: v.astype(weights[k].dtype) for k, v in floats.items() if k not in lin})
        weights.update({k: floats[k] for k in lin})
    for k in lin:
        W = weights[k].astype(np.float32)
        N, K = W.shape
        module = k[:-len(".weight")]
        if fmt in ("gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors"):
            if group_size != -1 and K % group_size:
                raise InputError(f"quantize: layer {module} has {K} inputs, not a multiple of group size {group_size}")
            if method == "gptq":
                q = gptq_run(W, X=_activations(adir, module, K), bits=bits, group_size=group_size, sym=sym)
            else:
                q = rtn_run(W, bits, group_size, sym)
            if fmt in ("gptq", "gptq_v2"):
                t = L_gptq.pack(q.codes, q.scales, q.zeros, q.g_idx, bits, "v1" if fmt == "gptq" else "v2")
            elif fmt == "awq":
                t = L_awq.pack(q.codes, q.scales, q.zeros)
            elif fmt == "awq-gemv":
                t = L_awq.pack_gemv(q.codes, q.scales, q.zeros, group_size)
            else:
                off = 2 ** (bits - 1)
                codes = (q.codes.astype(np.int16) - off).astype(np.int8)
                z = None if sym else (q.zeros - off).astype(np.int8)
                dt = weights[k].dtype if weights[k].dtype in (np.float16,) else np.float32
                t = L_ct.pack_quantized(codes, q.scales.astype(dt), z, bits)
        elif fmt == "fp8-block":
            t = L_fp8.block_fp8(W)
        elif fmt == "modelopt-fp8":
            dt = weights[k].dtype if weights[k].dtype in (np.float16, BF16) else np.float32
            t = L_fp8.modelopt_fp8(weights[k].astype(dt), dt, w_amax[k], x_amax[k])
        elif fmt == "modelopt-nvfp4":
            t = L_fp8.modelopt_nvfp4(W, w_amax[k], x_amax[k])
        else:
            if K % 16:
                raise InputError(f"quantize: layer {module} has {K} inputs, not a multiple of NVFP4's 16")
            packed, scales, gs = mx.quantize_nvfp4(W)
            t = L_ct.nvfp4_pack_quantized(packed, scales, gs)
            t["weight_shape"] = np.array(W.shape, np.int64)
        del weights[k]
        for name, a in t.items():
            out[f"{module}.{name}"] = a
        if progress:
            progress(None)
    out.update(weights)
    extra = {}
    if fmt.startswith("modelopt-"):
        hq = L_fp8.quantization_config_modelopt("FP8" if fmt == "modelopt-fp8" else "NVFP4",
                                                _modelopt_excluded(weights, config))
        config["quantization_config"] = L_fp8.hf_config_modelopt(hq)
        extra["hf_quant_config.json"] = json.dumps(hq, indent=4) + "\n"
    else:
        config["quantization_config"] = _config(fmt, bits, group_size, sym)
    extra["config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    save_checkpoint(out_dir, out, max_shard_bytes=max_shard_bytes, extra_files=extra)


def _modelopt_amaxes(weights: dict, lin: list, adir: Path, fuse: bool):
    """Each linear's weight amax (max |W|) and input amax (max |X| over its activations); with
    `fuse`, then the largest of each within a group of layers that share an input (q/k/v, gate/up).
    ModelOpt 0.47 fuses every format but per-tensor FP8 (_fuse_shared_input_modules)."""
    w_amax = {k: np.float32(np.max(np.abs(weights[k].astype(np.float32)))) for k in lin}
    x_amax = {k: np.float32(np.max(np.abs(_activations(adir, k[:-len(".weight")], weights[k].shape[1])))) for k in lin}
    prefixes = sorted({k.rsplit(".", 3)[0] for k in lin}) if fuse else []
    for p in prefixes:
        for members in SHARED_INPUT:
            names = [f"{p}.{m}.weight" for m in members]
            if all(n in w_amax for n in names):
                wa = max(w_amax[n] for n in names)
                xa = max(x_amax[n] for n in names)
                for n in names:
                    w_amax[n], x_amax[n] = wa, xa
    return w_amax, x_amax


def _modelopt_excluded(rest: dict, config: dict) -> list:
    """The modules left unquantized that ModelOpt lists in exclude_modules: the other 2-D weights'
    modules (embeddings, lm_head) and lm_head itself when tied to the embeddings."""
    mods = {k[:-len(".weight")] for k, a in rest.items() if k.endswith(".weight") and a.ndim == 2}
    mods.add("lm_head")
    return sorted(mods)


def _config(fmt, bits, group_size, sym) -> dict:
    if fmt in ("gptq", "gptq_v2"):
        return L_gptq.quantization_config(bits, group_size, sym, False, "v1" if fmt == "gptq" else "v2")
    if fmt == "awq":
        return L_awq.quantization_config(group_size, zero_point=not sym)
    if fmt == "awq-gemv":
        return L_awq.quantization_config(group_size, zero_point=not sym, version="gemv")
    if fmt == "compressed-tensors":
        return L_ct.quantization_config("pack-quantized", bits, None if group_size == -1 else group_size, sym)
    if fmt == "fp8-block":
        return L_fp8.quantization_config_block_fp8()
    return L_ct.quantization_config("nvfp4-pack-quantized")
