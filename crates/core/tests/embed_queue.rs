//! The batching queue with the real model: limits, cancellation, merging of
//! concurrent calls, and a backend panic turning into E_INTERNAL.
//!
//! Needs the model (scripts/fetch-model.sh); fails if it is missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cuda_engine_core::backend::cpu::CpuBackend;
use cuda_engine_core::backend::{Backend, ForwardOutput, TokenBatch};
use cuda_engine_core::embedder::{EmbedOptions, Embedder, EmbedderOptions};
use cuda_engine_core::model::{BertWeights, ModelConfig, TextTokenizer};
use cuda_engine_core::{ErrorCode, Result};
use tokio_util::sync::CancellationToken;

mod common;
use common::model_dir;

/// Pinned to the CPU: these tests check exact CPU numbers and queue
/// behaviour, and on a GPU machine `auto` would pick CUDA.
fn open(opts: EmbedderOptions) -> Arc<Embedder> {
    let device = cuda_engine_core::device::DevicePreference::Cpu;
    Embedder::open(EmbedderOptions { model_dir: Some(model_dir()), device, ..opts }).unwrap()
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sentence number {i} about {}", "topic ".repeat(i % 17))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_without_truncation_names_the_text() {
    let e = open(EmbedderOptions::default());
    let long = "word ".repeat(300);
    let r = e
        .embed(
            vec!["short".into(), long.clone()],
            EmbedOptions { normalize: None, truncate: false },
            CancellationToken::new(),
        )
        .await;
    let err = r.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLong);
    assert_eq!(err.message, "texts[1] has 302 tokens, max 256");
    // Exactly 256 tokens is allowed without truncation.
    let ok = "hello ".repeat(254);
    assert_eq!(
        e.embed(vec![ok], EmbedOptions { normalize: None, truncate: false }, CancellationToken::new())
            .await
            .unwrap()
            .len(),
        1
    );
    // With truncation (the default) the long text embeds.
    assert_eq!(e.embed(vec![long], EmbedOptions::default(), CancellationToken::new()).await.unwrap()[0].len(), 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reject_with_stable_codes() {
    let e = open(EmbedderOptions { max_queued_texts: 4, max_texts_per_call: 6, ..Default::default() });
    let err = e.embed(texts(5), EmbedOptions::default(), CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Overloaded, "{err}");
    assert!(err.message.contains("maxQueuedTexts"), "{err}");
    let err = e.embed(texts(7), EmbedOptions::default(), CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    // The rejected calls left no trace in the queue.
    assert_eq!(e.queue_stats().depth, 0);
    assert_eq!(e.embed(texts(4), EmbedOptions::default(), CancellationToken::new()).await.unwrap().len(), 4);
    assert_eq!(e.embed(vec![], EmbedOptions::default(), CancellationToken::new()).await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_fail_and_free_the_queue() {
    let e = open(EmbedderOptions { max_batch_tokens: 256, ..Default::default() });
    let tok = CancellationToken::new();
    tok.cancel();
    let err = e.embed(texts(3), EmbedOptions::default(), tok).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);

    // A big call split into many small batches, cancelled while running:
    // it returns E_CANCELLED promptly and its remaining texts leave the queue.
    let tok = CancellationToken::new();
    let e2 = e.clone();
    let t2 = tok.clone();
    let big = tokio::spawn(async move { e2.embed(texts(400), EmbedOptions::default(), t2).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tok.cancel();
    let err = big.await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    // The queue drains (cancelled texts are skipped, not computed).
    for _ in 0..200 {
        if e.queue_stats().depth == 0 && e.queue_stats().in_flight == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(e.queue_stats().depth, 0);
    assert_eq!(e.embed(texts(2), EmbedOptions::default(), CancellationToken::new()).await.unwrap().len(), 2);
}

/// Many concurrent calls (merged into shared batches) get exactly their own
/// vectors, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_merged_and_kept_apart() {
    let e = open(EmbedderOptions { max_batch_tokens: 512, ..Default::default() });
    let all = texts(48);
    let mut expected = Vec::new();
    for t in &all {
        expected
            .push(e.embed(vec![t.clone()], EmbedOptions::default(), CancellationToken::new()).await.unwrap().remove(0));
    }
    let mut handles = Vec::new();
    for chunk in all.chunks(3) {
        let e = e.clone();
        let chunk = chunk.to_vec();
        handles
            .push(tokio::spawn(async move { e.embed(chunk, EmbedOptions::default(), CancellationToken::new()).await }));
    }
    let mut got = Vec::new();
    for h in handles {
        got.extend(h.await.unwrap().unwrap());
    }
    assert_eq!(got.len(), expected.len());
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(d <= 1e-6, "text {i}: concurrent vs single differ by {d}");
    }
}

/// Fault injection: the real CPU backend, made to panic once. The batch's
/// callers get E_INTERNAL, and the queue keeps serving afterwards.
struct PanicOnce {
    inner: CpuBackend,
    armed: AtomicBool,
}

impl Backend for PanicOnce {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn forward(&self, batch: &TokenBatch, want: bool) -> Result<ForwardOutput> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("injected backend panic");
        }
        self.inner.forward(batch, want)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_panic_becomes_internal_error() {
    let dir = model_dir();
    let config = ModelConfig::load(&dir).unwrap();
    let tok = TextTokenizer::load(&dir.join("tokenizer.json"), config.max_seq_length).unwrap();
    let w = BertWeights::load(&dir.join("model.safetensors"), &config.bert).unwrap();
    let backend =
        Arc::new(PanicOnce { inner: CpuBackend::new(&w, &config, None).unwrap(), armed: AtomicBool::new(true) });
    let e = Embedder::with_backend(dir, config, tok, backend, &EmbedderOptions::default()).unwrap();
    let err = e.embed(texts(2), EmbedOptions::default(), CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("injected backend panic"), "{err}");
    assert_eq!(e.queue_stats(), Default::default());
    assert_eq!(e.embed(texts(2), EmbedOptions::default(), CancellationToken::new()).await.unwrap().len(), 2);
    let info = e.info();
    assert_eq!(
        (info.name.as_str(), info.dims, info.max_tokens, info.pooling.as_str(), info.normalize),
        ("all-MiniLM-L6-v2", 384, 256, "mean", true)
    );
}
