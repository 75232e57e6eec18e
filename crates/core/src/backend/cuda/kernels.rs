//! The `.cu` kernel sources, compiled by NVRTC for the device's compute
//! capability once per process and (device, model shape), loaded lazily and
//! cached.
//!
//! Each file is one op family; each kernel exists per storage dtype as
//! `<op>_<dtype>` (`f16`, `bf16`, `f32`). `common.cuh` is prepended to every
//! file (NVRTC gets no include path and no CUDA headers). The model's hidden
//! size and head size are compile-time macros (`-DHIDDEN=… -DHEAD_DIM=…`), so
//! row loops unroll fully and stay in registers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::Dtype;
use crate::err;
use crate::error::Result;

const COMMON: &str = include_str!("kernels/common.cuh");

/// (file name, source) of every op family.
const FAMILIES: [(&str, &str); 5] = [
    ("embeddings.cu", include_str!("kernels/embeddings.cu")),
    ("layernorm.cu", include_str!("kernels/layernorm.cu")),
    ("activation.cu", include_str!("kernels/activation.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("pooling.cu", include_str!("kernels/pooling.cu")),
];

/// What a compiled program depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    device: usize,
    cc: (i32, i32),
    hidden: usize,
    head_dim: usize,
}

/// The loaded modules of one key (all dtypes), shared by every backend on
/// that device.
struct Modules {
    by_file: HashMap<&'static str, Arc<CudaModule>>,
}

static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Modules>>>> = OnceLock::new();

/// Kernel handles for one dtype.
pub(crate) struct Kernels {
    pub embed_ln: CudaFunction,
    pub bias_residual_ln: CudaFunction,
    pub to_f32: CudaFunction,
    pub bias_act: CudaFunction,
    pub attention: CudaFunction,
    pub pool: CudaFunction,
    /// Wall time NVRTC + module load took for this call (0 when cached).
    pub compile_ms: f64,
}

/// `sm_XY` for NVRTC's `--gpu-architecture`. The options take a
/// `&'static str`; the handful of strings are leaked once per process.
fn arch_name(cc: (i32, i32)) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
    let map = NAMES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = match map.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    g.entry(cc).or_insert_with(|| Box::leak(format!("sm_{}{}", cc.0, cc.1).into_boxed_str()))
}

fn compile(file: &str, src: &str, key: &Key) -> Result<Ptx> {
    let full = format!("{COMMON}\n#line 1 \"{file}\"\n{src}");
    let opts = CompileOptions {
        arch: Some(arch_name(key.cc)),
        options: vec![format!("-DHIDDEN={}", key.hidden), format!("-DHEAD_DIM={}", key.head_dim)],
        name: Some(file.to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(full, opts).map_err(|e| {
        err!(CudaUnavailable, "NVRTC could not compile kernels/{file} for sm_{}{}: {e:?}", key.cc.0, key.cc.1)
    })
}

/// Compile (first time) and load the kernels for `ctx`'s device and this
/// model shape, and return the functions of `dtype`.
pub(crate) fn load(ctx: &Arc<CudaContext>, hidden: usize, head_dim: usize, dtype: Dtype) -> Result<Kernels> {
    let cc = ctx.compute_capability().map_err(|e| super::mem::driver_err(e, "reading the compute capability"))?;
    let key = Key { device: ctx.ordinal(), cc, hidden, head_dim };
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let t0 = std::time::Instant::now();
    let mut fresh = false;
    let modules = {
        let mut g = match cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.get(&key) {
            Some(m) => m.clone(),
            None => {
                let mut by_file = HashMap::new();
                for (file, src) in FAMILIES {
                    let ptx = compile(file, src, &key)?;
                    let module = ctx
                        .load_module(ptx)
                        .map_err(|e| super::mem::driver_err(e, &format!("loading the module of kernels/{file}")))?;
                    by_file.insert(file, module);
                }
                let m = Arc::new(Modules { by_file });
                g.insert(key, m.clone());
                fresh = true;
                m
            }
        }
    };
    let suffix = dtype.kernel_suffix();
    let f = |file: &str, op: &str| -> Result<CudaFunction> {
        let name = format!("{op}_{suffix}");
        let module = modules.by_file.get(file).ok_or_else(|| err!(Internal, "kernel module {file} missing"))?;
        module.load_function(&name).map_err(|e| super::mem::driver_err(e, &format!("looking up kernel {name}")))
    };
    Ok(Kernels {
        embed_ln: f("embeddings.cu", "embed_ln")?,
        bias_residual_ln: f("layernorm.cu", "bias_residual_ln")?,
        to_f32: f("layernorm.cu", "to_f32")?,
        bias_act: f("activation.cu", "bias_act")?,
        attention: f("attention.cu", "attention")?,
        pool: f("pooling.cu", "pool")?,
        compile_ms: if fresh { t0.elapsed().as_secs_f64() * 1e3 } else { 0.0 },
    })
}
