//! The engine handle: options, admission, `submit` routing with timeouts and
//! cancellation, `health`. The N-API layer and the `cuda-worker` binary both
//! drive the engine through this type.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::envelope::{self, Envelope, Limits, Payload, RawEnvelope};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::health::{Health, QueueHealth, Status};
use crate::jobs::{BackendKind, JobOutput, JobResult, JobType, Target, Timings};

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
                    return Err(err!(InvalidArg, "`options.device` must be 'auto', 'cuda', 'cpu' or a device index, got {other:?}"))
                }
            },
            Some(Value::Number(n)) if n.as_u64().is_some() => DevicePreference::Cuda(n.as_u64().map(|i| i as usize)),
            Some(other) => {
                return Err(err!(InvalidArg, "`options.device` must be 'auto', 'cuda', 'cpu' or a device index, got {other}"))
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
        Ok(Arc::new(Engine { options, admitted: AtomicUsize::new(0), closed: AtomicBool::new(false) }))
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
        with_deadline(self.decode_and_run(input, &call), &call, ErrorCode::Timeout).await
    }

    async fn decode_and_run(&self, input: EnvelopeInput, call: &CallOptions) -> Result<JobResult> {
        let start = Instant::now();
        let limits = self.options.limits;
        let envelope = if input.approx_len() > INLINE_DECODE_BYTES {
            tokio::task::spawn_blocking(move || input.decode(&limits))
                .await
                .map_err(|e| CoreError::internal(format!("envelope decoding task failed: {e}")))??
        } else {
            input.decode(&limits)?
        };
        let decoded_at = Instant::now();
        let job = JobType::parse(&envelope.job_type);
        let mut result = self.run(job, envelope, call).await?;
        let end = Instant::now();
        result.timings.decode = ms(decoded_at - start);
        result.timings.total = ms(end - start);
        Ok(result)
    }

    async fn run(&self, job: JobType, envelope: Envelope, call: &CallOptions) -> Result<JobResult> {
        let started = Instant::now();
        let (output, encoding, backend) = match (&job, call.target) {
            (JobType::Echo, Target::Auto | Target::Local) => {
                let output = match envelope.payload {
                    Payload::Json(v) => JobOutput::Json(v),
                    Payload::Bytes(b) => JobOutput::Bytes(b),
                };
                (output, envelope.encoding.as_str(), BackendKind::Cpu)
            }
            (_, Target::Worker) => {
                return Err(err!(
                    WorkerNotFound,
                    "`target: 'worker'` but no worker is configured (EngineOptions.worker)"
                ))
            }
            (JobType::Embedding | JobType::Inference, _) => {
                return Err(err!(
                    UnknownType,
                    "job type `{}` has no local runner in this build and no worker is configured",
                    job.canonical()
                ))
            }
            (JobType::Other(name), _) => {
                return Err(err!(
                    UnknownType,
                    "unknown job type `{name}` (known: echo, embedding, inference); configure EngineOptions.worker to run other types"
                ))
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

    /// The health report. Blocking on first use (probes CUDA).
    pub fn health(&self) -> Health {
        let probe = crate::device::probe();
        let mut errors = Vec::new();
        let mut status = Status::Ok;
        if let Some(reason) = &probe.reason {
            errors.push(format!("cuda: {reason}"));
        }
        if self.closed.load(Ordering::Acquire) {
            status = Status::Error;
            errors.push("engine: closed".into());
        }
        Health {
            status,
            version: crate::VERSION,
            cuda_available: probe.available,
            backend: "cpu",
            cuda_path: Vec::new(),
            worker: serde_json::json!({
                "path": null, "source": null, "mode": null, "running": false, "restarts": 0
            }),
            devices: probe.devices_now(),
            model: Value::Null,
            queue: QueueHealth { depth: 0, in_flight: self.admitted.load(Ordering::Acquire) },
            errors,
        }
    }

    /// Stop accepting work and release resources. Idempotent.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
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
