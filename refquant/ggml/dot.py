"""What ggml's CPU backend computes for a quantized matmul: vec_dot (ggml-cpu/quants.c).

ggml_compute_forward_mul_mat multiplies a weight matrix W (N rows of type T) by activations A
(M rows of float32) as follows, and this module defines each step:

The facts of each weight type are data in its format record (refquant.format.VecDot, declared
in the type's own module): the activation type, the decoder of its blocks' integer codes and
scales, and the name of the rule by which this module combines the blocks' integer dots. This
module is the engine: it knows the rules (ggml's kernel shapes), not the families.

1. Every activation row is quantized to T's `vec_dot_type` (Q8_0 for Q4_0 Q5_0 Q8_0 IQ4_NL
   MXFP4 Q1_0 Q2_0 NVFP4, Q8_1 for Q4_1 Q5_1, Q8_K for the K-quants Q2_K..Q6_K, IQ4_XS, TQ1_0, TQ2_0
   and the lattice types IQ2_*, IQ3_*, IQ1_*) by the CPU backend's `from_float` ->
   `quantize_activation`. Steps 2-3 below are the 32-block Q8_0/Q8_1 types' (IQ4_NL and MXFP4
   read their codes from a 16-entry table); Q1_0, Q2_0 and NVFP4 (blocks over several Q8_0 blocks)
   and the Q8_K types have their own sections further down, and every order is drawn in
   spec/ggml/dot.md.
2. For every (activation row, weight row) pair and every block b of 32, an integer dot
   sumi_b = sum_j qw[j] * qa[j] -- EXACT (int32, |sumi| < 2^17, order irrelevant).
3. The blocks are combined in float32, one block at a time, in C's order and association:
   `sumf += term_b` from sumf = 0 -> `combine`. The term, as the scalar `*_generic` kernel
   computes it when built by GCC for x86-64 with FMA (ggml-cpu's build; GCC contracts
   `a*b + c` to an FMA by default, which the built library shows for Q4_1 and Q5_1):

       Q4_0   (sumi * dw) * da                      (C: sumi*d_x*d_y)
       Q5_0   (dw * da) * sumi
       Q8_0   sumi * (dw * da)
       IQ4_NL (dw * da) * sumi                      (C: d * (sumi1 + sumi2))
       MXFP4  (dw * da) * sumi                      (dw = 2^(e-128), GGML_E8M0_TO_FP32_HALF)
       Q4_1   fmaf(dw * da, sumi, mw * sa)          (C: (d_x*d_y)*sumi + m_x*s_y)
       Q5_1   fmaf(dw * da, sumi, mw * sa)

   with dw, da, mw, sa the fp16 fields decoded exactly (GGML_CPU_FP16_TO_FP32), sumi converted
   to float exactly (|sumi| < 2^24), and every `*`, `+` one float32 rounding.

The result of `vec_dot` equals the `*_generic` kernels bit for bit (Q5_0: ggml-python 0.0.45's
build of that kernel mis-decodes codes below 16, against its own C source; spec/ggml/dot.md).
The SIMD kernels that the CPU
type traits select on x86 (AVX2) keep the integer part (steps 1-2) but combine differently: each
block's sumi is split into 8 lanes of 4 products, lane l accumulates fma(dw*da, lane_l, acc_l)
over the blocks, the 8 lanes are summed as a tree ((l+l+4), then pairs, then the last two), and
for Q4_1/Q5_1 the offsets `mw*sa` are summed separately and added at the end. That order is
bounded, not reproduced: see `simd_error_bound` and spec/ggml/dot.md.

Activation quantization has two variants (step 1):

  "ref"  quantize_row_q8_0_ref / quantize_row_q8_1_ref: d = amax/127, q = roundf(x * (1/d))
         (half away from zero), stored with (int8_t). What ggml's scalar build uses.
  "x86"  the AVX/AVX2 `quantize_row_q8_0` / `quantize_row_q8_1` that ggml-cpu selects on x86:
         d = amax/127 as before, but the multiplier is 127/amax (not 1/d), the rounding is to
         nearest even (_mm256_round_ps), the float->int conversion gives INT_MIN for NaN and
         out-of-range values, and the int32 -> int8 packing saturates to [-128, 127]. Q8_1's
         s = fp16(d * (float)sum) sums the int32 values before saturation, wrapping mod 2^32.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError, InputError
from ..numerics import F32, fma_f32, fp16_bits_to_fp32, fp32_to_fp16_bits
from ..registry import all_formats, get_format
from .blocks import as_blocks, u16

QK = 32

# Every weight type with a vec_dot says so in its format record (refquant.format.VecDot): the
# type its activations are quantized to (type_traits_cpu[].vec_dot_type), the function that reads
# its blocks' integer codes and scales (in its own module), and the rule below that combines the
# blocks' integer dots. Q8_1 has none: ggml has no vec_dot with Q8_1 weights.
VEC_DOT_TYPE = {f.name: f.vec_dot.activation for f in all_formats() if f.vec_dot is not None}

# The combination rules, by the shape of ggml's kernel (each drawn in spec/ggml/dot.md):
# blocks of 32 against Q8_0/Q8_1 blocks (steps 2-3 above): the term each block adds to sumf
LEGACY_RULES = ("(sumi * dw) * da", "(dw * da) * sumi", "sumi * (dw * da)", "fmaf(dw * da, sumi, mw * sa)")
# weight blocks over several Q8_0 blocks, by the values per integer dot: the Q8_0 section below
NESTED_RULES = {"per 32 chained: d * (sumi_f + f(sumi) * d_y)": 32, "per 16: sumi * (d_y * d)": 16}
# super-blocks against Q8_K (the K-quant section below)
Q2_K_RULE = "q2_k"
LANES_MUL_ADD = "lanes: multiply, add"                 # Q3_K, Q6_K
LANES_FMA = "lanes: fmaf, mins fmaf"                   # Q4_K, Q5_K
PER_32 = "per 32: (d * (ls - 32)) * sumi"              # IQ4_XS
TERNARY = "ternary: f(sumi) * d"                       # TQ1_0, TQ2_0
LATTICE_RULE = "lattice: f(bsum) * d, then * final"    # IQ2_*, IQ3_*
IQ1_RULES = ("iq1: delta from bsums", "iq1: delta from qs")
K_RULES = (Q2_K_RULE, LANES_MUL_ADD, LANES_FMA, PER_32, TERNARY, LATTICE_RULE) + IQ1_RULES


def _rule(qtype) -> str:
    return vec_dot_of(qtype).combine


def _names(*rules):
    return tuple(f.name for f in all_formats() if f.vec_dot is not None and f.vec_dot.combine in rules)


# the weight types of each kind, as their records say
NESTED = _names(*NESTED_RULES)
K_TYPES = _names(Q2_K_RULE, LANES_MUL_ADD, LANES_FMA)
# the lattice types: grid value x sign x odd sub-block scale is an integer w_p, and the generic
# kernel returns final * sum_b d_b * f(sum_p w_p a_p)
LATTICE = _names(LATTICE_RULE)
# IQ1_S, IQ1_M: values ls * (g + delta), g in {-1, 0, 1}, delta = +-IQ1S_DELTA (0.125f)
IQ1 = _names(*IQ1_RULES)
IQ1_DELTA = 0.125
Q8_K_TYPES = tuple(name for name, t in VEC_DOT_TYPE.items() if t == "Q8_K")

ACTIVATION_VARIANTS = ("ref", "x86")


def vec_dot_formats() -> list[str]:
    """Weight formats that have a vec_dot (the keys of the `vec_dot` operation)."""
    return list(VEC_DOT_TYPE)


def vec_dot_of(qtype):
    """The format's VecDot record; FormatError for types ggml's CPU mul_mat does not take."""
    fmt = get_format(qtype)
    if fmt.vec_dot is None:
        raise FormatError(f"{fmt.name} has no vec_dot in ggml's CPU backend; "
                          f"those that do: {', '.join(VEC_DOT_TYPE)}")
    return fmt.vec_dot


def vec_dot_type(qtype) -> str:
    return vec_dot_of(qtype).activation


# --------------------------------------------------------------------------- step 1

def _cvtps_epi32(v: np.ndarray) -> np.ndarray:
    """_mm256_cvtps_epi32 on values already rounded to integers: NaN and |v| >= 2^31 give
    INT_MIN (the 'integer indefinite' value); returns int64 holding the int32 results."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v >= F32(-2147483648.0)) & (v < F32(2147483648.0))
        return np.where(ok, np.where(ok, v, 0).astype(np.int64), np.int64(-(2**31)))


