//! Raw device and pinned host allocations with RAII, and the mapping of
//! CUDA / cuBLAS failures onto engine error codes.
//!
//! The executor uses raw `CUdeviceptr`s (one arena for the weights, one for
//! the workspaces) instead of cudarc's `CudaSlice`: no per-launch event
//! bookkeeping, fixed addresses that CUDA graphs can bake in, and an exact
//! count of the device memory held. Every value here is created and dropped
//! on the executor thread, with the context bound.

use std::ffi::c_void;

use cudarc::cublas::result::CublasError;
use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::result::{self as drv, DriverError};
use cudarc::driver::sys::{CUdeviceptr, CUresult};

use crate::error::{CoreError, ErrorCode};

/// Alignment of every sub-allocation inside an arena (cuBLAS and vector
/// loads want at least 16 bytes; 256 matches cudaMalloc's own).
pub(crate) const ALIGN: usize = 256;

pub(crate) fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// One `cuMemAlloc` block, freed on drop.
pub(crate) struct DevBuf {
    ptr: CUdeviceptr,
    bytes: usize,
}

impl DevBuf {
    pub(crate) fn new(bytes: usize, what: &str) -> Result<DevBuf, CoreError> {
        let bytes = bytes.max(ALIGN);
        // SAFETY: plain allocation in the context bound to this thread; the
        // memory is uninitialised and only ever used as raw bytes by kernels
        // that the executor launches after writing it.
        let ptr = unsafe { drv::malloc_sync(bytes) }
            .map_err(|e| driver_err(e, &format!("allocating {what} ({bytes} bytes)")))?;
        Ok(DevBuf { ptr, bytes })
    }

    pub(crate) fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from cuMemAlloc and is freed once; the executor
        // drops buffers only after synchronizing its stream (or after a
        // sticky fault, when freeing may fail and the error is ignored).
        let _ = unsafe { drv::free_sync(self.ptr) };
    }
}

/// Page-locked host memory (`cuMemHostAlloc`) of `len` values of `T`, for
/// asynchronous copies that CUDA graphs can capture.
pub(crate) struct Pinned<T: Copy> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value; it is only touched
// by the executor thread and by copies that the executor orders on its stream.
unsafe impl<T: Copy> Send for Pinned<T> {}

impl<T: Copy + Default> Pinned<T> {
    pub(crate) fn new(len: usize, what: &str) -> Result<Pinned<T>, CoreError> {
        let len = len.max(1);
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: allocates page-locked host memory in the bound context;
        // it is zero-filled right below before any read.
        let raw = unsafe { drv::malloc_host(bytes, 0) }
            .map_err(|e| driver_err(e, &format!("allocating pinned {what} ({bytes} bytes)")))?;
        let ptr = raw as *mut T;
        // SAFETY: `ptr` points to `len` properly aligned (page-aligned) T slots.
        unsafe {
            for i in 0..len {
                ptr.add(i).write(T::default());
            }
        }
        Ok(Pinned { ptr, len })
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is valid for `len` initialised values for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The raw pointer, for copies the executor orders on its stream.
    pub(crate) fn ptr(&self) -> *mut T {
        self.ptr
    }

    pub(crate) fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T: Copy> Drop for Pinned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc, freed once; the executor
        // synchronizes its stream before dropping (no copy is in flight).
        let _ = unsafe { drv::free_host(self.ptr as *mut c_void) };
    }
}

/// Errors that leave the context unusable ("sticky"): every later call in
/// the context fails too, so the backend poisons itself.
pub(crate) fn is_sticky(code: CUresult) -> bool {
    use CUresult::*;
    matches!(
        code,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_NVLINK_UNCORRECTABLE
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUDA_ERROR_DEINITIALIZED
            | CUDA_ERROR_EXTERNAL_DEVICE
            | CUDA_ERROR_UNKNOWN
    )
}

/// A driver error as an engine error: out of memory is `E_GPU_OOM`, a
/// sticky error is `E_CUDA_FAULT`, anything else `E_INTERNAL`.
pub(crate) fn driver_err(e: DriverError, what: &str) -> CoreError {
    let code = match e.0 {
        CUresult::CUDA_ERROR_OUT_OF_MEMORY => ErrorCode::GpuOom,
        c if is_sticky(c) => ErrorCode::CudaFault,
        _ => ErrorCode::Internal,
    };
    // DriverError's Debug calls cuGetErrorString (libcuda is loaded here).
    CoreError::new(code, format!("CUDA error in {what}: {:?}", e.0))
}

/// A cuBLAS error as an engine error (allocation failure is `E_GPU_OOM`).
pub(crate) fn cublas_err(e: CublasError, what: &str) -> CoreError {
    let code = match e.0 {
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => ErrorCode::GpuOom,
        cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED => ErrorCode::CudaFault,
        _ => ErrorCode::Internal,
    };
    CoreError::new(code, format!("cuBLAS error in {what}: {:?}", e.0))
}
