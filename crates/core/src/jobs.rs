//! Job types and the result shape shared by `submit`, the worker protocol and
//! the HTTP service.

use serde::Serialize;
use serde_json::Value;

/// What a job's `result` holds: JSON, or raw bytes (echo of a raw payload,
/// worker replies carrying bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutput {
    Json(Value),
    Bytes(Vec<u8>),
}

/// Where a job ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Cuda,
    Worker,
    /// A remote Open Inference Protocol server (`EngineOptions.remote`).
    Remote,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Worker => "worker",
            BackendKind::Remote => "remote",
        }
    }
}

/// Milliseconds spent in each stage of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub decode: f64,
    pub queue: f64,
    pub run: f64,
    pub total: f64,
}

/// A successful job (DESIGN.md "Job result"). Failures are `CoreError`s.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub id: Option<String>,
    /// The canonical job type (`embedding`, `inference`, `echo`, or the
    /// caller's own type when a worker ran it).
    pub job_type: String,
    pub backend: BackendKind,
    pub output: JobOutput,
    /// `json`, `raw`, `cbor` or `msgpack`: how the payload arrived (echo) or
    /// how the result is encoded.
    pub encoding: &'static str,
    pub timings: Timings,
}

impl JobResult {
    /// The wire form (snake_case JSON). Bytes become `result_b64` so JSON
    /// clients (HTTP, Go) can carry them.
    pub fn to_json(&self) -> Value {
        use base64::Engine as _;
        let mut obj = serde_json::Map::new();
        if let Some(id) = &self.id {
            obj.insert("id".into(), Value::String(id.clone()));
        }
        obj.insert("type".into(), Value::String(self.job_type.clone()));
        obj.insert("ok".into(), Value::Bool(true));
        obj.insert("backend".into(), Value::String(self.backend.as_str().into()));
        obj.insert("encoding".into(), Value::String(self.encoding.into()));
        match &self.output {
            JobOutput::Json(v) => {
                obj.insert("result".into(), v.clone());
            }
            JobOutput::Bytes(b) => {
                obj.insert("result_b64".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(b)));
            }
        }
        obj.insert("timings_ms".into(), serde_json::to_value(self.timings).unwrap_or(Value::Null));
        Value::Object(obj)
    }
}

/// Job types the engine knows. Aliases map to one canonical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobType {
    Echo,
    Embedding,
    Inference,
    /// Search a named vector index of the engine (docs/vector-search.md).
    VectorSearch,
    /// Anything else: only a worker can run it.
    Other(String),
}

impl JobType {
    pub fn parse(name: &str) -> JobType {
        match name {
            "echo" => JobType::Echo,
            "embedding" | "embed" => JobType::Embedding,
            "inference" | "infer" => JobType::Inference,
            "vector_search" | "search" => JobType::VectorSearch,
            other => JobType::Other(other.to_string()),
        }
    }

    pub fn canonical(&self) -> &str {
        match self {
            JobType::Echo => "echo",
            JobType::Embedding => "embedding",
            JobType::Inference => "inference",
            JobType::VectorSearch => "vector_search",
            JobType::Other(s) => s,
        }
    }
}

/// Where the caller asked a job to run (`CallOptions.target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    #[default]
    Auto,
    Local,
    Worker,
    /// The remote servers of `EngineOptions.remote` (docs/grpc.md "Client").
    Remote,
}

impl Target {
    /// Every name `parse` accepts, for error messages.
    pub const NAMES: &'static str = "'auto', 'local', 'worker' or 'remote'";

    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "auto" => Some(Target::Auto),
            "local" => Some(Target::Local),
            "worker" => Some(Target::Worker),
            "remote" => Some(Target::Remote),
            _ => None,
        }
    }
}
