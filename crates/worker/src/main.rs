//! `cuda-worker`: the cuda-engine behind the worker protocol
//! (docs/worker-protocol.md).
//!
//! - `cuda-worker` (one-shot): read one request from stdin until EOF, write
//!   one response to stdout, exit 0. Job failures are `ok: false` replies,
//!   not exit codes: a non-zero exit means the worker itself broke.
//! - `cuda-worker --serve` (persistent): NDJSON requests with ids (binary
//!   frames for raw bytes), many in flight, replies in completion order;
//!   exits when stdin closes and the jobs in flight have answered.
//!
//! Jobs run through `cuda_engine_core::engine::Engine`, so the worker runs
//! exactly the job types the addon runs. Unknown types get an
//! `E_UNKNOWN_TYPE` reply.
//!
//! It is also the engine's isolated process (`isolation: 'process'`): the
//! supervisor starts it with `--serve --preload --options JSON` and also
//! sends the requests only it writes (`"vectors":"f32"` embeddings,
//! `"tensors":"binary"` inferences, `{"id":N,"health":true}`;
//! docs/worker-protocol.md).
//!
//! Fault injection (tests only, docs/reliability.md "Fault isolation"):
//! `CUDA_ENGINE_FAULT_INJECT` is read once, here in `main`, from this
//! process's own environment; no request can set or change it.