def quantize_activation(a: np.ndarray, qtype: str, variant: str = "ref") -> np.ndarray:
    """Float32 rows a (M, K) -> bytes (M, K/bs * type_size) of Q8_0, Q8_1 or Q8_K (step 1).
    Q8_K has one quantizer on every build (x86's quantize_row_q8_K is quantize_row_q8_K_ref):
    both variants give the same bytes."""
    fmt = get_format(qtype)
    if fmt.name not in ("Q8_0", "Q8_1", "Q8_K"):
        raise FormatError(f"activations are quantized to Q8_0, Q8_1 or Q8_K here, not {fmt.name}")
    if variant not in ACTIVATION_VARIANTS:
        raise InputError(f"unknown activation variant {variant!r}; known: {', '.join(ACTIVATION_VARIANTS)}")
    if variant == "ref" or fmt.name == "Q8_K":
        with np.errstate(all="ignore"):  # overflow to inf is part of the C arithmetic
            return fmt.quantize_rows(a, None)
    xb = as_blocks(a, QK)
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(xb), axis=1)            # _mm256_max_ps over |x|: no NaN here
        d = amax / F32(127)
        idv = np.where(amax != 0, F32(127) / np.where(amax != 0, amax, F32(1)), F32(0)).astype(F32)
        v = np.rint(xb * idv[:, None])               # _MM_ROUND_NEAREST: half to even
    i32 = _cvtps_epi32(v)
    qs = np.clip(i32, -128, 127).astype(np.int8)     # packs_epi32 then packs_epi16: saturate
    if fmt.name == "Q8_0":
        return fmt.layout.join(a.shape[0], d=fp32_to_fp16_bits(d), qs=qs)
    total = i32.sum(axis=1)                          # _mm256_add_epi32 + hsum: wraps mod 2^32
    total = ((total + 2**31) % 2**32 - 2**31).astype(np.int32)
    with np.errstate(all="ignore"):
        s = d * total.astype(F32)
    return fmt.layout.join(a.shape[0], d=fp32_to_fp16_bits(d), s=fp32_to_fp16_bits(s), qs=qs)


