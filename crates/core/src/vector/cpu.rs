//! The CPU store: rows in host memory, searched with SIMD dot products
//! (AVX2 when the CPU has it; the same rounding either way) on the rayon
//! pool, a bounded top-k per (block, query) and an exact merge.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::store::{Filter, Hit, Store};
use super::{Dtype, Metric};
use crate::err;
use crate::error::Result;

/// Rows per unit of parallel work: 1,024 rows of 384 fp32 are 1.5 MiB,
/// which stays in the L2/L3 cache while every query of the call reads it.
const BLOCK_ROWS: usize = 1024;

/// Rows of an fp16 store are converted to fp32 this many at a time.
const CONVERT_ROWS: usize = 64;

enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

pub(crate) struct CpuStore {
    dims: usize,
    metric: Metric,
    rows: Rows,
    tags: Vec<u32>,
    /// `|x|²` of each stored row (L2 only; empty otherwise).
    norms: Vec<f32>,
    capacity: usize,
}

impl CpuStore {
    pub(crate) fn new(dims: usize, metric: Metric, dtype: Dtype, capacity: usize) -> Result<CpuStore> {
        let mut s = CpuStore {
            dims,
            metric,
            rows: match dtype {
                Dtype::F32 => Rows::F32(Vec::new()),
                Dtype::F16 => Rows::F16(Vec::new()),
            },
            tags: Vec::new(),
            norms: Vec::new(),
            capacity: 0,
        };
        s.resize(capacity)?;
        Ok(s)
    }

    fn resize(&mut self, capacity: usize) -> Result<()> {
        let values = capacity
            .checked_mul(self.dims)
            .ok_or_else(|| err!(TooLarge, "an index of {capacity} rows of {} values overflows", self.dims))?;
        let reserve_err = |_| err!(TooLarge, "cannot allocate host memory for {capacity} rows of {} values", self.dims);
        match &mut self.rows {
            Rows::F32(v) => {
                v.try_reserve_exact(values.saturating_sub(v.len())).map_err(reserve_err)?;
                v.resize(values, 0.0);
            }
            Rows::F16(v) => {
                v.try_reserve_exact(values.saturating_sub(v.len())).map_err(reserve_err)?;
                v.resize(values, f16::ZERO);
            }
        }
        self.tags.resize(capacity, super::store::TOMBSTONE);
        if self.metric == Metric::L2 {
            self.norms.resize(capacity, 0.0);
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Row `slot` as fp32 into `out`.
    fn row_into(&self, slot: usize, out: &mut [f32]) {
        let d = self.dims;
        match &self.rows {
            Rows::F32(v) => out.copy_from_slice(&v[slot * d..(slot + 1) * d]),
            Rows::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[slot * d..(slot + 1) * d]) {
                    *o = h.to_f32();
                }
            }
        }
    }

    /// Search rows `lo..hi` for every query, appending to `tops`.
    fn search_block(&self, queries: &[f32], k: usize, filter: Filter, lo: usize, hi: usize) -> Vec<TopK> {
        let d = self.dims;
        let nq = queries.len() / d;
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        let mut scratch = Vec::new();
        let mut start = lo;
        while start < hi {
            let end = (start + CONVERT_ROWS.max(1)).min(hi);
            let block: &[f32] = match &self.rows {
                Rows::F32(v) => &v[start * d..end * d],
                Rows::F16(v) => {
                    scratch.resize((end - start) * d, 0.0);
                    // F16C when the CPU has it (half's runtime detection).
                    v[start * d..end * d].convert_to_f32_slice(&mut scratch);
                    &scratch
                }
            };
            let rows = end - start;
            let admit = |slot: usize, dot: f32| -> Option<Hit> {
                if !filter.admits(self.tags[slot]) {
                    return None;
                }
                let key = match self.metric {
                    Metric::L2 => -(self.norms[slot] - 2.0 * dot),
                    Metric::Ip | Metric::Cosine => dot,
                };
                Some(Hit { slot: slot as u32, key })
            };
            // Two queries × four rows at a time: eight independent add chains
            // sharing every load (one row's chain is latency-bound), each in
            // the contract's order, so the bits equal `dot8`'s.
            let mut qi = 0;
            while qi < nq {
                let pair = qi + 1 < nq;
                let q0 = &queries[qi * d..(qi + 1) * d];
                let q1 = if pair { &queries[(qi + 1) * d..(qi + 2) * d] } else { q0 };
                let mut r = 0;
                while r + 4 <= rows {
                    let four = &block[r * d..(r + 4) * d];
                    let dots = if pair { dot8x2x4(q0, q1, four) } else { [dot8x4(q0, four), [0.0; 4]] };
                    for (j, (&a, &b)) in dots[0].iter().zip(&dots[1]).enumerate() {
                        if let Some(h) = admit(start + r + j, a) {
                            tops[qi].push(h);
                        }
                        if pair {
                            if let Some(h) = admit(start + r + j, b) {
                                tops[qi + 1].push(h);
                            }
                        }
                    }
                    r += 4;
                }
                while r < rows {
                    let x = &block[r * d..(r + 1) * d];
                    if let Some(h) = admit(start + r, dot8(q0, x)) {
                        tops[qi].push(h);
                    }
                    if pair {
                        if let Some(h) = admit(start + r, dot8(q1, x)) {
                            tops[qi + 1].push(h);
                        }
                    }
                    r += 1;
                }
                qi += 2;
            }
            start = end;
        }
        tops
    }
}

