//! The remote Open Inference Protocol client (`EngineOptions.remote`,
//! docs/grpc.md "Client"): `ModelInfer` on any server that speaks
//! `inference.GRPCInferenceService` (Triton, KServe, MLServer, this
//! project's `cuda-worker --grpc`).
//!
//! - One tonic `Channel` balanced over every endpoint
//!   (`Channel::balance_list`), created on the first call: opening an engine
//!   with an unreachable remote neither fails nor waits.
//! - A deadline per call: the call's `timeoutMs`, at most `remote.timeoutMs`,
//!   sent as `grpc-timeout` and enforced here (`E_TIMEOUT`).
//! - The caller's cancellation token (AbortSignal, a closing engine) drops
//!   the RPC, which resets its HTTP/2 stream (`E_CANCELLED`).
//! - Retries only on `UNAVAILABLE` (the code of a connection that could not
//!   be made or broke, and of an overloaded or closing engine), at most
//!   `remote.retries` times, with a short doubling back-off, within the
//!   call's deadline.
//! - Any other failure: `grpc::status::from_status` (`E_REMOTE` naming the
//!   endpoint, the gRPC status and the remote engine's code).
//!
//! It knows nothing of the engine (`crate::engine` routes calls here).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::proto::inference as pb;
use super::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::status::from_status;
use super::tensor::{parameters_to_proto, request_to_proto, response_from_proto};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::infer::{InferRequest, InferResponse, ModelMetadata, TensorData, TensorMetadata};

/// The remote model `embed` uses, and `infer` when the request names none.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";
/// The BYTES `[n]` input that carries the texts of `embed`.
pub const DEFAULT_EMBED_INPUT: &str = "text";
/// The FP32 `[n, dims]` output `embed` reads.
pub const DEFAULT_EMBED_OUTPUT: &str = "sentence_embedding";
/// Deadline of a remote call when neither the call nor `remote.timeoutMs` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP (and TLS) connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries on `UNAVAILABLE`.
pub const DEFAULT_RETRIES: u32 = 2;
pub const MAX_RETRIES: u32 = 10;
/// Largest message sent or received (tonic's own default is 4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Most endpoints of one remote.
pub const MAX_ENDPOINTS: usize = 64;
/// First back-off before a retry; doubles per retry, at most [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A server's CANCELLED / DEADLINE_EXCEEDED this close to the call's
/// deadline is the deadline (`E_TIMEOUT`), not a remote failure.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);
/// Deadline of the `ServerReady` probe of each endpoint that `health()` makes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One endpoint: `grpc://host:port` (plain HTTP/2) or `grpcs://host:port` (TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// As the user wrote it (trailing `/` removed); errors and health name it.
    pub url: String,
    pub tls: bool,
    /// `http://host:port` or `https://host:port`, what tonic connects to.
    uri: String,
}

impl RemoteEndpoint {
    /// Read `grpc://host:port` or `grpcs://host:port`; `what` names the
    /// option in errors (`options.remote.endpoints[1]`).
    pub fn parse(s: &str, what: &str) -> Result<RemoteEndpoint> {
        let bad = |why: &str| {
            err!(InvalidArg, "`{what}` must be grpc://host:port or grpcs://host:port (TLS); got {s:?}: {why}")
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix("grpc://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("grpcs://") {
            (true, r)
        } else {
            let why = if s.starts_with("http://") || s.starts_with("https://") {
                "write grpc:// for http:// and grpcs:// for https://"
            } else {
                "the scheme must be grpc:// or grpcs://"
            };
            return Err(bad(why));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("give only host:port (no path, query, user or spaces)"));
        }
        let uri = format!("{}://{rest}", if tls { "https" } else { "http" });
        let parsed: tonic::codegen::http::Uri = uri.parse().map_err(|e| bad(&format!("{e}")))?;
        let authority = parsed.authority().ok_or_else(|| bad("no host"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if authority.port_u16().is_none() {
            return Err(bad("the port is required (e.g. grpc://127.0.0.1:8001)"));
        }
        let scheme = if tls { "grpcs" } else { "grpc" };
        Ok(RemoteEndpoint { url: format!("{scheme}://{rest}"), tls, uri })
    }
}

/// The typed settings of `EngineOptions.remote` (options.rs reads them).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    pub endpoints: Vec<RemoteEndpoint>,
    /// Longest a remote call may take (the call's `timeoutMs` can only shorten it).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries on `UNAVAILABLE`.
    pub retries: u32,
    /// The remote model of `embed`, and of `infer` requests that name none.
    pub model: String,
    pub embed_input: String,
    pub embed_output: String,
    /// Largest message sent or received.
    pub max_message_bytes: usize,
    /// `grpcs://`: PEM file of the certificate authorities to trust instead
    /// of the built-in Mozilla roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
}

impl RemoteConfig {
    pub fn new(endpoints: Vec<RemoteEndpoint>) -> RemoteConfig {
        RemoteConfig {
            endpoints,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            model: DEFAULT_MODEL.into(),
            embed_input: DEFAULT_EMBED_INPUT.into(),
            embed_output: DEFAULT_EMBED_OUTPUT.into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            ca_file: None,
        }
    }
}

/// `health().remote`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteHealth {
    pub endpoints: Vec<RemoteEndpointHealth>,
    /// The remote model of `embed`.
    pub model: String,
    /// Calls on the remote now (retries included in one call).
    pub in_flight: usize,
    /// Remote calls finished, and how many of them failed (not counting
    /// calls cancelled by the caller).
    pub calls: u64,
    pub failures: u64,
    /// The last failure's message (`E_REMOTE …`, `E_TIMEOUT …`).
    pub last_error: Option<String>,
}

