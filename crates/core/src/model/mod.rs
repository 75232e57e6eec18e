//! The embedding model: configuration, weights, tokenizer, and the
//! [`Embedder`] handle the engine uses.
//!
//! See `docs/model.md` for the resolution order, the files read, the limits
//! and the pooling/normalization behaviour.

pub mod config;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaOptions, Dtype};
use crate::backend::{Backend, BackendStatus};
pub use crate::batcher::QueueStats;
use crate::batcher::{Batcher, BatcherLimits};
pub use crate::engine::DevicePreference;
use crate::err;
use crate::error::Result;
pub use config::{Activation, BertConfig, ModelConfig, Pooling};
pub use tokenizer::{Encoded, TextTokenizer};
pub use weights::{BertLayerWeights, BertWeights, LayerNormWeights, Linear, Tensor};

/// Environment variable naming the model directory.
pub const MODEL_ENV: &str = "CUDA_ENGINE_MODEL";
/// Default model directory, relative to the process cwd.
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
/// Hugging Face repo looked up in the local HF cache as a last resort.
pub const DEFAULT_HF_REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Options for [`Embedder::open`]. JS passes them camelCase
/// ([`EmbedderOptions::from_json`]).
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

fn opt_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| err!(InvalidArg, "options.{key} must be a positive integer, got {x}")),
    }
}

impl EmbedderOptions {
    /// Read the JS `EngineOptions` object: `model` (or `modelDir`),
    /// `maxBatchTokens`, `maxBatchSize`, `maxQueuedTexts`, `maxTextsPerCall`,
    /// `threads`. Unknown keys are ignored (the object carries other
    /// subsystems' options); a known key of the wrong type is
    /// `E_INVALID_ARG` naming it. `null`/absent keys keep the default.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut o = EmbedderOptions::default();
        if v.is_null() {
            return Ok(o);
        }
        if !v.is_object() {
            return Err(err!(InvalidArg, "options must be an object"));
        }
        for key in ["model", "modelDir"] {
            match v.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if !s.is_empty() => o.model_dir = Some(PathBuf::from(s)),
                Some(x) => {
                    return Err(err!(
                        InvalidArg,
                        "options.{key} must be a non-empty string (a model directory), got {x}"
                    ))
                }
            }
        }
        if let Some(n) = opt_usize(v, "maxBatchTokens")? {
            o.max_batch_tokens = n;
        }
        if let Some(n) = opt_usize(v, "maxBatchSize")? {
            o.max_batch_seqs = n;
        }
        if let Some(n) = opt_usize(v, "maxQueuedTexts")? {
            o.max_queued_texts = n;
        }
        if let Some(n) = opt_usize(v, "maxTextsPerCall")? {
            o.max_texts_per_call = n;
        }
        o.threads = opt_usize(v, "threads")?;
        o.device = match v.get("device") {
            None | Some(Value::Null) => DevicePreference::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => DevicePreference::Auto,
                "cpu" => DevicePreference::Cpu,
                "cuda" => DevicePreference::Cuda(None),
                _ => {
                    return Err(err!(
                        InvalidArg,
                        "options.device must be 'auto', 'cuda', 'cpu' or a device index, got {s:?}"
                    ))
                }
            },
            Some(x) => match x.as_u64() {
                Some(i) => DevicePreference::Cuda(Some(i as usize)),
                None => {
                    return Err(err!(
                        InvalidArg,
                        "options.device must be 'auto', 'cuda', 'cpu' or a device index, got {x}"
                    ))
                }
            },
        };
        match v.get("dtype") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                o.dtype = Dtype::parse(s)
                    .ok_or_else(|| err!(InvalidArg, "options.dtype must be 'fp16', 'bf16' or 'fp32', got {s:?}"))?
            }
            Some(x) => return Err(err!(InvalidArg, "options.dtype must be 'fp16', 'bf16' or 'fp32', got {x}")),
        }
        Ok(o)
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The model directory to load, by the resolution order of `docs/model.md`:
/// `explicit`, else `$CUDA_ENGINE_MODEL`, else `./models/all-MiniLM-L6-v2`,
/// else the HF cache snapshot of sentence-transformers/all-MiniLM-L6-v2.
/// An explicit or env path that does not exist is `E_MODEL` (no silent
/// fallback); nothing found is `E_MODEL` listing what was tried.
pub fn resolve_model_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        return Err(err!(
            Model,
            "model directory {} (option `model`) does not exist or is not a directory",
            p.display()
        ));
    }
    if let Some(v) = std::env::var_os(MODEL_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if p.is_dir() {
            return Ok(p);
        }
        return Err(err!(
            Model,
            "model directory {} (from {MODEL_ENV}) does not exist or is not a directory",
            p.display()
        ));
    }
    let mut tried = Vec::new();
    let local = PathBuf::from(DEFAULT_MODEL_DIR);
    if local.join("config.json").is_file() {
        return Ok(local);
    }
    tried.push(std::env::current_dir().map(|c| c.join(&local)).unwrap_or(local).display().to_string());
    for hub in hf_hub_dirs() {
        let repo = hub.join(format!("models--{}", DEFAULT_HF_REPO.replace('/', "--")));
        if let Some(snap) = hf_snapshot(&repo) {
            return Ok(snap);
        }
        tried.push(repo.join("snapshots/*").display().to_string());
    }
    Err(err!(
        Model,
        "no model found: set option `model` or {MODEL_ENV}, or run scripts/fetch-model.sh (tried {})",
        tried.join(", ")
    ))
}

