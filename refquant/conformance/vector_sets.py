"""Golden-vector sets beyond the registry's row formats: every OCP MX format under each scale
rule refquant names, bitsandbytes' double quantization and 8-bit dynamic map, and NVFP4 as
compressed-tensors, torchao (two levels) and NVIDIA ModelOpt compute it (torchao's one-level NVFP4 is the
registry's NVFP4_TORCHAO).

None of these is a registry format (a scale rule is a parameter of `refquant.mx.quantize_mx`,
double quantization a flag of `refquant.bnb.quantize_4bit`, and so on), so each is given here a
row view of its own: a fixed number of float32 values (`block_size`) quantized on their own, as
one tensor, to a fixed number of bytes (`type_size`), laid out as LAYOUTS says. The vectors
(`refquant vectors`, `refquant verify-vectors`) read these records as they read the registry's.

A vector *set* is one folder of spec/vectors: formats that share their inputs (the MX scale
rules of one element format) are one set, named after its first member.
"""
from __future__ import annotations

import numpy as np

from .. import mx
from ..bnb import blockwise as bw
from ..errors import InputError
from ..format import Format
from ..registry import get_format

F32 = np.float32

# The scale rules of refquant.mx, each as its implementation computes it (torchao's FLOOR, CEIL,
# EVEN, RCEIL; the OCP rule is torchao's FLOOR wherever the scale is above 2^-127), and the
# "compressed-tensors" rule for the three element formats compressed-tensors has (its MXFP4,
# MXFP6 and MXFP8 presets: E2M1, E2M3, E4M3).
MX_RULES = ("ocp", "floor", "ceil", "even", "rceil")
CT_ELEMENTS = ("E2M1", "E2M3", "E4M3FN")

# One row view per set member: name -> what each block's bytes hold.
LAYOUTS = {
    "MX": "| scale: E8M0 | 32 elements: one code a byte (FP8, FP6, INT8) or two a byte (FP4: element "
          "2i in the low nibble of byte i) |",
    "BNB_NF4.nested": "| offset: float32 | absmax2: float32 | absmax codes: 2 x u8 | 64 bytes: element 2k "
                      "in the high nibble of byte k |  (128 values, 2 blocks of 64, one tensor)",
    "BNB_FP4.nested": "as BNB_NF4.nested",
    "BNB_DYNAMIC8": "| absmax: float32 | 64 codes: u8 index into the dynamic map |",
    "NVFP4_CT": "| global scale: float32 | 4 scales: E4M3 | 32 bytes: element 2i in the low nibble of "
                "byte i |  (64 values, one tensor)",
    "NVFP4_TORCHAO_2L": "| per-tensor scale: float32 | 4 scales: E4M3 | 32 bytes, as NVFP4_CT |  "
                        "(64 values, one tensor)",
    "NVFP4_MODELOPT": "| weight_scale_2: float32 | 4 scales: E4M3 | 32 bytes, as NVFP4_CT |  "
                      "(64 values, one tensor)",
}


def _f32_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v, "<f4")).view(np.uint8).reshape(-1, 4)


def _read_f32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f4").reshape(-1).astype(F32)


# ------------------------------------------------------------------------------------- MX

def _mx(name: str, rule: str) -> Format:
    f = mx.get_mx_format(name)
    per = f.bytes_per_block - 1

    def quantize_rows(x, imatrix=None):
        scales, data = mx.quantize_mx(np.ascontiguousarray(x, F32), f, rule)
        nrows, nblocks = scales.shape
        return np.concatenate([scales.reshape(-1, 1), data.reshape(-1, per)], axis=1).reshape(nrows, -1)

    def dequantize_rows(data):
        nrows = data.shape[0]
        blocks = np.ascontiguousarray(data).reshape(-1, f.bytes_per_block)
        return mx.dequantize_mx(blocks[:, 0].reshape(nrows, -1), np.ascontiguousarray(blocks[:, 1:]).reshape(nrows, -1), f)

    label = f.name if rule == mx.DEFAULT_SCALE_RULE else f"{f.name}.{rule}"
    return Format(label, "mx", mx.MX_BLOCK, f.bytes_per_block, quantize_rows, dequantize_rows, spec_page=f.spec_page)


# ------------------------------------------------------------------------------- bitsandbytes

