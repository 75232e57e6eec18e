// Exact top-k vector search kernels (crates/core/src/vector/cuda.rs).
//
// Compiled by NVRTC for the device's own compute capability, no CUDA headers,
// with compile-time macros from the host:
//   DIMS   values per vector
//   LD     row stride in elements (DIMS rounded up to 8: 16-byte rows for
//          fp16, 32-byte for fp32); the padding of every written row is zero
//   G16    threads per row in the fp16 scan (power of two <= 32)
//
// Every candidate is one 64-bit "composite": the high word is the score's
// order key (a monotone map of the fp32 bits, -0 folded onto +0), the low
// word is ~slot. A larger composite ranks first: higher score, then lower
// slot, exactly the store contract's order. 0 is "no candidate".
//
// Selection (any k <= 2048): each block keeps, per query it serves, a
// shared-memory array of S composites: the first C (a power of two >= k)
// hold the best so far, sorted descending; the remaining S-C are a buffer.
// A candidate above the current k-th best (the threshold) is appended to
// the buffer; when a buffer could overflow in the next round, the whole
// array is bitonic-sorted and the threshold updated. Partial lists of k
// per (query, block) are merged by `merge` with the same selector.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define FULL_MASK 0xffffffffu
#define TOMBSTONE 0xffffffffu

__device__ __forceinline__ u64 pack(float key, u32 slot) {
    float f = __fadd_rn(key, 0.0f);  // -0 -> +0
    u32 u = __float_as_uint(f);
    u32 o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)o << 32) | (u64)(~slot);
}

__device__ __forceinline__ float h2f(u16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}

__device__ __forceinline__ bool admits(u32 tag, u32 mode, u32 tagv) {
    return mode == 0 ? tag != TOMBSTONE : tag == tagv;
}

// ---------------------------------------------------------------------------
// The selector. Shared layout: sel[Q*S] composites, cnt[Q], thr[Q].

struct Sel {
    u64* a;
    u32* cnt;
    u64* thr;
    int q;   // queries served
    int s;   // S (power of two)
    int c;   // C (power of two >= k)
    int k;
    int pr;  // most pushes per query in one round
    u64* g;  // global per-query thresholds of this block's first query (or null)
    int nv;  // queries of this block that exist (g[0..nv))
};

__device__ __forceinline__ void sel_init(const Sel& s) {
    // Only the kept part needs zeros: a flush zero-fills the unused buffer.
    for (int i = threadIdx.x; i < s.q * s.c; i += blockDim.x) s.a[(i / s.c) * s.s + (i % s.c)] = 0ull;
    for (int i = threadIdx.x; i < s.q; i += blockDim.x) {
        s.cnt[i] = 0;
        // Another block's k-th best is a valid bound: it has k entries at or
        // above it, so nothing at or below it can be in the final top-k
        // (except that entry itself, which its own block keeps).
        s.thr[i] = (s.g != 0 && i < s.nv) ? s.g[i] : 0ull;
    }
    __syncthreads();
}

__device__ __forceinline__ void sel_push(const Sel& s, int q, u64 v) {
    if (v > s.thr[q]) {
        u32 p = atomicAdd(&s.cnt[q], 1u);
        s.a[q * s.s + s.c + p] = v;
    }
}

// Block-wide: for every query whose buffer holds anything, sort the kept C
// plus the buffered entries (the first T = pow2 >= C + max count entries,
// the rest of those T zero-filled), so a flush costs what it holds.
__device__ void sel_flush(const Sel& s) {
    __syncthreads();
    u32 most = 0;
    for (int q = 0; q < s.q; ++q) most = max(most, s.cnt[q]);
    int T = s.c;
    while (T < s.c + (int)most) T <<= 1;
    const int fill = T - s.c;
    for (int i = threadIdx.x; i < s.q * fill; i += blockDim.x) {
        int q = i / fill, j = i - q * fill;
        if ((u32)j >= s.cnt[q]) s.a[q * s.s + s.c + j] = 0ull;
    }
    __syncthreads();
    const int half = T >> 1;
    for (int size = 2; size <= T; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < s.q * half; t += blockDim.x) {
                int q = t / half, i = t - q * half;
                if (s.cnt[q] == 0) continue;
                int lo = ((i & ~(stride - 1)) << 1) | (i & (stride - 1));
                int hi = lo + stride;
                u64* b = s.a + q * s.s;
                bool desc = (lo & size) == 0;
                u64 x = b[lo], y = b[hi];
                if ((x < y) == desc) {
                    b[lo] = y;
                    b[hi] = x;
                }
            }
            __syncthreads();
        }
    }
    for (int q = threadIdx.x; q < s.q; q += blockDim.x) {
        if (s.cnt[q] != 0) {
            u64 t = s.a[q * s.s + s.k - 1];
            if (s.g != 0 && q < s.nv && t != 0ull) {
                u64 old = atomicMax(&s.g[q], t);
                t = old > t ? old : t;
            }
            s.thr[q] = t > s.thr[q] ? t : s.thr[q];
        }
    }
    __syncthreads();
    for (int q = threadIdx.x; q < s.q; q += blockDim.x) s.cnt[q] = 0;
    __syncthreads();
}

