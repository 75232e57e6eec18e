//! The CUDA backend: the BERT encoder on one GPU through cudarc, NVRTC
//! kernels (`kernels/*.cu`) and cuBLAS.
//!
//! # Threads
//! One executor thread per backend owns everything CUDA: the bound context,
//! a non-blocking stream, the cuBLAS handle, the compiled kernels, the
//! weights (uploaded once in the compute dtype) and workspaces sized from
//! the token budget. [`CudaBackend::forward`] sends the batch to that thread
//! and blocks on the reply; the thread runs one pass at a time. The thread
//! ends when the backend is dropped (its channel closes).
//!
//! # Failures
//! - No driver, no device, no cuBLAS/NVRTC library, an unsupported model
//!   shape or a failed NVRTC compile at construction: `E_CUDA_UNAVAILABLE`
//!   (device `auto` then falls back to the CPU; see `model::Embedder::open`).
//! - Not enough device memory at construction: `E_GPU_OOM`. Nothing is
//!   allocated per call, so a later call cannot run out.
//! - A sticky CUDA error (illegal address, launch failure, …) poisons the
//!   backend: that call and every later one fail fast with `E_CUDA_FAULT`,
//!   and [`Backend::status`] reports the fault (health: `status: "error"`).
//! - Every CUDA call is behind `catch_unwind` on the executor thread (cudarc
//!   panics when a library is missing); a panic fails that call with
//!   `E_INTERNAL`.
//!
//! Design and measurements: `docs/gpu.md`.

mod exec;
mod kernels;
pub(crate) mod mem;
pub(crate) mod nvrtc;
mod tasks;

pub use tasks::{GpuTasks, TaskCtx};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Backend, BackendStatus, ForwardOutput, StartupTimings, TokenBatch};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::model::{BertWeights, ModelConfig};

/// The compute (storage) dtype of weights and activations on the GPU.
/// Accumulation (GEMMs, softmax, LayerNorm, pooling) is always fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    #[default]
    F16,
    Bf16,
    F32,
}

impl Dtype {
    /// `fp16`, `bf16`, `fp32` (the option strings).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F16 => "fp16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "fp32",
        }
    }

    /// Parse the `dtype` option (`fp16`/`float16`/`half`, `bf16`/`bfloat16`,
    /// `fp32`/`float32`/`float`).
    pub fn parse(s: &str) -> Option<Dtype> {
        match s.to_ascii_lowercase().as_str() {
            "fp16" | "f16" | "float16" | "half" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            "fp32" | "f32" | "float32" | "float" => Some(Dtype::F32),
            _ => None,
        }
    }

    fn kernel_suffix(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }

    fn cuda_type(self) -> cudarc::cublas::sys::cudaDataType {
        use cudarc::cublas::sys::cudaDataType::*;
        match self {
            Dtype::F16 => CUDA_R_16F,
            Dtype::Bf16 => CUDA_R_16BF,
            Dtype::F32 => CUDA_R_32F,
        }
    }
}

/// How the Q/K/V projection runs (see `exec::Device::gemm_qkv`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvMode {
    /// One GEMM over the concatenated `[3H, H]` weight.
    Fused,
    /// One strided-batched GEMM of three `[H, H]` products.
    Batched,
    /// Three GEMMs.
    Split,
}

impl QkvMode {
    fn from_env() -> QkvMode {
        // Split is the default: on the H100 (cuBLAS 13, fp16, 16k tokens)
        // the fused 1152-wide GEMM took 808 µs, the strided batch 109 µs,
        // three GEMMs 57 µs (docs/gpu.md).
        match std::env::var("CUDA_ENGINE_QKV").as_deref() {
            Ok("fused") => QkvMode::Fused,
            Ok("batched") => QkvMode::Batched,
            _ => QkvMode::Split,
        }
    }
}

