//! `cuda-worker --grpc ADDR`: the engine as a gRPC server (docs/grpc.md
//! "Server"), on one tonic server:
//!
//! - `inference.GRPCInferenceService` (the Open Inference Protocol; `oip`),
//! - `cuda_engine.v1.Engine` (embeddings, vector search, envelopes, health;
//!   `engine_service`),
//! - `grpc.health.v1.Health` (tonic-health: SERVING while open, NOT_SERVING
//!   once draining).
//!
//! Every failed call is a status made by `grpc::status::to_status` (the
//! engine's code in `x-cuda-engine-code`), including the ones tonic itself
//! answers before a handler runs (a message over the limit, a body that is
//! not protobuf): the `CodedErrors` layer rewrites those.
//!
//! Deadlines: `grpc-timeout` becomes the call's `CallOptions.timeout`,
//! counted from the request's arrival (stamped by an interceptor before the
//! body is read), so a late call ends with the engine's `E_TIMEOUT` as
//! DEADLINE_EXCEEDED. A client that cancels drops the handler future; the
//! call's cancellation token fires on that drop, cancelling the engine job.

mod engine_service;
mod oip;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cuda_engine_core::device::DevicePreference;
use cuda_engine_core::engine::{CallOptions, Engine};
use cuda_engine_core::err;
use cuda_engine_core::error::{CoreError, Result};
use cuda_engine_core::grpc::proto::engine::engine_server::EngineServer;
use cuda_engine_core::grpc::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use cuda_engine_core::grpc::status::{to_status, CODE_METADATA_KEY};
use cuda_engine_core::infer::ModelMetadata;
use cuda_engine_core::jobs::Target;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

