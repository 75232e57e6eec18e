//! `cuda-grpc-shim`: the worker protocol on stdin/stdout (exactly as
//! `cuda-worker` speaks it, `stdio`), each job forwarded to a gRPC server
//! (`cuda-worker --grpc`, docs/grpc.md "Shim"):
//!
//! - ordinary jobs through `cuda_engine.v1.Engine/Submit` (the envelope as
//!   JSON; raw-byte payloads as `payload_b64`);
//! - the isolated process's requests: `"vectors":"f32"` embeddings through
//!   `Embed`, `"tensors":"binary"` inferences through the Open Inference
//!   Protocol's `ModelInfer`, `{"health":true}` through `Health`.
//!
//! A failed call is an `ok: false` reply carrying the remote engine's code
//! (from `x-cuda-engine-code`), or `E_REMOTE` when the server is unreachable
//! or answered without one. A cancelled job (the supervisor's `cancel`, or
//! its timeout) drops the call, which resets the gRPC stream, which cancels
//! the job on the server.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::EnvelopeInput;
use cuda_engine_core::envelope::{decode_base64, Encoding};
use cuda_engine_core::err;
use cuda_engine_core::error::{CoreError, Result};
use cuda_engine_core::grpc::proto::engine as pb;
use cuda_engine_core::grpc::proto::engine::engine_client::EngineClient;
use cuda_engine_core::grpc::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use cuda_engine_core::grpc::{status, tensor};
use cuda_engine_core::infer::{InferRequest, InferResponse};
use cuda_engine_core::jobs::JobOutput;
use cuda_engine_core::worker::protocol;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::stdio::{Outcome, Runner};

/// The environment variable naming the server when `--target` is not given.
pub const TARGET_ENV: &str = "CUDA_GRPC_TARGET";

/// How the shim reaches its server.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// `grpc://host:port` (plain) or `grpcs://host:port` (TLS); `http://`
    /// and `https://` mean the same; a bare `host:port` is plain.
    pub target: String,
    /// PEM CA certificate(s) trusted for `grpcs://` (required for TLS).
    pub tls_ca: Option<PathBuf>,
    /// The `target` of each Submit on the server (default `local`: run
    /// there, as `cuda-worker` runs its jobs).
    pub job_target: String,
    /// The largest request line or frame read from stdin.
    pub max_message_bytes: usize,
    /// gzip the requests (answers come gzipped only from a server run with
    /// `--grpc-gzip-responses`).
    pub gzip: bool,
}

/// The parsed target: the URI tonic dials and whether it is TLS.
pub fn parse_target(target: &str) -> std::result::Result<(String, bool), String> {
    let t = target.trim();
    let (rest, tls) = if let Some(r) = t.strip_prefix("grpc://").or_else(|| t.strip_prefix("http://")) {
        (r, false)
    } else if let Some(r) = t.strip_prefix("grpcs://").or_else(|| t.strip_prefix("https://")) {
        (r, true)
    } else if t.contains("://") {
        return Err(format!("the target {target:?} must start with grpc:// or grpcs://"));
    } else {
        (t, false)
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(format!("the target {target:?} must be grpc://HOST:PORT (or grpcs://HOST:PORT)"));
    }
    Ok((format!("{}://{rest}", if tls { "https" } else { "http" }), tls))
}

/// Jobs forwarded to one gRPC server.
pub struct Shim {
    engine: EngineClient<Channel>,
    oip: GrpcInferenceServiceClient<Channel>,
    /// The target as given (named in errors).
    target: String,
    job_target: String,
    max_message_bytes: usize,
}

