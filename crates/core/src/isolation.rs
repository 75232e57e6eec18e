//! `isolation: 'process'` (docs/reliability.md "Fault isolation"): the model
//! runs in a supervised `cuda-worker --serve --preload --options JSON` (the
//! same engine, the persistent worker protocol), so a segfault, an abort, a
//! sticky CUDA error or a hung driver call costs a restart of that process
//! instead of this one.
//!
//! - `embed` goes as an `embedding` request with `"vectors":"f32"`; the
//!   vectors come back as raw little-endian f32 bytes in one binary frame
//!   (no JSON numbers either way but the texts).
//! - `infer` goes as an `inference` request marked `"tensors":"binary"`; the
//!   response tensors come back as raw little-endian bytes in one frame.
//! - `submit` jobs that run locally (`echo`, `embedding`, `inference`) go as
//!   ordinary requests (envelopes, the protocol's binary frames for raw-byte
//!   payloads).
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
use crate::infer::{DataType, InferRequest, InferResponse, InferTensor, TensorData};
use crate::jobs::{BackendKind, JobOutput, JobResult};
use crate::options::{Isolation, IsolationConfig};
use crate::worker::protocol::{self, BinaryFormat, WireValue};
use crate::worker::{Worker, WorkerConfig, WorkerMode};

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
    /// The runtime it was opened in: background clean-up (a dropped
    /// index's copy) is spawned there from threads outside any runtime.
    runtime: Option<tokio::runtime::Handle>,
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
        let runtime = tokio::runtime::Handle::try_current().ok();
        Ok(Isolated { worker, last: Mutex::new(None), runtime })
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

    /// Open Inference Protocol inference there. The request goes as JSON;
    /// the response comes back with every tensor's data as raw
    /// little-endian bytes ([`encode_infer_response`]), not JSON numbers.
    pub async fn infer(
        &self,
        req: &InferRequest,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<InferResponse> {
        let build = |id| {
            let line = serde_json::json!({
                "id": id,
                "type": "inference",
                "payload": req.to_json(),
                TENSORS_KEY: TENSORS_BINARY,
            });
            let mut out = serde_json::to_vec(&line)
                .map_err(|e| CoreError::internal(format!("encoding an inference request: {e}")))?;
            out.push(b'\n');
            Ok(out)
        };
        match self.worker.run_wire(build, timeout, cancel).await? {
            (JobOutput::Bytes(b), _) => decode_infer_response(&b),
            (JobOutput::Json(v), _) => InferResponse::from_json(&v),
        }
    }

    /// Send one request that only the supervisor writes (`build` gets the
    /// wire id) and wait for its reply: the vector index copies
    /// (`crate::isolated_index`).
    pub async fn call(
        &self,
        build: impl FnOnce(u64) -> Result<Vec<u8>>,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<(JobOutput, &'static str)> {
        self.worker.run_wire(build, timeout, cancel).await
    }

    /// How many times the isolated process was restarted so far.
    pub fn restarts(&self) -> u64 {
        self.worker.restarts()
    }

    /// Whether the engine's `close` shut the process down for good.
    pub fn is_shut_down(&self) -> bool {
        self.worker.is_shut_down()
    }

    /// Run `fut` in the background on the runtime the engine opened in
    /// (dropped when there is none).
    pub fn spawn_background(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.runtime.clone().or_else(|| tokio::runtime::Handle::try_current().ok());
        if let Some(h) = handle {
            h.spawn(fut);
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

/// Request key asking for an inference's response tensors as raw bytes.
pub const TENSORS_KEY: &str = "tensors";
/// The value of [`TENSORS_KEY`].
pub const TENSORS_BINARY: &str = "binary";

/// Worker side: an inference reply whose tensors travel as raw bytes. A
/// CBOR frame `{id, ok: true, encoding: "infer", result: <bytes>}` where
/// `result` is one CBOR map `{model_name, model_version, id, outputs:
/// [{name, datatype, shape, data, parameters}]}`; `data` is the elements as
/// little-endian bytes (BYTES: an array of byte strings).
pub fn encode_infer_response(id: u64, resp: &InferResponse) -> Result<Vec<u8>> {
    let outputs = resp
        .outputs
        .iter()
        .map(|t| {
            let data = match t.data.to_le_bytes() {
                Some(b) => WireValue::Bytes(b),
                None => match &t.data {
                    TensorData::Bytes(items) => WireValue::Array(items.iter().cloned().map(WireValue::Bytes).collect()),
                    _ => WireValue::Null,
                },
            };
            WireValue::map(vec![
                ("name", WireValue::Str(t.name.clone())),
                ("datatype", WireValue::Str(t.datatype().as_str().into())),
                ("shape", WireValue::Array(t.shape.iter().map(|&d| WireValue::U64(d as u64)).collect())),
                ("data", data),
                (
                    "parameters",
                    t.parameters.as_ref().map_or(WireValue::Null, |p| WireValue::from_json(&Value::Object(p.clone()))),
                ),
            ])
        })
        .collect();
    let body = WireValue::map(vec![
        ("model_name", WireValue::Str(resp.model_name.clone())),
        ("model_version", resp.model_version.clone().map_or(WireValue::Null, WireValue::Str)),
        ("id", WireValue::Str(resp.id.clone())),
        ("outputs", WireValue::Array(outputs)),
    ]);
    protocol::encode_blob_response(id, "infer", &body)
}

/// Supervisor side: the inverse of [`encode_infer_response`]'s `result`.
/// Anything malformed is `E_WORKER_PROTOCOL`.
pub fn decode_infer_response(blob: &[u8]) -> Result<InferResponse> {
    let bad = |why: String| err!(WorkerProtocol, "the isolated process's binary inference reply is malformed: {why}");
    let v = protocol::decode_body(BinaryFormat::Cbor, blob).map_err(bad)?;
    let text = |v: &WireValue, key: &str| v.get(key).and_then(WireValue::as_str).map(str::to_string);
    let Some(WireValue::Array(items)) = v.get("outputs") else { return Err(bad("no `outputs` array".into())) };
    let mut outputs = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let name = text(t, "name").ok_or_else(|| bad(format!("outputs[{i}] has no name")))?;
        let dt = text(t, "datatype")
            .and_then(|d| DataType::parse(&d))
            .ok_or_else(|| bad(format!("outputs[{i}] has no known datatype")))?;
        let shape = match t.get("shape") {
            Some(WireValue::Array(d)) => d
                .iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("outputs[{i}].shape")))?,
            _ => return Err(bad(format!("outputs[{i}] has no shape"))),
        };
        let data = match (dt, t.get("data")) {
            (DataType::Bytes, Some(WireValue::Array(xs))) => TensorData::Bytes(
                xs.iter()
                    .map(|x| match x {
                        WireValue::Bytes(b) => Some(b.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(format!("outputs[{i}].data")))?,
            ),
            (_, Some(WireValue::Bytes(b))) => {
                TensorData::from_le_bytes(dt, b, &format!("outputs[{i}]")).map_err(|e| bad(e.message))?
            }
            _ => return Err(bad(format!("outputs[{i}].data"))),
        };
        let parameters = match t.get("parameters") {
            Some(p @ WireValue::Map(_)) => match p.clone().into_json() {
                Value::Object(m) => Some(m),
                _ => None,
            },
            _ => None,
        };
        let tensor = InferTensor { name, shape, data, parameters };
        tensor.check_shape(&format!("output `{}`", tensor.name)).map_err(|e| bad(e.message))?;
        outputs.push(tensor);
    }
    Ok(InferResponse {
        model_name: text(&v, "model_name").unwrap_or_default(),
        model_version: text(&v, "model_version"),
        id: text(&v, "id").unwrap_or_default(),
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_inference_replies_round_trip_exactly() {
        let mut named = InferTensor::new("e", vec![2, 2], TensorData::Fp32(vec![0.1, -0.0, f32::MAX, 1e-42]));
        named.parameters = Some(serde_json::json!({ "k": 1 }).as_object().unwrap().clone());
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: "r1".into(),
            outputs: vec![
                named,
                InferTensor::new("ids", vec![3], TensorData::Int64(vec![-1, 0, i64::MAX])),
                InferTensor::new("h", vec![1], TensorData::Fp16(vec![0x3c00])),
                InferTensor::new("b", vec![2], TensorData::Bool(vec![true, false])),
                InferTensor::new("s", vec![2], TensorData::Bytes(vec![b"x".to_vec(), vec![0, 255]])),
            ],
        };
        let wire = encode_infer_response(5, &resp).unwrap();
        let (f, n) = protocol::parse_frame_header(wire[..6].try_into().unwrap()).unwrap();
        assert_eq!(n, wire.len() - 6);
        let r = protocol::parse_frame_response(f, &wire[6..]).unwrap();
        assert_eq!(r.id, Some(5));
        let (JobOutput::Bytes(blob), _) = r.outcome.unwrap() else { panic!("not bytes") };
        assert_eq!(decode_infer_response(&blob).unwrap(), resp);
        assert_eq!(decode_infer_response(b"\xa0").unwrap_err().code, crate::ErrorCode::WorkerProtocol);
    }
}
