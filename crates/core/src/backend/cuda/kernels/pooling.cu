// Pooling of the packed last hidden state into one fp32 vector per sequence.
// Grid n_seqs, block 128 threads striding over the HIDDEN columns (coalesced
// across threads); each thread walks the rows of its sequence.
// mode: 0 = mean, 1 = cls (first token), 2 = max, 3 = sum / sqrt(len).
// An empty sequence (CUDA-graph bucket padding) writes zeros.

template <class D>
static __device__ void pool(const typename D::T* __restrict__ hidden, const unsigned int* __restrict__ cu_seqlens,
                            float* __restrict__ out, int mode) {
    const int s = blockIdx.x;
    const int start = (int)cu_seqlens[s];
    const int L = (int)cu_seqlens[s + 1] - start;
    for (int c = threadIdx.x; c < HIDDEN; c += blockDim.x) {
        float r = 0.f;
        if (L > 0) {
            const typename D::T* p = hidden + (size_t)start * HIDDEN + c;
            if (mode == 1) {
                r = D::to(p[0]);
            } else if (mode == 2) {
                r = NEG_INF;
                for (int i = 0; i < L; i++) r = fmaxf(r, D::to(p[(size_t)i * HIDDEN]));
            } else {
                for (int i = 0; i < L; i++) r += D::to(p[(size_t)i * HIDDEN]);
                r = mode == 0 ? r / (float)L : r * rsqrtf((float)L);
            }
        }
        out[(size_t)s * HIDDEN + c] = r;
    }
}

#define POOL(NAME, D)                                                                                 \
    extern "C" __global__ void NAME(const D::T* hidden, const unsigned int* cu_seqlens, float* out,  \
                                    int mode) {                                                       \
        pool<D>(hidden, cu_seqlens, out, mode);                                                       \
    }
ONLY_F16(POOL(pool_f16, DF16))
ONLY_BF16(POOL(pool_bf16, DBF16))
ONLY_F32(POOL(pool_f32, DF32))
