//! A sticky device fault poisons the CUDA backend: the faulting call and
//! every later one fail fast with E_CUDA_FAULT, and status reports it.
//! `#[ignore]`d: scripts/gpu-check.sh runs it on the GPU machine.
//!
//! Its own test binary: the injected illegal address ruins the process's
//! CUDA context for everything else. Skips plainly without a GPU.

use cuda_engine_core::backend::cuda::{CudaBackend, CudaOptions};
use cuda_engine_core::backend::{Backend, TokenBatch};
use cuda_engine_core::model::{BertWeights, ModelConfig};
use cuda_engine_core::ErrorCode;

mod common;
use common::model_dir;

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check.sh runs it with --ignored and CUDA_ENGINE_REQUIRE_GPU=1"]
fn sticky_fault_poisons_the_backend() {
    let p = cuda_engine_core::device::probe();
    if !p.available {
        let why = p.reason.as_deref().unwrap_or("none");
        assert!(
            std::env::var_os("CUDA_ENGINE_REQUIRE_GPU").is_none_or(|v| v != "1"),
            "CUDA_ENGINE_REQUIRE_GPU=1 but no CUDA device: {why}"
        );
        eprintln!("sticky_fault_poisons_the_backend: SKIPPED (no CUDA device: {why})");
        return;
    }
    let dir = model_dir();
    let config = ModelConfig::load(&dir).unwrap();
    let w = BertWeights::load(&dir.join("model.safetensors"), &config.bert).unwrap();
    let be = CudaBackend::new(&w, &config, &CudaOptions::default()).unwrap();
    let mut b = TokenBatch::new();
    b.push(&[101, 7592, 102], &[0, 0, 0]);
    assert!(be.forward(&b, false).is_ok());
    assert!(be.status().fault.is_none());

    let e = be.inject_fault_for_tests().unwrap_err();
    assert_eq!(e.code, ErrorCode::CudaFault, "{e}");
    let st = be.status();
    assert!(st.fault.is_some(), "status must report the fault: {st:?}");
    eprintln!("fault: {e}");

    let t = std::time::Instant::now();
    let e2 = be.forward(&b, false).unwrap_err();
    assert_eq!(e2.code, ErrorCode::CudaFault, "{e2}");
    assert!(t.elapsed().as_millis() < 50, "a poisoned backend must fail fast");
    eprintln!("after the fault: {e2}");
}
