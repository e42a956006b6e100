// Shared device helpers of the CuPy backend. Compiled with -fmad=false: every float operation
// below is one IEEE round-to-nearest operation, as the spec (NumPy on x86) performs it.
#pragma once
#if defined(RQ_HOST)
#include "host_shim.h"
#else
#include <cuda_fp16.h>
#endif
#if defined(RQ_HOST)
#include <stdint.h>
#elif defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

// NaN results as x86 SSE produces them (NumPy's float32 arithmetic on the spec's machines): a
// NaN operand propagates quieted, the first operand's if both are NaN; an invalid operation on
// non-NaN operands (inf * 0, inf - inf) gives the "real indefinite" 0xFFC00000. CUDA would give
// the canonical 0x7FFFFFFF instead, so bit-exact dequantization needs these wrappers.
__device__ __forceinline__ float rq_quiet(float a) {
    return __uint_as_float(__float_as_uint(a) | 0x00400000u);
}
__device__ __forceinline__ float rq_nan_of(float a, float b) {
    if (isnan(a)) return rq_quiet(a);
    if (isnan(b)) return rq_quiet(b);
    return __uint_as_float(0xFFC00000u);
}
__device__ __forceinline__ float rq_mul(float a, float b) {
    float r = __fmul_rn(a, b);
    return isnan(r) ? rq_nan_of(a, b) : r;
}
__device__ __forceinline__ float rq_sub(float a, float b) {
    float r = __fsub_rn(a, b);
    return isnan(r) ? rq_nan_of(a, b) : r;
}

// IEEE half bits -> float32, exact; NaN payloads kept and quieted (refquant.numerics.fp16_bits_to_fp32).
__device__ __forceinline__ float rq_fp16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1F) return __uint_as_float(sign | 0x7F800000u | (m << 13) | (m ? 0x00400000u : 0u));
    if (e == 0) {
        if (m == 0) return __uint_as_float(sign);
        float f = __fmul_rn((float)m, 5.9604644775390625e-08f);  // m * 2^-24: exact
        return __uint_as_float(sign | __float_as_uint(f));
    }
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

__device__ __forceinline__ uint16_t rq_u16(const uint8_t* p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

// The dequantization loop: four consecutive values per thread (every block size is a multiple
// of 4, so the four share one block) and one 16-byte store; grid-stride over groups of four.
// V::at(block, v) is value v of a block, exactly as the spec computes it.
template <class V, int QK, int TS>
__device__ __forceinline__ void rq_dequantize4(const uint8_t* __restrict__ data, float* __restrict__ out,
                                               long long nvalues) {
    long long n4 = nvalues >> 2;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < n4;
         g += (long long)gridDim.x * blockDim.x) {
        long long i = g << 2;
        const uint8_t* b = data + (i / QK) * TS;
        int v = (int)(i % QK);
        float4 r;
        r.x = V::at(b, v);
        r.y = V::at(b, v + 1);
        r.z = V::at(b, v + 2);
        r.w = V::at(b, v + 3);
        reinterpret_cast<float4*>(out)[g] = r;
    }
}
