//! Row-wise kernels of the CPU backend (bias + activation, bias + residual +
//! LayerNorm, embeddings, attention for one head), compiled twice: once for
//! the baseline target (SSE2) and once with AVX2+FMA enabled, picked at run
//! time. The crate is built for generic x86-64, so without the second copy
//! LLVM vectorizes these loops 4-wide at best and not at all where they call
//! `exp` (GELU's erf was ~15% of a batch's CPU time, scalar).
//!
//! The bodies are plain Rust written so they vectorize (no calls, no
//! branches in the inner loops, reductions over 8 independent lanes). No
//! fast-math: LLVM does not contract `a*b+c` into FMA by itself, so the
//! AVX2 copy rounds exactly like the scalar one except where a reduction's
//! order is spelled out here (LayerNorm's and softmax's 8-lane sums).

use crate::model::Activation;

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Define `pub fn $name(args)` that runs `$body` (an `#[inline(always)]`
/// function) compiled for AVX2+FMA when the CPU has it.
macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) => $body:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($a: $t),*) {
                    $body($($a),*)
                }
                if has_avx2() {
                    // SAFETY: the CPU supports the features `avx2` was
                    // compiled for (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

dispatch! {
    /// `x[r, :] = act(x[r, :] + bias)` for every row of `x`.
    pub fn bias_act(x: &mut [f32], bias: &[f32], act: Activation) => bias_act_body
}
dispatch! {
    /// `x[r, :] += bias` for every row of `x`.
    pub fn add_bias(x: &mut [f32], bias: &[f32]) => add_bias_body
}
dispatch! {
    /// `x[r, :] = LN(x[r, :] + bias + res[r, :])` for every row.
    pub fn bias_residual_ln(x: &mut [f32], res: &[f32], bias: &[f32], g: &[f32], b: &[f32], eps: f32) => bias_residual_ln_body
}
dispatch! {
    /// `x[r, :] = LN(word[ids[r]] + pos[pos_ids[r]] + typ[type_ids[r]])`.
    pub fn embed_ln(
        x: &mut [f32], ids: &[u32], pos_ids: &[u32], type_ids: &[u32],
        word: &[f32], pos: &[f32], typ: &[f32], g: &[f32], b: &[f32], eps: f32
    ) => embed_ln_body
}
dispatch! {
    /// Attention of one head of one sequence; see [`attention_head_body`].
    pub fn attention_head(qkv: &[f32], h: usize, l: usize, d: usize, scale: f32, ctx: &mut HeadRows<'_>, scratch: &mut Vec<f32>) => attention_head_body
}
#[inline(always)]
fn bias_act_body(x: &mut [f32], bias: &[f32], act: Activation) {
    let n = bias.len();
    for row in x.chunks_exact_mut(n) {
        match act {
            Activation::GeluErf => {
                for (v, &bb) in row.iter_mut().zip(bias) {
                    *v = gelu_erf(*v + bb);
                }
            }
            Activation::GeluTanh => {
                for (v, &bb) in row.iter_mut().zip(bias) {
                    let y = *v + bb;
                    let u = 0.797_884_6 * (y + 0.044_715 * y * y * y);
                    *v = 0.5 * y * (1.0 + tanh_f32(u));
                }
            }
            Activation::Relu => {
                for (v, &bb) in row.iter_mut().zip(bias) {
                    *v = (*v + bb).max(0.0);
                }
            }
        }
    }
}

#[inline(always)]
fn add_bias_body(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, &bb) in row.iter_mut().zip(bias) {
            *v += bb;
        }
    }
}

