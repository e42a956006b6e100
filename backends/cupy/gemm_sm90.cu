// FP8 e4m3 x e4m3 GEMM through wgmma (sm_90a only; guarded by __CUDA_ARCH_FEAT_SM90_ALL, other
// architectures compile an empty body and the launcher uses fp8_plain of gemm.cu).
//
// Y (M, N) = (A_codes * sa[m]) @ (W_codes * sw)^T with per-token activation scales sa and
// weight scales sw per tensor, per channel or per 128x128 block.
// One CTA = one warpgroup (128 threads) computing a 64 x 64 output tile. K is walked in
// chunks of 128, two shared-memory stages deep (cp.async of chunk kb + 1 overlaps the wgmma of
// chunk kb): the A (64 x 128) and W (64 x 128) chunks are copied to shared memory in the
// no-swizzle K-major core-matrix layout (core matrix = 8 rows x 16 bytes; core (rg, kc) at byte
// (rg * 8 + kc) * 128), then four wgmma m64n64k32 accumulate into FRESH registers, and the
// chunk's result is promoted: tot += acc * (sa[m] * s_w(n, chunk)) in float32. So the tensor
// core's reduced-precision accumulation (about 14 bits on Hopper for FP8) never spans more than
// 128 columns of K. K and N must be multiples of 128 and 64 here (the launcher checks).
#include "common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
    uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    uint64_t d = 0;
    d |= (uint64_t)((a >> 4) & 0x3FFF);
    d |= (uint64_t)((lbo >> 4) & 0x3FFF) << 16;
    d |= (uint64_t)((sbo >> 4) & 0x3FFF) << 32;
    return d;                                  // bits 62-63 = 0: no swizzle
}

__device__ __forceinline__ void wgmma_64x64x32(float* d, uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(scale_d));
}

// 64 rows x 128 bytes of a row-major (rows, K) byte matrix -> the core-matrix layout, by
// 16-byte cp.async copies (rows past the end are zero-filled: src-size 0).
__device__ __forceinline__ void load_chunk_async(uint8_t* s, const uint8_t* __restrict__ g, int rows, int r0,
                                                 int K, int k0) {
    for (int i = threadIdx.x; i < 64 * 8; i += blockDim.x) {       // 16-byte pieces
        int r = i >> 3, kc = i & 7;
        bool ok = r0 + r < rows;
        const uint8_t* src = g + (long long)(ok ? r0 + r : 0) * K + k0 + 16 * kc;
        uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(s + (((r >> 3) * 8 + kc) * 8 + (r & 7)) * 16));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0)
                     : "memory");
    }
}
#endif

extern "C" __global__ void __launch_bounds__(128, 1)
fp8_wgmma(const uint8_t* __restrict__ ac, const float* __restrict__ sa, const uint8_t* __restrict__ wc,
          const float* __restrict__ wsc, int gran, int M, int N, int K, float* __restrict__ out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __shared__ __align__(128) uint8_t sA[2][64 * 128];
    __shared__ __align__(128) uint8_t sB[2][64 * 128];
    int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int nkb = K / 128;
    float tot[32], acc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) tot[i] = 0.0f;
    // two stages: chunk kb + 1 is in flight (cp.async) while chunk kb is multiplied
    load_chunk_async(sA[0], ac, M, m0, K, 0);
    load_chunk_async(sB[0], wc, N, n0, K, 0);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    for (int kb = 0; kb < nkb; ++kb) {
        int cur = kb & 1;
        if (kb + 1 < nkb) {
            load_chunk_async(sA[cur ^ 1], ac, M, m0, K, (kb + 1) * 128);
            load_chunk_async(sB[cur ^ 1], wc, N, n0, K, (kb + 1) * 128);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        asm volatile("cp.async.wait_group 1;\n" ::: "memory");       // chunk kb has landed
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int s = 0; s < 4; ++s)
            wgmma_64x64x32(acc, smem_desc(sA[cur] + 2 * s * 128, 128, 1024), smem_desc(sB[cur] + 2 * s * 128, 128, 1024), 1);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        // promotion: accumulator fragment i of this lane is row 16 warp + lane/4 + 8 ((i/2) % 2),
        // column 8 (i/4) + 2 (lane % 4) + i % 2
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            int r = m0 + 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1);
            int c = n0 + 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
            float sw = gran == 0 ? wsc[0] : gran == 1 ? wsc[min(c, N - 1)] : wsc[(min(c, N - 1) / 128) * nkb + kb];
            float s = __fmul_rn(sa[min(r, M - 1)], sw);
            tot[i] = __fadd_rn(tot[i], __fmul_rn(acc[i], s));
        }
        __syncthreads();                      // every warp's wgmma has read stage `cur` before it is refilled
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        int r = m0 + 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1);
        int c = n0 + 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
        if (r < M && c < N) out[(long long)r * N + c] = tot[i];
    }
#endif
}
