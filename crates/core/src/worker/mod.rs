//! The external worker adapter: runs jobs in a `cuda-worker` process (or any
//! program speaking docs/worker-protocol.md) and supervises it.
//!
//! - `oneshot`: one process per job (the legacy `cuda-worker.exe` contract).
//! - `persistent`: a pool of long-lived processes, NDJSON with request ids.
//! - `protocol`: the wire format, shared with the `cuda-worker` binary.
//! - `process`: process groups, kill + reap, the stderr tail.
//!
//! Every failure maps to a stable code: `E_WORKER_NOT_FOUND`,
//! `E_WORKER_SPAWN`, `E_WORKER_TIMEOUT`, `E_WORKER_EXIT`,
//! `E_WORKER_PROTOCOL`, `E_OUTPUT_LIMIT`, `E_CANCELLED`.

mod oneshot;
mod persistent;
mod process;
pub mod protocol;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use protocol::BinaryFormat;

use crate::discovery::{self, DiscoveryEnv, WorkerSource};
use crate::envelope::Envelope;
use crate::err;
use crate::error::{CoreError, Result};
use crate::jobs::{BackendKind, JobResult, JobType, Timings};

/// How jobs reach the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerMode {
    /// One process per job: request on stdin, one response on stdout.
    Oneshot,
    /// Long-lived processes (`pool_size` of them), NDJSON with request ids.
    Persistent,
}

impl WorkerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Oneshot => "oneshot",
            WorkerMode::Persistent => "persistent",
        }
    }
}

/// Worker configuration (`EngineOptions.worker` in JS).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker binary; None = discovery (docs/discovery.md). Relative
    /// paths resolve against `base_dir`.
    pub path: Option<PathBuf>,
    /// Base directory for discovery and relative paths.
    pub base_dir: PathBuf,
    pub mode: WorkerMode,
    /// Arguments passed to the worker, exactly (no shell). `WorkerConfig::new`
    /// and `from_json` default them to `["--serve"]` in persistent mode
    /// (the `cuda-worker` convention) and `[]` in one-shot mode.
    pub args: Vec<String>,
    /// Job timeout when the call gives none.
    pub timeout: Duration,
    /// Largest response accepted (one-shot: all of stdout; persistent: one
    /// line or frame). Over it: kill + `E_OUTPUT_LIMIT`.
    pub max_output_bytes: usize,
    /// How much of the stderr tail is kept for logs and error messages.
    pub max_stderr_bytes: usize,
    /// Persistent mode: number of worker processes.
    pub pool_size: usize,
    /// Encoding of binary frames (raw-byte payloads).
    pub binary_format: BinaryFormat,
    /// Linux: make this process a child subreaper so helpers a worker forks
    /// and abandons can be reaped (see docs/worker-protocol.md "Processes").
    /// Process-wide, so off by default.
    pub reap_orphans: bool,
    /// The environment discovery reads; None = this process's.
    pub discovery_env: Option<DiscoveryEnv>,
    /// Persistent mode: restart delay after a death with no job answered
    /// since the last one; doubles per such death up to `max_restart_delay`.
    pub restart_delay: Duration,
    pub max_restart_delay: Duration,
    /// Variables added to the worker's environment (it inherits this
    /// process's). Rust API only: no option sets it, so nothing a JS, HTTP
    /// or gRPC caller sends reaches a worker's environment. Tests use it to
    /// give one worker `CUDA_ENGINE_FAULT_INJECT` (docs/reliability.md).
    pub env: Vec<(String, String)>,
    /// Persistent mode: a job answered with `E_CUDA_FAULT` kills and
    /// restarts the process that answered it (a sticky CUDA error poisons
    /// a process's context for good). On for `isolation: 'process'`.
    pub recycle_on_cuda_fault: bool,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_STDERR_BYTES: usize = 64 * 1024;
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(50);
pub const DEFAULT_MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// Persistent worker processes at most (`worker.poolSize`).
pub const MAX_POOL_SIZE: usize = 64;