# --------------------------------------------------------------------------- step 2

def decode_weight_blocks(w: np.ndarray, qtype) -> dict[str, np.ndarray]:
    """Weight rows (N, row_bytes) -> {"q": int32 (N, nb, 32) integer codes as vec_dot uses them,
    "d": float32 (N, nb), and for Q4_1/Q5_1 "m": float32 (N, nb)}: the format's own decoder
    (its record's VecDot.decode), per row."""
    vd = vec_dot_of(qtype)
    if vd.combine not in LEGACY_RULES:
        raise FormatError(f"{get_format(qtype).name} has no vec_dot over blocks of 32")
    N = w.shape[0]
    ops = vd.decode(w)
    out = {"q": ops["q"].reshape(N, -1, QK), "d": ops["d"].reshape(N, -1)}
    if "m" in ops:
        out["m"] = ops["m"].reshape(N, -1)
    return out


def decode_activation_blocks(qa: np.ndarray, qtype) -> dict[str, np.ndarray]:
    """Q8_0/Q8_1 rows (M, row_bytes) -> {"q": int32 (M, nb, 32), "d": (M, nb), ["s": (M, nb)]}."""
    M = qa.shape[0]
    f = get_format(qtype).layout.split(qa)
    out = {"q": f["qs"].view(np.int8).astype(np.int32).reshape(M, -1, QK),
           "d": fp16_bits_to_fp32(u16(f["d"])).reshape(M, -1)}
    if "s" in f:
        out["s"] = fp16_bits_to_fp32(u16(f["s"])).reshape(M, -1)
    return out


def block_dots(wq: np.ndarray, aq: np.ndarray) -> np.ndarray:
    """sumi[m, n, b] = sum_j wq[n, b, j] * aq[m, b, j]: exact integers (step 2), int32."""
    return np.einsum("mbj,nbj->mnb", aq.astype(np.int64), wq.astype(np.int64)).astype(np.int32)


# --------------------------------------------------------------------------- step 3

def combine(qtype, sumi: np.ndarray, wb: dict, ab: dict) -> np.ndarray:
    """sumf = 0; for b: sumf += term_b -- float32, in the generic kernel's order (step 3).
    sumi (M, N, nb) int32; wb, ab from decode_*_blocks. Returns (M, N) float32."""
    rule = _rule(qtype)
    M, N, nb = sumi.shape
    sumf = np.zeros((M, N), dtype=F32)
    with np.errstate(all="ignore"):
        for b in range(nb):
            s = sumi[:, :, b].astype(F32)                  # exact
            dw = wb["d"][None, :, b]
            da = ab["d"][:, None, b]
            if rule == "(sumi * dw) * da":                 # Q4_0, C: sumi*d_x*d_y
                t = (s * dw) * da
            elif rule == "(dw * da) * sumi":               # Q5_0, IQ4_NL, MXFP4
                t = (dw * da) * s                          # C: d * (sumi1 + sumi2), d = d_y * d_x
            elif rule == "sumi * (dw * da)":               # Q8_0
                t = s * (dw * da)
            elif rule == "fmaf(dw * da, sumi, mw * sa)":   # Q4_1, Q5_1: (d_x*d_y)*sumi + m_x*s_y, contracted
                t = fma_f32(dw * da, s, wb["m"][None, :, b] * ab["s"][:, None, b])
            else:
                raise FormatError(f"{get_format(qtype).name} has no vec_dot over blocks of 32")
            sumf = (sumf + t).astype(F32)
    return sumf


def vec_dot_quantized(w: np.ndarray, qtype, qa: np.ndarray) -> np.ndarray:
    """Steps 2-3 on already quantized activations qa (M, bytes of the vec_dot type) -> (M, N)."""
    vt = vec_dot_type(qtype)
    if vt == "Q8_K":
        wb, ab = _k_operands(w, qtype, qa)
        return combine_k(qtype, lane_dots(wb, ab), min_dots(wb, ab), wb, ab)
    if _rule(qtype) in NESTED_RULES:
        return combine_nested(qtype, *_nested_operands(w, qtype, qa))
    wb = decode_weight_blocks(w, qtype)
    ab = decode_activation_blocks(qa, vt)
    _same_blocks(qtype, wb, ab)
    return combine(qtype, block_dots(wb["q"], ab["q"]), wb, ab)


def _same_blocks(qtype, wb, ab):
    if wb["q"].shape[1] != ab["q"].shape[1]:
        raise InputError(f"{get_format(qtype).name} vec_dot: weight rows have {wb['q'].shape[1]} blocks, "
                         f"activation rows {ab['q'].shape[1]}")


def vec_dot(w: np.ndarray, qtype, a: np.ndarray, variant: str = "ref") -> np.ndarray:
    """ggml's CPU mul_mat for weight rows w (N, row_bytes of qtype) and float32 activations
    a (M, K): Y[m, n] = vec_dot(W[n], quantize(a[m])) -> (M, N) float32 (steps 1-3)."""
    return vec_dot_quantized(w, qtype, quantize_activation(a, vec_dot_type(qtype), variant))


