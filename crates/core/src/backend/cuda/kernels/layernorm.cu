// Bias + residual + LayerNorm, in place on the residual stream:
//   hidden[r] = LN(x[r] + bias + hidden[r]) * gamma + beta
// x is the GEMM output (attention output projection or FFN down projection).
// One warp per row; fp32 statistics.

template <class D>
static __device__ void bias_residual_ln(const typename D::T* __restrict__ x, const float* __restrict__ bias,
                                        typename D::T* hidden, const float* __restrict__ gamma,
                                        const float* __restrict__ beta, int rows, float eps) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const typename D::T* xr = x + (size_t)row * HIDDEN;
    typename D::T* hr = hidden + (size_t)row * HIDDEN;
    float v[2 * PAIRS];
#pragma unroll
    for (int k = 0; k < PAIRS; k++) {
        const int col = k * 64 + 2 * lane;
        float a0, a1, r0, r1;
        D::load2(xr + col, a0, a1);
        D::load2(hr + col, r0, r1);
        v[2 * k] = a0 + bias[col] + r0;
        v[2 * k + 1] = a1 + bias[col + 1] + r1;
    }
    ln_store<D>(v, hr, gamma, beta, eps, lane);
}

#define BIAS_RESIDUAL_LN(NAME, D)                                                                                           \
    extern "C" __global__ void NAME(const D::T* x, const float* bias, D::T* hidden, const float* gamma, const float* beta, \
                                    int rows, float eps) {                                                                  \
        bias_residual_ln<D>(x, bias, hidden, gamma, beta, rows, eps);                                                       \
    }
ONLY_F16(BIAS_RESIDUAL_LN(bias_residual_ln_f16, DF16))
ONLY_BF16(BIAS_RESIDUAL_LN(bias_residual_ln_bf16, DBF16))
ONLY_F32(BIAS_RESIDUAL_LN(bias_residual_ln_f32, DF32))

// Packed hidden state to fp32 (the `last_hidden` output).
template <class D>
static __device__ void to_f32(const typename D::T* __restrict__ x, float* __restrict__ out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = D::to(x[i]);
}
#define TO_F32(NAME, D) \
    extern "C" __global__ void NAME(const D::T* x, float* out, long long n) { to_f32<D>(x, out, n); }
ONLY_F16(TO_F32(to_f32_f16, DF16))
ONLY_BF16(TO_F32(to_f32_bf16, DBF16))
ONLY_F32(TO_F32(to_f32_f32, DF32))