impl Store for CpuStore {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn bytes(&self) -> u64 {
        let row_bytes = match self.rows {
            Rows::F32(_) => 4,
            Rows::F16(_) => 2,
        };
        (self.capacity * (self.dims * row_bytes + 4 + if self.metric == Metric::L2 { 4 } else { 0 })) as u64
    }

    fn reserve(&mut self, rows: usize, max_rows: usize) -> Result<()> {
        if rows <= self.capacity {
            return Ok(());
        }
        let grown = self.capacity.max(1).saturating_mul(2).max(rows).min(max_rows.max(rows));
        self.resize(grown)
    }

    fn write(&mut self, slots: &[u32], rows: &[f32], tags: &[u32]) -> Result<()> {
        let d = self.dims;
        for ((&slot, x), &tag) in slots.iter().zip(rows.chunks_exact(d)).zip(tags) {
            let s = slot as usize;
            match &mut self.rows {
                Rows::F32(v) => v[s * d..(s + 1) * d].copy_from_slice(x),
                Rows::F16(v) => {
                    for (o, &f) in v[s * d..(s + 1) * d].iter_mut().zip(x) {
                        *o = f16::from_f32(f);
                    }
                }
            }
            self.tags[s] = tag;
            if self.metric == Metric::L2 {
                let mut stored = vec![0.0; d];
                self.row_into(s, &mut stored);
                self.norms[s] = dot8(&stored, &stored);
            }
        }
        Ok(())
    }

    fn set_tags(&mut self, slots: &[u32], tag: u32) -> Result<()> {
        for &s in slots {
            self.tags[s as usize] = tag;
        }
        Ok(())
    }

    fn read(&self, slots: &[u32]) -> Result<Vec<f32>> {
        let d = self.dims;
        let mut out = vec![0.0; slots.len() * d];
        for (&s, o) in slots.iter().zip(out.chunks_exact_mut(d)) {
            self.row_into(s as usize, o);
        }
        Ok(out)
    }

    fn search(&self, queries: &[f32], k: usize, filter: Filter, len: usize) -> Result<Vec<Vec<Hit>>> {
        let nq = queries.len() / self.dims;
        let len = len.min(self.capacity);
        let blocks: Vec<(usize, usize)> =
            (0..len.div_ceil(BLOCK_ROWS)).map(|b| (b * BLOCK_ROWS, ((b + 1) * BLOCK_ROWS).min(len))).collect();
        let partial: Vec<Vec<TopK>> =
            blocks.par_iter().map(|&(lo, hi)| self.search_block(queries, k, filter, lo, hi)).collect();
        let mut out = Vec::with_capacity(nq);
        for qi in 0..nq {
            let mut merged = TopK::new(k);
            for p in &partial {
                for h in &p[qi].heap {
                    merged.push(*h);
                }
            }
            out.push(merged.into_sorted());
        }
        Ok(out)
    }

    fn compact(&mut self, keep: &[u32]) -> Result<()> {
        let d = self.dims;
        for (dst, &src) in keep.iter().enumerate() {
            let src = src as usize;
            if src == dst {
                continue;
            }
            match &mut self.rows {
                Rows::F32(v) => v.copy_within(src * d..(src + 1) * d, dst * d),
                Rows::F16(v) => v.copy_within(src * d..(src + 1) * d, dst * d),
            }
            self.tags[dst] = self.tags[src];
            if self.metric == Metric::L2 {
                self.norms[dst] = self.norms[src];
            }
        }
        for t in &mut self.tags[keep.len()..] {
            *t = super::store::TOMBSTONE;
        }
        Ok(())
    }
}

