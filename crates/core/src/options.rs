//! The one options schema. `Engine.open(options)` in JS, the `cuda-worker`
//! command line (`--options JSON` / `CUDA_ENGINE_OPTIONS`) and
//! `bin/cuda-service.mjs` all read [`EngineOptions`] through
//! [`EngineOptions::from_json`], and every part of the engine gets its typed
//! settings from [`EngineOptions::into_config`] — nothing else walks the
//! options object.
//!
//! Rules (docs/design.md "Options"):
//! - Keys are camelCase; an unknown key is `E_INVALID_ARG` naming it and the
//!   nearest valid name (`devise` → "did you mean `device`?"). The schema
//!   structs use `deny_unknown_fields` as a second guard; no
//!   `#[serde(flatten)]`, which would disable it.
//! - `null` (and `undefined` from JS) means "the default".
//! - A wrong type or a value out of range is `E_INVALID_ARG` naming
//!   `options.<key>` and the accepted range.
//! - Call options (`CallOptions`, `EmbedOptions`, close options) hold JS
//!   values (an `AbortSignal`), so the binding reads them itself; their key
//!   lists are defined here ([`CALL_OPTIONS`], …) so that the same unknown-key
//!   rule and the same names apply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::cuda::Dtype;
use crate::batcher::BatcherLimits;
use crate::device::DevicePreference;
use crate::embedder::EmbedderOptions;
use crate::envelope::Limits;
use crate::err;
use crate::error::Result;
use crate::grpc::client::{RemoteConfig, RemoteEndpoint, MAX_ENDPOINTS, MAX_RETRIES};
use crate::vector::{Dtype as VectorDtype, IndexConfig, Metric};
use crate::worker::{BinaryFormat, WorkerConfig, WorkerMode, MAX_POOL_SIZE};

/// `EngineOptions` as users write it (JS object, JSON). Every field is
/// optional; `into_config` applies the defaults and checks ranges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineOptions {
    /// Model directory (sentence-transformers layout), or a Hugging Face
    /// repository id `org/name` (taken from the HF cache, downloaded into it
    /// when missing: model::hub; an existing directory always wins, a
    /// path-like value never downloads). Loaded at open; a missing or
    /// malformed one rejects `open` with `E_MODEL`.
    pub model: Option<String>,
    /// `'auto'` (default) | `'cuda'` | `'cpu'` | a CUDA device index.
    pub device: Option<Value>,
    /// GPU compute dtype: `'fp16'` (default) | `'bf16'` | `'fp32'`.
    pub dtype: Option<String>,
    /// CPU compute threads (default: available parallelism).
    pub threads: Option<u64>,
    /// External worker: a path, `true` (discover), or [`WorkerOptions`].
    pub worker: Option<Value>,
    /// Base directory for worker discovery and relative paths (default: cwd).
    pub base_dir: Option<String>,
    /// Largest envelope accepted, bytes (default 16 MiB: the copy on the JS
    /// thread stays under 100 ms, docs/reliability.md).
    pub max_envelope_bytes: Option<u64>,
    /// Deepest JSON nesting accepted (default 64, at most [`MAX_JSON_DEPTH`]).
    pub max_json_depth: Option<u64>,
    /// Most JS values read one by one from a call's arguments (object
    /// payloads, `infer` data as plain arrays), default 50,000; over:
    /// `E_TOO_LARGE`. Bounds the event-loop block of one call (~100 ms).
    pub max_payload_values: Option<u64>,
    /// Calls admitted at once before `E_OVERLOADED` (default 65,536).
    pub max_in_flight: Option<u64>,
    /// Tokens per forward pass, all texts together (default 16,384).
    pub max_batch_tokens: Option<u64>,
    /// Texts per forward pass (default 1,024).
    pub max_batch_size: Option<u64>,
    /// Texts waiting for a forward pass before `E_OVERLOADED` (default 65,536).
    pub max_queued_texts: Option<u64>,
    /// Texts in one `embed` call before `E_TOO_LARGE` (default 16,384).
    pub max_texts_per_call: Option<u64>,
    /// `'in-process'` (default): the model runs in this process. `'process'`:
    /// in a supervised `cuda-worker --serve` started with these options
    /// (minus `isolation` and `worker`), so a segfault, a sticky CUDA error
    /// or a hang costs a restart of that process (docs/reliability.md
    /// "Fault isolation").
    pub isolation: Option<String>,
    /// Remote Open Inference Protocol servers (docs/grpc.md "Client"): an
    /// endpoint `grpc://host:port` (`grpcs://` for TLS), an array of them,
    /// or [`RemoteOptions`]. `target: 'remote'` calls go there, and
    /// `target: 'auto'` ones when no local model is loaded or named.
    pub remote: Option<Value>,
}

