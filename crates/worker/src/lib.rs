//! The pieces of the `cuda-worker` and `cuda-grpc-shim` binaries:
//!
//! - `stdio`: the worker protocol on stdin/stdout (one-shot and `--serve`),
//!   generic over what runs a job (a `stdio::Runner`): the engine in
//!   `cuda-worker`, a gRPC server in `cuda-grpc-shim`;
//! - `grpc`: `cuda-worker --grpc ADDR`, the engine as a gRPC server
//!   (docs/grpc.md "Server");
//! - `shim`: `cuda-grpc-shim`, the worker protocol forwarded to a gRPC
//!   server (docs/grpc.md "Shim").

pub mod grpc;
pub mod shim;
pub mod stdio;
