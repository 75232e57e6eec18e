//! The `health()` report (docs/design.md "Health"). Wire form: snake_case
//! JSON, typed here so the shape cannot drift.

use serde::Serialize;
use serde_json::Value;

use crate::backend::BackendStatus;
use crate::device::DeviceInfo;
use crate::discovery::WorkerSource;
use crate::embedder::ModelInfo;
use crate::grpc::client::RemoteHealth;
use crate::isolation::IsolationHealth;
use crate::jobs::BackendKind;
use crate::worker::{WorkerHealth, WorkerMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Serving as configured (a CPU-only host that chose the CPU is `ok`).
    Ok,
    /// Serving, but something asked for or present failed: a GPU present but
    /// unusable, a model that failed to load, a persistent worker that is down.
    Degraded,
    /// A fault that stops serving (poisoned CUDA context, closed engine).
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueHealth {
    /// Texts waiting for a forward pass.
    pub depth: usize,
    /// Calls admitted and not yet finished (queued or running).
    pub in_flight: usize,
}

/// `health().worker`: the configured worker, or what discovery would pick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStatus {
    pub path: Option<String>,
    /// Which discovery rule found it; null when `worker.path` named it.
    pub source: Option<WorkerSource>,
    /// Null until a worker is configured or first used.
    pub mode: Option<WorkerMode>,
    pub running: bool,
    pub restarts: u64,
    pub in_flight: usize,
    /// Pids of the live persistent workers.
    pub pids: Vec<u32>,
}

impl From<WorkerHealth> for WorkerStatus {
    fn from(h: WorkerHealth) -> Self {
        WorkerStatus {
            path: Some(h.path),
            source: h.source,
            mode: Some(h.mode),
            running: h.running,
            restarts: h.restarts,
            in_flight: h.in_flight,
            pids: h.pids,
        }
    }
}

impl WorkerStatus {
    /// No worker yet: the one discovery would use, if any.
    pub fn discovered(found: Option<(std::path::PathBuf, WorkerSource)>) -> Self {
        WorkerStatus {
            path: found.as_ref().map(|(p, _)| p.display().to_string()),
            source: found.map(|(_, s)| s),
            mode: None,
            running: false,
            restarts: 0,
            in_flight: 0,
            pids: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub status: Status,
    pub version: &'static str,
    pub cuda_available: bool,
    /// The backend that local embedding jobs use: `cuda` or `cpu`.
    pub backend: BackendKind,
    /// Every worker candidate discovery checked, in order.
    pub cuda_path: Vec<String>,
    pub worker: WorkerStatus,
    pub devices: Vec<DeviceInfo>,
    /// The loaded model; null until one is loaded (and when none is found).
    pub model: Option<ModelInfo>,
    /// The compute backend of the loaded model: device, dtype, device memory
    /// held (weights + workspaces, bytes), passes/tokens run, fault. Null
    /// until a model is loaded.
    pub compute: Option<BackendStatus>,
    pub queue: QueueHealth,
    /// Where the model runs (`isolation`), and with `'process'` the isolated
    /// process: pid, restarts, its own report (docs/design.md "Health").
    pub isolation: IsolationHealth,
    /// The engine's named vector indexes: name, dims, metric, dtype,
    /// device, count, capacity, bytes, namespaces.
    pub indexes: Vec<IndexHealth>,
    /// `EngineOptions.remote`: its endpoints with the outcome of the last
    /// `ServerReady` probe (made by `health()`), the remote model, calls in
    /// flight, calls and failures so far, the last failure. Null without a
    /// remote.
    pub remote: Option<RemoteHealth>,
    /// Human-readable reasons for `degraded` / `error`, and notes such as why
    /// CUDA is unavailable.
    pub errors: Vec<String>,
}

/// One named vector index in [`Health`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IndexHealth {
    pub name: String,
    #[serde(flatten)]
    pub info: crate::vector::IndexInfo,
}

impl Health {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
