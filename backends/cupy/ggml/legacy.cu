// Dequantization of Q4_0 and Q8_0 (refquant/ggml/legacy.py). Blocks are read byte-wise (their
// sizes, 18 and 34 bytes, leave them unaligned); four values per thread (rq_dequantize4). Block
// and type sizes and field offsets (RQ_<type>_<field>) are generated from the layouts
// (refquant.ggml.layout) and put in front of this source when it is compiled (_runtime.source).
#include "../common.cuh"

struct Q4_0 {  // (q - 8) * d; value j: low nibble of qs[j] (j < 16), else high nibble of qs[j - 16]
    static __device__ __forceinline__ float at(const uint8_t* b, int j) {
        int q = j < 16 ? (b[RQ_Q4_0_QS + j] & 0xF) : (b[RQ_Q4_0_QS + j - 16] >> 4);
        return rq_mul((float)(q - 8), rq_fp16(rq_u16(b + RQ_Q4_0_D)));
    }
};

struct Q8_0 {  // qs * d
    static __device__ __forceinline__ float at(const uint8_t* b, int j) {
        return rq_mul((float)(int8_t)b[RQ_Q8_0_QS + j], rq_fp16(rq_u16(b + RQ_Q8_0_D)));
    }
};

extern "C" __global__ void dequantize_q4_0(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<Q4_0, RQ_Q4_0_BLOCK_SIZE, RQ_Q4_0_TYPE_SIZE>(d, o, n);
}
extern "C" __global__ void dequantize_q8_0(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<Q8_0, RQ_Q8_0_BLOCK_SIZE, RQ_Q8_0_TYPE_SIZE>(d, o, n);
}
