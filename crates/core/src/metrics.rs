//! Engine metrics (docs/metrics.md): lock-free counters and fixed-bucket
//! histograms, read as Prometheus text (exposition format 0.0.4) or as the
//! typed [`MetricsReport`] (JSON). A leaf over `error` and `jobs`: the engine
//! records every call ([`Metrics::start`]), the batcher every forward pass
//! ([`PassMetrics::record_pass`]); gauges (queue, worker, GPU memory,
//! indexes) are read by the engine when a report is asked for
//! ([`Metrics::report`]), so reading metrics costs only atomic loads.
//!
//! Memory is bounded: every label comes from a closed set. Call and job
//! types are the 8 known names plus at most [`MAX_DYNAMIC_TYPES`] worker job
//! types (each at most 64 characters of `[A-Za-z0-9_.:-]`); anything beyond
//! is `other`. Error codes are the [`ErrorCode`] table, backends 5 names.
//! Everything is allocated once, at engine open (about 80 KB).

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::error::ErrorCode;
use crate::jobs::{BackendKind, JobType};

/// Call and job type labels known in advance, by slot.
const KNOWN_TYPES: [&str; 8] =
    ["embed", "infer", "search", "echo", "embedding", "inference", "vector_search", "unknown"];
/// Most distinct worker job types (`submit` of a type only a worker runs)
/// that get their own label; later ones count as `other`.
pub const MAX_DYNAMIC_TYPES: usize = 64;
const MAX_TYPE_LEN: usize = 64;
const OTHER: &str = "other";
const TYPE_SLOTS: usize = KNOWN_TYPES.len() + MAX_DYNAMIC_TYPES + 1;
const OTHER_SLOT: usize = TYPE_SLOTS - 1;
const CODES: usize = ErrorCode::ALL.len();

/// Request duration buckets, nanoseconds (0.1 ms .. 60 s).
const DURATION_BOUNDS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];
/// Sequences per forward pass (`maxBatchSize` defaults to 1,024).
const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Tokens per forward pass (`maxBatchTokens` defaults to 16,384).
const BATCH_TOKEN_BOUNDS: &[u64] = &[16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

/// What ran a call: the `backend` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunBackend {
    Cpu = 0,
    Cuda = 1,
    Worker = 2,
    Remote = 3,
    /// The isolated process (`isolation: 'process'`).
    Process = 4,
}

const BACKENDS: [&str; 5] = ["cpu", "cuda", "worker", "remote", "process"];

impl RunBackend {
    pub fn as_str(self) -> &'static str {
        BACKENDS[self as usize]
    }

    /// A model backend's name (`Backend::name`): `cuda`, else the CPU.
    pub fn of_model(name: &str) -> RunBackend {
        if name == "cuda" {
            RunBackend::Cuda
        } else {
            RunBackend::Cpu
        }
    }
}

impl From<BackendKind> for RunBackend {
    fn from(b: BackendKind) -> Self {
        match b {
            BackendKind::Cpu => RunBackend::Cpu,
            BackendKind::Cuda => RunBackend::Cuda,
            BackendKind::Worker => RunBackend::Worker,
            BackendKind::Remote => RunBackend::Remote,
        }
    }
}

/// The `type` label of a call.
#[derive(Debug, Clone, Copy)]
pub enum CallType<'a> {
    Embed,
    Infer,
    /// `engine.search`.
    Search,
    /// `submit`, with the envelope's job type (aliases resolved).
    Job(&'a JobType),
    /// `submit` whose envelope was not decoded (or refused before decoding).
    Unknown,
}

/// Fixed-bucket histograms, `series` of them with the same bounds. Each
/// observation increments one (non-cumulative) bucket and the sum; reports
/// make the buckets cumulative and take `_count` as their total, so `+Inf`
/// and `_count` always agree. Values are integers (ns, sequences, tokens):
/// sums are exact.
struct HistogramVec {
    bounds: &'static [u64],
    /// Units per reported unit (1e9 for ns → seconds).
    scale: f64,
    /// `series × (bounds + 1)`: the last bucket of a series is above every bound.
    counts: Box<[AtomicU64]>,
    sums: Box<[AtomicU64]>,
}