// After a round's pushes: flush when a buffer could overflow next round.
__device__ __forceinline__ void sel_round(const Sel& s) {
    __syncthreads();
    bool need = false;
    const u32 lim = (u32)(s.s - s.c - s.pr);
    for (int q = 0; q < s.q; ++q) need |= s.cnt[q] > lim;
    if (need) {
        sel_flush(s);
    } else {
        __syncthreads();  // everyone has read cnt before the next round pushes
    }
}

__device__ __forceinline__ void sel_finish(const Sel& s) {
    __syncthreads();
    bool any = false;
    for (int q = 0; q < s.q; ++q) any |= s.cnt[q] != 0;
    if (any) sel_flush(s);
}

// Write query q's best k to out[0..k).
__device__ __forceinline__ void sel_write(const Sel& s, int q, u64* out) {
    for (int j = threadIdx.x; j < s.k; j += blockDim.x) out[j] = s.a[q * s.s + j];
}

__device__ __forceinline__ Sel sel_make(unsigned char* smem, int q, int S, int C, int k, int pr, u64* g, int nv) {
    Sel s;
    s.g = g;
    s.nv = nv;
    s.a = reinterpret_cast<u64*>(smem);
    s.thr = s.a + q * S;
    s.cnt = reinterpret_cast<u32*>(s.thr + q);
    s.q = q;
    s.s = S;
    s.c = C;
    s.k = k;
    s.pr = pr;
    return s;
}

// Bytes of shared memory the selector of q queries needs (host mirrors it).
#define SEL_BYTES(q, S) ((size_t)(q) * (S) * 8 + (size_t)(q) * 12)

// ---------------------------------------------------------------------------
// fp32 storage: the contract's exact dot product. 8 threads per row, lane j
// sums q[i]*x[i] for i = j (mod 8) in increasing i (product rounded, then
// added: __fmul_rn/__fadd_rn are never contracted into FMA), then
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) through shuffles.
//
// grid (P * ceil(nq/Q)) (block b: split b % P, query group b / P); block 256; dynamic smem SEL_BYTES(Q,S) + Q*LD*4.
// out: partial lists, query-major: out[(qi*P + p)*k + j].

