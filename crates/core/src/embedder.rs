//! The embedding runtime: the [`Embedder`] ties a loaded model (`model`), a
//! compute backend (`backend`, CPU or CUDA, chosen by `device`) and the
//! batching queue (`batcher`) together, with tokenization on a thread pool
//! and normalization. The engine owns one; `infer` runs tensors through it.
//!
//! Threading: `embed` runs on the async runtime; tokenizing more than a few
//! texts moves to a blocking thread (rayon inside); the backend computes on
//! its own threads (see `batcher`). Failure modes: `E_TOO_LARGE`,
//! `E_TOO_LONG`, `E_OVERLOADED`, `E_CANCELLED`, the backend's errors.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaOptions, Dtype};
use crate::backend::{Backend, BackendStatus};
use crate::batcher::{Batcher, BatcherLimits};
pub use crate::batcher::{Progress, QueueStats};
use crate::device::DevicePreference;
use crate::err;
use crate::error::Result;
use crate::metrics::PassMetrics;
use crate::model::{model_name, resolve_model_dir, BertWeights, Encoded, ModelConfig, TextTokenizer};

/// Options for [`Embedder::open`] (from `EngineOptions`, see `crate::options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// Model directory (`model` / `modelDir`); `None`: see [`resolve_model_dir`].
    pub model_dir: Option<PathBuf>,
    /// Tokens per forward pass, all texts together (`maxBatchTokens`, default 16384).
    pub max_batch_tokens: usize,
    /// Texts per forward pass (`maxBatchSize`, default 1024).
    pub max_batch_seqs: usize,
    /// Texts waiting in the queue before calls get `E_OVERLOADED`
    /// (`maxQueuedTexts`, default 65536).
    pub max_queued_texts: usize,
    /// Texts in one `embed` call (`maxTextsPerCall`, default 16384); more is
    /// `E_TOO_LARGE`.
    pub max_texts_per_call: usize,
    /// CPU compute threads (`threads`, default: available parallelism).
    pub threads: Option<usize>,
    /// Where to run (`device`: 'auto' (default) | 'cuda' | 'cpu' | index).
    pub device: DevicePreference,
    /// GPU compute dtype (`dtype`: 'fp16' (default) | 'bf16' | 'fp32');
    /// the CPU always computes in fp32.
    pub dtype: Dtype,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        let l = BatcherLimits::default();
        EmbedderOptions {
            model_dir: None,
            max_batch_tokens: l.max_batch_tokens,
            max_batch_seqs: l.max_batch_seqs,
            max_queued_texts: l.max_queued_texts,
            max_texts_per_call: 16_384,
            threads: None,
            device: DevicePreference::Auto,
            dtype: Dtype::F16,
        }
    }
}

/// Per-call options of [`Embedder::embed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedOptions {
    /// L2-normalize; `None`: as the model says (a `Normalize` module).
    pub normalize: Option<bool>,
    /// Truncate texts over the model's max tokens; `false`: `E_TOO_LONG`.
    pub truncate: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions { normalize: None, truncate: true }
    }
}

/// What health and job results report about the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// The model directory's name (e.g. `all-MiniLM-L6-v2`; for an HF cache
    /// snapshot, the repo name).
    pub name: String,
    /// The directory it was loaded from.
    pub path: String,
    /// Embedding size.
    pub dims: usize,
    /// Tokens per text, special tokens included.
    pub max_tokens: usize,
    /// `mean`, `cls`, `max` or `mean_sqrt_len`.
    pub pooling: String,
    /// Whether embeddings are normalized by default.
    pub normalize: bool,
    /// `cpu` (or `cuda`).
    pub backend: String,
    /// Compute dtype (`fp32` on the CPU; `fp16`, `bf16` or `fp32` on CUDA).
    pub dtype: String,
    /// CUDA device index (null on the CPU).
    pub device: Option<usize>,
}

/// The embedding model, loaded and served through the batching queue.
pub struct Embedder {
    info: ModelInfo,
    config: ModelConfig,
    tokenizer: Arc<TextTokenizer>,
    batcher: Batcher,
    max_texts_per_call: usize,
    backend: Arc<dyn Backend>,
    /// Why the requested device was not used (e.g. `auto` fell back to the CPU).
    backend_note: Option<String>,
    /// Reading the model's files took this long (start-up breakdown).
    files_ms: f64,
}

/// Calls with more texts than this tokenize on a blocking thread instead of
/// the async task (tokenizing one short text takes ~20 µs).
const INLINE_TOKENIZE_MAX: usize = 8;

impl Embedder {
    /// Resolve and load the model and start the CPU backend and the batcher.
    /// Blocking (reads ~90 MB of weights): call it from `spawn_blocking`.
    pub fn open(opts: EmbedderOptions) -> Result<Arc<Embedder>> {
        Self::open_metered(opts, Arc::default())
    }

