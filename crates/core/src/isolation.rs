//! `isolation: 'process'` (docs/reliability.md "Fault isolation"): the model
//! runs in a supervised `cuda-worker --serve --preload --options JSON` (the
//! same engine, the persistent worker protocol), so a segfault, an abort, a
//! sticky CUDA error or a hung driver call costs a restart of that process
//! instead of this one.
//!
//! - `embed` goes as an `embedding` request with `"vectors":"f32"`; the
//!   vectors come back as raw little-endian f32 bytes in one binary frame
//!   (no JSON numbers either way but the texts).
//! - `submit` jobs that run locally (`echo`, `embedding`, `inference`) and
//!   `infer` go as ordinary requests (envelopes, the protocol's binary frames
//!   for raw-byte payloads).
//! - Supervision is the persistent pool's: a dead process fails the jobs in
//!   flight on it at once (`E_WORKER_EXIT`, with its signal and stderr tail)
//!   and is restarted; a job unanswered at its timeout with the process
//!   silent since kills and restarts it (`E_WORKER_TIMEOUT`); an
//!   `E_CUDA_FAULT` answer kills and restarts it (its other jobs in flight
//!   fail with `E_CUDA_FAULT`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::embedder::EmbedOptions;
use crate::envelope::Envelope;
use crate::err;
use crate::error::{CoreError, Result};
use crate::jobs::{BackendKind, JobOutput, JobResult};
use crate::options::{Isolation, IsolationConfig};
use crate::worker::{protocol, Worker, WorkerConfig, WorkerMode};

/// The job timeout when the call gives none: long enough for the largest
/// CPU batch, short enough that a hung process is replaced. A job times out
/// with `E_WORKER_TIMEOUT`; the process is killed only if it wrote nothing
/// since the job was sent.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest reply accepted from the isolated process (one frame).
const MAX_REPLY_BYTES: usize = 1 << 30;
/// How long `health()` waits for the isolated process's own report.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The isolated process's own health report, as it last gave it.
struct LastHealth {
    pid: u32,
    report: Value,
}

/// The supervisor of the isolated process.
pub struct Isolated {
    worker: Worker,
    last: Mutex<Option<LastHealth>>,
}

/// `health().isolation`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IsolationHealth {
    /// `in-process` or `process`.
    pub mode: Isolation,
    /// The `cuda-worker` binary (null in-process).
    pub path: Option<String>,
    /// Whether the isolated process is up.
    pub running: bool,
    /// Its pid (null when none is up, and in-process).
    pub pid: Option<u32>,
    /// How many times it was restarted (crashes, hangs, sticky faults).
    pub restarts: u64,
    /// Calls waiting for its answer.
    pub in_flight: usize,
    /// Its own `health()` report (the same shape, with `isolation.mode`
    /// `in-process`): backend, model, compute, queue; null until it answered
    /// one (it is asked each time `health()` is called, for at most 2 s).
    pub health: Option<Value>,
}

impl IsolationHealth {
    pub fn in_process() -> IsolationHealth {
        IsolationHealth {
            mode: Isolation::InProcess,
            path: None,
            running: false,
            pid: None,
            restarts: 0,
            in_flight: 0,
            health: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Isolated {
    /// Resolve the binary (`E_WORKER_NOT_FOUND` names where it looked) and,
    /// inside a tokio runtime, start the process in the background so its
    /// cold start overlaps the caller's own start-up.
    pub fn new(cfg: &IsolationConfig, base_dir: &std::path::Path) -> Result<Isolated> {
        let mut w = WorkerConfig::new(base_dir, WorkerMode::Persistent);
        w.path = cfg.path.clone();
        let options = serde_json::to_string(&cfg.options)
            .map_err(|e| CoreError::internal(format!("encoding the isolated process's options: {e}")))?;
        w.args = vec!["--serve".into(), "--preload".into(), "--options".into(), options];
        w.timeout = DEFAULT_JOB_TIMEOUT;
        w.max_output_bytes = MAX_REPLY_BYTES;
        w.env = cfg.env.clone();
        w.recycle_on_cuda_fault = true;
        let worker = Worker::new(w).map_err(|e| {
            if e.code == crate::ErrorCode::WorkerNotFound {
                err!(WorkerNotFound, "`isolation: 'process'` needs the cuda-worker binary: {}", e.message)
            } else {
                e
            }
        })?;
        worker.warm();
        Ok(Isolated { worker, last: Mutex::new(None) })
    }

    pub fn path(&self) -> PathBuf {
        self.worker.path().to_path_buf()
    }

    /// Embed in the isolated process; the vectors come back as raw f32.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        opts: EmbedOptions,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let n = texts.len();
        let build = |id| protocol::encode_embed_f32_request(id, &texts, opts.normalize, opts.truncate);
        match self.worker.run_wire(build, timeout, cancel).await? {
            (JobOutput::Bytes(b), _) => protocol::vectors_from_f32_bytes(&b, n),
            (JobOutput::Json(v), _) => Err(err!(
                WorkerProtocol,
                "the isolated process answered an f32 embedding with JSON ({}), not raw vectors",
                crate::envelope::json_kind(&v)
            )),
        }
    }

    /// Run a job there. The result's `backend` is the isolated engine's
    /// (`cpu`/`cuda`), as its last health report says.
    pub async fn run(&self, env: &Envelope, timeout: Option<Duration>, cancel: CancellationToken) -> Result<JobResult> {
        let mut result = self.worker.run(env, timeout, cancel).await?;
        result.backend = self.backend().unwrap_or(BackendKind::Cpu);
        Ok(result)
    }

    /// The isolated engine's backend, from its last health report.
    pub fn backend(&self) -> Option<BackendKind> {
        let last = lock(&self.last);
        match last.as_ref()?.report.get("backend")?.as_str()? {
            "cuda" => Some(BackendKind::Cuda),
            _ => Some(BackendKind::Cpu),
        }
    }

    /// Ask the isolated process for its health report (at most `wait`); it
    /// is kept for [`Isolated::health`]. Does nothing when no process is up
    /// (it is not started for this).
    pub async fn refresh_health(&self, wait: Duration) {
        let h = self.worker.health();
        let Some(&pid) = h.pids.first() else { return };
        // Waiting is bounded here, not by the job timeout: a health query
        // that is slow to answer must never get a busy process killed.
        let query = self.worker.run_wire(
            |id| Ok(protocol::encode_health_request(id)),
            Some(DEFAULT_JOB_TIMEOUT),
            CancellationToken::new(),
        );
        let reply = tokio::time::timeout(wait, query);
        if let Ok(Ok((JobOutput::Json(report), _))) = reply.await {
            *lock(&self.last) = Some(LastHealth { pid, report });
        }
    }

    pub fn health(&self) -> IsolationHealth {
        let h = self.worker.health();
        let pid = h.pids.first().copied();
        let last = lock(&self.last);
        // A report from a process that is gone describes nothing now.
        let report = last.as_ref().filter(|l| Some(l.pid) == pid).map(|l| l.report.clone());
        IsolationHealth {
            mode: Isolation::Process,
            path: Some(h.path),
            running: h.running,
            pid,
            restarts: h.restarts,
            in_flight: h.in_flight,
            health: report,
        }
    }

    /// Close the process's stdin (it exits once its jobs answered), give it
    /// 2 s, then kill its group; returns once it is reaped.
    pub async fn shutdown(&self) {
        self.worker.shutdown().await;
    }
}