#[inline(always)]
fn bias_residual_ln_body(x: &mut [f32], res: &[f32], bias: &[f32], g: &[f32], b: &[f32], eps: f32) {
    let n = bias.len();
    for (row, r) in x.chunks_exact_mut(n).zip(res.chunks_exact(n)) {
        for ((v, &rr), &bb) in row.iter_mut().zip(r).zip(bias) {
            *v = *v + bb + rr;
        }
        layer_norm(row, g, b, eps);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn embed_ln_body(
    x: &mut [f32],
    ids: &[u32],
    pos_ids: &[u32],
    type_ids: &[u32],
    word: &[f32],
    pos: &[f32],
    typ: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
) {
    let h = g.len();
    for (i, row) in x.chunks_exact_mut(h).enumerate() {
        let w = &word[ids[i] as usize * h..][..h];
        let p = &pos[pos_ids[i] as usize * h..][..h];
        let ty = &typ[type_ids[i] as usize * h..][..h];
        for j in 0..h {
            row[j] = w[j] + p[j] + ty[j];
        }
        layer_norm(row, g, b, eps);
    }
}

/// Scaled dot-product attention of one head of one sequence of `l` tokens.
/// `qkv` starts at this head's Q column of the sequence's first row of the
/// packed `[·, 3h]` buffer (K and V are `h` and `2h` further along each
/// row); `ctx` starts at the head's column of the sequence's first row of
/// the `[·, h]` context. Register-blocked loops: 8 keys' scores (one
/// vector) accumulate over the head dimension against a transposed,
/// zero-padded K; 16 context columns accumulate over the keys.
/// The output of one attention head of one sequence: `l` rows of `d`
/// floats, `stride` apart, inside the `[m, H]` context buffer. Parallel
/// head jobs each own one such strided block; handing them `&mut [f32]`
/// slices would overlap (every row's slice spans the other heads' columns),
/// so a job gets this instead and borrows one row at a time.
pub struct HeadRows<'a> {
    ptr: *mut f32,
    stride: usize,
    d: usize,
    l: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a HeadRows is the only way to its elements while it lives (see
// `new`), so moving it to another thread moves that exclusive access.
unsafe impl Send for HeadRows<'_> {}

impl<'a> HeadRows<'a> {
    /// Rows `i * stride .. i * stride + d` (`i < l`) of `buf`.
    pub fn of_slice(buf: &'a mut [f32], stride: usize, d: usize, l: usize) -> HeadRows<'a> {
        assert!(d <= stride && (l == 0 || (l - 1) * stride + d <= buf.len()));
        HeadRows { ptr: buf.as_mut_ptr(), stride, d, l, _buf: std::marker::PhantomData }
    }

    /// # Safety
    /// `ptr` must be valid for reads and writes of rows `i * stride ..
    /// i * stride + d` for every `i < l` for `'a`, and nothing else may
    /// access those elements during `'a` (other HeadRows over the same
    /// buffer must cover disjoint rows or columns).
    pub unsafe fn from_raw(ptr: *mut f32, stride: usize, d: usize, l: usize) -> HeadRows<'a> {
        HeadRows { ptr, stride, d, l, _buf: std::marker::PhantomData }
    }

    /// Row `i` (`d` floats).
    pub fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.l);
        // SAFETY: in bounds and exclusive by the constructors' contracts;
        // `&mut self` keeps to one row borrowed at a time.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.d) }
    }
}

#[inline(always)]
fn attention_head_body(
    qkv: &[f32],
    h: usize,
    l: usize,
    d: usize,
    scale: f32,
    ctx: &mut HeadRows<'_>,
    scratch: &mut Vec<f32>,
) {
    const JB: usize = 8;
    const CB: usize = 16;
    let h3 = 3 * h;
    let lp = l.div_ceil(JB) * JB;
    scratch.clear();
    scratch.resize(d * lp + lp, 0.0);
    let (kt, srow) = scratch.split_at_mut(d * lp);
    // K transposed: kt[c, j] = k[j, c] (columns l..lp stay 0).
    for j in 0..l {
        let k = &qkv[j * h3 + h..][..d];
        for c in 0..d {
            kt[c * lp + j] = k[c];
        }
    }
    for i in 0..l {
        let q = &qkv[i * h3..][..d];
        for jb in (0..lp).step_by(JB) {
            let mut acc = [0f32; JB];
            for c in 0..d {
                let kc = &kt[c * lp + jb..][..JB];
                for t in 0..JB {
                    acc[t] = q[c].mul_add(kc[t], acc[t]);
                }
            }
            srow[jb..jb + JB].copy_from_slice(&acc);
        }
        // softmax(scale · scores) over the l real keys.
        let srow = &mut srow[..l];
        let max = max_lanes(srow) * scale;
        for v in srow.iter_mut() {
            *v = exp_f32(*v * scale - max);
        }
        let inv = 1.0 / sum_lanes(srow);
        let out = ctx.row(i);
        let mut c0 = 0;
        while c0 + CB <= d {
            let mut acc = [0f32; CB];
            for (j, &p) in srow.iter().enumerate() {
                let v = &qkv[j * h3 + 2 * h + c0..][..CB];
                for t in 0..CB {
                    acc[t] = p.mul_add(v[t], acc[t]);
                }
            }
            for t in 0..CB {
                out[c0 + t] = acc[t] * inv;
            }
            c0 += CB;
        }
        for c in c0..d {
            let mut acc = 0f32;
            for (j, &p) in srow.iter().enumerate() {
                acc = p.mul_add(qkv[j * h3 + 2 * h + c], acc);
            }
            out[c] = acc * inv;
        }
    }
}

/// Max over 8 independent lanes (vectorizes; NaN-free input).
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    chunks.remainder().iter().chain(&acc).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Sum over 8 independent lanes (vectorizes).
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// LayerNorm of one row: mean and variance in f32, two passes (as PyTorch's
/// CPU kernel), summed over 8 independent lanes so the loops vectorize.
#[inline(always)]
fn layer_norm(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let mean = (acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / n;
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += (c[k] - mean) * (c[k] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + bb;
    }
}

/// Exact-form GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// tanh through exp (for the tanh-approximated GELU): `1 − 2/(e^{2u}+1)`.
#[inline(always)]
fn tanh_f32(u: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * u) + 1.0)
}

/// erf with absolute error below 1.2e-7 (Numerical Recipes `erfc` Chebyshev
/// fit, evaluated in f32 with a branch-free exp so the loop vectorizes).
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn erf_f32(x: f32) -> f32 {
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
    (1.0 - erfc).copysign(x)
}

/// exp for f32 (Cephes `expf` polynomial, ~1 ulp on [-87, 88]), without
/// calls, branches or float→int conversions so loops over it vectorize.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by the 1.5·2²³ trick; the integer n is then the low
    // mantissa bits of `t` (|n| < 2²²), read without a float→int convert.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r2
        * r
        + 0.5 * r2
        + r
        + 1.0;
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}
