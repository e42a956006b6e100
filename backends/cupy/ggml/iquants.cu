// Dequantization of IQ4_XS (refquant/ggml/iquants.py): dl = d * (ls - 32), y = dl * kvalues[code];
// four values per thread (rq_dequantize4). Sizes and field offsets (RQ_IQ4_XS_*) are generated
// from the layout (refquant.ggml.layout) in front of this source at compile time (_runtime.source).
#include "../common.cuh"

__constant__ float IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                       1, 13, 25, 38, 53, 69, 89, 113};

// Value v: sub-block ib = v/32; ls = 4 bits of scales_l[ib/2] | 2 bits of scales_h << 4; the
// code is the low (j < 16) or high nibble of qs[16 ib + j % 16], j = v % 32.
struct IQ4XS {
    static __device__ __forceinline__ float at(const uint8_t* b, int v) {
        int ib = v >> 5, j = v & 31;
        int sh = rq_u16(b + RQ_IQ4_XS_SCALES_H);
        int ls = ((b[RQ_IQ4_XS_SCALES_L + (ib >> 1)] >> (4 * (ib & 1))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
        float dl = rq_mul(rq_fp16(rq_u16(b + RQ_IQ4_XS_D)), (float)(ls - 32));
        int byte = b[RQ_IQ4_XS_QS + 16 * ib + (j & 15)];
        int code = j < 16 ? (byte & 0xF) : (byte >> 4);
        return rq_mul(dl, IQ4NL_VALUES[code]);
    }
};

extern "C" __global__ void dequantize_iq4_xs(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<IQ4XS, RQ_IQ4_XS_BLOCK_SIZE, RQ_IQ4_XS_TYPE_SIZE>(d, o, n);
}
