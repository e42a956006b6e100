"""bitsandbytes' code tables, derived from their definitions.

    NF4      16 values: normal quantiles, asymmetric (8 negative, 0, 7 positive + the top),
             normalised to [-1, 1] (QLoRA, appendix E; bitsandbytes create_normal_map)
    FP4      16 values of bitsandbytes' own 4-bit float: 1 sign, 2 exponent, 1 mantissa bit,
             in bit-pattern order (get_4bit_type("fp4"))
    dynamic  256 values of the dynamic tree map (Dettmers 2015; create_dynamic_map): a sign,
             a run of zeros giving the decimal exponent, a 1 marker, linear fraction bits

Each table is float32, computed in the order bitsandbytes computes it (torch.linspace on the
CPU, float32 divisions), so that every entry equals bitsandbytes' to the bit.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from ..numerics import F32
from .torch_cpu import linspace_f32

# QLoRA's NF4 uses quantiles of N(0, 1) between 1 - 1/(2*15) and 1 - 1/(2*16) (the two halves
# have 15 and 16 code points); bitsandbytes writes their mean, 0.96770833..., as 0.9677083.
NF4_OFFSET = 0.9677083


def _ppf(p: np.ndarray) -> np.ndarray:
    """The standard normal quantile function in float64 (Wichura's AS241, as the Python
    standard library computes it; agrees with scipy.stats.norm.ppf to a few 1e-16)."""
    nd = NormalDist()
    return np.array([nd.inv_cdf(float(v)) for v in np.asarray(p, dtype=np.float64).reshape(-1)])


def create_normal_map(offset: float = NF4_OFFSET, use_extra_value: bool = True) -> np.ndarray:
    """The NormalFloat map (256 float32 entries, the 16 NF4 values among zeros), as
    bitsandbytes.functional.create_normal_map builds it:

    1. p = linspace(offset, 0.5, 9) without its last point (8 probabilities, float32);
       positive values Q(p). With use_extra_value=False, 7 points (linspace(.., 8)).
    2. q = linspace(offset, 0.5, 8) without its last point; negative values -Q(q).
    3. those 15 (or 14) values, zeros to fill 256, rounded to float32 and sorted;
    4. divided by the largest (float32), so the top value is exactly 1.0.
    """
    if use_extra_value:
        pos = _ppf(linspace_f32(offset, 0.5, 9)[:-1])
        zeros = 256 - 15
    else:
        pos = _ppf(linspace_f32(offset, 0.5, 8)[:-1])
        zeros = 256 - 14
    neg = -_ppf(linspace_f32(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([pos, np.zeros(zeros), neg]).astype(F32))
    return (values / values.max()).astype(F32)


def nf4_code() -> np.ndarray:
    """The 16 NF4 values, code i = i-th smallest (index 7 is 0.0, index 15 is 1.0)."""
    m = create_normal_map()
    nonzero = m[m != 0]
    return np.concatenate([nonzero[:7], [F32(0)], nonzero[7:]]).astype(F32)


def fp4_magnitude(bits: int) -> float:
    """bitsandbytes' FP4 magnitude for the three low bits e1 e0 m (before normalisation).

    The exponent field counts down: e = 1, 2, 3 give 2**3, 2**2, 2**1, times (1 + m/2);
    e = 0 is subnormal, m * 2**-4. So 0b000..0b111 are 0, 0.0625, 8, 12, 4, 6, 2, 3.
    """
    e, m = (bits >> 1) & 3, bits & 1
    if e == 0:
        return m * 2.0 ** -4
    return (1.0 + m / 2) * 2.0 ** (4 - e)


def fp4_code() -> np.ndarray:
    """The 16 FP4 values in bit-pattern order: bit 3 is the sign, bits 2..0 as fp4_magnitude;
    divided by the largest magnitude (12) in float32 (get_4bit_type("fp4")).

    Index 8 (sign bit, zero magnitude) is +0.0 in this table: bitsandbytes lists it as the
    Python integer -0, which is 0. (Its native scalar kernel's own table has -0.0 there.)"""
    raw = np.array([(-1.0 if b & 8 else 1.0) * fp4_magnitude(b & 7) for b in range(16)], F32)
    raw[raw == 0] = F32(0.0)
    return (raw / np.abs(raw).max()).astype(F32)


def get_4bit_type(quant_type: str) -> np.ndarray:
    if quant_type == "nf4":
        return nf4_code()
    if quant_type == "fp4":
        return fp4_code()
    from ..errors import FormatError
    raise FormatError(f"bitsandbytes 4-bit quant_type must be 'nf4' or 'fp4', got {quant_type!r}")


def create_fp8_map(signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2,
                   total_bits: int = 8) -> np.ndarray:
    """bitsandbytes.functional.create_fp8_map: every (exponent field E, mantissa) pattern of a
    small float, sorted, zero-padded to 256 and divided by the largest value (float32).
    With bias = 2**(exponent_bits - 1): E > 0 gives (1 + mantissa) * 2**-(E - bias - 1), E = 0
    gives mantissa * 2**-bias. Kept to show how it differs from the FP4 table quantize_4bit
    uses (spec/divergences-bnb.md, row 3)."""
    has_sign = 1 if signed else 0
    if exponent_bits + precision_bits != total_bits - has_sign:
        from ..errors import InputError
        raise InputError("create_fp8_map: exponent_bits + precision_bits must be total_bits - sign bit")
    bias = 2 ** (exponent_bits - 1)
    values = []
    for ev in range(2 ** exponent_bits):
        for pattern in range(2 ** precision_bits):
            bits = [(pattern >> (precision_bits - 1 - i)) & 1 for i in range(precision_bits)]
            v = 1.0 if ev != 0 else 0.0
            for i, bit in enumerate(bits):
                v += bit * 2.0 ** -(i + 1)
            v = v * 2.0 ** -bias if ev == 0 else v * 2.0 ** -(ev - bias - 1)
            values.append(v)
            if signed:
                values.append(-v)
    values = sorted(values + [0.0] * (256 - len(values) if total_bits < 8 else 0))
    code = np.array(values, F32)
    return (code / code.max()).astype(F32)


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """The dynamic map (256 sorted float32 values), as create_dynamic_map builds it.

    For exponent level i = 0 .. max_exponent_bits-1 the fraction takes 2**(i + r) values
    (r = total_bits - 1 - max_exponent_bits; one more bit when unsigned): the midpoints of
    linspace(0.1, 1, that + 1) (float32), times 10**(i - max_exponent_bits + 1) (float32),
    with their negatives when signed. Then 0 and 1.0, zeros up to 256, sorted.
    """
    non_sign = total_bits - 1
    extra = 2 ** (non_sign - max_exponent_bits) - 1
    data: list[np.ndarray] = []

    def level(i: int, items: int):
        b = linspace_f32(0.1, 1.0, items)
        means = ((b[:-1] + b[1:]) / F32(2)).astype(F32)
        scale = F32(10.0 ** (-(max_exponent_bits - 1) + i))
        data.append((means * scale).astype(F32))
        if signed:
            data.append((-(means * scale)).astype(F32))

    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign - max_exponent_bits) + 1 if signed \
            else 2 ** (i + non_sign - max_exponent_bits + 1) + 1
        level(i, items)
    if extra > 0:
        level(max_exponent_bits - 1, extra + 1)
    flat = np.concatenate(data + [np.array([0.0, 1.0], F32)])
    if flat.size != 2 ** total_bits:
        from ..errors import InputError
        raise InputError(f"create_dynamic_map: {flat.size} values for {total_bits} bits "
                         f"(signed={signed}, max_exponent_bits={max_exponent_bits})")
    return np.sort(np.concatenate([flat, np.zeros(256 - flat.size, F32)])).astype(F32)