def _bnb_nested(quant_type: str) -> Format:
    B, nb = 64, 2
    size = 4 + 4 + nb + B * nb // 2

    def quantize_rows(x, imatrix=None):
        out = []
        for row in np.ascontiguousarray(x, F32).reshape(-1, B * nb):     # each 128 values a tensor
            packed, st = bw.quantize_4bit(row, B, quant_type, compress_statistics=True)
            out.append(np.concatenate([_f32_bytes([st.offset]).reshape(-1), _f32_bytes(st.state2.absmax).reshape(-1),
                                       np.asarray(st.absmax, np.uint8).reshape(-1), packed.reshape(-1)]))
        return np.stack(out).reshape(x.shape[0], -1)

    def dequantize_rows(data):
        out = []
        for blk in np.ascontiguousarray(data, np.uint8).reshape(-1, size):
            offset, absmax2 = _read_f32(blk[0:4])[0], _read_f32(blk[4:8])
            st2 = bw.QuantState(absmax2, (nb,), bw.create_dynamic_map(), bw.NESTED_BLOCKSIZE, "float32")
            st = bw.QuantState(blk[8:8 + nb].copy(), (B * nb,), bw.get_4bit_type(quant_type), B, "float32", quant_type,
                               offset=F32(offset), state2=st2)
            out.append(bw.dequantize_4bit(blk[8 + nb:].reshape(-1, 1), st))
        return np.stack(out).reshape(data.shape[0], -1)

    return Format(f"BNB_{quant_type.upper()}.nested", "bnb", B * nb, size, quantize_rows, dequantize_rows,
                  spec_page="bnb/double-quant.md")


def _bnb_dynamic8() -> Format:
    B = 64

    def quantize_rows(x, imatrix=None):
        nrows = x.shape[0]
        q, st = bw.quantize_blockwise(np.ascontiguousarray(x, F32).reshape(-1), blocksize=B)
        return np.concatenate([_f32_bytes(st.absmax), q.reshape(-1, B)], axis=1).reshape(nrows, -1)

    def dequantize_rows(data):
        nrows = data.shape[0]
        blk = np.ascontiguousarray(data, np.uint8).reshape(-1, 4 + B)
        absmax = _read_f32(blk[:, :4])
        q = np.ascontiguousarray(blk[:, 4:]).reshape(-1)
        st = bw.QuantState(absmax, (q.size,), bw.create_dynamic_map(), B, "float32")
        return bw.dequantize_blockwise(q, st).reshape(nrows, -1)

    return Format("BNB_DYNAMIC8", "bnb", B, 4 + B, quantize_rows, dequantize_rows, spec_page="bnb/dynamic8.md")


# -------------------------------------------------------------------------------------- NVFP4

def _nvfp4_tensor(name: str, quantize_one, dequantize_one) -> Format:
    """64 values a tensor: | float32 tensor scale | 4 E4M3 scales | 32 packed bytes |."""
    def quantize_rows(x, imatrix=None):
        out = []
        for t in np.ascontiguousarray(x, F32).reshape(-1, 64):
            packed, scales, g = quantize_one(t[None, :])
            out.append(np.concatenate([_f32_bytes([g]).reshape(-1), scales.reshape(-1), packed.reshape(-1)]))
        return np.stack(out).reshape(x.shape[0], -1)

    def dequantize_rows(data):
        blk = np.ascontiguousarray(data, np.uint8).reshape(-1, 40)
        out = [dequantize_one(b[8:][None, :].copy(), b[4:8][None, :].copy(), _read_f32(b[:4])[0]) for b in blk]
        return np.stack(out).reshape(data.shape[0], -1)

    return Format(name, "nvfp4", 64, 40, quantize_rows, dequantize_rows, spec_page="mx/nvfp4.md")


def _modelopt_dequantize(packed, scales, wsf2):
    from ..layouts.fp8_block import E4M3, dequantize_modelopt_nvfp4
    return dequantize_modelopt_nvfp4({"weight": packed, "weight_scale": scales.view(E4M3), "weight_scale_2": wsf2})


def _torchao_2l(t):
    p = mx.nvfp4_per_tensor_scale_torchao(np.max(np.abs(t)))
    if not p > 0:
        raise InputError("NVFP4 (torchao, two levels): the tensor's amax is 0, so its per-tensor scale amax / 2688 "
                         "is 0 and torchao's 1 / p is Inf")
    packed, scales = mx.quantize_nvfp4_torchao(t, p)
    return packed, scales, p


