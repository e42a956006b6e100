"""Read a quantized Hugging Face checkpoint back into float weights:
`refquant dequantize CHECKPOINT_DIR OUT_DIR [--dtype float32|bfloat16|float16]`.

The layout is told by config.json's quantization_config (`quant_method`):

    gptq                 qweight / qzeros / scales / g_idx; checkpoint_format "gptq" (v1, zero − 1
                         stored) or "gptq_v2"; W = scale · (code − zero), float16, as AutoGPTQ's
                         QuantLinear dequantizes (refquant.layouts.gptq)
    awq                  version "gemm" (AutoAWQ's dequantize_gemm) or "gemv"; float16
    compressed-tensors   every format of refquant.layouts.compressed_tensors (pack-, int-,
                         float-, nvfp4-pack-, mxfp4-pack-, mxfp6-pack-, mxfp8-quantized), each
                         module by its config group; equal to compressed-tensors' own
                         decompression, in its dtype
    fp8                  DeepSeek-V3 block FP8 (weight + weight_scale_inv), float32 as
                         transformers' finegrained-FP8 dequantization
    modelopt             ModelOpt FP8 (weight · weight_scale) and NVFP4 (hf_quant_config.json's
                         quant_algo), float32
    bitsandbytes         4-bit (NF4/FP4, nested or not) and 8-bit (CB · SCB / 127), float32, as
                         refquant.layouts.bnb reads them

Every other tensor (embeddings, norms, biases, an unquantized lm_head) is written as it is. Without
--dtype each weight keeps the dtype the loader's dequantization gives; with it, every floating
tensor is cast to that dtype (round to nearest even). config.json loses its quantization_config
(and takes the dtype); hf_quant_config.json is left out; other small files are copied. The output
directory appears complete or not at all (refquant.io.safetensors.save_checkpoint).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import ml_dtypes
import numpy as np

from ..errors import FormatError, InputError
from ..io.safetensors import INDEX, Checkpoint, extra_files, read_config, save_checkpoint
from ..layouts import awq as L_awq
from ..layouts import bnb as L_bnb
from ..layouts import compressed_tensors as L_ct
from ..layouts import fp8_block as L_fp8
from ..layouts import gptq as L_gptq
from ..layouts import targets as L_targets

DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
# the tensors that carry a quantized linear `<p>` in each layout (the marker, then the rest)
GPTQ = ("qweight", "qzeros", "scales", "g_idx")
AWQ = ("qweight", "qzeros", "scales")


def _int_field(qc: dict, key: str, default: int, where) -> int:
    v = qc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError(f"dequantize: {where}: quantization_config.{key} must be an integer, got {v!r}")
    return v


F8 = E4M3
FLOATS = (np.dtype(np.float32), np.dtype(np.float16), DTYPES["bfloat16"])


def _need(t: dict, m: str, name: str, dtypes, shape=None, ndim=None) -> np.ndarray:
    """Tensor `<m>.<name>` of one of `dtypes` and, when given, exactly `shape` or `ndim`
    dimensions; anything else is refused with a line naming it."""
    if name not in t:
        raise FormatError(f"dequantize: {m}.{name} is missing")
    a = t[name]
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        raise FormatError(f"dequantize: {m}.{name} is {a.dtype}, not {' or '.join(str(np.dtype(d)) for d in dtypes)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise FormatError(f"dequantize: {m}.{name} has shape {tuple(a.shape)}, not {tuple(shape)}")
    if ndim is not None and a.ndim != ndim:
        raise FormatError(f"dequantize: {m}.{name} has shape {tuple(a.shape)}, not {ndim}-D")
    return a


def _check_gptq(t, m, bits):
    qw = _need(t, m, "qweight", [np.int32], ndim=2)
    sc = _need(t, m, "scales", FLOATS, ndim=2)
    G, N = sc.shape
    K = qw.shape[0] * 32 // bits
    if qw.shape[1] != N or G == 0 or K % G:
        raise FormatError(f"dequantize: {m}: qweight {qw.shape} and scales {sc.shape} do not describe one "
                          f"{bits}-bit GPTQ layer")
    _need(t, m, "qzeros", [np.int32], shape=(G, -(-N * bits // 32)))
    if "g_idx" in t:
        gi = _need(t, m, "g_idx", [np.int32, np.int64], shape=(K,))
        if gi.size and (gi.min() < 0 or gi.max() >= G):
            raise FormatError(f"dequantize: {m}.g_idx names groups outside [0, {G})")


def _check_awq(t, m):
    qw = _need(t, m, "qweight", [np.int32], ndim=2)
    sc = _need(t, m, "scales", FLOATS, ndim=2)
    K, N = qw.shape[0], qw.shape[1] * 8
    G = sc.shape[0]
    if sc.shape[1] != N or G == 0 or K % G:
        raise FormatError(f"dequantize: {m}: qweight {qw.shape} and scales {sc.shape} do not describe one AWQ GEMM layer")
    _need(t, m, "qzeros", [np.int32], shape=(G, N // 8))


def _check_ct(t, m, fmt, w):
    if fmt == "pack-quantized":
        bits = w.get("num_bits")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise FormatError(f"dequantize: {m}: pack-quantized num_bits must be 1..8, got {bits!r}")
        shp = _need(t, m, "weight_shape", [np.int32, np.int64], shape=(2,))
        N, K = (int(v) for v in shp)
        if N <= 0 or K <= 0:
            raise FormatError(f"dequantize: {m}.weight_shape {[N, K]} is not a positive shape")
        _need(t, m, "weight_packed", [np.int32], shape=(N, -(-K * bits // 32)))
        sc = _need(t, m, "weight_scale", FLOATS, ndim=2)
        gs = w.get("group_size")
        G = K // gs if w.get("strategy") == "group" and isinstance(gs, int) and gs > 0 and K % gs == 0 else \
            1 if w.get("strategy") == "channel" else None
        if sc.shape[0] != N or sc.shape[1] == 0 or K % sc.shape[1] or (G is not None and sc.shape[1] != G):
            raise FormatError(f"dequantize: {m}.weight_scale has shape {sc.shape}, not ({N}, {G or 'G'}) for "
                              f"{K} inputs under strategy {w.get('strategy')!r}, group size {gs!r}")
        if "weight_zero_point" in t:
            _need(t, m, "weight_zero_point", [np.int32], shape=(-(-N * bits // 32), sc.shape[1]))
    elif fmt in ("int-quantized", "naive-quantized", "float-quantized"):
        q = _need(t, m, "weight", [np.int8, F8], ndim=2)
        sc = _need(t, m, "weight_scale", FLOATS)
        from .. import affine
        from ..layouts.compressed_tensors import weight_block
        block = weight_block(w, q.shape)
        want = affine.scale_shape(q.shape, tuple(min(b, s) for b, s in zip(block, q.shape)))
        if sc.size != int(np.prod(want)):
            raise FormatError(f"dequantize: {m}.weight_scale has {sc.size} values; a {w.get('strategy')} weight of "
                              f"shape {q.shape} needs {want}")
        if "weight_zero_point" in t:
            _need(t, m, "weight_zero_point", [np.int8, np.int32], shape=sc.shape)
    elif fmt == "nvfp4-pack-quantized":
        pk = _need(t, m, "weight_packed", [np.uint8], ndim=2)
        N, K = pk.shape[0], pk.shape[1] * 2
        if K % 16:
            raise FormatError(f"dequantize: {m}.weight_packed holds {K} values a row, not a multiple of 16")
        _need(t, m, "weight_scale", [F8, np.uint8], shape=(N, K // 16))
        _need(t, m, "weight_global_scale", [np.float32], shape=(1,))


def _check_block_fp8(t, m):
    q = _need(t, m, "weight", [F8], ndim=2)
    _need(t, m, "weight_scale_inv", [np.float32], shape=(-(-q.shape[0] // 128), -(-q.shape[1] // 128)))


def _check_modelopt(t, m, algo):
    if algo == "NVFP4":
        pk = _need(t, m, "weight", [np.uint8], ndim=2)
        N, K = pk.shape[0], pk.shape[1] * 2
        if K % 16:
            raise FormatError(f"dequantize: {m}.weight holds {K} values a row, not a multiple of 16")
        _need(t, m, "weight_scale", [F8], shape=(N, K // 16))
        if _need(t, m, "weight_scale_2", [np.float32]).size != 1:
            raise FormatError(f"dequantize: {m}.weight_scale_2 must hold one value")
    else:
        _need(t, m, "weight", [F8], ndim=2)
        if _need(t, m, "weight_scale", [np.float32]).size != 1:
            raise FormatError(f"dequantize: {m}.weight_scale must hold one value")


def _modules(names, marker: str) -> list:
    """The modules `<p>` that have a tensor `<p>.<marker>`."""
    suffix = "." + marker
    return sorted(n[:-len(suffix)] for n in names if n.endswith(suffix))


def _take(tensors: dict, module: str, names, who: str) -> dict:
    t = {}
    for n in names:
        k = f"{module}.{n}"
        if k in tensors:
            t[n] = np.asarray(tensors.pop(k))
    return t


def _ct_groups(qc: dict):
    """[(targets, format, weights args)] of a compressed-tensors config."""
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise FormatError("dequantize: compressed-tensors quantization_config has no config_groups")
    out = []
    for name, g in groups.items():
        if not isinstance(g, dict) or not isinstance(g.get("weights", {}) or {}, dict) \
                or not isinstance(g.get("targets", []) or [], list):
            raise FormatError(f"dequantize: compressed-tensors config group {name!r} is not an object with "
                              f"weights and targets")
        w = g.get("weights")
        if not w:
            continue
        fmt = g.get("format") or qc.get("format")
        if fmt in (None, "mixed-precision"):
            raise FormatError(f"dequantize: compressed-tensors config group {name} names no format")
        out.append((list(g.get("targets") or ["Linear"]), fmt, w))
    return out


def _ct_group(module: str, groups: list):
    """The config group a module falls under: an exact name, then a re: pattern, then a class
    target (compressed-tensors' match_targets order)."""
    for kind in ("name", "re", "class"):
        for targets, fmt, w in groups:
            for e in L_targets.compile_entries(targets, "config_groups targets"):
                if e[0] == kind and L_targets.matches(module, "Linear", e):
                    return fmt, w
    raise FormatError(f"dequantize: quantized module {module} matches no compressed-tensors config group")


def _bnb_owners(k: str):
    """The modules `m` whose bitsandbytes entries a tensor name can be: `m.weight`,
    `m.weight.<anything>`, `m.SCB`, `m.weight_format`."""
    if k.endswith(".weight"):
        yield k[:-len(".weight")]
    for suffix in (".SCB", ".weight_format"):
        if k.endswith(suffix):
            yield k[:-len(suffix)]
    at = k.find(".weight.")
    while at >= 0:
        yield k[:at]
        at = k.find(".weight.", at + 1)


def _bnb_entries(tensors: dict, mods: list) -> dict:
    """module -> the names of its entries, in the tensors' order: each name goes to the first
    module in `mods` order that it can belong to (as taking them module by module would give),
    found in one pass over the names, not one a module (quadratic in a large checkpoint)."""
    rank = {m: i for i, m in enumerate(mods)}
    out: dict = {m: [] for m in mods}
    for k in tensors:
        owners = [m for m in _bnb_owners(k) if m in rank]
        if owners:
            out[min(owners, key=rank.__getitem__)].append(k)
    return out


CT_NAMES = ("weight", "weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_global_scale",
            "weight_g_idx", "input_scale", "input_zero_point", "input_global_scale", "output_scale",
            "output_zero_point")


def dequantize_checkpoint(in_dir, out_dir, dtype: Optional[str] = None, progress: Optional[Callable] = None,
                          max_shard_bytes: int = 5 * 2**30) -> None:
    """Dequantize the checkpoint in `in_dir` into `out_dir` (see the module's docstring)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"dequantize: --dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out_dir.exists():
        raise InputError(f"dequantize: output directory {out_dir} already exists")
    cfg_path = in_dir / "config.json"
    config = read_config(in_dir)
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or "quant_method" not in qc:
        raise InputError(f"dequantize: {cfg_path} has no quantization_config: {in_dir} is not a quantized checkpoint")
    method = qc["quant_method"]
    if not isinstance(method, str):
        raise FormatError(f"dequantize: {cfg_path}: quant_method must be a string, got {method!r}")
    ck = Checkpoint(in_dir)
    tensors = {k: ck[k] for k in ck}
    out: dict = {}

    def put(module, w):
        out[f"{module}.weight"] = w
        if progress:
            progress(None)

    if method == "gptq":
        bits = _int_field(qc, "bits", 4, cfg_path)
        if bits not in L_gptq.BITS:
            raise FormatError(f"dequantize: {cfg_path}: GPTQ bits must be one of {L_gptq.BITS}, got {bits}")
        version = "v2" if qc.get("checkpoint_format") == "gptq_v2" else "v1"
        for m in _modules(tensors, "qweight"):
            t = _take(tensors, m, GPTQ, "gptq")
            _check_gptq(t, m, bits)
            put(m, L_gptq.dequantize(t, bits, version))
    elif method == "awq":
        version = str(qc.get("version", "gemm")).lower()
        g = _int_field(qc, "group_size", 128, cfg_path)
        for m in _modules(tensors, "qweight"):
            t = _take(tensors, m, AWQ, "awq")
            if version == "gemv":
                _need(t, m, "qweight", [np.int32], ndim=2)
                _need(t, m, "qzeros", [np.int32], ndim=2)
                _need(t, m, "scales", FLOATS, ndim=2)
                put(m, L_awq.dequantize_gemv(t, g))
            elif version == "gemm":
                _check_awq(t, m)
                put(m, np.ascontiguousarray(L_awq.dequantize(t).T))
            else:
                raise FormatError(f"dequantize: AWQ version {version!r} is not one refquant reads (gemm, gemv)")
    elif method == "compressed-tensors":
        groups = _ct_groups(qc)
        mods = sorted(set(_modules(tensors, "weight_scale")))
        for m in mods:
            fmt, w = _ct_group(m, groups)
            t = _take(tensors, m, CT_NAMES, "compressed-tensors")
            _check_ct(t, m, fmt, w)
            put(m, L_ct.dequantize(t, fmt, w, who=f"dequantize: {m}"))
    elif method == "fp8":
        for m in _modules(tensors, "weight_scale_inv"):
            t = _take(tensors, m, ("weight", "weight_scale_inv", "input_scale"), "fp8")
            _check_block_fp8(t, m)
            put(m, L_fp8.dequantize_block_fp8(t))
    elif method == "modelopt":
        algo = qc.get("quant_algo")
        hq = in_dir / "hf_quant_config.json"
        if algo is None and hq.is_file():
            try:
                algo = json.loads(hq.read_text()).get("quantization", {}).get("quant_algo")
            except (ValueError, AttributeError):
                raise FormatError(f"dequantize: {hq} is not ModelOpt's JSON object") from None
        for m in _modules(tensors, "weight_scale"):
            t = _take(tensors, m, ("weight", "weight_scale", "weight_scale_2", "input_scale"), "modelopt")
            if algo in ("FP8", "NVFP4"):
                _check_modelopt(t, m, algo)
            if algo == "NVFP4":
                put(m, L_fp8.dequantize_modelopt_nvfp4(t))
            elif algo == "FP8":
                if t["weight"].dtype != E4M3:
                    raise FormatError(f"dequantize: ModelOpt FP8 weight {m}.weight is {t['weight'].dtype}, not float8_e4m3fn")
                # ModelOpt's export: weight.to(float32) · weight_scale
                put(m, (t["weight"].astype(np.float32) * np.float32(np.asarray(t["weight_scale"]).ravel()[0]))
                    .astype(np.float32))
            else:
                raise FormatError(f"dequantize: ModelOpt quant_algo {algo!r} is not one refquant reads (FP8, NVFP4)")
    elif method == "bitsandbytes":
        mods = sorted(set(_modules(tensors, "SCB")) |
                      {k.split(".weight." + L_bnb.QS_KEY)[0] for k in tensors if ".weight." + L_bnb.QS_KEY in k})
        owned = _bnb_entries(tensors, mods)
        for m in mods:
            entries = {k: np.asarray(tensors.pop(k)) for k in owned[m]}
            if f"{m}.weight_format" in entries:     # a 0-d tensor; the reader may hand it back as (1,)
                entries[f"{m}.weight_format"] = entries[f"{m}.weight_format"].reshape(())
            put(m, L_bnb.dequantize_entries(entries, m))
    else:
        raise FormatError(f"dequantize: quant_method {method!r} is not one refquant reads "
                          f"(gptq, awq, compressed-tensors, fp8, modelopt, bitsandbytes)")
    if not out:
        raise InputError(f"dequantize: {in_dir} holds no {method} quantized layer")
    out.update({k: np.asarray(v) for k, v in tensors.items()})
    if dtype is not None:
        dt = DTYPES[dtype]
        out = {k: (v.astype(np.float32).astype(dt) if v.dtype != dt and (np.issubdtype(v.dtype, np.floating) or
                                                                         v.dtype in (E4M3, DTYPES["bfloat16"]))
                   else v) for k, v in out.items()}
    del config["quantization_config"]
    if dtype is not None:
        config["torch_dtype"] = dtype
    extra = {"config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}
    # tokenizer files and the like, links confined to the checkpoint (refquant.io.safetensors)
    extra.update(extra_files(in_dir, skip=("config.json", INDEX, "hf_quant_config.json")))
    save_checkpoint(out_dir, out, max_shard_bytes=max_shard_bytes, extra_files=extra)
