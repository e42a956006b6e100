"""bitsandbytes' blockwise quantization: 4-bit NF4/FP4 and the dynamic 8-bit map, with the
double quantization of the 4-bit scales (bitsandbytes.functional quantize_4bit,
dequantize_4bit, quantize_blockwise, dequantize_blockwise; CPU kernels).

A tensor of any shape is flattened in C order and cut into blocks of `blocksize` values (the
last block may be shorter). Each block keeps its absolute maximum `absmax` (float32); each value
is divided by it and replaced by the index of a code-table entry.

    4-bit:  packed uint8, shape ((n + 1) // 2, 1); byte k = code[2k] << 4 | code[2k + 1]
            (the first element in the high nibble), a zero nibble pair padding an odd n
    8-bit:  uint8 codes, the input's shape

Which entry a value gets depends on the kernel, and bitsandbytes' CPU build has two:

    "nearest"  the PyTorch kernel (quantize_4bit on every CPU; quantize_blockwise when the
               native library is missing): the nearest entry, a tie going to the lower one
    "cpu-lut"  the native CPU kernel of quantize_blockwise: the scaled value is first rounded
               to one of 65536 levels on [-1, 1], then looked up in a table built from the
               entries' midpoints
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import ml_dtypes
import numpy as np

from ..errors import FormatError, InputError
from ..numerics import F32, c_float_to_int32, fma_f32, fp32_to_bf16_bits, fp32_to_fp16_bits
from .codebooks import create_dynamic_map, get_4bit_type
from .torch_cpu import mean_f32

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BF16}
BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
NESTED_BLOCKSIZE = 256        # quantize_4bit(compress_statistics=True) quantizes absmax in 256s
ABSMAX_FLOOR = F32(1e-38)     # absmax.clamp(min=1e-38) before the reciprocal (a float32 subnormal)
LUT_LEVELS = 65536            # the native 8-bit kernel's levels on [-1, 1]


@dataclass
class QuantState:
    """bitsandbytes.functional.QuantState, in NumPy.

    absmax   float32 (nblocks,), or uint8 codes when nested (then `state2` decodes them)
    shape    the original tensor's shape
    code     float32 table: 16 entries (4-bit) or 256 (8-bit)
    dtype    "float32" | "float16" | "bfloat16": the dtype dequantization returns
    offset   float32, nested only: the mean subtracted from absmax before quantizing it
    state2   nested only: the 8-bit state of the absmax codes (blocksize 256, dynamic map)
    """
    absmax: np.ndarray
    shape: tuple
    code: np.ndarray
    blocksize: int
    dtype: str
    quant_type: Optional[str] = None
    offset: Optional[np.float32] = None
    state2: Optional["QuantState"] = field(default=None)

    @property
    def nested(self) -> bool:
        return self.state2 is not None


# --------------------------------------------------------------------------- inputs

def dtype_name(dt) -> str:
    dt = np.dtype(dt)
    for name, d in DTYPES.items():
        if dt == d:
            return name
    raise InputError(f"bitsandbytes quantizes float32, float16 or bfloat16 (ml_dtypes) arrays, got {dt}")


def _floats(x, what: str = "A") -> tuple[np.ndarray, str]:
    """x as a flat float32 vector (exact: fp16 and bf16 widen exactly) and its dtype name."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what} must be a numpy.ndarray, got {type(x).__name__}")
    name = dtype_name(x.dtype)
    if x.size == 0:
        raise InputError(f"{what} is empty")
    flat = np.ascontiguousarray(x).reshape(-1).astype(F32)
    bad = ~np.isfinite(flat)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{what} has a non-finite value {flat[i]!r} at flat index {i}; "
                         f"bitsandbytes' result for NaN/Inf is undefined, so refquant refuses it")
    return flat, name


def _check_blocksize(blocksize, allowed=None):
    if not isinstance(blocksize, (int, np.integer)) or isinstance(blocksize, bool) or blocksize <= 0:
        raise InputError(f"blocksize must be a positive integer, got {blocksize!r}")
    if allowed is not None and blocksize not in allowed:
        raise InputError(f"invalid blocksize {blocksize}; bitsandbytes accepts {allowed}")
    return int(blocksize)


def _blocks(n: int, blocksize: int) -> np.ndarray:
    """Block index of each of n flat elements."""
    return np.arange(n) // blocksize