mod fault;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use cuda_engine_core::engine::{CallOptions, Engine, EnvelopeInput, ModelLoading};
use cuda_engine_core::envelope::{Payload, RawEnvelope};
use cuda_engine_core::err;
use cuda_engine_core::error::Result;
use cuda_engine_core::infer::InferRequest;
use cuda_engine_core::isolation;
use cuda_engine_core::jobs::{JobOutput, JobType, Target};
use cuda_engine_core::options::EngineOptions;
use cuda_engine_core::worker::protocol::{self, BinaryFormat, Request, FRAME_HEADER_LEN, FRAME_TAG};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: cuda-worker [--serve] [--options JSON]
  (no flag)       one-shot: one request on stdin, one response on stdout
  --serve         persistent: NDJSON requests with ids until stdin closes
  --options JSON  EngineOptions as JSON (e.g. {\"device\":\"cpu\"}); default: $CUDA_ENGINE_OPTIONS
  --preload       start loading the model at once (not on the first job)
  --version       print the version
environment: CUDA_ENGINE_FAULT_INJECT=KIND[:N] (tests: segfault, abort, hang or
  sticky-cuda-fault on the N-th embedding job, default 1)";

type Outcome = Result<(JobOutput, &'static str)>;

fn main() -> ExitCode {
    // Read once, from this process's own environment, before anything else.
    if let Err(e) = fault::init_from_env() {
        return usage_error(&e);
    }
    let mut serve = false;
    let mut preload = false;
    let mut options = match std::env::var("CUDA_ENGINE_OPTIONS") {
        Ok(s) if !s.trim().is_empty() => match serde_json::from_str::<Value>(&s) {
            Ok(v) => v,
            Err(e) => return usage_error(&format!("CUDA_ENGINE_OPTIONS is not JSON: {e}")),
        },
        _ => Value::Null,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--serve" => serve = true,
            "--preload" => preload = true,
            "--options" => match args.next().map(|s| serde_json::from_str::<Value>(&s)) {
                Some(Ok(v)) => options = v,
                _ => return usage_error("--options needs a JSON object"),
            },
            "--version" => {
                println!("cuda-worker {}", cuda_engine_core::VERSION);
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    // The same schema as Engine.open: unknown keys are errors.
    let mut config = match EngineOptions::from_json(&options).and_then(EngineOptions::into_config) {
        Ok(c) => c,
        Err(e) => return usage_error(&e.to_string()),
    };
    // A worker never proxies to another worker, and loads the model on
    // first use (a one-shot echo job must not pay for it).
    config.worker = None;
    config.isolation = Default::default();
    config.model_loading = ModelLoading::OnFirstUse;
    let engine = match Engine::open(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cuda-worker: cannot open the engine: {e}");
            return ExitCode::from(2);
        }
    };
    // Current-thread: the protocol I/O is cheap and the engine has its own
    // compute threads; one thread avoids cross-thread wake-ups per job.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cuda-worker: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async move {
        if preload {
            // In the background: requests are read meanwhile, and the ones
            // that need the model wait for this load (a failed load is the
            // E_MODEL answer of the jobs that need it, retried as usual).
            let e = engine.clone();
            tokio::spawn(async move {
                if let Err(err) = e.embedder().await {
                    eprintln!("cuda-worker: preloading the model failed: {err}");
                }
            });
        }
        if serve {
            serve_loop(engine).await
        } else {
            oneshot(engine).await
        }
    });
    ExitCode::from(code)
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("cuda-worker: {msg}\n{USAGE}");
    ExitCode::from(64)
}

/// Turn a protocol request into the engine's envelope input.
fn to_input(req: Request) -> EnvelopeInput {
    let mut raw = RawEnvelope { id: req.job_id, job_type: Some(req.job_type), ..RawEnvelope::default() };
    match req.payload {
        Payload::Json(v) => raw.payload = Some(v),
        Payload::Bytes(b) => {
            raw.payload_bytes = Some(b);
            raw.encoding = Some(req.encoding.as_str().to_string());
        }
    }
    EnvelopeInput::Raw(raw)
}

fn is_embedding(input: &EnvelopeInput) -> bool {
    match input {
        EnvelopeInput::Raw(r) => r.job_type.as_deref().map(JobType::parse) == Some(JobType::Embedding),
        // One-shot text requests are decoded into `Raw` above; bytes never
        // reach here.
        EnvelopeInput::Bytes(_) => false,
    }
}

async fn run_job(engine: &Engine, input: EnvelopeInput, cancel: CancellationToken) -> Outcome {
    if is_embedding(&input) {
        fault::on_embedding()?;
    }
    let call = CallOptions { cancel, target: Target::Local, ..CallOptions::default() };
    let result = engine.submit(input, call).await?;
    Ok((result.output, result.encoding))
}

async fn write_out(bytes: &[u8]) -> u8 {
    let mut out = tokio::io::stdout();
    if out.write_all(bytes).await.is_err() || out.flush().await.is_err() {
        return 1;
    }
    0
}

async fn oneshot(engine: Arc<Engine>) -> u8 {
    let limit = engine.limits().max_envelope_bytes + 1024 * 1024;
    let mut input = Vec::new();
    let mut stdin = tokio::io::stdin().take(limit as u64 + 1);
    if let Err(e) = stdin.read_to_end(&mut input).await {
        eprintln!("cuda-worker: reading stdin: {e}");
        return 1;
    }
    if input.len() > limit {
        let e = err!(TooLarge, "the request is over {limit} bytes");
        return write_out(&protocol::encode_response(None, &Err(e), None)).await;
    }
    let start = input.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(input.len());
    let data = &input[start..];
    let (parsed, format) = if data.first() == Some(&FRAME_TAG) {
        match frame_request(data) {
            Ok((fmt, req)) => (Ok(to_input(req)), Some(fmt)),
            Err(e) => (Err(e), Some(BinaryFormat::Cbor)),
        }
    } else {
        // A one-shot JSON request is an envelope: legacy callers may send
        // `payload_b64`, which the engine decodes.
        let parsed = serde_json::from_slice::<Value>(data)
            .map_err(|e| err!(BadJson, "stdin is not a JSON request: {e}"))
            .and_then(|mut v| {
                if let Some(obj) = v.as_object_mut() {
                    if let Some(job_id) = obj.remove("job_id") {
                        obj.insert("id".into(), job_id);
                    }
                }
                RawEnvelope::from_value(v)
            })
            .map(EnvelopeInput::Raw);
        (parsed, None)
    };
    let outcome = match parsed {
        Ok(input) => run_job(&engine, input, CancellationToken::new()).await,
        Err(e) => Err(e),
    };
    write_out(&protocol::encode_response(None, &outcome, format)).await
}

fn frame_request(data: &[u8]) -> Result<(BinaryFormat, Request)> {
    if data.len() < FRAME_HEADER_LEN {
        return Err(err!(WorkerProtocol, "truncated frame header"));
    }
    let header: [u8; FRAME_HEADER_LEN] = data[..FRAME_HEADER_LEN].try_into().expect("6 bytes");
    let (fmt, len) = protocol::parse_frame_header(&header).map_err(|e| err!(WorkerProtocol, "{e}"))?;
    let body = &data[FRAME_HEADER_LEN..];
    if body.len() != len {
        return Err(err!(WorkerProtocol, "the frame announces {len} bytes but {} follow", body.len()));
    }
    let req = protocol::parse_frame_request(fmt, body).map_err(|e| err!(WorkerProtocol, "{e}"))?;
    Ok((fmt, req))
}

/// A persistent-mode JSON line, read.
enum Line {
    /// `{"id":N,"cancel":true}`
    Cancel(u64),
    /// `{"id":N,"health":true}`: the engine's health report.
    Health(u64),
    /// A request, and how its reply is written.
    Job { id: u64, input: Result<EnvelopeInput>, reply: Reply },
}

/// How a request's reply is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The ordinary reply (a JSON line, or a frame for bytes).
    Plain,
    /// `"vectors":"f32"`: an embedding's vectors as raw f32 bytes.
    F32Vectors,
    /// `"tensors":"binary"`: an inference's tensors as raw bytes.
    BinaryTensors,
}

/// A persistent-mode JSON line: a control message or a request, which is an
/// envelope plus `id` (so `payload_b64` works here too) with the caller's
/// own id in `job_id`.
fn json_line(line: &[u8]) -> std::result::Result<Line, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = v else { return Err("not a JSON object".into()) };
    let id = obj.remove("id").and_then(|v| v.as_u64()).ok_or("`id` is missing or not an unsigned integer")?;
    if obj.get("cancel").and_then(Value::as_bool) == Some(true) {
        return Ok(Line::Cancel(id));
    }
    if obj.get("health").and_then(Value::as_bool) == Some(true) {
        return Ok(Line::Health(id));
    }
    let mut reply = Reply::Plain;
    for (key, value, kind) in [
        (protocol::VECTORS_KEY, protocol::VECTORS_F32, Reply::F32Vectors),
        (isolation::TENSORS_KEY, isolation::TENSORS_BINARY, Reply::BinaryTensors),
    ] {
        match obj.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == value => reply = kind,
            Some(other) => {
                let e = err!(InvalidArg, "`{key}` must be \"{value}\", got {other}");
                return Ok(Line::Job { id, input: Err(e), reply: Reply::Plain });
            }
        }
    }
    if let Some(job_id) = obj.remove("job_id") {
        obj.insert("id".into(), job_id);
    }
    Ok(Line::Job { id, input: RawEnvelope::from_value(Value::Object(obj)).map(EnvelopeInput::Raw), reply })
}

