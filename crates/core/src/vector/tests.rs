use super::*;

/// A CPU index config (shared with `file::tests`).
pub(crate) fn cfg(dims: usize, metric: Metric, dtype: Dtype) -> IndexConfig {
    IndexConfig { dims, metric, dtype, device: DevicePreference::Cpu, capacity: 4, max_bytes: 1 << 30 }
}

/// Deterministic pseudo-random values in [-1, 1) (shared with `file::tests`).
pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn ids(range: std::ops::Range<u64>) -> Vec<VectorId> {
    range.map(VectorId::U64).collect()
}

fn brute(data: &[f32], d: usize, q: &[f32], k: usize, metric: Metric) -> Vec<u64> {
    let mut s: Vec<(f64, u64)> = data
        .chunks_exact(d)
        .enumerate()
        .map(|(i, x)| {
            let v = match metric {
                Metric::L2 => -x.iter().zip(q).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>(),
                _ => x.iter().zip(q).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>(),
            };
            (v, i as u64)
        })
        .collect();
    s.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    s.into_iter().take(k).map(|x| x.1).collect()
}

#[test]
fn search_matches_brute_force_for_every_metric() {
    let (n, d, k) = (3000, 24, 7);
    for metric in [Metric::Ip, Metric::L2, Metric::Cosine] {
        let idx = VectorIndex::create(cfg(d, metric, Dtype::F32), None).unwrap();
        let data = rand_vec(n * d, 1);
        idx.upsert(ids(0..n as u64), data.clone(), None).unwrap();
        let stored: Vec<f32> = if metric == Metric::Cosine {
            idx.get(&ids(0..n as u64)).unwrap().into_iter().flat_map(|v| v.unwrap().vector).collect()
        } else {
            data.clone()
        };
        let qs = rand_vec(5 * d, 2);
        let res = idx.search(qs.clone(), k, None).unwrap();
        for (qi, r) in res.iter().enumerate() {
            let mut q = qs[qi * d..(qi + 1) * d].to_vec();
            if metric == Metric::Cosine {
                let nrm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                q.iter_mut().for_each(|v| *v /= nrm);
            }
            let want = brute(&stored, d, &q, k, metric);
            let got: Vec<u64> = r.ids.iter().map(|i| if let VectorId::U64(x) = i { *x } else { 0 }).collect();
            assert_eq!(got, want, "{metric:?} query {qi}");
            if metric == Metric::L2 {
                let x = &stored[got[0] as usize * d..(got[0] as usize + 1) * d];
                let dist: f32 = x.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum();
                assert!((r.scores[0] - dist).abs() < 1e-4, "{} vs {dist}", r.scores[0]);
                assert!(r.scores.windows(2).all(|w| w[0] <= w[1]));
            } else {
                assert!(r.scores.windows(2).all(|w| w[0] >= w[1]));
            }
        }
    }
}

#[test]
fn fp16_storage_finds_the_fp32_top_k() {
    let (n, d, k) = (2000, 32, 10);
    let data = rand_vec(n * d, 3);
    let a = VectorIndex::create(cfg(d, Metric::Cosine, Dtype::F32), None).unwrap();
    let b = VectorIndex::create(cfg(d, Metric::Cosine, Dtype::F16), None).unwrap();
    a.upsert(ids(0..n as u64), data.clone(), None).unwrap();
    b.upsert(ids(0..n as u64), data, None).unwrap();
    let qs = rand_vec(20 * d, 4);
    let (ra, rb) = (a.search(qs.clone(), k, None).unwrap(), b.search(qs, k, None).unwrap());
    for (x, y) in ra.iter().zip(&rb) {
        for (i, id) in y.ids.iter().enumerate() {
            if !x.ids.contains(id) {
                // Only a near-tie with the fp32 k-th may differ.
                assert!((y.scores[i] - x.scores[k - 1]).abs() < 1e-3);
            }
        }
    }
}

#[test]
fn ties_break_by_insertion_order() {
    let idx = VectorIndex::create(cfg(2, Metric::Ip, Dtype::F32), None).unwrap();
    let ids: Vec<VectorId> = ["c", "a", "b"].iter().map(|s| VectorId::Str(s.to_string())).collect();
    idx.upsert(ids, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0], None).unwrap();
    let r = idx.search(vec![1.0, 0.0], 3, None).unwrap();
    assert_eq!(r[0].ids, ["c", "a", "b"].iter().map(|s| VectorId::Str(s.to_string())).collect::<Vec<_>>());
}

