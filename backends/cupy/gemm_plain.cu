// The float32 CUDA-core GEMMs the backend claims for refquant/gemm.py's "W4A16" and "FP8":
// every product and sum one IEEE round-to-nearest operation (__fmul_rn / __fadd_rn, and the
// module is compiled with -fmad=false), in the order spec/backends/cupy.md states:
//   w4a16_plain  per output, each group's terms a * (q - z) summed sequentially, the group sum
//                times its scale added to a sequential total: order "blocked", block = G.
//   fp8_plain    8 strided lanes inside each 128-column block, tree (0+4, 1+5, 2+6, 3+7, then
//                pairs), block sum times its scale added to a sequential total: "blocked_lanes".
// One thread per output: these are the conformance paths, not the fast ones (gemm.cu).
#include "common.cuh"

// ------------------------------------------------------------------------------------ W4A16 plain
// ap (M, K) activations with columns in group order; codes (N, K) in the same column order;
// scales, zeros (N, ng); gstart (nblk + 1) the boundaries of the groups in that order, gid their
// group numbers. One thread per output.
extern "C" __global__ void w4a16_plain(const float* __restrict__ ap, const uint8_t* __restrict__ codes,
                                       const float* __restrict__ scales, const uint8_t* __restrict__ zeros,
                                       const long long* __restrict__ gstart, const long long* __restrict__ gid,
                                       int nblk, int M, int N, int K, int ng, float* __restrict__ out) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)M * N) return;
    int m = (int)(t / N), n = (int)(t % N);
    const float* a = ap + (long long)m * K;
    const uint8_t* c = codes + (long long)n * K;
    float tot = 0.0f;
    for (int b = 0; b < nblk; ++b) {
        int g = (int)gid[b];
        float z = (float)zeros[(long long)n * ng + g];
        float acc = 0.0f;
        for (long long k = gstart[b]; k < gstart[b + 1]; ++k)
            acc = __fadd_rn(acc, __fmul_rn(a[k], __fsub_rn((float)c[k], z)));  // code - zero: exact
        tot = __fadd_rn(tot, __fmul_rn(acc, scales[(long long)n * ng + g]));
    }
    out[t] = tot;
}

// ------------------------------------------------------------------------------------ FP8 plain
__device__ __forceinline__ float e4m3_value(uint32_t c) {
    uint32_t s = (c & 0x80u) << 24, e = (c >> 3) & 0xFu, m = c & 7u;
    if (e == 0) return __uint_as_float(s | __float_as_uint(__fmul_rn((float)m, 0.001953125f)));  // m * 2^-9
    return __uint_as_float(s | ((e + 120u) << 23) | (m << 20));
}

// a (M, K) float32 activations (quant_a = 0) or e4m3 codes ac (M, K) with per-token scales sa
// (quant_a = 1); wc (N, K) codes; ws scales as (rows, kblocks): gran 0 tensor, 1 channel, 2 block.
extern "C" __global__ void fp8_plain(const float* __restrict__ a, const uint8_t* __restrict__ ac,
                                     const float* __restrict__ sa, int quant_a, const uint8_t* __restrict__ wc,
                                     const float* __restrict__ wsc, int gran, int M, int N, int K,
                                     float* __restrict__ out) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)M * N) return;
    int m = (int)(t / N), n = (int)(t % N);
    int nkb = (K + 127) / 128;
    const uint8_t* w = wc + (long long)n * K;
    float total = 0.0f;
    for (int kb = 0; kb < nkb; ++kb) {
        int k0 = kb * 128, k1 = min(K, k0 + 128);
        float s = gran == 0 ? wsc[0] : gran == 1 ? wsc[n] : wsc[(n / 128) * nkb + kb];
        float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int k = k0;
        if (quant_a) {
            s = __fmul_rn(sa[m], s);
            const uint8_t* x = ac + (long long)m * K;
            for (; k + 8 <= k1; k += 8)
#pragma unroll
                for (int j = 0; j < 8; ++j) l[j] = __fadd_rn(l[j], __fmul_rn(e4m3_value(x[k + j]), e4m3_value(w[k + j])));
            for (; k < k1; ++k) l[0] = __fadd_rn(l[0], __fmul_rn(e4m3_value(x[k]), e4m3_value(w[k])));
        } else {
            const float* x = a + (long long)m * K;
            for (; k + 8 <= k1; k += 8)
#pragma unroll
                for (int j = 0; j < 8; ++j) l[j] = __fadd_rn(l[j], __fmul_rn(x[k + j], e4m3_value(w[k + j])));
            for (; k < k1; ++k) l[0] = __fadd_rn(l[0], __fmul_rn(x[k], e4m3_value(w[k])));
        }
        float b0 = __fadd_rn(l[0], l[4]), b1 = __fadd_rn(l[1], l[5]);
        float b2 = __fadd_rn(l[2], l[6]), b3 = __fadd_rn(l[3], l[7]);
        float blk = __fadd_rn(__fadd_rn(b0, b2), __fadd_rn(b1, b3));
        total = __fadd_rn(total, __fmul_rn(blk, s));
    }
    out[t] = total;
}
