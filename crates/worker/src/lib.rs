//! The pieces of the `cuda-worker` and `cuda-grpc-shim` binaries:
//!
//! - `stdio`: the worker protocol on stdin/stdout (one-shot and `--serve`),
//!   generic over what runs a job (a `stdio::Runner`): the engine in
//!   `cuda-worker`, a gRPC server in `cuda-grpc-shim`;
//! - `grpc`: `cuda-worker --grpc ADDR`, the engine as a gRPC server
//!   (docs/grpc.md "Server");
//! - `indexes`: the isolated process's vector index copies
//!   (`isolation: 'process'`);
//! - `shim`: `cuda-grpc-shim`, the worker protocol forwarded to a gRPC
//!   server (docs/grpc.md "Shim").

pub mod grpc;
pub mod indexes;
pub mod shim;
pub mod stdio;

/// `CUDA_ENGINE_OPTIONS` as JSON (the default of `--options` in both
/// binaries); null when unset or blank, a message when it is not JSON.
pub fn options_from_env() -> Result<serde_json::Value, String> {
    match std::env::var("CUDA_ENGINE_OPTIONS") {
        Ok(s) if !s.trim().is_empty() => {
            serde_json::from_str(&s).map_err(|e| format!("CUDA_ENGINE_OPTIONS is not JSON: {e}"))
        }
        _ => Ok(serde_json::Value::Null),
    }
}