template <int Q>
__device__ void scan_f32_body(const float* __restrict__ rows, const u32* __restrict__ tags,
                              const float* __restrict__ norms, const float* __restrict__ queries, int nq,
                              int len, u32 mode, u32 tagv, int l2, int k, int S, int C, int P, u64* __restrict__ out, u64* gthr) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int pb = blockIdx.x % P;
    const int q0 = (blockIdx.x / P) * Q;
    const int nqb = min(Q, nq - q0);
    Sel sel = sel_make(smem, Q, S, C, k, 32, gthr + q0, nqb);
    float* qs = reinterpret_cast<float*>(smem + ((SEL_BYTES(Q, S) + 15) & ~(size_t)15));
    for (int i = threadIdx.x; i < Q * DIMS; i += blockDim.x) {
        int q = i / DIMS;
        qs[i] = q < nqb ? queries[(size_t)(q0 + q) * DIMS + (i - q * DIMS)] : 0.0f;
    }
    sel_init(sel);

    const int per = (len + P - 1) / P;
    const int lo = pb * per;
    const int hi = min(len, lo + per);
    const int lane = threadIdx.x & 7;
    const int grp = threadIdx.x >> 3;  // 32 groups
    const int ngrp = blockDim.x >> 3;
    for (int base = lo; base < hi; base += ngrp) {
        const int row = base + grp;
        bool ok = row < hi;
        u32 tag = ok ? tags[row] : TOMBSTONE;
        ok = ok && admits(tag, mode, tagv);
        float l[Q];
#pragma unroll
        for (int q = 0; q < Q; ++q) l[q] = 0.0f;
        if (ok) {
            const float* x = rows + (size_t)row * LD;
            for (int i = lane; i < DIMS; i += 8) {
                float xv = x[i];
#pragma unroll
                for (int q = 0; q < Q; ++q) l[q] = __fadd_rn(l[q], __fmul_rn(qs[q * DIMS + i], xv));
            }
        }
#pragma unroll
        for (int q = 0; q < Q; ++q) {
            float v = l[q];
            v = __fadd_rn(v, __shfl_xor_sync(FULL_MASK, v, 4));
            v = __fadd_rn(v, __shfl_xor_sync(FULL_MASK, v, 2));
            v = __fadd_rn(v, __shfl_xor_sync(FULL_MASK, v, 1));
            l[q] = v;
        }
        if (ok && lane == 0) {
            float nrm = l2 ? norms[row] : 0.0f;
#pragma unroll
            for (int q = 0; q < Q; ++q) {
                if (q < nqb) {
                    float key = l2 ? -__fsub_rn(nrm, __fmul_rn(2.0f, l[q])) : l[q];
                    sel_push(sel, q, pack(key, (u32)row));
                }
            }
        }
        sel_round(sel);
    }
    sel_finish(sel);
    for (int q = 0; q < nqb; ++q) sel_write(sel, q, out + ((size_t)(q0 + q) * P + pb) * k);
}

#define SCAN_F32(Q)                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) scan_f32_q##Q(                                              \
        const float* rows, const u32* tags, const float* norms, const float* queries, int nq, int len, u32 mode, \
        u32 tagv, int l2, int k, int S, int C, int P, u64* out, u64* gthr) {                                      \
        scan_f32_body<Q>(rows, tags, norms, queries, nq, len, mode, tagv, l2, k, S, C, P, out, gthr);                     \
    }
SCAN_F32(1)
SCAN_F32(2)
SCAN_F32(4)
SCAN_F32(8)

// ---------------------------------------------------------------------------
// fp16 storage, small batches: one bandwidth-bound pass. G16 threads per
// row, each loading 16-byte chunks (8 halves) c = lane, lane+G16, ...; R
// rows per group per round keep several loads in flight; fp32 accumulation
// (fmaf, any order: the fp16 exactness rule is the 1e-3 window), reduced by
// shuffles within the group.
//
// grid (P * ceil(nq/Q)) (block b: split b % P, query group b / P); block 256; dynamic smem SEL_BYTES(Q,S) + Q*LD*4.

#define NCH (LD / 8)
#define CPT ((NCH + G16 - 1) / G16)
#define F16_R 4