# --------------------------------------------------------------------------- K-quants (Q8_K)
#
# Weight super-blocks of 256 against Q8_K activation super-blocks (d: float32, qs: int8[256],
# bsums: int16[16], the sums of each 16 qs). The generic kernels read every weight value as a
# small integer code q_p with an integer sub-block scale sc_p (and, for Q2_K/Q4_K/Q5_K, an
# integer sub-block min m_j against bsums[j]), and split the 256 products into 8 integer lanes:
# lane l collects the positions p = l (mod 8) (the `aux32[l] += scale * aux16[l]` loops).
#
#   Q2_K  q = 2-bit code 0..3        sc = scales[p/16] & 0xF   m_j = scales[j] >> 4
#   Q3_K  q = 3-bit code - 4: -4..3  sc = 6-bit scale - 32     no mins
#   Q4_K  q = 4-bit code 0..15       sc = 6-bit scale[p/32]    m_j = 6-bit min[j/2]
#   Q5_K  q = 5-bit code 0..31       sc = 6-bit scale[p/32]    m_j = 6-bit min[j/2]
#   Q6_K  q = 6-bit code - 32        sc = int8 scales[p/16]    no mins
#
# Per super-block b (d_b = fp16(x.d) * y.d and dmin_b = fp16(x.dmin) * y.d, float32 products;
# f() the int -> float32 conversion, exact: |lane| <= 32 * 128 * 32 * 128 = 2^24, and
# |isum|, |summs| < 2^21):
#
#   Q2_K  sumf += fmaf(d_b, f(isum), -(dmin_b * f(summs)))   isum = sum of the 8 lanes,
#                                                           summs = sum_j m_j * bsums_j
#   Q3_K  sums[l] = sums[l] + d_b * f(lane_l)                 (multiply, then add: not fused)
#   Q6_K  sums[l] = sums[l] + d_b * f(lane_l)
#   Q4_K  sums[l] = fmaf(d_b, f(lane_l), sums[l]);  sumf = fmaf(-dmin_b, f(summs), sumf)
#   Q5_K  sums[l] = fmaf(d_b, f(lane_l), sums[l]);  sumf = fmaf(-dmin_b, f(summs), sumf)
#
# and, for all but Q2_K, after the last super-block: sumf += sums[0]; ...; sumf += sums[7].
#
# The other Q8_K types reuse the lanes with sc_p = 1 (TQ1_0, TQ2_0, the lattice types: their
# integer weight w_p is the code) or per 32 (IQ4_XS); their float steps are in combine_k and
# spec/ggml/dot.md: TQ sumf += f(sumi) * d_b; IQ4_XS per sub-block (d_b * f(ls - 32)) * f(sumi);
# IQ2/IQ3 sumf += f(bsum) * d_b then * 0.125f / 0.25f; IQ1 two fused steps with IQ1S_DELTA.
# The fused and unfused steps are those GCC emitted for ggml-python 0.0.45's x86-64 build
# (contraction on by default): vfmadd231ps / vfnmadd231ss / vfmsub132ss for Q4_K, Q5_K, Q2_K,
# separate vmulps + vaddps for Q3_K and Q6_K.

QK_K = 256


def decode_q8_k(qa: np.ndarray) -> dict[str, np.ndarray]:
    """Q8_K rows (M, row_bytes) -> {"q": int32 (M, nb, 256), "d": float32 (M, nb),
    "bsums": int32 (M, nb, 16)}."""
    M = qa.shape[0]
    f = get_format("Q8_K").layout.split(qa)
    return {"q": f["qs"].view(np.int8).astype(np.int32).reshape(M, -1, QK_K),
            "d": np.ascontiguousarray(f["d"]).view("<f4")[:, 0].astype(F32).reshape(M, -1),
            "bsums": np.ascontiguousarray(f["bsums"]).view("<i2").astype(np.int32).reshape(M, -1, 16)}


def decode_k_weight(w: np.ndarray, qtype) -> dict[str, np.ndarray]:
    """Q8_K-type weight rows (N, row_bytes) -> {"q": int32 (N, nb, 256) codes, "sc": int32
    (N, nb, 256) the integer scale of each position's sub-block, "d": float32 (N, nb), and for
    Q2_K/Q4_K/Q5_K "dmin": float32 (N, nb), "m": int32 (N, nb, 16) the min multiplying bsums[j]},
    as the table above reads them, from the format's own decoder (its record's VecDot.decode);
    IQ1_S/IQ1_M add "qd" (N, nb, 256), the lattice types "final", and the types whose AVX2
    kernel multiplies unsigned codes q + off "simd_offset"."""
    vd = vec_dot_of(qtype)
    if vd.combine not in K_RULES:
        raise FormatError(f"{get_format(qtype).name} has no Q8_K vec_dot")
    N = w.shape[0]
    ops = vd.decode(w)
    out = {"q": ops["q"].reshape(N, -1, QK_K), "sc": np.repeat(ops["sc16"], 16, axis=1).reshape(N, -1, QK_K),
           "d": ops["d"].reshape(N, -1)}
    if "m" in ops:
        out["m"] = ops["m"].reshape(N, -1, 16)
        out["dmin"] = ops["dmin"].reshape(N, -1)
    if "qd" in ops:
        out["qd"] = ops["qd"].reshape(N, -1, QK_K)
    for k in ("final", "simd_offset"):
        if k in ops:
            out[k] = ops[k]
    return out


