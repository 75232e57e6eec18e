//! The device state owned by one executor thread, and the forward pass.
//!
//! Memory: one device arena for the weights (uploaded once, converted to the
//! compute dtype; biases and LayerNorm parameters stay fp32) and one arena
//! for the workspaces, sized from the token budget (`tcap` tokens, `ncap`
//! sequences per pass), plus two pinned host buffers for the inputs and the
//! pooled outputs. Nothing is allocated per call on the device.
//!
//! One forward pass of a packed chunk (T tokens, n sequences):
//!   H2D inputs → embed+LN → 6 × [QKV GEMM → attention → O GEMM →
//!   bias+residual+LN → FFN1 GEMM → bias+GELU → FFN2 GEMM →
//!   bias+residual+LN] → pooling → D2H pooled → one stream sync.
//! Every launch is on the executor's own non-blocking stream.
//!
//! CUDA graphs: chunks of up to `GRAPH_MAX_TOKENS` tokens run as a captured
//! graph per (token bucket, sequence bucket). The chunk is padded to its
//! bucket: extra token rows are zero ids that belong to no sequence (their
//! rows are computed and ignored: GEMM, LayerNorm and GELU are row-wise), and
//! extra sequences are empty (cu_seqlens repeats T), which attention and
//! pooling skip. So one graph serves every chunk of its bucket, with the
//! kernels' shapes baked in and only the pinned input contents changing.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::result as blas;
use cudarc::cublas::sys as blas_sys;
use cudarc::driver::result as drv;
use cudarc::driver::sys::{self as dsys, CUdeviceptr};
use cudarc::driver::{CudaContext, CudaGraph, CudaStream};

use super::kernels::{self, Kernels};
use super::mem::{align_up, cublas_err, driver_err, DevBuf, Pinned};
use super::{ms_since, CudaOptions, Dtype, QkvMode, Shared};
use crate::backend::{ForwardOutput, TokenBatch};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::model::{Activation, BertWeights, ModelConfig, Pooling};

/// Chunks up to this many tokens run as CUDA graphs.
const GRAPH_MAX_TOKENS: usize = 2048;
/// At most this many graphs are kept (each is ~50 nodes).
const GRAPH_MAX_COUNT: usize = 96;
/// cuBLAS workspace (fixed, so graph capture never makes cuBLAS allocate).
const CUBLAS_WORKSPACE: usize = 32 << 20;

const TOKEN_BUCKETS: [usize; 14] = [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048];

fn bucket_tokens(t: usize) -> Option<usize> {
    TOKEN_BUCKETS.iter().copied().find(|&b| b >= t)
}

fn bucket_seqs(n: usize) -> usize {
    n.next_power_of_two()
}

/// Model dimensions the kernels and GEMMs need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub eps: f32,
    pub act: i32,
    pub pool: i32,
    pub vocab: usize,
    pub types: usize,
    pub max_pos: usize,
}

impl Dims {
    pub(crate) fn new(cfg: &ModelConfig) -> Result<Dims> {
        let b = &cfg.bert;
        let head_dim = b.head_dim();
        if !b.hidden_size.is_multiple_of(64)
            || b.hidden_size > 4096
            || b.hidden_size != head_dim * b.num_attention_heads
        {
            return Err(err!(
                CudaUnavailable,
                "the CUDA kernels need hidden_size a multiple of 64 (at most 4096), got {}",
                b.hidden_size
            ));
        }
        if !head_dim.is_multiple_of(32) || head_dim > 128 {
            return Err(err!(
                CudaUnavailable,
                "the CUDA attention kernel needs a head size of 32, 64, 96 or 128, got {head_dim}"
            ));
        }
        if !b.intermediate_size.is_multiple_of(8) {
            return Err(err!(
                CudaUnavailable,
                "the CUDA kernels need intermediate_size a multiple of 8, got {}",
                b.intermediate_size
            ));
        }
        Ok(Dims {
            hidden: b.hidden_size,
            heads: b.num_attention_heads,
            head_dim,
            inter: b.intermediate_size,
            eps: b.layer_norm_eps,
            act: match b.hidden_act {
                Activation::GeluErf => 0,
                Activation::GeluTanh => 1,
                Activation::Relu => 2,
            },
            pool: match cfg.pooling {
                Pooling::Mean => 0,
                Pooling::Cls => 1,
                Pooling::Max => 2,
                Pooling::MeanSqrtLen => 3,
            },
            vocab: b.vocab_size,
            types: b.type_vocab_size,
            max_pos: b.max_position_embeddings,
        })
    }
}

