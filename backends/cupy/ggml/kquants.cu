// Dequantization of Q4_K, Q5_K, Q6_K (refquant/ggml/kquants.py): super-blocks of 256 values,
// four values per thread (rq_dequantize4). The spec's roundings, in its order, each one IEEE
// operation:
//   Q4_K/Q5_K: d1 = d * sc, m1 = dmin * m, y = d1 * q - m1   (no fused multiply-add)
//   Q6_K:      dl = d * sc, y = dl * q
// Sizes and field offsets (RQ_<type>_<field>) are generated from the layouts (refquant.ggml.layout)
// in front of this source at compile time (_runtime.source).
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

// Value v: sub-block s = v/32, l = v%32; the nibble (high for odd s) of qs[32 (s/2) + l];
// Q5_K adds bit s of qh[l] as bit 4.
template <bool FIVE>
struct QK4 {
    static __device__ __forceinline__ float at(const uint8_t* b, int v) {
        int s = v >> 5, l = v & 31, c = v >> 6;
        const uint8_t* qs = b + (FIVE ? RQ_Q5_K_QS : RQ_Q4_K_QS);
        int q = (s & 1) ? (qs[32 * c + l] >> 4) : (qs[32 * c + l] & 0xF);
        if (FIVE) q += ((b[RQ_Q5_K_QH + l] >> s) & 1) << 4;
        int sc, m;
        scale_min_k4(b + (FIVE ? RQ_Q5_K_SCALES : RQ_Q4_K_SCALES), s, sc, m);
        float d1 = rq_mul(rq_fp16(rq_u16(b + (FIVE ? RQ_Q5_K_D : RQ_Q4_K_D))), (float)sc);
        float m1 = rq_mul(rq_fp16(rq_u16(b + (FIVE ? RQ_Q5_K_DMIN : RQ_Q4_K_DMIN))), (float)m);
        return rq_sub(rq_mul(d1, (float)q), m1);
    }
};

// Value v = 128h + 32k + l: low 4 bits from ql[64h + 32(k&1) + l] (high nibble for k >= 2),
// 2 high bits from qh[32h + l] >> 2k; scale int8 scales[v/16]; then d.
struct Q6K {
    static __device__ __forceinline__ float at(const uint8_t* b, int v) {
        int h = v >> 7, k = (v >> 5) & 3, l = v & 31;
        int byte = b[RQ_Q6_K_QL + 64 * h + 32 * (k & 1) + l];
        int low = (k < 2) ? (byte & 0xF) : (byte >> 4);
        int high = (b[RQ_Q6_K_QH + 32 * h + l] >> (2 * k)) & 3;
        int q = (low | (high << 4)) - 32;
        float dl = rq_mul(rq_fp16(rq_u16(b + RQ_Q6_K_D)), (float)(int8_t)b[RQ_Q6_K_SCALES + (v >> 4)]);
        return rq_mul(dl, (float)q);
    }
};

extern "C" __global__ void dequantize_q4_k(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<QK4<false>, RQ_Q4_K_BLOCK_SIZE, RQ_Q4_K_TYPE_SIZE>(d, o, n);
}
extern "C" __global__ void dequantize_q5_k(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<QK4<true>, RQ_Q5_K_BLOCK_SIZE, RQ_Q5_K_TYPE_SIZE>(d, o, n);
}
extern "C" __global__ void dequantize_q6_k(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<Q6K, RQ_Q6_K_BLOCK_SIZE, RQ_Q6_K_TYPE_SIZE>(d, o, n);
}
