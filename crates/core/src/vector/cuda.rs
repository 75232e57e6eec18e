//! The GPU store: rows, tags and norms in device memory of one GPU, searched
//! by NVRTC kernels (`kernels/vector.cu`) and, for fp16 batches, cuBLAS.
//!
//! # Threads and memory
//! Every CUDA call runs on the device's executor thread through
//! [`GpuTasks::run`] (the model backend's executor when the index lives next
//! to the model, else a standalone one) and is launched on that executor's
//! stream. The device state (`Dev`: raw [`DevBuf`]s, the kernels, a cuBLAS
//! handle) sits behind an `Arc<Mutex<Option<Dev>>>` that only executor tasks
//! lock; every task synchronizes the stream before it returns (so no
//! temporary buffer is freed under a running kernel). Dropping the store
//! sends its buffers to the executor to be freed there; when the executor is
//! gone they are freed on the dropping thread with the context bound.
//!
//! # Layout
//! Row `s` of `dims` values starts at `s × ld` elements, `ld` = `dims`
//! rounded up to 8 (16-byte rows for fp16), the padding zero. Tags are u32
//! (`store::TOMBSTONE` for removed or never-written rows); L2 keeps `|x|²`
//! of every stored row, computed on the device in the contract's 8-lane
//! order. Growth allocates the doubled buffers, copies the old rows device
//! to device and only then frees the old ones: a failed allocation is
//! `E_GPU_OOM` with the store unchanged.
//!
//! # Search paths (all exact in the store contract's sense, k ≤ `MAX_K`)
//! - fp32 storage: `scan_f32`, CUDA cores, the contract's exact 8-lane
//!   product-then-add order (`__fmul_rn`/`__fadd_rn`, NVRTC `--fmad=false`):
//!   the same score bits as the CPU store. No tensor cores, no TF32.
//! - fp16, up to `gemm_min_batch` queries: `scan_f16`, one bandwidth-bound
//!   pass over the rows split across ~2 blocks per SM, all queries of a block
//!   group dotted against each row as it streams by.
//! - fp16, larger batches: cuBLAS `gemm_ex` (fp16 in, fp32 accumulate and
//!   out, `CUBLAS_COMPUTE_32F`; no TF32: the inputs are fp16) over chunks of
//!   rows into a score workspace of at most `SCORE_WS_BYTES` (256 MiB; env
//!   `CUDA_ENGINE_VECTOR_WS_MB`), each chunk followed by `select`. The
//!   whole B × N score matrix never exists for large B (B = 1024: chunks of
//!   65,536 rows). The queries are rounded to fp16 for the GEMM (≈ 2⁻¹¹
//!   relative per component; for unit vectors ~1e-5 on a score).
//!
//! - fp16 batches with k ≤ `MMA_MAX_K` (dims % 16 == 0, sm_80+; up to
//!   `MMA_MAX_BATCH` queries, env CUDA_ENGINE_VECTOR_MMA_MAX_B): `mma_scan`
//!   instead, mma.sync m16n8k16 tensor-core products (fp16 in, fp32
//!   accumulate) of 64 queries a block, kept in shared memory, against rows
//!   streamed through a cp.async pipeline, fused with the selection: no
//!   score matrix at all, one read of the rows per 64 queries.
//!
//! Every block publishes its k-th best per query (`atomicMax` on a per-query
//! bound) and starts from the best bound so far, so after the first blocks
//! almost nothing enters a selection buffer. Each path writes
//! per-(query, block) partial top-k lists; `merge` reduces
//! them exactly (partial memory bounded by `PARTIAL_BYTES`, merged in place
//! when a search needs more). Filtering (namespace tag / tombstone / `len`)
//! happens inside the kernels; ties go to the lower slot (the 64-bit
//! composite key of `vector.cu`). A zero score is reported as +0.0.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::result as blas;
use cudarc::cublas::sys as blas_sys;
use cudarc::driver::result as drv;
use cudarc::driver::sys::{CUdevice_attribute, CUdeviceptr, CUevent_flags, CUfunction_attribute_enum};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use half::f16;

use super::store::{Filter, Hit, Store};
use super::{Dtype, Metric};
use crate::backend::cuda::mem::{cublas_err, driver_err, DevBuf};
use crate::backend::cuda::nvrtc;
use crate::backend::cuda::{GpuTasks, TaskCtx};
use crate::err;
use crate::error::Result;

const SOURCE: &str = include_str!("kernels/vector.cu");

/// Default bound of the fp16 batch path's score workspace.
const SCORE_WS_BYTES: usize = 256 << 20;
/// Bound of the partial top-k lists of one search (more are merged in place).
const PARTIAL_BYTES: usize = 256 << 20;
/// The cuBLAS workspace (fixed, set on the handle).
const CUBLAS_WS_BYTES: usize = 32 << 20;
/// Staging bound for uploads, reads and compaction (done in chunks).
const STAGE_BYTES: usize = 64 << 20;
/// Default: batches above this many queries take the GEMM path (fp16).
const GEMM_MIN_BATCH: usize = 8;
/// Default largest batch of the fused tensor-core path `mma_scan` (fp16,
/// dims % 16 == 0, k ≤ `MMA_MAX_K`, sm_80+, its shared memory within the
/// device's opt-in); larger batches take cuBLAS + select. On the H200
/// (N=1M): B=64 0.57 ms fused vs 0.77 cuBLAS; B=256 1.75 vs 1.72; B=1024
/// 6.5 vs 4.8. Env CUDA_ENGINE_VECTOR_MMA_MAX_B (0: off).
const MMA_MAX_BATCH: usize = 256;
/// Largest k of the fused path (its per-query buffers live in shared memory).
const MMA_MAX_K: usize = 64;
/// Geometry of `mma_scan` (mirrors vector.cu): queries a block, rows a tile,
/// pipeline stages, values a stage, padded stage row (halves).
const MMA_Q: usize = 64;
const MMA_ROWS: usize = 256;
const MMA_STAGES: usize = 3;
const MMA_KC: usize = 64;

/// `mma_scan`'s pipeline (stages, values a stage): the defaults, or env
/// CUDA_ENGINE_VECTOR_MMA_STAGES (2..=8) / CUDA_ENGINE_VECTOR_MMA_KC (32 or
/// 64) for measurements. Read once per process (the kernels are cached).
fn mma_pipe() -> (usize, usize) {
    static PIPE: OnceLock<(usize, usize)> = OnceLock::new();
    *PIPE.get_or_init(|| {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let stages = num("CUDA_ENGINE_VECTOR_MMA_STAGES").map_or(MMA_STAGES, |v| v.clamp(2, 8));
        let kc = num("CUDA_ENGINE_VECTOR_MMA_KC").filter(|&v| v == 32 || v == 64).unwrap_or(MMA_KC);
        (stages, kc)
    })
}
/// Threads per block of every search kernel.
const BLOCK: u32 = 256;
/// Shared memory a search block may use (keeps 2+ blocks per SM).
const SMEM_BUDGET: usize = 96 << 10;

