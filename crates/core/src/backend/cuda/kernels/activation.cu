// Bias + activation, in place on the FFN intermediate [rows, cols]:
//   x = act(x + bias[col])
// act: 0 = GELU (erf, exact), 1 = GELU (tanh approximation), 2 = ReLU.
// cols is even; each thread handles a pair per grid-stride step.

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
    const long long pairs = (long long)rows * cols / 2;
    const int half_cols = cols / 2;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += (long long)gridDim.x * blockDim.x) {
        const int col = (int)(i % half_cols) * 2;
        float a, b;
        D::load2(x + 2 * i, a, b);
        D::store2(x + 2 * i, act_fn(a + bias[col], act), act_fn(b + bias[col + 1], act));
    }
}

#define BIAS_ACT(NAME, D)                                                                           \
    extern "C" __global__ void NAME(D::T* x, const float* bias, int rows, int cols, int act) {     \
        bias_act<D>(x, bias, rows, cols, act);                                                      \
    }
BIAS_ACT(bias_act_f16, DF16)
BIAS_ACT(bias_act_bf16, DBF16)
BIAS_ACT(bias_act_f32, DF32)
