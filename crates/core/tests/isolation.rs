//! `isolation: 'process'` against real processes (the `cuda-worker` binary,
//! the CPU backend, the repository's model): results equal in-process ones;
//! an injected segfault, abort, hang or sticky CUDA fault in the isolated
//! process fails the calls in flight with a code and the next call works
//! within the process's cold start + 1 s; `close()` leaves no process.
//!
//! Faults are injected with `CUDA_ENGINE_FAULT_INJECT`, given to the one
//! isolated process through `IsolationConfig::env` (Rust API only), so the
//! tests of this binary do not see each other's faults. They run one at a
//! time (`SERIAL`): the recovery times they print are meaningful only on an
//! otherwise idle machine.

mod common;
mod worker_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::{CallOptions, Engine, EnvelopeInput, Isolation};
use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::jobs::{BackendKind, JobOutput};
use cuda_engine_core::options::EngineOptions;
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TEXTS: [&str; 6] = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "GPU fault isolation costs one process restart",
    "",
    "embeddings through a pipe",
    "Ünïcödé and emoji 🚀 survive the trip",
];

fn texts() -> Vec<String> {
    TEXTS.iter().map(|s| s.to_string()).collect()
}

fn open(isolation: &str, fault: Option<&str>) -> Arc<Engine> {
    let options = json!({ "model": common::model_dir(), "device": "cpu", "isolation": isolation });
    let mut config = EngineOptions::from_json(&options).and_then(EngineOptions::into_config).unwrap();
    config.isolation.path = Some(worker_support::cuda_worker_bin());
    if let Some(f) = fault {
        config.isolation.env.push(("CUDA_ENGINE_FAULT_INJECT".into(), f.into()));
    }
    Engine::open(config).unwrap_or_else(|e| panic!("open: {e}"))
}

fn call(timeout_ms: Option<u64>) -> CallOptions {
    CallOptions { timeout: timeout_ms.map(Duration::from_millis), ..CallOptions::default() }
}

async fn embed(engine: &Engine, timeout_ms: Option<u64>) -> cuda_engine_core::Result<Vec<Vec<f32>>> {
    engine.embed(texts(), EmbedOptions::default(), call(timeout_ms)).await
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn pid_of(engine: &Engine) -> Option<u32> {
    engine.health().isolation.pid
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("Z")),
        Err(_) => false,
    }
}

/// Cold start: from open to the first embedding answered.
async fn cold_start(engine: &Engine) -> Duration {
    let t = Instant::now();
    embed(engine, None).await.unwrap_or_else(|e| panic!("first embed: {e}"));
    t.elapsed()
}

/// After a fault: the time until a call succeeds again (retrying while the
/// process restarts would be the caller's choice; here the *next* call must
/// work, so only one is made).
async fn next_call_succeeds(engine: &Engine, cold: Duration, what: &str) -> Duration {
    let t = Instant::now();
    let v = embed(engine, None).await.unwrap_or_else(|e| panic!("{what}: the call after the fault failed: {e}"));
    let took = t.elapsed();
    assert_eq!(v.len(), TEXTS.len());
    eprintln!(
        "isolation {what}: next call succeeded {} ms after the fault (cold start {} ms)",
        took.as_millis(),
        cold.as_millis()
    );
    assert!(took <= cold + Duration::from_secs(1), "{what}: recovery {took:?} > cold start {cold:?} + 1 s");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_equal_in_process_ones() {
    let _one = SERIAL.lock().await;
    let local = open("in-process", None);
    let iso = open("process", None);
    assert_eq!(iso.isolation(), Isolation::Process);
    let a = embed(&local, None).await.unwrap();
    let b = embed(&iso, None).await.unwrap();
    let d = max_diff(&a, &b);
    eprintln!("isolation: max |in-process - isolated| = {d:e}");
    assert!(d <= 1e-6, "{d}");
    // Not normalized, not truncated: the options travel too.
    let opts = EmbedOptions { normalize: Some(false), truncate: true };
    let a = local.embed(texts(), opts, call(None)).await.unwrap();
    let b = iso.embed(texts(), opts, call(None)).await.unwrap();
    assert!(max_diff(&a, &b) <= 1e-6);
    assert!(iso.embed(Vec::new(), opts, call(None)).await.unwrap().is_empty());
    let long = vec!["word ".repeat(600)];
    let e = iso.embed(long, EmbedOptions { normalize: None, truncate: false }, call(None)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLong, "{e}");

    // submit: embedding, echo (JSON and raw bytes), inference.
    let env = |v: Value| EnvelopeInput::Bytes(serde_json::to_vec(&v).unwrap());
    let emb = json!({ "type": "embedding", "payload": { "texts": TEXTS } });
    let (ra, rb) =
        (local.submit(env(emb.clone()), call(None)).await.unwrap(), iso.submit(env(emb), call(None)).await.unwrap());
    let vecs = |o: &JobOutput| -> Vec<Vec<f32>> {
        let JobOutput::Json(v) = o else { panic!("not JSON") };
        serde_json::from_value(v["embeddings"].clone()).unwrap()
    };
    assert!(max_diff(&vecs(&ra.output), &vecs(&rb.output)) <= 1e-6);
    assert_eq!(rb.backend, BackendKind::Cpu);
    assert_eq!(rb.job_type, "embedding");
    let echo = json!({ "id": "e1", "type": "echo", "payload": { "x": [1, 2.5, "y"] } });
    let r = iso.submit(env(echo), call(None)).await.unwrap();
    assert_eq!((r.id.as_deref(), r.output), (Some("e1"), JobOutput::Json(json!({ "x": [1, 2.5, "y"] }))));
    let raw = json!({ "type": "echo", "payload_b64": "AAEC/w==", "encoding": "raw" });
    assert_eq!(iso.submit(env(raw), call(None)).await.unwrap().output, JobOutput::Bytes(vec![0, 1, 2, 255]));
    let infer = json!({ "type": "inference", "payload": {
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [2], "data": ["a cat", "a dog"] }] } });
    let (ia, ib) = (
        local.submit(env(infer.clone()), call(None)).await.unwrap(),
        iso.submit(env(infer), call(None)).await.unwrap(),
    );
    assert_eq!(ia.output, ib.output);
    // infer(): the response tensors come back as raw bytes, bit-exact.
    let req = cuda_engine_core::infer::InferRequest::from_json(&json!({
        "id": "q1",
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [3], "data": ["a cat", "", "a much longer text about dogs"] }],
        "outputs": [{ "name": "sentence_embedding" }, { "name": "last_hidden_state" }, { "name": "attention_mask" }],
    }))
    .unwrap();
    let (ia, ib) = (local.infer(req.clone(), call(None)).await.unwrap(), iso.infer(req, call(None)).await.unwrap());
    assert_eq!(ib.outputs.len(), 3);
    assert_eq!(ia, ib);
    let unknown = json!({ "type": "resize", "payload": {} });
    assert_eq!(iso.submit(env(unknown), call(None)).await.unwrap_err().code, ErrorCode::UnknownType);
    assert_eq!(iso.models().await.unwrap(), local.models().await.unwrap());

    // health: the isolated process's pid and its own report.
    iso.refresh_health().await;
    let h = iso.health();
    let hj = h.to_json();
    assert_eq!(hj["isolation"]["mode"], "process", "{hj}");
    assert_eq!(hj["isolation"]["restarts"], 0);
    let pid = h.isolation.pid.expect("a pid");
    assert_ne!(pid, std::process::id());
    let report = h.isolation.health.as_ref().expect("the isolated process's report");
    assert_eq!(report["isolation"]["mode"], "in-process");
    assert_eq!(report["model"]["name"], "all-MiniLM-L6-v2");
    assert_eq!(hj["model"]["name"], "all-MiniLM-L6-v2");
    assert_eq!(hj["backend"], "cpu");
    assert_eq!(local.health().to_json()["isolation"]["mode"], "in-process");
    // In-process: nothing was loaded here for the isolated engine.
    assert!(hj["compute"].is_null());

    iso.close(Duration::from_secs(5)).await;
    local.close(Duration::from_secs(5)).await;
    assert!(!alive(pid), "the isolated process {pid} outlived close()");
    assert_eq!(embed(&iso, None).await.unwrap_err().code, ErrorCode::Closed);
}

