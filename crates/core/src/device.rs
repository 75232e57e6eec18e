//! CUDA device probing for `health()`: is a CUDA device really usable here?
//!
//! cudarc panics (rather than returning Err) when a CUDA library is missing,
//! and even formatting its errors calls into libcuda, so every call here is
//! behind `is_culib_present()` and `catch_unwind`.

use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

/// Which device local compute should use (`EngineOptions.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePreference {
    /// CUDA when a device initialises, else the CPU (health says why).
    #[default]
    Auto,
    Cpu,
    /// CUDA or fail with `E_CUDA_UNAVAILABLE`; `Some(i)` pins device `i`.
    Cuda(Option<usize>),
}

impl DevicePreference {
    /// `'auto'`, `'cpu'` or `'cuda'` (a device index is a number, not a string).
    pub fn parse(s: &str) -> Option<DevicePreference> {
        match s {
            "auto" => Some(DevicePreference::Auto),
            "cpu" => Some(DevicePreference::Cpu),
            "cuda" => Some(DevicePreference::Cuda(None)),
            _ => None,
        }
    }
}

/// One CUDA device as `health().devices` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub compute_capability: String,
    pub memory_total: u64,
    pub memory_free: u64,
}

/// The outcome of probing CUDA once per process.
#[derive(Debug, Clone)]
pub struct CudaProbe {
    /// True only when a context really initialised on at least one device.
    pub available: bool,
    pub devices: Vec<DeviceInfo>,
    /// Why CUDA is not available (library missing, no device, init error).
    pub reason: Option<String>,
    /// The driver reports at least one device (usable or not): a GPU that is
    /// present but failed to start makes health `degraded`.
    pub present: bool,
    contexts: Vec<Arc<cudarc::driver::CudaContext>>,
}

static PROBE: OnceLock<CudaProbe> = OnceLock::new();

/// Probe CUDA (cached: the first call costs a context init, ~0.3 s on an H100).
/// Blocking: call it from a blocking thread, never from the JS thread.
pub fn probe() -> &'static CudaProbe {
    PROBE.get_or_init(|| match catch_unwind(AssertUnwindSafe(probe_uncached)) {
        Ok(p) => p,
        Err(_) => CudaProbe::unavailable("CUDA initialisation panicked (broken CUDA installation?)".into()),
    })
}

impl CudaProbe {
    fn unavailable(reason: String) -> CudaProbe {
        CudaProbe { available: false, devices: Vec::new(), reason: Some(reason), present: false, contexts: Vec::new() }
    }

    /// The devices with their current free memory (re-read on each call).
    pub fn devices_now(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .zip(&self.contexts)
            .map(|(info, ctx)| {
                let free = catch_unwind(AssertUnwindSafe(|| ctx.mem_get_info().ok().map(|(free, _)| free as u64)))
                    .ok()
                    .flatten()
                    .unwrap_or(info.memory_free);
                DeviceInfo { memory_free: free, ..info.clone() }
            })
            .collect()
    }

    /// The primary context of device `index`, if it initialised.
    pub fn context(&self, index: usize) -> Option<Arc<cudarc::driver::CudaContext>> {
        self.contexts.get(index).cloned()
    }
}

fn probe_uncached() -> CudaProbe {
    // SAFETY: only tries to dlopen the library; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return CudaProbe::unavailable("the CUDA driver library (libcuda.so) was not found".into());
    }
    let count = match cudarc::driver::CudaContext::device_count() {
        Ok(n) => n.max(0) as usize,
        Err(e) => return CudaProbe::unavailable(format!("CUDA driver present but cuInit failed: {e}")),
    };
    if count == 0 {
        return CudaProbe::unavailable("the CUDA driver reports no devices".into());
    }
    let mut devices = Vec::new();
    let mut contexts = Vec::new();
    let mut errors = Vec::new();
    for index in 0..count {
        match cudarc::driver::CudaContext::new(index) {
            Ok(ctx) => {
                let name = ctx.name().unwrap_or_else(|_| format!("CUDA device {index}"));
                let cc = ctx.compute_capability().map(|(a, b)| format!("{a}.{b}")).unwrap_or_default();
                let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
                devices.push(DeviceInfo {
                    index,
                    name,
                    compute_capability: cc,
                    memory_total: total as u64,
                    memory_free: free as u64,
                });
                contexts.push(ctx);
            }
            Err(e) => errors.push(format!("device {index}: context init failed: {e}")),
        }
    }
    let available = !devices.is_empty();
    let reason = if errors.is_empty() { None } else { Some(errors.join("; ")) };
    CudaProbe { available, devices, reason, present: true, contexts }
}
