"""Hadamard rotations as compressed-tensors 0.20.1 builds and fuses them (its transforms:
`hadamard`, `random-hadamard`; llm-compressor's QuIP / SpinQuant modifiers use them).

Constructions (compressed_tensors.transform.utils.hadamard), as integer ±1 matrices H (n, n),
normalised only where applied (÷ √n):

    hadamard         Sylvester's construction, n a power of two:
                     H_1 = [1], H_2m = [[H_m, H_m], [H_m, −H_m]]
    random-hadamard  diag(Q) run through QuaRot's fast transform (_matmul_hadU):
                     Q_i = 2·(r_i mod 2) − 1, r_i the i-th 32-bit output of torch's CPU generator
                     (MT19937, seeded as torch.Generator().manual_seed(seed) seeds it: the
                     standard init_genrand of seed mod 2^32) — torch.randint(0, 2) takes one
                     32-bit draw an element, r mod 2;
                     then, with K the largest order in its table of known Hadamard matrices
                     (N. J. A. Sloane's library, hadamards.safetensors) such that n/K is a power
                     of two: each row x of diag(Q) (length n, as a column) is butterflied
                     while its length exceeds K: pairs (x_2i, x_2i+1) -> (x_2i + x_2i+1,
                     x_2i − x_2i+1), the halves regrouped; then H_K is applied on the left.
                     refquant does not ship that table: H_K is an input (`had_k`); without it,
                     n must be a power of two other than 32, whose table entry is Sylvester's
                     (the table's order-32 matrix is not; orders > 256 use its Sylvester 256).
                     A factory draws one sign vector per matrix size, in the order the sizes are
                     first met; a shared generator, so the second size's signs follow the
                     first's draws (`random_hadamards`).

Every entry stays an integer of magnitude <= n, so both constructions are exact in float64.

Offline fusing (HadamardTransform on a weight; fused rotations are always float64):

    weight_input     W' = (W · Hᵀ) / √n       (inverse: W · H / √n)
    weight_output    W' = (Hᵀ · W) / √n       (inverse: H · W / √n)
    with head_dim    H block-diagonal: the same H on every head_dim slice
    the product in float64 from W cast to float64, ÷ float64(√n), then cast to W's dtype
                     (float16 / bfloat16 through float32, as torch's casts from float64 go)

The products ±w are exact in float64 and a row's sum is exact whenever its partial sums are,
which holds when the row's nonzero values span at most 53 − 24 − ⌈log2 n⌉ binary orders
(float32; 53 − 8 − ⌈log2 n⌉ for bfloat16, 53 − 11 − ⌈log2 n⌉ for float16): then every
summation order, torch's BLAS included, gives the same sum, and refquant's result is bit for
bit compressed-tensors'. A row outside that bound is summed exactly (math.fsum, then one
rounding); there BLAS's float64 order may round differently (spec/rotations.md).

llama.cpp's attention rotation of the KV cache (float32 Walsh-Hadamard applied through ggml's
CPU mul_mat) is at the end of this module: llama_hadamard, llama_rotate.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .errors import InputError

LOCATIONS = ("weight_input", "weight_output")
_MANTISSA = {np.dtype(np.float32): 24, np.dtype(np.float16): 11}


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_size(n, who: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise InputError(f"{who}: the size must be a positive integer, got {n!r}")
    return int(n)


def deterministic_hadamard(n: int) -> np.ndarray:
    """Sylvester's H_n (int64), n a power of two (compressed-tensors' deterministic_hadamard_matrix)."""
    n = _check_size(n, "hadamard")
    if not _is_pow2(n):
        raise InputError(f"hadamard: Sylvester's construction needs a power of two, not {n}")
    H = np.ones((1, 1), np.int64)
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return H


def mt19937_uint32(seed: int, count: int) -> np.ndarray:
    """The first `count` 32-bit outputs of torch's CPU generator after manual_seed(seed): MT19937
    with init_genrand(seed mod 2^32) (NumPy's legacy seeding is the same init)."""
    bg = np.random.MT19937(0)
    bg._legacy_seeding(int(seed) & 0xFFFFFFFF)
    return bg.random_raw(int(count)).astype(np.uint32)


def random_signs(n: int, draws: np.ndarray) -> np.ndarray:
    """Q (int64, ±1) from n 32-bit draws: torch.randint(0, 2) is draw mod 2, then Q = 2q − 1."""
    return 2 * (np.asarray(draws[:n], np.int64) % 2) - 1


def _had_k(n: int, had_k: Optional[np.ndarray]) -> np.ndarray:
    if had_k is not None:
        h = np.asarray(had_k)
        K = h.shape[0]
        if h.ndim != 2 or h.shape != (K, K) or not np.isin(h, (-1, 1)).all():
            raise InputError(f"random-hadamard: had_k must be a square ±1 matrix, got shape {h.shape}")
        if n % K or not _is_pow2(n // K):
            raise InputError(f"random-hadamard: n = {n} is not a power of two times had_k's order {K}")
        return h.astype(np.int64)
    if not _is_pow2(n) or n == 32:
        raise InputError(f"random-hadamard of order {n} needs compressed-tensors' known Hadamard matrix for it "
                         f"(had_k): refquant builds only the power-of-two orders other than 32 (Sylvester's)")
    return deterministic_hadamard(min(n, 256))


def random_hadamard(n: int, signs: np.ndarray, had_k: Optional[np.ndarray] = None) -> np.ndarray:
    """compressed-tensors' random_hadamard_matrix (int64): diag(signs) through _matmul_hadU."""
    n = _check_size(n, "random-hadamard")
    q = np.asarray(signs, np.int64)
    if q.shape != (n,) or not np.isin(q, (-1, 1)).all():
        raise InputError(f"random-hadamard: signs must be {n} values of ±1")
    hk = _had_k(n, had_k)
    K = hk.shape[0]
    x = np.diag(q).reshape(n, n, 1)               # X.view(-1, size, 1): each row a column vector
    while x.shape[1] > K:
        B, m, c = x.shape
        x = x.reshape(B, m // 2, 2, c)
        a, b = x[:, :, 0, :], x[:, :, 1, :]
        x = np.stack([a + b, a - b], axis=2).reshape(B, m // 2, 2 * c)
    return np.matmul(hk[None, :, :], x).reshape(n, n)    # hadK @ input, viewed back to (n, n)


def known_hadamard(table, n: int) -> np.ndarray:
    """From a table of known Hadamard matrices {order: matrix} (compressed-tensors'
    hadamards.safetensors read as a mapping), the one _fetch_hadamard_divisor picks for order n:
    the largest order K with n % K == 0 and n / K a power of two."""
    orders = sorted((int(k) for k in table), reverse=True)
    for K in orders:
        if n % K == 0 and _is_pow2(n // K):
            return np.asarray(table[str(K)])
    raise InputError(f"random-hadamard: the table of known Hadamard matrices has none for order {n} "
                     f"(orders {sorted(orders)})")


def random_hadamards(sizes, seed: int, had_k: Optional[dict] = None) -> dict:
    """{size: H} for the sizes in the order a factory first meets them, one generator seeded
    with `seed` drawing each size's signs in turn (compressed-tensors' RandomHadamardFactory)."""
    out, used = {}, 0
    total = sum(dict.fromkeys(int(s) for s in sizes))
    draws = mt19937_uint32(seed, total)
    for s in dict.fromkeys(int(s) for s in sizes):
        out[s] = random_hadamard(s, random_signs(s, draws[used:used + s]), (had_k or {}).get(s))
        used += s
    return out


def _exact_rows(x64: np.ndarray, n: int, mant: int) -> np.ndarray:
    """Rows whose float64 partial sums of ±x over n terms are all exact (see the module)."""
    a = np.abs(x64)
    with np.errstate(divide="ignore"):
        e = np.where(a > 0, np.floor(np.log2(np.where(a > 0, a, 1.0))), np.nan)
    span = np.nanmax(e, axis=-1) - np.nanmin(e, axis=-1)
    span = np.where(np.isnan(span), 0, span)
    return span + mant + math.ceil(math.log2(max(n, 2))) <= 53


def _sum_products(A: np.ndarray, H: np.ndarray, mant: int) -> np.ndarray:
    """A (r, n) float64 times the ±1 matrix H (n, m), each output the exact sum of ±a, rounded
    once to float64."""
    out = A @ H.astype(np.float64)
    bad = ~_exact_rows(A, A.shape[1], mant)
    for i in np.flatnonzero(bad):
        for j in range(H.shape[1]):
            out[i, j] = math.fsum(A[i] * H[:, j])
    return out


def fuse(W: np.ndarray, H: np.ndarray, location: str, inverse: bool = False) -> np.ndarray:
    """W (out, in) with H (n, n) fused offline at `location` as HadamardTransform does on a
    torch.nn.Linear weight, in float64, then cast back to W's dtype. n may divide the dimension
    (head_dim): H then acts on each n-slice."""
    if location not in LOCATIONS:
        raise InputError(f"hadamard: offline location must be one of {LOCATIONS}, got {location!r}")
    W = np.asarray(W)
    H = np.asarray(H)
    n = H.shape[0]
    if W.ndim != 2 or H.shape != (n, n):
        raise InputError(f"hadamard: W must be a matrix and H square, got {W.shape}, {H.shape}")
    mant = _MANTISSA.get(W.dtype, 8 if W.dtype.itemsize == 2 else 53)
    T = H.T if inverse else H                        # weight = weight.T when inverse
    w64 = W.astype(np.float64)
    scale = np.sqrt(np.float64(n))
    if location == "weight_input":                   # value @ weight.T, per head slice
        N, Kd = w64.shape
        if Kd % n:
            raise InputError(f"hadamard: a size-{n} transform does not divide the {Kd} inputs")
        A = w64.reshape(N * (Kd // n), n)
        r = _sum_products(A, T.T, mant).reshape(N, Kd)
    else:                                            # weight.T @ value, per head slice
        N, Kd = w64.shape
        if N % n:
            raise InputError(f"hadamard: a size-{n} transform does not divide the {N} outputs")
        A = w64.reshape(N // n, n, Kd).transpose(0, 2, 1).reshape(-1, n)   # columns of each slice
        r = _sum_products(A, T, mant).reshape(N // n, Kd, n).transpose(0, 2, 1).reshape(N, Kd)
    r = r / scale
    if W.dtype.itemsize == 2:      # torch casts float64 to half / bfloat16 through float32
        r = r.astype(np.float32)
    return r.astype(W.dtype)


# ---- llama.cpp's attention rotation (llama-kv-cache.cpp, llama.cpp PR 21038) --------------------
#
# With a quantized K or V cache (and head sizes that are multiples of 64; off with
# LLAMA_ATTN_ROT_DISABLE=1) llama.cpp rotates Q and K before K is stored, V before it is stored,
# and rotates the attention output back: dot products and the output are unchanged, outliers are
# spread before quantization.
#
#     matrix       ggml_gen_hadamard: float32 (n, n), Sylvester's order,
#                  h[0][0] = (float)(1.0 / sqrtf(n)), each doubling copies it with signs ±
#     sizes        K: the largest power of two >= 64 dividing the head size; V: 64
#     application  ggml_mul_mat_aux(cur, rot): cur viewed as rows of n, each row x -> y with
#                  y_i = ggml_vec_dot_f32(n, rot row i, x) (rot is symmetric; H·H = I)
#
# ggml_vec_dot_f32 on x86 (ggml-cpu/vec.cpp, GGML_SIMD): ARR = 4 accumulators of EPR lanes
# (EPR = 16 with AVX-512, 8 with AVX2), over chunks of STEP = 4·EPR: acc[j] = fma(x, y, acc[j]);
# then GGML_F32_VEC_REDUCE: acc[0] += acc[2], acc[1] += acc[3]; acc[0] += acc[1]; then the lanes:
# AVX-512 _mm512_reduce_add_ps (halves: 16 -> 8 -> 4 -> 2 -> 1), AVX2 lo128 + hi128 then two
# _mm_hadd_ps ((t0 + t1) + (t2 + t3)); elements past the last full STEP are added after, one by
# one (never for n a multiple of 64).

def llama_hadamard(n: int) -> np.ndarray:
    """ggml_gen_hadamard's float32 matrix of order n (a power of two)."""
    H = deterministic_hadamard(n)
    c = np.float32(1.0 / np.float64(np.sqrt(np.float32(n), dtype=np.float32)))   # 1.0 / sqrtf(n)
    return (H * c).astype(np.float32)


def llama_k_nrot(head_dim: int) -> int:
    """build_input_k_rot's size: the largest power of two >= 64 that divides head_dim."""
    nrot = 64
    while head_dim % (nrot * 2) == 0:
        nrot *= 2
    return nrot


LLAMA_V_NROT = 64


def _reduce_lanes(v: np.ndarray, isa: str) -> np.ndarray:
    F = np.float32
    if isa == "avx512":                   # _mm512_reduce_add_ps: 512 -> 256 -> 128 -> 64 -> 32
        v = (v[..., :8] + v[..., 8:]).astype(F)
        v = (v[..., :4] + v[..., 4:]).astype(F)
        v = (v[..., :2] + v[..., 2:]).astype(F)
        return (v[..., 0] + v[..., 1]).astype(F)
    t0 = (v[..., :4] + v[..., 4:]).astype(F)           # castps256_ps128 + extractf128(.., 1)
    t1 = (t0[..., 0] + t0[..., 1]).astype(F), (t0[..., 2] + t0[..., 3]).astype(F)   # hadd
    return (t1[0] + t1[1]).astype(F)                    # hadd, lane 0


def ggml_vec_dot_f32(a: np.ndarray, b: np.ndarray, isa: str) -> np.ndarray:
    """ggml_vec_dot_f32 of the rows of a (..., n) and b (..., n), broadcast, in its SIMD order."""
    from .numerics import fma_f32
    if isa not in ("avx512", "avx2"):
        raise InputError(f"ggml_vec_dot_f32: isa must be avx512 or avx2, got {isa!r}")
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    n = a.shape[-1]
    epr = 16 if isa == "avx512" else 8
    step = 4 * epr
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    acc = [np.zeros(shape + (epr,), np.float32) for _ in range(4)]
    np_ = n - n % step
    for i in range(0, np_, step):
        for j in range(4):
            sl = slice(i + j * epr, i + (j + 1) * epr)
            acc[j] = fma_f32(a[..., sl], b[..., sl], acc[j])
    acc[0] = (acc[0] + acc[2]).astype(np.float32)
    acc[1] = (acc[1] + acc[3]).astype(np.float32)
    s = _reduce_lanes((acc[0] + acc[1]).astype(np.float32), isa)
    for i in range(np_, n):                                 # sumf += x[i]*y[i]
        s = (s + (a[..., i] * b[..., i]).astype(np.float32)).astype(np.float32)
    return s


def llama_rotate(x: np.ndarray, nrot: int, isa: str) -> np.ndarray:
    """x (..., d) float32, d a multiple of nrot, rotated as llama.cpp's ggml_mul_mat_aux does
    with ggml_gen_hadamard(nrot) on ggml's CPU backend."""
    x = np.asarray(x, np.float32)
    if x.shape[-1] % nrot:
        raise InputError(f"llama rotation: the last dimension {x.shape[-1]} is not a multiple of {nrot}")
    H = llama_hadamard(nrot)
    rows = x.reshape(-1, nrot)
    out = ggml_vec_dot_f32(H[None, :, :], rows[:, None, :], isa)    # out[r, i] = dot(H row i, x_r)
    return out.reshape(x.shape)
