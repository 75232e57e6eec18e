//! The engine handle: options, admission, `submit` routing with timeouts and
//! cancellation, `health`. The N-API layer and the `cuda-worker` binary both
//! drive the engine through this type.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::discovery::{self, DiscoveryEnv};
use crate::envelope::{self, Encoding, Envelope, Limits, Payload, RawEnvelope};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::health::{Health, QueueHealth, Status};
use crate::infer::{self, InferRequest, InferResponse, ModelMetadata};
use crate::jobs::{BackendKind, JobOutput, JobResult, JobType, Target, Timings};
use crate::model::{EmbedOptions, Embedder, EmbedderOptions};
use crate::worker::{Worker, WorkerConfig, WorkerMode};

/// Envelopes bigger than this are decoded on a blocking thread so a 64 MiB
/// base64 payload never stalls the async workers.
const INLINE_DECODE_BYTES: usize = 1 << 20;

/// Which device local compute should use (`EngineOptions.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePreference {
    /// CUDA when a device initialises, else the CPU (health says why).
    #[default]
    Auto,
    Cpu,
    /// CUDA or fail with `E_CUDA_UNAVAILABLE`; `Some(i)` pins device `i`.
    Cuda(Option<usize>),
}

/// Engine options, read from the JS `EngineOptions` object (camelCase).
/// Sections owned by other modules (`worker`, model options) are kept as
/// JSON and parsed by those modules.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub limits: Limits,
    /// Most jobs admitted at once (queued or running) before `E_OVERLOADED`.
    pub max_in_flight: usize,
    pub device: DevicePreference,
    /// Base directory for worker discovery and relative paths (default: cwd).
    pub base_dir: PathBuf,
    /// `EngineOptions.worker`, as given (string path or object), if any.
    pub worker: Option<Value>,
    /// The whole options object, for sections parsed elsewhere (model, dtype).
    pub raw: Value,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            limits: Limits::default(),
            max_in_flight: 65_536,
            device: DevicePreference::Auto,
            base_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            worker: None,
            raw: Value::Object(Default::default()),
        }
    }
}

fn opt_usize(obj: &serde_json::Map<String, Value>, key: &str, min: u64) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= min => Ok(Some(n as usize)),
            _ => Err(err!(InvalidArg, "`options.{key}` must be an integer >= {min}, got {v}")),
        },
    }
}

impl EngineOptions {
    pub fn from_json(value: &Value) -> Result<EngineOptions> {
        let mut opts = EngineOptions::default();
        let obj = match value {
            Value::Null => return Ok(opts),
            Value::Object(obj) => obj,
            other => return Err(err!(InvalidArg, "`options` must be an object, got {other}")),
        };
        opts.raw = value.clone();
        if let Some(n) = opt_usize(obj, "maxEnvelopeBytes", 1)? {
            opts.limits.max_envelope_bytes = n;
        }
        if let Some(n) = opt_usize(obj, "maxJsonDepth", 1)? {
            opts.limits.max_json_depth = n;
        }
        if let Some(n) = opt_usize(obj, "maxInFlight", 1)? {
            opts.max_in_flight = n;
        }
        opts.device = match obj.get("device") {
            None | Some(Value::Null) => DevicePreference::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => DevicePreference::Auto,
                "cpu" => DevicePreference::Cpu,
                "cuda" => DevicePreference::Cuda(None),
                other => {
                    return Err(err!(
                        InvalidArg,
                        "`options.device` must be 'auto', 'cuda', 'cpu' or a device index, got {other:?}"
                    ))
                }
            },
            Some(Value::Number(n)) if n.as_u64().is_some() => DevicePreference::Cuda(n.as_u64().map(|i| i as usize)),
            Some(other) => {
                return Err(err!(
                    InvalidArg,
                    "`options.device` must be 'auto', 'cuda', 'cpu' or a device index, got {other}"
                ))
            }
        };
        match obj.get("baseDir") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => opts.base_dir = PathBuf::from(s),
            Some(other) => return Err(err!(InvalidArg, "`options.baseDir` must be a string, got {other}")),
        }
        opts.worker = obj.get("worker").filter(|v| !v.is_null()).cloned();
        Ok(opts)
    }
}

/// Per-call options (`CallOptions` in JS).
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
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
pub struct Engine {
    options: EngineOptions,
    admitted: AtomicUsize,
    closed: AtomicBool,
    embedder_options: EmbedderOptions,
    /// Loaded on first use (or at open when `options.model` is given).
    embedder: tokio::sync::OnceCell<Arc<Embedder>>,
    /// Why the last model load failed (health reports it).
    model_error: std::sync::Mutex<Option<String>>,
    /// The external worker: created at open when `options.worker` is set,
    /// or on the first `target: 'worker'` call through discovery.
    worker: tokio::sync::OnceCell<Arc<Worker>>,
}

