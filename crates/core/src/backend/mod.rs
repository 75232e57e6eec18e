//! Compute backends: one [`Backend`] trait, a CPU and (later) a CUDA
//! implementation.
//!
//! # Contract
//!
//! A backend is built once from the loaded model ([`crate::model::BertWeights`]
//! and [`crate::model::ModelConfig`]) and then runs many [`TokenBatch`]es. The
//! batch is **packed**: the tokens of all sequences are concatenated
//! (`[total_tokens]`, no padding) and `cu_seqlens` marks where each sequence
//! starts, the layout of FlashAttention's varlen API and TEI. Attention never
//! crosses a sequence boundary, so no padding mask is needed.
//!
//! The backend returns the pooled sentence vectors ([`ForwardOutput::pooled`],
//! `[n_seqs, hidden]`, pooling as configured by the model, **before** any L2
//! normalization: the caller normalizes, because normalization is a per-call
//! option), and on request the last hidden state (`[total_tokens, hidden]`,
//! in the same packed order) for the tensor (`infer`) API.
//!
//! Backends are `Send + Sync`: the batcher's thread owns the calls, but
//! handles are shared through `Arc<dyn Backend>`. `forward` may be called from
//! one thread at a time or several; an implementation that cannot run
//! concurrently must serialize internally.
//!
//! Errors: a backend returns `CoreError` (`E_CUDA_FAULT`, `E_GPU_OOM`,
//! `E_INTERNAL`, ...). It may also panic; the batcher catches that and fails
//! the affected requests with `E_INTERNAL`.

use serde::Serialize;

use crate::err;
use crate::error::Result;

pub mod cpu;
pub mod cuda;

/// Give freed heap memory back to the OS. The weights (~90 MB fp32 for
/// MiniLM) are many large blocks; glibc keeps freed blocks in its arenas
/// (its mmap threshold rises after the first large free), so without this a
/// closed engine's memory stayed resident: 5 engines opened together then
/// closed left 250 MB. `malloc_trim` returns the free pages of every arena.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls [`release_freed_memory`] when dropped. Declared as a backend's last
/// field it runs after the weights are freed, on whichever thread drops the
/// last handle: the batcher's thread can outlive `Engine::close` by a few
/// milliseconds, and a trim run by `close` before that free left ~45 MB
/// resident per closed engine.
#[derive(Default)]
pub(crate) struct ReleaseMemoryOnDrop;

impl Drop for ReleaseMemoryOnDrop {
    fn drop(&mut self) {
        release_freed_memory();
    }
}

/// A packed batch of tokenized sequences (no padding).
///
/// Invariants (checked by [`TokenBatch::validate`]):
/// `input_ids`, `token_type_ids` and `position_ids` all have `total_tokens`
/// entries; `cu_seqlens` has `n_seqs + 1` entries, starts at 0, is
/// non-decreasing and ends at `total_tokens`; every sequence is non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, all sequences concatenated.
    pub input_ids: Vec<u32>,
    /// Segment (token type) ids, same length as `input_ids`.
    pub token_type_ids: Vec<u32>,
    /// Absolute position of each token inside its own sequence (0, 1, ...),
    /// built on the host so a device never needs the offsets to compute them.
    pub position_ids: Vec<u32>,
    /// Prefix sums of sequence lengths: sequence `s` is tokens
    /// `cu_seqlens[s] .. cu_seqlens[s + 1]`.
    pub cu_seqlens: Vec<u32>,
    /// The longest sequence in the batch (for kernel launch shapes).
    pub max_seq_len: usize,
}

impl TokenBatch {
    /// An empty batch to push sequences into.
    pub fn new() -> Self {
        TokenBatch { cu_seqlens: vec![0], ..Default::default() }
    }

