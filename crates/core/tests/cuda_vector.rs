//! The GPU vector store (`vector::cuda::CudaStore`) against the CPU store.
//!
//! Runs when a CUDA device is usable; otherwise each test prints
//! `SKIPPED (no CUDA device: …)` and passes, unless
//! `CUDA_ENGINE_REQUIRE_GPU=1`, when a missing GPU fails it.
//!
//! Run: `cargo test -p cuda-engine-core --release --test cuda_vector -- --nocapture --test-threads=1`

use std::collections::HashSet;
use std::sync::Arc;

use cuda_engine_core::device::DevicePreference;
use cuda_engine_core::vector::{Dtype, IndexConfig, Metric, Placement, SearchHits, VectorId, VectorIndex};
use cuda_engine_core::ErrorCode;

fn gpu(test: &str) -> bool {
    let p = cuda_engine_core::device::probe();
    if !p.available {
        let why = p.reason.as_deref().unwrap_or("none");
        if std::env::var_os("CUDA_ENGINE_REQUIRE_GPU").is_some_and(|v| v == "1") {
            panic!("{test}: CUDA_ENGINE_REQUIRE_GPU=1 but no CUDA device: {why}");
        }
        eprintln!("{test}: SKIPPED (no CUDA device: {why})");
    }
    p.available
}

fn cfg(dims: usize, metric: Metric, dtype: Dtype, device: DevicePreference) -> IndexConfig {
    IndexConfig { dims, metric, dtype, device, capacity: 4, max_bytes: 1 << 40 }
}

fn make(dims: usize, metric: Metric, dtype: Dtype, gpu: bool) -> Arc<VectorIndex> {
    let dev = if gpu { DevicePreference::Cuda(Some(0)) } else { DevicePreference::Cpu };
    let idx = VectorIndex::create(cfg(dims, metric, dtype, dev), None).unwrap();
    assert_eq!(idx.placement(), if gpu { Placement::Cuda(0) } else { Placement::Cpu });
    idx
}

/// Deterministic pseudo-random values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn ids(r: std::ops::Range<u64>) -> Vec<VectorId> {
    r.map(VectorId::U64).collect()
}

fn id_u64(i: &VectorId) -> u64 {
    match i {
        VectorId::U64(x) => *x,
        VectorId::Str(_) => u64::MAX,
    }
}

fn normalize(v: &mut [f32], d: usize) {
    for r in v.chunks_exact_mut(d) {
        let n = r.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        r.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
}

/// Same ids and bit-identical scores.
fn assert_same(a: &[SearchHits], b: &[SearchHits], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: query count");
    for (qi, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.ids, y.ids, "{what}: ids of query {qi}");
        let xb: Vec<u32> = x.scores.iter().map(|s| s.to_bits()).collect();
        let yb: Vec<u32> = y.scores.iter().map(|s| s.to_bits()).collect();
        assert_eq!(xb, yb, "{what}: score bits of query {qi}");
    }
}

/// fp16: the same rows summed in another order (and, for batches, the
/// queries rounded to fp16, ~2^-11 relative a component): scores rank by
/// rank within 4e-3 (relative); ids may differ only among such near-ties
/// (at most a fifth of them: non-normalized ip data has many).
fn assert_close(a: &[SearchHits], b: &[SearchHits], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: query count");
    for (qi, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.ids.len(), y.ids.len(), "{what}: hit count of query {qi}");
        for (r, (s, t)) in x.scores.iter().zip(&y.scores).enumerate() {
            assert!((s - t).abs() <= 4e-3 * t.abs().max(1.0), "{what}: query {qi} rank {r}: {s} vs {t}");
        }
        let differ = x.ids.iter().zip(&y.ids).filter(|(i, j)| i != j).count();
        assert!(differ * 5 <= x.ids.len().max(5), "{what}: query {qi}: {differ} ids differ");
    }
}

