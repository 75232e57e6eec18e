//! The CPU backend: the BERT encoder in fp32 on a private rayon pool.
//!
//! Layout: activations are packed `[total_tokens, hidden]` (see
//! [`TokenBatch`]); no sequence is padded to another. The big matrix
//! products (fused QKV, attention output, FFN) run over all tokens of the
//! batch at once through the `gemm` crate; attention runs per
//! (sequence, head) pair, in parallel, on that sequence's rows only, so no
//! padding mask is needed.
//!
//! Weights are re-laid out once at construction: Linear weights are stored
//! transposed (`[in, out]`, what gemm's microkernel packs fastest) and
//! Q/K/V are concatenated into one `[hidden, 3·hidden]` matrix so one GEMM
//! produces all three.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Backend, ForwardOutput, TokenBatch};
use crate::err;
use crate::error::Result;
use crate::model::{Activation, BertConfig, BertWeights, Linear, ModelConfig, Pooling};

/// Below this many multiply-adds a GEMM runs on the calling thread: splitting
/// a tiny product over the pool costs more than it saves (single short
/// sentences).
const GEMM_PAR_THRESHOLD: usize = 1 << 20;
/// GEMMs over fewer token rows than this also stay on one thread: gemm's
/// split over rows gives each thread too little to amortize the wake-up.
const GEMM_PAR_MIN_ROWS: usize = 32;
/// Rows handled per rayon task in row-wise ops (LayerNorm, GELU, gathers).
const ROWS_PER_TASK: usize = 16;

struct CpuLinear {
    /// `[in, out]` row-major (transposed from PyTorch's `[out, in]`).
    w_t: Vec<f32>,
    bias: Vec<f32>,
    inp: usize,
    out: usize,
}

impl CpuLinear {
    fn from_parts(parts: &[&Linear]) -> CpuLinear {
        let inp = parts[0].in_features();
        let out: usize = parts.iter().map(|l| l.out_features()).sum();
        let mut w_t = vec![0f32; inp * out];
        let mut bias = Vec::with_capacity(out);
        let mut col0 = 0;
        for l in parts {
            let o = l.out_features();
            for r in 0..o {
                for c in 0..inp {
                    w_t[c * out + col0 + r] = l.weight.data[r * inp + c];
                }
            }
            bias.extend_from_slice(&l.bias.data);
            col0 += o;
        }
        CpuLinear { w_t, bias, inp, out }
    }
}

struct CpuLayer {
    qkv: CpuLinear,
    attn_out: CpuLinear,
    ln1: (Vec<f32>, Vec<f32>),
    inter: CpuLinear,
    output: CpuLinear,
    ln2: (Vec<f32>, Vec<f32>),
}

/// The fp32 CPU implementation of [`Backend`].
pub struct CpuBackend {
    cfg: BertConfig,
    pooling: Pooling,
    pool: rayon::ThreadPool,
    threads: usize,
    word: Vec<f32>,
    pos: Vec<f32>,
    typ: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<CpuLayer>,
}

impl CpuBackend {
    /// Build from loaded weights. `threads`: size of the private compute
    /// pool (default: available parallelism).
    pub fn new(weights: &BertWeights, config: &ModelConfig, threads: Option<usize>) -> Result<CpuBackend> {
        let threads = threads
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cuda-engine-cpu-{i}"))
            .build()
            .map_err(|e| err!(Internal, "cannot start the CPU compute pool ({threads} threads): {e}"))?;
        let layers = weights
            .layers
            .iter()
            .map(|l| CpuLayer {
                qkv: CpuLinear::from_parts(&[&l.query, &l.key, &l.value]),
                attn_out: CpuLinear::from_parts(&[&l.attention_output]),
                ln1: (l.attention_layer_norm.weight.data.clone(), l.attention_layer_norm.bias.data.clone()),
                inter: CpuLinear::from_parts(&[&l.intermediate]),
                output: CpuLinear::from_parts(&[&l.output]),
                ln2: (l.output_layer_norm.weight.data.clone(), l.output_layer_norm.bias.data.clone()),
            })
            .collect();
        Ok(CpuBackend {
            cfg: weights.config.clone(),
            pooling: config.pooling,
            pool,
            threads,
            word: weights.word_embeddings.data.clone(),
            pos: weights.position_embeddings.data.clone(),
            typ: weights.token_type_embeddings.data.clone(),
            emb_ln: (weights.embeddings_layer_norm.weight.data.clone(), weights.embeddings_layer_norm.bias.data.clone()),
            layers,
        })
    }

    /// Threads in the compute pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, b: &TokenBatch, want_hidden: bool) -> Result<ForwardOutput> {
        let c = &self.cfg;
        b.validate(c.vocab_size, c.type_vocab_size, c.max_position_embeddings)?;
        let h = c.hidden_size;
        let t = b.total_tokens();
        let eps = c.layer_norm_eps;