/// Kernel parameter array: pointers to the (local) argument values.
/// Only ever pass named local variables: they must outlive the launch call
/// (cuLaunchKernel copies the values before returning).
macro_rules! params {
    ($($a:ident),* $(,)?) => { [$( (&$a) as *const _ as *mut c_void ),*] };
}

// ---------------------------------------------------------------------------
// Kernels: compiled per (device, compute capability, dims), cached.

struct VecKernels {
    scan_f32: [CudaFunction; 4],
    scan_f16: [CudaFunction; 4],
    select: CudaFunction,
    merge: CudaFunction,
    mma_scan: CudaFunction,
    scatter_f32: CudaFunction,
    scatter_f16: CudaFunction,
    set_tags: CudaFunction,
    gather: CudaFunction,
    bench_fill: CudaFunction,
    sms: usize,
    smem_max: usize,
    /// Dynamic shared memory `mma_scan` may use (the device's opt-in).
    smem_optin: usize,
    /// `mma_scan` has a body (sm_80+: cp.async, ldmatrix, mma.sync).
    mma_ok: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Threads per row of the fp16 scan: the power of two (≤ 32) that leaves
/// each thread at most 4 chunks of 8 values.
fn g16(ld: usize) -> usize {
    (ld / 8).div_ceil(4).next_power_of_two().clamp(1, 32)
}

fn load_kernels(ctx: &Arc<CudaContext>, dims: usize, ld: usize) -> Result<Arc<VecKernels>> {
    type Cache = Mutex<HashMap<(usize, (i32, i32), usize), Arc<VecKernels>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cc = ctx.compute_capability().map_err(|e| driver_err(e, "reading the compute capability"))?;
    let key = (ctx.ordinal(), cc, dims);
    let mut cache = lock(CACHE.get_or_init(|| Mutex::new(HashMap::new())));
    if let Some(k) = cache.get(&key) {
        return Ok(k.clone());
    }
    let program = nvrtc::Program {
        name: "vector/kernels/vector.cu",
        source: SOURCE,
        cc,
        options: vec![
            // The storage contract's fixed summation order: no FMA contraction.
            "--fmad=false".into(),
            format!("-DDIMS={dims}"),
            format!("-DLD={ld}"),
            format!("-DG16={}", g16(ld)),
            format!("-DNSTG={}", mma_pipe().0),
            format!("-DKC={}", mma_pipe().1),
        ],
    };
    let (image, _) = nvrtc::compile(&program)?;
    let module = ctx.load_module(image).map_err(|e| driver_err(e, "loading the vector kernels"))?;
    let attr = |a: CUdevice_attribute| -> Result<usize> {
        ctx.attribute(a).map(|v| v.max(0) as usize).map_err(|e| driver_err(e, "reading a device attribute"))
    };
    let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1);
    let optin = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
    let smem_max = optin.clamp(48 << 10, SMEM_BUDGET.max(48 << 10));
    let f = |name: &str, big_smem: bool| -> Result<CudaFunction> {
        let func = module.load_function(name).map_err(|e| driver_err(e, &format!("looking up kernel {name}")))?;
        if big_smem && smem_max > 48 << 10 {
            func.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_max as i32,
            )
            .map_err(|e| driver_err(e, &format!("raising the shared memory of {name}")))?;
        }
        Ok(func)
    };
    let k = Arc::new(VecKernels {
        scan_f32: [f("scan_f32_q1", true)?, f("scan_f32_q2", true)?, f("scan_f32_q4", true)?, f("scan_f32_q8", true)?],
        scan_f16: [f("scan_f16_q1", true)?, f("scan_f16_q2", true)?, f("scan_f16_q4", true)?, f("scan_f16_q8", true)?],
        select: f("select", true)?,
        merge: f("merge", true)?,
        mma_scan: {
            let func = f("mma_scan", false)?;
            if optin > 48 << 10 {
                func.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    optin as i32,
                )
                .map_err(|e| driver_err(e, "raising the shared memory of mma_scan"))?;
            }
            func
        },
        scatter_f32: f("scatter_f32", false)?,
        scatter_f16: f("scatter_f16", false)?,
        set_tags: f("set_tags", false)?,
        gather: f("gather", false)?,
        bench_fill: f("bench_fill_f16", false)?,
        sms,
        smem_max,
        smem_optin: optin.max(48 << 10),
        mma_ok: cc.0 >= 8,
    });
    cache.insert(key, k.clone());
    Ok(k)
}

/// Launch `f` on `stream`.
///
/// # Safety
/// `params` must match the kernel's signature and every pointer in it must
/// be valid for the accesses the kernel makes with this grid.
unsafe fn launch(
    f: &CudaFunction,
    grid: u32,
    block: u32,
    smem: usize,
    stream: &CudaStream,
    params: &mut [*mut c_void],
    what: &str,
) -> Result<()> {
    // SAFETY: forwarded from the caller; the stream is the executor's, alive.
    unsafe { drv::launch_kernel(f.cu_function(), (grid, 1, 1), (block, 1, 1), smem as u32, stream.cu_stream(), params) }
        .map_err(|e| driver_err(e, &format!("launching {what}")))
}

// ---------------------------------------------------------------------------
// Selection geometry (mirrors the selector of vector.cu).

/// Bytes of shared memory of a selector for `q` queries of `s` entries.
fn sel_bytes(q: usize, s: usize) -> usize {
    q * s * 8 + q * 12
}

/// (C, S) for `k` and `pr` pushes per query per round: C the power of two ≥
/// k, S the power of two ≥ C + 2·pr (at least 512).
fn sel_dims(k: usize, pr: usize) -> (usize, usize) {
    let c = k.next_power_of_two();
    (c, (c + 2 * pr).next_power_of_two().max(512))
}

/// Decode a composite (see vector.cu) into a hit; 0 is "none".
fn decode(c: u64) -> Option<Hit> {
    if c == 0 {
        return None;
    }
    let hi = (c >> 32) as u32;
    let bits = if hi & 0x8000_0000 != 0 { hi & 0x7fff_ffff } else { !hi };
    Some(Hit { slot: !(c as u32), key: f32::from_bits(bits) })
}

// ---------------------------------------------------------------------------
// Device state.

/// A cuBLAS handle; destroyed on drop without panicking.
struct Blas(blas_sys::cublasHandle_t);

