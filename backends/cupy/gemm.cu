// Quantized GEMMs of refquant/gemm.py: Y (M, N) float32 = A (M, K) @ W^T.
//
// Kernels (the claimed float32 paths w4a16_plain and fp8_plain are in gemm_plain.cu):
//   w4a16_fused    mma.sync m16n8k16 (fp16 x fp16 -> fp32) for float16 activations, int4 weights
//                  unpacked to fp16 (q - z, exact small integers) in registers, never stored.
//                  Group sums are scaled in float32 per group; split-K partials go to a workspace
//                  summed in split order by splitk_reduce.
//   q4k_fused      the same for Q4_K super-blocks: per sub-block of 32, d1 * sum(a q) - m1 * sum(a).
// Compiled with -fmad=false; __fmul_rn / __fadd_rn mark the roundings the stated order counts.
#include "common.cuh"

// ------------------------------------------------------------------------------------ mma helpers
__device__ __forceinline__ void mma_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two 4-bit codes (bits 0-3 and 16-19 of w) -> half2 of (q - z): 1024 + q by exponent trick,
// minus (1024 + z), exact (integers below 2048).
__device__ __forceinline__ uint32_t int4_pair_to_half2(uint32_t w, uint32_t zz) {
    uint32_t h = (w & 0x000F000Fu) | 0x64006400u;
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&h), *reinterpret_cast<__half2*>(&zz));
    return *reinterpret_cast<uint32_t*>(&r);
}

// A fragment of m16n8k16 (row-major A, fp16): rows r0 = lane/4 and r0 + 8, columns 2t, 2t+1,
// 2t+8, 2t+9 (t = lane % 4) of the k16 step at column k. Rows >= M read as zero.
__device__ __forceinline__ void load_a(uint32_t* a, const __half* __restrict__ A, int M, int K, int m0, int k,
                                       int lane) {
    int r0 = m0 + (lane >> 2), r1 = r0 + 8, cc = k + 2 * (lane & 3);
    const uint32_t* A32 = reinterpret_cast<const uint32_t*>(A);
    a[0] = r0 < M ? __ldg(A32 + (((long long)r0 * K + cc) >> 1)) : 0u;
    a[1] = r1 < M ? __ldg(A32 + (((long long)r1 * K + cc) >> 1)) : 0u;
    a[2] = r0 < M ? __ldg(A32 + (((long long)r0 * K + cc + 8) >> 1)) : 0u;
    a[3] = r1 < M ? __ldg(A32 + (((long long)r1 * K + cc + 8) >> 1)) : 0u;
}