/// Where a decoded job runs.
enum Route {
    Local,
    Worker(Arc<Worker>),
}

/// Holds one admission slot; released on drop (also when a call is cancelled).
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Engine {
    /// Open an engine. Blocking (later: loads the model); call it from a
    /// blocking thread.
    pub fn open(options: EngineOptions) -> Result<Arc<Engine>> {
        if let DevicePreference::Cuda(index) = options.device {
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
        let embedder_options = EmbedderOptions::from_json(&options.raw)?;
        let worker = tokio::sync::OnceCell::new();
        if let Some(spec) = &options.worker {
            let cfg = WorkerConfig::from_json(spec, &options.base_dir)?;
            let _ = worker.set(Arc::new(Worker::new(cfg)?));
        }
        let engine = Engine {
            options,
            admitted: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            embedder_options,
            embedder: tokio::sync::OnceCell::new(),
            model_error: std::sync::Mutex::new(None),
            worker,
        };
        // An explicitly named model is loaded now so a bad path fails `open`.
        if engine.embedder_options.model_dir.is_some() {
            let embedder = Embedder::open(engine.embedder_options.clone())?;
            let _ = engine.embedder.set(embedder);
        }
        Ok(Arc::new(engine))
    }

    /// The embedding model, loaded on first use (on a blocking thread).
    pub async fn embedder(&self) -> Result<Arc<Embedder>> {
        let loaded = self
            .embedder
            .get_or_try_init(|| async {
                let opts = self.embedder_options.clone();
                tokio::task::spawn_blocking(move || Embedder::open(opts))
                    .await
                    .map_err(|e| CoreError::internal(format!("model loading task failed: {e}")))?
            })
            .await;
        if let Ok(mut last) = self.model_error.lock() {
            *last = loaded.as_ref().err().map(|e| e.clone_flat().to_string());
        }
        loaded.cloned()
    }

    /// The configured worker, or one found by discovery for an explicit
    /// `target: 'worker'` call (one-shot, the legacy protocol).
    async fn worker_for_explicit_target(&self) -> Result<Arc<Worker>> {
        self.worker
            .get_or_try_init(|| async {
                let cfg = WorkerConfig::new(&self.options.base_dir, WorkerMode::Oneshot);
                Worker::new(cfg).map(Arc::new)
            })
            .await
            .cloned()
    }

    /// Embed texts with the engine's model: admission, timeout, AbortSignal.
    pub async fn embed(&self, texts: Vec<String>, opts: EmbedOptions, call: CallOptions) -> Result<Vec<Vec<f32>>> {
        let _slot = self.admit()?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let cancel = call.cancel.clone();
        with_deadline(async { self.embedder().await?.embed(texts, opts, cancel).await }, &call, ErrorCode::Timeout)
            .await
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn limits(&self) -> &Limits {
        &self.options.limits
    }

    fn admit(&self) -> Result<Admission<'_>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(err!(InvalidArg, "this Engine is closed; open a new one"));
        }
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        let slot = Admission(&self.admitted);
        if prev >= self.options.max_in_flight {
            return Err(err!(
                Overloaded,
                "{prev} jobs are already in flight (EngineOptions.maxInFlight = {}); retry later",
                self.options.max_in_flight
            ));
        }
        Ok(slot)
    }

    /// Decode an envelope and run its job, honouring the call's timeout,
    /// AbortSignal and target.
    pub async fn submit(&self, input: EnvelopeInput, call: CallOptions) -> Result<JobResult> {
        let _slot = self.admit()?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let start = Instant::now();
        let envelope = with_deadline(self.decode(input), &call, ErrorCode::Timeout).await?;
        let decode_ms = ms(start.elapsed());
        let job = JobType::parse(&envelope.job_type);
        let mut result = match self.route(&job, &envelope.payload, call.target).await? {
            Route::Local => with_deadline(self.run_local(job, envelope, &call), &call, ErrorCode::Timeout).await?,
            Route::Worker(worker) => {
                // The worker enforces the timeout itself (E_WORKER_TIMEOUT)
                // and kills its process group; give it what is left.
                let remaining = call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)));
                worker.run(&envelope, remaining, call.cancel.clone()).await?
            }
        };
        result.timings.decode = decode_ms;
        result.timings.total = ms(start.elapsed());
        Ok(result)
    }

    async fn decode(&self, input: EnvelopeInput) -> Result<Envelope> {
        let limits = self.options.limits;
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
            (JobType::Echo | JobType::Embedding, _) => Ok(Route::Local),
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
                let vectors = embedder.embed(texts, opts, call.cancel.clone()).await?;
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
            timings: Timings { run: ms(started.elapsed()), ..Timings::default() },
        })
    }

    /// Open Inference Protocol inference (docs/infer.md): runs on this
    /// engine's model when `req.model_name` names it (or is absent), else on
    /// the worker when one is configured and `call.target` allows it, else
    /// `E_UNKNOWN_MODEL`. Admission, timeout and AbortSignal as for `embed`.
    pub async fn infer(&self, req: InferRequest, call: CallOptions) -> Result<InferResponse> {
        let _slot = self.admit()?;
        if call.cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let start = Instant::now();
        let route =
            with_deadline(self.route_inference(req.model_name.as_deref(), call.target), &call, ErrorCode::Timeout)
                .await?;
        match route {
            Route::Local => {
                // The deadline counts from the call, not from here (routing
                // may have loaded the model).
                let rest = CallOptions {
                    timeout: call.timeout.map(|t| t.saturating_sub(start.elapsed()).max(Duration::from_millis(1))),
                    ..call.clone()
                };
                let cancel = call.cancel.clone();
                with_deadline(
                    async { infer::run(&self.embedder().await?, req, cancel).await },
                    &rest,
                    ErrorCode::Timeout,
                )
                .await
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
                match worker.run(&envelope, remaining, call.cancel.clone()).await?.output {
                    JobOutput::Json(v) => InferResponse::from_json(&v),
                    JobOutput::Bytes(b) => Err(err!(
                        WorkerProtocol,
                        "the worker answered an inference with {} raw bytes, not a JSON response",
                        b.len()
                    )),
                }
            }
        }
    }

    /// Metadata of the models served here (the engine's encoder), in the
    /// Open Inference Protocol's shape. Loads the model on first use.
    pub async fn models(&self) -> Result<Vec<ModelMetadata>> {
        Ok(vec![infer::model_metadata(&*self.embedder().await?)])
    }

    /// Where an inference for `model` runs: see [`Engine::infer`]. A local
    /// model that fails to load routes to a configured worker, else its load
    /// error is the answer.
    async fn route_inference(&self, model: Option<&str>, target: Target) -> Result<Route> {
        if target == Target::Worker {
            return Ok(Route::Worker(self.worker_for_explicit_target().await?));
        }
        let local = self.embedder().await;
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
    pub fn health(&self) -> Health {
        let probe = crate::device::probe();
        let mut errors = Vec::new();
        let mut status = Status::Ok;
        if let Some(reason) = &probe.reason {
            errors.push(format!("cuda: {reason}"));
        }
        if let Some(e) = self.model_error.lock().ok().and_then(|g| g.clone()) {
            status = Status::Degraded;
            errors.push(format!("model: {e}"));
        }
        let embedder = self.embedder.get();
        let backend_status = embedder.map(|e| e.backend_status());
        if let Some(note) = embedder.and_then(|e| e.backend_note()) {
            // `device: 'auto'` fell back to the CPU: serving, but not as asked.
            status = Status::Degraded;
            errors.push(format!("device: {note}"));
        }
        if let Some(fault) = backend_status.as_ref().and_then(|b| b.fault.clone()) {
            status = Status::Error;
            errors.push(format!("cuda: {fault}"));
        }
        if self.closed.load(Ordering::Acquire) {
            status = Status::Error;
            errors.push("engine: closed".into());
        }
        let denv = DiscoveryEnv::from_process();
        let cuda_path =
            discovery::candidates(&self.options.base_dir, &denv).iter().map(|p| p.display().to_string()).collect();
        let worker = match self.worker.get() {
            Some(w) => serde_json::to_value(w.health()).unwrap_or(Value::Null),
            None => {
                // No worker yet: show what discovery would use.
                let found = discovery::find_worker(&self.options.base_dir, &denv).ok();
                serde_json::json!({
                    "path": found.as_ref().map(|(p, _)| p.display().to_string()),
                    "source": found.as_ref().map(|(_, s)| s.as_str()),
                    "mode": null, "running": false, "restarts": 0, "in_flight": 0
                })
            }
        };
        Health {
            status,
            version: crate::VERSION,
            cuda_available: probe.available,
            backend: match embedder.map(|e| e.info().backend) {
                Some(b) if b == "cuda" => "cuda",
                _ => "cpu",
            },
            cuda_path,
            worker,
            devices: probe.devices_now(),
            model: embedder.map_or(Value::Null, |e| serde_json::to_value(e.info()).unwrap_or(Value::Null)),
            compute: backend_status.map_or(Value::Null, |b| serde_json::to_value(b).unwrap_or(Value::Null)),
            queue: QueueHealth {
                depth: embedder.map_or(0, |e| e.queue_stats().depth),
                in_flight: self.admitted.load(Ordering::Acquire),
            },
            errors,
        }
    }

    /// Stop accepting work and release resources. Idempotent.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(worker) = self.worker.get() {
            worker.shutdown().await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
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

/// Read an `embedding` job's payload: `{text}` or `{texts}`, with optional
/// `normalize` and `truncate`.
fn embedding_request(payload: Payload) -> Result<(Vec<String>, EmbedOptions)> {
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
