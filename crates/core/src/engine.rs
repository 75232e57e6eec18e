//! The engine handle: options, admission, `submit` routing with timeouts and
//! cancellation, `health`. The N-API layer and the `cuda-worker` binary both
//! drive the engine through this type.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::device::DevicePreference;
use crate::discovery::{self, DiscoveryEnv};
use crate::embedder::{EmbedOptions, Embedder, Progress};
use crate::envelope::{self, Encoding, Envelope, Limits, Payload, RawEnvelope};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::grpc::client::RemoteClient;
use crate::health::{Health, IndexHealth, QueueHealth, Status, WorkerStatus};
use crate::infer::{self, InferRequest, InferResponse, ModelMetadata};
use crate::isolated_index::{EngineIndex, IsolatedIndex};
use crate::isolation::{Isolated, IsolationHealth};
use crate::jobs::{BackendKind, JobOutput, JobResult, JobType, Target, Timings};
use crate::metrics::{
    CallTimer, CallType, EngineInfo, Gauges, GpuMemory, IndexGauge, Metrics, MetricsReport, QueueGauge, RunBackend,
    WorkerGauge,
};
pub use crate::options::{EngineConfig, Isolation, ModelLoading};
use crate::vector::request::{results_to_json, SearchQuery, SearchRequest};
use crate::vector::{GpuPlacement, IndexConfig, SearchHits, VectorIndex};
use crate::worker::{Worker, WorkerConfig, WorkerMode};

/// Envelopes bigger than this are decoded on a blocking thread so a large
/// base64 payload never stalls the async workers.
const INLINE_DECODE_BYTES: usize = 1 << 20;

/// How long `close` waits for cancelled calls to unwind after the drain
/// deadline (they only need to drop their futures).
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Per-call options (`CallOptions` in JS).
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// When the caller made the call (the binding sets it on the JS thread);
    /// `timings_ms.queue` and `total` count from here. None: from admission.
    pub issued: Option<Instant>,
    /// Reject with a timeout code once this has passed (None: no limit).
    pub timeout: Option<Duration>,
    /// Fired by the caller's AbortSignal.
    pub cancel: CancellationToken,
    pub target: Target,
}

/// An envelope as it reaches the engine: serialized text/bytes, or fields
/// already read out of a JS object.
#[derive(Debug)]
pub enum EnvelopeInput {
    Bytes(Vec<u8>),
    Raw(RawEnvelope),
}

impl EnvelopeInput {
    fn approx_len(&self) -> usize {
        match self {
            EnvelopeInput::Bytes(b) => b.len(),
            EnvelopeInput::Raw(r) => {
                r.payload_b64.as_ref().map_or(0, |s| s.len()) + r.payload_bytes.as_ref().map_or(0, |b| b.len())
            }
        }
    }

    fn decode(self, limits: &Limits) -> Result<Envelope> {
        match self {
            EnvelopeInput::Bytes(b) => envelope::decode_bytes(&b, limits),
            EnvelopeInput::Raw(r) => r.decode(limits),
        }
    }
}

/// The engine. Cheap to share (`Arc<Engine>`); all methods take `&self`.
///
/// Lifecycle: `open` → calls are admitted (at most `maxInFlight` at once) →
/// `close(drain)` stops admitting (`E_CLOSED`), waits up to `drain` for the
/// admitted calls, cancels the rest (`E_CANCELLED`), stops the worker and
/// drops the model (its memory is freed once no call holds it).
pub struct Engine {
    config: EngineConfig,
    admitted: AtomicUsize,
    closed: AtomicBool,
    /// Set by `close` once the admitted calls are done (or cancelled): from
    /// then on no model loads. (Not `closed`: a call admitted before
    /// `close` may still load the model while it is drained.)
    released: AtomicBool,
    /// Wakes `close` when the last admitted call finishes.
    idle: tokio::sync::Notify,
    /// Fired by `close` after the drain deadline: every call still running
    /// ends with `E_CANCELLED`.
    shutdown: CancellationToken,
    /// The loaded model (None until loaded, and again after `close`).
    embedder: Mutex<Option<Arc<Embedder>>>,
    /// Serializes model loading (one load at a time, the rest wait for it).
    loading: tokio::sync::Mutex<()>,
    /// Why the last model load failed (health reports it).
    model_error: Mutex<Option<String>>,
    /// The external worker: created at open when `options.worker` is set,
    /// or on the first `target: 'worker'` call through discovery.
    worker: tokio::sync::OnceCell<Arc<Worker>>,
    /// `isolation: 'process'`: the supervised process the model runs in
    /// (then `embedder` stays None: nothing is loaded here).
    isolated: Option<Arc<Isolated>>,
    /// Named vector indexes (`engine.createIndex`, `--index name=path`);
    /// with isolation, host copies whose search copies live in the isolated
    /// process (`crate::isolated_index`).
    indexes: Mutex<std::collections::BTreeMap<String, EngineIndex>>,
    /// `EngineOptions.remote`: the remote Open Inference Protocol client
    /// (connects on first use).
    remote: Option<Arc<RemoteClient>>,
    /// Calls, errors, latencies, passes (docs/metrics.md); kept after close.
    metrics: Metrics,
    /// The loaded model's [`RunBackend`] (`cpu` until one loads), so that
    /// labelling a call never takes the embedder lock.
    local_kind: AtomicU8,
}

/// Most named indexes on one engine.
pub const MAX_INDEXES: usize = 256;

/// Where a decoded job runs.
enum Route {
    Local,
    Worker(Arc<Worker>),
    /// The isolated process (`isolation: 'process'`).
    Isolated,
    /// The remote servers (`EngineOptions.remote`).
    Remote(Arc<RemoteClient>),
}

/// Holds one admission slot; released on drop (also when a call is
/// cancelled), waking a draining `close` when it was the last.
struct Admission<'a>(&'a Engine);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// An admission slot taken before the call's future first runs
/// ([`Engine::admit_owned`]): the binding takes it on the JS thread when the
/// call is made, so that the order of calls and `close()` on that thread
/// decides which calls `close` drains. Counted as in flight (and drained by
/// `close`) from then on; released on drop.
pub struct OwnedAdmission(Arc<Engine>);

impl Drop for OwnedAdmission {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl std::fmt::Debug for OwnedAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnedAdmission")
    }
}