/// `EngineOptions.remote` given as an object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteOptions {
    /// One endpoint or several (one channel balanced over them); required.
    pub endpoints: Option<Value>,
    /// Longest a remote call may take (default 30,000 ms); the call's
    /// `timeoutMs` can only shorten it. Over: `E_TIMEOUT`.
    pub timeout_ms: Option<u64>,
    /// TCP/TLS connect timeout (default 5,000 ms).
    pub connect_timeout_ms: Option<u64>,
    /// Retries of a call that failed with UNAVAILABLE (default 2, at most 10).
    pub retries: Option<u64>,
    /// The remote model `embed` uses, and `infer` when the request names
    /// none (default `all-MiniLM-L6-v2`).
    pub model: Option<String>,
    /// The BYTES `[n]` input carrying `embed`'s texts (default `text`).
    pub embed_input: Option<String>,
    /// The FP32 `[n, dims]` output `embed` reads (default `sentence_embedding`).
    pub embed_output: Option<String>,
    /// Largest message sent or received, bytes (default 64 MiB, at most 2 GiB − 1).
    pub max_message_bytes: Option<u64>,
    /// `grpcs://`: a PEM file of the certificate authorities to trust
    /// (default: the built-in Mozilla roots).
    pub ca_file: Option<String>,
}

impl RemoteOptions {
    pub fn field_names() -> Vec<String> {
        field_names_of(&RemoteOptions::default())
    }
}

/// `EngineOptions.worker` given as an object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerOptions {
    /// The worker binary; absent: the discovery rules (docs/discovery.md).
    pub path: Option<String>,
    /// `true`: find the worker by discovery (the default without `path`).
    pub discover: Option<bool>,
    /// `'oneshot'` (default: a process per job) | `'persistent'` (a pool).
    pub mode: Option<String>,
    /// Arguments, exactly (no shell). Default: `['--serve']` persistent, `[]` one-shot.
    pub args: Option<Vec<String>>,
    /// Job timeout when the call gives none (default 30,000 ms).
    pub timeout_ms: Option<u64>,
    /// Largest response accepted (default 64 MiB); over it: `E_OUTPUT_LIMIT`.
    pub max_output_bytes: Option<u64>,
    /// Bytes of the stderr tail kept for errors and logs (default 64 KiB).
    pub max_stderr_bytes: Option<u64>,
    /// Persistent mode: number of processes (default 1, at most 64).
    pub pool_size: Option<u64>,
    /// Binary frames for raw-byte payloads: `'cbor'` (default) | `'msgpack'`.
    pub binary_format: Option<String>,
    /// Linux: become a child subreaper so a worker's abandoned helpers are reaped.
    pub reap_orphans: Option<bool>,
    /// Persistent mode: delay before the first restart after deaths with no
    /// job answered (default 50 ms, doubling per death; 0 restarts at once).
    pub restart_delay_ms: Option<u64>,
    /// Persistent mode: ceiling of that doubling delay (default 10,000 ms).
    pub max_restart_delay_ms: Option<u64>,
}

/// `VectorIndex.create(options)` / `engine.createIndex(name, options)`
/// (docs/vector-search.md). Read with the same rules as [`EngineOptions`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IndexOptions {
    /// Values per vector, 1..=4096 (required).
    pub dims: Option<u64>,
    /// `'cosine'` (default) | `'ip'` | `'l2'`.
    pub metric: Option<String>,
    /// Storage: `'fp16'` (default) | `'fp32'`. Scores are fp32 either way.
    pub dtype: Option<String>,
    /// `'auto'` (default: the model's GPU on an engine, else CUDA device 0,
    /// else the CPU) | `'cuda'` | `'cpu'` | a device index.
    pub device: Option<Value>,
    /// Rows reserved at creation (default 1,024); grown by doubling.
    pub capacity: Option<u64>,
    /// Most bytes of vector storage (default 32 GiB): upserts beyond it are
    /// `E_TOO_LARGE`.
    pub max_bytes: Option<u64>,
}

/// Default `IndexOptions.maxBytes`.
pub const DEFAULT_INDEX_MAX_BYTES: u64 = 32 << 30;

impl IndexOptions {
    /// Read options from JSON; unknown keys and wrong types name the key.
    pub fn from_json(value: &Value) -> Result<IndexOptions> {
        match value {
            Value::Object(obj) => {
                check_keys(obj.keys().map(String::as_str), &Self::field_names(), "options")?;
                deserialize(value, "options")
            }
            Value::Null => Err(err!(InvalidArg, "`options.dims` is required")),
            other => Err(err!(InvalidArg, "`options` must be an object, got {}", crate::envelope::json_kind(other))),
        }
    }

    pub fn field_names() -> Vec<String> {
        field_names_of(&IndexOptions::default())
    }

    /// Apply defaults and check ranges.
    pub fn into_config(self) -> Result<IndexConfig> {
        let dims = int(self.dims, "dims", 1, crate::vector::MAX_DIMS as u64)?
            .ok_or_else(|| err!(InvalidArg, "`options.dims` is required (values per vector)"))?;
        let metric = match self.metric.as_deref() {
            None => Metric::Cosine,
            Some(m) => Metric::parse(m)
                .ok_or_else(|| err!(InvalidArg, "`options.metric` must be 'cosine', 'ip' or 'l2', got {m:?}"))?,
        };
        let dtype = match self.dtype.as_deref() {
            None => VectorDtype::F16,
            Some(d) => VectorDtype::parse(d)
                .ok_or_else(|| err!(InvalidArg, "`options.dtype` must be 'fp16' or 'fp32', got {d:?}"))?,
        };
        let max_bytes = int(self.max_bytes, "maxBytes", 1, 1 << 50)?.map_or(DEFAULT_INDEX_MAX_BYTES, |n| n as u64);
        Ok(IndexConfig {
            dims,
            metric,
            dtype,
            device: parse_device(self.device.as_ref())?,
            capacity: int(self.capacity, "capacity", 1, 1 << 32)?.unwrap_or(1024),
            max_bytes,
        })
    }
}