#[test]
fn upsert_replaces_remove_hides_and_compaction_keeps_order() {
    let d = 4;
    let idx = VectorIndex::create(cfg(d, Metric::Ip, Dtype::F32), None).unwrap();
    let n = 10_000u64;
    let data: Vec<f32> = (0..n).flat_map(|i| [1.0, i as f32 * 1e-4, 0.0, 0.0]).collect();
    idx.upsert(ids(0..n), data, None).unwrap();
    assert_eq!(idx.len(), n as usize);
    // Replace id 5 with a vector that wins.
    idx.upsert(vec![VectorId::U64(5)], vec![10.0, 0.0, 0.0, 0.0], None).unwrap();
    assert_eq!(idx.len(), n as usize);
    let r = idx.search(vec![1.0, 0.0, 0.0, 0.0], 1, None).unwrap();
    assert_eq!(r[0].ids, vec![VectorId::U64(5)]);
    assert_eq!(r[0].scores, vec![10.0]);
    // Remove it: never returned again.
    assert_eq!(idx.remove(&[VectorId::U64(5), VectorId::U64(5), VectorId::U64(99_999)]).unwrap(), 1);
    let r = idx.search(vec![1.0, 0.0, 0.0, 0.0], 3, None).unwrap();
    assert!(!r[0].ids.contains(&VectorId::U64(5)));
    // Remove most (compaction runs), then ties still follow insertion order.
    idx.remove(&ids(0..9000)).unwrap();
    assert_eq!(idx.len(), 1000);
    let r = idx.search(vec![1.0, 0.0, 0.0, 0.0], 5, Some("nope")).unwrap();
    assert!(r[0].ids.is_empty());
    let r = idx.search(vec![0.0, 0.0, 1.0, 0.0], 3, None).unwrap();
    assert_eq!(r[0].ids, ids(9000..9003));
    let got = idx.get(&[VectorId::U64(9001), VectorId::U64(3)]).unwrap();
    assert_eq!(got[0].as_ref().unwrap().vector, vec![1.0, 9001.0 * 1e-4, 0.0, 0.0]);
    assert!(got[1].is_none());
}

#[test]
fn namespace_search_equals_a_separate_index() {
    let (n, d, k) = (1500, 16, 5);
    let data = rand_vec(n * d, 5);
    let ns: Vec<Option<String>> =
        (0..n).map(|i| if i % 3 == 0 { Some("t0".into()) } else { Some("t1".into()) }).collect();
    let all = VectorIndex::create(cfg(d, Metric::Cosine, Dtype::F32), None).unwrap();
    all.upsert(ids(0..n as u64), data.clone(), Some(ns)).unwrap();
    let only = VectorIndex::create(cfg(d, Metric::Cosine, Dtype::F32), None).unwrap();
    let sel: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
    only.upsert(
        sel.iter().map(|&i| VectorId::U64(i as u64)).collect(),
        sel.iter().flat_map(|&i| data[i * d..(i + 1) * d].to_vec()).collect(),
        None,
    )
    .unwrap();
    let qs = rand_vec(8 * d, 6);
    assert_eq!(all.search(qs.clone(), k, Some("t0")).unwrap(), only.search(qs, k, None).unwrap());
    assert_eq!(all.get(&[VectorId::U64(3)]).unwrap()[0].as_ref().unwrap().namespace.as_deref(), Some("t0"));
}

#[test]
fn bad_input_names_the_field_and_changes_nothing() {
    let idx = VectorIndex::create(cfg(3, Metric::L2, Dtype::F16), None).unwrap();
    idx.upsert(ids(0..1), vec![1.0, 2.0, 3.0], None).unwrap();
    let e = |r: Result<()>| r.unwrap_err().message;
    assert!(e(idx.upsert(ids(1..3), vec![1.0; 5], None)).contains("`vectors` has 5 values"));
    assert!(e(idx.upsert(ids(1..2), vec![1.0, f32::NAN, 0.0], None)).contains("`vectors[0][1]` is NaN"));
    assert!(e(idx.upsert(ids(1..2), vec![1.0, 1e6, 0.0], None)).contains("`vectors[0][1]`"));
    assert!(e(idx.upsert(vec![VectorId::Str("x".into())], vec![1.0; 3], None)).contains("`ids[0]` is a string"));
    assert!(e(idx.upsert(vec![VectorId::U64(7), VectorId::U64(7)], vec![1.0; 6], None)).contains("appears twice"));
    assert!(e(idx.upsert(ids(1..2), vec![1.0; 3], Some(vec![]))).contains("`namespaces` has 0 entries"));
    let s = |r: Result<Vec<SearchHits>>| r.unwrap_err().message;
    assert!(s(idx.search(vec![1.0; 3], 0, None)).contains("`k` must be"));
    assert!(s(idx.search(vec![1.0; 3], MAX_K + 1, None)).contains("`k` must be"));
    assert!(s(idx.search(vec![1.0; 4], 1, None)).contains("`queries` has 4 values"));
    assert!(s(idx.search(vec![f32::INFINITY, 0.0, 0.0], 1, None)).contains("`queries[0][0]` is inf"));
    assert_eq!(idx.len(), 1);
    let cos = VectorIndex::create(cfg(2, Metric::Cosine, Dtype::F32), None).unwrap();
    assert!(e(cos.upsert(ids(0..1), vec![0.0, 0.0], None)).contains("all zeros"));
    let too_big = IndexConfig { max_bytes: 100, ..cfg(3, Metric::Ip, Dtype::F32) };
    let idx = VectorIndex::create(IndexConfig { capacity: 1, ..too_big }, None).unwrap();
    let err = idx.upsert(ids(0..10), vec![1.0; 30], None).unwrap_err();
    assert_eq!(err.code, crate::ErrorCode::TooLarge);
    assert!(idx.is_empty());
}