/// One endpoint in [`RemoteHealth`]: the outcome of the last `ServerReady`
/// probe (`health()` makes one, at most [`PROBE_TIMEOUT`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteEndpointHealth {
    pub url: String,
    /// Null until probed.
    pub ready: Option<bool>,
    pub error: Option<String>,
    /// Milliseconds since the probe answered.
    pub checked_ms_ago: Option<u64>,
}

#[derive(Debug, Default)]
struct Stats {
    calls: u64,
    failures: u64,
    last_error: Option<String>,
    /// Per endpoint: (ready, error, when).
    probes: Vec<Option<(bool, Option<String>, Instant)>>,
}

/// The client. Cheap to share (`Arc`); every method takes `&self`.
pub struct RemoteClient {
    config: RemoteConfig,
    /// All endpoints, as errors name them.
    label: String,
    endpoints: Vec<Endpoint>,
    channel: OnceLock<Channel>,
    /// One lazily connected channel per endpoint, for health probes only.
    probe_channels: Vec<OnceLock<Channel>>,
    in_flight: AtomicUsize,
    stats: Mutex<Stats>,
}

impl std::fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient").field("endpoints", &self.label).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a call in flight; decremented on drop (also when cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RemoteClient {
    /// Check the settings and build the endpoints (TLS included). Connects
    /// nothing and needs no runtime: the channel is made on the first call.
    pub fn new(config: RemoteConfig) -> Result<RemoteClient> {
        if config.endpoints.is_empty() {
            return Err(err!(InvalidArg, "`options.remote` names no endpoint"));
        }
        let ca = match &config.ca_file {
            Some(p) => Some(Certificate::from_pem(
                std::fs::read(p)
                    .map_err(|e| err!(InvalidArg, "`options.remote.caFile`: cannot read {}: {e}", p.display()))?,
            )),
            None => None,
        };
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let mut e = Endpoint::from_shared(ep.uri.clone())
                .map_err(|e| err!(InvalidArg, "`options.remote`: endpoint {}: {e}", ep.url))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                // A peer that vanished without closing its connection (a
                // hung host, a cable) is noticed within ~15 s.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .user_agent(format!("cuda-engine/{}", crate::VERSION))
                .map_err(|e| CoreError::internal(format!("user agent: {e}")))?;
            if ep.tls {
                let tls = match &ca {
                    Some(ca) => ClientTlsConfig::new().ca_certificate(ca.clone()),
                    None => ClientTlsConfig::new().with_webpki_roots(),
                };
                e = e.tls_config(tls).map_err(|e| err!(InvalidArg, "`options.remote`: TLS for {}: {e}", ep.url))?;
            }
            endpoints.push(e);
        }
        let label = config.endpoints.iter().map(|e| e.url.as_str()).collect::<Vec<_>>().join(", ");
        let n = endpoints.len();
        Ok(RemoteClient {
            label,
            endpoints,
            channel: OnceLock::new(),
            probe_channels: (0..n).map(|_| OnceLock::new()).collect(),
            in_flight: AtomicUsize::new(0),
            stats: Mutex::new(Stats { probes: vec![None; n], ..Stats::default() }),
            config,
        })
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// The endpoints as errors name them (`grpc://a:1, grpc://b:2`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A client on the balanced channel. Must run inside a tokio runtime
    /// (the balancer is a task), which every caller of the async methods is.
    fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        let channel = self.channel.get_or_init(|| Channel::balance_list(self.endpoints.iter().cloned())).clone();
        self.wrap(channel)
    }

    fn wrap(&self, channel: Channel) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes)
        // No `accept_compressed`: a server compresses only what the client
        // accepts, and gzip shrinks float32 embeddings by ~7% at a cost above
        // the GPU's compute time (docs/grpc.md "Compression").
    }

    /// The deadline of a call with `timeout` (None: `remote.timeoutMs`).
    fn budget(&self, timeout: Option<Duration>) -> Duration {
        timeout.map_or(self.config.timeout, |t| t.min(self.config.timeout))
    }

    fn check_size(&self, msg: &impl prost::Message, what: &str) -> Result<()> {
        let len = msg.encoded_len();
        if len > self.config.max_message_bytes {
            return Err(err!(
                TooLarge,
                "{what} for remote {} is {len} bytes, over `remote.maxMessageBytes` ({})",
                self.label,
                self.config.max_message_bytes
            ));
        }
        Ok(())
    }

    /// Run one RPC under the deadline, the cancellation token and the retry
    /// rule, and count it for health.
    async fn call<T, F, Fut>(&self, timeout: Option<Duration>, cancel: &CancellationToken, mut attempt: F) -> Result<T>
    where
        F: FnMut(GrpcInferenceServiceClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(&self.in_flight);
        let r = self.call_inner(timeout, cancel, &mut attempt).await;
        if !matches!(&r, Err(e) if e.code == ErrorCode::Cancelled) {
            let mut s = lock(&self.stats);
            s.calls += 1;
            if let Err(e) = &r {
                s.failures += 1;
                s.last_error = Some(format!("{}: {}", e.code, e.message));
            }
        }
        r
    }

    async fn call_inner<T, F, Fut>(
        &self,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        attempt: &mut F,
    ) -> Result<T>
    where
        F: FnMut(GrpcInferenceServiceClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let budget = self.budget(timeout);
        let deadline = tokio::time::Instant::now() + budget;
        let late =
            || err!(Timeout, "the remote call to {} did not finish within {} ms", self.label, budget.as_millis());
        let mut retries = 0;
        let mut backoff = BACKOFF;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            let rpc = tokio::time::timeout_at(deadline, attempt(self.client(), left));
            let status = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(CoreError::cancelled()),
                r = rpc => match r {
                    Err(_) => return Err(late()),
                    Ok(Ok(resp)) => return Ok(resp.into_inner()),
                    Ok(Err(status)) => status,
                },
            };
            // The server gave up at the deadline we sent (grpc-timeout) just
            // before our own timer: DEADLINE_EXCEEDED, or CANCELLED "Timeout
            // expired" from grpcio servers (MLServer). Either is E_TIMEOUT.
            let expired = deadline.saturating_duration_since(tokio::time::Instant::now()) < DEADLINE_SLACK;
            if expired && matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) {
                return Err(late());
            }
            if status.code() != tonic::Code::Unavailable || retries >= self.config.retries {
                let e = from_status(&status, &self.label);
                let e =
                    if retries > 0 { CoreError::new(e.code, format!("{} ({retries} retries)", e.message)) } else { e };
                return Err(e);
            }
            retries += 1;
            log::debug!(
                "remote {}: {:?}: {}; retry {retries} in {backoff:?}",
                self.label,
                status.code(),
                status.message()
            );
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(CoreError::cancelled()),
                _ = tokio::time::sleep_until(deadline) => return Err(late()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn malformed(&self, e: CoreError) -> CoreError {
        err!(Remote, "remote {} answered a response that does not fit the request: {}", self.label, e.message)
    }

    /// Embed `texts` on the remote model (`remote.model`): one `ModelInfer`
    /// with the BYTES `[n]` input `remote.embedInput` (raw contents), reading
    /// the `[n, dims]` output `remote.embedOutput` (FP32; FP16 and FP64 are
    /// converted). `normalize` travels as the request parameter `normalize`
    /// when given, `truncate` as `truncate: false` when false (what the
    /// engine's own server reads; others ignore unknown parameters).
    pub async fn embed(
        &self,
        texts: Vec<String>,
        normalize: Option<bool>,
        truncate: bool,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<Vec<Vec<f32>>> {
        let n = texts.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut raw = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum());
        for t in &texts {
            raw.extend_from_slice(&(t.len() as u32).to_le_bytes());
            raw.extend_from_slice(t.as_bytes());
        }
        drop(texts);
        let mut params = Map::new();
        if let Some(b) = normalize {
            params.insert("normalize".into(), Value::Bool(b));
        }
        if !truncate {
            params.insert("truncate".into(), Value::Bool(false));
        }
        let req = pb::ModelInferRequest {
            model_name: self.config.model.clone(),
            model_version: String::new(),
            id: String::new(),
            parameters: parameters_to_proto(&params),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: self.config.embed_input.clone(),
                datatype: "BYTES".into(),
                shape: vec![n as i64],
                parameters: Default::default(),
                contents: None,
            }],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: self.config.embed_output.clone(),
                parameters: Default::default(),
            }],
            raw_input_contents: vec![Bytes::from(raw)],
        };
        self.check_size(&req, "the embedding request")?;
        let resp = self.model_infer(req, timeout, &cancel).await?;
        let resp = response_from_proto(&resp).map_err(|e| self.malformed(e))?;
        self.embeddings(resp, n)
    }

    fn embeddings(&self, resp: InferResponse, n: usize) -> Result<Vec<Vec<f32>>> {
        let name = &self.config.embed_output;
        let Some(t) = resp.outputs.into_iter().find(|t| &t.name == name) else {
            return Err(err!(
                Remote,
                "remote {} answered without the output `{name}` (`remote.embedOutput`) of model `{}`",
                self.label,
                self.config.model
            ));
        };
        let dims = match t.shape[..] {
            [rows, d] if rows == n && d > 0 => d,
            _ => {
                return Err(err!(
                    Remote,
                    "remote {}: output `{name}` has shape {:?}, expected [{n}, dims] for {n} texts",
                    self.label,
                    t.shape
                ))
            }
        };
        let values: Vec<f32> = match t.data {
            TensorData::Fp32(v) => v,
            TensorData::Fp64(v) => v.into_iter().map(|x| x as f32).collect(),
            TensorData::Fp16(v) => v.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect(),
            other => {
                return Err(err!(
                    Remote,
                    "remote {}: output `{name}` is {}, expected FP32",
                    self.label,
                    other.datatype().as_str()
                ))
            }
        };
        Ok(values.chunks_exact(dims).map(<[f32]>::to_vec).collect())
    }

    async fn model_infer(
        &self,
        req: pb::ModelInferRequest,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<pb::ModelInferResponse> {
        self.call(timeout, cancel, |mut client, left| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(left);
            async move { client.model_infer(r).await }
        })
        .await
    }

    /// An Open Inference Protocol request on the remote (`model_name`
    /// absent: `remote.model`), every tensor sent raw; the answer's tensors
    /// are read raw or typed, as the server chose.
    pub async fn infer(
        &self,
        mut req: InferRequest,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<InferResponse> {
        if req.model_name.is_none() {
            req.model_name = Some(self.config.model.clone());
        }
        let msg = request_to_proto(&req);
        drop(req);
        self.check_size(&msg, "the inference request")?;
        let resp = self.model_infer(msg, timeout, &cancel).await?;
        response_from_proto(&resp).map_err(|e| self.malformed(e))
    }

    /// `ModelMetadata` of `model` (None: `remote.model`).
    pub async fn model_metadata(
        &self,
        model: Option<&str>,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<ModelMetadata> {
        let name = model.unwrap_or(&self.config.model).to_string();
        let m = self
            .call(timeout, &cancel, |mut client, left| {
                let mut r =
                    tonic::Request::new(pb::ModelMetadataRequest { name: name.clone(), version: String::new() });
                r.set_timeout(left);
                async move { client.model_metadata(r).await }
            })
            .await?;
        let t = |v: Vec<pb::model_metadata_response::TensorMetadata>| {
            v.into_iter().map(|t| TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape }).collect()
        };
        Ok(ModelMetadata {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: t(m.inputs),
            outputs: t(m.outputs),
            parameters: Map::new(),
        })
    }

    /// Probe every endpoint with `ServerReady` (at most [`PROBE_TIMEOUT`]
    /// each, all at once) and keep the outcome for [`RemoteClient::health`].
    pub async fn refresh_health(&self) {
        let mut probes = tokio::task::JoinSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let channel = self.probe_channels[i].get_or_init(|| ep.connect_lazy()).clone();
            let mut client = self.wrap(channel);
            let wait = PROBE_TIMEOUT.min(self.config.timeout);
            probes.spawn(async move {
                let mut r = tonic::Request::new(pb::ServerReadyRequest {});
                r.set_timeout(wait);
                let out = match tokio::time::timeout(wait, client.server_ready(r)).await {
                    Err(_) => (false, Some(format!("no answer to ServerReady within {} ms", wait.as_millis()))),
                    Ok(Ok(r)) if r.get_ref().ready => (true, None),
                    Ok(Ok(_)) => (false, Some("ServerReady answered ready: false".to_string())),
                    Ok(Err(s)) => (false, Some(format!("gRPC {:?}: {}", s.code(), s.message()))),
                };
                (i, out)
            });
        }
        while let Some(Ok((i, (ready, error)))) = probes.join_next().await {
            lock(&self.stats).probes[i] = Some((ready, error, Instant::now()));
        }
    }

    pub fn health(&self) -> RemoteHealth {
        let s = lock(&self.stats);
        RemoteHealth {
            endpoints: self
                .config
                .endpoints
                .iter()
                .zip(&s.probes)
                .map(|(ep, p)| RemoteEndpointHealth {
                    url: ep.url.clone(),
                    ready: p.as_ref().map(|p| p.0),
                    error: p.as_ref().and_then(|p| p.1.clone()),
                    checked_ms_ago: p.as_ref().map(|p| p.2.elapsed().as_millis() as u64),
                })
                .collect(),
            model: self.config.model.clone(),
            in_flight: self.in_flight.load(Ordering::Acquire),
            calls: s.calls,
            failures: s.failures,
            last_error: s.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = RemoteEndpoint::parse("grpc://127.0.0.1:8001", "x").unwrap();
        assert_eq!((e.url.as_str(), e.tls, e.uri.as_str()), ("grpc://127.0.0.1:8001", false, "http://127.0.0.1:8001"));
        let e = RemoteEndpoint::parse("grpcs://infer.example.com:443/", "x").unwrap();
        assert_eq!(
            (e.url.as_str(), e.tls, e.uri.as_str()),
            ("grpcs://infer.example.com:443", true, "https://infer.example.com:443")
        );
        let e = RemoteEndpoint::parse("grpc://[::1]:9", "x").unwrap();
        assert_eq!(e.uri, "http://[::1]:9");
        for (bad, why) in [
            ("127.0.0.1:8001", "scheme"),
            ("http://h:1", "write grpc://"),
            ("grpc://h", "port is required"),
            ("grpc://h:1/v2", "only host:port"),
            ("grpc://", "only host:port"),
            ("grpc://u@h:1", "only host:port"),
            ("grpc://h:99999", "grpc://"),
        ] {
            let e = RemoteEndpoint::parse(bad, "options.remote").unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArg);
            assert!(e.message.contains("`options.remote`") && e.message.contains(why), "{bad}: {}", e.message);
        }
    }

    fn client(url: &str) -> RemoteClient {
        RemoteClient::new(RemoteConfig::new(vec![RemoteEndpoint::parse(url, "x").unwrap()])).unwrap()
    }

    #[test]
    fn new_connects_nothing_and_needs_no_runtime() {
        let c = client("grpc://127.0.0.1:1");
        let h = c.health();
        assert_eq!((h.calls, h.in_flight, h.endpoints[0].ready), (0, 0, None));
        assert!(RemoteClient::new(RemoteConfig::new(vec![])).is_err());
        let mut cfg = RemoteConfig::new(vec![RemoteEndpoint::parse("grpcs://h:1", "x").unwrap()]);
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        let e = RemoteClient::new(cfg).unwrap_err();
        assert!(e.message.contains("`options.remote.caFile`"), "{}", e.message);
    }

    #[tokio::test]
    async fn unreachable_is_remote_fast_and_counted() {
        // A port nothing listens on: connection refused, retried, E_REMOTE.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = client(&format!("grpc://127.0.0.1:{port}"));
        let t = Instant::now();
        let e = c.embed(vec!["a".into()], None, true, None, CancellationToken::new()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Remote, "{e}");
        assert!(e.message.contains(&format!("127.0.0.1:{port}")) && e.message.contains("2 retries"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let h = c.health();
        assert_eq!((h.calls, h.failures, h.in_flight), (1, 1, 0));
        c.refresh_health().await;
        let h = c.health();
        assert_eq!(h.endpoints[0].ready, Some(false));
        assert!(h.endpoints[0].error.is_some());
        // Cancelled before the call: E_CANCELLED, not counted.
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = c.embed(vec!["a".into()], None, true, None, cancel).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Cancelled);
        assert_eq!(c.health().calls, 1);
    }

    #[tokio::test]
    async fn too_large_requests_are_refused_before_sending() {
        let mut cfg = RemoteConfig::new(vec![RemoteEndpoint::parse("grpc://127.0.0.1:1", "x").unwrap()]);
        cfg.max_message_bytes = 1024;
        let c = RemoteClient::new(cfg).unwrap();
        let e = c.embed(vec!["x".repeat(2000)], None, true, None, CancellationToken::new()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("remote.maxMessageBytes"), "{}", e.message);
    }
}
