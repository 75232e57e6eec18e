//! The CUDA backend against sentence-transformers' reference embeddings and
//! against itself (batched vs single, graphs vs plain launches, chunked
//! passes, last hidden state), plus its error paths.
//!
//! GPU tests run when a CUDA device is usable and print plainly
//! `SKIPPED (no CUDA device: …)` when not (CI). The no-GPU behaviour
//! (`device: 'cuda'` is E_CUDA_UNAVAILABLE, `auto` falls back to the CPU) is
//! tested only where there is no GPU.
//!
//! Needs the model (scripts/fetch-model.sh, or CUDA_ENGINE_MODEL). When the
//! model file stores fp16 weights (the copy scripts/gpu-check.sh carries to
//! the GPU machine), fp32 mode is compared with the CPU backend on the same
//! weights instead of with the fp32 fixtures.
//!
//! Run: `cargo test -p cuda-engine-core --release --test cuda_embed -- --nocapture`
//! (the timing test: add `--ignored cuda_forward_timings`).

use std::sync::Arc;
use std::time::Instant;

use cuda_engine_core::backend::cpu::CpuBackend;
use cuda_engine_core::backend::cuda::{CudaBackend, CudaOptions, Dtype, QkvMode};
use cuda_engine_core::backend::{Backend, TokenBatch};
use cuda_engine_core::device::DevicePreference;
use cuda_engine_core::embedder::{EmbedOptions, Embedder, EmbedderOptions};
use cuda_engine_core::model::{BertWeights, ModelConfig, TextTokenizer};
use cuda_engine_core::ErrorCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod common;
use common::{model_dir, repo_root};

/// True when a CUDA device is usable; otherwise says so plainly.
/// Whether a CUDA device is usable. The GPU tests are `#[ignore]`d, so a
/// plain `cargo test` lists them as ignored; run with `--ignored` they
/// print SKIPPED here without a GPU, and with CUDA_ENGINE_REQUIRE_GPU=1
/// (scripts/gpu-check.sh) a missing GPU fails them instead.
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

/// Whether the model file stores fp32 word embeddings.
fn model_is_fp32() -> bool {
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let obj = header.as_object().unwrap();
    let t = obj.iter().find(|(k, _)| k.ends_with("word_embeddings.weight")).unwrap().1;
    t["dtype"] == "F32"
}

fn open(device: DevicePreference, dtype: Dtype) -> Arc<Embedder> {
    let opts = EmbedderOptions { model_dir: Some(model_dir()), device, dtype, ..Default::default() };
    Embedder::open(opts).unwrap_or_else(|e| panic!("Embedder::open failed: {e}"))
}

struct Rec {
    text: String,
    emb: Vec<f32>,
}

