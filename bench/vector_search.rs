//! GPU vector search benchmark (issue 12's table): fp16 storage, random unit
//! vectors, d = 384, k = 10; N = 1M at B = 1, 64, 1024 and N = 10M at B = 1,
//! 64. The rows are generated on the device (`BenchStore::random_f16`), so
//! the data is already on the GPU. Each case: 3 warm-up searches, then 20
//! timed; printed are the medians of
//! - `dev_ms`: CUDA events on the executor's stream around the search
//!   kernels (after the query upload, before the result download), the same
//!   way `bench/vector_search_torch.py` times `torch.topk(q @ X.T, k)`;
//! - `wall_ms`: the whole `Store::search` call from the calling thread
//!   (executor hop, query upload, kernels, result download, decoding).
//!
//! An example of crates/core: `cargo build --release -p cuda-engine-core
//! --example vector_search`; `bench/vector_search.sh BINARY` runs it and the
//! PyTorch baseline in one go on the GPU machine and prints the ratios.
//! Args: `[cases]`, e.g. `1000000x1,1000000x64` (default: the five).
//! Env knobs of the store: CUDA_ENGINE_VECTOR_WS_MB (score workspace of the
//! cuBLAS batch path), CUDA_ENGINE_VECTOR_GEMM_MIN_B (largest batch of the
//! scan path), CUDA_ENGINE_VECTOR_SCAN_BPS (scan blocks per SM),
//! CUDA_ENGINE_VECTOR_MMA_MAX_B (largest batch of the fused tensor-core
//! path; 0: off), CUDA_ENGINE_VECTOR_MMA_STAGES / CUDA_ENGINE_VECTOR_MMA_KC
//! (its cp.async pipeline: stages, values a stage).

use cuda_engine_core::vector::cuda::BenchStore;

fn rand_unit(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    let mut v: Vec<f32> = (0..n * d)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    for r in v.chunks_exact_mut(d) {
        let nrm = r.iter().map(|a| a * a).sum::<f32>().sqrt();
        r.iter_mut().for_each(|a| *a /= nrm);
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let d = 384;
    let k = 10;
    let cases: Vec<(usize, usize)> = std::env::args()
        .nth(1)
        .map(|s| {
            s.split(',')
                .filter_map(|c| {
                    let (n, b) = c.split_once('x')?;
                    Some((n.parse().ok()?, b.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_else(|| vec![(1_000_000, 1), (1_000_000, 64), (1_000_000, 1024), (10_000_000, 1), (10_000_000, 64)]);
    let mut current: Option<(usize, BenchStore)> = None;
    for (n, b) in cases {
        if current.as_ref().is_none_or(|c| c.0 != n) {
            drop(current.take());
            let t = std::time::Instant::now();
            let s = match BenchStore::random_f16(0, d, n, 7) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot build the store: {e}");
                    std::process::exit(1);
                }
            };
            eprintln!(
                "store N={n}: {} MB on the device, filled in {:.0} ms",
                s.bytes() >> 20,
                t.elapsed().as_secs_f64() * 1e3
            );
            current = Some((n, s));
        }
        let Some((_, s)) = current.as_ref() else { return };
        let q = rand_unit(b, d, 1000 + b as u64);
        let mut dev = Vec::new();
        let mut wall = Vec::new();
        for i in 0..23 {
            let t = std::time::Instant::now();
            let (hits, ms) = match s.search(&q, k) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("search failed: {e}");
                    std::process::exit(1);
                }
            };
            let w = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(hits.len(), b);
            assert!(hits.iter().all(|h| h.len() == k));
            if i >= 3 {
                dev.push(ms as f64);
                wall.push(w);
            }
        }
        println!(
            "{{\"impl\":\"cuda-engine\",\"n\":{n},\"b\":{b},\"d\":{d},\"k\":{k},\"dev_ms\":{:.4},\"wall_ms\":{:.4}}}",
            median(dev),
            median(wall)
        );
    }
}
