// Dequantization of IQ4_XS (refquant/ggml/iquants.py): dl = d * (ls - 32), y = dl * kvalues[code].
#include "../common.cuh"

__constant__ float IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                       1, 13, 25, 38, 53, 69, 89, 113};

extern "C" __global__ void dequantize_iq4_xs(const uint8_t* __restrict__ data, float* __restrict__ out,
                                             long long nvalues) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nvalues;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = data + (i >> 8) * 136;
        int v = (int)(i & 255), ib = v >> 5, j = v & 31;
        int sh = rq_u16(b + 2);
        int ls = ((b[4 + (ib >> 1)] >> (4 * (ib & 1))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
        float dl = rq_mul(rq_fp16(rq_u16(b)), (float)(ls - 32));
        int byte = b[8 + 16 * ib + (j & 15)];
        int code = j < 16 ? (byte & 0xF) : (byte >> 4);
        out[i] = rq_mul(dl, IQ4NL_VALUES[code]);
    }
}