impl Shim {
    /// A shim with a lazily connected channel: an unreachable server is each
    /// job's `E_REMOTE` answer, not a start-up failure.
    pub fn new(cfg: &ShimConfig) -> std::result::Result<Shim, String> {
        let (uri, tls) = parse_target(&cfg.target)?;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("the target {:?} is not a valid address: {e}", cfg.target))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if tls {
            let ca = cfg.tls_ca.as_ref().ok_or("a grpcs:// target needs --tls-ca PEM (the CA to trust)")?;
            let pem = std::fs::read(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            let host = uri.trim_start_matches("https://").rsplit_once(':').map_or("", |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(host);
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS for {:?}: {e}", cfg.target))?;
        }
        let channel = endpoint.connect_lazy();
        // Answers can be larger than requests (base64 results, JSON).
        let limit = cfg.max_message_bytes.saturating_mul(2);
        let mut engine =
            EngineClient::new(channel.clone()).max_decoding_message_size(limit).max_encoding_message_size(limit);
        let mut oip =
            GrpcInferenceServiceClient::new(channel).max_decoding_message_size(limit).max_encoding_message_size(limit);
        engine = engine.accept_compressed(CompressionEncoding::Gzip);
        oip = oip.accept_compressed(CompressionEncoding::Gzip);
        if cfg.gzip {
            engine = engine.send_compressed(CompressionEncoding::Gzip);
            oip = oip.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Shim {
            engine,
            oip,
            target: cfg.target.clone(),
            job_target: cfg.job_target.clone(),
            max_message_bytes: cfg.max_message_bytes,
        })
    }

    /// A failed call as the protocol's error: the remote engine's code when
    /// it sent one, else E_REMOTE naming the server.
    fn error(&self, s: &tonic::Status) -> CoreError {
        match status::engine_code(s) {
            Some(code) => {
                let msg = s.message();
                let msg = msg.strip_prefix(code.as_str()).and_then(|m| m.strip_prefix(": ")).unwrap_or(msg);
                CoreError::new(code, format!("{msg} (from {})", self.target))
            }
            None => {
                let e = status::from_status(s, &self.target);
                if e.code == cuda_engine_core::ErrorCode::Remote {
                    e
                } else {
                    CoreError::new(cuda_engine_core::ErrorCode::Remote, e.message)
                }
            }
        }
    }

    async fn cancellable<T>(
        &self,
        cancel: &CancellationToken,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        tokio::select! {
            // Dropping the call resets its stream: the server cancels the job.
            _ = cancel.cancelled() => Err(CoreError::cancelled()),
            r = call => r.map(tonic::Response::into_inner).map_err(|s| self.error(&s)),
        }
    }
}

/// The envelope of a protocol request, as JSON text for Submit. Raw-byte
/// payloads become `payload_b64`.
pub fn envelope_json(input: EnvelopeInput) -> Result<String> {
    let raw = match input {
        EnvelopeInput::Bytes(b) => {
            return String::from_utf8(b).map_err(|_| err!(Envelope, "the envelope is not UTF-8 JSON"));
        }
        EnvelopeInput::Raw(r) => r,
    };
    let mut obj = Map::new();
    if let Some(id) = raw.id {
        obj.insert("id".into(), Value::String(id));
    }
    if let Some(t) = raw.job_type {
        obj.insert("type".into(), Value::String(t));
    }
    if let Some(p) = raw.payload {
        obj.insert("payload".into(), p);
    }
    if let Some(b) = raw.payload_bytes {
        obj.insert("payload_b64".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(b)));
    } else if let Some(b64) = raw.payload_b64 {
        obj.insert("payload_b64".into(), Value::String(b64));
    }
    if let Some(enc) = raw.encoding {
        obj.insert("encoding".into(), Value::String(enc));
    }
    serde_json::to_string(&Value::Object(obj)).map_err(|e| err!(Internal, "the envelope could not be written: {e}"))
}

/// A job result's wire JSON (`JobResult::to_json`: `result` or
/// `result_b64`, `encoding`) as the protocol's outcome.
pub fn job_result_outcome(json: &str) -> std::result::Result<(JobOutput, &'static str), String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = v else { return Err("not a JSON object".into()) };
    if obj.get("ok").and_then(Value::as_bool) != Some(true) {
        return Err("`ok` is not true".into());
    }
    let encoding = obj.get("encoding").and_then(Value::as_str).and_then(Encoding::parse).map(Encoding::as_str);
    if let Some(b64) = obj.remove("result_b64") {
        let b64 = b64.as_str().ok_or("`result_b64` is not a string")?;
        let bytes = decode_base64(b64, "result_b64").map_err(|e| e.message)?;
        return Ok((JobOutput::Bytes(bytes), encoding.unwrap_or("raw")));
    }
    let result = obj.remove("result").ok_or("no `result` or `result_b64`")?;
    Ok((JobOutput::Json(result), encoding.unwrap_or("json")))
}

impl Runner for Shim {
    fn name(&self) -> &'static str {
        "cuda-grpc-shim"
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    async fn submit(&self, input: EnvelopeInput, cancel: CancellationToken) -> Outcome {
        let json = envelope_json(input)?;
        let req = pb::SubmitRequest {
            envelope: Some(pb::submit_request::Envelope::Json(json)),
            target: self.job_target.clone(),
        };
        let mut client = self.engine.clone();
        let resp = self.cancellable(&cancel, client.submit(req)).await?;
        job_result_outcome(&resp.json)
            .map_err(|why| err!(Remote, "{} answered a Submit whose result is not a job result ({why})", self.target))
    }