# --------------------------------------------------------------------------------- the sets

def _build_sets() -> dict[str, list[Format]]:
    sets = {}
    for name in mx.MX_FORMATS:
        element = mx.MX_FORMATS[name].element
        rules = MX_RULES if element is not None else ("ocp",)   # torchao has no MXINT8
        rules += ("compressed-tensors",) if element in CT_ELEMENTS else ()
        sets[name] = [_mx(name, r) for r in rules]
    for name in ("BNB_NF4", "BNB_FP4"):          # the registry's row view: | absmax f32 | 32 bytes |
        sets[name] = [get_format(name)]
    sets["BNB_NF4.nested"] = [_bnb_nested("nf4")]
    sets["BNB_FP4.nested"] = [_bnb_nested("fp4")]
    sets["BNB_DYNAMIC8"] = [_bnb_dynamic8()]
    sets["NVFP4_CT"] = [_nvfp4_tensor("NVFP4_CT", mx.quantize_nvfp4, mx.dequantize_nvfp4)]
    sets["NVFP4_TORCHAO_2L"] = [_nvfp4_tensor("NVFP4_TORCHAO_2L", _torchao_2l, mx.dequantize_nvfp4_torchao)]
    sets["NVFP4_MODELOPT"] = [_nvfp4_tensor("NVFP4_MODELOPT", mx.quantize_nvfp4_modelopt, _modelopt_dequantize)]
    return sets


SETS: dict[str, list[Format]] = _build_sets()
FORMATS: dict[str, Format] = {f.name.upper(): f for members in SETS.values() for f in members}


def member_key(fmt: Format, base: Format) -> str:
    """The suffix of a member's arrays in its set's folder: '' for the first, '.rule' after."""
    return "" if fmt.name == base.name else fmt.name[len(base.name):]


def mx_edge_blocks(fmt: Format) -> np.ndarray:
    """Blocks of 32 at the MX scale rules' boundaries: amax at the element's largest value times
    2^e, one float32 ulp either side, odd multiples (element ties); the scale 2^-127 region
    (subnormal amax); FLT_MAX; every power of two in one block."""
    f = mx.get_mx_format(fmt.name.split(".")[0])
    rows = [np.full(32, 1e-45), np.linspace(-1e-39, 1e-39, 32), np.linspace(-2.0 ** -119, 2.0 ** -119, 32),
            np.linspace(-2.0 ** -116, 2.0 ** -117, 32), np.full(32, 3.4028235e38), np.linspace(-3.4e38, 3.4e38, 32),
            np.ldexp(1.0, np.arange(-16, 16))]
    for e in (-127, -120, -3, 0, 5, 60):
        v = f.max_elem * 2.0 ** e
        r = np.arange(-16, 16) * (v / 16)
        r[0] = v
        r32 = np.float32(r)
        rows += [r32, np.nextafter(r32, np.float32(np.inf)), np.nextafter(r32, np.float32(0)),
                 np.arange(-31, 33, 2) * (v / 64)]
    x = np.array(rows, dtype=np.float64).astype(F32)
    return x[np.isfinite(x).all(axis=1)]


def extra_dequantize_blocks(fmt: Format) -> np.ndarray | None:
    """Blocks decoded beyond those the quantize cases encode: for MX every scale byte (0xFF, NaN,
    included) over a block of codes, and every element code at scale 2^0."""
    if fmt.family == "mx":
        f = mx.get_mx_format(fmt.name.split(".")[0])
        ncodes = 256 if f.element is None else (1 << {"E4M3FN": 8, "E5M2": 8, "E2M3": 6, "E3M2": 6, "E2M1": 4}[f.element])
        codes = np.arange(max(ncodes, 32)) % ncodes
        blocks = [np.concatenate([[127], c]) for c in codes.reshape(-1, 32)]
        base = codes[:32]
        blocks += [np.concatenate([[s], np.roll(base, s)]) for s in range(256)]
        out = np.array(blocks, np.uint8)
        if f.packed:
            out = np.concatenate([out[:, :1], mx.pack_fp4(out[:, 1:])], axis=1)
        return out
    return None