/// `CallOptions` keys (read by the binding: `signal` is a JS object).
pub const CALL_OPTIONS: &[&str] = &["signal", "timeoutMs", "target"];
/// `EmbedOptions` keys: the call options plus the embedding's own.
/// `onProgress` is a JS function: only the binding reads these (as JS values).
pub const EMBED_OPTIONS: &[&str] = &["signal", "timeoutMs", "target", "normalize", "truncate", "onProgress"];
/// `engine.close(options)` keys.
pub const CLOSE_OPTIONS: &[&str] = &["drainMs"];
/// `engine.metrics(options)` keys: `format` ('prometheus' | 'json').
pub const METRICS_OPTIONS: &[&str] = &["format"];
/// `fetchModel(name, options)` keys (model::hub): `dir` (the Hugging Face
/// cache root), `endpoint` (the hub), `revision` (branch, tag or commit).
pub const FETCH_MODEL_OPTIONS: &[&str] = &["dir", "endpoint", "revision"];

/// Hard ceiling on `maxJsonDepth`: JSON and JS-object walks are bounded by
/// it whatever the user asks for.
pub const MAX_JSON_DEPTH: u64 = 1_000;
/// Largest `timeoutMs` / `drainMs` accepted: 2^31 − 1 ms (~24.8 days, the
/// largest delay `setTimeout` takes).
pub const MAX_TIMEOUT_MS: f64 = 2_147_483_647.0;

/// Whether the engine loads its model at open or on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelLoading {
    /// Load at open when a model is named (option or `CUDA_ENGINE_MODEL`),
    /// so a bad one rejects `open`; else on first use.
    #[default]
    WhenNamed,
    /// Only on first use (the `cuda-worker` binary: a one-shot echo job must
    /// not pay for loading a model).
    OnFirstUse,
}

/// The typed settings every part of the engine takes, from [`EngineOptions::into_config`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: Limits,
    /// Calls admitted at once (queued or running) before `E_OVERLOADED`.
    pub max_in_flight: usize,
    pub device: DevicePreference,
    /// Base directory for worker discovery and relative paths.
    pub base_dir: PathBuf,
    pub embedder: EmbedderOptions,
    /// The configured worker, if `worker` was given.
    pub worker: Option<WorkerConfig>,
    pub model_loading: ModelLoading,
    /// Where the model runs (`isolation`).
    pub isolation: IsolationConfig,
    /// The remote Open Inference Protocol servers (`remote`), if any.
    pub remote: Option<RemoteConfig>,
}

/// `EngineOptions.isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Isolation {
    /// The model runs in this process (the default).
    #[default]
    #[serde(rename = "in-process")]
    InProcess,
    /// The model runs in a supervised `cuda-worker --serve`.
    #[serde(rename = "process")]
    Process,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in-process",
            Isolation::Process => "process",
        }
    }
}

/// The typed settings of `isolation: 'process'`.
#[derive(Debug, Clone, Default)]
pub struct IsolationConfig {
    pub mode: Isolation,
    /// The isolated process's `EngineOptions` (`--options`): the caller's,
    /// minus `isolation` and `worker`, `null`s dropped.
    pub options: Value,
    /// Rust API only: the `cuda-worker` binary. None: the discovery rules
    /// (docs/discovery.md), as for `worker: true`.
    pub path: Option<PathBuf>,
    /// Rust API only: variables added to the isolated process's environment
    /// (it inherits this process's). No option sets this, so nothing a JS,
    /// HTTP or gRPC caller sends reaches it; tests set
    /// `CUDA_ENGINE_FAULT_INJECT` here.
    pub env: Vec<(String, String)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineOptions::default().into_config().unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

impl EngineOptions {
    /// Read options from JSON (`null`: all defaults). Unknown keys, wrong
    /// types: `E_INVALID_ARG` naming `options.<key>`.
    pub fn from_json(value: &Value) -> Result<EngineOptions> {
        match value {
            Value::Null => Ok(EngineOptions::default()),
            Value::Object(obj) => {
                check_keys(obj.keys().map(String::as_str), &Self::field_names(), "options")?;
                deserialize(value, "options")
            }
            other => Err(err!(InvalidArg, "`options` must be an object, got {}", crate::envelope::json_kind(other))),
        }
    }

    /// The schema's keys, as JS writes them (from the serde derive, so they
    /// cannot drift from the struct).
    pub fn field_names() -> Vec<String> {
        field_names_of(&EngineOptions::default())
    }