    async fn embed(&self, texts: Vec<String>, opts: EmbedOptions, cancel: CancellationToken) -> Result<Vec<Vec<f32>>> {
        let req =
            pb::EmbedRequest { texts, normalize: opts.normalize, truncate: Some(opts.truncate), ..Default::default() };
        let mut client = self.engine.clone();
        let resp = self.cancellable(&cancel, client.embed(req)).await?;
        protocol::vectors_from_f32_bytes(&resp.embeddings, resp.count as usize)
            .map_err(|e| err!(Remote, "{} answered malformed embeddings: {}", self.target, e.message))
    }

    async fn infer(&self, req: InferRequest, cancel: CancellationToken) -> Result<InferResponse> {
        let req = tensor::request_to_proto(&req);
        let mut client = self.oip.clone();
        let resp = self.cancellable(&cancel, client.model_infer(req)).await?;
        tensor::response_from_proto(&resp)
            .map_err(|e| err!(Remote, "{} answered a malformed inference: {}", self.target, e.message))
    }

    async fn health(&self) -> Result<Value> {
        let mut client = self.engine.clone();
        let resp = self.cancellable(&CancellationToken::new(), client.health(pb::HealthRequest {})).await?;
        serde_json::from_str(&resp.json)
            .map_err(|e| err!(Remote, "{} answered a health document that is not JSON: {e}", self.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cuda_engine_core::envelope::RawEnvelope;

    #[test]
    fn targets() {
        assert_eq!(parse_target("grpc://127.0.0.1:8001").unwrap(), ("http://127.0.0.1:8001".into(), false));
        assert_eq!(parse_target("grpcs://h:1/").unwrap(), ("https://h:1".into(), true));
        assert_eq!(parse_target("localhost:9").unwrap(), ("http://localhost:9".into(), false));
        assert!(parse_target("unix:///x").is_err());
        assert!(parse_target("grpc://nohost").is_err());
        assert!(parse_target("grpc://h:1/path").is_err());
    }

    #[test]
    fn raw_payloads_travel_as_base64() {
        let raw = RawEnvelope {
            id: Some("j".into()),
            job_type: Some("echo".into()),
            payload_bytes: Some(vec![0, 255, 1]),
            encoding: Some("raw".into()),
            ..Default::default()
        };
        let v: Value = serde_json::from_str(&envelope_json(EnvelopeInput::Raw(raw)).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"id": "j", "type": "echo", "payload_b64": "AP8B", "encoding": "raw"}));
    }

    #[test]
    fn job_results_read_back() {
        let (out, enc) =
            job_result_outcome(r#"{"id":"j","type":"echo","ok":true,"encoding":"raw","result_b64":"AP8B"}"#).unwrap();
        assert_eq!((out, enc), (JobOutput::Bytes(vec![0, 255, 1]), "raw"));
        let (out, enc) = job_result_outcome(r#"{"id":"j","ok":true,"encoding":"json","result":{"a":1}}"#).unwrap();
        assert_eq!((out, enc), (JobOutput::Json(serde_json::json!({"a": 1})), "json"));
        assert!(job_result_outcome(r#"{"ok":true}"#).is_err());
        assert!(job_result_outcome("[]").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn remote_codes_pass_and_bare_failures_are_e_remote() {
        let shim = Shim::new(&ShimConfig {
            target: "grpc://127.0.0.1:1".into(),
            tls_ca: None,
            job_target: "local".into(),
            max_message_bytes: 1024,
            gzip: false,
        })
        .unwrap();
        let s = status::to_status(&CoreError::new(cuda_engine_core::ErrorCode::UnknownType, "unknown job type `x`"));
        let e = shim.error(&s);
        assert_eq!(e.code, cuda_engine_core::ErrorCode::UnknownType);
        assert!(e.message.starts_with("unknown job type `x` (from grpc://127.0.0.1:1)"), "{}", e.message);
        let e = shim.error(&tonic::Status::unavailable("tcp connect error"));
        assert_eq!(e.code, cuda_engine_core::ErrorCode::Remote);
        assert!(e.message.contains("grpc://127.0.0.1:1"), "{}", e.message);
        let e = shim.error(&tonic::Status::deadline_exceeded("late"));
        assert_eq!(e.code, cuda_engine_core::ErrorCode::Remote);
    }
}