/// HF hub cache roots, in the order huggingface_hub uses them.
fn hf_hub_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v));
    }
    if let Some(v) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v).join("hub"));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    if let Some(h) = home.filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    out
}

/// The snapshot `refs/main` points to, else any snapshot with a config.json
/// (sorted, for determinism).
fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snaps = repo.join("snapshots");
    if let Ok(r) = std::fs::read_to_string(repo.join("refs/main")) {
        let p = snaps.join(r.trim());
        if p.join("config.json").is_file() {
            return Some(p);
        }
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    all.sort();
    all.pop()
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
}

/// Calls with more texts than this tokenize on a blocking thread instead of
/// the async task (tokenizing one short text takes ~20 µs).
const INLINE_TOKENIZE_MAX: usize = 8;

impl Embedder {
    /// Resolve and load the model and start the CPU backend and the batcher.
    /// Blocking (reads ~90 MB of weights): call it from `spawn_blocking`.
    pub fn open(opts: EmbedderOptions) -> Result<Arc<Embedder>> {
        let dir = resolve_model_dir(opts.model_dir.as_deref())?;
        let config = ModelConfig::load(&dir)?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), config.max_seq_length)?;
        let weights = BertWeights::load(&dir.join("model.safetensors"), &config.bert)?;
        let (backend, note) = choose_backend(&weights, &config, &opts)?;
        drop(weights);
        Self::assemble(dir, config, tokenizer, backend, &opts, note)
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
        Self::assemble(dir, config, tokenizer, backend, opts, None)
    }

    fn assemble(
        dir: PathBuf,
        config: ModelConfig,
        tokenizer: TextTokenizer,
        backend: Arc<dyn Backend>,
        opts: &EmbedderOptions,
        backend_note: Option<String>,
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
        let batcher = Batcher::start(backend.clone(), limits, config.max_seq_length)?;
        Ok(Arc::new(Embedder {
            info,
            config,
            tokenizer: Arc::new(tokenizer),
            batcher,
            max_texts_per_call: opts.max_texts_per_call.max(1),
            backend,
            backend_note,
        }))
    }

    /// The backend's runtime state (device, dtype, memory, fault). Health
    /// reports `status: "error"` when `fault` is set.
    pub fn backend_status(&self) -> BackendStatus {
        self.backend.status()
    }

    /// Why the requested device is not the one in use (device `auto` fell
    /// back to the CPU), for health's `errors`.
    pub fn backend_note(&self) -> Option<&str> {
        self.backend_note.as_deref()
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
        if texts.len() > self.max_texts_per_call {
            return Err(err!(
                TooLarge,
                "texts has {} entries, max {} per call (maxTextsPerCall)",
                texts.len(),
                self.max_texts_per_call
            ));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
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
        let mut out = self.batcher.submit(seqs, cancel).await?;
        if opts.normalize.unwrap_or(self.config.normalize) {
            for v in &mut out {
                l2_normalize(v);
            }
        }
        Ok(out)
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
        self.batcher.submit_tensors(seqs, want_last_hidden, cancel).await
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

fn model_name(dir: &Path) -> String {
    // HF cache: .../models--org--name/snapshots/<hash> → name
    let comps: Vec<String> = dir.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if comps.len() >= 3 && comps[comps.len() - 2] == "snapshots" {
        if let Some(repo) = comps[comps.len() - 3].strip_prefix("models--") {
            return repo.rsplit("--").next().unwrap_or(repo).to_string();
        }
    }
    // The name as the caller gave it (a symlink `models/x -> /data/y` is
    // named `x`); only `.`-like paths need the canonical form.
    let named = match dir.components().next_back() {
        Some(std::path::Component::Normal(_)) => dir.to_path_buf(),
        _ => dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
    };
    named.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}