/// Byte offsets of one layer's tensors in the weight arena.
#[derive(Debug, Clone, Copy, Default)]
struct LayerOff {
    qkv_w: usize,
    qkv_b: usize,
    o_w: usize,
    o_b: usize,
    ln1_g: usize,
    ln1_b: usize,
    i_w: usize,
    i_b: usize,
    o2_w: usize,
    o2_b: usize,
    ln2_g: usize,
    ln2_b: usize,
}

/// The weight arena's image, built on the host (on the caller's thread) and
/// uploaded once by the executor.
pub(crate) struct HostModel {
    image: Vec<u8>,
    word: usize,
    pos: usize,
    typ: usize,
    emb_g: usize,
    emb_b: usize,
    layers: Vec<LayerOff>,
}

struct ImageBuilder {
    bytes: Vec<u8>,
    dt: Dtype,
    /// Store `[out, in]` matrices transposed (`[in, out]`) for NN GEMMs.
    transpose: bool,
}

impl ImageBuilder {
    fn start(&mut self) -> usize {
        let off = align_up(self.bytes.len());
        self.bytes.resize(off, 0);
        off
    }

    /// fp32 parameters (biases, LayerNorm).
    fn f32s(&mut self, parts: &[&[f32]]) -> usize {
        let off = self.start();
        for p in parts {
            for v in p.iter() {
                self.bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        off
    }

    /// Weight matrices `[out, in]` (parts stacked along `out`) in the
    /// compute dtype, transposed when the image is laid out for NN GEMMs.
    fn linear(&mut self, parts: &[&[f32]], inp: usize) -> usize {
        if !self.transpose {
            return self.mats(parts);
        }
        let all: Vec<f32> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let out = all.len() / inp;
        let mut t = vec![0f32; all.len()];
        for r in 0..out {
            for c in 0..inp {
                t[c * out + r] = all[r * inp + c];
            }
        }
        self.mats(&[&t])
    }

    /// Tables in the compute dtype.
    fn mats(&mut self, parts: &[&[f32]]) -> usize {
        let off = self.start();
        for p in parts {
            match self.dt {
                Dtype::F32 => p.iter().for_each(|v| self.bytes.extend_from_slice(&v.to_le_bytes())),
                Dtype::F16 => {
                    p.iter().for_each(|v| self.bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes()))
                }
                Dtype::Bf16 => {
                    p.iter().for_each(|v| self.bytes.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes()))
                }
            }
        }
        off
    }
}

impl HostModel {
    /// Lay out the weights: Q/K/V concatenated into one `[3H, H]` matrix
    /// (PyTorch `[out, in]` layout, what the TN GEMM reads), matrices in
    /// `dt`, vectors in fp32.
    pub(crate) fn build(w: &BertWeights, dt: Dtype, transpose: bool) -> HostModel {
        let h = w.config.hidden_size;
        let i = w.config.intermediate_size;
        let mut b = ImageBuilder { bytes: Vec::new(), dt, transpose };
        let word = b.mats(&[&w.word_embeddings.data]);
        let pos = b.mats(&[&w.position_embeddings.data]);
        let typ = b.mats(&[&w.token_type_embeddings.data]);
        let emb_g = b.f32s(&[&w.embeddings_layer_norm.weight.data]);
        let emb_b = b.f32s(&[&w.embeddings_layer_norm.bias.data]);
        let layers = w
            .layers
            .iter()
            .map(|l| LayerOff {
                qkv_w: b.linear(&[&l.query.weight.data, &l.key.weight.data, &l.value.weight.data], h),
                qkv_b: b.f32s(&[&l.query.bias.data, &l.key.bias.data, &l.value.bias.data]),
                o_w: b.linear(&[&l.attention_output.weight.data], h),
                o_b: b.f32s(&[&l.attention_output.bias.data]),
                ln1_g: b.f32s(&[&l.attention_layer_norm.weight.data]),
                ln1_b: b.f32s(&[&l.attention_layer_norm.bias.data]),
                i_w: b.linear(&[&l.intermediate.weight.data], h),
                i_b: b.f32s(&[&l.intermediate.bias.data]),
                o2_w: b.linear(&[&l.output.weight.data], i),
                o2_b: b.f32s(&[&l.output.bias.data]),
                ln2_g: b.f32s(&[&l.output_layer_norm.weight.data]),
                ln2_b: b.f32s(&[&l.output_layer_norm.bias.data]),
            })
            .collect();
        b.start();
        HostModel { image: b.bytes, word, pos, typ, emb_g, emb_b, layers }
    }
}

