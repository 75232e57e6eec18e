//! cuda-engine-core: all the engine's logic, free of N-API.
//!
//! One module a concern (see DESIGN.md "Layout"): `envelope` decodes job
//! envelopes under limits, `jobs` routes them, `health` reports state,
//! `device` probes CUDA, `discovery` and `worker` find and drive an external
//! worker, `model` + `backend` + `batcher` compute embeddings, and `engine`
//! ties them together behind one handle.

pub mod error;

pub mod backend;
pub mod batcher;
pub mod device;
pub mod discovery;
pub mod engine;
pub mod envelope;
pub mod health;
pub mod infer;
pub mod jobs;
pub mod model;
pub mod worker;

pub use error::{CoreError, ErrorCode, Result};

/// The engine's version (the npm package shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