template <int Q>
__device__ void scan_f16_body(const u16* __restrict__ rows, const u32* __restrict__ tags,
                              const float* __restrict__ norms, const float* __restrict__ queries, int nq,
                              int len, u32 mode, u32 tagv, int l2, int k, int S, int C, int P, u64* __restrict__ out, u64* gthr) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int pb = blockIdx.x % P;
    const int q0 = (blockIdx.x / P) * Q;
    const int nqb = min(Q, nq - q0);
    const int ngrp = blockDim.x / G16;
    Sel sel = sel_make(smem, Q, S, C, k, ngrp * F16_R, gthr + q0, nqb);
    float* qs = reinterpret_cast<float*>(smem + ((SEL_BYTES(Q, S) + 15) & ~(size_t)15));
    for (int i = threadIdx.x; i < Q * LD; i += blockDim.x) {
        int q = i / LD, j = i - q * LD;
        qs[i] = (q < nqb && j < DIMS) ? queries[(size_t)(q0 + q) * DIMS + j] : 0.0f;
    }
    sel_init(sel);

    const int per = (len + P - 1) / P;
    const int lo = pb * per;
    const int hi = min(len, lo + per);
    const int lane = threadIdx.x & (G16 - 1);
    const int grp = threadIdx.x / G16;
    const int step = ngrp * F16_R;
    for (int base = lo; base < hi; base += step) {
        float acc[F16_R][Q];
        bool ok[F16_R];
#pragma unroll
        for (int r = 0; r < F16_R; ++r) {
            const int row = base + r * ngrp + grp;
            ok[r] = row < hi && admits(tags[min(row, len - 1)], mode, tagv);
#pragma unroll
            for (int q = 0; q < Q; ++q) acc[r][q] = 0.0f;
        }
        uint4 xv[F16_R][CPT];
#pragma unroll
        for (int r = 0; r < F16_R; ++r) {
            const int row = base + r * ngrp + grp;
#pragma unroll
            for (int m = 0; m < CPT; ++m) {
                const int c = lane + m * G16;
                xv[r][m] = (ok[r] && c < NCH) ? __ldcs(reinterpret_cast<const uint4*>(rows + (size_t)row * LD + c * 8))
                                              : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int m = 0; m < CPT; ++m) {
            const int c = lane + m * G16;
            if (c >= NCH) break;
#pragma unroll
            for (int r = 0; r < F16_R; ++r) {
                float x[8];
                x[0] = h2f((u16)(xv[r][m].x & 0xffffu));
                x[1] = h2f((u16)(xv[r][m].x >> 16));
                x[2] = h2f((u16)(xv[r][m].y & 0xffffu));
                x[3] = h2f((u16)(xv[r][m].y >> 16));
                x[4] = h2f((u16)(xv[r][m].z & 0xffffu));
                x[5] = h2f((u16)(xv[r][m].z >> 16));
                x[6] = h2f((u16)(xv[r][m].w & 0xffffu));
                x[7] = h2f((u16)(xv[r][m].w >> 16));
#pragma unroll
                for (int q = 0; q < Q; ++q) {
                    const float4 a = *reinterpret_cast<const float4*>(qs + q * LD + c * 8);
                    const float4 b = *reinterpret_cast<const float4*>(qs + q * LD + c * 8 + 4);
                    float v = acc[r][q];
                    v = fmaf(a.x, x[0], v);
                    v = fmaf(a.y, x[1], v);
                    v = fmaf(a.z, x[2], v);
                    v = fmaf(a.w, x[3], v);
                    v = fmaf(b.x, x[4], v);
                    v = fmaf(b.y, x[5], v);
                    v = fmaf(b.z, x[6], v);
                    v = fmaf(b.w, x[7], v);
                    acc[r][q] = v;
                }
            }
        }
#pragma unroll
        for (int r = 0; r < F16_R; ++r) {
#pragma unroll
            for (int q = 0; q < Q; ++q) {
                float v = acc[r][q];
#pragma unroll
                for (int o = G16 / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
                acc[r][q] = v;
            }
            const int row = base + r * ngrp + grp;
            if (ok[r] && lane == 0) {
                float nrm = l2 ? norms[row] : 0.0f;
#pragma unroll
                for (int q = 0; q < Q; ++q) {
                    if (q < nqb) {
                        float key = l2 ? -(nrm - 2.0f * acc[r][q]) : acc[r][q];
                        sel_push(sel, q, pack(key, (u32)row));
                    }
                }
            }
        }
        sel_round(sel);
    }
    sel_finish(sel);
    for (int q = 0; q < nqb; ++q) sel_write(sel, q, out + ((size_t)(q0 + q) * P + pb) * k);
}

#define SCAN_F16(Q)                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) scan_f16_q##Q(                                              \
        const u16* rows, const u32* tags, const float* norms, const float* queries, int nq, int len, u32 mode,   \
        u32 tagv, int l2, int k, int S, int C, int P, u64* out, u64* gthr) {                                      \
        scan_f16_body<Q>(rows, tags, norms, queries, nq, len, mode, tagv, l2, k, S, C, P, out, gthr);                     \
    }
SCAN_F16(1)
SCAN_F16(2)
SCAN_F16(4)
SCAN_F16(8)