// ------------------------------------------------------------------------------------ W4A16 fused
// Packed weight layout ("mma-packed", built on the host by backends/cupy/gemm.py pack_w4a16):
//   word[((tile * (K/32) + kk) * 32 + lane)] for n-tile `tile` (8 columns), k-step kk (32 columns)
//   holds, for column n = 8 tile + lane/4 and t = lane % 4, the 8 codes at columns
//   32 kk + {2t, 2t+1, 2t+8, 2t+9, 16+2t, 16+2t+1, 16+2t+8, 16+2t+9} in nibbles
//   {0, 4, 1, 5, 2, 6, 3, 7}: each half2 pair (nibbles i, i+4 -> bits 4i and 16+4i) is one B
//   register of m16n8k16, so one 32-bit load per lane feeds two mma steps.
// Columns are in group order (act-order applied on the host to the activations' columns).
// Each warp: 16 rows x NT*8 columns, over the groups [g0, g1) of its split; partial sums go to
// ws[split, M, N] (or straight to out when there is one split).
#define W4_NT 4
#define W4_KU 4
extern "C" __global__ void __launch_bounds__(128, 3)
w4a16_fused(const __half* __restrict__ A, const uint32_t* __restrict__ Wp, const float* __restrict__ scales,
            const uint8_t* __restrict__ zeros, const int* __restrict__ gorder, int M, int N, int K, int ng,
            int G, int splits, float* __restrict__ ws) {
    int lane = threadIdx.x & 31;
    int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int ntiles = N / (8 * W4_NT), mtiles = (M + 15) / 16;
    if (warp >= ntiles * mtiles * splits) return;
    int nt = warp % ntiles, rest = warp / ntiles, mt = rest % mtiles, split = rest / mtiles;
    int g0 = (int)((long long)split * ng / splits), g1 = (int)((long long)(split + 1) * ng / splits);
    int KK = K / 32, t = lane & 3, q = lane >> 2;
    float tot[W4_NT][4];
#pragma unroll
    for (int j = 0; j < W4_NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) tot[j][e] = 0.0f;
    for (int gi = g0; gi < g1; ++gi) {
        int g = gorder[gi];                      // the group number of the gi-th group in order
        float acc[W4_NT][4];
        uint32_t zz[W4_NT];
#pragma unroll
        for (int j = 0; j < W4_NT; ++j) {
            int n = (nt * W4_NT + j) * 8 + q;
            uint32_t hb = 0x6400u | zeros[(long long)n * ng + g];   // fp16 bits of 1024 + z
            zz[j] = hb | (hb << 16);
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
        }
        // KU k-steps at a time: all their weight words are loaded before the first mma, so
        // each warp keeps W4_NT * KU * 128 bytes in flight (memory-bound at small M).
        int k = gi * G, kend = (gi + 1) * G;
        for (; k + 32 * W4_KU <= kend; k += 32 * W4_KU) {
            uint32_t w[W4_KU][W4_NT];
#pragma unroll
            for (int u = 0; u < W4_KU; ++u)
#pragma unroll
                for (int j = 0; j < W4_NT; ++j)
                    w[u][j] = __ldg(Wp + ((long long)(nt * W4_NT + j) * KK + k / 32 + u) * 32 + lane);
#pragma unroll
            for (int u = 0; u < W4_KU; ++u) {
                uint32_t a0[4], a1[4];
                load_a(a0, A, M, K, mt * 16, k + 32 * u, lane);
                load_a(a1, A, M, K, mt * 16, k + 32 * u + 16, lane);
#pragma unroll
                for (int j = 0; j < W4_NT; ++j) {
                    mma_16816(acc[j], a0, int4_pair_to_half2(w[u][j], zz[j]), int4_pair_to_half2(w[u][j] >> 4, zz[j]));
                    mma_16816(acc[j], a1, int4_pair_to_half2(w[u][j] >> 8, zz[j]), int4_pair_to_half2(w[u][j] >> 12, zz[j]));
                }
            }
        }
        for (; k < kend; k += 32) {               // groups that are not a multiple of 32 * W4_KU
            uint32_t w[W4_NT];
#pragma unroll
            for (int j = 0; j < W4_NT; ++j)
                w[j] = __ldg(Wp + ((long long)(nt * W4_NT + j) * KK + k / 32) * 32 + lane);
            uint32_t a0[4], a1[4];
            load_a(a0, A, M, K, mt * 16, k, lane);
            load_a(a1, A, M, K, mt * 16, k + 16, lane);
#pragma unroll
            for (int j = 0; j < W4_NT; ++j) {
                mma_16816(acc[j], a0, int4_pair_to_half2(w[j], zz[j]), int4_pair_to_half2(w[j] >> 4, zz[j]));
                mma_16816(acc[j], a1, int4_pair_to_half2(w[j] >> 8, zz[j]), int4_pair_to_half2(w[j] >> 12, zz[j]));
            }
        }
        // C fragment: rows q, q + 8; columns 2t, 2t + 1 of the n-tile
#pragma unroll
        for (int j = 0; j < W4_NT; ++j) {
            int n = (nt * W4_NT + j) * 8 + 2 * t;
            float s0 = scales[(long long)n * ng + g], s1 = scales[(long long)(n + 1) * ng + g];
            tot[j][0] = __fadd_rn(tot[j][0], __fmul_rn(acc[j][0], s0));
            tot[j][1] = __fadd_rn(tot[j][1], __fmul_rn(acc[j][1], s1));
            tot[j][2] = __fadd_rn(tot[j][2], __fmul_rn(acc[j][2], s0));
            tot[j][3] = __fadd_rn(tot[j][3], __fmul_rn(acc[j][3], s1));
        }
    }
    float* o = ws + (long long)split * M * N;
#pragma unroll
    for (int j = 0; j < W4_NT; ++j) {
        int n = (nt * W4_NT + j) * 8 + 2 * t, r0 = mt * 16 + q, r1 = r0 + 8;
        if (r0 < M) { o[(long long)r0 * N + n] = tot[j][0]; o[(long long)r0 * N + n + 1] = tot[j][1]; }
        if (r1 < M) { o[(long long)r1 * N + n] = tot[j][2]; o[(long long)r1 * N + n + 1] = tot[j][3]; }
    }
}

// Split-K partials summed in split order: out = ((ws[0] + ws[1]) + ws[2]) + ...
extern "C" __global__ void splitk_reduce(const float* __restrict__ ws, int splits, long long MN,
                                         float* __restrict__ out) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= MN) return;
    float s = ws[i];
    for (int p = 1; p < splits; ++p) s = __fadd_rn(s, ws[p * MN + i]);
    out[i] = s;
}