impl HistogramVec {
    fn new(bounds: &'static [u64], scale: f64, series: usize) -> Self {
        let counts = (0..series * (bounds.len() + 1)).map(|_| AtomicU64::new(0)).collect();
        let sums = (0..series).map(|_| AtomicU64::new(0)).collect();
        HistogramVec { bounds, scale, counts, sums }
    }

    fn observe(&self, series: usize, v: u64) {
        // `le` is inclusive: the first bound >= v.
        let bucket = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get(series * (self.bounds.len() + 1) + bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(s) = self.sums.get(series) {
            s.fetch_add(v, Ordering::Relaxed);
        }
    }

    fn count(&self, series: usize) -> u64 {
        let w = self.bounds.len() + 1;
        self.counts[series * w..(series + 1) * w].iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn snapshot(&self, series: usize) -> HistogramSnapshot {
        let w = self.bounds.len() + 1;
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[series * w + i].load(Ordering::Relaxed);
            buckets.push(Bucket { le: bound as f64 / self.scale, count: cumulative });
        }
        cumulative += self.counts[series * w + self.bounds.len()].load(Ordering::Relaxed);
        let sum = self.sums[series].load(Ordering::Relaxed) as f64 / self.scale;
        HistogramSnapshot { count: cumulative, sum, buckets }
    }
}

/// A histogram as reported: cumulative buckets (finite bounds only; the
/// `+Inf` bucket is `count`), the sum and the count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum: f64,
    pub buckets: Vec<Bucket>,
}

/// Observations `<= le`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub le: f64,
    pub count: u64,
}

/// What the batcher records for each forward pass; shared by the engine's
/// [`Metrics`] and its embedder, so the numbers outlive a closed model.
pub struct PassMetrics {
    batch_size: HistogramVec,
    batch_tokens: HistogramVec,
    /// Per [`RunBackend`] (only `cpu` and `cuda` run passes).
    passes: [AtomicU64; 2],
}