// ---------------------------------------------------------------------------
// fp16 batches, fused (`mma_scan`): tensor-core products (mma.sync m16n8k16,
// fp16 in, fp32 accumulate; the queries rounded to fp16 as for cuBLAS) of a
// block's 64 queries against tiles of 256 rows, selected in the same pass:
// no score matrix. The queries stay in shared memory for the whole scan; the
// rows stream through a 3-stage cp.async pipeline of 64-value chunks
// (ldmatrix fragments, padded rows: no bank conflicts). 8 warps, each 64
// rows x 32 queries (64 fp32 accumulators a thread). After a tile's last
// chunk every score is compared once with its query's bound (the block's
// k-th best or the global one, as fp32); the few above it are pushed into a
// small per-query buffer; a full buffer is flushed (sorted, bound raised,
// published) and the pushes that did not fit are retried from the
// registers. Needs DIMS % 16 == 0, sm_80+, k <= 64.
// The padded stage rows (KC + 8 halves: an odd number of 16-byte units) and
// query rows (LD + 8, LD % 16 == 0) keep every ldmatrix conflict-free.
// grid (G * P): block b serves query group b % G (blocks next to each other
// read the same rows: L2 reuse) and split b / G; block 256; dynamic smem
// MMA_SMEM(S) as the host computes it.