/// The best `k` hits seen so far: a binary min-heap on "better" (the root
/// is the worst kept hit), so a hit that does not beat it costs one compare.
pub(crate) struct TopK {
    k: usize,
    heap: Vec<Hit>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> TopK {
        TopK { k, heap: Vec::with_capacity(k.min(4096)) }
    }

    #[inline]
    pub(crate) fn push(&mut self, h: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(h);
            let mut i = self.heap.len() - 1;
            while i > 0 {
                let p = (i - 1) / 2;
                if self.heap[p].better(&self.heap[i]) {
                    self.heap.swap(p, i);
                    i = p;
                } else {
                    break;
                }
            }
        } else if self.k > 0 && h.better(&self.heap[0]) {
            self.heap[0] = h;
            let n = self.heap.len();
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut worst = i;
                if l < n && self.heap[worst].better(&self.heap[l]) {
                    worst = l;
                }
                if r < n && self.heap[worst].better(&self.heap[r]) {
                    worst = r;
                }
                if worst == i {
                    break;
                }
                self.heap.swap(i, worst);
                i = worst;
            }
        }
    }

    /// The kept hits, best first.
    pub(crate) fn into_sorted(mut self) -> Vec<Hit> {
        self.heap.sort_by(|a, b| {
            if a.better(b) {
                std::cmp::Ordering::Less
            } else if b.better(a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        self.heap
    }
}

/// `dot(q, x)` in the store contract's fixed order (8 lanes, product then
/// add, a fixed pairwise reduction): the GPU's fp32 kernel sums the same
/// way, so both give the same bits.
pub(crate) fn dot8(q: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(q: &[f32], x: &[f32]) -> f32 {
            dot8_body(q, x)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(q, x) };
        }
    }
    dot8_body(q, x)
}

/// `dot8(q, row)` for the four consecutive rows in `rows` (`4 × q.len()`
/// values), bit-identical to four `dot8` calls.
pub(crate) fn dot8x4(q: &[f32], rows: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(q: &[f32], rows: &[f32]) -> [f32; 4] {
            dot8x4_body(q, rows)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(q, rows) };
        }
    }
    dot8x4_body(q, rows)
}

#[inline(always)]
fn dot8x4_body(q: &[f32], rows: &[f32]) -> [f32; 4] {
    let d = q.len();
    let (x0, rest) = rows.split_at(d);
    let (x1, rest) = rest.split_at(d);
    let (x2, x3) = rest.split_at(d);
    let (mut l0, mut l1, mut l2, mut l3) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    let full = d / 8 * 8;
    let chunks = q[..full]
        .chunks_exact(8)
        .zip(x0[..full].chunks_exact(8))
        .zip(x1[..full].chunks_exact(8))
        .zip(x2[..full].chunks_exact(8))
        .zip(x3[..full].chunks_exact(8));
    for ((((qc, a), b), c), e) in chunks {
        for j in 0..8 {
            l0[j] += qc[j] * a[j];
            l1[j] += qc[j] * b[j];
            l2[j] += qc[j] * c[j];
            l3[j] += qc[j] * e[j];
        }
    }
    for i in full..d {
        l0[i - full] += q[i] * x0[i];
        l1[i - full] += q[i] * x1[i];
        l2[i - full] += q[i] * x2[i];
        l3[i - full] += q[i] * x3[i];
    }
    let reduce = |l: [f32; 8]| ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    [reduce(l0), reduce(l1), reduce(l2), reduce(l3)]
}

/// `dot8(q0, row)` and `dot8(q1, row)` for the four consecutive rows in
/// `rows`, bit-identical to eight `dot8` calls.
pub(crate) fn dot8x2x4(q0: &[f32], q1: &[f32], rows: &[f32]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(q0: &[f32], q1: &[f32], rows: &[f32]) -> [[f32; 4]; 2] {
            dot8x2x4_body(q0, q1, rows)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(q0, q1, rows) };
        }
    }
    dot8x2x4_body(q0, q1, rows)
}

