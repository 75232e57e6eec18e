//! The vector index file loader (crates/core/src/vector/file.rs,
//! docs/vector-search-format.md): `VectorIndex::from_bytes` on the CPU.
//!
//! The first input byte picks the mode: even, the rest is the file as it is
//! (so every check before the checksum is reached with any bytes); odd, the
//! rest with its last 32 bytes replaced by the SHA-256 of what comes before
//! (so mutated files get past the checksum and reach the success path).
//!
//! Properties:
//! - a failure is E_INDEX with a message naming the source, never anything
//!   else (the CPU has no device errors for files this small) and never a
//!   panic, a hang or an allocation the file's size does not justify
//!   (`-rss_limit_mb`);
//! - a loaded index saves to exactly the bytes it was loaded from
//!   (`to_bytes`: the format is canonical);
//! - its size is the number of vectors a search over everything returns
//!   (k = MAX_K ≥ the vectors a small input can hold), with distinct ids, in
//!   rank order (scores finite, higher first; L2: lower first);
//! - `get` finds every returned id, with `dims` finite values;
//! - a search restricted to a namespace returns exactly the vectors `get`
//!   puts in that namespace, in the same order as in the full search.
#![no_main]

use cuda_engine_core::device::DevicePreference;
use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::vector::{Metric, VectorIndex, MAX_K};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut file = rest.to_vec();
    if mode % 2 == 1 && file.len() >= 32 {
        let n = file.len() - 32;
        let digest = Sha256::digest(&file[..n]);
        file[n..].copy_from_slice(&digest);
    }
    let idx = match VectorIndex::from_bytes(&file, DevicePreference::Cpu, None) {
        Ok(idx) => idx,
        Err(e) => {
            common::check_error(&e, &[ErrorCode::Index], "from_bytes");
            assert!(e.message.contains("(in memory)"), "the message does not name the source: {}", e.message);
            return;
        }
    };
    assert_eq!(idx.to_bytes().expect("to_bytes"), file, "load → save changed the bytes");

    let config = idx.config().clone();
    let d = config.dims;
    let count = idx.len();
    assert!(count <= MAX_K, "{count} vectors from {} bytes", file.len());
    let info = idx.info().expect("info");
    assert_eq!((info.dims, info.count), (d, count));

    let query = vec![1.0f32; d];
    let all = idx.search(query.clone(), MAX_K, None).expect("search")[0].clone();
    assert_eq!(all.ids.len(), count, "a search over everything misses vectors");
    assert_eq!(all.scores.len(), count);
    let distinct: std::collections::HashSet<_> = all.ids.iter().collect();
    assert_eq!(distinct.len(), count, "an id appears twice in one search");
    assert!(all.scores.iter().all(|s| s.is_finite()), "a score is not finite: {:?}", all.scores);
    let ranked = match config.metric {
        Metric::L2 => all.scores.windows(2).all(|w| w[0] <= w[1]),
        Metric::Ip | Metric::Cosine => all.scores.windows(2).all(|w| w[0] >= w[1]),
    };
    assert!(ranked, "scores out of order: {:?}", all.scores);

    let got = idx.get(&all.ids).expect("get");
    let mut namespaces: Vec<Option<String>> = Vec::new();
    for (id, v) in all.ids.iter().zip(&got) {
        let v = v.as_ref().unwrap_or_else(|| panic!("search returned {id:?}, which get does not find"));
        assert_eq!(v.vector.len(), d);
        assert!(v.vector.iter().all(|x| x.is_finite()));
        if !namespaces.contains(&v.namespace) {
            namespaces.push(v.namespace.clone());
        }
    }
    for ns in namespaces.iter().flatten() {
        let want: Vec<_> = all
            .ids
            .iter()
            .zip(&got)
            .filter(|(_, v)| v.as_ref().and_then(|v| v.namespace.as_ref()) == Some(ns))
            .map(|(id, _)| id.clone())
            .collect();
        let only = idx.search(query.clone(), MAX_K, Some(ns)).expect("namespace search")[0].clone();
        assert_eq!(only.ids, want, "namespace {ns:?}");
    }
});