// KC (values a stage, 32 or 64) and NSTG (stages) may come from the host.
#define MQ 64
#define MR 256
#ifndef KC
#define KC 64
#endif
#ifndef NSTG
#define NSTG 3
#endif
#define PPR (KC / 8)
#define RLD (KC + 8)
#define QLD (LD + 8)
#define NKS (DIMS / 16)
#define NCHK ((DIMS + KC - 1) / KC)

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldm4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// The fp32 value of a bound (0: none, -inf).
__device__ __forceinline__ float bound_f(u64 t) {
    if (t == 0ull) return __int_as_float(0xff800000);
    u32 hi = (u32)(t >> 32);
    u32 bits = (hi & 0x80000000u) ? (hi & 0x7fffffffu) : ~hi;
    return __uint_as_float(bits);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    mma_scan(const u16* __restrict__ rows, const u32* __restrict__ tags, const float* __restrict__ norms,
             const u16* __restrict__ queries, int nq, int len, u32 mode, u32 tagv, int l2, int k, int S, int C, int P,
             int G, u64* __restrict__ out, u64* gthr) {
#if __CUDA_ARCH__ >= 800
    extern __shared__ __align__(16) unsigned char smem_q[];
    const int qg = blockIdx.x % G;
    const int pb = blockIdx.x / G;
    const int q0 = qg * MQ;
    const int nqb = min(MQ, nq - q0);
    Sel sel = sel_make(smem_q, MQ, S, C, k, 0, gthr + q0, nqb);
    const size_t sel_end = (SEL_BYTES(MQ, S) + 15) & ~(size_t)15;
    float* tf = reinterpret_cast<float*>(smem_q + sel_end);
    u16* stg = reinterpret_cast<u16*>(smem_q + sel_end + MQ * 4);
    u16* qs = stg + NSTG * MR * RLD;
    {
        const int per_q = LD / 8;
        for (int i = threadIdx.x; i < MQ * per_q; i += blockDim.x) {
            const int q = i / per_q, c = i - q * per_q;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (q < nqb) v = *reinterpret_cast<const uint4*>(queries + (size_t)(q0 + q) * LD + c * 8);
            *reinterpret_cast<uint4*>(qs + q * QLD + c * 8) = v;
        }
    }
    sel_init(sel);
    const int per = (len + P - 1) / P;
    const int lo = pb * per;
    const int hi = min(len, lo + per);
    const int ntile = hi > lo ? (hi - lo + MR - 1) / MR : 0;
    const int nst = ntile * NCHK;
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int wr = warp & 3, wq = warp >> 2;
    const int g = lane >> 2, t = lane & 3;
    const u32 cap = (u32)(S - C);

    // Stage s: tile s / NCHK, values (s % NCHK) * KC .. + KC of its rows.
    auto load_stage = [&](int s) {
        const int tb = lo + (s / NCHK) * MR;
        const int d0 = (s % NCHK) * KC;
        u16* dst = stg + (s % NSTG) * (MR * RLD);
#pragma unroll
        for (int j = 0; j < (MR * KC / 8) / 256; ++j) {
            const int i = tid + j * 256;
            const int r = i / PPR, pc = i % PPR;
            const int row = tb + r;
            const int d = d0 + pc * 8;
            if (row < hi && d < DIMS) {
                const u32 sa = smem_u32(dst + r * RLD + pc * 8);
                const u16* src = rows + (size_t)row * LD + d;
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(src) : "memory");
            }
        }
    };

#pragma unroll
    for (int s = 0; s < NSTG - 1; ++s) {
        if (s < nst) load_stage(s);
        asm volatile("cp.async.commit_group;" ::: "memory");
    }

    float acc[4][4][4];
    const u32 qbase = smem_u32(qs + (wq * 32 + ((lane >> 4) << 3) + (lane & 7)) * QLD + ((lane >> 3) & 1) * 8);
    for (int s = 0; s < nst; ++s) {
        asm volatile("cp.async.wait_group %0;" ::"n"(NSTG - 2) : "memory");
        __syncthreads();
        if (s + NSTG - 1 < nst) load_stage(s + NSTG - 1);
        asm volatile("cp.async.commit_group;" ::: "memory");
        const int ch = s % NCHK;
        if (ch == 0) {
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.0f;
        }
        const u32 abase = smem_u32(stg + (s % NSTG) * (MR * RLD) + (wr * 64 + (lane & 15)) * RLD + (lane >> 4) * 8);
#pragma unroll
        for (int kk = 0; kk < KC / 16; ++kk) {
            if (NKS % (KC / 16) != 0 && ch * (KC / 16) + kk >= NKS) break;
            u32 af[4][4], bf[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
                ldm4(af[mt][0], af[mt][1], af[mt][2], af[mt][3], abase + (mt * 16 * RLD + kk * 16) * 2);
#pragma unroll
            for (int np = 0; np < 2; ++np)
                ldm4(bf[2 * np][0], bf[2 * np][1], bf[2 * np + 1][0], bf[2 * np + 1][1],
                     qbase + (np * 16 * QLD + ch * KC + kk * 16) * 2);
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
                    mma16816(acc[mt][nt], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bf[nt][0], bf[nt][1]);
        }
        if (ch != NCHK - 1) continue;

        // Selection of tile s / NCHK.
        const int tb = lo + (s / NCHK) * MR;
        for (int q = tid; q < MQ; q += blockDim.x) {
            u64 b = sel.thr[q];
            if (q < nqb) {
                const u64 gv = *reinterpret_cast<volatile const u64*>(gthr + q0 + q);
                b = gv > b ? gv : b;
            }
            sel.thr[q] = b;
            tf[q] = bound_f(b);
        }
        __syncthreads();
        float nrm[4][2];
        bool rok[4][2];
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = tb + wr * 64 + mt * 16 + g + h * 8;
                rok[mt][h] = row < hi;
                nrm[mt][h] = (l2 && row < hi) ? norms[row] : 0.0f;
            }
        auto push = [&](u64 want) -> u64 {
            float tq[4][2];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int o = 0; o < 2; ++o) tq[nt][o] = tf[wq * 32 + nt * 8 + 2 * t + o];
            u64 fail = 0ull;
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int bit = (mt * 4 + nt) * 4 + e;
                        if (!((want >> bit) & 1ull)) continue;
                        const int h = e >> 1, o = e & 1;
                        const int ql = wq * 32 + nt * 8 + 2 * t + o;
                        float key = acc[mt][nt][e];
                        if (l2) key = -__fsub_rn(nrm[mt][h], __fmul_rn(2.0f, key));
                        if (rok[mt][h] && ql < nqb && key >= tq[nt][o]) {
                            const int row = tb + wr * 64 + mt * 16 + g + h * 8;
                            const u64 c = pack(key, (u32)row);
                            if (c > sel.thr[ql] && admits(tags[row], mode, tagv)) {
                                const u32 p = atomicAdd(&sel.cnt[ql], 1u);
                                if (p < cap) {
                                    sel.a[ql * S + C + p] = c;
                                } else {
                                    fail |= 1ull << bit;
                                }
                            }
                        }
                    }
            return fail;
        };
        u64 fail = push(~0ull);
        while (__syncthreads_or(fail != 0ull)) {
            for (int q = tid; q < MQ; q += blockDim.x) sel.cnt[q] = min(sel.cnt[q], cap);
            sel_flush(sel);
            for (int q = tid; q < MQ; q += blockDim.x) tf[q] = bound_f(sel.thr[q]);
            __syncthreads();
            fail = push(fail);
        }
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    sel_finish(sel);
    for (int q = 0; q < nqb; ++q) sel_write(sel, q, out + ((size_t)(q0 + q) * P + pb) * k);
#endif
}

