//! The worker protocol on stdin/stdout (docs/worker-protocol.md), shared by
//! `cuda-worker` (jobs run on its own engine) and `cuda-grpc-shim` (jobs
//! forwarded to a gRPC server): one-shot (one request until EOF, one
//! response) and `--serve` (NDJSON with ids and binary frames, many in
//! flight, replies in completion order). What runs a job is a [`Runner`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::EnvelopeInput;
use cuda_engine_core::envelope::{Payload, RawEnvelope};
use cuda_engine_core::err;
use cuda_engine_core::error::Result;
use cuda_engine_core::infer::{InferRequest, InferResponse};
use cuda_engine_core::isolated_index::{IndexOp, IndexReply, INDEX_OP_KEY};
use cuda_engine_core::isolation;
use cuda_engine_core::jobs::{JobOutput, JobType};
use cuda_engine_core::worker::protocol::{self, BinaryFormat, Request, FRAME_HEADER_LEN, FRAME_TAG};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A job's result as the protocol replies it: the output and its encoding.
pub type Outcome = Result<(JobOutput, &'static str)>;

/// What runs the jobs read from stdin.
pub trait Runner: Send + Sync + 'static {
    /// Program name for stderr messages (`cuda-worker`, `cuda-grpc-shim`).
    fn name(&self) -> &'static str;
    /// The largest request line or frame read (bytes).
    fn max_message_bytes(&self) -> usize;
    /// An ordinary job (an envelope).
    fn submit(&self, input: EnvelopeInput, cancel: CancellationToken) -> impl Future<Output = Outcome> + Send;
    /// `"vectors":"f32"` embeddings (the isolated process's `embed` path).
    fn embed(
        &self,
        texts: Vec<String>,
        opts: EmbedOptions,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Vec<Vec<f32>>>> + Send;
    /// `"tensors":"binary"` inferences (the isolated process's `infer` path).
    fn infer(&self, req: InferRequest, cancel: CancellationToken)
        -> impl Future<Output = Result<InferResponse>> + Send;
    /// `{"id":N,"health":true}`: the health report (JSON).
    fn health(&self) -> impl Future<Output = Result<Value>> + Send;
    /// A vector index op of the engine's supervisor (`isolation:
    /// 'process'`, frames marked `index_op`). Only `cuda-worker` has them.
    fn index_op(&self, op: IndexOp, cancel: CancellationToken) -> impl Future<Output = Result<IndexReply>> + Send {
        let _ = (op, cancel);
        async { Err(err!(UnknownType, "{} keeps no vector indexes", self.name())) }
    }
}

/// Turn a protocol request into the engine's envelope input.
pub fn to_input(req: Request) -> EnvelopeInput {
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

/// Whether an input is an `embedding` job.
pub fn is_embedding(input: &EnvelopeInput) -> bool {
    match input {
        EnvelopeInput::Raw(r) => r.job_type.as_deref().map(JobType::parse) == Some(JobType::Embedding),
        // Requests are decoded into `Raw` here; bytes never reach the runner.
        EnvelopeInput::Bytes(_) => false,
    }
}

/// stdin for `--serve`: an epoll-driven pipe when it is one (the
/// supervisor's case), else tokio's `Stdin`, which runs every read on a
/// blocking-pool thread. With the supervisor's 1 MiB pipes
/// (`worker::process`), a 768 KiB frame each way went from 2.0–2.9 ms to
/// 0.9–1.1 ms on the 2-core machine; either change alone did half of it.
fn serve_stdin() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;

        if let Ok(pipe) =
            std::io::stdin().as_fd().try_clone_to_owned().and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)
        {
            return Box::new(pipe);
        }
    }
    Box::new(tokio::io::stdin())
}

/// stdout for `--serve`, as [`serve_stdin`]. Nothing else writes to stdout
/// in this mode (it would corrupt the protocol), so its being non-blocking
/// from now on is safe.
fn serve_stdout() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(pipe) =
            std::io::stdout().as_fd().try_clone_to_owned().and_then(tokio::net::unix::pipe::Sender::from_owned_fd)
        {
            return Box::new(pipe);
        }
    }
    Box::new(tokio::io::stdout())
}

async fn write_out(bytes: &[u8]) -> u8 {
    let mut out = tokio::io::stdout();
    if out.write_all(bytes).await.is_err() || out.flush().await.is_err() {
        return 1;
    }
    0
}

/// One-shot mode: one request on stdin until EOF, one response on stdout.
/// Returns the exit code.
pub async fn oneshot<R: Runner>(runner: Arc<R>) -> u8 {
    let limit = runner.max_message_bytes();
    let mut input = Vec::new();
    let mut stdin = tokio::io::stdin().take(limit as u64 + 1);
    if let Err(e) = stdin.read_to_end(&mut input).await {
        eprintln!("{}: reading stdin: {e}", runner.name());
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
        Ok(input) => runner.submit(input, CancellationToken::new()).await,
        Err(e) => Err(e),
    };
    write_out(&protocol::encode_response(None, &outcome, format)).await
}

fn frame_request(data: &[u8]) -> Result<(BinaryFormat, Request)> {
    let Some((header, body)) = data.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(err!(WorkerProtocol, "truncated frame header"));
    };
    let (fmt, len) = protocol::parse_frame_header(header).map_err(|e| err!(WorkerProtocol, "{e}"))?;
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
async fn run_infer_binary<R: Runner>(runner: &R, id: u64, input: EnvelopeInput, cancel: CancellationToken) -> Vec<u8> {
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
        let resp = runner.infer(req, cancel).await?;
        isolation::encode_infer_response(id, &resp)
    };
    match run.await {
        Ok(frame) => frame,
        Err(e) => protocol::encode_response(Some(id), &Err(e), None),
    }
}