    /// [`Embedder::open`], its batcher recording every forward pass into
    /// `passes` (the engine's metrics, which outlive the model).
    pub fn open_metered(opts: EmbedderOptions, passes: Arc<PassMetrics>) -> Result<Arc<Embedder>> {
        let t0 = std::time::Instant::now();
        let dir = resolve_model_dir(opts.model_dir.as_deref())?;
        let config = ModelConfig::load(&dir)?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), config.max_seq_length)?;
        let weights = BertWeights::load(&dir.join("model.safetensors"), &config.bert)?;
        let files_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (backend, note) = choose_backend(&weights, &config, &opts)?;
        drop(weights);
        Self::assemble(dir, config, tokenizer, backend, &opts, note, files_ms, passes)
    }

    /// Assemble an embedder around an already-built backend (how a CUDA
    /// backend plugs in).
    pub fn with_backend(
        dir: PathBuf,
        config: ModelConfig,
        tokenizer: TextTokenizer,
        backend: Arc<dyn Backend>,
        opts: &EmbedderOptions,
    ) -> Result<Arc<Embedder>> {
        Self::assemble(dir, config, tokenizer, backend, opts, None, 0.0, Arc::default())
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: PathBuf,
        config: ModelConfig,
        tokenizer: TextTokenizer,
        backend: Arc<dyn Backend>,
        opts: &EmbedderOptions,
        backend_note: Option<String>,
        files_ms: f64,
        passes: Arc<PassMetrics>,
    ) -> Result<Arc<Embedder>> {
        let status = backend.status();
        let limits = BatcherLimits {
            max_batch_tokens: opts.max_batch_tokens,
            max_batch_seqs: opts.max_batch_seqs,
            max_queued_texts: opts.max_queued_texts,
        };
        let info = ModelInfo {
            name: model_name(&dir),
            path: dir.display().to_string(),
            dims: config.bert.hidden_size,
            max_tokens: config.max_seq_length,
            pooling: config.pooling.as_str().to_string(),
            normalize: config.normalize,
            backend: backend.name().to_string(),
            dtype: status.dtype.to_string(),
            device: status.device,
        };
        let batcher = Batcher::start_metered(backend.clone(), limits, config.max_seq_length, passes)?;
        Ok(Arc::new(Embedder {
            info,
            config,
            tokenizer: Arc::new(tokenizer),
            batcher,
            max_texts_per_call: opts.max_texts_per_call.max(1),
            backend,
            backend_note,
            files_ms,
        }))
    }

    /// The backend's runtime state (device, dtype, memory, fault). Health
    /// reports `status: "error"` when `fault` is set.
    pub fn backend_status(&self) -> BackendStatus {
        let mut status = self.backend.status();
        if let Some(s) = status.startup_ms.as_mut() {
            s.files = self.files_ms;
            s.total += self.files_ms;
        }
        status
    }

    /// The executor of the GPU the model runs on (None on the CPU).
    pub fn gpu_tasks(&self) -> Option<crate::backend::cuda::GpuTasks> {
        self.backend.gpu_tasks()
    }

    /// Why the requested device is not the one in use (device `auto` fell
    /// back to the CPU), for health's `errors`.
    pub fn backend_note(&self) -> Option<&str> {
        self.backend_note.as_deref()
    }

    /// `cpu` or `cuda` (without cloning [`ModelInfo`]).
    pub fn backend_name(&self) -> &str {
        &self.info.backend
    }

    /// The model's name (without cloning [`ModelInfo`]).
    pub fn model_name(&self) -> &str {
        &self.info.name
    }

    /// Name, dims, max tokens, pooling, normalization, backend.
    pub fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    /// The loaded configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer (shared with callers that need token ids, e.g. infer).
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }

    /// Queue occupancy.
    pub fn queue_stats(&self) -> QueueStats {
        self.batcher.stats()
    }

    /// Embed `texts` (one vector each, in order). Errors: `E_TOO_LARGE`
    /// (more than `max_texts_per_call`), `E_TOO_LONG` (a text over max
    /// tokens with `truncate: false`, naming its index), `E_OVERLOADED`,
    /// `E_CANCELLED`, backend errors.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        opts: EmbedOptions,
        cancel: CancellationToken,
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_timed(texts, opts, cancel).await.map(|(v, _)| v)
    }

    /// [`Embedder::embed`], also returning how long the texts waited in the
    /// batching queue (job results' `timings_ms.queue`).
    pub async fn embed_timed(
        &self,
        texts: Vec<String>,
        opts: EmbedOptions,
        cancel: CancellationToken,
    ) -> Result<(Vec<Vec<f32>>, std::time::Duration)> {
        self.embed_with_progress(texts, opts, cancel, None).await
    }

    /// [`Embedder::embed_timed`], reporting (texts computed, texts) to
    /// `progress` after each forward pass (from the batcher thread).
    pub async fn embed_with_progress(
        &self,
        texts: Vec<String>,
        opts: EmbedOptions,
        cancel: CancellationToken,
        progress: Option<Progress>,
    ) -> Result<(Vec<Vec<f32>>, std::time::Duration)> {
        if texts.len() > self.max_texts_per_call {
            return Err(err!(
                TooLarge,
                "texts has {} entries, max {} per call (maxTextsPerCall)",
                texts.len(),
                self.max_texts_per_call
            ));
        }
        if texts.is_empty() {
            return Ok((Vec::new(), std::time::Duration::ZERO));
        }
        let truncate = opts.truncate;
        let seqs = if texts.len() <= INLINE_TOKENIZE_MAX {
            tokenize_all(&self.tokenizer, &texts, truncate)?
        } else {
            let tok = self.tokenizer.clone();
            let job = tokio::task::spawn_blocking(move || tokenize_all(&tok, &texts, truncate));
            tokio::select! {
                r = job => r.map_err(|e| err!(Internal, "tokenizer task failed: {e}"))??,
                _ = cancel.cancelled() => return Err(crate::error::CoreError::cancelled()),
            }
        };
        let out = self.batcher.submit_with_progress(seqs, false, cancel, progress).await?;
        let mut vectors = out.pooled;
        if opts.normalize.unwrap_or(self.config.normalize) {
            for v in &mut vectors {
                l2_normalize(v);
            }
        }
        Ok((vectors, out.queued))
    }
}