// ---------------------------------------------------------------------------
// Batches (fp16): select from a chunk of the score matrix that cuBLAS wrote,
// scores[qi*ld + r] = dot(query qi, row row0 + r), r < nrows.
// grid (P * nq) (block b: split b % P, query b / P); block 256; 2 float4 of
// scores per thread per round; dynamic smem SEL_BYTES(1,S). Writes partial
// list (qi, pbase + split) of ptot.

// Scores are read as float4: ld is a multiple of 4 and so is every split.
#define SEL_V 2
extern "C" __global__ void __launch_bounds__(256) select(const float* __restrict__ scores, int ld, int row0, int nrows,
                                                         const u32* __restrict__ tags, const float* __restrict__ norms,
                                                         u32 mode, u32 tagv, int l2, int k, int S, int C, int P,
                                                         u64* __restrict__ out, int ptot, int pbase, u64* gthr) {
    extern __shared__ __align__(16) unsigned char smem_s[];
    const int pb = blockIdx.x % P;
    const int qi = blockIdx.x / P;
    Sel sel = sel_make(smem_s, 1, S, C, k, (int)blockDim.x * SEL_V * 4, gthr + qi, 1);
    sel_init(sel);
    const int n4 = (nrows + 3) / 4;
    const int per = (n4 + P - 1) / P;
    const int lo = pb * per;
    const int hi = min(n4, lo + per);
    const float4* sc = reinterpret_cast<const float4*>(scores + (size_t)qi * ld);
    const u64 thr0 = sel.thr[0];
    for (int base = lo; base < hi; base += blockDim.x * SEL_V) {
        float4 v[SEL_V];
#pragma unroll
        for (int u = 0; u < SEL_V; ++u) {
            const int j = base + u * blockDim.x + threadIdx.x;
            v[u] = j < hi ? __ldcs(sc + j) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        const u64 thr = sel.thr[0] > thr0 ? sel.thr[0] : thr0;
#pragma unroll
        for (int u = 0; u < SEL_V; ++u) {
            const int j = base + u * blockDim.x + threadIdx.x;
            if (j >= hi) continue;
            const float e[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const int r = 4 * j + t;
                if (r >= nrows) break;
                const int row = row0 + r;
                float key = e[t];
                if (l2) key = -__fsub_rn(norms[row], __fmul_rn(2.0f, key));
                const u64 c = pack(key, (u32)row);
                if (c > thr && admits(tags[row], mode, tagv)) sel_push(sel, 0, c);
            }
        }
        sel_round(sel);
    }
    sel_finish(sel);
    sel_write(sel, 0, out + ((size_t)qi * ptot + pbase + pb) * k);
}

// ---------------------------------------------------------------------------
// Merge: for query blockIdx.x, the best k of lists parts[(qi*ptot + p)*k ..]
// for p < np, written to out + qi*out_stride (may be list 0 itself: every
// entry is read before anything is written). grid (nq); block 256.

extern "C" __global__ void __launch_bounds__(256) merge(const u64* parts, int ptot, int np, int k, int S, int C,
                                                        u64* out, long long out_stride, const u64* gthr) {
    extern __shared__ __align__(16) unsigned char smem_m[];
    Sel sel = sel_make(smem_m, 1, S, C, k, (int)blockDim.x, 0, 0);
    sel_init(sel);
    const int qi = blockIdx.x;
    // The final bound: its own entry (== bound) must still be admitted.
    if (threadIdx.x == 0 && gthr != 0 && gthr[qi] != 0ull) sel.thr[0] = gthr[qi] - 1ull;
    __syncthreads();
    const u64* src = parts + (size_t)qi * ptot * k;
    const int total = np * k;
    for (int base = 0; base < total; base += blockDim.x) {
        const int i = base + threadIdx.x;
        if (i < total) {
            u64 v = src[i];
            if (v != 0ull) sel_push(sel, 0, v);
        }
        sel_round(sel);
    }
    sel_finish(sel);
    sel_write(sel, 0, out + (size_t)qi * out_stride);
}

// ---------------------------------------------------------------------------
// Storage maintenance.

// Scatter n staged rows (LD values each, padding zero) to their slots, set
// their tags and (l2) their squared norms from the stored values in the
// contract's 8-lane order. One block of 128 threads per row.
template <typename T>
__device__ void scatter_body(const T* __restrict__ staged, const u32* __restrict__ slots,
                             const u32* __restrict__ stags, int n, T* __restrict__ rows, u32* __restrict__ tags,
                             float* __restrict__ norms);

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(u16 v) { return h2f(v); }

template <typename T>
__device__ void scatter_body(const T* __restrict__ staged, const u32* __restrict__ slots,
                             const u32* __restrict__ stags, int n, T* __restrict__ rows, u32* __restrict__ tags,
                             float* __restrict__ norms) {
    const int i = blockIdx.x;
    if (i >= n) return;
    const u32 slot = slots[i];
    const T* src = staged + (size_t)i * LD;
    T* dst = rows + (size_t)slot * LD;
    for (int j = threadIdx.x; j < LD; j += blockDim.x) dst[j] = src[j];
    if (threadIdx.x == 0) tags[slot] = stags[i];
    if (norms != 0 && threadIdx.x < 8) {
        const int lane = threadIdx.x;
        float l = 0.0f;
        for (int j = lane; j < DIMS; j += 8) {
            float v = to_f(src[j]);
            l = __fadd_rn(l, __fmul_rn(v, v));
        }
        l = __fadd_rn(l, __shfl_xor_sync(0xffu, l, 4));
        l = __fadd_rn(l, __shfl_xor_sync(0xffu, l, 2));
        l = __fadd_rn(l, __shfl_xor_sync(0xffu, l, 1));
        if (lane == 0) norms[slot] = l;
    }
}

extern "C" __global__ void scatter_f32(const float* staged, const u32* slots, const u32* stags, int n, float* rows,
                                       u32* tags, float* norms) {
    scatter_body<float>(staged, slots, stags, n, rows, tags, norms);
}
extern "C" __global__ void scatter_f16(const u16* staged, const u32* slots, const u32* stags, int n, u16* rows,
                                       u32* tags, float* norms) {
    scatter_body<u16>(staged, slots, stags, n, rows, tags, norms);
}

// tags[slots[i]] = tag for i < n.
extern "C" __global__ void set_tags(const u32* slots, int n, u32 tag, u32* tags) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) tags[slots[i]] = tag;
}