/// An inference whose reply carries its tensors as raw bytes (the isolated
/// process's `infer` path).
async fn run_infer_binary(engine: &Engine, id: u64, input: EnvelopeInput, cancel: CancellationToken) -> Vec<u8> {
    let run = async {
        let EnvelopeInput::Raw(raw) = input else {
            return Err(err!(InvalidArg, "a binary-tensor inference request must be a JSON line"));
        };
        if raw.job_type.as_deref().map(JobType::parse) != Some(JobType::Inference) {
            return Err(err!(InvalidArg, "`tensors: \"binary\"` is only for `inference` jobs"));
        }
        let payload = raw.payload.ok_or_else(|| err!(Envelope, "an inference request needs `payload`"))?;
        let mut req = InferRequest::from_json(&payload)?;
        if req.id.is_none() {
            req.id = raw.id;
        }
        let call = CallOptions { cancel, target: Target::Local, ..CallOptions::default() };
        let resp = engine.infer(req, call).await?;
        isolation::encode_infer_response(id, &resp)
    };
    match run.await {
        Ok(frame) => frame,
        Err(e) => protocol::encode_response(Some(id), &Err(e), None),
    }
}

/// An embedding job whose reply is the vectors as raw f32 bytes (the
/// isolated process's `embed` path): no JSON numbers either way.
async fn run_embed_f32(engine: &Engine, id: u64, input: EnvelopeInput, cancel: CancellationToken) -> Vec<u8> {
    let run = async {
        let EnvelopeInput::Raw(raw) = input else {
            return Err(err!(InvalidArg, "an f32 embedding request must be a JSON line"));
        };
        if raw.job_type.as_deref().map(JobType::parse) != Some(JobType::Embedding) {
            return Err(err!(InvalidArg, "`vectors: \"f32\"` is only for `embedding` jobs"));
        }
        let payload = raw.payload.ok_or_else(|| err!(Envelope, "an f32 embedding request needs `payload`"))?;
        let (texts, opts) = cuda_engine_core::engine::embedding_request(Payload::Json(payload))?;
        fault::on_embedding()?;
        let call = CallOptions { cancel, target: Target::Local, ..CallOptions::default() };
        let vectors = engine.embed(texts, opts, call).await?;
        protocol::encode_vectors_response(id, &vectors)
    };
    match run.await {
        Ok(frame) => frame,
        Err(e) => protocol::encode_response(Some(id), &Err(e), None),
    }
}