    /// Apply defaults and check ranges; the typed settings of every part.
    pub fn into_config(self) -> Result<EngineConfig> {
        let isolation = self.isolation_config()?;
        let base_dir = match self.base_dir {
            Some(b) if b.is_empty() => return Err(err!(InvalidArg, "`options.baseDir` is an empty string")),
            Some(b) => PathBuf::from(b),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let mut limits = Limits::default();
        if let Some(n) = int(self.max_envelope_bytes, "maxEnvelopeBytes", 1, usize::MAX as u64)? {
            limits.max_envelope_bytes = n;
        }
        if let Some(n) = int(self.max_json_depth, "maxJsonDepth", 1, MAX_JSON_DEPTH)? {
            limits.max_json_depth = n;
        }
        if let Some(n) = int(self.max_payload_values, "maxPayloadValues", 1, 1 << 24)? {
            limits.max_payload_values = n;
        }
        let device = parse_device(self.device.as_ref())?;
        let batch = BatcherLimits::default();
        let mut embedder = EmbedderOptions { device, ..EmbedderOptions::default() };
        match self.model {
            Some(m) if m.is_empty() => return Err(err!(InvalidArg, "`options.model` is an empty string")),
            Some(m) => embedder.model_dir = Some(PathBuf::from(m)),
            None => {}
        }
        if let Some(d) = self.dtype {
            embedder.dtype = Dtype::parse(&d)
                .ok_or_else(|| err!(InvalidArg, "`options.dtype` must be 'fp16', 'bf16' or 'fp32', got {d:?}"))?;
        }
        embedder.threads = int(self.threads, "threads", 1, 4096)?;
        embedder.max_batch_tokens =
            int(self.max_batch_tokens, "maxBatchTokens", 1, 1 << 24)?.unwrap_or(batch.max_batch_tokens);
        embedder.max_batch_seqs = int(self.max_batch_size, "maxBatchSize", 1, 1 << 20)?.unwrap_or(batch.max_batch_seqs);
        embedder.max_queued_texts =
            int(self.max_queued_texts, "maxQueuedTexts", 1, 1 << 30)?.unwrap_or(batch.max_queued_texts);
        if let Some(n) = int(self.max_texts_per_call, "maxTextsPerCall", 1, 1 << 30)? {
            embedder.max_texts_per_call = n;
        }
        let worker = match self.worker {
            None | Some(Value::Null) => None,
            Some(spec) => Some(worker_config(&spec, &base_dir)?),
        };
        let remote = match self.remote {
            None | Some(Value::Null) => None,
            Some(spec) => Some(remote_config(&spec, &base_dir)?),
        };
        Ok(EngineConfig {
            remote,
            limits,
            max_in_flight: int(self.max_in_flight, "maxInFlight", 1, 1 << 30)?.unwrap_or(65_536),
            device,
            base_dir,
            embedder,
            worker,
            model_loading: ModelLoading::default(),
            isolation,
        })
    }

    fn isolation_config(&self) -> Result<IsolationConfig> {
        let mode = match self.isolation.as_deref() {
            None | Some("in-process") => Isolation::InProcess,
            Some("process") => Isolation::Process,
            Some(other) => {
                return Err(err!(InvalidArg, "`options.isolation` must be 'in-process' or 'process', got {other:?}"))
            }
        };
        let mut child = self.clone();
        child.isolation = None;
        child.worker = None;
        child.remote = None;
        let options = match serde_json::to_value(&child) {
            Ok(Value::Object(m)) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
            _ => Value::Object(Default::default()),
        };
        Ok(IsolationConfig { mode, options, path: None, env: Vec::new() })
    }
}

impl WorkerOptions {
    pub fn field_names() -> Vec<String> {
        field_names_of(&WorkerOptions::default())
    }
}

/// `EngineOptions.worker`: a path string, `true` (discover), or an object.
fn worker_config(spec: &Value, base_dir: &Path) -> Result<WorkerConfig> {
    let o: WorkerOptions = match spec {
        Value::String(s) if s.is_empty() => {
            return Err(err!(InvalidArg, "`options.worker` is an empty string: give a path or {{ discover: true }}"))
        }
        Value::String(s) => {
            let mut c = WorkerConfig::new(base_dir, WorkerMode::Oneshot);
            c.path = Some(PathBuf::from(s));
            return Ok(c);
        }
        Value::Bool(true) => return Ok(WorkerConfig::new(base_dir, WorkerMode::Oneshot)),
        Value::Object(obj) => {
            check_keys(obj.keys().map(String::as_str), &WorkerOptions::field_names(), "options.worker")?;
            deserialize(spec, "options.worker")?
        }
        other => {
            return Err(err!(
                InvalidArg,
                "`options.worker` must be a path string, true, or an object {{ path?, mode?, ... }}; got {}",
                crate::envelope::json_kind(other)
            ))
        }
    };
    let mode = match o.mode.as_deref() {
        None | Some("oneshot") => WorkerMode::Oneshot,
        Some("persistent") => WorkerMode::Persistent,
        Some(other) => {
            return Err(err!(InvalidArg, "`options.worker.mode` must be 'oneshot' or 'persistent', got {other:?}"))
        }
    };
    let mut c = WorkerConfig::new(base_dir, mode);
    match (o.discover, o.path) {
        (_, Some(p)) if p.is_empty() => return Err(err!(InvalidArg, "`options.worker.path` is an empty string")),
        (Some(true), Some(_)) => {
            return Err(err!(
                InvalidArg,
                "`options.worker.discover: true` conflicts with `options.worker.path`: give one"
            ))
        }
        (Some(false), None) => {
            return Err(err!(InvalidArg, "`options.worker.discover: false` needs `options.worker.path`"))
        }
        (_, path) => c.path = path.map(PathBuf::from),
    }
    if let Some(args) = o.args {
        c.args = args;
    }
    if let Some(ms) = int(o.timeout_ms, "worker.timeoutMs", 1, 86_400_000)? {
        c.timeout = Duration::from_millis(ms as u64);
    }
    if let Some(n) = int(o.max_output_bytes, "worker.maxOutputBytes", 1, u32::MAX as u64)? {
        c.max_output_bytes = n;
    }
    if let Some(n) = int(o.max_stderr_bytes, "worker.maxStderrBytes", 0, 64 * 1024 * 1024)? {
        c.max_stderr_bytes = n;
    }
    if let Some(n) = int(o.pool_size, "worker.poolSize", 1, MAX_POOL_SIZE as u64)? {
        c.pool_size = n;
    }
    if let Some(f) = o.binary_format {
        c.binary_format = BinaryFormat::parse(&f)
            .ok_or_else(|| err!(InvalidArg, "`options.worker.binaryFormat` must be 'cbor' or 'msgpack', got {f:?}"))?;
    }
    if let Some(b) = o.reap_orphans {
        c.reap_orphans = b;
    }
    if let Some(ms) = int(o.restart_delay_ms, "worker.restartDelayMs", 0, 3_600_000)? {
        c.restart_delay = Duration::from_millis(ms as u64);
    }
    if let Some(ms) = int(o.max_restart_delay_ms, "worker.maxRestartDelayMs", 0, 3_600_000)? {
        c.max_restart_delay = Duration::from_millis(ms as u64);
    }
    if c.max_restart_delay < c.restart_delay {
        return Err(err!(
            InvalidArg,
            "`options.worker.maxRestartDelayMs` ({} ms) is below `options.worker.restartDelayMs` ({} ms)",
            c.max_restart_delay.as_millis(),
            c.restart_delay.as_millis()
        ));
    }
    Ok(c)
}

/// `EngineOptions.remote`: an endpoint string, an array of them, or an object.
fn remote_config(spec: &Value, base_dir: &Path) -> Result<RemoteConfig> {
    let endpoints = |v: &Value, what: &str| -> Result<Vec<RemoteEndpoint>> {
        let list = match v {
            Value::String(s) => vec![RemoteEndpoint::parse(s, what)?],
            Value::Array(items) => {
                if items.len() > MAX_ENDPOINTS {
                    return Err(err!(InvalidArg, "`{what}` has {} endpoints, at most {MAX_ENDPOINTS}", items.len()));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => RemoteEndpoint::parse(s, &format!("{what}[{i}]")),
                        other => Err(err!(
                            InvalidArg,
                            "`{what}[{i}]` must be a string grpc://host:port, got {}",
                            crate::envelope::json_kind(other)
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            other => {
                return Err(err!(
                    InvalidArg,
                    "`{what}` must be an endpoint grpc://host:port or an array of them, got {}",
                    crate::envelope::json_kind(other)
                ))
            }
        };
        if list.is_empty() {
            return Err(err!(InvalidArg, "`{what}` is empty: give at least one grpc://host:port"));
        }
        Ok(list)
    };
    let o: RemoteOptions = match spec {
        Value::String(_) | Value::Array(_) => return Ok(RemoteConfig::new(endpoints(spec, "options.remote")?)),
        Value::Object(obj) => {
            check_keys(obj.keys().map(String::as_str), &RemoteOptions::field_names(), "options.remote")?;
            deserialize(spec, "options.remote")?
        }
        other => {
            return Err(err!(
                InvalidArg,
                "`options.remote` must be an endpoint grpc://host:port, an array of them, or an object {{ endpoints, ... }}; got {}",
                crate::envelope::json_kind(other)
            ))
        }
    };
    let list = match &o.endpoints {
        None | Some(Value::Null) => {
            return Err(err!(InvalidArg, "`options.remote.endpoints` is required (grpc://host:port, or an array)"))
        }
        Some(v) => endpoints(v, "options.remote.endpoints")?,
    };
    let mut c = RemoteConfig::new(list);
    if let Some(ms) = int(o.timeout_ms, "remote.timeoutMs", 1, MAX_TIMEOUT_MS as u64)? {
        c.timeout = Duration::from_millis(ms as u64);
    }
    if let Some(ms) = int(o.connect_timeout_ms, "remote.connectTimeoutMs", 1, 3_600_000)? {
        c.connect_timeout = Duration::from_millis(ms as u64);
    }
    if let Some(n) = int(o.retries, "remote.retries", 0, u64::from(MAX_RETRIES))? {
        c.retries = n as u32;
    }
    if let Some(n) = int(o.max_message_bytes, "remote.maxMessageBytes", 1024, (2u64 << 30) - 1)? {
        c.max_message_bytes = n;
    }
    for (v, key, slot) in [
        (o.model, "model", &mut c.model),
        (o.embed_input, "embedInput", &mut c.embed_input),
        (o.embed_output, "embedOutput", &mut c.embed_output),
    ] {
        match v {
            Some(s) if s.is_empty() => return Err(err!(InvalidArg, "`options.remote.{key}` is an empty string")),
            Some(s) => *slot = s,
            None => {}
        }
    }
    match o.ca_file {
        Some(p) if p.is_empty() => return Err(err!(InvalidArg, "`options.remote.caFile` is an empty string")),
        Some(p) => {
            if !c.endpoints.iter().any(|e| e.tls) {
                return Err(err!(InvalidArg, "`options.remote.caFile` is only for grpcs:// endpoints"));
            }
            c.ca_file = Some(base_dir.join(p));
        }
        None => {}
    }
    Ok(c)
}

/// `device`: `'auto'` | `'cuda'` | `'cpu'` | a device index (`None`: `auto`).
pub fn parse_device(v: Option<&Value>) -> Result<DevicePreference> {
    let bad =
        |got: String| err!(InvalidArg, "`options.device` must be 'auto', 'cuda', 'cpu' or a device index, got {got}");
    match v {
        None | Some(Value::Null) => Ok(DevicePreference::Auto),
        Some(Value::String(s)) => DevicePreference::parse(s).ok_or_else(|| bad(format!("{s:?}"))),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(i) if i < 1024 => Ok(DevicePreference::Cuda(Some(i as usize))),
            _ => Err(bad(n.to_string())),
        },
        Some(other) => Err(bad(crate::envelope::json_kind(other).to_string())),
    }
}

/// An optional integer option in `min..=max`, named `options.<key>`.
fn int(v: Option<u64>, key: &str, min: u64, max: u64) -> Result<Option<usize>> {
    match v {
        None => Ok(None),
        Some(n) if (min..=max).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(err!(InvalidArg, "`options.{key}` must be an integer in {min}..={max}, got {n}")),
    }
}

/// Deserialize `value` into `T`, naming the field at fault.
fn deserialize<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        err!(InvalidArg, "`{what}.{path}`: {inner}")
    })
}

fn field_names_of<T: Serialize>(defaults: &T) -> Vec<String> {
    match serde_json::to_value(defaults) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

pub use crate::keys::{check_keys, nearest};

/// A call's `timeoutMs` / close's `drainMs`: finite, `0..=MAX_TIMEOUT_MS`.
/// `0` means "no limit" for `timeoutMs` (the caller decides).
pub fn millis(ms: f64, what: &str) -> Result<Duration> {
    if !(ms.is_finite() && (0.0..=MAX_TIMEOUT_MS).contains(&ms)) {
        return Err(err!(InvalidArg, "`{what}` must be a number of milliseconds in 0..={MAX_TIMEOUT_MS}, got {ms}"));
    }
    Ok(Duration::from_secs_f64(ms / 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn msg(v: Value) -> String {
        let e = EngineOptions::from_json(&v).and_then(EngineOptions::into_config).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArg, "{e}");
        e.message
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_nearest_name() {
        let m = msg(json!({ "maxEnvelopBytes": 10 }));
        assert!(m.contains("`options.maxEnvelopBytes`") && m.contains("did you mean `maxEnvelopeBytes`"), "{m}");
        let m = msg(json!({ "devise": "cuda" }));
        assert!(m.contains("`options.devise`") && m.contains("did you mean `device`"), "{m}");
        let m = msg(json!({ "limits": {} }));
        assert!(m.contains("`options.limits` is not an option") && m.contains("maxEnvelopeBytes"), "{m}");
        let m = msg(json!({ "worker": { "pooSize": 2 } }));
        assert!(m.contains("`options.worker.pooSize`") && m.contains("did you mean `poolSize`"), "{m}");
        let m = msg(json!({ "zzzzzzzz": 1 }));
        assert!(!m.contains("did you mean"), "{m}");
    }

    #[test]
    fn wrong_types_and_ranges_name_the_key() {
        for (v, key) in [
            (json!({ "maxInFlight": 0 }), "options.maxInFlight"),
            (json!({ "maxInFlight": 1.5 }), "options.maxInFlight"),
            (json!({ "maxJsonDepth": 1_000_000 }), "options.maxJsonDepth"),
            (json!({ "maxBatchTokens": -1 }), "options.maxBatchTokens"),
            (json!({ "model": 3 }), "options.model"),
            (json!({ "device": "gpu" }), "options.device"),
            (json!({ "device": true }), "options.device"),
            (json!({ "dtype": "int8" }), "options.dtype"),
            (json!({ "isolation": "thread" }), "options.isolation"),
            (json!({ "isolation": true }), "options.isolation"),
            (json!({ "isolation": "Process" }), "options.isolation"),
            (json!({ "worker": { "mode": "forever" } }), "options.worker.mode"),
            (json!({ "worker": { "poolSize": 0 } }), "options.worker.poolSize"),
            (json!({ "worker": { "timeoutMs": -1 } }), "options.worker.timeoutMs"),
            (json!({ "worker": { "args": [1] } }), "options.worker.args[0]"),
            (json!({ "worker": { "binaryFormat": "json" } }), "options.worker.binaryFormat"),
            (json!({ "worker": { "path": "x", "discover": true } }), "options.worker.discover"),
            (json!({ "worker": { "discover": false } }), "options.worker.discover"),
            (json!({ "worker": 3 }), "options.worker"),
            (json!({ "worker": { "restartDelayMs": -1 } }), "options.worker.restartDelayMs"),
            (
                json!({ "worker": { "restartDelayMs": 100, "maxRestartDelayMs": 10 } }),
                "options.worker.maxRestartDelayMs",
            ),
            (json!([]), "options"),
        ] {
            let m = msg(v.clone());
            assert!(m.contains(&format!("`{key}")), "{v}: {m}");
        }
    }

    #[test]
    fn every_documented_option_is_applied() {
        let c = EngineOptions::from_json(&json!({
            "model": "/m", "device": "cpu", "dtype": "bf16", "threads": 3, "baseDir": "/b",
            "maxEnvelopeBytes": 1000, "maxJsonDepth": 7, "maxPayloadValues": 11, "maxInFlight": 9, "maxBatchTokens": 512,
            "maxBatchSize": 8, "maxQueuedTexts": 99, "maxTextsPerCall": 5,
            "worker": { "path": "w", "mode": "persistent", "args": ["-x"], "timeoutMs": 1500, "maxOutputBytes": 1000,
                        "maxStderrBytes": 10, "poolSize": 3, "binaryFormat": "msgpack", "reapOrphans": true,
                        "restartDelayMs": 0, "maxRestartDelayMs": 20 }
        }))
        .and_then(EngineOptions::into_config)
        .unwrap();
        assert_eq!((c.limits.max_envelope_bytes, c.limits.max_json_depth, c.max_in_flight), (1000, 7, 9));
        assert_eq!(c.limits.max_payload_values, 11);
        assert_eq!(c.device, DevicePreference::Cpu);
        assert_eq!(c.base_dir, PathBuf::from("/b"));
        let e = &c.embedder;
        assert_eq!(e.model_dir.as_deref(), Some(Path::new("/m")));
        assert_eq!((e.dtype, e.threads, e.device), (Dtype::Bf16, Some(3), DevicePreference::Cpu));
        assert_eq!((e.max_batch_tokens, e.max_batch_seqs, e.max_queued_texts, e.max_texts_per_call), (512, 8, 99, 5));
        let w = c.worker.unwrap();
        assert_eq!((w.path.unwrap(), w.mode, w.args), (PathBuf::from("w"), WorkerMode::Persistent, vec!["-x".into()]));
        assert_eq!((w.timeout, w.max_output_bytes, w.max_stderr_bytes), (Duration::from_millis(1500), 1000, 10));
        assert_eq!((w.pool_size, w.binary_format, w.reap_orphans), (3, BinaryFormat::MsgPack, true));
        assert_eq!((w.restart_delay, w.max_restart_delay), (Duration::ZERO, Duration::from_millis(20)));
        // Defaults: persistent mode passes --serve; a string is a one-shot path.
        let c = EngineOptions::from_json(&json!({ "worker": { "mode": "persistent" }, "device": 1 }))
            .and_then(EngineOptions::into_config)
            .unwrap();
        assert_eq!(c.worker.unwrap().args, vec!["--serve".to_string()]);
        assert_eq!(c.device, DevicePreference::Cuda(Some(1)));
        let c = EngineOptions::from_json(&Value::Null).and_then(EngineOptions::into_config).unwrap();
        assert_eq!((c.device, c.max_in_flight, c.worker.is_none()), (DevicePreference::Auto, 65_536, true));
    }

    #[test]
    fn field_names_come_from_the_schema() {
        let names = EngineOptions::field_names();
        assert!(names.contains(&"maxEnvelopeBytes".to_string()) && names.contains(&"baseDir".to_string()));
        assert_eq!(names.len(), 16);
        assert_eq!(RemoteOptions::field_names().len(), 9);
        assert_eq!(WorkerOptions::field_names().len(), 12);
        // Every listed name deserializes (no drift between the list and serde).
        for n in names {
            EngineOptions::from_json(&json!({ n.clone(): null })).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn isolation_passes_the_options_on_minus_itself_and_worker() {
        let c = EngineOptions::from_json(&json!({
            "isolation": "process", "model": "/m", "device": "cpu", "maxBatchSize": 8, "worker": "w", "dtype": null,
            "remote": "grpc://h:1"
        }))
        .and_then(EngineOptions::into_config)
        .unwrap();
        assert_eq!(c.isolation.mode, Isolation::Process);
        assert_eq!(c.isolation.options, json!({ "model": "/m", "device": "cpu", "maxBatchSize": 8 }));
        let c = EngineOptions::from_json(&json!({ "isolation": "in-process" })).and_then(EngineOptions::into_config);
        assert_eq!(c.unwrap().isolation.mode, Isolation::InProcess);
        assert_eq!(EngineConfig::default().isolation.mode, Isolation::InProcess);
    }

    #[test]
    fn remote_options() {
        use crate::grpc::client as rc;
        let cfg = |v: Value| EngineOptions::from_json(&v).and_then(EngineOptions::into_config).map(|c| c.remote);
        // Unknown keys name the key and the nearest name, like every option.
        let m = msg(json!({ "remote": { "endpoints": "grpc://h:1", "timeoutMS": 5 } }));
        assert!(m.contains("`options.remote.timeoutMS`") && m.contains("did you mean `timeoutMs`"), "{m}");
        let m = msg(json!({ "remote": { "endpoint": "grpc://h:1" } }));
        assert!(m.contains("`options.remote.endpoint`") && m.contains("did you mean `endpoints`"), "{m}");
        let m = msg(json!({ "remotes": "grpc://h:1" }));
        assert!(m.contains("`options.remotes`") && m.contains("did you mean `remote`"), "{m}");
        for (v, key) in [
            (json!({ "remote": 3 }), "options.remote"),
            (json!({ "remote": "" }), "options.remote"),
            (json!({ "remote": "http://h:1" }), "options.remote"),
            (json!({ "remote": "grpc://h" }), "options.remote"),
            (json!({ "remote": [] }), "options.remote"),
            (json!({ "remote": ["grpc://h:1", 2] }), "options.remote[1]"),
            (json!({ "remote": ["grpc://h:1", "h:2"] }), "options.remote[1]"),
            (json!({ "remote": {} }), "options.remote.endpoints"),
            (json!({ "remote": { "endpoints": [1] } }), "options.remote.endpoints[0]"),
            (json!({ "remote": { "endpoints": "grpc://h:1", "timeoutMs": 0 } }), "options.remote.timeoutMs"),
            (json!({ "remote": { "endpoints": "grpc://h:1", "retries": 11 } }), "options.remote.retries"),
            (json!({ "remote": { "endpoints": "grpc://h:1", "retries": "2" } }), "options.remote.retries"),
            (json!({ "remote": { "endpoints": "grpc://h:1", "model": "" } }), "options.remote.model"),
            (
                json!({ "remote": { "endpoints": "grpc://h:1", "maxMessageBytes": 10 } }),
                "options.remote.maxMessageBytes",
            ),
            (json!({ "remote": { "endpoints": "grpc://h:1", "caFile": "ca.pem" } }), "options.remote.caFile"),
        ] {
            let m = msg(v.clone());
            assert!(m.contains(&format!("`{key}")), "{v}: {m}");
        }
        // A string, an array, an object: every key applied.
        let one = cfg(json!({ "remote": "grpc://127.0.0.1:8001" })).unwrap().unwrap();
        assert_eq!(one.endpoints.len(), 1);
        assert_eq!(one.endpoints[0].url, "grpc://127.0.0.1:8001");
        assert_eq!((one.timeout, one.retries, one.model.as_str()), (rc::DEFAULT_TIMEOUT, 2, "all-MiniLM-L6-v2"));
        assert_eq!((one.embed_input.as_str(), one.embed_output.as_str()), ("text", "sentence_embedding"));
        let two = cfg(json!({ "remote": ["grpc://a:1", "grpcs://b:2"] })).unwrap().unwrap();
        assert_eq!(two.endpoints.iter().map(|e| e.tls).collect::<Vec<_>>(), [false, true]);
        let all = cfg(json!({ "baseDir": "/b", "remote": {
            "endpoints": ["grpcs://a:1"], "timeoutMs": 1500, "connectTimeoutMs": 200, "retries": 0, "model": "m",
            "embedInput": "in", "embedOutput": "out", "maxMessageBytes": 4096, "caFile": "ca.pem" } }))
        .unwrap()
        .unwrap();
        assert_eq!((all.timeout, all.connect_timeout), (Duration::from_millis(1500), Duration::from_millis(200)));
        assert_eq!((all.retries, all.model.as_str(), all.max_message_bytes), (0, "m", 4096));
        assert_eq!((all.embed_input.as_str(), all.embed_output.as_str()), ("in", "out"));
        assert_eq!(all.ca_file.as_deref(), Some(Path::new("/b/ca.pem")));
        assert!(cfg(json!({ "remote": null })).unwrap().is_none());
        // CUDA_ENGINE_OPTIONS / --options take the same JSON.
        let text = r#"{"remote":{"endpoints":"grpc://127.0.0.1:9","retries":1}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(cfg(v).unwrap().unwrap().retries, 1);
    }

    #[test]
    fn index_options_apply_defaults_and_name_bad_keys() {
        let c = IndexOptions::from_json(&json!({ "dims": 384 })).and_then(IndexOptions::into_config).unwrap();
        assert_eq!((c.dims, c.metric, c.dtype, c.capacity), (384, Metric::Cosine, VectorDtype::F16, 1024));
        assert_eq!(c.max_bytes, DEFAULT_INDEX_MAX_BYTES);
        let e = |v: Value| IndexOptions::from_json(&v).and_then(IndexOptions::into_config).unwrap_err().message;
        assert!(e(json!({ "dims": 4, "metrik": "ip" })).contains("did you mean `metric`"));
        assert!(e(json!({ "dims": 4, "metric": "dot" })).contains("`options.metric` must be"));
        assert!(e(json!({ "dims": 0 })).contains("`options.dims`"));
        assert!(e(json!({ "metric": "ip" })).contains("`options.dims` is required"));
        assert!(e(json!({ "dims": 4, "dtype": "bf16" })).contains("`options.dtype`"));
        assert!(e(json!({ "dims": 4, "device": "gpu" })).contains("`options.device`"));
        assert!(e(json!({ "dims": "4" })).contains("`options.dims`"));
    }

    #[test]
    fn millis_bounds() {
        assert!(millis(1e300, "timeoutMs").unwrap_err().message.contains("`timeoutMs`"));
        assert!(millis(f64::NAN, "timeoutMs").is_err() && millis(-1.0, "timeoutMs").is_err());
        assert_eq!(millis(1500.0, "x").unwrap(), Duration::from_millis(1500));
    }
}