def _absmax(a: np.ndarray, blocksize: int) -> np.ndarray:
    """max |a| over each block (the last one possibly short): exact in any order."""
    n = a.shape[0]
    nb = -(-n // blocksize)
    pad = np.zeros(nb * blocksize, F32)
    pad[:n] = np.abs(a)
    return pad.reshape(nb, blocksize).max(axis=1).astype(F32)


def _scale_nearest(a: np.ndarray, absmax: np.ndarray, blocksize: int) -> np.ndarray:
    """The PyTorch kernels' scaling: full blocks a * (1 / max(absmax, 1e-38)); the short last
    block a / max(absmax, 1e-38) (a division, not a reciprocal). Clamped to [-1, 1]."""
    n = a.shape[0]
    full = n - n % blocksize
    am = np.maximum(absmax, ABSMAX_FLOOR)
    b = _blocks(n, blocksize)
    with np.errstate(over="ignore"):
        recip = (F32(1) / am).astype(F32)
        scaled = np.empty(n, F32)
        scaled[:full] = a[:full] * recip[b[:full]]
        if full < n:
            scaled[full:] = a[full:] / am[-1]
    return np.clip(scaled, F32(-1), F32(1)).astype(F32)


def _clamp_short_block(absmax: np.ndarray, n: int, blocksize: int) -> np.ndarray:
    """The PyTorch kernels store a short last block's absmax already clamped to >= 1e-38
    (full blocks keep theirs unclamped)."""
    if n % blocksize:
        absmax = absmax.copy()
        absmax[-1] = max(absmax[-1], ABSMAX_FLOOR)
    return absmax


def _to_dtype(v: np.ndarray, dtype: str, bf16_daz: bool = False) -> np.ndarray:
    """float32 -> the output dtype, rounding to nearest even (F16C / the bf16 bit trick).

    bf16_daz: the AVX512-BF16 instruction (vcvtneps2bf16) treats float32 subnormal inputs as
    zero, so they come out as signed zeros.
    """
    if dtype == "float32":
        return v.astype(F32)
    if dtype == "float16":
        return fp32_to_fp16_bits(v).view(np.float16)
    if dtype == "bfloat16":
        if bf16_daz:
            sub = (np.abs(v) < F32(np.finfo(F32).tiny))
            v = np.where(sub, np.copysign(F32(0), v), v).astype(F32)
        return fp32_to_bf16_bits(v).view(BF16)
    raise InputError(f"output dtype must be float32, float16 or bfloat16, got {dtype!r}")


# --------------------------------------------------------------------------- code lookup

def _code_order(code: np.ndarray) -> np.ndarray:
    """torch.argsort(code): ascending, equal values (FP4's +0 and -0) kept in index order."""
    return np.argsort(code, kind="stable")


def lookup_nearest(scaled: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The index of the nearest code entry: bucketize against the midpoints of the sorted
    entries, (c[i] + c[i+1]) / 2 in float32, counting the midpoints strictly below the value,
    so a value exactly on a midpoint takes the lower entry. Unsorted tables (FP4) are sorted
    first and the result mapped back through the sort order."""
    order = _code_order(code)
    s = code[order]
    mid = ((s[:-1] + s[1:]) / F32(2)).astype(F32)
    pos = np.searchsorted(mid, scaled, side="left")     # number of midpoints < value
    return order[pos].astype(np.uint8)


def build_quantize_lut(code: np.ndarray) -> np.ndarray:
    """The native 8-bit kernel's table (build_quantize_lut): level i of 65536 stands for
    v_i = -1 + (2 i) / 65535 (float32) and maps to the number of entry midpoints
    0.5 * (c[j] + c[j+1]) strictly below v_i."""
    if np.any(code[1:] < code[:-1]):
        raise InputError("the 8-bit code table must be sorted ascending (bitsandbytes assumes it)")
    mid = (F32(0.5) * (code[:-1] + code[1:]).astype(F32)).astype(F32)
    i = np.arange(LUT_LEVELS, dtype=F32)
    v = (F32(-1) + (F32(2) * i) / F32(LUT_LEVELS - 1)).astype(F32)
    return np.searchsorted(mid, v, side="left").astype(np.uint8)


def lookup_cpu_lut(a: np.ndarray, absmax: np.ndarray, blocksize: int, code: np.ndarray) -> np.ndarray:
    """The native 8-bit kernel (quantize_cpu_impl): per block, inv = 1 / absmax; each value
    v = clamp(a * inv, -1, 1) becomes level trunc(fma((v + 1) * 0.5, 65535, 0.5)) (the
    compiler fuses the last multiply-add) and takes that level's entry. A block of zeros gets
    code 0. When inv overflows, 0 * inf is NaN and NaN converts to level 0."""
    lut = build_quantize_lut(code)
    b = _blocks(a.shape[0], blocksize)
    am = absmax[b]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = (F32(1) / np.where(am == 0, F32(1), am)).astype(F32)
        v = (a * inv).astype(F32)
        v = np.where(v < F32(-1), F32(-1), np.where(v > F32(1), F32(1), v)).astype(F32)  # std::clamp keeps NaN
        t = fma_f32(((v + F32(1)) * F32(0.5)).astype(F32), np.full_like(v, F32(LUT_LEVELS - 1)),
                    np.full_like(v, F32(0.5)))
    level = c_float_to_int32(t).astype(np.int64) & 0xFFFF   # cvttss2si, low 16 bits
    q = lut[level]
    return np.where(am == 0, np.uint8(0), q).astype(np.uint8)


# --------------------------------------------------------------------------- 8-bit blockwise

def quantize_blockwise(A: np.ndarray, code: Optional[np.ndarray] = None, blocksize: int = 4096,
                       nested: bool = False, method: str = "cpu-lut",
                       num_threads: int = 1) -> tuple[np.ndarray, QuantState]:
    """bitsandbytes.functional.quantize_blockwise: uint8 codes of A's shape and the state.

    method "cpu-lut" is the native CPU kernel, "nearest" the PyTorch one (see the module doc).
    nested: absmax minus its mean is quantized again the same way, at the same blocksize.
    """
    a, name = _floats(A)
    blocksize = _check_blocksize(blocksize)
    code = create_dynamic_map() if code is None else np.asarray(code, F32)
    if code.shape != (256,):
        raise InputError(f"the 8-bit code table must have 256 entries, got shape {code.shape}")
    absmax = _absmax(a, blocksize)
    if method == "cpu-lut":
        q = lookup_cpu_lut(a, absmax, blocksize, code)
    elif method == "nearest":
        q = lookup_nearest(_scale_nearest(a, absmax, blocksize), code)
        absmax = _clamp_short_block(absmax, a.shape[0], blocksize)
    else:
        raise FormatError(f"quantize_blockwise method must be 'cpu-lut' or 'nearest', got {method!r}")
    q = q.reshape(A.shape)
    if nested:
        offset = mean_f32(absmax, num_threads)
        qabs, state2 = quantize_blockwise((absmax - offset).astype(F32), blocksize=blocksize,
                                          method=method)
        return q, QuantState(qabs, tuple(A.shape), code.copy(), blocksize, name,
                             offset=offset, state2=state2)
    return q, QuantState(absmax, tuple(A.shape), code.copy(), blocksize, name)


def _dequantize_absmax(state: QuantState) -> np.ndarray:
    """The float32 scales: absmax itself, or for a nested state
    absmax = code2[q] * absmax2[block of 256] + offset (two float32 roundings)."""
    if not state.nested:
        am = np.asarray(state.absmax, F32).reshape(-1)
    else:
        inner = dequantize_blockwise(np.asarray(state.absmax, np.uint8), state.state2)
        am = (inner.astype(F32) + F32(state.offset)).astype(F32)
    if not np.isfinite(am).all():
        raise InputError("the absmax scales have a non-finite value; bitsandbytes' kernels "
                         "differ on NaN/Inf scales, so refquant refuses them")
    return am


def dequantize_blockwise(A: np.ndarray, state: QuantState, bf16_daz: bool = False) -> np.ndarray:
    """bitsandbytes.functional.dequantize_blockwise: code[A] * absmax[block] in float32, then
    rounded to state.dtype."""
    A = np.asarray(A)
    if A.dtype != np.uint8:
        raise InputError(f"A must be uint8 codes, got {A.dtype}")
    blocksize = _check_blocksize(state.blocksize)
    am = _dequantize_absmax(state)
    n = A.size
    if am.shape[0] != -(-n // blocksize):
        raise InputError(f"{n} codes at blocksize {blocksize} need {-(-n // blocksize)} absmax values, "
                         f"got {am.shape[0]}")
    code = np.asarray(state.code, F32)
    v = (code[A.reshape(-1)] * am[_blocks(n, blocksize)]).astype(F32)
    return _to_dtype(v, state.dtype, bf16_daz).reshape(A.shape)


# --------------------------------------------------------------------------- 4-bit

def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """4-bit indices (n,) -> ((n + 1) // 2, 1) uint8: element 2k in the high nibble, 2k+1 in
    the low; an odd n is padded with the given pad index."""
    return ((q[0::2].astype(np.uint8) << 4) | q[1::2].astype(np.uint8)).reshape(-1, 1)


def unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(packed).reshape(-1)
    if p.dtype != np.uint8:
        p = np.ascontiguousarray(p).view(np.uint8)
    if p.shape[0] * 2 < n:
        raise InputError(f"{p.shape[0]} packed bytes hold {2 * p.shape[0]} values, the shape needs {n}")
    out = np.empty(p.shape[0] * 2, np.uint8)
    out[0::2] = p >> 4
    out[1::2] = p & 0x0F
    return out[:n]


def quantize_4bit(A: np.ndarray, blocksize: int = 64, quant_type: str = "fp4",
                  compress_statistics: bool = False, num_threads: int = 1,
                  nested_method: str = "cpu-lut") -> tuple[np.ndarray, QuantState]:
    """bitsandbytes.functional.quantize_4bit on the CPU.

    1. a = A flattened (C order) as float32; blocks of `blocksize`.
    2. absmax = max |a| per block (stored unclamped).
    3. scaled = clamp(a * (1 / max(absmax, 1e-38)), -1, 1)  (the short last block: a / ...).
    4. index = nearest entry of the NF4/FP4 table (ties to the lower entry), an odd n padded
       with the index of 0.0.
    5. packed two per byte, first element in the high nibble.
    compress_statistics: offset = mean(absmax) (PyTorch's CPU sum with `num_threads`, divided by
    the count), and absmax - offset quantized with the dynamic map in blocks of 256.
    """
    a, name = _floats(A)
    blocksize = _check_blocksize(blocksize, BLOCKSIZES_4BIT)
    code = get_4bit_type(quant_type)
    absmax = _absmax(a, blocksize)
    scaled = _scale_nearest(a, absmax, blocksize)
    absmax = _clamp_short_block(absmax, a.shape[0], blocksize)
    if scaled.shape[0] % 2:
        scaled = np.concatenate([scaled, np.zeros(1, F32)])
    packed = pack_nibbles(lookup_nearest(scaled, code))
    if compress_statistics:
        offset = mean_f32(absmax, num_threads)
        qabs, state2 = quantize_blockwise((absmax - offset).astype(F32), blocksize=NESTED_BLOCKSIZE,
                                          method=nested_method)
        return packed, QuantState(qabs, tuple(A.shape), code, blocksize, name, quant_type,
                                  offset=offset, state2=state2)
    return packed, QuantState(absmax, tuple(A.shape), code, blocksize, name, quant_type)


DEQUANT_KERNELS = ("torch", "avx512", "scalar")


def bnb_cpu_dequantize_4bit_kernel(shape: tuple, blocksize: int, avx512: bool,
                                   cpu_avx512f: Optional[bool] = None) -> str:
    """Which of bitsandbytes' CPU kernels dequantize_4bit runs for this shape (backends/cpu):
    the PyTorch kernel for an odd last dimension, or at blocksize >= 2048 when PyTorch runs its
    AVX512 code (`avx512`: torch.backends.cpu.get_cpu_capability() == "AVX512"); else the
    native library, whose AVX512 loop runs when the CPU has AVX512F (`cpu_avx512f`, by default
    the same as `avx512`) and the last dimension is a multiple of 16; else its scalar loop."""
    if cpu_avx512f is None:
        cpu_avx512f = avx512
    last = shape[-1] if len(shape) else 1
    if last % 2 or (avx512 and blocksize >= 2048):
        return "torch"
    if cpu_avx512f and last % 16 == 0:
        return "avx512"
    return "scalar"


def dequantize_4bit(packed: np.ndarray, state: QuantState, kernel: str = "torch",
                    bf16_daz: bool = False) -> np.ndarray:
    """bitsandbytes.functional.dequantize_4bit: code[index] * absmax[block] in float32, rounded
    to state.dtype, in state.shape.

    The CPU kernels agree on every value but two details, chosen here by `kernel`:
      FP4 index 8 (sign bit, zero magnitude): +0.0 from the "torch" and "avx512" kernels (their
        table is get_4bit_type's, where the sign of -0 was lost), -0.0 from the "scalar" one;
      bf16_daz: the AVX512-BF16 conversion reads float32 subnormals as zero ("avx512" kernel on
        CPUs with AVX512-BF16).
    """
    if state.quant_type not in ("nf4", "fp4"):
        raise FormatError(f"quant_type must be 'nf4' or 'fp4', got {state.quant_type!r}")
    if kernel not in DEQUANT_KERNELS:
        raise FormatError(f"kernel must be one of {DEQUANT_KERNELS}, got {kernel!r}")
    blocksize = _check_blocksize(state.blocksize, BLOCKSIZES_4BIT)
    n = int(np.prod(state.shape))
    q = unpack_nibbles(packed, n)
    am = _dequantize_absmax(state)
    if am.shape[0] != -(-n // blocksize):
        raise InputError(f"{n} values at blocksize {blocksize} need {-(-n // blocksize)} absmax values, "
                         f"got {am.shape[0]}")
    code = get_4bit_type(state.quant_type).copy()
    if kernel == "scalar" and state.quant_type == "fp4":
        code[8] = F32(-0.0)
    v = (code[q] * am[_blocks(n, blocksize)]).astype(F32)
    return _to_dtype(v, state.dtype, bf16_daz and kernel == "avx512").reshape(state.shape)
