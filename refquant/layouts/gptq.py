"""GPTQ checkpoints (AutoGPTQ / GPTQModel / transformers' "gptq" quant_method), per linear `<p>`:

    <p>.qweight  int32 (K·b/32, N)   codes packed along K (the input axis), dense bit stream:
                                     element e of each 32-element chunk at stream bit e·b
    <p>.qzeros   int32 (G, N·b/32)   zero points packed along N the same way
                                     v1: zero − 1 (mod 2^b);  v2 (GPTQModel): the zero itself
    <p>.scales   float16 (G, N)
    <p>.g_idx    int32 (K,)          the group of input column k

    4-bit, one int32 of qweight:  bits 31..28 27..24 ... 7..4 3..0
                                        k+7    k+6   ...  k+1  k      (k = 8·row)
    3-bit: 32 codes fill 3 words; codes 10 and 21 straddle word boundaries (refquant.packing).

A loader computes  W[n, k] = scales[g_idx[k], n] · (code[k, n] − zero[g_idx[k], n])  with a v1
zero read back as ((stored + 1) mod 2^b). v1 writers differ where the zero is 0: AutoGPTQ ORs
the packed −1 into the word (corrupting its neighbours), GPTQModel subtracts 0x11111111 per word
(borrowing from the neighbour); refquant stores (0 − 1) mod 2^b, which every v1 reader reads back
as 0. See spec/layouts/gptq.md.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError, InputError
from ..packing import pack_bits, unpack_bits

BITS = (2, 3, 4, 8)
VERSIONS = ("v1", "v2")


def _check(bits, version, who):
    if bits not in BITS:
        raise FormatError(f"{who}: GPTQ checkpoints hold {BITS}-bit codes, not {bits!r}")
    if version not in VERSIONS:
        raise FormatError(f"{who}: version must be 'v1' or 'v2', got {version!r}")


def _check_words(N, K, bits, who):
    if (K * bits) % 32 or (N * bits) % 32:
        raise InputError(f"{who}: in ({K}) and out ({N}) features times {bits} bits must be multiples of 32")


def pack_specs(N: int, K: int, G: int, bits: int, version: str = "v1") -> dict:
    """The (dtype, shape) of each tensor `pack` writes for a layer of N outputs, K inputs and G
    groups, from the layout's table above (nothing packed): qweight K·b/32 words a column,
    qzeros N·b/32 words a group, float16 scales, g_idx one per input column."""
    _check(bits, version, "gptq.pack")
    _check_words(N, K, bits, "gptq.pack")
    return {"qweight": (np.dtype(np.int32), (K * bits // 32, N)),
            "qzeros": (np.dtype(np.int32), (G, N * bits // 32)),
            "scales": (np.dtype(np.float16), (G, N)),
            "g_idx": (np.dtype(np.int32), (K,))}


def pack(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, g_idx: np.ndarray, bits: int,
         version: str = "v1") -> dict:
    """codes uint8 (N, K), scales (N, G), zeros (N, G) real zero points, g_idx (K,) -> tensors."""
    _check(bits, version, "gptq.pack")
    codes = np.asarray(codes)
    N, K = codes.shape
    _check_words(N, K, bits, "gptq.pack")
    scales = np.asarray(scales)
    z = np.rint(np.asarray(zeros, np.float64)).astype(np.int64)
    if scales.shape != z.shape or scales.shape[0] != N:
        raise InputError(f"gptq.pack: scales {scales.shape} and zeros {z.shape} must both be ({N}, G)")
    g_idx = np.asarray(g_idx, np.int32)
    if g_idx.shape != (K,) or g_idx.min() < 0 or g_idx.max() >= scales.shape[1]:
        raise InputError(f"gptq.pack: g_idx must have shape ({K},) with groups in [0, {scales.shape[1]})")
    if z.min() < 0 or z.max() >= 2**bits:
        raise InputError(f"gptq.pack: zero points must lie in [0, {2**bits - 1}]")
    stored = (z - 1) % (2**bits) if version == "v1" else z
    return {"qweight": pack_bits(codes.T, bits, axis=0),
            "qzeros": pack_bits(stored.T.astype(np.uint8), bits, axis=1),
            "scales": np.asarray(scales, np.float32).T.astype(np.float16),
            "g_idx": g_idx}


def unpack(t: dict, bits: int, version: str = "v1"):
    """tensors -> (codes uint8 (N, K), scales float16 (N, G), zeros int (N, G), g_idx)."""
    _check(bits, version, "gptq.unpack")
    qweight, qzeros, scales = t["qweight"], t["qzeros"], t["scales"]
    G, N = scales.shape
    K = qweight.shape[0] * 32 // bits
    codes = unpack_bits(qweight, bits, K, axis=0).T
    z = unpack_bits(qzeros, bits, N, axis=1).T.astype(np.int16)
    if version == "v1":
        z = (z + 1) % (2**bits)
    g_idx = t.get("g_idx")
    if g_idx is None:
        g_idx = (np.arange(K) // (K // G)).astype(np.int32)
    return codes, scales.T, z, np.asarray(g_idx, np.int32)


def dequantize(t: dict, bits: int, version: str = "v1") -> np.ndarray:
    """W (N, K) float16: scale · (code − zero), the product rounded once to float16."""
    codes, scales, z, g_idx = unpack(t, bits, version)
    d = codes.astype(np.int32) - z[:, g_idx].astype(np.int32)
    return (scales[:, g_idx].astype(np.float32) * d.astype(np.float32)).astype(np.float16)


def quantization_config(bits: int, group_size: int, sym: bool, desc_act: bool, version: str = "v1") -> dict:
    """config.json's "quantization_config" as transformers' GptqHfQuantizer reads it."""
    _check(bits, version, "gptq.quantization_config")
    cfg = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act,
           "sym": sym, "damp_percent": 0.01, "true_sequential": True, "static_groups": False}
    if version == "v2":
        cfg["checkpoint_format"] = "gptq_v2"
    else:
        cfg["checkpoint_format"] = "gptq"
    return cfg


# optimum.gptq.constants.BLOCK_PATTERNS (optimum 2.3.0, which transformers' GPTQ loader calls): with
# no block_name_to_quantize the loader takes the first of these that a module name starts with and
# turns every linear layer under it into a quantized one
BLOCK_PATTERNS = ("transformer.h", "model.decoder.layers", "gpt_neox.layers", "model.layers",
                  "model.language_model.layers", "h", "decoder.layers", "layers")


def _router(module: str, names) -> bool:
    """A mixture of experts' router (`X.gate` beside `X.experts.E`): a router class, not a Linear,
    in transformers 5 (MixtralTopKRouter), which the loader never converts."""
    head, _, last = module.rpartition(".")
    return last == "gate" and any(n.startswith(f"{head}.experts.") for n in names)


def block_fields(quantized, names, unconverted=()) -> dict:
    """The quantization_config fields that make the loader convert exactly the quantized modules
    `quantized` of a checkpoint whose tensors are `names` (`unconverted`: the linear layers left
    as they are). None where its block patterns find a block holding them all and no other
    linear layer (routers aside): Llama, Gemma, Qwen, Mixtral under model.layers. Otherwise
    (BERT: encoder.layer.N and pooler.dense; a layer left out by --ignore inside the block) the
    block as block_name_to_quantize (the modules' common dotted prefix where the patterns miss
    them; the loader matches it with str.startswith, so "" is the whole model) and the modules'
    full names as modules_in_block_to_quantize (matched with str.endswith: a full name is that
    module alone)."""
    quantized = sorted(quantized)
    if not quantized:
        return {}
    names = list(names)
    block = next((p for p in BLOCK_PATTERNS if any(n.startswith(p) for n in names)), None)
    if block is not None and all(m.startswith(block) for m in quantized):
        left = [m for m in unconverted if m.startswith(block) and not _router(m, names)]
        if not left:
            return {}
        return {"block_name_to_quantize": block, "modules_in_block_to_quantize": [quantized]}
    parts = [m.split(".") for m in quantized]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if len(common) == len(parts[0]):      # one module: its parent is the block
        common = common[:-1]
    return {"block_name_to_quantize": ".".join(common), "modules_in_block_to_quantize": [quantized]}