/// Byte offsets of the workspaces.
#[derive(Debug, Clone, Copy)]
struct WsOff {
    hidden: usize,
    qkv: usize,
    ctx: usize,
    tmp: usize,
    inter: usize,
    inputs: usize,
    pooled: usize,
    hidden32: usize,
    cublas: usize,
    total: usize,
}

impl WsOff {
    fn new(d: &Dims, dt: Dtype, tcap: usize, ncap: usize) -> WsOff {
        let e = dt.size();
        let mut at = 0usize;
        let mut take = |bytes: usize| {
            let off = at;
            at += align_up(bytes);
            off
        };
        let hidden = take(tcap * d.hidden * e);
        let qkv = take(tcap * 3 * d.hidden * e);
        let ctx = take(tcap * d.hidden * e);
        let tmp = take(tcap * d.hidden * e);
        let inter = take(tcap * d.inter * e);
        let inputs = take((3 * tcap + ncap + 1) * 4);
        let pooled = take(ncap * d.hidden * 4);
        let hidden32 = take(tcap * d.hidden * 4);
        let cublas = take(CUBLAS_WORKSPACE);
        WsOff { hidden, qkv, ctx, tmp, inter, inputs, pooled, hidden32, cublas, total: at }
    }
}

/// A cuBLAS handle bound to the executor's stream; destroyed on drop
/// without panicking (cudarc's own wrapper unwraps there).
struct Blas(blas_sys::cublasHandle_t);

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed once, on the executor thread.
        let _ = unsafe { blas::destroy_handle(self.0) };
    }
}

/// Kernel parameter array: pointers to the (local) argument values.
/// Only ever pass named local variables: they must outlive the launch call
/// (cuLaunchKernel copies the values before returning).
macro_rules! params {
    ($($a:ident),* $(,)?) => { [$( (&$a) as *const _ as *mut c_void ),*] };
}

/// The state of one device, owned by its executor thread.
pub(crate) struct Device {
    // Drop order: graphs, then buffers, then the handle and the stream.
    graphs: HashMap<(usize, usize), CudaGraph>,
    graph_failed: HashSet<(usize, usize)>,
    use_graphs: bool,
    pin_in: Pinned<u32>,
    pin_out: Pinned<f32>,
    weights: DevBuf,
    ws: DevBuf,
    blas: Blas,
    k: Kernels,
    stream: Arc<CudaStream>,
    /// Keeps the context alive as long as anything above lives in it.
    ctx: Arc<CudaContext>,
    model: HostOffsets,
    wso: WsOff,
    d: Dims,
    dt: Dtype,
    tcap: usize,
    ncap: usize,
    shared: Arc<Shared>,
    /// `CUDA_ENGINE_PROFILE=1`: per-op wall time (synchronizing after each
    /// op; graphs off), printed to stderr when the device is dropped.
    prof: Option<RefCell<Vec<ProfEntry>>>,
    /// Weights stored `[in, out]` and GEMMs run NN (experiment knob).
    gemm_nn: bool,
    qkv_mode: QkvMode,
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(p) = &self.prof {
            let p = p.borrow();
            let total: f64 = p.iter().map(|e| e.1).sum();
            eprintln!("cuda-engine profile ({} ms total, synchronized per op):", total as u64);
            for (name, ms, n) in p.iter() {
                eprintln!(
                    "  {name:>18}: {ms:10.3} ms {:5.1}%  ({n} calls, {:.1} us each)",
                    100.0 * ms / total.max(1e-9),
                    1e3 * ms / *n as f64
                );
            }
        }
    }
}

