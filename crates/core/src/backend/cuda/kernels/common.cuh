// Shared prelude of every cuda-engine kernel file (prepended by the Rust side,
// never #included: NVRTC compiles these sources with no include path and no
// CUDA headers, so half/bfloat16 are handled as raw 16-bit words here).
//
// Compile-time model constants come in as -D macros from the host:
//   HIDDEN    hidden size (multiple of 64)
//   HEAD_DIM  attention head size (multiple of 32, <= 128)
// Storage types: DF16 (IEEE half), DBF16 (bfloat16), DF32 (float). All
// arithmetic is fp32; only loads/stores convert.

// Each program instantiates its kernels for one storage dtype only, named
// by the host (-DDTYPE_F16, -DDTYPE_BF16 or -DDTYPE_F32): a third of the
// code for NVRTC to compile at start-up.
#if defined(DTYPE_F16)
#define ONLY_F16(...) __VA_ARGS__
#else
#define ONLY_F16(...)
#endif
#if defined(DTYPE_BF16)
#define ONLY_BF16(...) __VA_ARGS__
#else
#define ONLY_BF16(...)
#endif
#if defined(DTYPE_F32)
#define ONLY_F32(...) __VA_ARGS__
#else
#define ONLY_F32(...)
#endif

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

struct DF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float to(T v) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
        return f;
    }
    static __device__ __forceinline__ T from(float f) {
        T v;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(v) : "f"(f));
        return v;
    }
    // Two consecutive elements (p must be 4-byte aligned).
    static __device__ __forceinline__ void load2(const T* p, float& a, float& b) {
        unsigned int u = *reinterpret_cast<const unsigned int*>(p);
        a = to((T)(u & 0xffffu));
        b = to((T)(u >> 16));
    }
    static __device__ __forceinline__ void store2(T* p, float a, float b) {
        unsigned int u = (unsigned int)from(a) | ((unsigned int)from(b) << 16);
        *reinterpret_cast<unsigned int*>(p) = u;
    }
};

struct DBF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float to(T v) { return __uint_as_float(((unsigned int)v) << 16); }
    static __device__ __forceinline__ T from(float f) {
#if __CUDA_ARCH__ >= 800
        T v;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(v) : "f"(f));
        return v;
#else
        unsigned int u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (T)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (T)(u >> 16);
#endif
    }
    static __device__ __forceinline__ void load2(const T* p, float& a, float& b) {
        unsigned int u = *reinterpret_cast<const unsigned int*>(p);
        a = __uint_as_float(u << 16);
        b = __uint_as_float(u & 0xffff0000u);
    }
    static __device__ __forceinline__ void store2(T* p, float a, float b) {
        unsigned int u = (unsigned int)from(a) | ((unsigned int)from(b) << 16);
        *reinterpret_cast<unsigned int*>(p) = u;
    }
};

struct DF32 {
    typedef float T;
    static __device__ __forceinline__ float to(T v) { return v; }
    static __device__ __forceinline__ T from(float f) { return f; }
    static __device__ __forceinline__ void load2(const T* p, float& a, float& b) {
        float2 v = *reinterpret_cast<const float2*>(p);
        a = v.x;
        b = v.y;
    }
    static __device__ __forceinline__ void store2(T* p, float a, float b) {
        *reinterpret_cast<float2*>(p) = make_float2(a, b);
    }
};

static __device__ __forceinline__ __attribute__((unused)) float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ __attribute__((unused)) float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Per-lane share of a HIDDEN-long row, handled as pairs: lane `l` owns
// columns k*64 + 2l and k*64 + 2l + 1 for k < HIDDEN/64 (coalesced 4/8-byte
// accesses across the warp).
#define PAIRS (HIDDEN / 64)

// LayerNorm of the row held in v[2*PAIRS] (fp32 statistics, two-pass),
// written to out[col] with gamma/beta.
template <class D>
static __device__ __forceinline__ void ln_store(float (&v)[2 * PAIRS], typename D::T* out, const float* __restrict__ gamma,
                                                const float* __restrict__ beta, float eps, int lane) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 2 * PAIRS; i++) s += v[i];
    const float mean = warp_sum(s) * (1.0f / HIDDEN);
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < 2 * PAIRS; i++) {
        const float d = v[i] - mean;
        q += d * d;
    }
    const float inv = rsqrtf(warp_sum(q) * (1.0f / HIDDEN) + eps);
#pragma unroll
    for (int k = 0; k < PAIRS; k++) {
        const int col = k * 64 + 2 * lane;
        const float a = (v[2 * k] - mean) * inv * gamma[col] + beta[col];
        const float b = (v[2 * k + 1] - mean) * inv * gamma[col + 1] + beta[col + 1];
        D::store2(out + col, a, b);
    }
}
