//! Quick CPU throughput/latency figures (a benchmark, not a correctness
//! test: `#[ignore]`d so `cargo test` skips it). Run:
//!
//! ```sh
//! python3 /work/shared/bench/make_corpus.py models/all-MiniLM-L6-v2/vocab.txt 2000 > /tmp/corpus.txt
//! python3 /work/shared/bench/make_corpus.py models/all-MiniLM-L6-v2/vocab.txt 2000 1 > /tmp/short.txt
//! BENCH_CORPUS=/tmp/corpus.txt BENCH_SHORT=/tmp/short.txt \
//!   cargo test -p cuda-engine-core --release --test embed_bench -- --ignored --nocapture
//! ```
//! Same corpus as `st_baseline.py ... --device cpu --dtype fp32`.

use std::path::PathBuf;
use std::time::Instant;

use cuda_engine_core::embedder::{EmbedOptions, Embedder, EmbedderOptions};
use tokio_util::sync::CancellationToken;

fn lines(var: &str, default: &str) -> Vec<String> {
    let p = std::env::var(var).unwrap_or_else(|_| default.to_string());
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{var}={p}: {e} (see this file's docs)"))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn cpu_throughput_and_latency() {
    let dir = std::env::var_os("CUDA_ENGINE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    let e = Embedder::open(EmbedderOptions { model_dir: Some(dir), ..Default::default() }).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let corpus = lines("BENCH_CORPUS", "/tmp/corpus.txt");
    let short = lines("BENCH_SHORT", "/tmp/short.txt");
    let ntok: usize = corpus.iter().map(|t| e.tokenizer().encode(t, 0, true).unwrap().ids.len()).sum();
    let run =
        |texts: Vec<String>| rt.block_on(e.embed(texts, EmbedOptions::default(), CancellationToken::new())).unwrap();
    run(corpus[..128].to_vec()); // warm-up

    for bs in [128usize, 2000] {
        let t = Instant::now();
        for chunk in corpus.chunks(bs) {
            run(chunk.to_vec());
        }
        let dt = t.elapsed().as_secs_f64();
        eprintln!(
            "calls of {bs}: {} sentences, {ntok} tokens: {:.0} sentences/s, {:.0} tokens/s",
            corpus.len(),
            corpus.len() as f64 / dt,
            ntok as f64 / dt
        );
    }
    for s in short.iter().take(20) {
        run(vec![s.clone()]);
    }
    let mut lat: Vec<f64> = short
        .iter()
        .take(300)
        .map(|s| {
            let t = Instant::now();
            run(vec![s.clone()]);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    eprintln!("single short sentence: p50 {:.2} ms, p99 {:.2} ms", lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
}