/// The exactness rule of fp16 storage: `got` is the exact top-k (`exact`,
/// from fp32 data, scores via `score`) except for ids whose exact score is
/// within 1e-3 of the k-th exact score. Returns (hits kept, misses allowed).
fn check_window(got: &SearchHits, exact: &SearchHits, score: impl Fn(u64) -> f64, what: &str) -> (usize, usize) {
    let k = exact.ids.len();
    assert_eq!(got.ids.len(), k, "{what}: hit count");
    let kth = score(id_u64(&exact.ids[k - 1]));
    let g: HashSet<u64> = got.ids.iter().map(id_u64).collect();
    let e: HashSet<u64> = exact.ids.iter().map(id_u64).collect();
    let mut misses = 0;
    for id in g.symmetric_difference(&e) {
        let s = score(*id);
        assert!((s - kth).abs() < 1e-3, "{what}: id {id} (score {s}) vs k-th exact {kth}: outside the 1e-3 window");
        misses += 1;
    }
    (k - misses / 2, misses / 2)
}

#[test]
fn fp32_gpu_equals_cpu_bitwise() {
    if !gpu("fp32_gpu_equals_cpu_bitwise") {
        return;
    }
    let (n, d, nq) = (200_000, 384, 1000);
    let data = rand_vec(n * d, 11);
    let qs = rand_vec(nq * d, 12);
    let g = make(d, Metric::Ip, Dtype::F32, true);
    let c = make(d, Metric::Ip, Dtype::F32, false);
    g.upsert(ids(0..n as u64), data.clone(), None).unwrap();
    c.upsert(ids(0..n as u64), data.clone(), None).unwrap();
    let t = std::time::Instant::now();
    let gr = g.search(qs.clone(), 10, None).unwrap();
    eprintln!("fp32 GPU 200k x 1000 k=10: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let cr = c.search(qs.clone(), 10, None).unwrap();
    assert_same(&gr, &cr, "fp32 ip k=10, 1000 queries");
    // One at a time and in small groups (the other query-group widths).
    for (qi, chunk) in [1usize, 3, 5].iter().enumerate() {
        let q = qs[qi * d * 8..(qi * 8 + chunk) * d].to_vec();
        assert_same(&g.search(q.clone(), 10, None).unwrap(), &c.search(q, 10, None).unwrap(), "fp32 small batch");
    }
    let q = qs[..20 * d].to_vec();
    let gr = g.search(q.clone(), 2048, None).unwrap();
    let cr = c.search(q, 2048, None).unwrap();
    assert_same(&gr, &cr, "fp32 ip k=2048");
    assert!(gr.iter().all(|r| r.ids.len() == 2048));
    eprintln!("fp32: 1000 queries k=10 and 20 queries k=2048 identical to the CPU store (ids and score bits)");

    for metric in [Metric::L2, Metric::Cosine] {
        let (n, d) = (30_000, 100);
        let data = rand_vec(n * d, 13);
        let qs = rand_vec(40 * d, 14);
        let g = make(d, metric, Dtype::F32, true);
        let c = make(d, metric, Dtype::F32, false);
        g.upsert(ids(0..n as u64), data.clone(), None).unwrap();
        c.upsert(ids(0..n as u64), data, None).unwrap();
        for k in [1, 10, 300] {
            assert_same(
                &g.search(qs.clone(), k, None).unwrap(),
                &c.search(qs.clone(), k, None).unwrap(),
                &format!("{metric:?} k={k}"),
            );
        }
    }
}

#[test]
fn fp16_recall_against_fp32_exact() {
    if !gpu("fp16_recall_against_fp32_exact") {
        return;
    }
    let (n, d, nq, k) = (200_000, 384, 1000, 10);
    let mut data = rand_vec(n * d, 21);
    let mut qs = rand_vec(nq * d, 22);
    let exact_idx = make(d, Metric::Cosine, Dtype::F32, false);
    exact_idx.upsert(ids(0..n as u64), data.clone(), None).unwrap();
    let g = make(d, Metric::Cosine, Dtype::F16, true);
    g.upsert(ids(0..n as u64), data.clone(), None).unwrap();
    let exact = exact_idx.search(qs.clone(), k, None).unwrap();
    normalize(&mut data, d);
    normalize(&mut qs, d);
    let dot = |qi: usize, id: u64| -> f64 {
        let x = &data[id as usize * d..(id as usize + 1) * d];
        x.iter().zip(&qs[qi * d..(qi + 1) * d]).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
    };
    // Batch path (1000 queries: GEMM + select), the fused tensor-core path
    // (64), then the single-pass scan (1 and 8 queries a call).
    for (label, batch) in [("batch of 1000", 1000usize), ("batch of 64", 64), ("batch of 8", 8), ("single", 1)] {
        let mut kept = 0;
        let mut allowed = 0;
        let upto = match batch {
            1000 => nq,
            64 => 960,
            _ => 200,
        };
        for start in (0..upto).step_by(batch) {
            let q = qs[start * d..(start + batch) * d].to_vec();
            let got = g.search(q, k, None).unwrap();
            for (j, r) in got.iter().enumerate() {
                let qi = start + j;
                let (a, b) = check_window(r, &exact[qi], |id| dot(qi, id), label);
                kept += a;
                allowed += b;
            }
        }
        eprintln!(
            "fp16 {label}: recall@10 {:.5} ({allowed} misses, all within the 1e-3 window)",
            kept as f64 / (kept + allowed) as f64
        );
    }
    // k = 2048 on both fp16 paths against the CPU fp16 store.
    let c16 = make(d, Metric::Cosine, Dtype::F16, false);
    c16.upsert(ids(0..n as u64), data.clone(), None).unwrap();
    for batch in [2usize, 16] {
        let q = qs[..batch * d].to_vec();
        let got = g.search(q.clone(), 2048, None).unwrap();
        let want = c16.search(q, 2048, None).unwrap();
        for (qi, (x, y)) in got.iter().zip(&want).enumerate() {
            check_window(x, y, |id| dot(qi, id), "fp16 k=2048");
            assert!(x.scores.windows(2).all(|w| w[0] >= w[1]));
        }
    }
    // ip and l2 on fp16 (scan and batch paths) against the CPU fp16 store.
    for metric in [Metric::Ip, Metric::L2] {
        let (n, d) = (20_000, 64);
        let data = rand_vec(n * d, 23);
        let qs = rand_vec(32 * d, 24);
        let g = make(d, metric, Dtype::F16, true);
        let c = make(d, metric, Dtype::F16, false);
        g.upsert(ids(0..n as u64), data.clone(), None).unwrap();
        c.upsert(ids(0..n as u64), data.clone(), None).unwrap();
        let stored = c.get(&ids(0..n as u64)).unwrap();
        for batch in [1usize, 32] {
            let q = qs[..batch * d].to_vec();
            let got = g.search(q.clone(), 10, None).unwrap();
            let want = c.search(q.clone(), 10, None).unwrap();
            for (qi, (x, y)) in got.iter().zip(&want).enumerate() {
                let qv = &q[qi * d..(qi + 1) * d];
                let key = |id: u64| -> f64 {
                    let v = &stored[id as usize].as_ref().unwrap().vector;
                    match metric {
                        Metric::L2 => -v.iter().zip(qv).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>(),
                        _ => v.iter().zip(qv).map(|(a, b)| (*a as f64) * (*b as f64)).sum(),
                    }
                };
                check_window(x, y, key, &format!("fp16 {metric:?} batch {batch}"));
            }
        }
    }
}

#[test]
fn namespace_search_equals_a_separate_index() {
    if !gpu("namespace_search_equals_a_separate_index") {
        return;
    }
    let (n, d) = (30_000, 128);
    let data = rand_vec(n * d, 31);
    let qs = rand_vec(16 * d, 32);
    let names = ["a", "b", "c"];
    let ns: Vec<Option<String>> = (0..n).map(|i| (i % 4 != 3).then(|| names[i % 4].to_string())).collect();
    for dtype in [Dtype::F32, Dtype::F16] {
        let all = make(d, Metric::Ip, dtype, true);
        all.upsert(ids(0..n as u64), data.clone(), Some(ns.clone())).unwrap();
        for (t, name) in names.iter().enumerate() {
            let sel: Vec<usize> = (0..n).filter(|i| i % 4 == t).collect();
            let sep = make(d, Metric::Ip, dtype, true);
            let sub: Vec<f32> = sel.iter().flat_map(|&i| data[i * d..(i + 1) * d].to_vec()).collect();
            sep.upsert(sel.iter().map(|&i| VectorId::U64(i as u64)).collect(), sub, None).unwrap();
            // fp32: every path is exact; fp16: the scan path (one query a
            // call) scores a row the same wherever it sits.
            let batches: &[usize] = if dtype == Dtype::F32 { &[1, 16] } else { &[1] };
            for &b in batches {
                for start in (0..16).step_by(b) {
                    let q = qs[start * d..(start + b) * d].to_vec();
                    let x = all.search(q.clone(), 10, Some(name)).unwrap();
                    let y = sep.search(q, 10, None).unwrap();
                    assert_same(&x, &y, &format!("{dtype:?} namespace {name} batch {b}"));
                }
            }
            // fp16 batch path: the same ids up to the 1e-3 window.
            if dtype == Dtype::F16 {
                let x = all.search(qs.clone(), 10, Some(name)).unwrap();
                let y = sep.search(qs.clone(), 10, None).unwrap();
                for (qi, (a, b)) in x.iter().zip(&y).enumerate() {
                    let q = &qs[qi * d..(qi + 1) * d];
                    let s = |id: u64| -> f64 {
                        data[id as usize * d..(id as usize + 1) * d]
                            .iter()
                            .zip(q)
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum()
                    };
                    check_window(a, b, s, "fp16 namespace batch");
                }
            }
        }
        assert!(all.search(qs[..d].to_vec(), 10, Some("nope")).unwrap()[0].ids.is_empty());
    }
    eprintln!(
        "namespace searches equal separately built indexes (fp32 bitwise, fp16 scan bitwise, fp16 batch in window)"
    );
}

#[test]
fn updates_removes_compaction_growth_match_cpu() {
    if !gpu("updates_removes_compaction_growth_match_cpu") {
        return;
    }
    let d = 48;
    for metric in [Metric::Ip, Metric::L2] {
        for dtype in [Dtype::F32, Dtype::F16] {
            let g = make(d, metric, dtype, true);
            let c = make(d, metric, dtype, false);
            let qs = rand_vec(12 * d, 41);
            let check = |what: &str| {
                for k in [1, 10, 100] {
                    for b in [1usize, 12] {
                        let q = qs[..b * d].to_vec();
                        let x = g.search(q.clone(), k, None).unwrap();
                        let y = c.search(q, k, None).unwrap();
                        if dtype == Dtype::F32 {
                            assert_same(&x, &y, &format!("{metric:?} {dtype:?} {what} k={k} b={b}"));
                        } else {
                            assert_close(&x, &y, &format!("{metric:?} {dtype:?} {what} k={k} b={b}"));
                        }
                    }
                }
                assert_eq!(g.len(), c.len());
                assert_eq!(g.info().unwrap().capacity, c.info().unwrap().capacity, "{what}: capacity");
            };
            // Growth from capacity 4 across many doublings, in several upserts.
            let mut next = 0u64;
            for (i, m) in [3usize, 1, 60, 1000, 9000].into_iter().enumerate() {
                let v = rand_vec(m * d, 100 + i as u64);
                let ns: Vec<Option<String>> = (0..m).map(|j| (j % 2 == 0).then(|| "x".to_string())).collect();
                g.upsert(ids(next..next + m as u64), v.clone(), Some(ns.clone())).unwrap();
                c.upsert(ids(next..next + m as u64), v, Some(ns)).unwrap();
                next += m as u64;
                check("growth");
            }
            // Replace (ids spread over the range keep their slots).
            let rep: Vec<VectorId> = (0..next).step_by(3).map(VectorId::U64).collect();
            let v = rand_vec(rep.len() * d, 200);
            g.upsert(rep.clone(), v.clone(), None).unwrap();
            c.upsert(rep.clone(), v, None).unwrap();
            check("replace");
            let gv = g.get(&rep[..50]).unwrap();
            let cv = c.get(&rep[..50]).unwrap();
            assert_eq!(gv, cv, "get after replace");
            // Remove enough to compact (> 4096 dead and over half).
            let rm: Vec<VectorId> = (0..next).filter(|i| i % 5 != 0).map(VectorId::U64).collect();
            assert_eq!(g.remove(&rm).unwrap(), c.remove(&rm).unwrap());
            check("remove + compaction");
            let res = g.search(qs.clone(), 100, None).unwrap();
            assert!(res.iter().all(|r| r.ids.iter().all(|i| id_u64(i).is_multiple_of(5))), "a removed id came back");
            let (x, y) = (g.search(qs.clone(), 10, Some("x")).unwrap(), c.search(qs.clone(), 10, Some("x")).unwrap());
            if dtype == Dtype::F32 {
                assert_same(&x, &y, "ns after compaction");
            } else {
                assert_close(&x, &y, "ns after compaction");
            }
            // More upserts after compaction (appends and replaces).
            let v = rand_vec(700 * d, 300);
            g.upsert(ids(next - 350..next + 350), v.clone(), None).unwrap();
            c.upsert(ids(next - 350..next + 350), v, None).unwrap();
            check("upsert after compaction");
            assert_eq!(g.get(&ids(0..next + 350)).unwrap(), c.get(&ids(0..next + 350)).unwrap(), "get all");
        }
    }
    eprintln!("growth, replace, remove, compaction, namespaces: GPU equals CPU");
}

#[test]
fn oom_is_coded_and_the_index_keeps_working() {
    if !gpu("oom_is_coded_and_the_index_keeps_working") {
        return;
    }
    let d = 384;
    // Far over the card at creation.
    let mut big = cfg(d, Metric::Ip, Dtype::F16, DevicePreference::Cuda(Some(0)));
    big.capacity = 400_000_000; // ~309 GB
    let e = VectorIndex::create(big, None).err().expect("a 309 GB index cannot fit");
    assert_eq!(e.code, ErrorCode::GpuOom, "{e:?}");
    // Growth that cannot fit: fill the card, then make a small index double.
    let cap = 1usize << 18;
    let mut scfg = cfg(d, Metric::Ip, Dtype::F16, DevicePreference::Cuda(Some(0)));
    scfg.capacity = cap;
    let s = VectorIndex::create(scfg, None).unwrap();
    let data = rand_vec(cap * d, 51);
    s.upsert(ids(0..1000), data[..1000 * d].to_vec(), None).unwrap();
    let qs = rand_vec(4 * d, 52);
    let before = s.search(qs.clone(), 10, None).unwrap();
    let ctx = cuda_engine_core::device::probe().context(0).unwrap();
    let (free, _) = ctx.mem_get_info().unwrap();
    let leave = 100usize << 20;
    let mut fcfg = cfg(d, Metric::Ip, Dtype::F16, DevicePreference::Cuda(Some(0)));
    fcfg.capacity = free.saturating_sub(leave) / (384 * 2 + 4);
    let filler = VectorIndex::create(fcfg, None).unwrap();
    let e = s.upsert(ids(1000..cap as u64 + 1), data[..(cap - 999) * d].to_vec(), None);
    let e = e.expect_err("growth past the card must fail");
    assert_eq!(e.code, ErrorCode::GpuOom, "{e:?}");
    eprintln!("growth failure: {}", e.message);
    assert_eq!(s.len(), 1000);
    assert_eq!(s.info().unwrap().capacity, cap);
    assert_same(&s.search(qs.clone(), 10, None).unwrap(), &before, "search after a failed growth");
    s.upsert(ids(1000..1010), data[..10 * d].to_vec(), None).unwrap();
    assert_eq!(s.len(), 1010);
    drop(filler);
    s.upsert(ids(1010..cap as u64 + 1), data[..(cap - 1009) * d].to_vec(), None).unwrap();
    assert_eq!(s.len(), cap + 1);
    assert!(s.info().unwrap().capacity > cap);
    eprintln!("E_GPU_OOM at creation and at growth; the index kept working and grew once memory was free");
}