// SAFETY: the handle is only used and destroyed on the executor thread (or,
// when the executor is gone, on the thread that drops the store, with the
// context bound and nothing else using it).
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed once.
        let _ = unsafe { blas::destroy_handle(self.0) };
    }
}

struct Dev {
    // Drop order: the handle before its workspace.
    blas: Option<Blas>,
    blas_ws: Option<DevBuf>,
    /// Search arena (queries, partial lists, results, scores), grown on demand.
    arena: Option<DevBuf>,
    rows: DevBuf,
    tags: DevBuf,
    norms: Option<DevBuf>,
    k: Arc<VecKernels>,
}

impl Dev {
    fn held(&self) -> u64 {
        let b = |x: &Option<DevBuf>| x.as_ref().map_or(0, |d| d.bytes() as u64);
        self.rows.bytes() as u64 + self.tags.bytes() as u64 + b(&self.norms) + b(&self.arena) + b(&self.blas_ws)
    }
}

/// Knobs read once at construction (env, for measurements).
#[derive(Clone, Copy)]
struct Tune {
    score_ws: usize,
    gemm_min_batch: usize,
    /// Blocks per SM of the fp16 scan (env CUDA_ENGINE_VECTOR_SCAN_BPS).
    scan_bps: usize,
    /// Largest batch of the fused tensor-core path (env
    /// CUDA_ENGINE_VECTOR_MMA_MAX_B; 0: off).
    mma_max_batch: usize,
}

impl Tune {
    fn from_env() -> Tune {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        Tune {
            score_ws: num("CUDA_ENGINE_VECTOR_WS_MB").map_or(SCORE_WS_BYTES, |m| m.clamp(1, 1 << 16) << 20),
            gemm_min_batch: num("CUDA_ENGINE_VECTOR_GEMM_MIN_B").unwrap_or(GEMM_MIN_BATCH),
            scan_bps: num("CUDA_ENGINE_VECTOR_SCAN_BPS").map_or(4, |v| v.clamp(1, 32)),
            mma_max_batch: num("CUDA_ENGINE_VECTOR_MMA_MAX_B").unwrap_or(MMA_MAX_BATCH),
        }
    }
}

/// What one search needs to know about the store.
#[derive(Clone, Copy)]
struct Shape {
    dims: usize,
    ld: usize,
    dtype: Dtype,
    l2: bool,
    tune: Tune,
}

impl Shape {
    fn row_bytes(&self) -> usize {
        self.ld * self.dtype.size()
    }
}

/// The GPU store (see the module docs).
pub(crate) struct CudaStore {
    tasks: GpuTasks,
    shape: Shape,
    capacity: usize,
    dev: Arc<Mutex<Option<Dev>>>,
    held: Arc<AtomicU64>,
}

fn alloc_storage(shape: &Shape, capacity: usize, stream: &CudaStream) -> Result<(DevBuf, DevBuf, Option<DevBuf>)> {
    let cap = capacity.max(1);
    let row_bytes = cap
        .checked_mul(shape.row_bytes())
        .ok_or_else(|| err!(TooLarge, "{capacity} rows of {} bytes overflow", shape.row_bytes()))?;
    let rows = DevBuf::new(row_bytes, &format!("vector rows ({capacity} × {} values)", shape.ld))?;
    let tags = DevBuf::new(cap * 4, "vector tags")?;
    let norms = if shape.l2 { Some(DevBuf::new(cap * 4, "vector norms")?) } else { None };
    // SAFETY: each memset covers exactly its own allocation, on our stream.
    unsafe {
        drv::memset_d8_async(rows.ptr(), 0, rows.bytes(), stream.cu_stream())
            .map_err(|e| driver_err(e, "clearing the rows"))?;
        drv::memset_d8_async(tags.ptr(), 0xff, tags.bytes(), stream.cu_stream())
            .map_err(|e| driver_err(e, "clearing the tags"))?;
        if let Some(n) = &norms {
            drv::memset_d8_async(n.ptr(), 0, n.bytes(), stream.cu_stream())
                .map_err(|e| driver_err(e, "clearing the norms"))?;
        }
    }
    Ok((rows, tags, norms))
}

impl CudaStore {
    /// A store of `capacity` rows on `tasks`' device. Blocking.
    pub(crate) fn new(
        dims: usize,
        metric: Metric,
        dtype: Dtype,
        capacity: usize,
        tasks: GpuTasks,
    ) -> Result<CudaStore> {
        if dims == 0 || dims > super::MAX_DIMS {
            return Err(err!(InvalidArg, "`dims` must be in 1..={}, got {dims}", super::MAX_DIMS));
        }
        let shape = Shape { dims, ld: dims.div_ceil(8) * 8, dtype, l2: metric == Metric::L2, tune: Tune::from_env() };
        let dev = tasks.run(move |tc| {
            let k = load_kernels(tc.ctx, shape.dims, shape.ld)?;
            let (rows, tags, norms) = alloc_storage(&shape, capacity, tc.stream)?;
            tc.stream.synchronize().map_err(|e| driver_err(e, "clearing the vector storage"))?;
            Ok(Dev { blas: None, blas_ws: None, arena: None, rows, tags, norms, k })
        })?;
        let held = Arc::new(AtomicU64::new(dev.held()));
        Ok(CudaStore { tasks, shape, capacity, dev: Arc::new(Mutex::new(Some(dev))), held })
    }

    /// Run `f` with the device state on the executor; the stream is
    /// synchronized before the task returns, whatever `f` did.
    fn with_dev<R: Send + 'static>(
        &self,
        f: impl FnOnce(&TaskCtx<'_>, &mut Dev) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let dev = self.dev.clone();
        let held = self.held.clone();
        self.tasks.run(move |tc| {
            let mut g = dev.lock().map_err(|_| err!(Internal, "the GPU vector store's lock was poisoned"))?;
            let d = g.as_mut().ok_or_else(|| err!(Internal, "the GPU vector store was already freed"))?;
            let r = f(tc, d);
            let synced = tc.stream.synchronize().map_err(|e| driver_err(e, "the vector store's GPU work"));
            held.store(d.held(), Ordering::Relaxed);
            match (r, synced) {
                (Ok(v), Ok(())) => Ok(v),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(e),
            }
        })
    }

