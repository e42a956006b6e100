// Dequantization of Q4_K, Q5_K, Q6_K (refquant/ggml/kquants.py): super-blocks of 256 values.
// One thread per output value. The spec's roundings, in its order, each one IEEE operation:
//   Q4_K/Q5_K: d1 = d * sc, m1 = dmin * m, y = d1 * q - m1   (no fused multiply-add)
//   Q6_K:      dl = d * sc, y = dl * q
#include "../common.cuh"

// get_scale_min_k4: sub-block s (0..7) of the 12 packed scale bytes.
__device__ __forceinline__ void scale_min_k4(const uint8_t* q, int s, int& sc, int& m) {
    if (s < 4) {
        sc = q[s] & 63;
        m = q[s + 4] & 63;
    } else {
        sc = (q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4);
        m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

template <bool FIVE>
__device__ __forceinline__ void dequantize_k4(const uint8_t* __restrict__ data, float* __restrict__ out,
                                              long long nvalues) {
    const int TS = FIVE ? 176 : 144;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nvalues;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = data + (i >> 8) * TS;
        int v = (int)(i & 255), s = v >> 5, l = v & 31, c = v >> 6;
        const uint8_t* qs = b + (FIVE ? 48 : 16);
        int q = (s & 1) ? (qs[32 * c + l] >> 4) : (qs[32 * c + l] & 0xF);
        if (FIVE) q += ((b[16 + l] >> s) & 1) << 4;
        int sc, m;
        scale_min_k4(b + 4, s, sc, m);
        float d1 = rq_mul(rq_fp16(rq_u16(b)), (float)sc);
        float m1 = rq_mul(rq_fp16(rq_u16(b + 2)), (float)m);
        out[i] = rq_sub(rq_mul(d1, (float)q), m1);
    }
}

extern "C" __global__ void dequantize_q4_k(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    dequantize_k4<false>(d, o, n);
}
extern "C" __global__ void dequantize_q5_k(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    dequantize_k4<true>(d, o, n);
}

extern "C" __global__ void dequantize_q6_k(const uint8_t* __restrict__ data, float* __restrict__ out,
                                           long long nvalues) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nvalues;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = data + (i >> 8) * 210;
        int v = (int)(i & 255), h = v >> 7, k = (v >> 5) & 3, l = v & 31;
        int byte = b[64 * h + 32 * (k & 1) + l];
        int low = (k < 2) ? (byte & 0xF) : (byte >> 4);
        int high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
        int q = (low | (high << 4)) - 32;
        float dl = rq_mul(rq_fp16(rq_u16(b + 208)), (float)(int8_t)b[192 + (v >> 4)]);
        out[i] = rq_mul(dl, (float)q);
    }
}
