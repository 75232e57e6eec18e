//! gRPC: the Open Inference Protocol (`inference.GRPCInferenceService`) and
//! the engine's own service (`cuda_engine.v1.Engine`), docs/grpc.md.
//!
//! - `proto`: the generated messages, clients and server traits;
//! - `status`: the one mapping between the engine's error codes and gRPC
//!   status codes (both ways);
//! - `tensor`: protobuf tensors <-> `infer::InferRequest` / `InferResponse`;
//! - `client`: the remote Open Inference Protocol client
//!   (`EngineOptions.remote`; the engine routes `target: 'remote'` here).
//!
//! The server is in the `cuda-worker` binary (`--grpc ADDR`).

pub mod client;
pub mod proto;
pub mod status;
pub mod tensor;
