// Dequantization of Q4_0 and Q8_0 (refquant/ggml/legacy.py). One thread per output value;
// blocks are read byte-wise (their sizes, 18 and 34 bytes, leave them unaligned).
#include "../common.cuh"

extern "C" __global__ void dequantize_q4_0(const uint8_t* __restrict__ data, float* __restrict__ out,
                                           long long nvalues) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nvalues;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = data + (i >> 5) * 18;
        int j = (int)(i & 31);
        float d = rq_fp16(rq_u16(b));
        int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
        out[i] = rq_mul((float)(q - 8), d);                 // (q - 8) * d
    }
}

extern "C" __global__ void dequantize_q8_0(const uint8_t* __restrict__ data, float* __restrict__ out,
                                           long long nvalues) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nvalues;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = data + (i >> 5) * 34;
        float d = rq_fp16(rq_u16(b));
        out[i] = rq_mul((float)(int8_t)b[2 + (i & 31)], d);  // qs * d
    }
}
