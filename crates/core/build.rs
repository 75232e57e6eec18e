//! Generates the gRPC messages and services of `proto/` (core::grpc::proto).
//! protox parses the .proto files in Rust, so no protoc binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [root.join("inference/open_inference.proto"), root.join("cuda_engine/v1/engine.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        // Tensor payloads as `Bytes`: sliced from the received buffer, not copied.
        .bytes(".inference")
        .bytes(".cuda_engine.v1")
        .compile_fds(fds)?;
    Ok(())
}
