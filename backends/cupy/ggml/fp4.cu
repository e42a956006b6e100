// Dequantization of MXFP4 (refquant/ggml/fp4.py): y = kvalues_mxfp4[code] * e8m0_half(e);
// four values per thread (rq_dequantize4). Sizes and field offsets (RQ_MXFP4_*) are generated
// from the layout (refquant.ggml.layout) in front of this source at compile time (_runtime.source).
#include "../common.cuh"

__constant__ float MXFP4_VALUES[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// ggml_e8m0_to_fp32_half: 2^(e - 128); e < 2 gives the subnormals 0x00200000 << e.
__device__ __forceinline__ float e8m0_half(uint32_t e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1u) << 23));
}

struct MXFP4 {  // value j: low nibble of qs[j] (j < 16), else high nibble of qs[j - 16]
    static __device__ __forceinline__ float at(const uint8_t* b, int j) {
        int code = j < 16 ? (b[RQ_MXFP4_QS + j] & 0xF) : (b[RQ_MXFP4_QS + j - 16] >> 4);
        return rq_mul(MXFP4_VALUES[code], e8m0_half(b[RQ_MXFP4_E]));
    }
};

extern "C" __global__ void dequantize_mxfp4(const uint8_t* __restrict__ d, float* __restrict__ o, long long n) {
    rq_dequantize4<MXFP4, RQ_MXFP4_BLOCK_SIZE, RQ_MXFP4_TYPE_SIZE>(d, o, n);
}
