// Host shim: compiles the plain CUDA kernels (dequantization, gemm_plain.cu) as ordinary C++
// so the tests run their exact source on the CPU, one simulated thread at a time. Built with
// -ffp-contract=off and no fast math, so __fmul_rn / __fadd_rn / __fsub_rn are single IEEE
// float32 operations as on the device. (Only what those kernels use is provided.)
#pragma once
#include <cmath>
#include <cstring>
#include <algorithm>
#include <stdint.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define __constant__ static const
struct rq_dim3 { unsigned x, y, z; };
extern rq_dim3 threadIdx, blockIdx, blockDim, gridDim;

inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
using std::isnan;
using std::min;
struct float4 { float x, y, z, w; };