fn load(name: &str) -> Vec<Rec> {
    let path = repo_root().join("tests/fixtures").join(name);
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).expect("fixture file")).expect("fixture JSON");
    doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rec {
            text: r["text"].as_str().unwrap().to_string(),
            emb: r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
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
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn embed(e: &Embedder, rt: &tokio::runtime::Runtime, texts: Vec<String>) -> Vec<Vec<f32>> {
    rt.block_on(e.embed(texts, EmbedOptions::default(), CancellationToken::new())).unwrap()
}

/// Every fixture text, one call each, against sentence-transformers; then
/// all texts in one call against the single calls. Returns the worst cosine.
fn check_fixtures(e: &Embedder, min_cos: f64, batch_tol: f32) -> f64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut worst = 1.0f64;
    for name in ["embeddings.json", "holdout.json"] {
        let recs = load(name);
        let mut singles = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let v = embed(e, &rt, vec![r.text.clone()]).remove(0);
            let c = cosine(&v, &r.emb);
            worst = worst.min(c);
            assert!(c >= min_cos, "{name}[{i}] {:?}: cosine {c} < {min_cos}", r.text);
            singles.push(v);
        }
        let all: Vec<String> = recs.iter().map(|r| r.text.clone()).collect();
        let batched = embed(e, &rt, all);
        let mut worst_d = 0f32;
        for (i, (b, s)) in batched.iter().zip(&singles).enumerate() {
            let d = max_abs(b, s);
            worst_d = worst_d.max(d);
            assert!(d <= batch_tol, "{name}[{i}]: batched vs single differ by {d} (> {batch_tol})");
            assert!(cosine(b, s) >= 0.9999, "{name}[{i}]: batched vs single cosine {}", cosine(b, s));
        }
        eprintln!("  {name}: {} texts, batched vs single max abs {worst_d:.2e}", recs.len());
    }
    worst
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it with --ignored and CUDA_ENGINE_REQUIRE_GPU=1"]
fn cuda_fp16_matches_sentence_transformers() {
    if !gpu("cuda_fp16_matches_sentence_transformers") {
        return;
    }
    let e = open(DevicePreference::Cuda(None), Dtype::F16);
    let info = e.info();
    assert_eq!(info.backend, "cuda");
    assert_eq!(info.dtype, "fp16");
    let worst = check_fixtures(&e, 0.9995, 3e-3);
    eprintln!("cuda fp16: worst cosine vs sentence-transformers fp32 {worst:.6}; status {:?}", e.backend_status());
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it with --ignored and CUDA_ENGINE_REQUIRE_GPU=1"]
fn cuda_bf16_is_close() {
    if !gpu("cuda_bf16_is_close") {
        return;
    }
    let e = open(DevicePreference::Cuda(None), Dtype::Bf16);
    let worst = check_fixtures(&e, 0.998, 2e-2);
    eprintln!("cuda bf16: worst cosine vs sentence-transformers fp32 {worst:.6}");
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it with --ignored and CUDA_ENGINE_REQUIRE_GPU=1"]
fn cuda_fp32_matches() {
    if !gpu("cuda_fp32_matches") {
        return;
    }
    let e = open(DevicePreference::Cuda(None), Dtype::F32);
    assert_eq!(e.info().dtype, "fp32");
    if model_is_fp32() {
        let worst = check_fixtures(&e, 0.99999, 1e-4);
        eprintln!("cuda fp32: worst cosine vs sentence-transformers fp32 {worst:.8}");
    } else {
        eprintln!("cuda fp32: model file holds fp16 weights; comparing with the CPU backend on the same weights");
    }
    // Always: the CPU backend (fp32) on the same weights.
    let cpu = open(DevicePreference::Cpu, Dtype::F32);
    assert_eq!(cpu.info().backend, "cpu");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut texts: Vec<String> = load("holdout.json").into_iter().map(|r| r.text).collect();
    texts.extend(load("embeddings.json").into_iter().map(|r| r.text));
    let g = embed(&e, &rt, texts.clone());
    let c = embed(&cpu, &rt, texts);
    let mut worst = 1.0f64;
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let cs = cosine(a, b);
        worst = worst.min(cs);
        assert!(cs >= 0.99999, "text {i}: cuda fp32 vs cpu cosine {cs}");
        assert!(max_abs(a, b) <= 1e-4, "text {i}: cuda fp32 vs cpu max abs {}", max_abs(a, b));
    }
    eprintln!("cuda fp32 vs cpu fp32: worst cosine {worst:.8}");
}

fn parts() -> (BertWeights, ModelConfig, TextTokenizer) {
    let dir = model_dir();
    let config = ModelConfig::load(&dir).unwrap();
    let tok = TextTokenizer::load(&dir.join("tokenizer.json"), config.max_seq_length).unwrap();
    let w = BertWeights::load(&dir.join("model.safetensors"), &config.bert).unwrap();
    (w, config, tok)
}

fn batch_of(tok: &TextTokenizer, texts: &[String]) -> TokenBatch {
    let mut b = TokenBatch::new();
    for (i, t) in texts.iter().enumerate() {
        let e = tok.encode(t, i, true).unwrap();
        b.push(&e.ids, &e.type_ids);
    }
    b
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("sentence {i}: {}", "the quick brown fox jumps over the lazy dog ".repeat(1 + (i * 7) % 23)))
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it with --ignored and CUDA_ENGINE_REQUIRE_GPU=1"]
fn cuda_graphs_chunks_and_hidden_state_agree() {
    if !gpu("cuda_graphs_chunks_and_hidden_state_agree") {
        return;
    }
    let (w, config, tok) = parts();
    let h = config.bert.hidden_size;
    let plain = CudaBackend::new(&w, &config, &CudaOptions { graphs: false, ..Default::default() }).unwrap();
    let graphs = CudaBackend::new(&w, &config, &CudaOptions { graphs: true, ..Default::default() }).unwrap();
    // max_batch_tokens is raised to max_position_embeddings (512): a
    // 300-sequence batch of ~5k tokens runs as many passes.
    let small = CudaBackend::new(
        &w,
        &config,
        &CudaOptions { graphs: false, max_batch_tokens: 512, max_batch_seqs: 7, ..Default::default() },
    )
    .unwrap();
    let cpu = CpuBackend::new(&w, &config, None).unwrap();

    for n in [1usize, 2, 3, 5, 17, 64, 300] {
        let b = batch_of(&tok, &texts(n));
        let reference = cpu.forward(&b, false).unwrap().pooled;
        for (name, be) in [("plain", &plain), ("graphs", &graphs), ("chunked", &small)] {
            // twice: the graph path captures first, replays second
            for round in 0..2 {
                let out = be.forward(&b, false).unwrap();
                assert_eq!(out.pooled.len(), n * h);
                for s in 0..n {
                    let (a, r) = (&out.pooled[s * h..(s + 1) * h], &reference[s * h..(s + 1) * h]);
                    let c = cosine(a, r);
                    assert!(c >= 0.9995, "{name} n={n} seq {s} round {round}: cosine vs cpu {c}");
                }
            }
        }
    }
    let st = graphs.status();
    assert!(st.graphs > 0, "no CUDA graph was captured: {st:?}");
    assert!(st.memory_bytes > 0);
    eprintln!("graphs backend status: {st:?}");

    // Last hidden state: mean over each sequence's rows equals the pooled
    // vector (all-MiniLM-L6-v2 mean-pools), also across chunks.
    let b = batch_of(&tok, &texts(40));
    for be in [&plain, &small] {
        let out = be.forward(&b, true).unwrap();
        let hid = out.last_hidden.unwrap();
        assert_eq!(hid.len(), b.total_tokens() * h);
        for s in 0..b.n_seqs() {
            let r = b.seq_range(s);
            let mut mean = vec![0f32; h];
            for t in r.clone() {
                for j in 0..h {
                    mean[j] += hid[t * h + j] / r.len() as f32;
                }
            }
            let d = max_abs(&mean, &out.pooled[s * h..(s + 1) * h]);
            assert!(d <= 2e-3, "seq {s}: mean of last hidden differs from pooled by {d}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it with --ignored and CUDA_ENGINE_REQUIRE_GPU=1"]
fn cuda_errors_have_stable_codes() {
    if !gpu("cuda_errors_have_stable_codes") {
        return;
    }
    let (w, config, _) = parts();
    let e = CudaBackend::new(&w, &config, &CudaOptions { device: 99, ..Default::default() }).err().unwrap();
    assert_eq!(e.code, ErrorCode::CudaUnavailable, "{e}");
    // Workspaces for 2^31 tokens cannot fit: E_GPU_OOM, and the next open works.
    let e =
        CudaBackend::new(&w, &config, &CudaOptions { max_batch_tokens: 1 << 31, ..Default::default() }).err().unwrap();
    assert_eq!(e.code, ErrorCode::GpuOom, "{e}");
    eprintln!("oom message: {e}");
    let ok = CudaBackend::new(&w, &config, &CudaOptions::default()).unwrap();
    let mut b = TokenBatch::new();
    b.push(&[101, 7592, 102], &[0, 0, 0]);
    assert_eq!(ok.forward(&b, false).unwrap().pooled.len(), config.bert.hidden_size);
    // Bad ids are rejected before anything runs on the device.
    let mut bad = TokenBatch::new();
    bad.push(&[101, 999_999, 102], &[0, 0, 0]);
    assert_eq!(ok.forward(&bad, false).unwrap_err().code, ErrorCode::Internal);
    assert!(ok.forward(&b, false).is_ok());
}

#[test]
fn without_gpu_cuda_is_unavailable_and_auto_uses_cpu() {
    if cuda_engine_core::device::probe().available {
        eprintln!("without_gpu_cuda_is_unavailable_and_auto_uses_cpu: SKIPPED (a CUDA device is present)");
        return;
    }
    let opts =
        EmbedderOptions { model_dir: Some(model_dir()), device: DevicePreference::Cuda(None), ..Default::default() };
    let e = Embedder::open(opts).err().expect("device cuda without a GPU must fail");
    assert_eq!(e.code, ErrorCode::CudaUnavailable, "{e}");
    let auto = open(DevicePreference::Auto, Dtype::F16);
    assert_eq!(auto.info().backend, "cpu");
    assert_eq!(auto.info().dtype, "fp32");
    let note = auto.backend_note().expect("auto fallback says why");
    assert!(note.contains("CPU"), "{note}");
    assert!(auto.backend_status().fault.is_none());
}

/// GPU-side timings without JS: one forward per batch shape.
#[test]
#[ignore]
fn cuda_forward_timings() {
    if !gpu("cuda_forward_timings") {
        return;
    }
    let (w, config, tok) = parts();
    for dtype in [Dtype::F16, Dtype::F32] {
        let be = CudaBackend::new(&w, &config, &CudaOptions { dtype, ..Default::default() }).unwrap();
        let single = batch_of(&tok, &["a short query about the weather today".to_string()]);
        for _ in 0..50 {
            be.forward(&single, false).unwrap();
        }
        let mut lat: Vec<f64> = (0..500)
            .map(|_| {
                let t = Instant::now();
                be.forward(&single, false).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!(
            "{} single ({} tokens): p50 {:.3} ms p99 {:.3} ms",
            dtype.as_str(),
            single.total_tokens(),
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
        for n in [32usize, 128, 512, 400] {
            // ~38 tokens a text, like the benchmark corpus
            let ts: Vec<String> = (0..n)
                .map(|i| format!("{i} {}", "lorem ipsum dolor sit amet consectetur ".repeat(4 + i % 6)))
                .collect();
            let b = batch_of(&tok, &ts);
            be.forward(&b, false).unwrap();
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                be.forward(&b, false).unwrap();
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            eprintln!(
                "{} batch {n} ({} tokens): {:.3} ms/pass, {:.0} seqs/s, {:.0} tokens/s",
                dtype.as_str(),
                b.total_tokens(),
                dt * 1e3,
                n as f64 / dt,
                b.total_tokens() as f64 / dt
            );
        }
        eprintln!("{} status {:?}", dtype.as_str(), be.status());
    }
}

/// Per-op GPU time of full 16k-token passes (synchronizing after every op),
/// printed when each backend drops, for each Q/K/V GEMM form; the forms
/// must agree.
#[test]
#[ignore]
fn cuda_profile_big_pass() {
    if !gpu("cuda_profile_big_pass") {
        return;
    }
    let (w, config, tok) = parts();
    let h = config.bert.hidden_size;
    let ts: Vec<String> =
        (0..430).map(|i| format!("{i} {}", "lorem ipsum dolor sit amet consectetur ".repeat(4 + i % 6))).collect();
    let mut n = ts.len();
    let mut b = batch_of(&tok, &ts);
    while b.total_tokens() > 16_384 {
        n -= 1;
        b = batch_of(&tok, &ts[..n]);
    }
    let mut reference: Option<Vec<f32>> = None;
    for (dtype, qkv_mode) in [
        (Dtype::F16, QkvMode::Fused),
        (Dtype::F16, QkvMode::Batched),
        (Dtype::F16, QkvMode::Split),
        (Dtype::F32, QkvMode::Batched),
    ] {
        let be = CudaBackend::new(&w, &config, &CudaOptions { dtype, qkv_mode, profile: true, ..Default::default() })
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..20 {
            out = be.forward(&b, false).unwrap().pooled;
        }
        match &reference {
            None => reference = Some(out),
            Some(r) => {
                for s in 0..b.n_seqs() {
                    let c = cosine(&out[s * h..(s + 1) * h], &r[s * h..(s + 1) * h]);
                    assert!(c >= 0.9999, "{qkv_mode:?} {}: seq {s} cosine vs fused fp16 {c}", dtype.as_str());
                }
            }
        }
        eprintln!(
            "{} {qkv_mode:?}: 20 passes of {} tokens / {} sequences (+1 warm-up pass of 3 tokens)",
            dtype.as_str(),
            b.total_tokens(),
            b.n_seqs()
        );
        drop(be);
    }
}

/// One start-up in a child process (`cuda_kernel_cache_across_processes`):
/// opens the fp16 backend with the kernel cache the parent chose, embeds one
/// text and writes `{kernel_cache, startup_ms, embedding}` to
/// `$CUDA_ENGINE_TEST_CHILD_OUT`. Does nothing outside such a run.
#[test]
#[ignore = "child process of cuda_kernel_cache_across_processes"]
fn child_kernel_cache_start() {
    let Some(out) = std::env::var_os("CUDA_ENGINE_TEST_CHILD_OUT") else {
        eprintln!("child_kernel_cache_start: not started by cuda_kernel_cache_across_processes; nothing to do");
        return;
    };
    let e = open(DevicePreference::Cuda(Some(0)), Dtype::F16);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let v = embed(&e, &rt, vec!["the kernel cache".to_string()]);
    let status = e.backend_status();
    let startup = status.startup_ms.expect("startup_ms");
    let doc = serde_json::json!({
        "kernel_cache": startup.kernel_cache,
        "startup_ms": serde_json::to_value(&startup).unwrap(),
        "embedding": v[0],
    });
    std::fs::write(out, doc.to_string()).unwrap();
}

/// The on-disk kernel cache across real processes: an empty cache compiles
/// and writes one entry per kernel program, the next process reads them
/// (`hit`) and computes bit-identical embeddings, and corrupted entries are
/// detected, compiled again and rewritten.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_kernel_cache_across_processes() {
    if !gpu("cuda_kernel_cache_across_processes") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let run = |label: &str| -> Value {
        let out = cache.path().with_extension(format!("{label}.json"));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_kernel_cache_start", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("CUDA_ENGINE_KERNEL_CACHE", cache.path())
            .env("CUDA_ENGINE_TEST_CHILD_OUT", &out)
            .env("CUDA_ENGINE_MODEL", model_dir())
            .status()
            .unwrap();
        assert!(status.success(), "{label}: child failed");
        let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let _ = std::fs::remove_file(&out);
        eprintln!("kernel cache {label}: {} startup_ms {}", doc["kernel_cache"], doc["startup_ms"]);
        doc
    };
    let entries = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cubin"))
            .collect();
        v.sort();
        v
    };
    let cold = run("empty");
    assert_eq!(cold["kernel_cache"], "miss");
    let files = entries();
    assert_eq!(files.len(), 5, "one entry per kernel family: {files:?}");
    let warm = run("warm");
    assert_eq!(warm["kernel_cache"], "hit");
    assert_eq!(warm["embedding"], cold["embedding"], "cached kernels must compute the same bits");
    assert!(
        warm["startup_ms"]["kernels"].as_f64().unwrap() < cold["startup_ms"]["kernels"].as_f64().unwrap(),
        "reading the cache should be faster than compiling"
    );
    for f in &files {
        let mut data = std::fs::read(f).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0x55;
        std::fs::write(f, data).unwrap();
    }
    let repaired = run("corrupted");
    assert_eq!(repaired["kernel_cache"], "miss", "corrupt entries are compiled again");
    assert_eq!(repaired["embedding"], cold["embedding"]);
    assert_eq!(entries(), files, "the same entries, rewritten");
    assert_eq!(run("rewritten")["kernel_cache"], "hit");
    // No temporary files left.
    assert!(std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));
}