#[inline(always)]
fn dot8x2x4_body(q0: &[f32], q1: &[f32], rows: &[f32]) -> [[f32; 4]; 2] {
    let d = q0.len();
    let (x0, rest) = rows.split_at(d);
    let (x1, rest) = rest.split_at(d);
    let (x2, x3) = rest.split_at(d);
    let mut a = [[0.0f32; 8]; 8];
    let full = d / 8 * 8;
    let chunks = q0[..full]
        .chunks_exact(8)
        .zip(q1[..full].chunks_exact(8))
        .zip(x0[..full].chunks_exact(8))
        .zip(x1[..full].chunks_exact(8))
        .zip(x2[..full].chunks_exact(8))
        .zip(x3[..full].chunks_exact(8));
    for (((((p, r), b0), b1), b2), b3) in chunks {
        for j in 0..8 {
            a[0][j] += p[j] * b0[j];
            a[1][j] += p[j] * b1[j];
            a[2][j] += p[j] * b2[j];
            a[3][j] += p[j] * b3[j];
            a[4][j] += r[j] * b0[j];
            a[5][j] += r[j] * b1[j];
            a[6][j] += r[j] * b2[j];
            a[7][j] += r[j] * b3[j];
        }
    }
    for i in full..d {
        let l = i - full;
        a[0][l] += q0[i] * x0[i];
        a[1][l] += q0[i] * x1[i];
        a[2][l] += q0[i] * x2[i];
        a[3][l] += q0[i] * x3[i];
        a[4][l] += q1[i] * x0[i];
        a[5][l] += q1[i] * x1[i];
        a[6][l] += q1[i] * x2[i];
        a[7][l] += q1[i] * x3[i];
    }
    let reduce = |l: [f32; 8]| ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    [[reduce(a[0]), reduce(a[1]), reduce(a[2]), reduce(a[3])], [reduce(a[4]), reduce(a[5]), reduce(a[6]), reduce(a[7])]]
}

#[inline(always)]
fn dot8_body(q: &[f32], x: &[f32]) -> f32 {
    let mut l = [0.0f32; 8];
    let n = q.len().min(x.len());
    let full = n / 8 * 8;
    for (qc, xc) in q[..full].chunks_exact(8).zip(x[..full].chunks_exact(8)) {
        for j in 0..8 {
            l[j] += qc[j] * xc[j];
        }
    }
    for i in full..n {
        l[i - full] += q[i] * x[i];
    }
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot8_sums_in_the_documented_order() {
        let q: Vec<f32> = (0..19).map(|i| 1.0 + i as f32 * 0.37).collect();
        let x: Vec<f32> = (0..19).map(|i| 0.5 - i as f32 * 0.11).collect();
        let mut l = [0.0f32; 8];
        for i in 0..19 {
            l[i % 8] += q[i] * x[i];
        }
        let want = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        assert_eq!(dot8(&q, &x).to_bits(), want.to_bits());
    }

    #[test]
    fn dot8x4_equals_four_dot8() {
        for d in [3usize, 8, 19, 384] {
            let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.731).sin()).collect();
            let rows: Vec<f32> = (0..4 * d).map(|i| (i as f32 * 0.377).cos()).collect();
            let got = dot8x4(&q, &rows);
            for (r, g) in got.iter().enumerate() {
                assert_eq!(g.to_bits(), dot8(&q, &rows[r * d..(r + 1) * d]).to_bits(), "d={d} row {r}");
            }
            let q1: Vec<f32> = (0..d).map(|i| (i as f32 * 0.123).cos()).collect();
            let two = dot8x2x4(&q, &q1, &rows);
            for r in 0..4 {
                assert_eq!(two[0][r].to_bits(), dot8(&q, &rows[r * d..(r + 1) * d]).to_bits(), "d={d} q0 row {r}");
                assert_eq!(two[1][r].to_bits(), dot8(&q1, &rows[r * d..(r + 1) * d]).to_bits(), "d={d} q1 row {r}");
            }
        }
    }

    #[test]
    fn topk_keeps_the_best_and_breaks_ties_by_slot() {
        let mut t = TopK::new(3);
        for (slot, key) in [(0, 0.5), (1, 0.9), (2, 0.5), (3, 0.1), (4, 0.9), (5, 0.7)] {
            t.push(Hit { slot, key });
        }
        let got: Vec<u32> = t.into_sorted().iter().map(|h| h.slot).collect();
        assert_eq!(got, vec![1, 4, 5]);
    }
}