def _k_operands(w, qtype, qa):
    wb = decode_k_weight(w, qtype)
    ab = decode_q8_k(qa)
    _same_blocks(qtype, wb, ab)
    return wb, ab


def lane_dots(wb: dict, ab: dict) -> np.ndarray:
    """lane[m, n, b, l] = sum over p = l (mod 8) of sc_p * q_p * a_p: exact integers, int64
    (M, N, nb, 8). Every lane fits int32 (|lane| <= 32 * 128 * 32 * 128 < 2^31)."""
    M, nb = ab["q"].shape[:2]
    N = wb["q"].shape[0]
    wsq = (wb["sc"] * wb["q"]).astype(np.int64).reshape(N, nb, 32, 8)
    aq = ab["q"].astype(np.int64).reshape(M, nb, 32, 8)
    return np.einsum("mbkl,nbkl->mnbl", aq, wsq)


def min_dots(wb: dict, ab: dict) -> np.ndarray | None:
    """summs[m, n, b] = sum_j m_j * bsums_j (Q2_K, Q4_K, Q5_K), exact int64; None without mins."""
    if "m" not in wb:
        return None
    return np.einsum("mbj,nbj->mnb", ab["bsums"].astype(np.int64), wb["m"].astype(np.int64))


def iq1_delta_dots(qtype, wb: dict, ab: dict) -> np.ndarray:
    """The integer delta part (M, N, nb): IQ1_S sum_ib ls_ib * sign_ib * (bsums[2ib] + bsums[2ib+1])
    (the stored bsums, as the kernel reads them); IQ1_M sum_p ls_p * sign_p * qa_p."""
    if _rule(qtype) == "iq1: delta from bsums":
        qd16 = wb["qd"][:, :, ::16].astype(np.int64)                  # per 16: ls * sign
        return np.einsum("mbj,nbj->mnb", ab["bsums"].astype(np.int64), qd16)
    return np.einsum("mbp,nbp->mnb", ab["q"].astype(np.int64), wb["qd"].astype(np.int64))


def _to_f32(i: np.ndarray) -> np.ndarray:
    """(float) of an int32 value (cvtsi2ss: round to nearest even above 2^24; the generic
    kernels never get there)."""
    return i.astype(np.int32).astype(F32)


def _fused_neg(x: np.ndarray) -> np.ndarray:
    """-x as an FMA instruction applies it (vfmsub, vfnmadd): a NaN operand propagates with its
    own sign, where a separate negation would flip it. NaNs here are x86's default 0xFFC00000
    (inf * 0, inf - inf), which NumPy's float32 arithmetic produces too."""
    return np.where(np.isnan(x), x, -x)


def combine_k(qtype, lanes: np.ndarray, summs: np.ndarray | None, wb: dict, ab: dict) -> np.ndarray:
    """The generic K-quant kernels' float32 steps, in the order of the table above -> (M, N)."""
    rule = _rule(qtype)
    M, N, nb, _ = lanes.shape
    if rule in IQ1_RULES:
        deltas = iq1_delta_dots(qtype, wb, ab)
    if rule == PER_32:    # sumi of each sub-block of 32, unscaled: the scale is applied in float
        units = np.einsum("mbuj,nbuj->mnbu", ab["q"].astype(np.int64).reshape(M, nb, 8, 32),
                          wb["q"].astype(np.int64).reshape(N, nb, 8, 32))
    sumf = np.zeros((M, N), dtype=F32)
    sums = np.zeros((M, N, 8), dtype=F32)
    with np.errstate(all="ignore"):
        for b in range(nb):
            d = wb["d"][None, :, b] * ab["d"][:, None, b]            # fp16(x.d) * y.d
            if "dmin" in wb:
                dmin = wb["dmin"][None, :, b] * ab["d"][:, None, b]
            if rule == Q2_K_RULE:
                isum = _to_f32(lanes[:, :, b, :].sum(axis=2))
                t = fma_f32(d, isum, _fused_neg(dmin * _to_f32(summs[:, :, b])))
                sumf = (sumf + t).astype(F32)
            elif rule == LANES_MUL_ADD:                      # Q3_K, Q6_K
                sums = (sums + d[..., None] * _to_f32(lanes[:, :, b, :])).astype(F32)
            elif rule == LANES_FMA:                          # Q4_K, Q5_K
                sums = fma_f32(np.broadcast_to(d[..., None], sums.shape), _to_f32(lanes[:, :, b, :]), sums)
                sumf = fma_f32(_fused_neg(dmin), _to_f32(summs[:, :, b]), sumf)
            elif rule in IQ1_RULES:
                # IQ1_S: sumf += d * (sumi + IQ1S_DELTA * sumi1), sumi1 from the Q8_K bsums;
                # IQ1_M: sumf += d * (sumi1 + IQ1M_DELTA * sumi2), sumi2 from the qs themselves.
                # Both fused by the build: fmaf(d, fmaf(f(delta part), 0.125f, f(grid part)), sumf)
                inner = fma_f32(_to_f32(deltas[:, :, b]), np.broadcast_to(F32(IQ1_DELTA), d.shape),
                                _to_f32(lanes[:, :, b, :].sum(axis=2)))
                sumf = fma_f32(d, inner, sumf)
            elif rule in (TERNARY, LATTICE_RULE):
                sumf = (sumf + _to_f32(lanes[:, :, b, :].sum(axis=2)) * d).astype(F32)
            elif rule == PER_32:                             # IQ4_XS
                for u in range(8):                                # sub-blocks of 32 in order
                    dl = d * wb["sc"][None, :, b, 32 * u].astype(F32)      # d4d8 * (ls - 32)
                    sumf = (sumf + dl * _to_f32(units[:, :, b, u])).astype(F32)
            else:
                raise FormatError(f"{get_format(qtype).name} has no Q8_K vec_dot")
        if rule in (LANES_MUL_ADD, LANES_FMA):
            for l in range(8):
                sumf = (sumf + sums[:, :, l]).astype(F32)
        if rule == LATTICE_RULE and wb["final"] != 1.0:
            sumf = (F32(wb["final"]) * sumf).astype(F32)            # *s = 0.125f * sumf
    return sumf


