//! The real model against sentence-transformers' reference embeddings
//! (tests/fixtures/*.json, written by scripts/make_fixtures.py).
//!
//! Needs the model: run `scripts/fetch-model.sh` first. These tests FAIL
//! (not skip) when it is missing. Run them in release mode
//! (`cargo test -p cuda-engine-core --release --test embed_fixtures`):
//! a debug-build forward pass is ~50× slower.

use std::sync::Arc;

use cuda_engine_core::embedder::{EmbedOptions, Embedder, EmbedderOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod common;
use common::{model_dir, repo_root};

fn open(threads: Option<usize>) -> Arc<Embedder> {
    // Pinned to the CPU (fp32 tolerances); GPU numbers are checked in cuda_embed.rs.
    let device = cuda_engine_core::device::DevicePreference::Cpu;
    let opts = EmbedderOptions { model_dir: Some(model_dir()), threads, device, ..Default::default() };
    Embedder::open(opts).unwrap_or_else(|e| panic!("Embedder::open failed: {e}"))
}

struct Rec {
    text: String,
    ids: Vec<u32>,
    n_full: usize,
    emb: Vec<f32>,
    raw: Vec<f32>,
}

fn load(name: &str) -> Vec<Rec> {
    let path = repo_root().join("tests/fixtures").join(name);
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).expect("fixture file")).expect("fixture JSON");
    let f32s = |v: &Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rec {
            text: r["text"].as_str().unwrap().to_string(),
            ids: r["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            n_full: r["n_tokens_untruncated"].as_u64().unwrap() as usize,
            emb: f32s(&r["embedding"]),
            raw: f32s(&r["embedding_raw"]),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_all(name: &str) {
    let recs = load(name);
    assert!(recs.len() >= 40, "{name}: only {} records", recs.len());
    let e = open(None);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Token ids (truncation included) are identical.
    for (i, r) in recs.iter().enumerate() {
        let enc = e.tokenizer().encode(&r.text, i, true).unwrap();
        assert_eq!(enc.ids, r.ids, "{name}[{i}] {:?}: token ids differ", r.text);
        assert_eq!(e.tokenizer().count(&r.text).unwrap(), r.n_full, "{name}[{i}]: untruncated count");
    }

    // One call per text (what sentence-transformers computed: no batching).
    let mut worst_cos = 1.0f64;
    let mut worst_abs = 0.0f32;
    for (i, r) in recs.iter().enumerate() {
        let v = rt
            .block_on(e.embed(vec![r.text.clone()], EmbedOptions::default(), CancellationToken::new()))
            .unwrap()
            .remove(0);
        let c = cosine(&v, &r.emb);
        let d = max_abs(&v, &r.emb);
        worst_cos = worst_cos.min(c);
        worst_abs = worst_abs.max(d);
        assert!(c >= 0.99999, "{name}[{i}] {:?}: cosine {c}", r.text);
        assert!(d <= 1e-4, "{name}[{i}] {:?}: max abs diff {d}", r.text);
        // normalize=false returns the pooled vector before Normalize.
        let raw = rt
            .block_on(e.embed(
                vec![r.text.clone()],
                EmbedOptions { normalize: Some(false), truncate: true },
                CancellationToken::new(),
            ))
            .unwrap()
            .remove(0);
        let dr = max_abs(&raw, &r.raw);
        assert!(dr <= 1e-4 * r.raw.iter().map(|x| x.abs()).fold(1.0, f32::max), "{name}[{i}]: raw max abs diff {dr}");
    }
    eprintln!("{name}: {} texts, worst cosine {worst_cos:.9}, worst max-abs {worst_abs:.2e}", recs.len());

    // All texts in one call (packed into shared batches) equal one-by-one.
    let all: Vec<String> = recs.iter().map(|r| r.text.clone()).collect();
    let batched = rt.block_on(e.embed(all.clone(), EmbedOptions::default(), CancellationToken::new())).unwrap();
    assert_eq!(batched.len(), recs.len());
    for (i, r) in recs.iter().enumerate() {
        let single = rt
            .block_on(e.embed(vec![r.text.clone()], EmbedOptions::default(), CancellationToken::new()))
            .unwrap()
            .remove(0);
        let d = max_abs(&batched[i], &single);
        assert!(d <= 1e-6, "{name}[{i}]: batched vs single differ by {d}");
    }
}

#[test]
fn fixtures_match_sentence_transformers() {
    check_all("embeddings.json");
}

#[test]
fn holdout_matches_sentence_transformers() {
    check_all("holdout.json");
}