    /// Search, and (bench) the device time of the kernels in ms.
    fn search_impl(
        &self,
        queries: &[f32],
        k: usize,
        filter: Filter,
        len: usize,
        timed: bool,
    ) -> Result<(Vec<Vec<Hit>>, f32)> {
        let d = self.shape.dims;
        let nq = queries.len() / d;
        let len = len.min(self.capacity);
        if nq == 0 || len == 0 || k == 0 {
            return Ok((vec![Vec::new(); nq], 0.0));
        }
        if k > super::MAX_K {
            return Err(err!(InvalidArg, "`k` must be at most {}, got {k}", super::MAX_K));
        }
        let shape = self.shape;
        let (mode, tagv) = match filter {
            Filter::Live => (0u32, 0u32),
            Filter::Tag(t) => (1u32, t),
        };
        let batch = shape.dtype == Dtype::F16 && nq > shape.tune.gemm_min_batch;
        let mma = batch && nq <= shape.tune.mma_max_batch && shape.dims.is_multiple_of(16) && k <= MMA_MAX_K;
        let gemm = batch;
        // Host side: fp32 queries as given for the scans; fp16 padded to ld for cuBLAS.
        let qhost: QHost = if gemm {
            let mut v = vec![0u16; nq * shape.ld];
            for (dst, src) in v.chunks_exact_mut(shape.ld).zip(queries.chunks_exact(d)) {
                for (o, &x) in dst.iter_mut().zip(src) {
                    *o = f16::from_f32(x).to_bits();
                }
            }
            QHost::F16(v)
        } else {
            QHost::F32(queries[..nq * d].to_vec())
        };
        let args = SearchArgs { nq, k, len, mode, tagv, gemm, mma, timed };
        let (comp, ms) = self.with_dev(move |tc, dev| run_search(tc, dev, &shape, &args, &qhost))?;
        let hits = comp.chunks_exact(k).map(|c| c.iter().filter_map(|&x| decode(x)).collect()).collect();
        Ok((hits, ms))
    }
}

enum QHost {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl QHost {
    fn bytes(&self) -> usize {
        match self {
            QHost::F32(v) => v.len() * 4,
            QHost::F16(v) => v.len() * 2,
        }
    }
}

struct SearchArgs {
    nq: usize,
    k: usize,
    len: usize,
    mode: u32,
    tagv: u32,
    gemm: bool,
    /// The fused tensor-core path (queries as fp16, like `gemm`).
    mma: bool,
    timed: bool,
}

/// Carves 256-byte-aligned regions out of one arena.
struct Carve(usize);

impl Carve {
    fn take(&mut self, bytes: usize) -> usize {
        let at = self.0;
        self.0 += crate::backend::cuda::mem::align_up(bytes.max(1));
        at
    }
}

fn ensure_arena(dev: &mut Dev, bytes: usize) -> Result<CUdeviceptr> {
    if dev.arena.as_ref().is_none_or(|a| a.bytes() < bytes) {
        // Nothing is in flight: every task synchronizes before it returns.
        dev.arena = None;
        dev.arena = Some(DevBuf::new(bytes, "the vector search workspace")?);
    }
    dev.arena.as_ref().map(|a| a.ptr()).ok_or_else(|| err!(Internal, "no search workspace"))
}

fn ensure_blas(tc: &TaskCtx<'_>, dev: &mut Dev) -> Result<blas_sys::cublasHandle_t> {
    if dev.blas.is_none() {
        let ws = DevBuf::new(CUBLAS_WS_BYTES, "the cuBLAS workspace")?;
        let h = Blas(blas::create_handle().map_err(|e| cublas_err(e, "creating the cuBLAS handle"))?);
        // SAFETY: the handle is ours; the workspace outlives it (field order
        // of Dev) and is used by nothing else.
        unsafe {
            blas_sys::cublasSetWorkspace_v2(h.0, ws.ptr() as *mut c_void, ws.bytes())
                .result()
                .map_err(|e| cublas_err(e, "setting the cuBLAS workspace"))?;
        }
        dev.blas_ws = Some(ws);
        dev.blas = Some(h);
    }
    let h = dev.blas.as_ref().map(|b| b.0).ok_or_else(|| err!(Internal, "no cuBLAS handle"))?;
    // SAFETY: the handle is ours; the stream is the executor's, alive for the task.
    unsafe { blas::set_stream(h, tc.stream.cu_stream() as _) }
        .map_err(|e| cublas_err(e, "setting the cuBLAS stream"))?;
    Ok(h)
}

/// The queries-per-block template index (0..4 for 1, 2, 4, 8) and Q that
/// fit the shared-memory budget.
fn pick_q(nq: usize, s: usize, ld: usize, smem_max: usize) -> Option<(usize, usize)> {
    let want = nq.next_power_of_two().min(8);
    [8usize, 4, 2, 1]
        .into_iter()
        .filter(|&q| q <= want)
        .find(|&q| query_smem(q, s, ld) <= smem_max)
        .map(|q| (q.trailing_zeros() as usize, q))
}

fn query_smem(q: usize, s: usize, ld: usize) -> usize {
    sel_bytes(q, s).div_ceil(16) * 16 + q * ld * 4
}

fn run_search(
    tc: &TaskCtx<'_>,
    dev: &mut Dev,
    shape: &Shape,
    a: &SearchArgs,
    qhost: &QHost,
) -> Result<(Vec<u64>, f32)> {
    let kk = dev.k.clone();
    let (nq, k, len) = (a.nq, a.k, a.len);
    let st = tc.stream;
    let sms = kk.sms;
    let rows = dev.rows.ptr();
    let tags = dev.tags.ptr();
    let norms: CUdeviceptr = dev.norms.as_ref().map_or(0, |n| n.ptr());
    let l2 = shape.l2 as i32;
    let list_bytes = nq * k * 8;

    // Plan the geometry and the arena.
    struct ScanPlan {
        qi: usize,
        q: usize,
        p: usize,
        c: usize,
        s: usize,
    }
    struct GemmPlan {
        chunk: usize,
        nchunks: usize,
        pc: usize,
        pcap: usize,
        c: usize,
        s: usize,
    }
    let (mc, ms) = sel_dims(k, BLOCK as usize);
    let mut carve = Carve(0);
    let q_off = carve.take(qhost.bytes());
    let res_off = carve.take(list_bytes);
    let thr_off = carve.take(nq * 8);
    struct MmaPlan {
        g: usize,
        p: usize,
        c: usize,
        s: usize,
        smem: usize,
    }
    let mut mmap: Option<MmaPlan> = None;
    if a.mma && kk.mma_ok {
        // Per query: the kept C plus a buffer of at least 32 (a full buffer
        // is flushed and the rest retried, so any size is correct).
        let c = k.next_power_of_two();
        let s = (c + 32).next_power_of_two().max(64);
        let smem = sel_bytes(MMA_Q, s).div_ceil(16) * 16
            + MMA_Q * 4
            + mma_pipe().0 * MMA_ROWS * (mma_pipe().1 + 8) * 2
            + MMA_Q * (shape.ld + 8) * 2;
        if smem <= kk.smem_optin {
            let max_p = (PARTIAL_BYTES / list_bytes).max(1);
            // One block an SM (≈ 190 KiB of shared memory each).
            let p = sms.min(len.div_ceil(MMA_ROWS)).min(max_p).max(1);
            mmap = Some(MmaPlan { g: nq.div_ceil(MMA_Q), p, c, s, smem });
        }
    }
    let (scan, gemmp, part_off, score_off) = if let Some(mp) = &mmap {
        (None, None, carve.take(mp.p * list_bytes), 0)
    } else if !a.gemm {
        let pr = if shape.dtype == Dtype::F32 { 32 } else { (BLOCK as usize / g16(shape.ld)) * 4 };
        let (c, s) = sel_dims(k, pr);
        let (qi, q) = pick_q(nq, s, shape.ld, kk.smem_max)
            .ok_or_else(|| err!(Internal, "k = {k} needs more shared memory than the device has"))?;
        let max_p = (PARTIAL_BYTES / list_bytes).max(1);
        let per_sm = if shape.dtype == Dtype::F16 { shape.tune.scan_bps } else { 2 };
        let p = (per_sm * sms).min(len.div_ceil(256)).min(max_p).max(1);
        let part = carve.take(p * list_bytes);
        (Some(ScanPlan { qi, q, p, c, s }), None, part, 0)
    } else {
        let chunk = (shape.tune.score_ws / (nq * 4)) / 256 * 256;
        let chunk = chunk.max(256).min(len);
        let nchunks = len.div_ceil(chunk);
        let per_chunk_rows = chunk.div_ceil(1024).max(1);
        let pc = (2 * sms).div_ceil(nq).clamp(1, per_chunk_rows);
        let budget = (PARTIAL_BYTES / list_bytes).max(pc + 1);
        let pcap = (nchunks * pc).min(budget).max(pc + 1);
        // 256 threads × 2 float4 a round.
        let pr = BLOCK as usize * 8;
        let c = k.next_power_of_two();
        let mut s = (c + pr).next_power_of_two();
        if s - c < 2 * pr && sel_bytes(1, 2 * s) <= kk.smem_max {
            s *= 2;
        }
        let part = carve.take(pcap * list_bytes);
        let score = carve.take(chunk.div_ceil(4) * 4 * nq * 4);
        (None, Some(GemmPlan { chunk, nchunks, pc, pcap, c, s }), part, score)
    };
    let base = ensure_arena(dev, carve.0)?;
    let qdev = base + q_off as u64;
    let res = base + res_off as u64;
    let parts = base + part_off as u64;
    let gthr = base + thr_off as u64;
    // SAFETY: the threshold region holds nq u64 (zero: no bound yet).
    unsafe { drv::memset_d8_async(gthr, 0, nq * 8, st.cu_stream()) }
        .map_err(|e| driver_err(e, "clearing the thresholds"))?;

    // SAFETY: the query region holds qhost.bytes() bytes; the host vector
    // lives until the synchronize at the end of the task.
    unsafe {
        match qhost {
            QHost::F32(v) => drv::memcpy_htod_async(qdev, v, st.cu_stream()),
            QHost::F16(v) => drv::memcpy_htod_async(qdev, v, st.cu_stream()),
        }
    }
    .map_err(|e| driver_err(e, "uploading the queries"))?;
    let ev = |what| st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_err(e, what));
    let t0 = if a.timed { Some(ev("timing the search")?) } else { None };