impl Embedder {
    /// The tensor API's forward pass (`crate::infer`, which validates ids and
    /// lengths first): run already-tokenized sequences through the batching
    /// queue and return, per sequence in order, the pooled vector (not
    /// normalized) and, when `want_last_hidden`, the encoder's last hidden
    /// state `[len, hidden]` (empty vectors otherwise).
    pub async fn forward_tensors(
        &self,
        seqs: Vec<Encoded>,
        want_last_hidden: bool,
        cancel: CancellationToken,
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        let out = self.batcher.submit_tensors(seqs, want_last_hidden, cancel).await?;
        Ok((out.pooled, out.hidden))
    }
}

/// Build the backend `opts.device` asks for. `auto`: CUDA device 0 when it
/// starts, else the CPU with a note saying why; `cuda`/index: that device or
/// the error (`E_CUDA_UNAVAILABLE`, `E_GPU_OOM`); `cpu`: the CPU.
fn choose_backend(
    weights: &BertWeights,
    config: &ModelConfig,
    opts: &EmbedderOptions,
) -> Result<(Arc<dyn Backend>, Option<String>)> {
    let cuda = |device: usize| -> Result<Arc<dyn Backend>> {
        let o = CudaOptions {
            device,
            dtype: opts.dtype,
            max_batch_tokens: opts.max_batch_tokens,
            max_batch_seqs: opts.max_batch_seqs,
            ..CudaOptions::default()
        };
        Ok(Arc::new(CudaBackend::new(weights, config, &o)?))
    };
    let cpu = || -> Result<Arc<dyn Backend>> { Ok(Arc::new(CpuBackend::new(weights, config, opts.threads)?)) };
    match opts.device {
        DevicePreference::Cpu => Ok((cpu()?, None)),
        DevicePreference::Cuda(i) => Ok((cuda(i.unwrap_or(0))?, None)),
        DevicePreference::Auto => {
            let probe = crate::device::probe();
            if !probe.available {
                let why = probe.reason.clone().unwrap_or_else(|| "no CUDA device".into());
                return Ok((cpu()?, Some(format!("device auto: using the CPU ({why})"))));
            }
            match cuda(0) {
                Ok(b) => Ok((b, None)),
                Err(e) => {
                    log::warn!("cuda-engine: CUDA backend unavailable, using the CPU: {e}");
                    Ok((cpu()?, Some(format!("device auto: CUDA backend failed to start, using the CPU: {e}"))))
                }
            }
        }
    }
}

/// Calls with at least this many texts tokenize on the global rayon pool.
const PAR_TOKENIZE_MIN: usize = 32;

/// Tokenize `texts` in order. WordPiece costs ~50–100 µs per corpus
/// sentence: on one thread that alone bounds a call at ~10–20k texts/s, far
/// below what the GPU backend computes, so big calls use every core.
fn tokenize_all(tok: &TextTokenizer, texts: &[String], truncate: bool) -> Result<Vec<Encoded>> {
    if texts.len() < PAR_TOKENIZE_MIN {
        return texts.iter().enumerate().map(|(i, t)| tok.encode(t, i, truncate)).collect();
    }
    use rayon::prelude::*;
    texts.par_iter().enumerate().with_min_len(8).map(|(i, t)| tok.encode(t, i, truncate)).collect()
}

/// Divide by the L2 norm, with sentence-transformers' (torch
/// `F.normalize`) floor of 1e-12 so a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
    }
}
