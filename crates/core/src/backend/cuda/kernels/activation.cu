// Bias + activation, in place on the FFN intermediate [rows, cols]:
//   x = act(x + bias[col])
// act: 0 = GELU (erf, exact), 1 = GELU (tanh approximation), 2 = ReLU.
// cols is a multiple of 8. Grid (ceil(cols/8 / blockDim.x), rows...): each
// thread handles 8 consecutive values of a row (4 pair loads); grid rows
// stride over the token rows (so any row count fits the 65535 limit).

static __device__ __forceinline__ float act_fn(float x, int act) {
    if (act == 0) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    if (act == 1) {
        const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    return fmaxf(x, 0.0f);
}

template <class D>
static __device__ void bias_act(typename D::T* x, const float* __restrict__ bias, int rows, int cols, int act) {
    const int col = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (col >= cols) return;
    float b[8];
#pragma unroll
    for (int i = 0; i < 8; i++) b[i] = bias[col + i];
    for (int row = blockIdx.y; row < rows; row += gridDim.y) {
        typename D::T* p = x + (size_t)row * cols + col;
        float v[8];
#pragma unroll
        for (int i = 0; i < 4; i++) D::load2(p + 2 * i, v[2 * i], v[2 * i + 1]);
#pragma unroll
        for (int i = 0; i < 4; i++) D::store2(p + 2 * i, act_fn(v[2 * i] + b[2 * i], act), act_fn(v[2 * i + 1] + b[2 * i + 1], act));
    }
}

#define BIAS_ACT(NAME, D)                                                                           \
    extern "C" __global__ void NAME(D::T* x, const float* bias, int rows, int cols, int act) {     \
        bias_act<D>(x, bias, rows, cols, act);                                                      \
    }
ONLY_F16(BIAS_ACT(bias_act_f16, DF16))
ONLY_BF16(BIAS_ACT(bias_act_bf16, DBF16))
ONLY_F32(BIAS_ACT(bias_act_f32, DF32))
