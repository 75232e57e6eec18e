// Embedding gather (word + position + token type) fused with LayerNorm.
// One warp per token; writes the packed hidden state [rows, HIDDEN].
// ids = [ids | type ids | position ids], each `rows` long (u32).

template <class D>
static __device__ void embed_ln(const unsigned int* __restrict__ ids, const typename D::T* __restrict__ word,
                                const typename D::T* __restrict__ pos, const typename D::T* __restrict__ typ,
                                const float* __restrict__ gamma, const float* __restrict__ beta, typename D::T* __restrict__ out,
                                int rows, float eps) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned int w = ids[row], t = ids[rows + row], p = ids[2 * rows + row];
    const typename D::T* wr = word + (size_t)w * HIDDEN;
    const typename D::T* pr = pos + (size_t)p * HIDDEN;
    const typename D::T* tr = typ + (size_t)t * HIDDEN;
    float v[2 * PAIRS];
#pragma unroll
    for (int k = 0; k < PAIRS; k++) {
        const int col = k * 64 + 2 * lane;
        float a0, a1, b0, b1, c0, c1;
        D::load2(wr + col, a0, a1);
        D::load2(pr + col, b0, b1);
        D::load2(tr + col, c0, c1);
        v[2 * k] = a0 + b0 + c0;
        v[2 * k + 1] = a1 + b1 + c1;
    }
    ln_store<D>(v, out + (size_t)row * HIDDEN, gamma, beta, eps, lane);
}

#define EMBED_LN(NAME, D)                                                                                                   \
    extern "C" __global__ void NAME(const unsigned int* ids, const D::T* word, const D::T* pos, const D::T* typ,           \
                                    const float* gamma, const float* beta, D::T* out, int rows, float eps) {               \
        embed_ln<D>(ids, word, pos, typ, gamma, beta, out, rows, eps);                                                      \
    }
ONLY_F16(EMBED_LN(embed_ln_f16, DF16))
ONLY_BF16(EMBED_LN(embed_ln_bf16, DBF16))
ONLY_F32(EMBED_LN(embed_ln_f32, DF32))