impl WorkerConfig {
    /// Defaults: discovery, the given mode's default args, 30 s timeout,
    /// 64 MiB output, 64 KiB stderr tail, one process, CBOR frames.
    pub fn new(base_dir: impl Into<PathBuf>, mode: WorkerMode) -> WorkerConfig {
        WorkerConfig {
            path: None,
            base_dir: base_dir.into(),
            mode,
            args: default_args(mode),
            timeout: DEFAULT_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_stderr_bytes: DEFAULT_MAX_STDERR_BYTES,
            pool_size: 1,
            binary_format: BinaryFormat::Cbor,
            reap_orphans: false,
            discovery_env: None,
            restart_delay: DEFAULT_RESTART_DELAY,
            max_restart_delay: DEFAULT_MAX_RESTART_DELAY,
            env: Vec::new(),
            recycle_on_cuda_fault: false,
        }
    }
}

fn default_args(mode: WorkerMode) -> Vec<String> {
    match mode {
        WorkerMode::Oneshot => Vec::new(),
        WorkerMode::Persistent => vec!["--serve".to_string()],
    }
}

/// `health().worker`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerHealth {
    pub path: String,
    /// Which discovery rule found it; null when `worker.path` named it.
    pub source: Option<WorkerSource>,
    pub mode: WorkerMode,
    /// Persistent: a worker process is up. One-shot: a job's process is.
    pub running: bool,
    pub restarts: u64,
    pub in_flight: usize,
    /// Pids of the live persistent workers (for operators; empty one-shot).
    pub pids: Vec<u32>,
}

pub(crate) struct Shared {
    pub(crate) cfg: WorkerConfig,
    pub(crate) path: PathBuf,
    pub(crate) source: Option<WorkerSource>,
    pub(crate) oneshot_running: AtomicUsize,
    pub(crate) shutdown: AtomicBool,
}

/// The supervisor. `Send + Sync`; share it behind an `Arc`.
pub struct Worker {
    shared: Arc<Shared>,
    pool: Option<persistent::Pool>,
    in_flight: AtomicUsize,
}

/// Resolve the worker binary: the configured path, or discovery.
fn resolve(cfg: &WorkerConfig) -> Result<(PathBuf, Option<WorkerSource>)> {
    match &cfg.path {
        Some(p) => {
            let abs = cfg.base_dir.join(p);
            if discovery::is_executable(&abs) {
                Ok((abs, None))
            } else {
                let why = if abs.exists() { "is not an executable file" } else { "does not exist" };
                Err(err!(WorkerNotFound, "worker.path {} ({}) {why}", p.display(), abs.display()))
            }
        }
        None => {
            let env = cfg.discovery_env.clone().unwrap_or_else(DiscoveryEnv::from_process);
            discovery::find_worker(&cfg.base_dir, &env).map(|(p, s)| (p, Some(s)))
        }
    }
}