/// One profile row: op name, total ms, calls.
type ProfEntry = (&'static str, f64, u64);

/// [`HostModel`] without its image (kept after the upload).
struct HostOffsets {
    word: usize,
    pos: usize,
    typ: usize,
    emb_g: usize,
    emb_b: usize,
    layers: Vec<LayerOff>,
}

impl Device {
    /// Bind the context, compile/load kernels, upload weights, allocate the
    /// workspaces and run one warm-up pass. Runs on the executor thread.
    pub(crate) fn new(
        ctx: Arc<CudaContext>,
        host: HostModel,
        d: Dims,
        opts: &CudaOptions,
        shared: Arc<Shared>,
    ) -> Result<Device> {
        ctx.bind_to_thread().map_err(|e| driver_err(e, "binding the context"))?;
        let dt = opts.dtype;
        // A pass must hold one whole sequence.
        let tcap = opts.max_batch_tokens.max(d.max_pos).max(16);
        let ncap = opts.max_batch_seqs.clamp(1, tcap);
        let wso = WsOff::new(&d, dt, tcap, ncap);

        let need = host.image.len() + wso.total;
        if let Ok((free, _)) = ctx.mem_get_info() {
            if need + (64 << 20) > free {
                return Err(err!(
                    GpuOom,
                    "CUDA device {} has {} MiB free; the model and workspaces for {tcap} tokens need {} MiB (lower maxBatchTokens)",
                    ctx.ordinal(),
                    free >> 20,
                    need >> 20
                ));
            }
        }

        let stream = ctx.new_stream().map_err(|e| driver_err(e, "creating the stream"))?;
        let k = kernels::load(&ctx, d.hidden, d.head_dim, dt)?;
        shared.set_compile_ms(k.compile_ms);
        shared.startup(|s| {
            s.kernels = k.compile_ms;
            s.kernel_cache = k.cache;
        });

        let t_upload = Instant::now();
        let weights = DevBuf::new(host.image.len(), "the weights")?;
        let ws = DevBuf::new(wso.total, "the workspaces")?;
        // SAFETY: both copies target allocations of at least the copied size
        // on our stream; `host.image` stays alive (owned here) until the
        // synchronize below.
        unsafe {
            drv::memcpy_htod_async(weights.ptr(), &host.image, stream.cu_stream())
                .map_err(|e| driver_err(e, "uploading the weights"))?;
            drv::memset_d8_async(ws.ptr(), 0, ws.bytes(), stream.cu_stream())
                .map_err(|e| driver_err(e, "clearing the workspaces"))?;
        }
        stream.synchronize().map_err(|e| driver_err(e, "uploading the weights"))?;
        let model = HostOffsets {
            word: host.word,
            pos: host.pos,
            typ: host.typ,
            emb_g: host.emb_g,
            emb_b: host.emb_b,
            layers: host.layers,
        };
        drop(host.image);
        let upload_ms = ms_since(t_upload);

        let t_blas = Instant::now();
        let handle = blas::create_handle().map_err(|e| cublas_err(e, "creating the cuBLAS handle"))?;
        let blas_h = Blas(handle);
        // SAFETY: the handle is ours; the stream outlives it (field order);
        // the workspace region lies inside `ws` and is used by nothing else.
        unsafe {
            blas::set_stream(blas_h.0, stream.cu_stream() as _)
                .map_err(|e| cublas_err(e, "setting the cuBLAS stream"))?;
            blas_sys::cublasSetWorkspace_v2(blas_h.0, (ws.ptr() + wso.cublas as u64) as *mut c_void, CUBLAS_WORKSPACE)
                .result()
                .map_err(|e| cublas_err(e, "setting the cuBLAS workspace"))?;
        }

        let cublas_ms = ms_since(t_blas);
        shared.startup(|s| {
            s.upload = upload_ms;
            s.cublas = cublas_ms;
        });

        let pin_in = Pinned::<u32>::new(3 * tcap + ncap + 1, "inputs")?;
        let pin_out = Pinned::<f32>::new(ncap * d.hidden, "outputs")?;
        let device_bytes = weights.bytes() + ws.bytes();
        shared.set_memory(device_bytes as u64, (pin_in.bytes() + pin_out.bytes()) as u64, tcap, ncap);

        let mut dev = Device {
            graphs: HashMap::new(),
            graph_failed: HashSet::new(),
            use_graphs: opts.graphs,
            pin_in,
            pin_out,
            weights,
            ws,
            blas: blas_h,
            k,
            stream,
            ctx,
            model,
            wso,
            d,
            dt,
            tcap,
            ncap,
            shared,
            prof: opts.profile.then(|| RefCell::new(Vec::new())),
            gemm_nn: opts.gemm_nn,
            qkv_mode: opts.qkv_mode,
        };
        if dev.prof.is_some() {
            dev.use_graphs = false;
        }
        // Warm-up: loads the cuBLAS kernels and proves the whole pass works
        // before the backend is reported ready.
        let t_warm = Instant::now();
        let mut warm = TokenBatch::new();
        warm.push(&[0, 0, 0], &[0, 0, 0]);
        dev.forward(&warm, false)?;
        dev.shared.startup(|s| s.warmup = ms_since(t_warm));
        Ok(dev)
    }

    /// Tests only (`CudaBackend::inject_fault_for_tests`): write through a
    /// null pointer on the device and wait, so the context gets a sticky
    /// illegal-address error.
    /// The bound context (for work of other components on this executor).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The executor's stream: every launch of this device goes on it.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn inject_fault(&mut self) -> Result<()> {
        let ptx = cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void poke(int* p) { p[threadIdx.x] = 1; }")
            .map_err(|e| err!(Internal, "NVRTC: {e:?}"))?;
        let module = self.ctx.load_module(ptx).map_err(|e| driver_err(e, "loading the fault kernel"))?;
        let f = module.load_function("poke").map_err(|e| driver_err(e, "loading the fault kernel"))?;
        let bad: u64 = 8;
        let mut p = params![bad];
        // SAFETY: deliberately invalid (that is the point of this test hook);
        // the fault is confined to this process's context, which the caller
        // then treats as poisoned.
        unsafe { self.launch(&f, (1, 1, 1), 32, &mut p, "poke")? };
        self.stream.synchronize().map_err(|e| driver_err(e, "the injected fault"))
    }

    fn w(&self, off: usize) -> u64 {
        self.weights.ptr() + off as u64
    }

    fn s(&self, off: usize) -> u64 {
        self.ws.ptr() + off as u64
    }

    /// Run the encoder on `b`, split into passes that fit the workspaces.
    pub(crate) fn forward(&mut self, b: &TokenBatch, want_hidden: bool) -> Result<ForwardOutput> {
        let d = self.d;
        b.validate(d.vocab, d.types, d.max_pos)?;
        let n = b.n_seqs();
        let h = d.hidden;
        let mut pooled = Vec::with_capacity(n * h);
        let mut last = if want_hidden { Some(Vec::with_capacity(b.total_tokens() * h)) } else { None };
        let cu = &b.cu_seqlens;
        let mut s0 = 0;
        while s0 < n {
            let t0 = cu[s0] as usize;
            if cu[s0 + 1] as usize - t0 > self.tcap {
                return Err(err!(
                    Internal,
                    "sequence of {} tokens exceeds the CUDA workspace ({})",
                    cu[s0 + 1] as usize - t0,
                    self.tcap
                ));
            }
            let mut s1 = s0 + 1;
            while s1 < n && cu[s1 + 1] as usize - t0 <= self.tcap && s1 + 1 - s0 <= self.ncap {
                s1 += 1;
            }
            let r = self.run_chunk(b, s0, s1, &mut pooled, last.as_mut());
            if let Err(e) = r {
                return Err(self.recover(e));
            }
            s0 = s1;
        }
        self.shared.count(n, b.total_tokens());
        Ok(ForwardOutput { pooled, last_hidden: last, hidden: h })
    }

    /// After a failed pass: drain the stream so the next call starts clean,
    /// and turn a sticky error found on the way into `E_CUDA_FAULT`.
    fn recover(&mut self, e: CoreError) -> CoreError {
        if let Ok(dsys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE) = self.stream.capture_status() {
            let _ = self.stream.end_capture(dsys::CUgraphInstantiate_flags(0));
        }
        match self.stream.synchronize() {
            Err(se) if super::mem::is_sticky(se.0) => driver_err(se, "the forward pass"),
            _ => e,
        }
    }

    fn run_chunk(
        &mut self,
        b: &TokenBatch,
        s0: usize,
        s1: usize,
        pooled: &mut Vec<f32>,
        last: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let h = self.d.hidden;
        let cu = &b.cu_seqlens;
        let (t0, t1) = (cu[s0] as usize, cu[s1] as usize);
        let (t, n) = (t1 - t0, s1 - s0);
        let graph_key = if self.use_graphs && t <= GRAPH_MAX_TOKENS {
            bucket_tokens(t)
                .map(|tb| (tb, bucket_seqs(n)))
                .filter(|&(tb, nb)| tb <= self.tcap && nb <= self.ncap && nb <= tb)
        } else {
            None
        };
        let graph_key = graph_key.filter(|k| !self.graph_failed.contains(k));
        let (tb, nb) = graph_key.unwrap_or((t, n));

        // Inputs: [ids | type ids | positions] (tb each, zero padded), then
        // cu_seqlens rebased to the chunk (nb + 1, padded with t).
        {
            let p = self.pin_in.as_mut_slice();
            for (k, src) in [&b.input_ids, &b.token_type_ids, &b.position_ids].into_iter().enumerate() {
                let dst = &mut p[k * tb..(k + 1) * tb];
                dst[..t].copy_from_slice(&src[t0..t1]);
                dst[t..].fill(0);
            }
            let cu_dst = &mut p[3 * tb..3 * tb + nb + 1];
            for (i, slot) in cu_dst.iter_mut().enumerate() {
                *slot = if i <= n { cu[s0 + i] - cu[s0] } else { t as u32 };
            }
        }

        let mut ran = false;
        if let Some(key) = graph_key {
            if !self.graphs.contains_key(&key) && self.graphs.len() < GRAPH_MAX_COUNT {
                match self.capture(tb, nb) {
                    Ok(g) => {
                        self.graphs.insert(key, g);
                        self.shared.set_graphs(self.graphs.len());
                    }
                    Err(e) if e.code == ErrorCode::CudaFault => return Err(e),
                    Err(e) => {
                        log::warn!("cuda-engine: CUDA graph capture for {tb} tokens / {nb} sequences failed, running without: {e}");
                        self.graph_failed.insert(key);
                    }
                }
            }
            if let Some(g) = self.graphs.get(&key) {
                g.launch().map_err(|e| driver_err(e, "launching the CUDA graph"))?;
                ran = true;
            }
        }
        if !ran {
            self.enqueue(tb, nb)?;
        }
        if let Some(out) = last {
            let (src, dst) = (self.s(self.wso.hidden), self.s(self.wso.hidden32));
            let count = (t * h) as i64;
            let grid = (count as usize).div_ceil(256).clamp(1, 4096) as u32;
            let mut p = params![src, dst, count];
            // SAFETY: hidden (dtype) and hidden32 (f32) hold tcap*h values,
            // count = t*h <= tcap*h; launched on our stream after the pass.
            unsafe { self.launch(&self.k.to_f32, (grid, 1, 1), 256, &mut p, "to_f32")? };
            let at = out.len();
            out.resize(at + t * h, 0.0);
            // SAFETY: the device region holds t*h f32 written by the kernel
            // above (same stream); the destination slice is exactly t*h long.
            unsafe {
                drv::memcpy_dtoh_async(&mut out[at..], dst, self.stream.cu_stream())
                    .map_err(|e| driver_err(e, "copying the last hidden state"))?;
            }
        }
        self.stream.synchronize().map_err(|e| driver_err(e, "the forward pass"))?;
        pooled.extend_from_slice(&self.pin_out.as_slice()[..n * h]);
        Ok(())
    }

    fn capture(&mut self, tb: usize, nb: usize) -> Result<CudaGraph> {
        self.stream
            .begin_capture(dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| driver_err(e, "beginning graph capture"))?;
        let queued = self.enqueue(tb, nb);
        let ended = self.stream.end_capture(dsys::CUgraphInstantiate_flags(0));
        queued?;
        let g = ended
            .map_err(|e| driver_err(e, "instantiating the CUDA graph"))?
            .ok_or_else(|| err!(Internal, "graph capture produced no graph"))?;
        g.upload().map_err(|e| driver_err(e, "uploading the CUDA graph"))?;
        Ok(g)
    }

    /// Run one op; when profiling, synchronize around it and add its time.
    fn op<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(prof) = &self.prof else { return f() };
        self.stream.synchronize().map_err(|e| driver_err(e, name))?;
        let t = std::time::Instant::now();
        let r = f()?;
        self.stream.synchronize().map_err(|e| driver_err(e, name))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let mut p = prof.borrow_mut();
        match p.iter_mut().find(|e| e.0 == name) {
            Some(e) => {
                e.1 += ms;
                e.2 += 1;
            }
            None => p.push((name, ms, 1)),
        }
        Ok(r)
    }

    /// Launch `f` on the executor's stream.
    ///
    /// # Safety
    /// `params` must match the kernel's signature and every pointer in it
    /// must be valid for the accesses the kernel makes with this grid.
    unsafe fn launch(
        &self,
        f: &cudarc::driver::CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        params: &mut [*mut c_void],
        what: &str,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller; the stream is ours and alive.
        unsafe { drv::launch_kernel(f.cu_function(), grid, (block, 1, 1), 0, self.stream.cu_stream(), params) }
            .map_err(|e| driver_err(e, &format!("launching {what}")))
    }

    /// `y[rows, n_out] = x[rows, k_in] · w[n_out, k_in]ᵀ` (row-major), fp32
    /// accumulation. In cuBLAS's column-major terms: C(n_out×rows) =
    /// op(A)·B with A = w (k_in×n_out, lda k_in, transposed), B = x
    /// (k_in×rows).
    fn gemm(
        &self,
        rows: usize,
        n_out: usize,
        k_in: usize,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
    ) -> Result<()> {
        let lda = if self.gemm_nn { n_out } else { k_in };
        self.gemm_general(rows, n_out, k_in, x, w, lda, y, n_out, 1, 0, 0)
    }

    /// The Q/K/V projection into `qkv[rows, 3H]`, as configured: one GEMM
    /// over the concatenated `[3H, H]` weight, a strided batch of three
    /// `[H, H]` GEMMs, or three separate GEMMs (same result; cuBLAS's
    /// heuristics pick very different kernels for the 1152-wide product).
    fn gemm_qkv(&self, rows: usize, x: CUdeviceptr, w: CUdeviceptr, y: CUdeviceptr) -> Result<()> {
        let h = self.d.hidden;
        let e = self.dt.size() as u64;
        // Offset (elements) of block i's weights, and A's leading dimension.
        let (sw, lda) = if self.gemm_nn { (h, 3 * h) } else { (h * h, h) };
        match self.qkv_mode {
            QkvMode::Fused => self.gemm(rows, 3 * h, h, x, w, y),
            QkvMode::Batched => self.gemm_general(rows, h, h, x, w, lda, y, 3 * h, 3, sw as i64, h as i64),
            QkvMode::Split => {
                for i in 0..3u64 {
                    self.gemm_general(rows, h, h, x, w + i * sw as u64 * e, lda, y + i * h as u64 * e, 3 * h, 1, 0, 0)?;
                }
                Ok(())
            }
        }
    }

    /// The general form: `batch` products with element strides `sw` (A)
    /// and `sy` (C); B (the activations) is shared.
    #[allow(clippy::too_many_arguments)]
    fn gemm_general(
        &self,
        rows: usize,
        n_out: usize,
        k_in: usize,
        x: CUdeviceptr,
        w: CUdeviceptr,
        lda: usize,
        y: CUdeviceptr,
        ldc: usize,
        batch: usize,
        sw: i64,
        sy: i64,
    ) -> Result<()> {
        let alpha = 1.0f32;
        let beta = 0.0f32;
        let ty = self.dt.cuda_type();
        // TN: w is [n_out, k_in] row-major = column-major k_in×n_out, used
        // transposed. NN: w stored [k_in, n_out] = column-major n_out×k_in.
        let op_a = if self.gemm_nn {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        };
        let op_b = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let (m, n, k) = (n_out as i32, rows as i32, k_in as i32);
        let (pa, pb, pc) = (w as *const c_void, x as *const c_void, y as *mut c_void);
        let (al, be) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
        // SAFETY: x holds rows*k_in values, every A block lies inside the
        // weight arena and every C block inside its workspace (layouts
        // above: C blocks are column ranges of rows×ldc); the scalars are
        // host fp32 as CUBLAS_COMPUTE_32F expects; the handle runs on our
        // stream.
        unsafe {
            if batch == 1 {
                blas::gemm_ex(
                    self.blas.0,
                    op_a,
                    op_b,
                    m,
                    n,
                    k,
                    al,
                    pa,
                    ty,
                    lda as i32,
                    pb,
                    ty,
                    k,
                    be,
                    pc,
                    ty,
                    ldc as i32,
                    compute,
                    algo,
                )
            } else {
                blas::gemm_strided_batched_ex(
                    self.blas.0,
                    op_a,
                    op_b,
                    m,
                    n,
                    k,
                    al,
                    pa,
                    ty,
                    lda as i32,
                    sw,
                    pb,
                    ty,
                    k,
                    0,
                    be,
                    pc,
                    ty,
                    ldc as i32,
                    sy,
                    batch as i32,
                    compute,
                    algo,
                )
            }
        }
        .map_err(|e| cublas_err(e, "gemm"))
    }

    /// Queue one whole pass for `tb` token rows and `nb` sequences (the
    /// pinned inputs must already hold them in that layout).
    fn enqueue(&self, tb: usize, nb: usize) -> Result<()> {
        let d = self.d;
        let (hsz, e) = (d.hidden, d.eps);
        let st = self.stream.cu_stream();
        let wso = self.wso;
        let inputs = self.s(wso.inputs);
        let hidden = self.s(wso.hidden);
        let qkv = self.s(wso.qkv);
        let ctxb = self.s(wso.ctx);
        let tmp = self.s(wso.tmp);
        let inter = self.s(wso.inter);
        let pooled = self.s(wso.pooled);
        let cu = inputs + (3 * tb * 4) as u64;
        let rows = tb as i32;
        let row_grid = (tb.div_ceil(4) as u32, 1, 1);

        // SAFETY: `inputs` holds 3*tcap+ncap+1 u32 >= 3*tb+nb+1 copied here
        // from the pinned buffer of the same size (alive as long as `self`).
        unsafe {
            drv::memcpy_htod_async(inputs, &self.pin_in.as_slice()[..3 * tb + nb + 1], st)
                .map_err(|e| driver_err(e, "copying the inputs"))?;
        }
        {
            let (ids, word, pos, typ) =
                (inputs, self.w(self.model.word), self.w(self.model.pos), self.w(self.model.typ));
            let (g, bb, out) = (self.w(self.model.emb_g), self.w(self.model.emb_b), hidden);
            let mut p = params![ids, word, pos, typ, g, bb, out, rows, e];
            // SAFETY: ids are validated < vocab/types/max_pos (padding is 0);
            // one warp per row over tb rows of `hidden` (tb <= tcap).
            self.op("embed_ln", || unsafe { self.launch(&self.k.embed_ln, row_grid, 128, &mut p, "embed_ln") })?;
        }
        let scale = 1.0f32 / (d.head_dim as f32).sqrt();
        // bias_act: 8 values a thread, one grid row per token row.
        let act_block = (d.inter / 8).next_multiple_of(32).min(256);
        let act_grid = ((d.inter / 8).div_ceil(act_block) as u32, tb.min(65_535) as u32, 1);
        let (inter_cols, act) = (d.inter as i32, d.act);
        for l in &self.model.layers {
            self.op("gemm_qkv", || self.gemm_qkv(tb, hidden, self.w(l.qkv_w), qkv))?;
            {
                let (bias, scale) = (self.w(l.qkv_b), scale);
                let mut p = params![qkv, bias, ctxb, cu, scale];
                // SAFETY: grid (nb, heads); each block reads rows
                // cu[s]..cu[s+1] (<= tb) of qkv [tb, 3H] and writes the same
                // rows of ctx [tb, H]; cu has nb+1 entries.
                self.op("attention", || unsafe {
                    self.launch(&self.k.attention, (nb as u32, d.heads as u32, 1), 128, &mut p, "attention")
                })?;
            }
            self.op("gemm_attn_out", || self.gemm(tb, hsz, hsz, ctxb, self.w(l.o_w), tmp))?;
            {
                let (bias, g, bb) = (self.w(l.o_b), self.w(l.ln1_g), self.w(l.ln1_b));
                let mut p = params![tmp, bias, hidden, g, bb, rows, e];
                // SAFETY: tb rows of tmp and hidden ([tcap, H] each), one warp a row.
                self.op("bias_residual_ln", || unsafe {
                    self.launch(&self.k.bias_residual_ln, row_grid, 128, &mut p, "bias_residual_ln")
                })?;
            }
            self.op("gemm_ffn_up", || self.gemm(tb, d.inter, hsz, hidden, self.w(l.i_w), inter))?;
            {
                let bias = self.w(l.i_b);
                let mut p = params![inter, bias, rows, inter_cols, act];
                // SAFETY: tb*inter values of `inter` ([tcap, I]), in pairs.
                self.op("bias_act", || unsafe {
                    self.launch(&self.k.bias_act, act_grid, act_block as u32, &mut p, "bias_act")
                })?;
            }
            self.op("gemm_ffn_down", || self.gemm(tb, hsz, d.inter, inter, self.w(l.o2_w), tmp))?;
            {
                let (bias, g, bb) = (self.w(l.o2_b), self.w(l.ln2_g), self.w(l.ln2_b));
                let mut p = params![tmp, bias, hidden, g, bb, rows, e];
                // SAFETY: as the first bias_residual_ln.
                self.op("bias_residual_ln", || unsafe {
                    self.launch(&self.k.bias_residual_ln, row_grid, 128, &mut p, "bias_residual_ln")
                })?;
            }
        }
        {
            let mode = d.pool;
            let mut p = params![hidden, cu, pooled, mode];
            // SAFETY: grid nb; block s reads rows cu[s]..cu[s+1] of hidden
            // and writes row s of pooled ([ncap, H] f32, nb <= ncap).
            self.op("pool", || unsafe { self.launch(&self.k.pool, (nb as u32, 1, 1), 128, &mut p, "pool") })?;
        }
        // SAFETY: pooled holds ncap*H f32 >= nb*H; the pinned destination
        // has ncap*H slots and is read only after the stream synchronizes.
        unsafe {
            dsys::cuMemcpyDtoHAsync_v2(self.pin_out.ptr() as *mut c_void, pooled, nb * hsz * 4, st)
                .result()
                .map_err(|e| driver_err(e, "copying the pooled vectors"))?;
        }
        Ok(())
    }
}
