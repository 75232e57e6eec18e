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
// are processed 32 rows at a time (8 per warp, register-tiled) with an online softmax in
// fp32 (FlashAttention's recurrence), so any length works and sequences of
// up to TK tokens load K/V once. Each lane owns HEAD_DIM/32 output columns.

#define NWARPS 4
#define RPW (HEAD_DIM > 64 ? 4 : 8)   // query rows per warp per chunk
#define QROWS (NWARPS * RPW)
#define KPL ((4096 / HEAD_DIM) / 32)   // keys per lane in a tile
#define TK (KPL * 32)                  // keys per shared-memory tile (<= 41 KB of smem in all)
#define DPL (HEAD_DIM / 32)            // output columns per lane
#define HALF_D (HEAD_DIM / 2)

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
        // Q rows of this chunk (bias added, pre-scaled), element pairs.
        for (int i = tid; i < QROWS * HALF_D; i += blockDim.x) {
            const int r = i / HALF_D, c = (i % HALF_D) * 2, row = r0 + r;
            float a = 0.f, b = 0.f;
            if (row < L) {
                D::load2(base + (size_t)row * ld + qoff + c, a, b);
                a = (a + bias[qoff + c]) * scale;
                b = (b + bias[qoff + c + 1]) * scale;
            }
            Qs[r][c] = a;
            Qs[r][c + 1] = b;
        }
        // This warp's rows: warp*RPW .. +RPW (may be past L: computed on
        // zero queries and never written).
        const bool active = r0 + warp * RPW < L;
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
                for (int i = tid; i < nk * HALF_D; i += blockDim.x) {
                    const int j = i / HALF_D, c = (i % HALF_D) * 2;
                    const typename D::T* rowp = base + (size_t)(k0 + j) * ld;
                    float a, b;
                    D::load2(rowp + koff + c, a, b);
                    Ks[j][c] = a + bias[koff + c];
                    Ks[j][c + 1] = b + bias[koff + c + 1];
                    D::load2(rowp + voff + c, a, b);
                    Vs[j][c] = a + bias[voff + c];
                    Vs[j][c + 1] = b + bias[voff + c + 1];
                }
            }
            __syncthreads();
            if (!active) continue;  // warp-uniform; no barrier inside
            // Scores: lane owns keys lane + 32*jj; all RPW rows at once
            // (RPW + KPL shared loads per RPW*KPL FMAs).
            float sc[RPW][KPL];
#pragma unroll
            for (int rr = 0; rr < RPW; rr++)
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) sc[rr][jj] = 0.f;
            const float* qbase = Qs[warp * RPW];
#pragma unroll 8
            for (int c = 0; c < HEAD_DIM; c++) {
                float kv[KPL];
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) kv[jj] = Ks[lane + 32 * jj][c];
#pragma unroll
                for (int rr = 0; rr < RPW; rr++) {
                    const float q = qbase[rr * HEAD_DIM + c];
#pragma unroll
                    for (int jj = 0; jj < KPL; jj++) sc[rr][jj] = fmaf(q, kv[jj], sc[rr][jj]);
                }
            }
            // Online softmax per row.
#pragma unroll
            for (int rr = 0; rr < RPW; rr++) {
                float mt = NEG_INF;
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) {
                    if (lane + 32 * jj >= nk) sc[rr][jj] = NEG_INF;
                    mt = fmaxf(mt, sc[rr][jj]);
                }
                mt = warp_max(mt);
                const float m_new = fmaxf(m[rr], mt);
                const float corr = __expf(m[rr] - m_new);
                float ps = 0.f;
#pragma unroll
                for (int jj = 0; jj < KPL; jj++) {
                    sc[rr][jj] = __expf(sc[rr][jj] - m_new);
                    ps += sc[rr][jj];
                }
                l[rr] = l[rr] * corr + warp_sum(ps);
                m[rr] = m_new;
#pragma unroll
                for (int cc = 0; cc < DPL; cc++) acc[rr][cc] *= corr;
            }
            // P·V: lane owns output columns lane + 32*cc; probabilities are
            // broadcast from the lane that owns each key.
#pragma unroll
            for (int jj = 0; jj < KPL; jj++) {
                const int jbase = jj * 32;
                if (jbase >= nk) break;
                const int lim = min(32, nk - jbase);
                for (int src = 0; src < lim; src++) {
                    const float* vrow = Vs[jbase + src];
                    float v[DPL];
#pragma unroll
                    for (int cc = 0; cc < DPL; cc++) v[cc] = vrow[lane + 32 * cc];
#pragma unroll
                    for (int rr = 0; rr < RPW; rr++) {
                        const float p = __shfl_sync(FULL_MASK, sc[rr][jj], src);
#pragma unroll
                        for (int cc = 0; cc < DPL; cc++) acc[rr][cc] = fmaf(p, v[cc], acc[rr][cc]);
                    }
                }
            }
        }
        if (active) {
#pragma unroll
            for (int rr = 0; rr < RPW; rr++) {
                const int row = r0 + warp * RPW + rr;
                if (row < L) {
                    const float inv = 1.0f / l[rr];
                    typename D::T* out = ctx + (size_t)(start + row) * HIDDEN + h * HEAD_DIM;
#pragma unroll
                    for (int cc = 0; cc < DPL; cc++) out[lane + 32 * cc] = D::from(acc[rr][cc] * inv);
                }
            }
        }
    }
}

#define ATTENTION(NAME, D)                                                                                       \
    extern "C" __global__ void __launch_bounds__(128) NAME(const D::T* qkv, const float* bias, D::T* ctx,        \
                                                           const unsigned int* cu_seqlens, float scale) {        \
        attention<D>(qkv, bias, ctx, cu_seqlens, scale);                                                         \
    }
ONLY_F16(ATTENTION(attention_f16, DF16))
ONLY_BF16(ATTENTION(attention_bf16, DBF16))
ONLY_F32(ATTENTION(attention_f32, DF32))