def exact_k_dot(w: np.ndarray, qtype, qa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, S) for a K-quant: R = sum_b (xd*yd) sum_p sc_p q_p a_p - (xdmin*yd) summs_b in float64
    (xd*yd is exact there: 11 + 24 bits), and S = sum_b |xd*yd| A_b + |xdmin*yd| sum_j |m_j bsums_j|,
    A_b = sum_p |sc_p| |q_p| |a_p|; for Q6_K, whose AVX2 kernel multiplies the unsigned codes
    q_p + 32 and subtracts 32 * sc * bsums afterwards, A_b = sum_p |sc_p| (|q_p + 32| + 32) |a_p|,
    which bounds every partial sum of either kernel. 2 nb float64 terms: relative error at most
    2 nb * 2^-53 of S. S is inf where a float32 scale product x.d*y.d or x.dmin*y.d overflows,
    and (lattice and IQ1 types) where the sums taken before the final 0.125f / 0.25f factor
    can pass 1e38."""
    wb, ab = _k_operands(w, qtype, qa)
    rule = _rule(qtype)
    lanes = lane_dots(wb, ab).sum(axis=3).astype(np.float64)
    off = wb.get("simd_offset", 0)                             # AVX2's unsigned codes q + off
    wq = np.abs(wb["q"] + off) + off
    mag = np.einsum("mbp,nbp->mnb", np.abs(ab["q"]).astype(np.int64),
                    (np.abs(wb["sc"]) * wq).astype(np.int64)).astype(np.float64)
    with np.errstate(all="ignore"):
        d = wb["d"].astype(np.float64)[None, :, :] * ab["d"].astype(np.float64)[:, None, :]
        R = (d * lanes).sum(axis=2)
        S = (np.abs(d) * mag).sum(axis=2)
        if "m" in wb:
            dmin = wb["dmin"].astype(np.float64)[None, :, :] * ab["d"].astype(np.float64)[:, None, :]
            R = R - (dmin * min_dots(wb, ab).astype(np.float64)).sum(axis=2)
            amins = np.einsum("mbj,nbj->mnb", np.abs(ab["bsums"]).astype(np.int64),
                              wb["m"].astype(np.int64)).astype(np.float64)
            S = S + (np.abs(dmin) * amins).sum(axis=2)
            d = np.maximum(np.abs(d), np.abs(dmin))
        # a scale product past float32's range is inf there (and inf * 0 = NaN): no relative
        # bound holds, which S = inf says
        S = np.where((np.abs(d) > np.finfo(F32).max).any(axis=2), np.inf, S)
    if rule in IQ1_RULES:  # + 0.125 * d * delta part; its magnitude 0.125 * |d| * sum |ls| |qa|
        with np.errstate(all="ignore"):
            dd = wb["d"].astype(np.float64)[None, :, :] * ab["d"].astype(np.float64)[:, None, :]
            R = R + IQ1_DELTA * (dd * iq1_delta_dots(qtype, wb, ab).astype(np.float64)).sum(axis=2)
            if rule == "iq1: delta from bsums":
                dmag = np.einsum("mbj,nbj->mnb", np.abs(ab["bsums"]).astype(np.int64),
                                 np.abs(wb["qd"][:, :, ::16]).astype(np.int64))
            else:
                dmag = np.einsum("mbp,nbp->mnb", np.abs(ab["q"]).astype(np.int64), np.abs(wb["qd"]).astype(np.int64))
            Sd = (np.abs(dd) * dmag.astype(np.float64)).sum(axis=2)
            # the kernels sum the delta part before its 0.125f: those sums reach Sd itself
            S = np.where(S + Sd > _PARTIAL_MAX, np.inf, S + IQ1_DELTA * Sd)
    if rule == LATTICE_RULE:  # the final power-of-two factor: exact in both; the sums before it reach S
        S = np.where(S > _PARTIAL_MAX, np.inf, S)
        R, S = R * wb["final"], S * wb["final"]
    return R, S


# Partial sums past this may overflow float32 on the way (3.4e38 less rounding growth): where the
# kernels' partial sums can reach it before a final small factor, S is inf (no bound is claimed).
_PARTIAL_MAX = 1e38


# --------------------------------------------------------------------------- blocks over several Q8_0 blocks
#
# "per 32 chained" (Q1_0: 4 Q8_0 blocks a weight block, Q2_0: 2):
#          sumi_f = 0; for k: sumi_f = sumi_f + f(sumi_k) * d_y[k];   sumf = sumf + d * sumi_f
# "per 16" (NVFP4: a UE4M3 scale per 16 values, against half a Q8_0 block each):
#          for each sub-block s of 16: sumf = sumf + f(sumi_s) * (d_y[s/2] * d[s])
#
# (separate multiplies and adds in the build). NVFP4 and Q2_0 have no SIMD kernel on x86: the
# type traits hold the generic one.

def _nested_operands(w, qtype, qa):
    """-> (q (N, nu, U) int32 codes per unit of U values, dw (N, scales per row), aq (M, nu, U),
    da (M, nu * U / 32)), U the rule's (Q1_0: 32, NVFP4: 16), q and dw from the format's decoder."""
    U = NESTED_RULES[_rule(qtype)]
    N, M = w.shape[0], qa.shape[0]
    ops = vec_dot_of(qtype).decode(w)
    q, dw = ops["q"].reshape(N, -1, U), ops["d"].reshape(N, -1)
    ab = decode_activation_blocks(qa, "Q8_0")
    aq = ab["q"].reshape(M, -1, U)
    if aq.shape[1] != q.shape[1]:
        raise InputError(f"{get_format(qtype).name} vec_dot: weight rows have {q.shape[1] * U} values, "
                         f"activation rows {aq.shape[1] * U}")
    return q, dw, aq, ab["d"]


def combine_nested(qtype, q, dw, aq, da) -> np.ndarray:
    """The rule's float32 steps over the units' exact integer dots -> (M, N)."""
    sums = np.einsum("mup,nup->mnu", aq.astype(np.int64), q.astype(np.int64)).astype(np.int32)   # exact
    M, N, nu = sums.shape
    U = q.shape[2]
    sumf = np.zeros((M, N), dtype=F32)
    with np.errstate(all="ignore"):
        if U == 32:   # per 32 chained: a weight block over k Q8_0 blocks (Q1_0: 4)
            k_per = nu // dw.shape[1]
            for b in range(dw.shape[1]):
                si = np.zeros((M, N), dtype=F32)
                for k in range(k_per):                                     # sumi += d1 * sumi_block
                    si = (si + _to_f32(sums[:, :, k_per * b + k]) * da[:, None, k_per * b + k]).astype(F32)
                sumf = (sumf + dw[None, :, b] * si).astype(F32)            # sumf += d0 * sumi
        else:         # per 16: every sub-block its own scale, against half a Q8_0 block
            for u in range(nu):
                dd = da[:, None, u * U // QK] * dw[None, :, u]             # dy * d
                sumf = (sumf + _to_f32(sums[:, :, u]) * dd).astype(F32)
    return sumf


def exact_nested_dot(qtype, q, dw, aq, da):
    """(R, S) as for the legacy types: every scale product exact in float64 (11 + 11 bits; NVFP4's
    UE4M3 has 4)."""
    sums = np.einsum("mup,nup->mnu", aq.astype(np.int64), q.astype(np.int64)).astype(np.float64)
    mags = np.einsum("mup,nup->mnu", np.abs(aq).astype(np.int64), np.abs(q).astype(np.int64)).astype(np.float64)
    nu = sums.shape[2]
    dwu = np.repeat(dw, nu // dw.shape[1], axis=1)                           # per unit
    dau = np.repeat(da, max(1, nu // da.shape[1]), axis=1)
    with np.errstate(all="ignore"):
        dd = dwu.astype(np.float64)[None, :, :nu] * dau.astype(np.float64)[:, None, :nu]
        R = (dd * sums).sum(axis=2)
        S = (np.abs(dd) * mags).sum(axis=2)
    return R, S


def k_rounding_depth(qtype, nblocks: int) -> int:
    """The most float32 roundings any product passes through, over the generic kernel and the
    AVX2 kernel ggml-cpu selects (spec/ggml/dot.md draws each path):

      Q2_K  AVX2: d (1), f(lane) (1), 2 nb fmas (mins and scales share the 8 lanes), 3 tree
            levels -> 2 nb + 5; generic: nb + 3.
      Q3_K, Q6_K  generic: d (1), f(lane) (1), product (1), nb adds, 8 final adds -> nb + 11;
            AVX2: nb + 5.
      Q4_K, Q5_K  generic: d (1), f(lane) (1), nb fmas, 8 final adds -> nb + 10; AVX2: nb + 6
            (one more add of the separate mins sum).
      TQ1_0, TQ2_0  generic: d (1), product (1), nb adds -> nb + 2; AVX2: d (1), f(lane) (1; its
            lanes hold unsigned codes minus bsums), product (1), nb adds, 3 tree levels -> nb + 6.
      IQ4_XS  generic: d4d8 (1), * (ls - 32) (1), product (1), 8 nb adds -> 8 nb + 3; AVX2:
            nb + 5 (the sub-block scales are multiplied in as integers).
      IQ2_XXS .. IQ3_S  generic: d (1), f(bsum) (1: |bsum| can pass 2^24), product (1), nb adds
            -> nb + 3, then the exact power-of-two factor; AVX2: d, f(lane), nb fmas, 3 -> nb + 5.
      IQ1_S, IQ1_M  generic: d (1), f (1), inner fma (1), nb fmas -> nb + 3; AVX2: d (1), f (1),
            nb fmas, 3 tree levels, the final add of the separately summed delta part (1) -> nb + 6."""
    return {Q2_K_RULE: 2 * nblocks + 5, LANES_MUL_ADD: nblocks + 11, LANES_FMA: nblocks + 10,
            TERNARY: nblocks + 6, PER_32: 8 * nblocks + 3, LATTICE_RULE: nblocks + 5,
            **{r: nblocks + 6 for r in IQ1_RULES}}[_rule(qtype)]


# --------------------------------------------------------------------------- bounds

def exact_quantized_dot(w: np.ndarray, qtype, qa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, S): the exact value of what steps 2-3 approximate, R = sum_b dw*da*sumi_b (+ mw*sa),
    in float64 (every product exact: 11+11+17 bits), and S = sum_b |dw*da| sum_j |qw*qa| (+ |mw*sa|),
    the magnitude the float error is proportional to. Each is a float64 sum of nb terms, with
    relative error at most nb * 2^-53 of S. K-quants: see exact_k_dot."""
    vt = vec_dot_type(qtype)
    if vt == "Q8_K":
        return exact_k_dot(w, qtype, qa)
    if _rule(qtype) in NESTED_RULES:
        return exact_nested_dot(qtype, *_nested_operands(w, qtype, qa))
    wb = decode_weight_blocks(w, qtype)
    ab = decode_activation_blocks(qa, vt)
    _same_blocks(qtype, wb, ab)
    sumi = block_dots(wb["q"], ab["q"]).astype(np.float64)
    with np.errstate(all="ignore"):
        return _exact(wb, ab, sumi)


