//! CPU backend forward-pass timings without the tokenizer or the batcher
//! (a benchmark, `#[ignore]`d). Run:
//!
//! ```sh
//! BENCH_CORPUS=$PWD/bench/out/corpus-2000.txt BENCH_SHORT=$PWD/bench/out/corpus-300-short.txt \
//!   cargo test -p cuda-engine-core --release --test cpu_forward_bench -- --ignored --nocapture
//! ```
//! Prints wall time and this process's CPU time (user+sys, from getrusage):
//! on a shared machine the CPU time is the steadier figure.

use std::path::PathBuf;
use std::time::Instant;

use cuda_engine_core::backend::cpu::CpuBackend;
use cuda_engine_core::backend::{Backend, TokenBatch};
use cuda_engine_core::model::{BertWeights, ModelConfig, TextTokenizer};

fn cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn lines(var: &str) -> Vec<String> {
    let p = std::env::var(var).unwrap_or_else(|_| panic!("set {var}"));
    std::fs::read_to_string(&p).unwrap().lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn cpu_forward() {
    let dir = std::env::var_os("CUDA_ENGINE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    let config = ModelConfig::load(&dir).unwrap();
    let tok = TextTokenizer::load(&dir.join("tokenizer.json"), config.max_seq_length).unwrap();
    let weights = BertWeights::load(&dir.join("model.safetensors"), &config.bert).unwrap();
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|s| s.parse().ok());
    let be = CpuBackend::new(&weights, &config, threads).unwrap();
    let corpus: Vec<_> = lines("BENCH_CORPUS").iter().map(|t| tok.encode(t, 0, true).unwrap()).collect();
    let short: Vec<_> = lines("BENCH_SHORT").iter().take(300).map(|t| tok.encode(t, 0, true).unwrap()).collect();
    let bs: usize = std::env::var("BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(128);
    let reps: usize = std::env::var("BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let batches: Vec<TokenBatch> = corpus
        .chunks(bs)
        .map(|c| {
            let mut b = TokenBatch::new();
            for e in c {
                b.push(&e.ids, &e.type_ids);
            }
            b
        })
        .collect();
    be.forward(&batches[0], false).unwrap();
    let reps = if std::env::var_os("BENCH_SINGLE_ONLY").is_some() { 0 } else { reps };
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_s());
        for b in &batches {
            be.forward(b, false).unwrap();
        }
        let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_s() - c);
        eprintln!("batch {bs}: {:.0} sentences/s wall, {:.2} s wall, {:.2} s cpu", corpus.len() as f64 / dt, dt, dc);
    }
    let one = |e: &cuda_engine_core::model::Encoded| {
        let mut b = TokenBatch::new();
        b.push(&e.ids, &e.type_ids);
        b
    };
    let singles: Vec<TokenBatch> = short.iter().map(one).collect();
    for b in singles.iter().take(20) {
        be.forward(b, false).unwrap();
    }
    let srep: usize = std::env::var("BENCH_SINGLE_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let singles: Vec<TokenBatch> = (0..srep).flat_map(|_| singles.iter().cloned()).collect();
    let c = cpu_s();
    let mut lat: Vec<f64> = singles
        .iter()
        .map(|b| {
            let t = Instant::now();
            be.forward(b, false).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let dc = cpu_s() - c;
    lat.sort_by(|a, b| a.total_cmp(b));
    let toks: f64 = short.iter().map(|e| e.ids.len() as f64).sum::<f64>() / short.len() as f64;
    eprintln!(
        "single ({toks:.1} tokens avg): p50 {:.2} ms, p10 {:.2}, p99 {:.2}; cpu {:.2} ms/call",
        lat[lat.len() / 2],
        lat[lat.len() / 10],
        lat[lat.len() * 99 / 100],
        dc * 1e3 / lat.len() as f64
    );
}
