//! The `.cu` kernel sources, compiled by NVRTC for the device's compute
//! capability once per (device, model shape, dtype), in parallel, through
//! the on-disk cubin cache of `super::nvrtc`, and kept loaded for the
//! process.
//!
//! Each file is one op family; each kernel exists per storage dtype as
//! `<op>_<dtype>` (`f16`, `bf16`, `f32`), and a program instantiates only
//! the dtype it is compiled for (`-DDTYPE_F16`, …). `common.cuh` is prepended to every
//! file (NVRTC gets no include path and no CUDA headers). The model's hidden
//! size and head size are compile-time macros (`-DHIDDEN=… -DHEAD_DIM=…`), so
//! row loops unroll fully and stay in registers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::nvrtc::{self, CacheUse};
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
    dtype: Dtype,
}

/// The loaded modules of one key, shared by every backend on that device.
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
    /// Wall time compiling (or reading from the disk cache) and loading the
    /// modules took for this call (0 when already loaded in this process).
    pub compile_ms: f64,
    /// Where the machine code came from: `hit` (disk cache), `miss`
    /// (compiled and cached), `off` (compiled, no cache), `loaded` (this
    /// process already had it).
    pub cache: &'static str,
}

fn dtype_macro(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F16 => "-DDTYPE_F16",
        Dtype::Bf16 => "-DDTYPE_BF16",
        Dtype::F32 => "-DDTYPE_F32",
    }
}

/// Compile (or read from the disk cache) every family for `key`, in
/// parallel: NVRTC compiles independent programs concurrently.
fn build(ctx: &Arc<CudaContext>, key: &Key) -> Result<(Modules, &'static str)> {
    let sources: Vec<(&'static str, String)> =
        FAMILIES.iter().map(|(file, src)| (*file, format!("{COMMON}\n#line 1 \"{file}\"\n{src}"))).collect();
    let options = vec![
        format!("-DHIDDEN={}", key.hidden),
        format!("-DHEAD_DIM={}", key.head_dim),
        dtype_macro(key.dtype).to_string(),
    ];
    let compiled: Vec<Result<(Ptx, CacheUse)>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|(file, src)| {
                let options = options.clone();
                s.spawn(move || nvrtc::compile(&nvrtc::Program { name: file, source: src, cc: key.cc, options }))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(err!(Internal, "an NVRTC compile thread panicked"))))
            .collect()
    });
    let mut by_file = HashMap::new();
    let mut uses = Vec::new();
    for ((file, _), result) in sources.iter().zip(compiled) {
        let (image, used) = result?;
        let module = ctx
            .load_module(image)
            .map_err(|e| super::mem::driver_err(e, &format!("loading the module of kernels/{file}")))?;
        by_file.insert(*file, module);
        uses.push(used);
    }
    // One word for the lot: all hits is a hit; any compile is a miss (or
    // off when nothing could be cached).
    let cache = if uses.iter().all(|u| *u == CacheUse::Hit) {
        CacheUse::Hit
    } else if uses.contains(&CacheUse::Miss) {
        CacheUse::Miss
    } else {
        CacheUse::Off
    };
    Ok((Modules { by_file }, cache.as_str()))
}

/// Compile (first time) and load the kernels for `ctx`'s device, this
/// model shape and `dtype`.
pub(crate) fn load(ctx: &Arc<CudaContext>, hidden: usize, head_dim: usize, dtype: Dtype) -> Result<Kernels> {
    let cc = ctx.compute_capability().map_err(|e| super::mem::driver_err(e, "reading the compute capability"))?;
    let key = Key { device: ctx.ordinal(), cc, hidden, head_dim, dtype };
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let t0 = std::time::Instant::now();
    let mut fresh = None;
    let modules = {
        let mut g = match cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.get(&key) {
            Some(m) => m.clone(),
            None => {
                let (m, used) = build(ctx, &key)?;
                let m = Arc::new(m);
                g.insert(key, m.clone());
                fresh = Some(used);
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
        compile_ms: if fresh.is_some() { t0.elapsed().as_secs_f64() * 1e3 } else { 0.0 },
        cache: fresh.unwrap_or("loaded"),
    })
}