/// Server settings from the command line.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Largest message received or sent; None: the engine's maxEnvelopeBytes.
    pub max_message_bytes: Option<usize>,
    /// Requests of one stream that run at once (the rest wait unread).
    pub stream_concurrency: usize,
    /// How long SIGTERM/SIGINT waits for the calls in flight.
    pub drain: Duration,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--index NAME=PATH`, loaded before serving.
    pub indexes: Vec<(String, PathBuf)>,
    /// `--grpc-gzip-responses`: gzip answers for clients that accept it.
    /// Off by default: embeddings are float32 that gzip shrinks by ~7%, and
    /// compressing 512 of them (786 KB) took longer than computing them on
    /// the H200 (every common client — grpc-js, grpcio, tritonclient —
    /// advertises gzip, so tonic would compress every answer).
    pub gzip_responses: bool,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_message_bytes: None,
            stream_concurrency: 64,
            drain: Duration::from_millis(10_000),
            tls_cert: None,
            tls_key: None,
            indexes: Vec::new(),
            gzip_responses: false,
        }
    }
}

/// What both services share.
pub(crate) struct State {
    pub engine: Arc<Engine>,
    pub max_message_bytes: usize,
    pub stream_concurrency: usize,
    /// The served model's metadata, once loaded.
    pub model: OnceLock<ModelMetadata>,
    /// SIGTERM/SIGINT arrived: not ready any more.
    pub draining: AtomicBool,
}

impl State {
    /// The model's metadata (loads the model on first use).
    pub async fn model(&self) -> Result<&ModelMetadata> {
        if let Some(m) = self.model.get() {
            return Ok(m);
        }
        let models = self.engine.models().await?;
        let first = models.into_iter().next().ok_or_else(|| err!(Model, "the engine serves no model"))?;
        Ok(self.model.get_or_init(|| first))
    }

    /// Ready for inference: the model is loaded and the server is not draining.
    pub fn ready(&self) -> bool {
        self.model.get().is_some() && !self.draining.load(Ordering::Acquire) && !self.engine.is_closed()
    }

    /// A response's size against the message limit, as a coded error (tonic
    /// would otherwise fail the call with a bare OUT_OF_RANGE).
    pub fn check_size<M: prost::Message>(&self, m: &M) -> Result<()> {
        let len = m.encoded_len();
        if len > self.max_message_bytes {
            return Err(err!(
                OutputLimit,
                "the response is {len} bytes, over the server's message limit of {} bytes (--grpc-max-message-bytes)",
                self.max_message_bytes
            ));
        }
        Ok(())
    }
}

/// When the request reached the server (stamped before its body is read).
#[derive(Debug, Clone, Copy)]
struct Arrival(Instant);

#[allow(clippy::result_large_err)]
fn stamp_arrival(mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, Status> {
    req.extensions_mut().insert(Arrival(Instant::now()));
    Ok(req)
}

/// Ends our deadline this much before tonic's own timer (which answers a
/// bare CANCELLED), so the engine's E_TIMEOUT is what the client gets.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The `grpc-timeout` header: an integer of at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). None when absent or malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The engine call of one RPC: the deadline from `grpc-timeout`, and a
/// cancellation token that fires when this value is dropped (the handler
/// future dropped by a client cancel, or the call done).
pub(crate) struct Call {
    pub opts: CallOptions,
    /// The deadline, for streams (each of their requests gets what is left).
    pub deadline: Option<Instant>,
    _cancel_on_drop: DropGuard,
}

impl Call {
    #[allow(clippy::result_large_err)]
    pub fn new<T>(req: &tonic::Request<T>, target: Target) -> std::result::Result<Call, Status> {
        let arrival = req.extensions().get::<Arrival>().map_or_else(Instant::now, |a| a.0);
        let timeout = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let deadline = timeout.map(|t| arrival + t.saturating_sub(DEADLINE_MARGIN));
        let cancel = CancellationToken::new();
        let opts = CallOptions { issued: Some(arrival), timeout: None, cancel: cancel.clone(), target };
        let call = Call { opts, deadline, _cancel_on_drop: cancel.drop_guard() };
        call.remaining().map(|opts| Call { opts, ..call }).map_err(|e| to_status(&e))
    }

    /// The options for work starting now: what is left of the deadline.
    pub fn remaining(&self) -> Result<CallOptions> {
        let mut opts = self.opts.clone();
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err!(Timeout, "the call's deadline (grpc-timeout) passed before the engine started it"));
            }
            opts.timeout = Some(left);
        }
        Ok(opts)
    }

    /// Options for one request of a stream: a child token (so the stream's
    /// cancel reaches it) and what is left of the stream's deadline.
    pub fn for_stream_request(&self) -> Result<CallOptions> {
        let mut opts = self.remaining()?;
        opts.cancel = self.opts.cancel.child_token();
        Ok(opts)
    }
}

/// A status for a failed call: the one mapping.
pub(crate) fn status(e: &CoreError) -> Status {
    to_status(e)
}

/// A stream's responses; the stream's token is cancelled when the client
/// goes away (this is dropped).
pub(crate) struct Responses<T> {
    inner: ReceiverStream<std::result::Result<T, Status>>,
    _call: Call,
}

impl<T> Stream for Responses<T> {
    type Item = std::result::Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// An error tonic reports while reading a request stream, as a coded error.
fn stream_read_error(s: &Status) -> CoreError {
    if s.message().contains("message length too large") {
        err!(TooLarge, "a request of the stream is over the server's message limit: {}", s.message())
    } else {
        err!(Decode, "the request stream could not be read: {}", s.message())
    }
}

/// Run the requests of a bidirectional stream: at most
/// `state.stream_concurrency` at once (the stream is not read further until
/// one finishes, so memory is bounded), each answered as soon as it is done.
/// A request's failure is part of its answer (`handle` makes it in-band); a
/// stream that cannot be read any more ends with a coded status once the
/// requests in flight have answered.
pub(crate) fn run_stream<Req, Resp, F, Fut>(
    state: &State,
    mut inbound: tonic::Streaming<Req>,
    call: Call,
    handle: F,
) -> Responses<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req, Result<CallOptions>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let n = state.stream_concurrency.max(1);
    let (tx, rx) = mpsc::channel(n);
    let permits = Arc::new(Semaphore::new(n));
    let stream_cancel = call.opts.cancel.clone();
    let deadline = call.deadline;
    // The reader holds what it needs to make per-request options; the
    // response stream holds the guard.
    let opts_source =
        Call { opts: call.opts.clone(), deadline, _cancel_on_drop: CancellationToken::new().drop_guard() };
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut end: Option<CoreError> = None;
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p,
                _ = stream_cancel.cancelled() => break,
                _ = &mut expired => { end = Some(err!(Timeout, "the stream's deadline (grpc-timeout) passed")); break }
            };
            let Ok(permit) = permit else { break };
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = stream_cancel.cancelled() => break,
                _ = &mut expired => { end = Some(err!(Timeout, "the stream's deadline (grpc-timeout) passed")); break }
            };
            while tasks.try_join_next().is_some() {}
            match msg {
                Ok(Some(req)) => {
                    let fut = handle(req, opts_source.for_stream_request());
                    let tx = tx.clone();
                    tasks.spawn(async move {
                        let resp = fut.await;
                        let _ = tx.send(Ok(resp)).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(s) => {
                    end = Some(stream_read_error(&s));
                    break;
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Some(e) = end {
            let _ = tx.send(Err(status(&e))).await;
        }
    });
    Responses { inner: ReceiverStream::new(rx), _call: call }
}

/// Rewrites the failures tonic answers itself, before any handler runs (a
/// message over the size limit, a body that is not protobuf), into coded
/// statuses; everything else passes unchanged.
#[derive(Debug, Clone, Copy, Default)]
struct CodedErrorsLayer;

impl<S> tower_layer::Layer<S> for CodedErrorsLayer {
    type Service = CodedErrors<S>;

    fn layer(&self, inner: S) -> CodedErrors<S> {
        CodedErrors { inner }
    }
}

#[derive(Debug, Clone)]
struct CodedErrors<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for CodedErrors<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(recode(resp))
        })
    }
}

/// A trailers-only failure without the engine's code, rewritten when it is
/// one of tonic's request-reading failures.
fn recode(resp: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let h = resp.headers();
    if h.contains_key(CODE_METADATA_KEY) {
        return resp;
    }
    let Some(code) = h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()) else {
        return resp;
    };
    let message = h.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decode).unwrap_or_default();
    let e = match tonic::Code::from_i32(code) {
        tonic::Code::OutOfRange if message.contains("message length too large") => {
            err!(TooLarge, "the request is over the server's message limit (--grpc-max-message-bytes): {message}")
        }
        tonic::Code::Internal if message.contains("decode") => {
            err!(Decode, "the request is not a valid protobuf message: {message}")
        }
        _ => return resp,
    };
    status(&e).into_http()
}

/// grpc-message is percent-encoded (`%XX`).
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The names the health service reports: the server ("") and each service.
const SERVICE_NAMES: [&str; 3] = ["", "inference.GRPCInferenceService", "cuda_engine.v1.Engine"];

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("cuda-worker: cannot watch SIGTERM ({e}); stop with SIGINT");
            None
        }
    };
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn resolve(addr: &str) -> std::result::Result<SocketAddr, String> {
    match tokio::net::lookup_host(addr).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("--grpc {addr:?} resolves to no address")),
        Err(e) => Err(format!("--grpc {addr:?} is not HOST:PORT ({e})")),
    }
}

fn tls_config(cfg: &GrpcConfig) -> std::result::Result<Option<tonic::transport::ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else { return Ok(None) };
    let read = |p: &PathBuf, what: &str| std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()));
    let identity = tonic::transport::Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
    Ok(Some(tonic::transport::ServerTlsConfig::new().identity(identity)))
}

/// Serve until SIGTERM/SIGINT, then drain. Returns the exit code: 0 after a
/// drain, 2 when the server cannot start, 1 when it fails while serving.
pub async fn serve(engine: Arc<Engine>, addr: &str, cfg: GrpcConfig) -> u8 {
    for (name, path) in &cfg.indexes {
        if let Err(e) = engine.load_index(name, path.clone(), DevicePreference::Auto).await {
            eprintln!("cuda-worker: --index {name}={}: {e}", path.display());
            return 2;
        }
    }
    let tls = match tls_config(&cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cuda-worker: {e}");
            return 2;
        }
    };
    let addr = match resolve(addr).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cuda-worker: {e}");
            return 2;
        }
    };
    let incoming = match TcpIncoming::bind(addr) {
        Ok(i) => i.with_nodelay(Some(true)),
        Err(e) => {
            eprintln!("cuda-worker: cannot listen on {addr}: {e}");
            return 2;
        }
    };
    let bound = incoming.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
    let max = cfg.max_message_bytes.unwrap_or(engine.limits().max_envelope_bytes);
    let state = Arc::new(State {
        engine: engine.clone(),
        max_message_bytes: max,
        stream_concurrency: cfg.stream_concurrency,
        model: OnceLock::new(),
        draining: AtomicBool::new(false),
    });
    // Load the model now, in the background: ServerReady/ModelReady say
    // when it is there; calls that need it meanwhile wait for the load.
    let preload = state.clone();
    tokio::spawn(async move {
        if let Err(e) = preload.model().await {
            eprintln!("cuda-worker: loading the model failed (calls that need it answer E_MODEL): {e}");
        }
    });

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, tonic_health::ServingStatus::Serving).await;
    let mut oip = GrpcInferenceServiceServer::new(oip::Oip(state.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(CompressionEncoding::Gzip);
    let mut engine_svc = EngineServer::new(engine_service::EngineService(state.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(CompressionEncoding::Gzip);
    if cfg.gzip_responses {
        oip = oip.send_compressed(CompressionEncoding::Gzip);
        engine_svc = engine_svc.send_compressed(CompressionEncoding::Gzip);
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("cuda-worker: the TLS certificate or key is not usable: {e}");
                return 2;
            }
        };
    }
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = builder
        .layer(CodedErrorsLayer)
        .add_service(health_service)
        .add_service(InterceptedService::new(oip, stamp_arrival))
        .add_service(InterceptedService::new(engine_svc, stamp_arrival))
        .serve_with_incoming_shutdown(incoming, async move { stopped.cancelled().await });
    tokio::pin!(server);
    eprintln!("grpc listening on {bound}");
    tokio::select! {
        r = &mut server => {
            eprintln!("cuda-worker: the gRPC server stopped: {}", r.map_or_else(|e| e.to_string(), |()| "no error".into()));
            engine.close(Duration::ZERO).await;
            return 1;
        }
        _ = stop_signal() => {}
    }
    let started = Instant::now();
    eprintln!("cuda-worker: draining (up to {} ms)", cfg.drain.as_millis());
    state.draining.store(true, Ordering::Release);
    set_health(&reporter, tonic_health::ServingStatus::NotServing).await;
    stop.cancel();
    match tokio::time::timeout(cfg.drain, &mut server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("cuda-worker: the gRPC server failed while draining: {e}"),
        Err(_) => eprintln!("cuda-worker: the drain time ran out; cancelling the calls still running"),
    }
    engine.close(cfg.drain.saturating_sub(started.elapsed())).await;
    eprintln!("cuda-worker: stopped");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout("99999999m"), Some(Duration::from_millis(99_999_999)));
        for bad in ["", "m", "100", "100x", "123456789m", "-1m", "1.5S", " 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_message_percent_decoding() {
        assert_eq!(percent_decode("a%20b%25c"), "a b%c");
        assert_eq!(percent_decode("trailing%2"), "trailing%2");
        assert_eq!(percent_decode("%E2%9C%93"), "\u{2713}");
    }

    #[test]
    fn tonic_size_failures_are_recoded() {
        let tonic_own =
            Status::out_of_range("Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes")
                .into_http::<tonic::body::Body>();
        let r = recode(tonic_own);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()[CODE_METADATA_KEY], "E_TOO_LARGE");
        // Ours already carry the code and pass unchanged.
        let ours = status(&err!(InvalidArg, "x")).into_http::<tonic::body::Body>();
        assert_eq!(recode(ours).headers()["grpc-status"], "3");
        // Other tonic statuses pass unchanged.
        let other = Status::unimplemented("").into_http::<tonic::body::Body>();
        assert_eq!(recode(other).headers()["grpc-status"], "12");
    }
}