    let (nq_i, k_i, len_i) = (nq as i32, k as i32, len as i32);
    let (mode, tagv) = (a.mode, a.tagv);
    let merge = |np: usize, ptot: usize, out: CUdeviceptr, out_stride: i64| -> Result<()> {
        let (np_i, ptot_i, c_i, s_i) = (np as i32, ptot as i32, mc as i32, ms as i32);
        let mut p = params!(parts, ptot_i, np_i, k_i, s_i, c_i, out, out_stride, gthr);
        // SAFETY: parts holds nq × ptot lists of k composites (np ≤ ptot
        // written); out + qi·out_stride has room for k for every qi < nq.
        unsafe { launch(&kk.merge, nq as u32, BLOCK, sel_bytes(1, ms), st, &mut p, "merge") }
    };
    if let Some(mp) = mmap {
        let (c_i, s_i, p_i, g_i) = (mp.c as i32, mp.s as i32, mp.p as i32, mp.g as i32);
        let mut p = params!(rows, tags, norms, qdev, nq_i, len_i, mode, tagv, l2, k_i, s_i, c_i, p_i, g_i, parts, gthr);
        // SAFETY: rows/tags/norms hold ≥ len rows; the queries are nq × ld
        // fp16; parts holds nq × P lists of k; dims % 16 == 0 so every
        // 16-byte copy stays inside its row; the shared memory asked for
        // is what the kernel carves (≤ the opt-in set at load).
        unsafe {
            launch(&kk.mma_scan, (mp.g * mp.p) as u32, BLOCK, mp.smem, st, &mut p, "mma_scan")?;
        }
        merge(mp.p, mp.p, res, k as i64)?;
    } else if let Some(sp) = scan {
        let groups = nq.div_ceil(sp.q);
        let grid = sp.p * groups;
        let (c_i, s_i, p_i) = (sp.c as i32, sp.s as i32, sp.p as i32);
        let f = match shape.dtype {
            Dtype::F32 => &kk.scan_f32[sp.qi],
            Dtype::F16 => &kk.scan_f16[sp.qi],
        };
        let mut p = params!(rows, tags, norms, qdev, nq_i, len_i, mode, tagv, l2, k_i, s_i, c_i, p_i, parts, gthr);
        // SAFETY: rows/tags/norms hold ≥ len rows (len ≤ capacity); the
        // queries nq × dims fp32; parts nq × P lists of k; the shared memory
        // asked for is what the kernel carves (≤ the opt-in set at load).
        unsafe {
            launch(f, grid as u32, BLOCK, query_smem(sp.q, sp.s, shape.ld), st, &mut p, "scan")?;
        }
        merge(sp.p, sp.p, res, k as i64)?;
    } else if let Some(gp) = gemmp {
        let h = ensure_blas(tc, dev)?;
        let scores = base + score_off as u64;
        let mut used = 0usize;
        for ci in 0..gp.nchunks {
            if used + gp.pc > gp.pcap {
                merge(used, gp.pcap, parts, (gp.pcap * k) as i64)?;
                used = 1;
            }
            let row0 = ci * gp.chunk;
            let nrows = gp.chunk.min(len - row0);
            let alpha = 1.0f32;
            let beta = 0.0f32;
            let a_ptr = rows + (row0 * shape.ld * 2) as u64;
            // Score rows padded to 4 (float4 reads); chunk is a multiple of 256.
            let ldc = nrows.div_ceil(4) * 4;
            // SAFETY: A = rows row0..row0+nrows (ld halves each, inside the
            // row buffer), B = the nq fp16 queries (ld each), C = nrows × nq
            // fp32 (ldc ≤ chunk) inside the score region (chunk × nq); host scalars as
            // COMPUTE_32F expects; the handle runs on our stream.
            unsafe {
                blas::gemm_ex(
                    h,
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    nrows as i32,
                    nq as i32,
                    shape.dims as i32,
                    &alpha as *const f32 as *const c_void,
                    a_ptr as *const c_void,
                    blas_sys::cudaDataType::CUDA_R_16F,
                    shape.ld as i32,
                    qdev as *const c_void,
                    blas_sys::cudaDataType::CUDA_R_16F,
                    shape.ld as i32,
                    &beta as *const f32 as *const c_void,
                    scores as *mut c_void,
                    blas_sys::cudaDataType::CUDA_R_32F,
                    ldc as i32,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| cublas_err(e, "the score GEMM"))?;
            let (ld_i, row0_i, nrows_i) = (ldc as i32, row0 as i32, nrows as i32);
            let (c_i, s_i, pc_i, ptot_i, pbase_i) =
                (gp.c as i32, gp.s as i32, gp.pc as i32, gp.pcap as i32, used as i32);
            let mut p = params!(
                scores, ld_i, row0_i, nrows_i, tags, norms, mode, tagv, l2, k_i, s_i, c_i, pc_i, parts, ptot_i,
                pbase_i, gthr
            );
            // SAFETY: scores holds nq × nrows fp32 (ld nrows); tags/norms
            // cover row0 + nrows ≤ len rows; lists pbase..pbase+pc < pcap.
            unsafe {
                launch(&kk.select, (gp.pc * nq) as u32, BLOCK, sel_bytes(1, gp.s), st, &mut p, "select")?;
            }
            used += gp.pc;
        }
        merge(used, gp.pcap, res, k as i64)?;
    }
    let ms_dev = match t0 {
        Some(t0) => {
            let t1 = ev("timing the search")?;
            t1.synchronize().map_err(|e| driver_err(e, "the search"))?;
            t0.elapsed_ms(&t1).map_err(|e| driver_err(e, "reading the search time"))?
        }
        None => 0.0,
    };
    let mut out = vec![0u64; nq * k];
    // SAFETY: res holds nq × k composites written by the last merge above.
    unsafe { drv::memcpy_dtoh_async(&mut out, res, st.cu_stream()) }
        .map_err(|e| driver_err(e, "downloading the results"))?;
    st.synchronize().map_err(|e| driver_err(e, "the search"))?;
    Ok((out, ms_dev))
}

impl Store for CudaStore {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn reserve(&mut self, rows: usize, max_rows: usize) -> Result<()> {
        if rows <= self.capacity {
            return Ok(());
        }
        let grown = self.capacity.max(1).saturating_mul(2).max(rows).min(max_rows.max(rows));
        let shape = self.shape;
        let old = self.capacity;
        self.with_dev(move |tc, dev| {
            let (rows_b, tags_b, norms_b) = alloc_storage(&shape, grown, tc.stream)?;
            let st = tc.stream.cu_stream();
            // SAFETY: the old buffers hold `old` rows (≤ the new ones'); the
            // copies are ordered after the clears above on the same stream.
            unsafe {
                if old > 0 {
                    drv::memcpy_dtod_async(rows_b.ptr(), dev.rows.ptr(), old * shape.row_bytes(), st)
                        .map_err(|e| driver_err(e, "copying the rows"))?;
                    drv::memcpy_dtod_async(tags_b.ptr(), dev.tags.ptr(), old * 4, st)
                        .map_err(|e| driver_err(e, "copying the tags"))?;
                    if let (Some(n), Some(o)) = (&norms_b, &dev.norms) {
                        drv::memcpy_dtod_async(n.ptr(), o.ptr(), old * 4, st)
                            .map_err(|e| driver_err(e, "copying the norms"))?;
                    }
                }
            }
            tc.stream.synchronize().map_err(|e| driver_err(e, "growing the vector store"))?;
            dev.rows = rows_b;
            dev.tags = tags_b;
            dev.norms = norms_b;
            Ok(())
        })?;
        self.capacity = grown;
        Ok(())
    }