/// The slot a call runs under: taken when its future ran, or before. Held
/// only for its drop (the release), so its fields are never read.
#[allow(dead_code)]
enum Slot<'a> {
    Here(Admission<'a>),
    Taken(OwnedAdmission),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (plain assignments), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Open an engine. Blocking (may load the model): call it from a
    /// blocking thread. A model named by `options.model` or
    /// `CUDA_ENGINE_MODEL` is loaded now, so a bad one rejects `open` with
    /// `E_MODEL`; otherwise it loads on first use, and when none is found
    /// the engine still opens (worker routing works; `embed` is `E_MODEL`).
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        if let DevicePreference::Cuda(index) = config.device {
            let probe = crate::device::probe();
            let wanted = index.unwrap_or(0);
            if !probe.available || probe.context(wanted).is_none() {
                return Err(err!(
                    CudaUnavailable,
                    "`options.device` asks for CUDA device {wanted} but it is not usable: {}",
                    probe.reason.as_deref().unwrap_or("no such device")
                ));
            }
        }
        let worker = tokio::sync::OnceCell::new();
        if let Some(cfg) = &config.worker {
            let _ = worker.set(Arc::new(Worker::new(cfg.clone())?));
        }
        let isolated = match config.isolation.mode {
            Isolation::Process => Some(Arc::new(Isolated::new(&config.isolation, &config.base_dir)?)),
            Isolation::InProcess => None,
        };
        let remote = config.remote.clone().map(RemoteClient::new).transpose()?.map(Arc::new);
        let named = config.embedder.model_dir.is_some() || crate::model::model_named_by_env();
        let load_now = named && config.model_loading == ModelLoading::WhenNamed && isolated.is_none();
        let engine = Engine {
            config,
            admitted: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            released: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
            embedder: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            model_error: Mutex::new(None),
            worker,
            isolated,
            indexes: Mutex::new(Default::default()),
            remote,
            metrics: Metrics::new(),
            local_kind: AtomicU8::new(RunBackend::Cpu as u8),
        };
        if load_now {
            let embedder = Embedder::open_metered(engine.config.embedder.clone(), engine.metrics.passes().clone())?;
            engine.set_local_kind(&embedder);
            *lock(&engine.embedder) = Some(embedder);
        }
        Ok(Arc::new(engine))
    }

    /// The embedding model, loaded on first use (on a blocking thread).
    pub async fn embedder(&self) -> Result<Arc<Embedder>> {
        if let Some(e) = lock(&self.embedder).clone() {
            return Ok(e);
        }
        let _one_load = self.loading.lock().await;
        if let Some(e) = lock(&self.embedder).clone() {
            return Ok(e);
        }
        if self.released.load(Ordering::SeqCst) {
            return Err(err!(Closed, "this Engine is closed; open a new one"));
        }
        if self.isolated.is_some() {
            return Err(CoreError::internal("isolation: 'process' loads the model in the isolated process, not here"));
        }
        let opts = self.config.embedder.clone();
        let passes = self.metrics.passes().clone();
        let loaded = tokio::task::spawn_blocking(move || Embedder::open_metered(opts, passes))
            .await
            .map_err(|e| CoreError::internal(format!("model loading task failed: {e}")))?;
        *lock(&self.model_error) = loaded.as_ref().err().map(|e| e.clone_flat().to_string());
        let embedder = loaded?;
        self.set_local_kind(&embedder);
        *lock(&self.embedder) = Some(embedder.clone());
        Ok(embedder)
    }

    fn set_local_kind(&self, embedder: &Embedder) {
        self.local_kind.store(RunBackend::of_model(embedder.backend_name()) as u8, Ordering::Relaxed);
    }

    /// What runs this engine's model: the isolated process, else the
    /// loaded model's backend (`cpu` before one loads). The `backend` label
    /// of calls that failed before routing.
    fn default_backend(&self) -> RunBackend {
        if self.isolated.is_some() {
            return RunBackend::Process;
        }
        match self.local_kind.load(Ordering::Relaxed) {
            1 => RunBackend::Cuda,
            _ => RunBackend::Cpu,
        }
    }

    /// The metrics report: counters and histograms so far, gauges now
    /// (docs/metrics.md). Cheap (atomic loads and short locks): safe on the
    /// JS thread. A closed engine reports its final counts.
    pub fn metrics(&self) -> MetricsReport {
        let embedder = lock(&self.embedder).clone();
        let status = embedder.as_ref().map(|e| e.backend_status());
        let isolated_depth = self
            .isolated
            .as_ref()
            .and_then(|iso| iso.health().health.as_ref().and_then(|r| r["queue"]["depth"].as_u64()));
        let depth = match (&embedder, isolated_depth) {
            (_, Some(d)) => d,
            (Some(e), None) => e.queue_stats().depth as u64,
            (None, None) => 0,
        };
        let gpu_memory_bytes = status
            .iter()
            .filter(|s| s.backend == "cuda")
            .map(|s| GpuMemory { device: s.device.unwrap_or(0).to_string(), bytes: s.memory_bytes })
            .collect();
        let worker = self
            .worker
            .get()
            .map(|w| w.health())
            .map_or(WorkerGauge::default(), |h| WorkerGauge { restarts: h.restarts, in_flight: h.in_flight as u64 });
        let named: Vec<(String, EngineIndex)> =
            lock(&self.indexes).iter().map(|(n, i)| (n.clone(), i.clone())).collect();
        let indexes = named
            .into_iter()
            .filter_map(|(name, index)| {
                index.info().ok().map(|info| IndexGauge { name, vectors: info.count as u64, bytes: info.bytes })
            })
            .collect();
        let gauges = Gauges {
            info: EngineInfo {
                version: crate::VERSION.to_string(),
                backend: self.default_backend().as_str(),
                model: embedder.as_ref().map(|e| e.model_name().to_string()),
            },
            queue: QueueGauge { depth, in_flight: self.admitted.load(Ordering::Acquire) as u64 },
            gpu_memory_bytes,
            worker,
            indexes,
        };
        self.metrics.report(gauges)
    }

    /// Count a call that failed before it reached the engine (the binding's
    /// argument conversion: a bad envelope is type `unknown`), so that
    /// `requests_total` counts every call.
    pub fn record_rejected(&self, call: CallType<'_>, issued: Option<Instant>, code: ErrorCode) {
        let elapsed = issued.map_or(Duration::ZERO, |t| t.elapsed());
        self.metrics.record(call, self.default_backend(), elapsed, Some(code));
    }

    /// Whether this engine has a local model for `target: 'auto'` (docs/grpc.md
    /// "Client"): one is loaded, or named (`options.model`,
    /// `CUDA_ENGINE_MODEL`), or it runs in the isolated process. The default
    /// locations are not searched for this: with a remote configured, an
    /// engine that was given no model sends `auto` calls to the remote.
    fn local_model_here(&self) -> bool {
        self.isolated.is_some()
            || self.config.embedder.model_dir.is_some()
            || crate::model::model_named_by_env()
            || lock(&self.embedder).is_some()
    }

    /// The remote an `embed` (or `embedding` job) with `target` goes to:
    /// `remote` → the configured remote (`E_INVALID_ARG` naming `target`
    /// without one); `auto` → the remote when one is configured and no local
    /// model is here; otherwise none.
    fn remote_for(&self, target: Target) -> Result<Option<Arc<RemoteClient>>> {
        match target {
            Target::Remote => self.remote_target().map(Some),
            Target::Auto if !self.local_model_here() => Ok(self.remote.clone()),
            _ => Ok(None),
        }
    }

    /// The remote of an explicit `target: 'remote'`.
    fn remote_target(&self) -> Result<Arc<RemoteClient>> {
        self.remote.clone().ok_or_else(|| {
            err!(InvalidArg, "`options.target` is 'remote' but this engine has no remote (EngineOptions.remote)")
        })
    }

    /// The remote client, if `EngineOptions.remote` configured one.
    pub fn remote(&self) -> Option<&Arc<RemoteClient>> {
        self.remote.as_ref()
    }

    /// The configured worker, or one found by discovery for an explicit
    /// `target: 'worker'` call (one-shot, the legacy protocol).
    async fn worker_for_explicit_target(&self) -> Result<Arc<Worker>> {
        self.worker
            .get_or_try_init(|| async {
                let cfg = WorkerConfig::new(&self.config.base_dir, WorkerMode::Oneshot);
                Worker::new(cfg).map(Arc::new)
            })
            .await
            .cloned()
    }

    /// Embed texts with the engine's model: admission, timeout, AbortSignal.
    pub async fn embed(&self, texts: Vec<String>, opts: EmbedOptions, call: CallOptions) -> Result<Vec<Vec<f32>>> {
        self.embed_with_progress(texts, opts, call, None).await
    }

    /// [`Engine::embed`], reporting (texts computed, texts) to `progress`
    /// after each forward pass of the local model (from the batcher thread;
    /// the remote and the isolated process report nothing until done).
    pub async fn embed_with_progress(
        &self,
        texts: Vec<String>,
        opts: EmbedOptions,
        call: CallOptions,
        progress: Option<Progress>,
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_in_slot(None, texts, opts, call, progress).await
    }

    /// [`Engine::embed_with_progress`] under an admission taken earlier with
    /// [`Engine::admit_owned`] (its refusal is this call's answer).
    pub async fn embed_admitted(
        &self,
        admission: Result<OwnedAdmission>,
        texts: Vec<String>,
        opts: EmbedOptions,
        call: CallOptions,
        progress: Option<Progress>,
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_in_slot(Some(admission), texts, opts, call, progress).await
    }

    async fn embed_in_slot(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        texts: Vec<String>,
        opts: EmbedOptions,
        call: CallOptions,
        progress: Option<Progress>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut timer = self.metrics.start(CallType::Embed, self.default_backend(), call.issued);
        let r = self.embed_routed(pre, texts, opts, call, progress, &mut timer).await;
        timer.finish(r.as_ref().err().map(|e| e.code));
        r
    }

    async fn embed_routed(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        texts: Vec<String>,
        opts: EmbedOptions,
        call: CallOptions,
        progress: Option<Progress>,
        timer: &mut CallTimer<'_>,
    ) -> Result<Vec<Vec<f32>>> {
        let _slot = self.slot(pre)?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let cancel = call.cancel.clone();
        if let Some(remote) = self.remote_for(call.target)? {
            // The client enforces the deadline (min of the call's and
            // remote.timeoutMs); the guard keeps the AbortSignal and close.
            timer.set_backend(RunBackend::Remote);
            let untimed = CallOptions { timeout: None, ..call.clone() };
            let (normalize, truncate) = (opts.normalize, opts.truncate);
            return self.guard(remote.embed(texts, normalize, truncate, call.timeout, cancel), &untimed).await;
        }
        if let Some(iso) = &self.isolated {
            // The isolated process's supervisor enforces the timeout (and
            // kills a process that went silent); the guard keeps the
            // AbortSignal and close's cancellation.
            timer.set_backend(RunBackend::Process);
            let untimed = CallOptions { timeout: None, ..call.clone() };
            return self.guard(iso.embed(texts, opts, call.timeout, cancel), &untimed).await;
        }
        let local = async {
            let embedder = self.embedder().await?;
            Ok(embedder.embed_with_progress(texts, opts, cancel, progress).await?.0)
        };
        let r = self.guard(local, &call).await;
        // The model may have loaded during the call.
        timer.set_backend(self.default_backend());
        r
    }

    /// Create a named vector index on this engine. `device: 'auto'` puts it
    /// where the model runs (on that GPU's executor) when the model is
    /// loaded, else on CUDA device 0 when there is one, else on the CPU.
    /// With `isolation: 'process'` the search copy is created in the
    /// isolated process (next to its model) and a CPU host copy here.
    pub async fn create_index(&self, name: &str, mut config: IndexConfig) -> Result<EngineIndex> {
        self.check_index_name(name)?;
        if let Some(iso) = &self.isolated {
            self.check_index_free(name)?;
            let index = IsolatedIndex::create(name, config, iso.clone(), self.index_chunk_bytes()).await?;
            return self.add_isolated(name, index);
        }
        let gpu = self.index_placement(&mut config.device);
        let index = tokio::task::spawn_blocking(move || VectorIndex::create(config, gpu))
            .await
            .map_err(|e| CoreError::internal(format!("index creation task failed: {e}")))??;
        self.add_index(name, index.clone())?;
        Ok(EngineIndex::Local(index))
    }

    /// Most bytes of rows in one request to the isolated process: its
    /// reader takes frames of `maxEnvelopeBytes` plus 1 MiB (so one row of
    /// at most ~18 KiB always fits beyond this).
    fn index_chunk_bytes(&self) -> usize {
        self.config.limits.max_envelope_bytes
    }

    /// The name is free and there is room for one more index (checked
    /// again when it is inserted).
    fn check_index_free(&self, name: &str) -> Result<()> {
        check_room(&lock(&self.indexes), name)
    }

    /// Insert under one lock: not after `close` has released the engine
    /// (it takes the map under this lock), not over a name taken meanwhile.
    fn insert_index(&self, name: &str, index: EngineIndex) -> Result<()> {
        let mut all = lock(&self.indexes);
        self.check_not_released()?;
        check_room(&all, name)?;
        all.insert(name.to_string(), index);
        Ok(())
    }

    /// Register an isolated index; when the name was taken meanwhile (or
    /// the engine closed), its isolated copy is dropped again.
    fn add_isolated(&self, name: &str, index: Arc<IsolatedIndex>) -> Result<EngineIndex> {
        let added =
            self.check_index_name(name).and_then(|()| self.insert_index(name, EngineIndex::Isolated(index.clone())));
        if let Err(e) = added {
            index.detach();
            return Err(e);
        }
        Ok(EngineIndex::Isolated(index))
    }

    /// The GPU executor an index of this engine should use, with `auto`
    /// resolved to the model's device (or the CPU when the engine's own
    /// device is the CPU).
    pub fn index_placement(&self, device: &mut DevicePreference) -> Option<GpuPlacement> {
        let embedder = lock(&self.embedder).clone();
        let tasks = embedder.and_then(|e| e.gpu_tasks());
        if *device == DevicePreference::Auto {
            if let Some(t) = &tasks {
                *device = DevicePreference::Cuda(Some(t.device()));
            } else if self.config.device == DevicePreference::Cpu {
                *device = DevicePreference::Cpu;
            }
        }
        tasks.map(GpuPlacement::Tasks)
    }

    /// Load an index file (docs/vector-search-format.md) as the index named
    /// `name`, placed as `create_index` places one. With `isolation:
    /// 'process'` the file is read here (the host copy) and its rows are
    /// copied into the isolated process.
    pub async fn load_index(&self, name: &str, path: PathBuf, mut device: DevicePreference) -> Result<EngineIndex> {
        self.check_index_name(name)?;
        // Before reading the file; checked again when it is inserted.
        self.check_index_free(name)?;
        if let Some(iso) = &self.isolated {
            let host = tokio::task::spawn_blocking(move || VectorIndex::load(&path, DevicePreference::Cpu, None))
                .await
                .map_err(|e| CoreError::internal(format!("index loading task failed: {e}")))??;
            let child = IndexConfig { device, ..host.config().clone() };
            let index = IsolatedIndex::from_host(name, host, child, iso.clone(), self.index_chunk_bytes()).await?;
            return self.add_isolated(name, index);
        }
        let gpu = self.index_placement(&mut device);
        let index = tokio::task::spawn_blocking(move || VectorIndex::load(&path, device, gpu))
            .await
            .map_err(|e| CoreError::internal(format!("index loading task failed: {e}")))??;
        self.add_index(name, index.clone())?;
        Ok(EngineIndex::Local(index))
    }

    fn check_index_name(&self, name: &str) -> Result<()> {
        if name.is_empty()
            || name.len() > 128
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(err!(
                InvalidArg,
                "`name` must be 1..=128 characters of A-Z, a-z, 0-9, '_', '.', '-', got {name:?}"
            ));
        }
        self.check_not_released()
    }

    /// `E_CLOSED` once `close` has released the engine's resources. Not
    /// `is_closed`: a `createIndex`/`loadIndex` admitted before `close()`
    /// (the binding admits it when it is made) is drained, and `close`
    /// takes the indexes only after the drain, so adding one until then is
    /// safe. Checked again under the index lock, which `close` takes the
    /// map under, so none is added after.
    fn check_not_released(&self) -> Result<()> {
        if self.released.load(Ordering::SeqCst) {
            return Err(err!(Closed, "this Engine is closed; open a new one"));
        }
        Ok(())
    }

    /// Register an index (e.g. one loaded from a file) under `name`. With
    /// `isolation: 'process'` it is searched here, not in the isolated
    /// process (use `create_index`/`load_index` for that).
    pub fn add_index(&self, name: &str, index: Arc<VectorIndex>) -> Result<()> {
        self.check_index_name(name)?;
        self.insert_index(name, EngineIndex::Local(index))
    }

    /// The index named `name`, if any.
    pub fn index(&self, name: &str) -> Option<EngineIndex> {
        lock(&self.indexes).get(name).cloned()
    }

    /// Forget the index named `name` (its memory goes when no caller holds
    /// it; an isolated copy is dropped in the background); true when there
    /// was one.
    pub fn drop_index(&self, name: &str) -> bool {
        let dropped = lock(&self.indexes).remove(name);
        if let Some(EngineIndex::Isolated(i)) = &dropped {
            i.detach();
        }
        dropped.is_some()
    }

    fn named_index(&self, name: &str) -> Result<EngineIndex> {
        self.index(name).ok_or_else(|| {
            let names: Vec<String> = lock(&self.indexes).keys().cloned().collect();
            err!(
                InvalidArg,
                "`index`: this engine has no vector index named {name:?} (it has: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )
        })
    }

    /// Search a named index with vectors, or with texts embedded by this
    /// engine's model first (the vectors never pass through JS).
    /// Admission, timeout and AbortSignal as for `embed`.
    pub async fn search(&self, req: SearchRequest, call: CallOptions) -> Result<Vec<SearchHits>> {
        self.search_in_slot(None, req, call).await
    }

    /// [`Engine::search`] under an admission taken earlier with
    /// [`Engine::admit_owned`] (its refusal is this call's answer).
    pub async fn search_admitted(
        &self,
        admission: Result<OwnedAdmission>,
        req: SearchRequest,
        call: CallOptions,
    ) -> Result<Vec<SearchHits>> {
        self.search_in_slot(Some(admission), req, call).await
    }

    async fn search_in_slot(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        req: SearchRequest,
        call: CallOptions,
    ) -> Result<Vec<SearchHits>> {
        let backend = self.index(&req.index).map_or(self.default_backend(), |i| i.run_backend());
        let timer = self.metrics.start(CallType::Search, backend, call.issued);
        let r = self.search_guarded(pre, req, call).await;
        timer.finish(r.as_ref().err().map(|e| e.code));
        r
    }

    async fn search_guarded(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        req: SearchRequest,
        call: CallOptions,
    ) -> Result<Vec<SearchHits>> {
        let _slot = self.slot(pre)?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let cancel = call.cancel.clone();
        self.guard(self.vector_search(req, cancel), &call).await
    }

    async fn vector_search(&self, req: SearchRequest, cancel: CancellationToken) -> Result<Vec<SearchHits>> {
        let index = self.named_index(&req.index)?;
        let dims = index.config().dims;
        let query = match (req.query, &index) {
            // The isolated process embeds the texts itself: no vectors cross
            // the pipe.
            (texts @ SearchQuery::Texts(_), EngineIndex::Isolated(_)) => texts,
            (SearchQuery::Texts(texts), EngineIndex::Local(_)) => {
                let embedder = self.embedder().await?;
                if embedder.info().dims != dims {
                    return Err(err!(
                        InvalidArg,
                        "`index` {:?} holds {dims}-dimensional vectors but the model embeds {}",
                        req.index,
                        embedder.info().dims
                    ));
                }
                let vectors = embedder.embed(texts, EmbedOptions::default(), cancel.clone()).await?;
                let count = vectors.len();
                SearchQuery::Vectors { values: vectors.concat(), count }
            }
            (vectors, _) => vectors,
        };
        index.search(query, req.k, req.namespace, cancel).await
    }

    /// How this engine runs its model: `in-process` or `process`.
    pub fn isolation(&self) -> Isolation {
        self.config.isolation.mode
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Count one call in flight, or refuse it: `E_CLOSED` once `close` has
    /// begun, `E_OVERLOADED` past `maxInFlight`. The count goes up before
    /// `closed` is read (both sequentially consistent, as are `close`'s
    /// store and its read of the count), so a call is either refused or
    /// seen, and waited for, by `close`.
    fn reserve(&self) -> Result<()> {
        let prev = self.admitted.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.release();
            return Err(err!(Closed, "this Engine is closed; open a new one"));
        }
        if prev >= self.config.max_in_flight {
            self.release();
            return Err(err!(
                Overloaded,
                "{prev} jobs are already in flight (EngineOptions.maxInFlight = {}); retry later",
                self.config.max_in_flight
            ));
        }
        Ok(())
    }

    /// Give a slot back, waking a draining `close` when it was the last.
    fn release(&self) {
        if self.admitted.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn admit(&self) -> Result<Admission<'_>> {
        self.reserve()?;
        Ok(Admission(self))
    }

    /// Admit a call now, before its future runs: `E_CLOSED` once `close`
    /// has begun (`stop_admitting`), `E_OVERLOADED` past `maxInFlight`.
    /// Hand the result to the `*_admitted` method that runs the call (which
    /// then admits nothing again). The binding calls this on the JS thread
    /// when the call is made, so that a call made before `close()` — in the
    /// same tick or earlier — is drained and one made after it is
    /// `E_CLOSED`, whenever the runtime first polls either.
    pub fn admit_owned(self: &Arc<Self>) -> Result<OwnedAdmission> {
        self.reserve()?;
        Ok(OwnedAdmission(self.clone()))
    }

    /// The slot of a call: the one taken with [`Engine::admit_owned`] when
    /// given (its refusal is the call's answer), else one taken now.
    fn slot(&self, pre: Option<Result<OwnedAdmission>>) -> Result<Slot<'_>> {
        match pre {
            None => self.admit().map(Slot::Here),
            Some(taken) => {
                let taken = taken?;
                if !std::ptr::eq(Arc::as_ptr(&taken.0), self) {
                    return Err(CoreError::internal("a call was admitted by another engine than the one running it"));
                }
                Ok(Slot::Taken(taken))
            }
        }
    }

    /// Run `fut` under the call's timeout and AbortSignal and the engine's
    /// shutdown (a `close` whose drain time ran out cancels it).
    ///
    /// `fut` is polled first: a job that finishes on its first poll (echo,
    /// small decodes) never registers with the shared shutdown token, whose
    /// waiter list is a lock every concurrent call would otherwise take.
    async fn guard<T>(&self, fut: impl std::future::Future<Output = Result<T>>, call: &CallOptions) -> Result<T> {
        tokio::select! {
            biased;
            r = with_deadline(fut, call, ErrorCode::Timeout) => r,
            _ = self.shutdown.cancelled() => Err(err!(Cancelled, "the engine was closed before this call finished (its drain time ran out)")),
        }
    }

    /// Decode an envelope and run its job, honouring the call's timeout,
    /// AbortSignal and target.
    pub async fn submit(&self, input: EnvelopeInput, call: CallOptions) -> Result<JobResult> {
        self.submit_in_slot(None, input, call).await
    }

    /// [`Engine::submit`] under an admission taken earlier with
    /// [`Engine::admit_owned`] (its refusal is this call's answer).
    pub async fn submit_admitted(
        &self,
        admission: Result<OwnedAdmission>,
        input: EnvelopeInput,
        call: CallOptions,
    ) -> Result<JobResult> {
        self.submit_in_slot(Some(admission), input, call).await
    }

    async fn submit_in_slot(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        input: EnvelopeInput,
        call: CallOptions,
    ) -> Result<JobResult> {
        let mut timer = self.metrics.start(CallType::Unknown, self.default_backend(), call.issued);
        let r = self.submit_routed(pre, input, call, &mut timer).await;
        timer.finish(r.as_ref().err().map(|e| e.code));
        r
    }

    async fn submit_routed(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        input: EnvelopeInput,
        call: CallOptions,
        timer: &mut CallTimer<'_>,
    ) -> Result<JobResult> {
        let _slot = self.slot(pre)?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let start = Instant::now();
        let issued = call.issued.unwrap_or(start);
        let envelope = self.guard(self.decode(input), &call).await?;
        let decode_ms = ms(start.elapsed());
        let job = JobType::parse(&envelope.job_type);
        timer.set_type(CallType::Job(&job));
        let route = self.route(&job, &envelope.payload, call.target).await?;
        timer.set_backend(match &route {
            Route::Local => self.default_backend(),
            Route::Worker(_) => RunBackend::Worker,
            Route::Isolated => RunBackend::Process,
            Route::Remote(_) => RunBackend::Remote,
        });
        let mut result = match route {
            Route::Local => {
                let local = self.guard(self.run_local(job, envelope, &call), &call).await?;
                // What ran it: echo on the CPU, an index on its device.
                timer.set_backend(local.backend.into());
                local
            }
            Route::Worker(worker) => {
                // The worker enforces the timeout itself (E_WORKER_TIMEOUT)
                // and kills its process group; give it what is left.
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                let untimed = CallOptions { timeout: None, ..call.clone() };
                self.guard(worker.run(&envelope, remaining, call.cancel.clone()), &untimed).await?
            }
            Route::Isolated => {
                let iso = self.isolated.as_ref().ok_or_else(|| CoreError::internal("no isolated process"))?;
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                let untimed = CallOptions { timeout: None, ..call.clone() };
                self.guard(iso.run(&envelope, remaining, call.cancel.clone()), &untimed).await?
            }
            Route::Remote(remote) => {
                // The client enforces what is left of the timeout (E_TIMEOUT).
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                let untimed = CallOptions { timeout: None, ..call.clone() };
                self.guard(run_remote(&remote, job, envelope, remaining, call.cancel.clone()), &untimed).await?
            }
        };
        // Waiting before the engine picked the call up counts as queueing
        // (runtime scheduling, admission), plus any wait inside the job
        // (the batching queue for embeddings).
        result.timings.queue += ms(start.saturating_duration_since(issued));
        result.timings.decode = decode_ms;
        result.timings.total = ms(issued.elapsed());
        Ok(result)
    }

    async fn decode(&self, input: EnvelopeInput) -> Result<Envelope> {
        let limits = self.config.limits;
        if input.approx_len() > INLINE_DECODE_BYTES {
            tokio::task::spawn_blocking(move || input.decode(&limits))
                .await
                .map_err(|e| CoreError::internal(format!("envelope decoding task failed: {e}")))?
        } else {
            input.decode(&limits)
        }
    }

    async fn route(&self, job: &JobType, payload: &Payload, target: Target) -> Result<Route> {
        if target == Target::Worker {
            return Ok(Route::Worker(self.worker_for_explicit_target().await?));
        }
        if target == Target::Remote {
            return match (job, payload) {
                (JobType::Embedding, _) | (JobType::Inference, Payload::Json(_)) => {
                    Ok(Route::Remote(self.remote_target()?))
                }
                _ => Err(err!(
                    InvalidArg,
                    "`options.target` 'remote' runs `embedding` and (JSON) `inference` jobs only, not `{}`",
                    job.canonical()
                )),
            };
        }
        if *job == JobType::Embedding {
            if let Some(remote) = self.remote_for(target)? {
                return Ok(Route::Remote(remote));
            }
        }
        // Isolated: what would run here runs in the isolated process.
        if self.isolated.is_some() {
            match (job, payload) {
                (JobType::Echo | JobType::Embedding, _) | (JobType::Inference, Payload::Json(_)) => {
                    return Ok(Route::Isolated)
                }
                _ => {}
            }
        }
        // Inference runs here when the payload names this engine's model (or
        // none); raw-byte payloads can only be for a worker (below).
        if let (JobType::Inference, Payload::Json(p)) = (job, payload) {
            return self.route_inference(infer::requested_model(p), target).await;
        }
        // A worker counts as configured when EngineOptions.worker named one
        // or CUDA_WORKER_PATH is set (the shared discovery rule 1).
        let configured = match self.worker.get() {
            Some(w) => Some(w.clone()),
            // Only for `auto`: `local` never leaves the process (the
            // cuda-worker binary submits with `local`, so a worker that
            // inherited CUDA_WORKER_PATH never spawns another worker).
            None if target == Target::Auto
                && env_names_worker()
                && matches!(job, JobType::Inference | JobType::Other(_)) =>
            {
                Some(self.worker_for_explicit_target().await?)
            }
            None => None,
        };
        match (job, configured) {
            (JobType::Echo | JobType::Embedding | JobType::VectorSearch, _) => Ok(Route::Local),
            (JobType::Inference | JobType::Other(_), Some(worker)) if target == Target::Auto => Ok(Route::Worker(worker)),
            (JobType::Inference, _) => Err(err!(
                InvalidArg,
                "an `inference` payload must be a JSON request to run here (got raw bytes) and no worker is configured (EngineOptions.worker)"
            )),
            (JobType::Other(name), _) => Err(err!(
                UnknownType,
                "unknown job type `{name}` (known: echo, embedding, inference); configure EngineOptions.worker to run other types"
            )),
        }
    }

    async fn run_local(&self, job: JobType, envelope: Envelope, call: &CallOptions) -> Result<JobResult> {
        let started = Instant::now();
        let mut queued = Duration::ZERO;
        let (output, encoding, backend) = match job {
            JobType::Echo => {
                let output = match envelope.payload {
                    Payload::Json(v) => JobOutput::Json(v),
                    Payload::Bytes(b) => JobOutput::Bytes(b),
                };
                (output, envelope.encoding.as_str(), BackendKind::Cpu)
            }
            JobType::Embedding => {
                let (texts, opts) = embedding_request(envelope.payload)?;
                let embedder = self.embedder().await?;
                let (vectors, waited) = embedder.embed_timed(texts, opts, call.cancel.clone()).await?;
                queued = waited;
                let info = embedder.info();
                let backend = if info.backend == "cuda" { BackendKind::Cuda } else { BackendKind::Cpu };
                let result = serde_json::json!({ "model": info.name, "dims": info.dims, "embeddings": vectors });
                (JobOutput::Json(result), "json", backend)
            }
            JobType::Inference => {
                let Payload::Json(payload) = envelope.payload else {
                    return Err(CoreError::internal("route() sent a raw-byte inference payload to run_local"));
                };
                let embedder = self.embedder().await?;
                let backend = if embedder.info().backend == "cuda" { BackendKind::Cuda } else { BackendKind::Cpu };
                // No `inputs`: a metadata query (docs/infer.md).
                let output = if infer::is_metadata_query(&payload) {
                    let meta = infer::model_metadata(&embedder).to_json();
                    match infer::requested_model(&payload) {
                        Some(_) => meta,
                        None => serde_json::json!({ "models": [meta] }),
                    }
                } else {
                    let mut req = InferRequest::from_json(&payload)?;
                    if req.id.is_none() {
                        req.id = envelope.id.clone();
                    }
                    infer::run(&embedder, req, call.cancel.clone()).await?.to_json()
                };
                (JobOutput::Json(output), "json", backend)
            }
            JobType::VectorSearch => {
                let Payload::Json(payload) = envelope.payload else {
                    return Err(err!(InvalidArg, "a vector_search payload must be JSON, not raw bytes"));
                };
                let req = SearchRequest::from_json(&payload, self.config.embedder.max_texts_per_call)?;
                let (index, k) = (req.index.clone(), req.k);
                let named = self.named_index(&index)?;
                let hits = self.vector_search(req, call.cancel.clone()).await?;
                let backend = named.backend();
                (JobOutput::Json(results_to_json(&index, k, &hits)), "json", backend)
            }
            JobType::Other(_) => {
                return Err(CoreError::internal("route() sent a job without a local runner to run_local"))
            }
        };
        Ok(JobResult {
            id: envelope.id,
            job_type: job.canonical().to_string(),
            backend,
            output,
            encoding,
            timings: Timings {
                queue: ms(queued),
                run: ms(started.elapsed().saturating_sub(queued)),
                ..Timings::default()
            },
        })
    }

    /// Open Inference Protocol inference (docs/infer.md): runs on this
    /// engine's model when `req.model_name` names it (or is absent), else on
    /// the worker when one is configured and `call.target` allows it, else
    /// `E_UNKNOWN_MODEL`. Admission, timeout and AbortSignal as for `embed`.
    pub async fn infer(&self, req: InferRequest, call: CallOptions) -> Result<InferResponse> {
        self.infer_in_slot(None, req, call).await
    }

    /// [`Engine::infer`] under an admission taken earlier with
    /// [`Engine::admit_owned`] (its refusal is this call's answer).
    pub async fn infer_admitted(
        &self,
        admission: Result<OwnedAdmission>,
        req: InferRequest,
        call: CallOptions,
    ) -> Result<InferResponse> {
        self.infer_in_slot(Some(admission), req, call).await
    }

    async fn infer_in_slot(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        req: InferRequest,
        call: CallOptions,
    ) -> Result<InferResponse> {
        let mut timer = self.metrics.start(CallType::Infer, self.default_backend(), call.issued);
        let r = self.infer_routed(pre, req, call, &mut timer).await;
        timer.finish(r.as_ref().err().map(|e| e.code));
        r
    }

    async fn infer_routed(
        &self,
        pre: Option<Result<OwnedAdmission>>,
        req: InferRequest,
        call: CallOptions,
        timer: &mut CallTimer<'_>,
    ) -> Result<InferResponse> {
        let _slot = self.slot(pre)?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let start = Instant::now();
        let route = match (&self.isolated, call.target) {
            (_, Target::Remote) => Route::Remote(self.remote_target()?),
            (Some(_), Target::Auto | Target::Local) => Route::Isolated,
            _ => self.guard(self.route_inference(req.model_name.as_deref(), call.target), &call).await?,
        };
        timer.set_backend(match &route {
            Route::Local => self.default_backend(),
            Route::Worker(_) => RunBackend::Worker,
            Route::Isolated => RunBackend::Process,
            Route::Remote(_) => RunBackend::Remote,
        });
        match route {
            Route::Local => {
                // The deadline counts from the call, not from here (routing
                // may have loaded the model).
                let rest = CallOptions {
                    timeout: call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1))),
                    ..call.clone()
                };
                let cancel = call.cancel.clone();
                self.guard(async { infer::run(&self.embedder().await?, req, cancel).await }, &rest).await
            }
            Route::Worker(worker) => {
                let envelope = Envelope {
                    id: req.id.clone(),
                    job_type: "inference".into(),
                    payload: Payload::Json(req.to_json()),
                    encoding: Encoding::Json,
                };
                // As in submit: the worker enforces what is left of the timeout.
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                let untimed = CallOptions { timeout: None, ..call.clone() };
                match self.guard(worker.run(&envelope, remaining, call.cancel.clone()), &untimed).await?.output {
                    JobOutput::Json(v) => InferResponse::from_json(&v),
                    JobOutput::Bytes(b) => Err(err!(
                        WorkerProtocol,
                        "the worker answered an inference with {} raw bytes, not a JSON response",
                        b.len()
                    )),
                }
            }
            Route::Isolated => {
                let iso = self.isolated.as_ref().ok_or_else(|| CoreError::internal("no isolated process"))?;
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                let untimed = CallOptions { timeout: None, ..call.clone() };
                self.guard(iso.infer(&req, remaining, call.cancel.clone()), &untimed).await
            }
            Route::Remote(remote) => {
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                let untimed = CallOptions { timeout: None, ..call.clone() };
                self.guard(remote.infer(req, remaining, call.cancel.clone()), &untimed).await
            }
        }
    }

    /// Metadata of the models served here (the engine's encoder), in the
    /// Open Inference Protocol's shape. Loads the model on first use.
    pub async fn models(&self) -> Result<Vec<ModelMetadata>> {
        self.models_in_slot(None).await
    }

    /// [`Engine::models`] under an admission taken earlier with
    /// [`Engine::admit_owned`]. Only the isolated process's query runs under
    /// it (and is drained by `close`); in-process the admission is given
    /// back at once, as [`Engine::models`] takes none there.
    pub async fn models_admitted(&self, admission: Result<OwnedAdmission>) -> Result<Vec<ModelMetadata>> {
        self.models_in_slot(Some(admission)).await
    }

    async fn models_in_slot(&self, pre: Option<Result<OwnedAdmission>>) -> Result<Vec<ModelMetadata>> {
        if let Some(iso) = &self.isolated {
            let _slot = self.slot(pre)?;
            // A metadata query (an inference payload without `inputs`).
            let envelope = Envelope {
                id: None,
                job_type: "inference".into(),
                payload: Payload::Json(serde_json::json!({})),
                encoding: Encoding::Json,
            };
            let call = CallOptions::default();
            let out = self.guard(iso.run(&envelope, None, CancellationToken::new()), &call).await?.output;
            let models = match out {
                JobOutput::Json(mut v) => v.get_mut("models").map(Value::take),
                JobOutput::Bytes(_) => None,
            };
            return models
                .and_then(|m| serde_json::from_value::<Vec<ModelMetadata>>(m).ok())
                .ok_or_else(|| err!(WorkerProtocol, "the isolated process's model metadata is malformed"));
        }
        drop(pre);
        Ok(vec![infer::model_metadata(&*self.embedder().await?)])
    }

    /// Ask the isolated process for its own health report (at most
    /// [`crate::isolation::HEALTH_TIMEOUT`]), so that the next
    /// [`Engine::health`] includes it. No-op in-process.
    pub async fn refresh_health(&self) {
        if let Some(iso) = &self.isolated {
            iso.refresh_health(crate::isolation::HEALTH_TIMEOUT).await;
        }
        if let Some(remote) = &self.remote {
            remote.refresh_health().await;
        }
    }

    /// Where an inference for `model` runs: see [`Engine::infer`]. A local
    /// model that fails to load routes to a configured worker, else its load
    /// error is the answer.
    async fn route_inference(&self, model: Option<&str>, target: Target) -> Result<Route> {
        match target {
            Target::Worker => return Ok(Route::Worker(self.worker_for_explicit_target().await?)),
            Target::Remote => return Ok(Route::Remote(self.remote_target()?)),
            Target::Auto | Target::Local => {}
        }
        // `auto`: the local model when it is here and serves `model`, else
        // the remote, else the worker.
        let remote = if target == Target::Auto { self.remote.clone() } else { None };
        if let (Some(r), false) = (&remote, self.local_model_here()) {
            return Ok(Route::Remote(r.clone()));
        }
        let local = self.embedder().await;
        if let (Some(r), false) = (&remote, local.as_ref().is_ok_and(|e| model.is_none_or(|m| m == e.info().name))) {
            return Ok(Route::Remote(r.clone()));
        }
        let worker = match (target, self.worker.get()) {
            (Target::Auto, Some(w)) => Some(w.clone()),
            (Target::Auto, None) if env_names_worker() => Some(self.worker_for_explicit_target().await?),
            _ => None,
        };
        match (local, worker) {
            (Ok(e), _) if model.is_none_or(|m| m == e.info().name) => Ok(Route::Local),
            (_, Some(w)) => Ok(Route::Worker(w)),
            (Ok(e), None) => Err(err!(
                UnknownModel,
                "model `{}` is not served here (this engine serves `{}`) and no worker is configured (EngineOptions.worker){}",
                model.unwrap_or_default(),
                e.info().name,
                if target == Target::Local { "; target is 'local'" } else { "" }
            )),
            (Err(e), None) => Err(e),
        }
    }

    /// The health report. Blocking on first use (probes CUDA).
    ///
    /// `status` (docs/design.md "Health"): `error` when the engine is closed
    /// or a sticky CUDA fault poisoned the backend; `degraded` when something
    /// asked for or present failed — a GPU the driver reports that did not
    /// start, a model that failed to load, a persistent worker that is down;
    /// otherwise `ok`, also on a CPU-only host that chose the CPU (why CUDA is
    /// not used stays in `errors`), so readiness probes can use it.
    pub fn health(&self) -> Health {
        let probe = crate::device::probe();
        let mut errors = Vec::new();
        let mut status = Status::Ok;
        let degrade = |status: &mut Status| {
            if *status == Status::Ok {
                *status = Status::Degraded;
            }
        };
        if let Some(reason) = &probe.reason {
            errors.push(format!("cuda: {reason}"));
            if probe.present {
                degrade(&mut status);
            }
        }
        if let Some(e) = lock(&self.model_error).clone() {
            degrade(&mut status);
            errors.push(format!("model: {e}"));
        }
        let embedder = lock(&self.embedder).clone();
        let backend_status = embedder.as_ref().map(|e| e.backend_status());
        if let Some(note) = embedder.as_ref().and_then(|e| e.backend_note()) {
            // `auto` fell back to the CPU: only a failure when a GPU is there.
            if probe.present {
                degrade(&mut status);
            }
            errors.push(format!("device: {note}"));
        }
        if let Some(fault) = backend_status.as_ref().and_then(|b| b.fault.clone()) {
            status = Status::Error;
            errors.push(format!("cuda: {fault}"));
        }
        let denv = DiscoveryEnv::from_process();
        let cuda_path =
            discovery::candidates(&self.config.base_dir, &denv).iter().map(|p| p.display().to_string()).collect();
        let worker = match self.worker.get() {
            Some(w) => {
                let h = w.health();
                if h.mode == WorkerMode::Persistent && !h.running && h.restarts > 0 {
                    degrade(&mut status);
                    errors.push(format!("worker: no persistent worker is running ({} restarts so far)", h.restarts));
                }
                WorkerStatus::from(h)
            }
            // No worker yet: show what discovery would use.
            None => WorkerStatus::discovered(discovery::find_worker(&self.config.base_dir, &denv).ok()),
        };
        let isolation = match &self.isolated {
            Some(iso) => {
                let h = iso.health();
                if !h.running && h.restarts > 0 {
                    degrade(&mut status);
                    errors.push(format!("isolation: the isolated process is down ({} restarts so far)", h.restarts));
                }
                if let Some(report) = &h.health {
                    if report.get("status").and_then(Value::as_str).is_some_and(|s| s != "ok") {
                        degrade(&mut status);
                    }
                    for e in report.get("errors").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(e) = e.as_str() {
                            errors.push(format!("isolated: {e}"));
                        }
                    }
                }
                h
            }
            None => IsolationHealth::in_process(),
        };
        if self.is_closed() {
            status = Status::Error;
            errors.push("engine: closed".into());
        }
        let remote = self.remote.as_ref().map(|r| r.health());
        for ep in remote.iter().flat_map(|r| &r.endpoints) {
            if ep.ready == Some(false) {
                degrade(&mut status);
                errors.push(format!("remote: {}: {}", ep.url, ep.error.as_deref().unwrap_or("not ready")));
            }
        }
        let isolated_report = isolation.health.as_ref();
        let named: Vec<(String, EngineIndex)> =
            lock(&self.indexes).iter().map(|(n, i)| (n.clone(), i.clone())).collect();
        let mut indexes = Vec::with_capacity(named.len());
        for (name, index) in named {
            match index.info() {
                Ok(info) => indexes.push(IndexHealth { name, info }),
                Err(e) => errors.push(format!("index {name}: {e}")),
            }
        }
        Health {
            indexes,
            status,
            version: crate::VERSION,
            cuda_available: probe.available,
            backend: match (&embedder, &self.isolated) {
                (_, Some(iso)) => iso.backend().unwrap_or(BackendKind::Cpu),
                (Some(e), None) if e.info().backend == "cuda" => BackendKind::Cuda,
                _ => BackendKind::Cpu,
            },
            cuda_path,
            worker,
            devices: probe.devices_now(),
            model: match isolated_report {
                Some(r) => r.get("model").and_then(|m| serde_json::from_value(m.clone()).ok()),
                None => embedder.as_ref().map(|e| e.info()),
            },
            compute: backend_status,
            queue: QueueHealth {
                depth: match isolated_report {
                    Some(r) => r["queue"]["depth"].as_u64().unwrap_or(0) as usize,
                    None => embedder.as_ref().map_or(0, |e| e.queue_stats().depth),
                },
                in_flight: self.admitted.load(Ordering::Acquire),
            },
            isolation,
            remote,
            errors,
        }
    }

    /// Stop admitting calls (new ones get `E_CLOSED`), wait up to `drain`
    /// for the admitted ones, cancel what is still running (`E_CANCELLED`),
    /// stop the worker and drop the model. Idempotent; concurrent closes all
    /// return once the engine is shut.
    pub async fn close(&self, drain: Duration) {
        self.stop_admitting();
        if !self.wait_idle(drain).await {
            self.shutdown.cancel();
            self.wait_idle(CANCEL_GRACE).await;
        }
        if let Some(worker) = self.worker.get() {
            worker.shutdown().await;
        }
        if let Some(iso) = &self.isolated {
            iso.shutdown().await;
        }
        // The model's memory (weights, GPU workspaces) goes once no call
        // holds the embedder any more. A load under way finishes first;
        // none starts after this.
        self.released.store(true, Ordering::SeqCst);
        let _serialized = self.loading.lock().await;
        let model = lock(&self.embedder).take();
        drop(model);
        std::mem::take(&mut *lock(&self.indexes));
        crate::backend::release_freed_memory();
    }

    /// The first step of `close`, synchronous: from now on every call is
    /// `E_CLOSED`. The binding calls it on the JS thread so that a call made
    /// right after `engine.close()` returns is already refused.
    pub fn stop_admitting(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Wait until no call is admitted, at most `limit`; true when idle.
    async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a call finishing in between
            // still wakes us.
            notified.as_mut().enable();
            if self.admitted.load(Ordering::SeqCst) == 0 {
                return true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut deadline => return self.admitted.load(Ordering::SeqCst) == 0,
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// `E_INVALID_ARG` when `name` is taken, `E_TOO_LARGE` when the engine
/// holds [`MAX_INDEXES`] already.
fn check_room(all: &std::collections::BTreeMap<String, EngineIndex>, name: &str) -> Result<()> {
    if all.contains_key(name) {
        return Err(err!(InvalidArg, "`name`: this engine already has an index named {name:?}"));
    }
    if all.len() >= MAX_INDEXES {
        return Err(err!(TooLarge, "an engine holds at most {MAX_INDEXES} named indexes"));
    }
    Ok(())
}

fn env_names_worker() -> bool {
    std::env::var_os("CUDA_WORKER_PATH").is_some_and(|v| !v.is_empty())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run `fut` unless the call is cancelled or its timeout passes first.
/// Dropping `fut` on cancellation is what stops the work: every job future
/// must clean up (kill processes, skip queued batches) when dropped.
pub async fn with_deadline<T>(
    fut: impl std::future::Future<Output = Result<T>>,
    call: &CallOptions,
    timeout_code: ErrorCode,
) -> Result<T> {
    let timeout = async {
        match call.timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = call.cancel.cancelled() => Err(CoreError::cancelled()),
        _ = timeout => Err(CoreError::new(
            timeout_code,
            format!("the call did not finish within timeoutMs = {}", call.timeout.map_or(0, |d| d.as_millis())),
        )),
        r = fut => r,
    }
}

/// Run an `embedding` or JSON `inference` job on the remote: the result
/// has the local shapes (`{ model, dims, embeddings }`; the protocol's
/// response), `backend: 'remote'`. A metadata query (an inference payload
/// without `inputs`) asks the remote's `ModelMetadata`.
async fn run_remote(
    remote: &RemoteClient,
    job: JobType,
    envelope: Envelope,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) -> Result<JobResult> {
    let started = Instant::now();
    let output = match (&job, envelope.payload) {
        (JobType::Embedding, payload) => {
            let (texts, opts) = embedding_request(payload)?;
            let vectors = remote.embed(texts, opts.normalize, opts.truncate, timeout, cancel).await?;
            let dims = vectors.first().map_or(0, Vec::len);
            serde_json::json!({ "model": remote.config().model, "dims": dims, "embeddings": vectors })
        }
        (JobType::Inference, Payload::Json(payload)) if infer::is_metadata_query(&payload) => {
            let meta = remote.model_metadata(infer::requested_model(&payload), timeout, cancel).await?.to_json();
            match infer::requested_model(&payload) {
                Some(_) => meta,
                None => serde_json::json!({ "models": [meta] }),
            }
        }
        (JobType::Inference, Payload::Json(payload)) => {
            let mut req = InferRequest::from_json(&payload)?;
            if req.id.is_none() {
                req.id = envelope.id.clone();
            }
            remote.infer(req, timeout, cancel).await?.to_json()
        }
        _ => return Err(CoreError::internal("route() sent a job the remote cannot run to run_remote")),
    };
    Ok(JobResult {
        id: envelope.id,
        job_type: job.canonical().to_string(),
        backend: BackendKind::Remote,
        output: JobOutput::Json(output),
        encoding: "json",
        timings: Timings { run: ms(started.elapsed()), ..Timings::default() },
    })
}

/// Read an `embedding` job's payload: `{text}` or `{texts}`, with optional
/// `normalize` and `truncate`.
pub fn embedding_request(payload: Payload) -> Result<(Vec<String>, EmbedOptions)> {
    let Payload::Json(Value::Object(mut obj)) = payload else {
        return Err(err!(InvalidArg, "an `embedding` payload must be a JSON object {{text}} or {{texts}}"));
    };
    let texts = match (obj.remove("text"), obj.remove("texts")) {
        (Some(_), Some(_)) => return Err(err!(InvalidArg, "`payload` has both `text` and `texts`: send one")),
        (Some(Value::String(t)), None) => vec![t],
        (Some(other), None) => return Err(err!(InvalidArg, "`payload.text` must be a string, got {other}")),
        (None, Some(Value::Array(items))) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(err!(InvalidArg, "`payload.texts[{i}]` must be a string, got {other}")),
            })
            .collect::<Result<Vec<_>>>()?,
        (None, Some(other)) => {
            return Err(err!(InvalidArg, "`payload.texts` must be an array of strings, got {other}"))
        }
        (None, None) => return Err(err!(InvalidArg, "an `embedding` payload needs `text` or `texts`")),
    };
    let mut opts = EmbedOptions::default();
    match obj.remove("normalize") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => opts.normalize = Some(b),
        Some(other) => return Err(err!(InvalidArg, "`payload.normalize` must be a boolean, got {other}")),
    }
    match obj.remove("truncate") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => opts.truncate = b,
        Some(other) => return Err(err!(InvalidArg, "`payload.truncate` must be a boolean, got {other}")),
    }
    Ok((texts, opts))
}
