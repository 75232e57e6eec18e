//! A GEMM for few rows (one or a few short sentences): `dst[m, n] =
//! x[m, k] · W[k, n]` with W pre-packed into panels of 16 columns
//! (`[n/16][k][16]`, contiguous), AVX2+FMA, 6×16 register tiles.
//!
//! Why: for M ≈ 10 the `gemm` crate ran at ~35 GFLOP/s (its tiles are 16
//! rows of the transposed problem and it streams the row-major weights with
//! a stride); a forward pass is then ~6 ms of weight streaming. Here every
//! panel is one contiguous run of memory, read once per call for all rows
//! (the second row tile reads it from L1/L2), and the column panels split
//! evenly over threads.
//!
//! Each output element is one FMA chain over k in order, so a row's result
//! does not depend on which other rows share the call.

/// Columns per panel.
pub const NR: usize = 16;
/// Rows per register tile.
const MR: usize = 6;
/// Software prefetch distance, in panel rows (64-byte lines).
const PF: usize = 24;

/// Packed weights: `[n/16][k][16]`, zero-padded to a multiple of [`NR`]
/// columns, starting on a 64-byte boundary (one panel row = one line).
pub struct Packed {
    buf: Vec<f32>,
    off: usize,
}

impl Packed {
    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.off..]
    }
}

/// `w` (`[n, k]` row-major, PyTorch's Linear layout) re-laid out as panels
/// of [`NR`] output columns.
pub fn pack(w: &[f32], k: usize, n: usize) -> Packed {
    let panels = n.div_ceil(NR);
    let mut buf = vec![0f32; panels * k * NR + NR];
    let off = buf.as_ptr().align_offset(64).min(NR);
    let out = &mut buf[off..];
    for p in 0..panels {
        for kk in 0..k {
            for j in 0..NR.min(n - p * NR) {
                out[(p * k + kk) * NR + j] = w[(p * NR + j) * k + kk];
            }
        }
    }
    Packed { buf, off }
}

/// Whether [`gemm_panels`] can run here.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Columns `p0·NR .. p1·NR` (clipped to `n`) of `dst = x · W`.
///
/// # Safety
/// [`available`] returned true; `x` holds `m·k` floats, `wp` is
/// `pack(_, k, n)`, `dst` points to `m·n` writable floats of which this call
/// writes only rows `0..m`, columns `p0·NR..min(p1·NR, n)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_panels(m: usize, k: usize, n: usize, x: &[f32], wp: &[f32], dst: *mut f32, p0: usize, p1: usize) {
    debug_assert!(x.len() >= m * k && wp.len() >= n.div_ceil(NR) * k * NR);
    for p in p0..p1 {
        let bp = wp.as_ptr().add(p * k * NR);
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        let mut i = 0;
        while i < m {
            let a = x.as_ptr().add(i * k);
            let d = dst.add(i * n + c0);
            match (m - i).min(MR) {
                6 => tile::<6>(k, n, a, bp, d, cols),
                5 => tile::<5>(k, n, a, bp, d, cols),
                4 => tile::<4>(k, n, a, bp, d, cols),
                3 => tile::<3>(k, n, a, bp, d, cols),
                2 => tile::<2>(k, n, a, bp, d, cols),
                _ => tile::<1>(k, n, a, bp, d, cols),
            }
            i += MR;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
pub unsafe fn gemm_panels(_: usize, _: usize, _: usize, _: &[f32], _: &[f32], _: *mut f32, _: usize, _: usize) {
    unreachable!("cpu_gemm::available() is false off x86-64")
}

/// One `R × 16` tile: rows `a[r·k ..]`, panel `bp` (`[k][16]`), output row
/// `r` at `d + r·n`, `cols` (≤ 16) columns stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(k: usize, n: usize, a: *const f32, bp: *const f32, d: *mut f32, cols: usize) {
    use std::arch::x86_64::*;
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    for kk in 0..k {
        // One panel row is one 64-byte line (the panels are 64-byte
        // aligned): fetch the line PF rows ahead. For one short sentence
        // the weights stream from DRAM (42 MB, more than L3), and the
        // hardware prefetcher alone left half the time in load stalls.
        // Prefetching past the panel's end is harmless (a hint).
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add((kk + PF) * NR) as *const i8);
        let b0 = _mm256_loadu_ps(bp.add(kk * NR));
        let b1 = _mm256_loadu_ps(bp.add(kk * NR + 8));
        for r in 0..R {
            let av = _mm256_broadcast_ss(&*a.add(r * k + kk));
            acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
    }
    for r in 0..R {
        let out = d.add(r * n);
        if cols == NR {
            _mm256_storeu_ps(out, acc0[r]);
            _mm256_storeu_ps(out.add(8), acc1[r]);
        } else {
            let mut buf = [0f32; NR];
            _mm256_storeu_ps(buf.as_mut_ptr(), acc0[r]);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), acc1[r]);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), out, cols);
        }
    }
}