impl Worker {
    /// Resolve the binary (`E_WORKER_NOT_FOUND`). Persistent workers start
    /// lazily on the first job, so this needs no runtime.
    pub fn new(cfg: WorkerConfig) -> Result<Self> {
        if cfg.pool_size == 0 || cfg.pool_size > MAX_POOL_SIZE {
            return Err(err!(InvalidArg, "`worker.poolSize` must be in 1..={MAX_POOL_SIZE}, got {}", cfg.pool_size));
        }
        let (path, source) = resolve(&cfg)?;
        if cfg.reap_orphans {
            process::enable_subreaper();
        }
        let mode = cfg.mode;
        let shared = Arc::new(Shared {
            cfg,
            path,
            source,
            oneshot_running: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let pool = (mode == WorkerMode::Persistent).then(|| persistent::Pool::new(&shared));
        Ok(Worker { shared, pool, in_flight: AtomicUsize::new(0) })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.shared.cfg
    }

    /// Run one job. `timeout` overrides the configured one. Dropping the
    /// returned future cleans up like a cancellation (one-shot: the process
    /// group is killed and reaped; persistent: the job is withdrawn).
    pub async fn run(&self, env: &Envelope, timeout: Option<Duration>, cancel: CancellationToken) -> Result<JobResult> {
        let started = Instant::now();
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(err!(WorkerExit, "the worker {} is shut down", self.shared.path.display()));
        }
        if cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _g = Counter(&self.in_flight);
        let timeout = timeout.unwrap_or(self.shared.cfg.timeout);
        let job = JobType::parse(&env.job_type);
        let job_type = job.canonical();
        let (output, encoding) = match &self.pool {
            Some(pool) => pool.run(env, job_type, timeout, &cancel).await?,
            None => {
                let wire = protocol::encode_request(env, job_type, None, self.shared.cfg.binary_format)?;
                oneshot::run(&self.shared, wire, timeout, &cancel).await?
            }
        };
        let run_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(JobResult {
            id: env.id.clone(),
            job_type: job_type.to_string(),
            backend: BackendKind::Worker,
            output,
            encoding,
            timings: Timings { run: run_ms, total: run_ms, ..Timings::default() },
        })
    }

    /// Persistent mode: run one request that `build` encodes (a whole line
    /// or frame) for the wire id it is given, under the same supervision as
    /// [`Worker::run`] (timeout, cancellation, restart). For requests that
    /// envelopes cannot express: the engine's isolated process
    /// (`isolation: 'process'`) takes `f32` embedding replies and `health`.
    pub async fn run_wire(
        &self,
        build: impl FnOnce(u64) -> Result<Vec<u8>>,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<(crate::jobs::JobOutput, &'static str)> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(err!(WorkerExit, "the worker {} is shut down", self.shared.path.display()));
        }
        if cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let Some(pool) = &self.pool else {
            return Err(CoreError::internal("Worker::run_wire needs a persistent worker"));
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _g = Counter(&self.in_flight);
        pool.run_wire(build, timeout.unwrap_or(self.shared.cfg.timeout), &cancel).await
    }

    /// Persistent mode: start the first process now, in the background, so
    /// the first job does not wait for it. No-op without a tokio runtime.
    pub fn warm(&self) {
        if let Some(pool) = &self.pool {
            pool.warm();
        }
    }

    pub fn health(&self) -> WorkerHealth {
        let (running, restarts, pids) = match &self.pool {
            Some(p) => (p.running(), p.restarts(), p.pids()),
            None => (self.shared.oneshot_running.load(Ordering::Acquire) > 0, 0, Vec::new()),
        };
        WorkerHealth {
            path: self.shared.path.display().to_string(),
            source: self.shared.source,
            mode: self.shared.cfg.mode,
            running,
            restarts,
            in_flight: self.in_flight.load(Ordering::Acquire),
            pids,
        }
    }

    /// Stop: persistent workers get their stdin closed and 2 s to exit, then
    /// their groups are killed; returns when all are reaped. Later `run`s
    /// fail with `E_WORKER_EXIT`. Idempotent.
    /// Persistent mode: how many processes were started after the first.
    pub fn restarts(&self) -> u64 {
        self.pool.as_ref().map_or(0, |p| p.restarts())
    }

    /// Whether [`Worker::shutdown`] was called (no job runs any more).
    pub fn is_shut_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    pub async fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some(pool) = &self.pool {
            pool.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Without `shutdown`, at least make sure no worker outlives us. The
        // waiter tasks (if the runtime is alive) reap them.
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some(pool) = &self.pool {
            pool.kill_all();
        }
    }
}

struct Counter<'a>(&'a AtomicUsize);

impl Drop for Counter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_explicit_path_names_the_field() {
        let mut c = WorkerConfig::new("/nonexistent-base", WorkerMode::Oneshot);
        c.path = Some(PathBuf::from("nope"));
        let e = Worker::new(c).err().unwrap();
        assert_eq!(e.code, crate::error::ErrorCode::WorkerNotFound);
        assert!(e.message.contains("worker.path") && e.message.contains("/nonexistent-base/nope"), "{}", e.message);
    }
}
