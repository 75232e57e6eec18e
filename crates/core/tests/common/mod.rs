//! Shared by the integration tests that load the real model.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::PathBuf;

/// The repository root (cargo runs tests with cwd = crates/core).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test model by the documented resolution rules, applied from the repo
/// root: `CUDA_ENGINE_MODEL`, else `<repo>/models/all-MiniLM-L6-v2`. Fails
/// (never skips) when it is missing.
pub fn model_dir() -> PathBuf {
    let dir = match std::env::var_os("CUDA_ENGINE_MODEL").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => repo_root().join("models/all-MiniLM-L6-v2"),
    };
    assert!(
        dir.join("model.safetensors").is_file(),
        "test model missing at {}: run scripts/fetch-model.sh (or set CUDA_ENGINE_MODEL)",
        dir.display()
    );
    dir
}