    fn write(&mut self, slots: &[u32], rows: &[f32], tags: &[u32]) -> Result<()> {
        let n = slots.len();
        if n == 0 {
            return Ok(());
        }
        let (d, ld) = (self.shape.dims, self.shape.ld);
        if rows.len() != n * d || tags.len() != n {
            return Err(err!(Internal, "vector store write: {n} slots, {} values, {} tags", rows.len(), tags.len()));
        }
        if let Some(&s) = slots.iter().find(|&&s| s as usize >= self.capacity) {
            return Err(err!(Internal, "vector store write to slot {s} of {}", self.capacity));
        }
        let staged: QHost = match self.shape.dtype {
            Dtype::F32 => {
                let mut v = vec![0f32; n * ld];
                for (o, x) in v.chunks_exact_mut(ld).zip(rows.chunks_exact(d)) {
                    o[..d].copy_from_slice(x);
                }
                QHost::F32(v)
            }
            Dtype::F16 => {
                let mut v = vec![0u16; n * ld];
                for (o, x) in v.chunks_exact_mut(ld).zip(rows.chunks_exact(d)) {
                    for (h, &f) in o.iter_mut().zip(x) {
                        *h = f16::from_f32(f).to_bits();
                    }
                }
                QHost::F16(v)
            }
        };
        let slots = slots.to_vec();
        let tags = tags.to_vec();
        let shape = self.shape;
        self.with_dev(move |tc, dev| {
            let rb = shape.row_bytes();
            let chunk = (STAGE_BYTES / rb).clamp(1, n);
            // Allocate first: a failure leaves the store unchanged.
            let a = crate::backend::cuda::mem::align_up;
            let stage = DevBuf::new(a(chunk * rb) + 2 * a(chunk * 4), "upload staging")?;
            let s_rows = stage.ptr();
            let s_slots = s_rows + crate::backend::cuda::mem::align_up(chunk * rb) as u64;
            let s_tags = s_slots + crate::backend::cuda::mem::align_up(chunk * 4) as u64;
            let st = tc.stream.cu_stream();
            let (rows_d, tags_d) = (dev.rows.ptr(), dev.tags.ptr());
            let norms_d: CUdeviceptr = dev.norms.as_ref().map_or(0, |x| x.ptr());
            let f = match shape.dtype {
                Dtype::F32 => &dev.k.scatter_f32,
                Dtype::F16 => &dev.k.scatter_f16,
            };
            let mut at = 0;
            while at < n {
                let m = chunk.min(n - at);
                // SAFETY: the staging regions hold chunk rows / slots / tags
                // (m ≤ chunk); the host slices live until the task's
                // synchronize; each chunk's copies are ordered before its
                // scatter and the next chunk's copies after it (one stream).
                unsafe {
                    match &staged {
                        QHost::F32(v) => drv::memcpy_htod_async(s_rows, &v[at * ld..(at + m) * ld], st),
                        QHost::F16(v) => drv::memcpy_htod_async(s_rows, &v[at * ld..(at + m) * ld], st),
                    }
                    .map_err(|e| driver_err(e, "uploading rows"))?;
                    drv::memcpy_htod_async(s_slots, &slots[at..at + m], st)
                        .map_err(|e| driver_err(e, "uploading slots"))?;
                    drv::memcpy_htod_async(s_tags, &tags[at..at + m], st)
                        .map_err(|e| driver_err(e, "uploading tags"))?;
                    let m_i = m as i32;
                    let mut p = params!(s_rows, s_slots, s_tags, m_i, rows_d, tags_d, norms_d);
                    // Every slot < capacity (checked above).
                    launch(f, m as u32, 128, 0, tc.stream, &mut p, "scatter")?;
                }
                // The staging buffer is reused by the next chunk.
                tc.stream.synchronize().map_err(|e| driver_err(e, "writing vectors"))?;
                at += m;
            }
            Ok(())
        })
    }

