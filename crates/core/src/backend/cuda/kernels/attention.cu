// Fused multi-head self-attention over the packed (varlen) layout, for the
// short sequences of sentence encoders.
//
// Grid (n_seqs, heads), 128 threads (4 warps). One block owns one
// (sequence, head): it reads Q/K/V of that sequence from the fused QKV GEMM
// output [rows, 3*HIDDEN] (bias added here), and writes the context
// ctx[rows, HIDDEN] at columns head*HEAD_DIM. Nothing is padded: the block
// sees only rows cu_seqlens[s] .. cu_seqlens[s+1], so no mask is needed and
// an empty sequence (used to pad a CUDA-graph bucket) does nothing.
//
// K and V are staged in shared memory as fp32, TK keys at a time; queries
// are processed 16 rows at a time (4 per warp) with an online softmax in
// fp32 (FlashAttention's recurrence), so any length works and sequences of
// up to TK tokens load K/V once. Each lane owns HEAD_DIM/32 output columns.

#define NWARPS 4
#define RPW 4                      // query rows per warp per chunk
#define QROWS (NWARPS * RPW)
#define TK (4096 / HEAD_DIM)       // keys per shared-memory tile
#define DPL (HEAD_DIM / 32)        // output columns per lane
#define KPL (TK / 32)              // keys per lane in a tile

template <class D>
static __device__ void attention(const typename D::T* __restrict__ qkv, const float* __restrict__ bias,
                                 typename D::T* __restrict__ ctx, const unsigned int* __restrict__ cu_seqlens,
                                 float scale) {
    __shared__ float Ks[TK][HEAD_DIM + 1];
    __shared__ float Vs[TK][HEAD_DIM];
    __shared__ float Qs[QROWS][HEAD_DIM];

    const int s = blockIdx.x, h = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int start = (int)cu_seqlens[s];
    const int L = (int)cu_seqlens[s + 1] - start;
    const int ld = 3 * HIDDEN;
    const int qoff = h * HEAD_DIM, koff = HIDDEN + h * HEAD_DIM, voff = 2 * HIDDEN + h * HEAD_DIM;
    const int ntiles = (L + TK - 1) / TK;
    const typename D::T* base = qkv + (size_t)start * ld;

    for (int r0 = 0; r0 < L; r0 += QROWS) {
        __syncthreads();  // the previous chunk is done with Qs (and Ks/Vs)
        for (int i = tid; i < QROWS * HEAD_DIM; i += blockDim.x) {
            const int r = i / HEAD_DIM, c = i % HEAD_DIM, row = r0 + r;
            Qs[r][c] = row < L ? (D::to(base[(size_t)row * ld + qoff + c]) + bias[qoff + c]) * scale : 0.f;
        }
        float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            m[rr] = NEG_INF;
            l[rr] = 0.f;
#pragma unroll
            for (int cc = 0; cc < DPL; cc++) acc[rr][cc] = 0.f;
        }
        for (int t = 0; t < ntiles; t++) {
            const int k0 = t * TK;
            const int nk = min(TK, L - k0);
            if (ntiles > 1 || r0 == 0) {
                if (t > 0) __syncthreads();  // everyone is done with the previous tile
                for (int i = tid; i < nk * HEAD_DIM; i += blockDim.x) {
                    const int j = i / HEAD_DIM, c = i % HEAD_DIM;
                    const typename D::T* rowp = base + (size_t)(k0 + j) * ld;
                    Ks[j][c] = D::to(rowp[koff + c]) + bias[koff + c];
                    Vs[j][c] = D::to(rowp[voff + c]) + bias[voff + c];
                }
            }
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < RPW; rr++) {
                const int r = warp * RPW + rr;
                if (r0 + r >= L) break;  // warp-uniform
                float sc[KPL];
                float mt = NEG_INF;
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) {
                    const int j = lane + 32 * jj;
                    float dot = NEG_INF;
                    if (j < nk) {
                        dot = 0.f;
#pragma unroll 16
                        for (int c = 0; c < HEAD_DIM; c++) dot = fmaf(Qs[r][c], Ks[j][c], dot);
                    }
                    sc[jj] = dot;
                    mt = fmaxf(mt, dot);
                }
                mt = warp_max(mt);
                const float m_new = fmaxf(m[rr], mt);
                const float corr = __expf(m[rr] - m_new);
                float ps = 0.f;
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) {
                    sc[jj] = __expf(sc[jj] - m_new);
                    ps += sc[jj];
                }
                l[rr] = l[rr] * corr + warp_sum(ps);
                m[rr] = m_new;
#pragma unroll
                for (int cc = 0; cc < DPL; cc++) acc[rr][cc] *= corr;
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) {
                    const int jbase = jj * 32;
                    if (jbase >= nk) break;
                    const int lim = min(32, nk - jbase);
                    for (int src = 0; src < lim; src++) {
                        const float p = __shfl_sync(FULL_MASK, sc[jj], src);
                        const float* vrow = Vs[jbase + src];
#pragma unroll
                        for (int cc = 0; cc < DPL; cc++) acc[rr][cc] = fmaf(p, vrow[lane + 32 * cc], acc[rr][cc]);
                    }
                }
            }
        }
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            const int row = r0 + warp * RPW + rr;
            if (row >= L) break;
            const float inv = 1.0f / l[rr];
            typename D::T* out = ctx + (size_t)(start + row) * HIDDEN + h * HEAD_DIM;
#pragma unroll
            for (int cc = 0; cc < DPL; cc++) out[lane + 32 * cc] = D::from(acc[rr][cc] * inv);
        }
    }
}

#define ATTENTION(NAME, D)                                                                                       \
    extern "C" __global__ void __launch_bounds__(128) NAME(const D::T* qkv, const float* bias, D::T* ctx,        \
                                                           const unsigned int* cu_seqlens, float scale) {        \
        attention<D>(qkv, bias, ctx, cu_seqlens, scale);                                                         \
    }
ATTENTION(attention_f16, DF16)
ATTENTION(attention_bf16, DBF16)
ATTENTION(attention_f32, DF32)
