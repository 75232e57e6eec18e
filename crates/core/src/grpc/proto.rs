//! Generated from `proto/` by build.rs (tonic-prost-build).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod engine {
    tonic::include_proto!("cuda_engine.v1");
}