// ------------------------------------------------------------------------------------ Q4_K fused
// Weights as the Q4_K rows themselves (N rows of K/256 blocks of 144 bytes; sizes and offsets
// RQ_Q4_K_* generated from the layout in front of this source at compile time): for sub-block s
// of 32 values, chunk c = s / 2, the codes are the low (s even) or high (s odd) nibbles of
// qs[32c .. 32c + 31]. Each lane gathers its B-fragment codes from those bytes. Per sub-block:
// P = sum a * q (mma, exact fp16 integer codes) and Sa = sum a (mma against ones), then
// tot += d1 * P - m1 * Sa in float32 (d1 = d * sc, m1 = dmin * m as the spec rounds them).
__device__ __forceinline__ uint32_t pack_h2(int lo, int hi) {
    __half2 h = __halves2half2(__int2half_rn(lo), __int2half_rn(hi));
    return *reinterpret_cast<uint32_t*>(&h);
}

extern "C" __global__ void __launch_bounds__(128)
q4k_fused(const __half* __restrict__ A, const uint8_t* __restrict__ Wq, int M, int N, int K, int splits,
          float* __restrict__ ws) {
    int lane = threadIdx.x & 31;
    int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int ntiles = N / 8, mtiles = (M + 15) / 16, nsb = K / RQ_Q4_K_BLOCK_SIZE;
    if (warp >= ntiles * mtiles * splits) return;
    int nt = warp % ntiles, rest = warp / ntiles, mt = rest % mtiles, split = rest / mtiles;
    int b0 = (int)((long long)split * nsb / splits), b1 = (int)((long long)(split + 1) * nsb / splits);
    int t = lane & 3, q = lane >> 2;
    int nb = nt * 8 + q;                           // the B-fragment column of this lane
    const uint8_t* row = Wq + (long long)nb * nsb * RQ_Q4_K_TYPE_SIZE;
    uint32_t ones = 0x3C003C00u;                  // half2(1, 1)
    float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int blk = b0; blk < b1; ++blk) {
        const uint8_t* b = row + (long long)blk * RQ_Q4_K_TYPE_SIZE;
        for (int s = 0; s < 8; ++s) {
            int c = s >> 1, sh = (s & 1) * 4;
            float P[4] = {0, 0, 0, 0}, Sa[4] = {0, 0, 0, 0};
#pragma unroll
            for (int h = 0; h < 2; ++h) {       // two k16 steps per sub-block of 32
                int kb = 16 * h + 2 * t;
                const uint8_t* qs = b + RQ_Q4_K_QS + 32 * c;
                uint32_t b0r = pack_h2((qs[kb] >> sh) & 0xF, (qs[kb + 1] >> sh) & 0xF);
                uint32_t b1r = pack_h2((qs[kb + 8] >> sh) & 0xF, (qs[kb + 9] >> sh) & 0xF);
                uint32_t a[4];
                load_a(a, A, M, K, mt * 16, blk * RQ_Q4_K_BLOCK_SIZE + 32 * s + 16 * h, lane);
                mma_16816(P, a, b0r, b1r);
                mma_16816(Sa, a, ones, ones);
            }
            // C columns 2t, 2t+1: their scales come from those columns' own blocks
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const uint8_t* bc = Wq + ((long long)(nt * 8 + 2 * t + e) * nsb + blk) * RQ_Q4_K_TYPE_SIZE;
                const uint8_t* sc8 = bc + RQ_Q4_K_SCALES;
                int scv, mv;
                if (s < 4) { scv = sc8[s] & 63; mv = sc8[s + 4] & 63; }
                else { scv = (sc8[s + 4] & 0xF) | ((sc8[s - 4] >> 6) << 4); mv = (sc8[s + 4] >> 4) | ((sc8[s] >> 6) << 4); }
                float d1 = __fmul_rn(rq_fp16(rq_u16(bc + RQ_Q4_K_D)), (float)scv);
                float m1 = __fmul_rn(rq_fp16(rq_u16(bc + RQ_Q4_K_DMIN)), (float)mv);
                tot[e] = __fadd_rn(tot[e], __fsub_rn(__fmul_rn(d1, P[e]), __fmul_rn(m1, Sa[e])));
                tot[e + 2] = __fadd_rn(tot[e + 2], __fsub_rn(__fmul_rn(d1, P[e + 2]), __fmul_rn(m1, Sa[e + 2])));
            }
        }
    }
    float* o = ws + (long long)split * M * N;
    int n = nt * 8 + 2 * t, r0 = mt * 16 + q, r1 = r0 + 8;
    if (r0 < M) { o[(long long)r0 * N + n] = tot[0]; o[(long long)r0 * N + n + 1] = tot[1]; }
    if (r1 < M) { o[(long long)r1 * N + n] = tot[2]; o[(long long)r1 * N + n + 1] = tot[3]; }
}