/// How to build a [`CudaBackend`].
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// Device index (as `device::probe()` lists them).
    pub device: usize,
    pub dtype: Dtype,
    /// Tokens per pass (workspace size; raised to max_position_embeddings).
    pub max_batch_tokens: usize,
    /// Sequences per pass.
    pub max_batch_seqs: usize,
    /// Run small passes as CUDA graphs (default true; env
    /// `CUDA_ENGINE_GRAPHS=0` turns them off for debugging).
    pub graphs: bool,
    /// Time every op (synchronizing after each; graphs off) and print the
    /// table to stderr when the backend is dropped (env `CUDA_ENGINE_PROFILE=1`).
    #[doc(hidden)]
    pub profile: bool,
    /// Store weights `[in, out]` and run NN GEMMs instead of TN (experiment;
    /// env `CUDA_ENGINE_GEMM_NN=1`).
    #[doc(hidden)]
    pub gemm_nn: bool,
    /// Q/K/V GEMM form (env `CUDA_ENGINE_QKV=fused|batched|split`).
    #[doc(hidden)]
    pub qkv_mode: QkvMode,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            dtype: Dtype::F16,
            max_batch_tokens: 16_384,
            max_batch_seqs: 1_024,
            graphs: graphs_from_env(),
            profile: std::env::var("CUDA_ENGINE_PROFILE").is_ok_and(|v| v == "1"),
            gemm_nn: std::env::var("CUDA_ENGINE_GEMM_NN").is_ok_and(|v| v == "1"),
            qkv_mode: QkvMode::from_env(),
        }
    }
}

fn graphs_from_env() -> bool {
    !matches!(std::env::var("CUDA_ENGINE_GRAPHS").as_deref(), Ok("0") | Ok("false") | Ok("off"))
}

/// State the executor shares with the handle (for status and fail-fast).
pub(crate) struct Shared {
    poisoned: AtomicBool,
    fault: Mutex<Option<String>>,
    device_bytes: AtomicU64,
    pinned_bytes: AtomicU64,
    tcap: AtomicUsize,
    ncap: AtomicUsize,
    graphs: AtomicUsize,
    compile_us: AtomicU64,
    startup: Mutex<StartupTimings>,
    passes: AtomicU64,
    seqs: AtomicU64,
    tokens: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            poisoned: AtomicBool::new(false),
            fault: Mutex::new(None),
            device_bytes: AtomicU64::new(0),
            pinned_bytes: AtomicU64::new(0),
            tcap: AtomicUsize::new(0),
            ncap: AtomicUsize::new(0),
            graphs: AtomicUsize::new(0),
            compile_us: AtomicU64::new(0),
            startup: Mutex::new(StartupTimings::default()),
            passes: AtomicU64::new(0),
            seqs: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
        }
    }

    fn poison(&self, why: &str) {
        if let Ok(mut f) = self.fault.lock() {
            if f.is_none() {
                *f = Some(why.to_string());
            }
        }
        self.poisoned.store(true, Ordering::Release);
    }

    fn fault(&self) -> Option<String> {
        if !self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        Some(self.fault.lock().ok().and_then(|f| f.clone()).unwrap_or_else(|| "sticky CUDA error".into()))
    }

    pub(crate) fn set_memory(&self, device: u64, pinned: u64, tcap: usize, ncap: usize) {
        self.device_bytes.store(device, Ordering::Relaxed);
        self.pinned_bytes.store(pinned, Ordering::Relaxed);
        self.tcap.store(tcap, Ordering::Relaxed);
        self.ncap.store(ncap, Ordering::Relaxed);
    }

    pub(crate) fn set_graphs(&self, n: usize) {
        self.graphs.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_compile_ms(&self, ms: f64) {
        self.compile_us.store((ms * 1e3) as u64, Ordering::Relaxed);
    }

    /// Record start-up phases (`StartupTimings`).
    pub(crate) fn startup(&self, f: impl FnOnce(&mut StartupTimings)) {
        let mut g = match self.startup.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }

    pub(crate) fn count(&self, seqs: usize, tokens: usize) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.seqs.fetch_add(seqs as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    }
}

pub(crate) enum Job {
    Forward {
        batch: TokenBatch,
        want_hidden: bool,
        reply: mpsc::SyncSender<Result<ForwardOutput>>,
    },
    /// Tests only: make the device fault (illegal address) to exercise the
    /// poisoning path.
    Fault {
        reply: mpsc::SyncSender<Result<ForwardOutput>>,
    },
    /// Work of another component on this device (a vector index): run with
    /// the executor's context and stream ([`GpuTasks`]). The closure replies
    /// itself and checks the fault state itself.
    Task(tasks::Task),
    /// End the thread now, even while [`GpuTasks`] handles still exist.
    Stop,
}

/// The CUDA implementation of [`Backend`] (see the module docs).
pub struct CudaBackend {
    tx: Option<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    device: usize,
    device_name: String,
    dtype: Dtype,
    hidden: usize,
}

