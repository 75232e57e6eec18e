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
//! `"tensors":"binary"` inferences, `{"id":N,"health":true}`, frames
//! marked `index_op` for vector index copies; docs/worker-protocol.md).
//!
//! `cuda-worker --grpc ADDR` serves the same engine over gRPC instead
//! (the Open Inference Protocol, `cuda_engine.v1.Engine`, `grpc.health.v1`;
//! docs/grpc.md "Server"), until SIGTERM/SIGINT.
//!
//! Fault injection (tests only, docs/reliability.md "Fault isolation"):
//! `CUDA_ENGINE_FAULT_INJECT` is read once, here in `main`, from this
//! process's own environment; no request can set or change it.

mod fault;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::{CallOptions, Engine, EnvelopeInput, ModelLoading};
use cuda_engine_core::err;
use cuda_engine_core::error::Result;
use cuda_engine_core::infer::{InferRequest, InferResponse};
use cuda_engine_core::isolated_index::{IndexOp, IndexReply};
use cuda_engine_core::jobs::Target;
use cuda_engine_core::options::EngineOptions;
use cuda_worker::grpc::{self, GrpcConfig};
use cuda_worker::indexes;
use cuda_worker::stdio::{self, Outcome, Runner};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: cuda-worker [--serve | --grpc ADDR] [--options JSON]
  (no flag)       one-shot: one request on stdin, one response on stdout
  --serve         persistent: NDJSON requests with ids until stdin closes
  --options JSON  EngineOptions as JSON (e.g. {\"device\":\"cpu\"}); default: $CUDA_ENGINE_OPTIONS
  --preload       start loading the model at once (not on the first job)
  --version       print the version
gRPC server (docs/grpc.md \"Server\"):
  --grpc ADDR                    serve gRPC on ADDR (e.g. 127.0.0.1:8001; port 0: any free port,
                                 printed on stderr as `grpc listening on HOST:PORT`) until SIGTERM/SIGINT
  --grpc-max-message-bytes N     largest message received or sent (default: maxEnvelopeBytes)
  --grpc-stream-concurrency N    requests of one stream run at once (default 64)
  --grpc-gzip-responses          gzip answers for clients that accept gzip (default: requests
                                 may be gzipped, answers are not: embeddings do not compress)
  --drain-ms N                   on SIGTERM/SIGINT, wait up to N ms for calls in flight (default 10000)
  --tls-cert PEM --tls-key PEM   serve TLS with this certificate chain and private key
  --index NAME=PATH              load a vector index file as NAME (repeatable)
environment: CUDA_ENGINE_FAULT_INJECT=KIND[:N] (tests: segfault, abort, hang or
  sticky-cuda-fault on the N-th embedding job, default 1)";

fn main() -> ExitCode {
    // Read once, from this process's own environment, before anything else.
    if let Err(e) = fault::init_from_env() {
        return usage_error(&e);
    }
    let mut serve = false;
    let mut preload = false;
    let mut grpc_addr: Option<String> = None;
    let mut grpc = GrpcConfig::default();
    let mut options = match cuda_worker::options_from_env() {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let parsed: std::result::Result<(), String> = match a.as_str() {
            "--serve" => {
                serve = true;
                Ok(())
            }
            "--preload" => {
                preload = true;
                Ok(())
            }
            "--options" => match args.next().map(|s| serde_json::from_str::<Value>(&s)) {
                Some(Ok(v)) => {
                    options = v;
                    Ok(())
                }
                _ => Err("--options needs a JSON object".into()),
            },
            "--grpc" => value(&mut args, "--grpc").map(|v| grpc_addr = Some(v)),
            "--grpc-max-message-bytes" => {
                value(&mut args, &a).and_then(|v| positive(&a, &v)).map(|n| grpc.max_message_bytes = Some(n))
            }
            "--grpc-stream-concurrency" => {
                value(&mut args, &a).and_then(|v| positive(&a, &v)).map(|n| grpc.stream_concurrency = n.min(4096))
            }
            "--grpc-gzip-responses" => {
                grpc.gzip_responses = true;
                Ok(())
            }
            "--drain-ms" => value(&mut args, &a)
                .and_then(|v| v.parse::<u64>().map_err(|_| format!("--drain-ms needs milliseconds, got {v:?}")))
                .map(|ms| grpc.drain = Duration::from_millis(ms)),
            "--tls-cert" => value(&mut args, &a).map(|v| grpc.tls_cert = Some(PathBuf::from(v))),
            "--tls-key" => value(&mut args, &a).map(|v| grpc.tls_key = Some(PathBuf::from(v))),
            "--index" => value(&mut args, &a).and_then(|v| match v.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => {
                    grpc.indexes.push((name.to_string(), PathBuf::from(path)));
                    Ok(())
                }
                _ => Err(format!("--index needs NAME=PATH, got {v:?}")),
            }),
            "--version" => {
                println!("cuda-worker {}", cuda_engine_core::VERSION);
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            return usage_error(&e);
        }
    }
    if grpc_addr.is_none() && (grpc.tls_cert.is_some() || grpc.tls_key.is_some() || !grpc.indexes.is_empty()) {
        return usage_error("--tls-cert, --tls-key and --index need --grpc ADDR");
    }
    if grpc_addr.is_some() && serve {
        return usage_error("--serve and --grpc are two different modes: give one");
    }
    if grpc.tls_cert.is_some() != grpc.tls_key.is_some() {
        return usage_error("TLS needs both --tls-cert and --tls-key");
    }
    // The same schema as Engine.open: unknown keys are errors.
    let mut config = match EngineOptions::from_json(&options).and_then(EngineOptions::into_config) {
        Ok(c) => c,
        Err(e) => return usage_error(&e.to_string()),
    };
    if grpc_addr.is_none() {
        // A worker never proxies to another worker, and loads the model on
        // first use (a one-shot echo job must not pay for it). A gRPC
        // server is an engine like the addon's: its options are used as
        // given.
        config.worker = None;
        config.isolation = Default::default();
    }
    // The model loads on first use here (a one-shot echo job must not pay
    // for it) or, with --grpc and --preload, in the background from the
    // runtime: not in `Engine::open` on the main thread before the runtime
    // exists.
    config.model_loading = ModelLoading::OnFirstUse;
    let engine = match Engine::open(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cuda-worker: cannot open the engine: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = grpc_addr {
        // Several threads: message (de)coding of large tensors and many
        // connections; the engine's compute runs on its own threads.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cuda-worker: cannot start the async runtime: {e}");
                return ExitCode::from(2);
            }
        };
        return ExitCode::from(rt.block_on(grpc::serve(engine, &addr, grpc)));
    }
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
        let runner = Arc::new(EngineRunner(engine, indexes::Copies::default()));
        if serve {
            stdio::serve(runner).await
        } else {
            stdio::oneshot(runner).await
        }
    });
    ExitCode::from(code)
}

fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> std::result::Result<String, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn positive(flag: &str, v: &str) -> std::result::Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} needs a positive integer, got {v:?}")),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("cuda-worker: {msg}\n{USAGE}");
    ExitCode::from(64)
}

/// Jobs run on this process's engine, with `target: 'local'` (a worker
/// never proxies to another worker); the supervisor's vector index copies
/// beside it.
struct EngineRunner(Arc<Engine>, indexes::Copies);

impl EngineRunner {
    fn call(cancel: CancellationToken) -> CallOptions {
        CallOptions { cancel, target: Target::Local, ..CallOptions::default() }
    }
}

impl Runner for EngineRunner {
    fn name(&self) -> &'static str {
        "cuda-worker"
    }

    fn max_message_bytes(&self) -> usize {
        self.0.limits().max_envelope_bytes + 1024 * 1024
    }

    async fn submit(&self, input: EnvelopeInput, cancel: CancellationToken) -> Outcome {
        if stdio::is_embedding(&input) {
            fault::on_embedding()?;
        }
        let result = self.0.submit(input, Self::call(cancel)).await?;
        Ok((result.output, result.encoding))
    }

    async fn embed(&self, texts: Vec<String>, opts: EmbedOptions, cancel: CancellationToken) -> Result<Vec<Vec<f32>>> {
        fault::on_embedding()?;
        self.0.embed(texts, opts, Self::call(cancel)).await
    }

    async fn infer(&self, req: InferRequest, cancel: CancellationToken) -> Result<InferResponse> {
        self.0.infer(req, Self::call(cancel)).await
    }

    async fn index_op(&self, op: IndexOp, cancel: CancellationToken) -> Result<IndexReply> {
        self.1.run(&self.0, op, cancel).await
    }

    async fn health(&self) -> Result<Value> {
        let engine = self.0.clone();
        tokio::task::spawn_blocking(move || engine.health().to_json())
            .await
            .map_err(|e| err!(Internal, "health check failed: {e}"))
    }
}