impl Default for PassMetrics {
    fn default() -> Self {
        PassMetrics {
            batch_size: HistogramVec::new(BATCH_SIZE_BOUNDS, 1.0, 1),
            batch_tokens: HistogramVec::new(BATCH_TOKEN_BOUNDS, 1.0, 1),
            passes: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

impl PassMetrics {
    /// One forward pass of `seqs` sequences and `tokens` tokens on
    /// `backend` (a model backend: `cpu` or `cuda`).
    pub fn record_pass(&self, backend: RunBackend, seqs: usize, tokens: usize) {
        self.batch_size.observe(0, seqs as u64);
        self.batch_tokens.observe(0, tokens as u64);
        let i = usize::from(backend == RunBackend::Cuda);
        self.passes[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The engine's counters and histograms.
pub struct Metrics {
    requests: Box<[AtomicU64]>,
    /// `TYPE_SLOTS × CODES`.
    errors: Box<[AtomicU64]>,
    /// One series per (type slot, backend).
    latency: HistogramVec,
    /// The worker job types seen, in slot order (set once each, never removed).
    dynamic: Box<[OnceLock<Box<str>>]>,
    passes: Arc<PassMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: (0..TYPE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            errors: (0..TYPE_SLOTS * CODES).map(|_| AtomicU64::new(0)).collect(),
            latency: HistogramVec::new(DURATION_BOUNDS_NS, 1e9, TYPE_SLOTS * BACKENDS.len()),
            dynamic: (0..MAX_DYNAMIC_TYPES).map(|_| OnceLock::new()).collect(),
            passes: Arc::new(PassMetrics::default()),
        }
    }

    /// The pass metrics the embedder's batcher records into.
    pub fn passes(&self) -> &Arc<PassMetrics> {
        &self.passes
    }

    /// Start timing a call from `issued` (when the caller made it; None:
    /// now). The type and backend can be refined while it runs; a timer
    /// dropped without [`CallTimer::finish`] (the call's future was dropped)
    /// records the call as `E_CANCELLED`.
    pub fn start(&self, call: CallType<'_>, backend: RunBackend, issued: Option<Instant>) -> CallTimer<'_> {
        CallTimer {
            metrics: self,
            slot: self.slot(call),
            backend,
            started: issued.unwrap_or_else(Instant::now),
            finished: false,
        }
    }

    /// Record one finished call.
    pub fn record(&self, call: CallType<'_>, backend: RunBackend, elapsed: Duration, error: Option<ErrorCode>) {
        self.record_slot(self.slot(call), backend, elapsed, error);
    }

    fn record_slot(&self, slot: usize, backend: RunBackend, elapsed: Duration, error: Option<ErrorCode>) {
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
        if let Some(code) = error {
            if let Some(c) = self.errors.get(slot * CODES + code as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency.observe(slot * BACKENDS.len() + backend as usize, ns);
    }

    fn slot(&self, call: CallType<'_>) -> usize {
        match call {
            CallType::Embed => 0,
            CallType::Infer => 1,
            CallType::Search => 2,
            CallType::Job(JobType::Echo) => 3,
            CallType::Job(JobType::Embedding) => 4,
            CallType::Job(JobType::Inference) => 5,
            CallType::Job(JobType::VectorSearch) => 6,
            CallType::Unknown => 7,
            CallType::Job(JobType::Other(name)) => self.dynamic_slot(name),
        }
    }

    /// The slot of a worker job type: its own while there is room, `other`
    /// for names that are reserved, too long or unusual, or once
    /// [`MAX_DYNAMIC_TYPES`] are taken. Lock-free: slots fill in order and a
    /// lost race re-checks the winner's name, so a name never takes two.
    fn dynamic_slot(&self, name: &str) -> usize {
        let plain = !name.is_empty()
            && name.len() <= MAX_TYPE_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !plain || KNOWN_TYPES.contains(&name) || name == OTHER {
            return OTHER_SLOT;
        }
        for (i, cell) in self.dynamic.iter().enumerate() {
            let taken = match cell.get() {
                Some(n) => n,
                None => {
                    let _ = cell.set(name.into());
                    match cell.get() {
                        Some(n) => n,
                        None => continue,
                    }
                }
            };
            if &**taken == name {
                return KNOWN_TYPES.len() + i;
            }
        }
        OTHER_SLOT
    }

    fn type_name(&self, slot: usize) -> Option<&str> {
        if slot < KNOWN_TYPES.len() {
            Some(KNOWN_TYPES[slot])
        } else if slot == OTHER_SLOT {
            Some(OTHER)
        } else {
            self.dynamic.get(slot - KNOWN_TYPES.len()).and_then(|c| c.get()).map(|n| &**n)
        }
    }

    /// The report: the counters and histograms now, with the gauges the
    /// engine read. Series that never counted anything are left out.
    pub fn report(&self, gauges: Gauges) -> MetricsReport {
        let mut requests = Vec::new();
        let mut errors = Vec::new();
        let mut latency = Vec::new();
        for slot in 0..TYPE_SLOTS {
            let count = self.requests[slot].load(Ordering::Relaxed);
            let Some(name) = self.type_name(slot).filter(|_| count > 0) else { continue };
            requests.push(RequestCount { request_type: name.to_string(), count });
            for (i, code) in ErrorCode::ALL.iter().enumerate() {
                let n = self.errors[slot * CODES + i].load(Ordering::Relaxed);
                if n > 0 {
                    errors.push(ErrorCount { request_type: name.to_string(), code: code.as_str(), count: n });
                }
            }
            for (b, backend) in BACKENDS.iter().enumerate() {
                let series = slot * BACKENDS.len() + b;
                if self.latency.count(series) == 0 {
                    continue;
                }
                let h = self.latency.snapshot(series);
                latency.push(LatencySeries {
                    request_type: name.to_string(),
                    backend,
                    count: h.count,
                    sum_seconds: h.sum,
                    buckets: h.buckets,
                });
            }
        }
        let passes = ["cpu", "cuda"]
            .iter()
            .zip(&self.passes.passes)
            .map(|(backend, n)| PassCount { backend, count: n.load(Ordering::Relaxed) })
            .filter(|p| p.count > 0)
            .collect();
        MetricsReport {
            info: gauges.info,
            requests,
            errors,
            latency,
            queue: gauges.queue,
            batches: Batches { size: self.passes.batch_size.snapshot(0), tokens: self.passes.batch_tokens.snapshot(0) },
            passes,
            gpu_memory_bytes: gauges.gpu_memory_bytes,
            worker: gauges.worker,
            indexes: gauges.indexes,
        }
    }
}

/// The report of an engine that is not open yet (the module-level
/// `metrics()` before the default engine opened): nothing counted.
pub fn unopened_report() -> MetricsReport {
    let info = EngineInfo { version: crate::VERSION.to_string(), backend: RunBackend::Cpu.as_str(), model: None };
    Metrics::new().report(Gauges { info, ..Gauges::default() })
}

/// Times one call; see [`Metrics::start`].
pub struct CallTimer<'m> {
    metrics: &'m Metrics,
    slot: usize,
    backend: RunBackend,
    started: Instant,
    finished: bool,
}

impl CallTimer<'_> {
    /// The call's type, once known (`submit` after decoding).
    pub fn set_type(&mut self, call: CallType<'_>) {
        self.slot = self.metrics.slot(call);
    }

    /// The `backend` label so far.
    pub fn backend(&self) -> RunBackend {
        self.backend
    }

    /// What runs the call, once routed.
    pub fn set_backend(&mut self, backend: RunBackend) {
        self.backend = backend;
    }

    /// Record the call: succeeded (`None`) or failed with `error`.
    pub fn finish(mut self, error: Option<ErrorCode>) {
        self.finished = true;
        self.metrics.record_slot(self.slot, self.backend, self.started.elapsed(), error);
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.record_slot(self.slot, self.backend, self.started.elapsed(), Some(ErrorCode::Cancelled));
        }
    }
}

/// What the engine reads when a report is asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Gauges {
    pub info: EngineInfo,
    pub queue: QueueGauge,
    pub gpu_memory_bytes: Vec<GpuMemory>,
    pub worker: WorkerGauge,
    pub indexes: Vec<IndexGauge>,
}

/// `cuda_engine_info`: constant labels, value 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineInfo {
    pub version: String,
    /// What runs local embedding: `cpu`, `cuda` or `process` (isolated).
    pub backend: &'static str,
    /// The loaded model's name; null until one is loaded.
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueGauge {
    /// Texts waiting for a forward pass.
    pub depth: u64,
    /// Calls admitted and not finished.
    pub in_flight: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuMemory {
    /// The CUDA device index, as a string.
    pub device: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WorkerGauge {
    /// Persistent worker processes replaced so far.
    pub restarts: u64,
    /// Jobs sent to the worker and not answered.
    pub in_flight: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexGauge {
    pub name: String,
    /// Live vectors.
    pub vectors: u64,
    /// Bytes of vector storage.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestCount {
    #[serde(rename = "type")]
    pub request_type: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCount {
    #[serde(rename = "type")]
    pub request_type: String,
    pub code: &'static str,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySeries {
    #[serde(rename = "type")]
    pub request_type: String,
    pub backend: &'static str,
    pub count: u64,
    pub sum_seconds: f64,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Batches {
    /// Sequences per forward pass.
    pub size: HistogramSnapshot,
    /// Tokens per forward pass.
    pub tokens: HistogramSnapshot,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassCount {
    pub backend: &'static str,
    pub count: u64,
}

/// `engine.metrics({ format: 'json' })` (docs/metrics.md "JSON").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsReport {
    pub info: EngineInfo,
    pub requests: Vec<RequestCount>,
    pub errors: Vec<ErrorCount>,
    pub latency: Vec<LatencySeries>,
    pub queue: QueueGauge,
    pub batches: Batches,
    pub passes: Vec<PassCount>,
    pub gpu_memory_bytes: Vec<GpuMemory>,
    pub worker: WorkerGauge,
    pub indexes: Vec<IndexGauge>,
}

/// The text exposition format, built family by family.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for b in &h.buckets {
            let le = fmt_float(b.le);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, b.count);
        }
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count);
        self.sample(&format!("{name}_sum"), labels, fmt_float(h.sum));
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// A float as Prometheus reads it (Rust's shortest round-trip form; never
/// NaN or infinite here).
fn fmt_float(x: f64) -> String {
    format!("{x}")
}

/// Label values: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl MetricsReport {
    /// Prometheus text exposition format 0.0.4 (content type
    /// `text/plain; version=0.0.4`): one block per family, `# HELP` and
    /// `# TYPE` first, ending with a line feed.
    pub fn to_prometheus(&self) -> String {
        let mut t = Text(String::with_capacity(8192));
        t.family("cuda_engine_info", "gauge", "The engine's version, local backend and model (value 1).");
        t.sample(
            "cuda_engine_info",
            &[
                ("version", &self.info.version),
                ("backend", self.info.backend),
                ("model", self.info.model.as_deref().unwrap_or("")),
            ],
            1,
        );
        let n = "cuda_engine_requests_total";
        t.family(n, "counter", "Finished calls (succeeded or failed) by call or job type.");
        for r in &self.requests {
            t.sample(n, &[("type", &r.request_type)], r.count);
        }
        let n = "cuda_engine_errors_total";
        t.family(n, "counter", "Failed calls by call or job type and error code.");
        for e in &self.errors {
            t.sample(n, &[("type", &e.request_type), ("code", e.code)], e.count);
        }
        let n = "cuda_engine_request_duration_seconds";
        t.family(n, "histogram", "Call duration from the call to its outcome, by type and what ran it.");
        for l in &self.latency {
            let h = HistogramSnapshot { count: l.count, sum: l.sum_seconds, buckets: l.buckets.clone() };
            t.histogram(n, &[("type", &l.request_type), ("backend", l.backend)], &h);
        }
        t.family("cuda_engine_queue_depth", "gauge", "Texts waiting for a forward pass.");
        t.sample("cuda_engine_queue_depth", &[], self.queue.depth);
        t.family("cuda_engine_in_flight", "gauge", "Calls admitted and not finished.");
        t.sample("cuda_engine_in_flight", &[], self.queue.in_flight);
        let n = "cuda_engine_batch_size";
        t.family(n, "histogram", "Sequences per model forward pass.");
        t.histogram(n, &[], &self.batches.size);
        let n = "cuda_engine_batch_tokens";
        t.family(n, "histogram", "Tokens per model forward pass.");
        t.histogram(n, &[], &self.batches.tokens);
        let n = "cuda_engine_model_passes_total";
        t.family(n, "counter", "Model forward passes by backend.");
        for p in &self.passes {
            t.sample(n, &[("backend", p.backend)], p.count);
        }
        let n = "cuda_engine_gpu_memory_bytes";
        t.family(n, "gauge", "Device memory held by the engine's model backend (weights and workspaces).");
        for g in &self.gpu_memory_bytes {
            t.sample(n, &[("device", &g.device)], g.bytes);
        }
        t.family("cuda_engine_worker_restarts_total", "counter", "Persistent worker processes replaced.");
        t.sample("cuda_engine_worker_restarts_total", &[], self.worker.restarts);
        t.family("cuda_engine_worker_in_flight", "gauge", "Jobs sent to the external worker and not answered.");
        t.sample("cuda_engine_worker_in_flight", &[], self.worker.in_flight);
        let n = "cuda_engine_index_vectors";
        t.family(n, "gauge", "Live vectors in each named vector index.");
        for i in &self.indexes {
            t.sample(n, &[("index", &i.name)], i.vectors);
        }
        let n = "cuda_engine_index_bytes";
        t.family(n, "gauge", "Bytes of vector storage of each named vector index.");
        for i in &self.indexes {
            t.sample(n, &[("index", &i.name)], i.bytes);
        }
        t.0
    }

    /// The JSON form (snake_case).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    /// (name, labels, value) of one sample line.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reader of the text format for these tests: every line is a
    /// `# HELP` / `# TYPE` comment or `name{labels} value`; label values
    /// unescaped; returns (family types, samples).
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        assert!(text.ends_with('\n'), "the exposition ends with a line feed");
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        let mut seen_family = HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name) = (parts.next().unwrap(), parts.next().unwrap().to_string());
                match kind {
                    "HELP" => {
                        assert!(seen_family.insert(name.clone()), "one block per family: {name} twice");
                        current = name;
                    }
                    "TYPE" => {
                        assert_eq!(name, current, "TYPE follows its HELP");
                        types.insert(name, parts.next().unwrap().to_string());
                    }
                    other => panic!("unexpected comment {other}"),
                }
                continue;
            }
            let (name, rest) = match line.find('{') {
                Some(i) => (&line[..i], &line[i..]),
                None => line.split_at(line.find(' ').expect("a value")),
            };
            assert!(
                name == current
                    || (types[&current] == "histogram"
                        && [format!("{current}_bucket"), format!("{current}_sum"), format!("{current}_count")]
                            .contains(&name.to_string())),
                "sample {name} outside its family block {current}"
            );
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "metric name {name}");
            let mut labels = Vec::new();
            let mut chars = rest.chars().peekable();
            if chars.peek() == Some(&'{') {
                chars.next();
                loop {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated label value") {
                            '\\' => match chars.next() {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                other => panic!("bad escape {other:?} in {line}"),
                            },
                            '"' => break,
                            '\n' => panic!("raw line feed"),
                            c => value.push(c),
                        }
                    }
                    labels.push((key, value));
                    match chars.next() {
                        Some(',') => continue,
                        Some('}') => break,
                        other => panic!("expected , or }} got {other:?} in {line}"),
                    }
                }
            }
            let value: String = chars.collect();
            let value = value.strip_prefix(' ').expect("one space before the value");
            let v = if value == "+Inf" { f64::INFINITY } else { value.parse::<f64>().expect("a float value") };
            samples.push((name.to_string(), labels, v));
        }
        (types, samples)
    }

    fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
    }

    #[test]
    fn histogram_bucket_edges_are_inclusive() {
        let h = HistogramVec::new(&[1, 2, 4], 1.0, 2);
        for v in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(1, v);
        }
        let s = h.snapshot(1);
        let counts: Vec<u64> = s.buckets.iter().map(|b| b.count).collect();
        // <=1: 0,1; <=2: +2; <=4: +3,4; +Inf: +5,100.
        assert_eq!(counts, vec![2, 3, 5]);
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, 115.0);
        assert_eq!(h.snapshot(0).count, 0, "series are separate");
        let d = HistogramVec::new(DURATION_BOUNDS_NS, 1e9, 1);
        d.observe(0, 100_000); // exactly 0.1 ms: in the first bucket
        d.observe(0, 100_001);
        let s = d.snapshot(0);
        assert_eq!((s.buckets[0].le, s.buckets[0].count, s.buckets[1].count), (0.0001, 1, 2));
        assert_eq!(s.buckets.last().map(|b| b.le), Some(60.0));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
        let m = Metrics::new();
        let gauges = Gauges {
            info: EngineInfo { version: "1.0".into(), backend: "cpu", model: Some("we\"ird\\mo\ndel".into()) },
            ..Gauges::default()
        };
        let text = m.report(gauges).to_prometheus();
        let (_, samples) = parse(&text);
        assert_eq!(
            sample(
                &samples,
                "cuda_engine_info",
                &[("version", "1.0"), ("backend", "cpu"), ("model", "we\"ird\\mo\ndel")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn text_format_is_well_formed_and_agrees_with_json() {
        let m = Metrics::new();
        let echo = JobType::Echo;
        let custom = JobType::Other("resize_image".into());
        for _ in 0..3 {
            m.record(CallType::Embed, RunBackend::Cpu, Duration::from_micros(50), None);
        }
        m.record(CallType::Embed, RunBackend::Cuda, Duration::from_millis(3), Some(ErrorCode::TooLong));
        m.record(CallType::Job(&echo), RunBackend::Cpu, Duration::from_secs(120), None);
        m.record(CallType::Job(&custom), RunBackend::Worker, Duration::from_millis(7), Some(ErrorCode::WorkerExit));
        m.record(CallType::Unknown, RunBackend::Cpu, Duration::ZERO, Some(ErrorCode::Envelope));
        m.passes().record_pass(RunBackend::Cpu, 3, 40);
        m.passes().record_pass(RunBackend::Cuda, 5000, 100_000);
        let gauges = Gauges {
            info: EngineInfo { version: "0.1.0".into(), backend: "cpu", model: None },
            queue: QueueGauge { depth: 4, in_flight: 2 },
            gpu_memory_bytes: vec![GpuMemory { device: "0".into(), bytes: 1234 }],
            worker: WorkerGauge { restarts: 1, in_flight: 0 },
            indexes: vec![IndexGauge { name: "docs".into(), vectors: 10, bytes: 7680 }],
        };
        let report = m.report(gauges);
        let text = report.to_prometheus();
        let (types, samples) = parse(&text);
        assert_eq!(types["cuda_engine_requests_total"], "counter");
        assert_eq!(types["cuda_engine_request_duration_seconds"], "histogram");
        assert_eq!(sample(&samples, "cuda_engine_requests_total", &[("type", "embed")]), Some(4.0));
        assert_eq!(sample(&samples, "cuda_engine_requests_total", &[("type", "resize_image")]), Some(1.0));
        assert_eq!(
            sample(&samples, "cuda_engine_errors_total", &[("type", "embed"), ("code", "E_TOO_LONG")]),
            Some(1.0)
        );
        let lat = "cuda_engine_request_duration_seconds";
        assert_eq!(sample(&samples, &format!("{lat}_count"), &[("type", "embed"), ("backend", "cpu")]), Some(3.0));
        assert_eq!(
            sample(&samples, &format!("{lat}_bucket"), &[("type", "embed"), ("backend", "cpu"), ("le", "0.0001")]),
            Some(3.0)
        );
        // 120 s is above every bound: only in +Inf.
        let echo_le =
            |le: &str| sample(&samples, &format!("{lat}_bucket"), &[("type", "echo"), ("backend", "cpu"), ("le", le)]);
        assert_eq!((echo_le("60"), echo_le("+Inf")), (Some(0.0), Some(1.0)));
        assert_eq!(sample(&samples, "cuda_engine_batch_size_count", &[]), Some(2.0));
        assert_eq!(sample(&samples, "cuda_engine_batch_size_bucket", &[("le", "4")]), Some(1.0));
        assert_eq!(sample(&samples, "cuda_engine_batch_tokens_sum", &[]), Some(100_040.0));
        assert_eq!(sample(&samples, "cuda_engine_model_passes_total", &[("backend", "cuda")]), Some(1.0));
        assert_eq!(sample(&samples, "cuda_engine_gpu_memory_bytes", &[("device", "0")]), Some(1234.0));
        assert_eq!(sample(&samples, "cuda_engine_index_bytes", &[("index", "docs")]), Some(7680.0));
        assert_eq!(sample(&samples, "cuda_engine_queue_depth", &[]), Some(4.0));
        // Every bucket series is cumulative and ends at _count.
        for l in &report.latency {
            assert!(l.buckets.windows(2).all(|w| w[0].count <= w[1].count && w[0].le < w[1].le));
            assert!(l.buckets.last().is_some_and(|b| b.count <= l.count));
        }
        // The JSON form carries the same numbers.
        let json = report.to_json();
        let total: u64 = json["requests"].as_array().unwrap().iter().map(|r| r["count"].as_u64().unwrap()).sum();
        let text_total: f64 =
            samples.iter().filter(|(n, _, _)| n == "cuda_engine_requests_total").map(|(_, _, v)| v).sum();
        assert_eq!(total as f64, text_total);
        assert_eq!(json["errors"][0]["type"], "embed");
        assert_eq!(json["batches"]["tokens"]["count"], 2);
        assert_eq!(json["worker"]["restarts"], 1);
        assert_eq!(json["info"]["model"], Value::Null);
    }

    #[test]
    fn counts_are_exact_under_concurrency() {
        let m = Metrics::new();
        let threads = 8;
        let per = 10_000;
        std::thread::scope(|s| {
            for t in 0..threads {
                let m = &m;
                s.spawn(move || {
                    let job = JobType::Other(format!("job{}", t % 2));
                    for i in 0..per {
                        let err = (i % 10 == 0).then_some(ErrorCode::InvalidArg);
                        m.record(CallType::Embed, RunBackend::Cpu, Duration::from_micros(i as u64), err);
                        m.record(CallType::Job(&job), RunBackend::Worker, Duration::from_micros(1), None);
                        m.passes().record_pass(RunBackend::Cpu, 1, 1);
                    }
                });
            }
        });
        let r = m.report(Gauges::default());
        let count = |t: &str| r.requests.iter().find(|x| x.request_type == t).map(|x| x.count);
        assert_eq!(count("embed"), Some((threads * per) as u64));
        assert_eq!(count("job0"), Some((threads / 2 * per) as u64), "one slot per name, even when raced");
        assert_eq!(count("job1"), Some((threads / 2 * per) as u64));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].count, (threads * per / 10) as u64);
        let embed = r.latency.iter().find(|l| l.request_type == "embed").unwrap();
        assert_eq!(embed.count, (threads * per) as u64);
        let want_sum: u64 = (0..per as u64).sum::<u64>() * threads as u64;
        assert!((embed.sum_seconds - want_sum as f64 / 1e6).abs() < 1e-6);
        assert_eq!(r.batches.size.count, (threads * per) as u64);
        assert_eq!(r.passes, vec![PassCount { backend: "cpu", count: (threads * per) as u64 }]);
    }

    #[test]
    fn job_type_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_DYNAMIC_TYPES + 10) {
            let job = JobType::Other(format!("t{i}"));
            m.record(CallType::Job(&job), RunBackend::Worker, Duration::ZERO, None);
        }
        for odd in ["unknown", "other", "has space", "x\"y", &"a".repeat(65), ""] {
            let job = JobType::Other(odd.to_string());
            m.record(CallType::Job(&job), RunBackend::Worker, Duration::ZERO, None);
        }
        let r = m.report(Gauges::default());
        assert_eq!(r.requests.len(), MAX_DYNAMIC_TYPES + 1);
        let other = r.requests.iter().find(|x| x.request_type == "other").map(|x| x.count);
        assert_eq!(other, Some(16));
    }

    #[test]
    fn a_dropped_timer_counts_as_cancelled() {
        let m = Metrics::new();
        let job = JobType::Embedding;
        {
            let mut t = m.start(CallType::Unknown, RunBackend::Cpu, None);
            t.set_type(CallType::Job(&job));
            t.set_backend(RunBackend::Remote);
        }
        m.start(CallType::Infer, RunBackend::Cpu, None).finish(None);
        let r = m.report(Gauges::default());
        assert_eq!(r.requests.len(), 2);
        assert_eq!(r.errors[0].code, "E_CANCELLED");
        assert_eq!(r.errors[0].request_type, "embedding");
        assert!(r.latency.iter().any(|l| l.request_type == "embedding" && l.backend == "remote"));
    }
}