impl CudaBackend {
    /// A handle that runs work on this backend's executor thread (the one
    /// owner of the device's context and stream), e.g. a vector index that
    /// lives next to the model.
    pub fn tasks(&self) -> Option<GpuTasks> {
        self.tx.as_ref().map(|tx| GpuTasks::new(tx.clone(), self.device, self.shared.clone()))
    }

    /// Build the backend on `opts.device`: probe, convert the weights (on
    /// this thread), then start the executor, which compiles the kernels,
    /// uploads the weights, allocates the workspaces and runs a warm-up
    /// pass. Blocking (~0.3–1 s the first time in a process).
    pub fn new(weights: &BertWeights, config: &ModelConfig, opts: &CudaOptions) -> Result<CudaBackend> {
        let t_start = Instant::now();
        let probe = crate::device::probe();
        let context_ms = ms_since(t_start);
        if !probe.available {
            return Err(err!(
                CudaUnavailable,
                "CUDA is not available: {}",
                probe.reason.as_deref().unwrap_or("no device")
            ));
        }
        let ctx = probe.context(opts.device).ok_or_else(|| {
            err!(
                CudaUnavailable,
                "CUDA device {} does not exist or did not initialise ({} usable)",
                opts.device,
                probe.devices.len()
            )
        })?;
        let device_name = probe.devices.get(opts.device).map(|d| d.name.clone()).unwrap_or_default();
        let t_libs = Instant::now();
        // SAFETY: these only try to dlopen the libraries.
        let (has_blas, has_rtc) = catch_unwind(|| unsafe {
            (cudarc::cublas::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present())
        })
        .unwrap_or((false, false));
        if !has_blas {
            return Err(err!(CudaUnavailable, "the cuBLAS library (libcublas.so) was not found"));
        }
        if !has_rtc {
            return Err(err!(CudaUnavailable, "the NVRTC library (libnvrtc.so) was not found"));
        }
        let libraries_ms = ms_since(t_libs);
        let dims = exec::Dims::new(config)?;
        let t_host = Instant::now();
        let host = exec::HostModel::build(weights, opts.dtype, opts.gemm_nn);
        let host_weights_ms = ms_since(t_host);

        let shared = Arc::new(Shared::new());
        shared.startup(|s| {
            s.context = context_ms;
            s.libraries = libraries_ms;
            s.host_weights = host_weights_ms;
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let (init_tx, init_rx) = mpsc::sync_channel::<Result<()>>(1);
        let thread_shared = shared.clone();
        let thread_opts = opts.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cuda-engine-gpu{}", opts.device))
            .spawn(move || executor(ctx, host, dims, thread_opts, thread_shared, rx, init_tx))
            .map_err(|e| err!(Internal, "cannot start the CUDA executor thread: {e}"))?;
        let init =
            init_rx.recv().unwrap_or_else(|_| Err(err!(Internal, "the CUDA executor thread died during start-up")));
        if let Err(e) = init {
            drop(tx);
            let _ = thread.join();
            return Err(e);
        }
        shared.startup(|s| s.total = ms_since(t_start));
        Ok(CudaBackend {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            device: opts.device,
            device_name,
            dtype: opts.dtype,
            hidden: dims.hidden,
        })
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The device index.
    pub fn device(&self) -> usize {
        self.device
    }

    /// Tests only: make the device fault with an illegal address (a sticky
    /// error that ruins the whole CUDA context of this process) and return
    /// the resulting error. Every later call fails with `E_CUDA_FAULT`.
    #[doc(hidden)]
    pub fn inject_fault_for_tests(&self) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| err!(Internal, "the CUDA backend is shut down"))?;
        let (reply, rx) = mpsc::sync_channel(1);
        tx.send(Job::Fault { reply }).map_err(|_| err!(Internal, "the CUDA executor thread has stopped"))?;
        rx.recv().unwrap_or_else(|_| Err(err!(Internal, "the CUDA executor thread stopped")))?;
        Ok(())
    }
}

fn executor(
    ctx: Arc<cudarc::driver::CudaContext>,
    host: exec::HostModel,
    dims: exec::Dims,
    opts: CudaOptions,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Job>,
    init_tx: mpsc::SyncSender<Result<()>>,
) {
    let Some(mut dev) =
        start_executor(&init_tx, "CUDA backend start-up", || exec::Device::new(ctx, host, dims, &opts, shared.clone()))
    else {
        return;
    };
    while let Ok(job) = rx.recv() {
        let (result, reply) = match job {
            Job::Stop => break,
            Job::Task(task) => {
                let ctx = TaskCtx { ctx: dev.context(), stream: dev.stream() };
                task(&ctx);
                continue;
            }
            _ if shared.fault().is_some() => {
                let why = shared.fault().unwrap_or_default();
                let reply = match job {
                    Job::Forward { reply, .. } | Job::Fault { reply } => reply,
                    Job::Task(_) | Job::Stop => continue,
                };
                (Err(err!(CudaFault, "the CUDA context is unusable after an earlier fault: {why}")), reply)
            }
            Job::Forward { batch, want_hidden, reply } => (
                catch_unwind(AssertUnwindSafe(|| dev.forward(&batch, want_hidden)))
                    .unwrap_or_else(|p| Err(CoreError::from_panic(p, "CUDA backend"))),
                reply,
            ),
            Job::Fault { reply } => (
                catch_unwind(AssertUnwindSafe(|| dev.inject_fault().map(|()| ForwardOutput::default())))
                    .unwrap_or_else(|p| Err(CoreError::from_panic(p, "CUDA backend"))),
                reply,
            ),
        };
        if let Err(e) = &result {
            if e.code == ErrorCode::CudaFault {
                shared.poison(&e.message);
            }
        }
        let _ = reply.send(result);
    }
    // Freeing can fail on a poisoned context; Drop impls ignore errors.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(dev)));
}

/// An executor thread's start-up: run `start` behind `catch_unwind`, report
/// the outcome to the thread that spawned it, and give back what it built
/// (None: the thread should end).
pub(crate) fn start_executor<T>(
    init_tx: &mpsc::SyncSender<Result<()>>,
    what: &str,
    start: impl FnOnce() -> Result<T>,
) -> Option<T> {
    let started = catch_unwind(AssertUnwindSafe(start)).unwrap_or_else(|p| Err(CoreError::from_panic(p, what)));
    match started {
        Ok(t) => {
            let _ = init_tx.send(Ok(()));
            Some(t)
        }
        Err(e) => {
            let _ = init_tx.send(Err(e));
            None
        }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn gpu_tasks(&self) -> Option<GpuTasks> {
        self.tasks()
    }

    fn forward(&self, batch: &TokenBatch, want_last_hidden: bool) -> Result<ForwardOutput> {
        if let Some(why) = self.shared.fault() {
            return Err(err!(CudaFault, "the CUDA context is unusable after an earlier fault: {why}"));
        }
        if batch.n_seqs() == 0 {
            return Ok(ForwardOutput {
                pooled: Vec::new(),
                last_hidden: want_last_hidden.then(Vec::new),
                hidden: self.hidden,
            });
        }
        let tx = self.tx.as_ref().ok_or_else(|| err!(Internal, "the CUDA backend is shut down"))?;
        let (reply, rx) = mpsc::sync_channel(1);
        tx.send(Job::Forward { batch: batch.clone(), want_hidden: want_last_hidden, reply })
            .map_err(|_| err!(Internal, "the CUDA executor thread has stopped"))?;
        rx.recv().unwrap_or_else(|_| Err(err!(Internal, "the CUDA executor thread stopped during the call")))
    }

    fn status(&self) -> BackendStatus {
        let s = &self.shared;
        BackendStatus {
            backend: "cuda",
            device: Some(self.device),
            device_name: Some(self.device_name.clone()),
            dtype: self.dtype.as_str(),
            memory_bytes: s.device_bytes.load(Ordering::Relaxed),
            pinned_bytes: s.pinned_bytes.load(Ordering::Relaxed),
            max_batch_tokens: s.tcap.load(Ordering::Relaxed),
            max_batch_seqs: s.ncap.load(Ordering::Relaxed),
            graphs: s.graphs.load(Ordering::Relaxed),
            compile_ms: s.compile_us.load(Ordering::Relaxed) as f64 / 1e3,
            startup_ms: Some(match s.startup.lock() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            }),
            passes: s.passes.load(Ordering::Relaxed),
            sequences: s.seqs.load(Ordering::Relaxed),
            tokens: s.tokens.load(Ordering::Relaxed),
            fault: s.fault(),
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Stop explicitly: a vector index may still hold a GpuTasks sender.
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Job::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Milliseconds since `t` (start-up phases).
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