    fn set_tags(&mut self, slots: &[u32], tag: u32) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        if let Some(&s) = slots.iter().find(|&&s| s as usize >= self.capacity) {
            return Err(err!(Internal, "vector store set_tags on slot {s} of {}", self.capacity));
        }
        let slots = slots.to_vec();
        self.with_dev(move |tc, dev| {
            let n = slots.len();
            let buf = DevBuf::new(n * 4, "tag update slots")?;
            let (sp, tp, n_i) = (buf.ptr(), dev.tags.ptr(), n as i32);
            // SAFETY: buf holds n slots, each < capacity (checked above); the
            // host slice lives until the task's synchronize.
            unsafe {
                drv::memcpy_htod_async(sp, &slots, tc.stream.cu_stream())
                    .map_err(|e| driver_err(e, "uploading slots"))?;
                let mut p = params!(sp, n_i, tag, tp);
                launch(&dev.k.set_tags, n.div_ceil(256) as u32, 256, 0, tc.stream, &mut p, "set_tags")?;
            }
            tc.stream.synchronize().map_err(|e| driver_err(e, "setting tags"))?;
            Ok(())
        })
    }

    fn read(&self, slots: &[u32]) -> Result<Vec<f32>> {
        let n = slots.len();
        let (d, ld) = (self.shape.dims, self.shape.ld);
        if n == 0 {
            return Ok(Vec::new());
        }
        if let Some(&s) = slots.iter().find(|&&s| s as usize >= self.capacity) {
            return Err(err!(Internal, "vector store read of slot {s} of {}", self.capacity));
        }
        let slots = slots.to_vec();
        let shape = self.shape;
        let raw: Vec<u8> = self.with_dev(move |tc, dev| {
            let rb = shape.row_bytes();
            let chunk = (STAGE_BYTES / rb).clamp(1, n);
            let a = crate::backend::cuda::mem::align_up;
            let stage = DevBuf::new(a(chunk * rb) + 2 * a(chunk * 4), "read staging")?;
            let (s_rows, s_keep) = (stage.ptr(), stage.ptr() + a(chunk * rb) as u64);
            let s_tags = s_keep + a(chunk * 4) as u64;
            let mut out = vec![0u8; n * rb];
            let (rows_d, tags_d, nul, rb_i) = (dev.rows.ptr(), dev.tags.ptr(), 0u64, rb as i32);
            let st = tc.stream.cu_stream();
            let mut at = 0;
            while at < n {
                let m = chunk.min(n - at);
                let m_i = m as i32;
                // SAFETY: staging holds chunk rows / slots / tags; every slot
                // < capacity; the gather writes m rows that the copy reads back.
                unsafe {
                    drv::memcpy_htod_async(s_keep, &slots[at..at + m], st)
                        .map_err(|e| driver_err(e, "uploading slots"))?;
                    let mut p = params!(rows_d, tags_d, nul, s_keep, m_i, rb_i, s_rows, s_tags, nul);
                    launch(&dev.k.gather, m as u32, 128, 0, tc.stream, &mut p, "gather")?;
                    drv::memcpy_dtoh_async(&mut out[at * rb..(at + m) * rb], s_rows, st)
                        .map_err(|e| driver_err(e, "downloading rows"))?;
                }
                tc.stream.synchronize().map_err(|e| driver_err(e, "reading vectors"))?;
                at += m;
            }
            Ok(out)
        })?;
        let mut v = vec![0f32; n * d];
        for (o, r) in v.chunks_exact_mut(d).zip(raw.chunks_exact(shape.row_bytes())) {
            match shape.dtype {
                Dtype::F32 => {
                    for (x, b) in o.iter_mut().zip(r.chunks_exact(4)) {
                        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                Dtype::F16 => {
                    for (x, b) in o.iter_mut().zip(r.chunks_exact(2)) {
                        *x = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    }
                }
            }
        }
        let _ = ld;
        Ok(v)
    }

    fn search(&self, queries: &[f32], k: usize, filter: Filter, len: usize) -> Result<Vec<Vec<Hit>>> {
        self.search_impl(queries, k, filter, len, false).map(|r| r.0)
    }

    fn compact(&mut self, keep: &[u32]) -> Result<()> {
        if let Some(w) = keep.windows(2).find(|w| w[0] >= w[1]) {
            return Err(err!(Internal, "compact: slots not ascending ({} then {})", w[0], w[1]));
        }
        if let Some(&s) = keep.last().filter(|&&s| s as usize >= self.capacity) {
            return Err(err!(Internal, "compact: slot {s} of {}", self.capacity));
        }
        let keep = keep.to_vec();
        let shape = self.shape;
        let cap = self.capacity;
        self.with_dev(move |tc, dev| {
            let n = keep.len();
            let rb = shape.row_bytes();
            let a = crate::backend::cuda::mem::align_up;
            let chunk = (STAGE_BYTES / rb).clamp(1, n.max(1));
            // Allocate first: a failure leaves the store unchanged.
            let stage = DevBuf::new(a(chunk * rb) + 3 * a(chunk * 4), "compaction staging")?;
            let s_rows = stage.ptr();
            let s_keep = s_rows + a(chunk * rb) as u64;
            let s_tags = s_keep + a(chunk * 4) as u64;
            let s_norms = s_tags + a(chunk * 4) as u64;
            let (rows_d, tags_d) = (dev.rows.ptr(), dev.tags.ptr());
            let norms_d: CUdeviceptr = dev.norms.as_ref().map_or(0, |x| x.ptr());
            let s_norms_p: CUdeviceptr = if norms_d != 0 { s_norms } else { 0 };
            let st = tc.stream.cu_stream();
            let rb_i = rb as i32;
            // Ascending chunks: chunk [at, at+m) reads slots keep[at..] ≥ at
            // into staging, then lands at rows at..at+m; later chunks read
            // slots ≥ at+m only, which nothing before them overwrote.
            let mut at = 0;
            while at < n {
                let m = chunk.min(n - at);
                let m_i = m as i32;
                // SAFETY: staging holds chunk rows / slots / tags / norms;
                // every kept slot < capacity; destinations at..at+m < capacity.
                unsafe {
                    drv::memcpy_htod_async(s_keep, &keep[at..at + m], st)
                        .map_err(|e| driver_err(e, "uploading slots"))?;
                    let mut p = params!(rows_d, tags_d, norms_d, s_keep, m_i, rb_i, s_rows, s_tags, s_norms_p);
                    launch(&dev.k.gather, m as u32, 128, 0, tc.stream, &mut p, "gather")?;
                    drv::memcpy_dtod_async(rows_d + (at * rb) as u64, s_rows, m * rb, st)
                        .map_err(|e| driver_err(e, "compacting rows"))?;
                    drv::memcpy_dtod_async(tags_d + (at * 4) as u64, s_tags, m * 4, st)
                        .map_err(|e| driver_err(e, "compacting tags"))?;
                    if norms_d != 0 {
                        drv::memcpy_dtod_async(norms_d + (at * 4) as u64, s_norms, m * 4, st)
                            .map_err(|e| driver_err(e, "compacting norms"))?;
                    }
                }
                tc.stream.synchronize().map_err(|e| driver_err(e, "compacting"))?;
                at += m;
            }
            if n < cap {
                // SAFETY: tags n..cap lie inside the tag buffer (cap rows).
                unsafe { drv::memset_d8_async(tags_d + (n * 4) as u64, 0xff, (cap - n) * 4, st) }
                    .map_err(|e| driver_err(e, "clearing tags"))?;
            }
            Ok(())
        })
    }
}

impl Drop for CudaStore {
    fn drop(&mut self) {
        let slot = self.dev.clone();
        let freed = self.tasks.run(move |tc| {
            let _ = tc.stream.synchronize();
            let d = lock(&slot).take();
            drop(d);
            Ok(())
        });
        if freed.is_err() {
            // The executor is gone (or failed): free here with the context
            // bound, if CUDA still works at all.
            let dev = lock(&self.dev).take();
            if let Some(dev) = dev {
                let device = self.tasks.device();
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    if let Some(ctx) = crate::device::probe().context(device) {
                        if ctx.bind_to_thread().is_ok() {
                            let _ = ctx.synchronize();
                            drop(dev);
                            return;
                        }
                    }
                    // No context to free them in: leak rather than free in the wrong one.
                    std::mem::forget(dev);
                }));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Benchmark support (bench/vector_search.rs): not part of the API.

/// An fp16 GPU store filled on the device with random unit vectors, for the
/// benchmark: the data never crosses PCIe.
#[doc(hidden)]
pub struct BenchStore {
    store: CudaStore,
    len: usize,
}

#[doc(hidden)]
impl BenchStore {
    /// `n` random unit vectors of `dims` (fp16, ip) on `device`.
    pub fn random_f16(device: usize, dims: usize, n: usize, seed: u32) -> Result<BenchStore> {
        let tasks = GpuTasks::standalone(device)?;
        let store = CudaStore::new(dims, Metric::Ip, Dtype::F16, n, tasks)?;
        store.with_dev(move |tc, dev| {
            let (rows, tags) = (dev.rows.ptr(), dev.tags.ptr());
            let mut at = 0usize;
            while at < n {
                let m = (n - at).min(1 << 22);
                let (row0, m_i) = (at as i32, m as i32);
                let mut p = params!(rows, tags, row0, m_i, seed);
                // SAFETY: rows at..at+m < capacity n; one warp per row.
                unsafe { launch(&dev.k.bench_fill, (m * 32).div_ceil(256) as u32, 256, 0, tc.stream, &mut p, "fill")? };
                at += m;
            }
            Ok(())
        })?;
        Ok(BenchStore { store, len: n })
    }

    /// One search: (per query (slot, score) best first, device ms of the
    /// kernels between the query upload and the result download).
    #[allow(clippy::type_complexity)]
    pub fn search(&self, queries: &[f32], k: usize) -> Result<(Vec<Vec<(u32, f32)>>, f32)> {
        let (hits, ms) = self.store.search_impl(queries, k, Filter::Live, self.len, true)?;
        Ok((hits.into_iter().map(|h| h.into_iter().map(|x| (x.slot, x.key)).collect()).collect(), ms))
    }

    /// Rows of `slots` as stored (fp32).
    pub fn read(&self, slots: &[u32]) -> Result<Vec<f32>> {
        self.store.read(slots)
    }

    pub fn bytes(&self) -> u64 {
        self.store.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composites_decode_in_order() {
        // Mirror of vector.cu's pack.
        fn pack(key: f32, slot: u32) -> u64 {
            let f = key + 0.0;
            let u = f.to_bits();
            let o = if u & 0x8000_0000 != 0 { !u } else { u | 0x8000_0000 };
            ((o as u64) << 32) | (!slot) as u64
        }
        let keys = [-3.5f32, -1e-30, 0.0, 1e-30, 0.25, 7.0];
        for w in keys.windows(2) {
            assert!(pack(w[1], 5) > pack(w[0], 5));
        }
        assert!(pack(1.0, 2) > pack(1.0, 3), "lower slot first on ties");
        for &k in &keys {
            let h = decode(pack(k, 9)).unwrap();
            assert_eq!((h.slot, h.key.to_bits()), (9, k.to_bits()));
        }
        assert!(decode(0).is_none());
        assert_eq!(sel_dims(10, 256), (16, 1024));
        assert_eq!(g16(384), 16);
    }
}