def _exact(wb, ab, sumi):
    absi = np.einsum("mbj,nbj->mnb", np.abs(ab["q"]).astype(np.int64), np.abs(wb["q"]).astype(np.int64)).astype(np.float64)
    dd = wb["d"].astype(np.float64)[None, :, :] * ab["d"].astype(np.float64)[:, None, :]
    R = (dd * sumi).sum(axis=2)
    S = (np.abs(dd) * absi).sum(axis=2)
    # MXFP4's 2^(e-128) times an fp16 can leave float32's range: no relative bound there
    S = np.where((np.abs(dd) > np.finfo(F32).max).any(axis=2), np.inf, S)
    if "m" in wb:
        ms = wb["m"].astype(np.float64)[None, :, :] * ab["s"].astype(np.float64)[:, None, :]
        R = R + ms.sum(axis=2)
        S = S + np.abs(ms).sum(axis=2)
    return R, S


def simd_error_bound(qtype, nblocks: int, S: np.ndarray) -> np.ndarray:
    """A bound on |Y - R| for ANY of the combination orders above (generic or the AVX2 kernels):
    gamma(k) * S with k = nb + 5 float32 roundings on the longest path of the sum tree
    (1 for dw*da, nb for the lane/chain accumulation, 3 for the 8-lane tree sum, 1 for the
    separate offset sum's product or the final add -- see spec/ggml/dot.md), plus the float64
    reference's own error nb * 2^-53 * S. K-quants: k from `k_rounding_depth`, the float64
    term for 2 nb terms, and an absolute term for underflow (Q8_K's float32 d can make
    dw*da subnormal): every float32 product or fma may lose up to 2^-150 there, at most
    16 per super-block (2 scale products, 8 + 4 lane fmas), each carried at most (1 + gamma)."""
    from ..gemm import gamma
    rule = _rule(qtype)
    if rule in NESTED_RULES:
        # per 32 chained, Q1_0's AVX2: d_y * s (1), 3 fmas, the outer fma chain (nb), 3 tree levels
        # -> nb + 7 (generic: 1 + 4 adds + 1 + nb = nb + 6). Per 16 (NVFP4, generic only): dd (1),
        # product (1), 4 nb adds.
        k = nblocks + 7 if NESTED_RULES[rule] == 32 else 4 * nblocks + 2
        return (gamma(k, np.float32) + gamma(4 * nblocks + 1, np.float64)) * S + 8 * nblocks * 2.0 ** -149
    if vec_dot_type(qtype) == "Q8_K":
        k = k_rounding_depth(qtype, nblocks)
        return ((gamma(k, np.float32) + gamma(2 * nblocks + 1, np.float64)) * S
                + 16 * nblocks * 2.0 ** -149)
    # MXFP4's scale reaches 2^-128: its products can underflow (absolute 2^-150 each, <= 2 per block)
    return gamma(nblocks + 5, np.float32) * S + gamma(nblocks + 1, np.float64) * S + 2 * nblocks * 2.0 ** -149