/// A crash (segfault or abort) on the 2nd embedding: the calls in flight
/// fail with E_WORKER_EXIT naming the signal, the next call works.
async fn crash_case(kind: &str, signal: &str) {
    let _one = SERIAL.lock().await;
    let engine = open("process", Some(&format!("{kind}-on-embed:2")));
    let cold = cold_start(&engine).await;
    let pid = pid_of(&engine).unwrap();
    // Four calls in flight; the first the process reads crashes it.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let e = engine.clone();
            tokio::spawn(async move { embed(&e, None).await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        let e = r.as_ref().expect_err("a call in flight at the crash must fail");
        assert_eq!(e.code, ErrorCode::WorkerExit, "{e}");
        assert!(e.message.contains(&format!("signal {signal}")), "{e}");
    }
    next_call_succeeds(&engine, cold, kind).await;
    let h = engine.health();
    assert_eq!(h.isolation.restarts, 1);
    let new_pid = h.isolation.pid.unwrap();
    assert_ne!(new_pid, pid);
    assert!(!alive(pid));
    engine.close(Duration::from_secs(5)).await;
    assert!(!alive(new_pid), "the isolated process {new_pid} outlived close()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_segfault_costs_one_restart() {
    crash_case("segfault", "11").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_abort_costs_one_restart() {
    crash_case("abort", "6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_hang_is_killed_at_the_timeout() {
    let _one = SERIAL.lock().await;
    let engine = open("process", Some("hang-on-embed:2"));
    let cold = cold_start(&engine).await;
    let pid = pid_of(&engine).unwrap();
    let t = Instant::now();
    let e = embed(&engine, Some(1500)).await.unwrap_err();
    let waited = t.elapsed();
    assert_eq!(e.code, ErrorCode::WorkerTimeout, "{e}");
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000), "{waited:?}");
    next_call_succeeds(&engine, cold, "hang").await;
    assert_eq!(engine.health().isolation.restarts, 1);
    assert!(!alive(pid), "the hung process {pid} was not killed");
    engine.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_sticky_cuda_fault_is_survived() {
    let _one = SERIAL.lock().await;
    let engine = open("process", Some("sticky-cuda-fault-on-embed:2"));
    let cold = cold_start(&engine).await;
    let pid = pid_of(&engine).unwrap();
    let e = embed(&engine, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::CudaFault, "{e}");
    // The poisoned process is replaced: the next call runs in a new one.
    next_call_succeeds(&engine, cold, "sticky-cuda-fault").await;
    let h = engine.health();
    assert_eq!(h.isolation.restarts, 1);
    assert_ne!(h.isolation.pid, Some(pid));
    assert!(!alive(pid));
    engine.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_is_worker_not_found_at_open() {
    let options = json!({ "isolation": "process", "device": "cpu" });
    let mut config = EngineOptions::from_json(&options).and_then(EngineOptions::into_config).unwrap();
    config.isolation.path = Some("/nonexistent/cuda-worker".into());
    let e = Engine::open(config).err().expect("open must fail");
    assert_eq!(e.code, ErrorCode::WorkerNotFound, "{e}");
    assert!(e.message.contains("isolation"), "{e}");
}
