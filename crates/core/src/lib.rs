//! cuda-engine-core: all the engine's logic, free of N-API.
//!
//! One module a concern; dependencies point one way (docs/architecture.md
//! draws the map, `scripts/check-core-cycles.py` checks it):
//!
//! - `engine` (the handle: admission, routing, close, health) and `options`
//!   (the one options schema) at the top;
//! - `embedder` (model + backend + batcher + tokenization), `worker` (the
//!   external process), `infer` (Open Inference Protocol: `protocol` types
//!   and the `run`ner), `grpc` (generated protos, the status mapping,
//!   protobuf tensors, and the remote client of `EngineOptions.remote`);
//! - `batcher` and `backend` (CPU, CUDA) below them;
//! - leaves: `model` (files: config, weights, tokenizer, resolution),
//!   `envelope`, `jobs`, `device`, `discovery`, `error`, `metrics` (counters
//!   and histograms: the engine and the batcher record, docs/metrics.md).

pub mod error;

pub mod backend;
pub mod batcher;
pub mod device;
pub mod discovery;
pub mod embedder;
pub mod engine;
pub mod envelope;
pub mod grpc;
pub mod health;
pub mod infer;
pub mod isolated_index;
pub mod isolation;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod options;
pub mod vector;
pub mod worker;

pub use error::{CoreError, ErrorCode, Result};

/// The engine's version (the npm package shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