        // Embeddings: word + position + token type, then LayerNorm.
        let mut x = vec![0f32; t * h];
        x.par_chunks_mut(h * ROWS_PER_TASK).enumerate().for_each(|(ci, chunk)| {
            for (ri, row) in chunk.chunks_mut(h).enumerate() {
                let i = ci * ROWS_PER_TASK + ri;
                let w = &self.word[b.input_ids[i] as usize * h..][..h];
                let p = &self.pos[b.position_ids[i] as usize * h..][..h];
                let ty = &self.typ[b.token_type_ids[i] as usize * h..][..h];
                for j in 0..h {
                    row[j] = w[j] + p[j] + ty[j];
                }
                layer_norm(row, &self.emb_ln.0, &self.emb_ln.1, eps);
            }
        });

        let mut qkv = vec![0f32; t * 3 * h];
        let mut ctx = vec![0f32; t * h];
        let mut tmp = vec![0f32; t * h];
        let mut inter = vec![0f32; t * c.intermediate_size];
        for layer in &self.layers {
            // QKV = x·Wqkv + b
            fill_bias(&mut qkv, &layer.qkv.bias);
            linear_acc(&mut qkv, &x, &layer.qkv, t);
            self.attention(b, &qkv, &mut ctx);
            // x = LN(x + ctx·Wo + bo)
            fill_residual_bias(&mut tmp, &x, &layer.attn_out.bias);
            linear_acc(&mut tmp, &ctx, &layer.attn_out, t);
            rows_layer_norm(&mut tmp, h, &layer.ln1, eps);
            std::mem::swap(&mut x, &mut tmp);
            // FFN: x = LN(x + act(x·Wi + bi)·Wo + bo)
            fill_bias(&mut inter, &layer.inter.bias);
            linear_acc(&mut inter, &x, &layer.inter, t);
            activation(&mut inter, c.hidden_act);
            fill_residual_bias(&mut tmp, &x, &layer.output.bias);
            linear_acc(&mut tmp, &inter, &layer.output, t);
            rows_layer_norm(&mut tmp, h, &layer.ln2, eps);
            std::mem::swap(&mut x, &mut tmp);
        }

        let n = b.n_seqs();
        let mut pooled = vec![0f32; n * h];
        pooled.par_chunks_mut(h).enumerate().for_each(|(s, out)| {
            let r = b.seq_range(s);
            let rows = &x[r.start * h..r.end * h];
            pool_rows(out, rows, h, self.pooling);
        });
        Ok(ForwardOutput { pooled, last_hidden: want_hidden.then_some(x), hidden: h })
    }

    /// Scaled dot-product attention per (sequence, head), reading Q, K, V
    /// from the packed `[T, 3H]` buffer and writing `[T, H]` context.
    fn attention(&self, b: &TokenBatch, qkv: &[f32], ctx: &mut [f32]) {
        let c = &self.cfg;
        let h = c.hidden_size;
        let nh = c.num_attention_heads;
        let d = c.head_dim();
        let scale = 1.0 / (d as f32).sqrt();
        let ctx_ptr = SendPtr(ctx.as_mut_ptr());
        let n = b.n_seqs();
        (0..n * nh).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, job| {
            let (s, head) = (job / nh, job % nh);
            let r = b.seq_range(s);
            let l = r.len();
            scores.clear();
            scores.resize(l * l, 0.0);
            let q = qkv[r.start * 3 * h + head * d..].as_ptr();
            let k = qkv[r.start * 3 * h + h + head * d..].as_ptr();
            let v = qkv[r.start * 3 * h + 2 * h + head * d..].as_ptr();
            let row = (3 * h) as isize;
            // SAFETY: every pointer stays inside its buffer: rows
            // r.start..r.end of `qkv` ([T, 3H]) at column offsets below 3H,
            // `scores` is l×l, and the context block (rows of this sequence,
            // columns head·d..head·d+d) is written by this job only, so the
            // parallel writes through `ctx_ptr` never overlap; `ctx` outlives
            // the parallel loop.
            unsafe {
                // scores[i, j] = scale · Σ q[i, :]·k[j, :]
                gemm::gemm(
                    l, l, d,
                    scores.as_mut_ptr(), 1, l as isize, false,
                    q, 1, row,
                    k, row, 1,
                    0.0, scale, false, false, false, Parallelism::None,
                );
                for srow in scores.chunks_mut(l) {
                    softmax(srow);
                }
                // ctx[i, head] = Σ_j p[i, j] · v[j, :]
                let out = ctx_ptr.get().add(r.start * h + head * d);
                gemm::gemm(
                    l, d, l,
                    out, 1, h as isize, false,
                    scores.as_ptr(), 1, l as isize,
                    v, 1, row,
                    0.0, 1.0, false, false, false, Parallelism::None,
                );
            }
        });
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn forward(&self, batch: &TokenBatch, want_last_hidden: bool) -> Result<ForwardOutput> {
        if batch.n_seqs() == 0 {
            return Ok(ForwardOutput { pooled: Vec::new(), last_hidden: want_last_hidden.then(Vec::new), hidden: self.cfg.hidden_size });
        }
        self.pool.install(|| self.run(batch, want_last_hidden))
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to rayon jobs
// (see `attention`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst[m, out] += x[m, in] · w_t[in, out]` (dst already holds bias/residual).
fn linear_acc(dst: &mut [f32], x: &[f32], lin: &CpuLinear, m: usize) {
    let (k, n) = (lin.inp, lin.out);
    debug_assert!(dst.len() >= m * n && x.len() >= m * k);
    let par = if m >= GEMM_PAR_MIN_ROWS && m * n * k >= GEMM_PAR_THRESHOLD && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: dst is m×n row-major, x is m×k row-major, w_t is k×n
    // row-major; the asserts above and the construction of CpuLinear
    // guarantee the sizes.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, true,
            x.as_ptr(), 1, k as isize,
            lin.w_t.as_ptr(), 1, n as isize,
            1.0, 1.0, false, false, false, par,
        );
    }
}