enum Msg {
    Line(Vec<u8>),
    Frame(BinaryFormat, Vec<u8>),
}

async fn read_msg<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>, max: usize) -> std::io::Result<Option<Msg>> {
    use std::io::{Error, ErrorKind};
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0].is_ascii_whitespace() {
            r.consume(1);
            continue;
        }
        if buf[0] == FRAME_TAG {
            let mut h = [0u8; FRAME_HEADER_LEN];
            r.read_exact(&mut h).await?;
            let (fmt, len) = protocol::parse_frame_header(&h).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
            if len > max {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("a {len}-byte frame is over the {max}-byte limit"),
                ));
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await?;
            return Ok(Some(Msg::Frame(fmt, body)));
        }
        let mut line = Vec::new();
        let n = (&mut *r).take(max as u64 + 1).read_until(b'\n', &mut line).await?;
        if n > max {
            return Err(Error::new(ErrorKind::InvalidData, format!("a line is over the {max}-byte limit")));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        return Ok(Some(Msg::Line(line)));
    }
}

async fn serve_loop(engine: Arc<Engine>) -> u8 {
    let max = engine.limits().max_envelope_bytes + 1024 * 1024;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 * 1024, tokio::io::stdout());
        // Replies that are ready go out in one flush; a broken stdout ends it.
        let _ = protocol::write_batched(&mut rx, &mut w).await;
    });
    let jobs: Arc<Mutex<HashMap<u64, CancellationToken>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut reader = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
    let mut code = 0u8;
    loop {
        let msg = match read_msg(&mut reader, max).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                // The stream cannot be resynchronised: stop reading, finish
                // what is in flight, and exit non-zero so the supervisor
                // sees the failure.
                eprintln!("cuda-worker: unreadable input, stopping: {e}");
                code = 1;
                break;
            }
        };
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        let (id, input, format, reply) = match msg {
            Msg::Line(l) => match json_line(&l) {
                Ok(Line::Cancel(id)) => {
                    if let Some(t) = jobs.lock().unwrap().get(&id) {
                        t.cancel();
                    }
                    continue;
                }
                Ok(Line::Health(id)) => {
                    let (engine, tx) = (engine.clone(), tx.clone());
                    tasks.spawn(async move {
                        let outcome = match tokio::task::spawn_blocking(move || engine.health().to_json()).await {
                            Ok(v) => Ok((JobOutput::Json(v), "json")),
                            Err(e) => Err(err!(Internal, "health check failed: {e}")),
                        };
                        let _ = tx.send(protocol::encode_response(Some(id), &outcome, None));
                    });
                    continue;
                }
                Ok(Line::Job { id, input, reply }) => (id, input, None, reply),
                Err(why) => {
                    // Without a readable id there is nobody to reply to.
                    eprintln!("cuda-worker: ignoring an invalid request: {why}");
                    continue;
                }
            },
            Msg::Frame(fmt, body) => match protocol::parse_frame_request(fmt, &body) {
                Ok(req) => match req.id {
                    Some(id) => (id, Ok(to_input(req)), Some(fmt), Reply::Plain),
                    None => {
                        eprintln!("cuda-worker: ignoring a frame without `id` (required with --serve)");
                        continue;
                    }
                },
                Err(why) => {
                    eprintln!("cuda-worker: ignoring an invalid frame: {why}");
                    continue;
                }
            },
        };
        let input = match input {
            Ok(i) => i,
            Err(e) => {
                // A bad envelope with a good id: answer it, keep serving.
                let _ = tx.send(protocol::encode_response(Some(id), &Err(e), format));
                continue;
            }
        };
        let token = CancellationToken::new();
        jobs.lock().unwrap().insert(id, token.clone());
        let (engine, tx, jobs) = (engine.clone(), tx.clone(), jobs.clone());
        tasks.spawn(async move {
            let reply = match reply {
                Reply::F32Vectors => run_embed_f32(&engine, id, input, token).await,
                Reply::BinaryTensors => run_infer_binary(&engine, id, input, token).await,
                Reply::Plain => protocol::encode_response(Some(id), &run_job(&engine, input, token).await, format),
            };
            jobs.lock().unwrap().remove(&id);
            let _ = tx.send(reply);
        });
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    code
}
