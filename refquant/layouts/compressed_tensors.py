"""compressed-tensors checkpoints (llm-compressor's output, vLLM's and transformers' "compressed-
tensors" quant_method), per linear `<p>`, by format:

  pack-quantized (INT2..8, weights only):
    <p>.weight_packed      int32 (N, ceil(K·b/32))   code + 2^(b−1), dense bit stream along K
                                                      (refquant.packing: code i at stream bit i·b)
    <p>.weight_scale       dense dtype (N, G)          G = K/g (group), 1 (channel)
    <p>.weight_zero_point  int32 (ceil(N·b/32), G)     asymmetric only: zero + 2^(b−1) packed
                                                       along N (dim 0)
    <p>.weight_shape       int64 (2,)                  [N, K]
  int-quantized (INT8 W8A8):
    <p>.weight int8 (N, K), <p>.weight_scale (N, 1) float, <p>.weight_zero_point int8 when asymmetric
  float-quantized (FP8 W8A8):
    <p>.weight float8_e4m3fn (N, K), <p>.weight_scale float32 (N, 1) or (1,) per tensor
  nvfp4-pack-quantized:
    <p>.weight_packed uint8 (N, K/2)  two E2M1 codes a byte, element 2i in the low nibble
    <p>.weight_scale float8_e4m3fn (N, K/16), <p>.weight_global_scale float32 (1,) = 448·6/amax
  mxfp4-pack-quantized:
    <p>.weight_packed uint8 (N, K/2) as nvfp4, <p>.weight_scale uint8 (N, K/32) E8M0 exponents
  mxfp6-pack-quantized:
    <p>.weight_packed uint8 (N, 3K/4)  four E2M3 codes (sign in bit 5) in three bytes: the
                                       little-endian 24-bit word c0 | c1<<6 | c2<<12 | c3<<18
    <p>.weight_scale uint8 (N, K/32) E8M0 exponents
  mxfp8-quantized:
    <p>.weight float8_e4m3fn (N, K), <p>.weight_scale uint8 (N, K/32) E8M0 exponents

A preset (`PRESETS`, compressed-tensors' PRESET_SCHEMES: W4A16, FP8_DYNAMIC, MXFP4, ...) names
the weights' and the input activations' quantization args and, through the compressor that
takes it (infer_module_format), the format. Activation-quantizing presets add no weight
tensors; static ones store the layer's input scale: FP8 `input_scale` float32 (1,) = amax /
448, NVFP4 `input_global_scale` float32 (1,) = 448·6 / amax.

Codes and scales come from refquant.affine ("compressed-tensors" convention), refquant.fp8_scaling
and refquant.mx; this module only names, packs and describes them. See
spec/layouts/compressed-tensors.md.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .. import affine
from ..errors import FormatError, InputError
from ..packing import pack_bits, unpack_bits

FORMATS = ("pack-quantized", "int-quantized", "float-quantized", "nvfp4-pack-quantized", "mxfp4-pack-quantized",
           "mxfp6-pack-quantized", "mxfp8-quantized")


def _int_args(bits, strategy="group", group_size=128, symmetric=True, dynamic=False):
    a = {"num_bits": bits, "type": "int", "symmetric": symmetric, "group_size": group_size, "strategy": strategy,
         "dynamic": dynamic}
    return a


def _float_args(bits, strategy, group_size=None, dynamic=False, scale_dtype=None, **extra):
    a = {"num_bits": bits, "type": "float", "symmetric": True, "group_size": group_size, "strategy": strategy,
         "dynamic": dynamic}
    if scale_dtype is not None:
        a["scale_dtype"] = scale_dtype
    a.update(extra)
    return a


_TOKEN_INT8 = _int_args(8, "token", None, dynamic=True)
_MX = dict(group_size=32, scale_dtype="torch.uint8")
# compressed-tensors 0.20.1's PRESET_SCHEMES, as its QuantizationConfig serialises them (fields at
# their default left out): name -> (format, weights, input_activations)
PRESETS = {
    **{f"W{b}A16": ("pack-quantized", _int_args(b), None) for b in range(2, 9)},
    **{f"W{b}A8": ("int-quantized", _int_args(b), _TOKEN_INT8) for b in range(2, 8)},
    **{f"W{b}A4": ("int-quantized", _int_args(b), _int_args(4, "token", None, dynamic=True)) for b in range(2, 5)},
    "W4A16_ASYM": ("pack-quantized", _int_args(4, symmetric=False), None),
    "W8A8": ("int-quantized", _int_args(8, "channel", None), _TOKEN_INT8),
    "INT8": ("int-quantized", _int_args(8, "channel", None), _TOKEN_INT8),
    "W4AFP8": ("int-quantized", _int_args(4), _float_args(8, "token", dynamic=True)),
    "FP8": ("float-quantized", _float_args(8, "tensor"), _float_args(8, "tensor", observer="static_minmax")),
    "FP8_DYNAMIC": ("float-quantized", _float_args(8, "channel"), _float_args(8, "token", dynamic=True)),
    "FP8_BLOCK": ("float-quantized", _float_args(8, "block", block_structure=[128, 128]),
                  _float_args(8, "group", 128, dynamic=True)),
    "NVFP4A16": ("nvfp4-pack-quantized", _float_args(4, "tensor_group", 16, scale_dtype="torch.float8_e4m3fn"), None),
    "NVFP4": ("nvfp4-pack-quantized", _float_args(4, "tensor_group", 16, scale_dtype="torch.float8_e4m3fn"),
              _float_args(4, "tensor_group", 16, dynamic="local", scale_dtype="torch.float8_e4m3fn",
                          observer="static_minmax")),
    "MXFP4A16": ("mxfp4-pack-quantized", _float_args(4, "group", **_MX), None),
    "MXFP4": ("mxfp4-pack-quantized", _float_args(4, "group", **_MX), _float_args(4, "group", dynamic=True, **_MX)),
    "MXFP4XFP8": ("mxfp4-pack-quantized", _float_args(4, "group", **_MX), _float_args(8, "group", 128, dynamic=True)),
    "MXFP6A16": ("mxfp6-pack-quantized", _float_args(6, "group", **_MX), None),
    "MXFP6A8": ("mxfp6-pack-quantized", _float_args(6, "group", **_MX), _float_args(8, "group", dynamic=True, **_MX)),
    "MXFP8A16": ("mxfp8-quantized", _float_args(8, "group", **_MX), None),
    "MXFP8": ("mxfp8-quantized", _float_args(8, "group", **_MX), _float_args(8, "group", dynamic=True, **_MX)),
}


def preset(name: str):
    """(format, weights args, input activation args or None) of preset `name` (any case, as
    compressed-tensors' preset_name_to_scheme upper-cases it)."""
    key = str(name).upper()
    if key not in PRESETS:
        raise FormatError(f"compressed-tensors has no preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    fmt, w, a = PRESETS[key]
    return fmt, dict(w), (dict(a) if a is not None else None)


def _bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise FormatError(f"compressed-tensors pack-quantized holds 1..8-bit codes, not {bits!r}")
    return int(bits)


def pack_quantized(q: np.ndarray, scale: np.ndarray, zero_point, bits: int) -> dict:
    """Signed codes q (N, K) in [−2^(b−1), 2^(b−1) − 1], scale (N, G), zero_point (N, G) signed or
    None (symmetric) -> the pack-quantized tensors."""
    bits = _bits(bits)
    q = np.asarray(q)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if q.ndim != 2 or q.min() < lo or q.max() > hi:
        raise InputError(f"pack-quantized: codes must be a matrix of {bits}-bit signed integers [{lo}, {hi}]")
    off = 2 ** (bits - 1)
    out = {"weight_packed": pack_bits((q.astype(np.int16) + off).astype(np.uint8), bits, axis=1),
           "weight_scale": np.asarray(scale),
           "weight_shape": np.array(q.shape, np.int64)}
    if zero_point is not None:
        z = np.asarray(zero_point).astype(np.int16)
        if z.min() < lo or z.max() > hi:
            raise InputError(f"pack-quantized: zero points must lie in [{lo}, {hi}]")
        out["weight_zero_point"] = pack_bits((z + off).astype(np.uint8), bits, axis=0)
    return out


def pack_quantized_specs(N: int, K: int, G: int, bits: int, scale_dtype, symmetric: bool) -> dict:
    """The (dtype, shape) of each tensor `pack_quantized` writes for a layer of N outputs and K
    inputs whose scale is `scale_dtype` (N, G), from the table above (nothing packed): codes
    packed along K, zero points (asymmetric only) along N, ceil(·b/32) words."""
    bits = _bits(bits)
    out = {"weight_packed": (np.dtype(np.int32), (N, -(-K * bits // 32))),
           "weight_scale": (np.dtype(scale_dtype), (N, G)),
           "weight_shape": (np.dtype(np.int64), (2,))}
    if not symmetric:
        out["weight_zero_point"] = (np.dtype(np.int32), (-(-N * bits // 32), G))
    return out


def unpack_quantized(t: dict, bits: int):
    """-> (signed codes int8 (N, K), scale, zero_point int8 (N, G) or None)."""
    bits = _bits(bits)
    N, K = (int(v) for v in t["weight_shape"])
    off = 2 ** (bits - 1)
    q = (unpack_bits(t["weight_packed"], bits, K, axis=1).astype(np.int16) - off).astype(np.int8)
    s = t["weight_scale"]
    z = None
    if "weight_zero_point" in t:
        z = (unpack_bits(t["weight_zero_point"], bits, N, axis=0).astype(np.int16) - off).astype(np.int8)
    return q, s, z


def dequantize_pack_quantized(t: dict, bits: int) -> np.ndarray:
    """(q − zero) · scale in the scale's dtype, as compressed-tensors' dequantize computes it."""
    q, s, z = unpack_quantized(t, bits)
    g = q.shape[1] // s.shape[1]
    return affine.dequantize_compressed_tensors(q, s, z, (1, g))


def int_quantized(q: np.ndarray, scale: np.ndarray, zero_point=None) -> dict:
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise InputError(f"int-quantized: codes must be int8, got {q.dtype}")
    out = {"weight": q, "weight_scale": np.asarray(scale)}
    if zero_point is not None:
        out["weight_zero_point"] = np.asarray(zero_point).astype(np.int8)
    return out


def int_quantized_specs(N: int, K: int, scale_shape, scale_dtype, symmetric: bool) -> dict:
    """The (dtype, shape) of each tensor `int_quantized` writes: int8 codes (N, K), the scale as
    given, an int8 zero point of the scale's shape when asymmetric."""
    out = {"weight": (np.dtype(np.int8), (N, K)), "weight_scale": (np.dtype(scale_dtype), tuple(scale_shape))}
    if not symmetric:
        out["weight_zero_point"] = (np.dtype(np.int8), tuple(scale_shape))
    return out


def float_quantized_specs(N: int, K: int, scale_shape) -> dict:
    """The (dtype, shape) of each tensor `float_quantized` writes: E4M3 codes (N, K), a float32
    scale of the given shape."""
    return {"weight": (np.dtype(ml_dtypes.float8_e4m3fn), (N, K)),
            "weight_scale": (np.dtype(np.float32), tuple(scale_shape))}


def _blocks(K: int, block: int, who: str) -> int:
    if K % block:
        raise InputError(f"{who}: in features ({K}) must be a multiple of its block of {block}")
    return K // block


def nvfp4_pack_quantized_specs(N: int, K: int) -> dict:
    """The (dtype, shape) of each tensor `nvfp4_pack_quantized` writes, from the table above:
    two codes a byte, one E4M3 scale a block of 16, one global scale."""
    from ..mx import NVFP4_BLOCK
    nb = _blocks(K, NVFP4_BLOCK, "nvfp4-pack-quantized")
    return {"weight_packed": (np.dtype(np.uint8), (N, K // 2)),
            "weight_scale": (np.dtype(ml_dtypes.float8_e4m3fn), (N, nb)),
            "weight_global_scale": (np.dtype(np.float32), (1,))}


def mx_specs(fmt: str, N: int, K: int) -> dict:
    """The (dtype, shape) of each tensor `mxfp4_pack_quantized`, `mxfp6_pack_quantized` or
    `mxfp8_quantized` (format `fmt`) writes, from the table above: the elements (two FP4 codes a
    byte, four FP6 codes in three bytes, one FP8 code a byte) and one E8M0 byte a block of 32."""
    from ..mx import MX_BLOCK
    scale = (np.dtype(np.uint8), (N, _blocks(K, MX_BLOCK, fmt)))
    if fmt == "mxfp4-pack-quantized":
        return {"weight_packed": (np.dtype(np.uint8), (N, K // 2)), "weight_scale": scale}
    if fmt == "mxfp6-pack-quantized":
        return {"weight_packed": (np.dtype(np.uint8), (N, 3 * K // 4)), "weight_scale": scale}
    if fmt == "mxfp8-quantized":
        return {"weight": (np.dtype(ml_dtypes.float8_e4m3fn), (N, K)), "weight_scale": scale}
    raise FormatError(f"compressed-tensors: {fmt!r} is not an MX format")


def float_quantized(q_e4m3: np.ndarray, scale: np.ndarray) -> dict:
    q = np.asarray(q_e4m3)
    if q.dtype != np.dtype(ml_dtypes.float8_e4m3fn):
        raise InputError(f"float-quantized: weight must be float8_e4m3fn, got {q.dtype}")
    return {"weight": q, "weight_scale": np.asarray(scale, np.float32)}


def nvfp4_pack_quantized(packed: np.ndarray, scale_e4m3_codes: np.ndarray, global_scale) -> dict:
    """refquant.mx.quantize_nvfp4's output, named: scales as float8_e4m3fn, global scale (1,)."""
    return {"weight_packed": np.asarray(packed, np.uint8),
            "weight_scale": np.asarray(scale_e4m3_codes, np.uint8).view(ml_dtypes.float8_e4m3fn),
            "weight_global_scale": np.array([global_scale], np.float32)}


def mxfp4_pack_quantized(packed: np.ndarray, scale_e8m0: np.ndarray) -> dict:
    return {"weight_packed": np.asarray(packed, np.uint8), "weight_scale": np.asarray(scale_e8m0, np.uint8)}


def mxfp6_pack_quantized(codes_e2m3: np.ndarray, scale_e8m0: np.ndarray) -> dict:
    """E2M3 codes uint8 (N, K), K a multiple of 4, -> weight_packed (N, 3K/4) as compressed-tensors'
    pack_fp6_to_uint8: word = c0 | c1 << 6 | c2 << 12 | c3 << 18, its bytes low first."""
    c = np.asarray(codes_e2m3, np.uint8)
    if c.ndim != 2 or c.shape[1] % 4 or (c > 0x3F).any():
        raise InputError(f"mxfp6-pack-quantized: codes must be a (N, K) matrix of 6-bit codes, K a multiple of 4, "
                         f"got shape {c.shape}")
    q = c.reshape(c.shape[0], -1, 4).astype(np.uint32)
    word = q[..., 0] | q[..., 1] << 6 | q[..., 2] << 12 | q[..., 3] << 18
    packed = np.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], axis=-1).astype(np.uint8)
    return {"weight_packed": packed.reshape(c.shape[0], -1), "weight_scale": np.asarray(scale_e8m0, np.uint8)}


def unpack_mxfp6(packed: np.ndarray) -> np.ndarray:
    """weight_packed (N, 3K/4) -> E2M3 codes uint8 (N, K)."""
    b = np.asarray(packed, np.uint8)
    if b.ndim != 2 or b.shape[1] % 3:
        raise InputError(f"mxfp6-pack-quantized: weight_packed must be (N, 3K/4), got shape {b.shape}")
    w = b.reshape(b.shape[0], -1, 3).astype(np.uint32)
    word = w[..., 0] | w[..., 1] << 8 | w[..., 2] << 16
    return np.stack([(word >> sh) & 0x3F for sh in (0, 6, 12, 18)], axis=-1).astype(np.uint8).reshape(b.shape[0], -1)


def mxfp8_quantized(codes_e4m3: np.ndarray, scale_e8m0: np.ndarray) -> dict:
    return {"weight": np.asarray(codes_e4m3, np.uint8).view(ml_dtypes.float8_e4m3fn),
            "weight_scale": np.asarray(scale_e8m0, np.uint8)}


def preset_config(name: str, targets=("Linear",), ignore=("lm_head",)) -> dict:
    """config.json's "quantization_config" for preset `name` covering `targets` but `ignore`."""
    fmt, w, a = preset(name)
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": list(targets), "weights": w, "input_activations": a,
                                          "output_activations": None, "format": fmt}},
            "ignore": list(ignore), "kv_cache_scheme": None}


def quantization_config(fmt: str, bits: int = 4, group_size=None, symmetric: bool = True,
                        targets=("Linear",), ignore=("lm_head",)) -> dict:
    """config.json's "quantization_config" for one scheme covering every Linear but `ignore`."""
    if fmt not in FORMATS:
        raise FormatError(f"compressed-tensors format must be one of {FORMATS}, got {fmt!r}")
    if fmt in ("pack-quantized", "int-quantized"):
        w = {"num_bits": bits, "type": "int", "symmetric": symmetric,
             "strategy": "group" if group_size else "channel", "group_size": group_size,
             "dynamic": False, "observer": "minmax"}
    elif fmt == "float-quantized":
        w = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel",
             "group_size": None, "dynamic": False, "observer": "minmax"}
    elif fmt == "nvfp4-pack-quantized":
        w = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
             "group_size": 16, "dynamic": False, "observer": "minmax"}
    else:
        w = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "group",
             "group_size": 32, "dynamic": False, "observer": "minmax", "scale_dtype": "torch.uint8",
             "zp_dtype": None}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": list(targets), "weights": w,
                                          "input_activations": None, "output_activations": None,
                                          "format": fmt}},
            "ignore": list(ignore), "kv_cache_scheme": None}


def weight_block(w: dict, shape) -> tuple:
    """The block one weight scale covers, from the weight's quantization args."""
    st = w.get("strategy")
    if st == "tensor":
        return tuple(shape)
    if st == "channel":
        return (1, shape[1])
    if st == "block":
        return tuple(w["block_structure"])
    if st in ("group", "tensor_group"):
        return (1, int(w["group_size"]))
    raise FormatError(f"compressed-tensors: weight strategy {st!r} is not one refquant reads")


def dequantize(t: dict, fmt: str, weights: dict, who: str = "compressed-tensors") -> np.ndarray:
    """One linear's tensors (local names: weight_packed, weight_scale, ...) in format `fmt` with
    weight args `weights` (the config group's) -> the weight, as compressed-tensors' compressor
    decompresses it on CPU: in the scale's dtype (int, FP8), bfloat16 (NVFP4: the float32
    product cast; MX: its E8M0 scales decompress to bfloat16)."""
    from .. import fp8_scaling, mx
    try:
        if fmt == "pack-quantized":
            return dequantize_pack_quantized(t, int(weights["num_bits"]))
        if fmt in ("int-quantized", "naive-quantized", "float-quantized"):
            q = t["weight"]
            s = np.asarray(t["weight_scale"])
            block = weight_block(weights, q.shape)
            if q.dtype == np.dtype(ml_dtypes.float8_e4m3fn):
                return fp8_scaling.dequantize(q, s.reshape(affine.scale_shape(q.shape, block)), block)
            z = t.get("weight_zero_point")
            return affine.dequantize_compressed_tensors(q, s.reshape(affine.scale_shape(q.shape, block)), z, block)
        if fmt == "nvfp4-pack-quantized":
            # 0.20.1 unpacks to bfloat16 and dequantizes in float32 (scale / global scale
            # promotes), then casts the product to bfloat16
            return mx.dequantize_nvfp4(t["weight_packed"], np.asarray(t["weight_scale"]).view(np.uint8),
                                       np.asarray(t["weight_global_scale"], np.float32).ravel()[0]
                                       ).astype(ml_dtypes.bfloat16)
        if fmt in ("mxfp4-pack-quantized", "mxfp6-pack-quantized", "mxfp8-quantized"):
            if fmt == "mxfp4-pack-quantized":
                w = mx.dequantize_mx(t["weight_scale"], t["weight_packed"], "MXFP4_E2M1")
            elif fmt == "mxfp6-pack-quantized":
                w = mx.dequantize_mx(t["weight_scale"], unpack_mxfp6(t["weight_packed"]), "MXFP6_E2M3")
            else:
                w = mx.dequantize_mx(t["weight_scale"], np.asarray(t["weight"]).view(np.uint8), "MXFP8_E4M3")
            return w.astype(ml_dtypes.bfloat16)    # exact products, one rounding to bfloat16
    except KeyError as e:
        raise InputError(f"{who}: format {fmt} needs tensor {e.args[0]!r}, which is missing") from None
    raise FormatError(f"{who}: compressed-tensors format {fmt!r} is not one refquant reads (known: {', '.join(FORMATS)})")


def transform_config(groups: dict) -> dict:
    """quantization_config's "transform_config" (compressed-tensors' TransformConfig, as
    ModelCompressor.from_compression_config reads it): groups {name: (type, [(targets, location,
    inverse)], head_dim)}; randomize off, no gradients, online precision float32."""
    out = {}
    for name, (typ, apply, head_dim) in groups.items():
        if typ not in ("hadamard", "random-hadamard"):
            raise FormatError(f"compressed-tensors transform type must be hadamard or random-hadamard, not {typ!r}")
        out[name] = {"type": typ,
                     "apply": [{"targets": list(t), "location": loc, "inverse": bool(inv), "ignore": []}
                               for t, loc, inv in apply],
                     "randomize": False, "requires_grad": False, "head_dim": head_dim,
                     "precision": "torch.float32"}
    return {"config_groups": out}