    /// Append one sequence (ids and type ids of equal length); positions are
    /// 0..len.
    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        debug_assert_eq!(ids.len(), type_ids.len());
        if self.cu_seqlens.is_empty() {
            self.cu_seqlens.push(0);
        }
        self.input_ids.extend_from_slice(ids);
        self.token_type_ids.extend_from_slice(type_ids);
        self.position_ids.extend(0..ids.len() as u32);
        self.cu_seqlens.push(self.input_ids.len() as u32);
        self.max_seq_len = self.max_seq_len.max(ids.len());
    }

    /// Number of sequences.
    pub fn n_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Number of tokens, all sequences together.
    pub fn total_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Token range of sequence `s`.
    pub fn seq_range(&self, s: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[s] as usize..self.cu_seqlens[s + 1] as usize
    }

    /// Check the invariants above and that ids fit the model's tables.
    pub fn validate(&self, vocab_size: usize, type_vocab_size: usize, max_positions: usize) -> Result<()> {
        let t = self.input_ids.len();
        if self.token_type_ids.len() != t || self.position_ids.len() != t {
            return Err(err!(Internal, "token batch: ids, type ids and positions differ in length"));
        }
        if self.cu_seqlens.first() != Some(&0) || self.cu_seqlens.last().map(|&x| x as usize) != Some(t) {
            return Err(err!(Internal, "token batch: cu_seqlens must start at 0 and end at {t}"));
        }
        let mut max_len = 0;
        for w in self.cu_seqlens.windows(2) {
            if w[1] <= w[0] {
                return Err(err!(Internal, "token batch: empty or decreasing sequence in cu_seqlens"));
            }
            max_len = max_len.max((w[1] - w[0]) as usize);
        }
        if max_len != self.max_seq_len {
            return Err(err!(
                Internal,
                "token batch: max_seq_len {} but longest sequence is {max_len}",
                self.max_seq_len
            ));
        }
        if let Some(&bad) = self.input_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(err!(Internal, "token batch: token id {bad} outside the vocabulary ({vocab_size})"));
        }
        if let Some(&bad) = self.token_type_ids.iter().find(|&&id| id as usize >= type_vocab_size) {
            return Err(err!(Internal, "token batch: token type {bad} outside type_vocab_size {type_vocab_size}"));
        }
        if let Some(&bad) = self.position_ids.iter().find(|&&p| p as usize >= max_positions) {
            return Err(err!(Internal, "token batch: position {bad} outside max_position_embeddings {max_positions}"));
        }
        Ok(())
    }
}

/// What a forward pass returns.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// Pooled sentence vectors, `[n_seqs, hidden]` row-major, not normalized.
    pub pooled: Vec<f32>,
    /// The encoder's last hidden state `[total_tokens, hidden]` (packed like
    /// the input), only when asked for.
    pub last_hidden: Option<Vec<f32>>,
    /// The hidden size (row length of both outputs).
    pub hidden: usize,
}

/// Runtime state of a backend, for health (`model.backend_status`).
/// The phases of a backend's start-up, in milliseconds of wall time, in the
/// order they run (`health().compute.startup_ms`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StartupTimings {
    /// Reading the model's files: config, tokenizer, weights (mmap + checks).
    pub files: f64,
    /// The CUDA driver and the device's primary context (0 when an earlier
    /// `health()` or engine already probed).
    pub context: f64,
    /// Finding cuBLAS and NVRTC (dlopen).
    pub libraries: f64,
    /// Converting the weights to the device dtype and layout on the host.
    pub host_weights: f64,
    /// NVRTC (or the disk cache) and loading the kernel modules.
    pub kernels: f64,
    /// `hit`, `miss`, `off` or `loaded` (see `kernel cache` in docs/gpu.md).
    pub kernel_cache: &'static str,
    /// Device allocations and the weight upload.
    pub upload: f64,
    /// The cuBLAS handle and its workspace.
    pub cublas: f64,
    /// The first pass (loads cuBLAS's kernels).
    pub warmup: f64,
    /// Everything from opening the model's files to ready.
    pub total: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackendStatus {
    /// `cpu` or `cuda`.
    pub backend: &'static str,
    /// CUDA device index and name (None on the CPU).
    pub device: Option<usize>,
    pub device_name: Option<String>,
    /// Compute dtype: `fp32`, `fp16` or `bf16`.
    pub dtype: &'static str,
    /// Device memory the backend holds (weights + workspaces), bytes.
    pub memory_bytes: u64,
    /// Page-locked host memory it holds, bytes.
    pub pinned_bytes: u64,
    /// Tokens / sequences one pass holds (workspace size; 0 on the CPU).
    pub max_batch_tokens: usize,
    pub max_batch_seqs: usize,
    /// CUDA graphs captured so far.
    pub graphs: usize,
    /// Kernel compilation time at start-up (ms; 0 when cached).
    pub compile_ms: f64,
    /// Where the start-up time went (CUDA only; docs/gpu.md "Cold start").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<StartupTimings>,
    /// Forward calls, sequences and tokens run so far.
    pub passes: u64,
    pub sequences: u64,
    pub tokens: u64,
    /// Set once a sticky device fault poisoned the backend: every call
    /// fails with `E_CUDA_FAULT` and health should report `status: "error"`.
    pub fault: Option<String>,
}

/// A compute backend for the BERT encoder. See the module docs for the
/// contract.
pub trait Backend: Send + Sync {
    /// `"cpu"` or `"cuda"` (reported in job results and health).
    fn name(&self) -> &'static str;

    /// Run the encoder on a packed batch and pool each sequence.
    /// `want_last_hidden` also returns the last hidden state.
    fn forward(&self, batch: &TokenBatch, want_last_hidden: bool) -> Result<ForwardOutput>;

    /// Runtime state for health. The default suits an fp32 host backend.
    fn status(&self) -> BackendStatus {
        BackendStatus { backend: self.name(), dtype: "fp32", ..Default::default() }
    }

    /// The executor that owns this backend's GPU, for other work on that
    /// device (a vector index next to the model). None on the CPU.
    fn gpu_tasks(&self) -> Option<cuda::GpuTasks> {
        None
    }
}
