//! The `health()` report (DESIGN.md "Health"). Wire form: snake_case JSON.

use serde::Serialize;
use serde_json::Value;

use crate::device::DeviceInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Everything configured works.
    Ok,
    /// Serving, but something asked for is missing (e.g. CUDA requested as
    /// `auto` and unavailable, a worker that cannot be found).
    Degraded,
    /// A fault that stops serving (poisoned CUDA context, closed engine).
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueHealth {
    /// Requests waiting to run.
    pub depth: usize,
    /// Requests admitted and not yet finished (queued or running).
    pub in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub status: Status,
    pub version: &'static str,
    pub cuda_available: bool,
    /// The backend that local embedding jobs use: `cuda` or `cpu`.
    pub backend: &'static str,
    /// Every worker candidate discovery checked, in order.
    pub cuda_path: Vec<String>,
    /// Worker state: `{path, source, mode, running, restarts}` (nulls when no worker).
    pub worker: Value,
    pub devices: Vec<DeviceInfo>,
    /// `{name, dims, max_tokens}` of the loaded model, null until one is loaded.
    pub model: Value,
    /// The compute backend of the loaded model: device, dtype, device memory
    /// held (weights + workspaces, bytes), passes/tokens run, fault. Null
    /// until a model is loaded.
    pub compute: Value,
    pub queue: QueueHealth,
    /// Human-readable reasons for `degraded` / `error`, and notes such as why
    /// CUDA is unavailable.
    pub errors: Vec<String>,
}

impl Health {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