/// An embedding job whose reply is the vectors as raw f32 bytes (the
/// isolated process's `embed` path): no JSON numbers either way.
async fn run_embed_f32<R: Runner>(runner: &R, id: u64, input: EnvelopeInput, cancel: CancellationToken) -> Vec<u8> {
    let run = async {
        let EnvelopeInput::Raw(raw) = input else {
            return Err(err!(InvalidArg, "an f32 embedding request must be a JSON line"));
        };
        if raw.job_type.as_deref().map(JobType::parse) != Some(JobType::Embedding) {
            return Err(err!(InvalidArg, "`vectors: \"f32\"` is only for `embedding` jobs"));
        }
        let payload = raw.payload.ok_or_else(|| err!(Envelope, "an f32 embedding request needs `payload`"))?;
        let (texts, opts) = cuda_engine_core::engine::embedding_request(Payload::Json(payload))?;
        let vectors = runner.embed(texts, opts, cancel).await?;
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Persistent mode (`--serve`): requests until stdin closes, then the jobs
/// in flight answer and it returns the exit code.
pub async fn serve<R: Runner>(runner: Arc<R>) -> u8 {
    let max = runner.max_message_bytes();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 * 1024, serve_stdout());
        // Replies that are ready go out in one flush; a broken stdout ends it.
        let _ = protocol::write_batched(&mut rx, &mut w).await;
    });
    let jobs: Arc<Mutex<HashMap<u64, CancellationToken>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut reader = BufReader::with_capacity(64 * 1024, serve_stdin());
    let mut code = 0u8;
    loop {
        let msg = match read_msg(&mut reader, max).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                // The stream cannot be resynchronised: stop reading, finish
                // what is in flight, and exit non-zero so the supervisor
                // sees the failure.
                eprintln!("{}: unreadable input, stopping: {e}", runner.name());
                code = 1;
                break;
            }
        };
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        let (id, input, format, reply) = match msg {
            Msg::Line(l) => match json_line(&l) {
                Ok(Line::Cancel(id)) => {
                    if let Some(t) = lock(&jobs).get(&id) {
                        t.cancel();
                    }
                    continue;
                }
                Ok(Line::Health(id)) => {
                    let (runner, tx) = (runner.clone(), tx.clone());
                    tasks.spawn(async move {
                        let outcome = runner.health().await.map(|v| (JobOutput::Json(v), "json"));
                        let _ = tx.send(protocol::encode_response(Some(id), &outcome, None));
                    });
                    continue;
                }
                Ok(Line::Job { id, input, reply }) => (id, input, None, reply),
                Err(why) => {
                    // Without a readable id there is nobody to reply to.
                    eprintln!("{}: ignoring an invalid request: {why}", runner.name());
                    continue;
                }
            },
            Msg::Frame(fmt, body) => match protocol::decode_body(fmt, &body) {
                // The supervisor's vector index ops (never an envelope).
                Ok(v) if v.get(INDEX_OP_KEY).is_some() => {
                    let Some(id) = v.get("id").and_then(protocol::WireValue::as_u64) else {
                        eprintln!("{}: ignoring an index op without `id`", runner.name());
                        continue;
                    };
                    let op = IndexOp::decode(&v).map_err(|why| err!(WorkerProtocol, "a malformed index op: {why}"));
                    drop(v);
                    let token = CancellationToken::new();
                    lock(&jobs).insert(id, token.clone());
                    let (runner, tx, jobs) = (runner.clone(), tx.clone(), jobs.clone());
                    tasks.spawn(async move {
                        let reply = match op {
                            Ok(op) => runner.index_op(op, token).await,
                            Err(e) => Err(e),
                        };
                        let frame = reply.and_then(|r| r.encode(id));
                        lock(&jobs).remove(&id);
                        let _ = tx.send(frame.unwrap_or_else(|e| protocol::encode_response(Some(id), &Err(e), None)));
                    });
                    continue;
                }
                Ok(v) => match protocol::request_from_value(v) {
                    Ok(req) => match req.id {
                        Some(id) => (id, Ok(to_input(req)), Some(fmt), Reply::Plain),
                        None => {
                            eprintln!("{}: ignoring a frame without `id` (required with --serve)", runner.name());
                            continue;
                        }
                    },
                    Err(why) => {
                        eprintln!("{}: ignoring an invalid frame: {why}", runner.name());
                        continue;
                    }
                },
                Err(why) => {
                    eprintln!("{}: ignoring an invalid frame: {why}", runner.name());
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
        lock(&jobs).insert(id, token.clone());
        let (runner, tx, jobs) = (runner.clone(), tx.clone(), jobs.clone());
        tasks.spawn(async move {
            let reply = match reply {
                Reply::F32Vectors => run_embed_f32(&*runner, id, input, token).await,
                Reply::BinaryTensors => run_infer_binary(&*runner, id, input, token).await,
                Reply::Plain => protocol::encode_response(Some(id), &runner.submit(input, token).await, format),
            };
            lock(&jobs).remove(&id);
            let _ = tx.send(reply);
        });
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    code
}