// Gather rows (row_bytes each, a multiple of 16), tags and norms of slots
// keep[0..n) into dst_rows / dst_tags / dst_norms (norms may be null).
// One block per row.
extern "C" __global__ void gather(const unsigned char* rows, const u32* tags, const float* norms, const u32* keep,
                                  int n, int row_bytes, unsigned char* dst_rows, u32* dst_tags, float* dst_norms) {
    const int i = blockIdx.x;
    if (i >= n) return;
    const u32 s = keep[i];
    const uint4* src = reinterpret_cast<const uint4*>(rows + (size_t)s * row_bytes);
    uint4* dst = reinterpret_cast<uint4*>(dst_rows + (size_t)i * row_bytes);
    for (int j = threadIdx.x; j < row_bytes / 16; j += blockDim.x) dst[j] = src[j];
    if (threadIdx.x == 0) {
        dst_tags[i] = tags[s];
        if (norms != 0) dst_norms[i] = norms[s];
    }
}

// Benchmarks: fill rows [row0, row0+n) of an fp16 store with pseudo-random
// unit vectors (a hash of (seed, row, j)), tags NO_NAMESPACE (0). One warp
// per row.
extern "C" __global__ void bench_fill_f16(u16* rows, u32* tags, int row0, int n, u32 seed) {
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= n) return;
    const u32 row = (u32)(row0 + w);
    float ss = 0.0f;
    for (int j = lane; j < DIMS; j += 32) {
        u32 h = (row * 0x9E3779B1u) ^ (j * 0x85EBCA77u) ^ (seed * 0xC2B2AE3Du);
        h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
        float v = (float)(h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
        ss += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(FULL_MASK, ss, o);
    const float inv = rsqrtf(fmaxf(ss, 1e-30f));
    for (int j = lane; j < LD; j += 32) {
        float v = 0.0f;
        if (j < DIMS) {
            u32 h = (row * 0x9E3779B1u) ^ (j * 0x85EBCA77u) ^ (seed * 0xC2B2AE3Du);
            h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
            v = ((float)(h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * inv;
        }
        u16 hv;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(hv) : "f"(v));
        rows[(size_t)row * LD + j] = hv;
    }
    if (lane == 0) tags[row] = 0u;
}
