//! `cuda-grpc-shim`: a drop-in `cuda-worker` (the same stdin/stdout
//! protocol, one-shot and `--serve`) that runs each job on a gRPC server
//! (`cuda-worker --grpc`), so `CUDA_WORKER_PATH=.../cuda-grpc-shim` gives
//! old callers gRPC unchanged. docs/grpc.md "Shim".

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cuda_engine_core::options::EngineOptions;
use cuda_worker::shim::{Shim, ShimConfig, TARGET_ENV};
use cuda_worker::stdio;
use serde_json::Value;

const USAGE: &str = "usage: cuda-grpc-shim [--serve] --target grpc://HOST:PORT [options]
  (no flag)            one-shot: one request on stdin, one response on stdout
  --serve              persistent: NDJSON requests with ids until stdin closes
  --target URL         the gRPC server: grpc://HOST:PORT, or grpcs://HOST:PORT for TLS;
                       default: $CUDA_GRPC_TARGET
  --tls-ca PEM         the CA certificate to trust for grpcs:// (default: $CUDA_GRPC_TLS_CA)
  --job-target T       the target of each job on the server: local (default), auto, worker
  --gzip               compress requests
  --options JSON       EngineOptions (only the limits are used: maxEnvelopeBytes bounds the
                       requests read); default: $CUDA_ENGINE_OPTIONS
  --preload            accepted for cuda-worker compatibility (the server loads its model)
  --version            print the version";

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("cuda-grpc-shim: {msg}\n{USAGE}");
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let mut serve = false;
    let mut target = std::env::var(TARGET_ENV).ok().filter(|s| !s.trim().is_empty());
    let mut tls_ca = std::env::var_os("CUDA_GRPC_TLS_CA").filter(|s| !s.is_empty()).map(PathBuf::from);
    let mut job_target = "local".to_string();
    let mut gzip = false;
    let mut options = match cuda_worker::options_from_env() {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--serve" => serve = true,
            "--preload" => {}
            "--gzip" => gzip = true,
            "--target" | "--tls-ca" | "--job-target" | "--options" => {
                let Some(v) = args.next() else { return usage_error(&format!("{a} needs a value")) };
                match a.as_str() {
                    "--target" => target = Some(v),
                    "--tls-ca" => tls_ca = Some(PathBuf::from(v)),
                    "--job-target" => {
                        if !["local", "auto", "worker"].contains(&v.as_str()) {
                            return usage_error(&format!("--job-target must be local, auto or worker, got {v:?}"));
                        }
                        job_target = v;
                    }
                    _ => match serde_json::from_str::<Value>(&v) {
                        Ok(o) => options = o,
                        Err(_) => return usage_error("--options needs a JSON object"),
                    },
                }
            }
            "--version" => {
                println!("cuda-grpc-shim {}", cuda_engine_core::VERSION);
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let Some(target) = target else {
        return usage_error(&format!("no server: give --target grpc://HOST:PORT or set {TARGET_ENV}"));
    };
    // The same schema as everywhere: unknown keys are errors.
    let config = match EngineOptions::from_json(&options).and_then(EngineOptions::into_config) {
        Ok(c) => c,
        Err(e) => return usage_error(&e.to_string()),
    };
    let cfg = ShimConfig {
        target,
        tls_ca,
        job_target,
        max_message_bytes: config.limits.max_envelope_bytes + 1024 * 1024,
        gzip,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cuda-grpc-shim: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async move {
        let shim = match Shim::new(&cfg) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("cuda-grpc-shim: {e}");
                return 64;
            }
        };
        if serve {
            stdio::serve(shim).await
        } else {
            stdio::oneshot(shim).await
        }
    });
    ExitCode::from(code)
}