fn fill_bias(dst: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    dst.par_chunks_mut(n * ROWS_PER_TASK).for_each(|chunk| {
        for row in chunk.chunks_mut(n) {
            row.copy_from_slice(bias);
        }
    });
}

fn fill_residual_bias(dst: &mut [f32], residual: &[f32], bias: &[f32]) {
    let n = bias.len();
    dst.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(residual.par_chunks(n * ROWS_PER_TASK))
        .for_each(|(d, r)| {
            for (drow, rrow) in d.chunks_mut(n).zip(r.chunks(n)) {
                for j in 0..n {
                    drow[j] = rrow[j] + bias[j];
                }
            }
        });
}

fn rows_layer_norm(x: &mut [f32], h: usize, ln: &(Vec<f32>, Vec<f32>), eps: f32) {
    x.par_chunks_mut(h * ROWS_PER_TASK).for_each(|chunk| {
        for row in chunk.chunks_mut(h) {
            layer_norm(row, &ln.0, &ln.1, eps);
        }
    });
}

/// LayerNorm of one row: two-pass mean and variance in f32 (as PyTorch's
/// CPU kernel; rows are only `hidden` long, so summation error stays ~1e-7).
fn layer_norm(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + bb;
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

fn activation(x: &mut [f32], act: Activation) {
    x.par_chunks_mut(4096).for_each(|chunk| match act {
        Activation::GeluErf => {
            for v in chunk {
                *v = gelu_erf(*v);
            }
        }
        Activation::GeluTanh => {
            for v in chunk {
                let u = 0.797_884_6 * (*v + 0.044_715 * *v * *v * *v);
                *v = 0.5 * *v * (1.0 + u.tanh());
            }
        }
        Activation::Relu => {
            for v in chunk {
                *v = v.max(0.0);
            }
        }
    });
}

fn pool_rows(out: &mut [f32], rows: &[f32], h: usize, pooling: Pooling) {
    let l = rows.len() / h;
    match pooling {
        Pooling::Cls => out.copy_from_slice(&rows[..h]),
        Pooling::Max => {
            out.copy_from_slice(&rows[..h]);
            for r in rows.chunks(h).skip(1) {
                for (o, &v) in out.iter_mut().zip(r) {
                    *o = o.max(v);
                }
            }
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            out.fill(0.0);
            for r in rows.chunks(h) {
                for (o, &v) in out.iter_mut().zip(r) {
                    *o += v;
                }
            }
            let div = if pooling == Pooling::Mean { l as f32 } else { (l as f32).sqrt() };
            for o in out.iter_mut() {
                *o /= div;
            }
        }
    }
}

/// Exact-form GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf with absolute error below 1.2e-7 (Numerical Recipes `erfc` Chebyshev
/// fit, evaluated in f32 with a branch-free exp so the loop vectorizes;
/// libm's erff is a scalar call and was the FFN's hot spot).
#[inline]
fn erf_f32(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp_f32(poly);
    let r = 1.0 - erfc;
    if x < 0.0 { -r } else { r }
}

/// exp for f32 (Cephes `expf` polynomial, ~1 ulp on [-87, 88]), written
/// without calls or branches so loops over it vectorize.
#[inline]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by the 1.5·2²³ trick: `f32::round` is a libm call
    // that blocks vectorization (it showed up at ~5% in perf).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r2
        * r
        + 0.5 * r2
        + r
        + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_std_and_libm_reference() {
        // Reference values from f64 std (exp) and a table for erf.
        let mut x = -20.0f32;
        while x < 20.0 {
            let e = exp_f32(x) as f64;
            let r = (x as f64).exp();
            assert!(((e - r) / r).abs() < 3e-7, "exp({x}) = {e} vs {r}");
            x += 0.0137;
        }
        for (x, want) in [(0.0f32, 0.0f64), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (-1.5, -0.966_105_146_475_310_7), (3.0, 0.999_977_909_503_001_4)] {
            let got = erf_f32(x) as f64;
            assert!((got - want).abs() < 2e-7, "erf({x}) = {got} vs {want}");
        }
    }
}
