//! `embed(texts, { onProgress })`: the batcher's per-pass reports reach the
//! JS callback through a threadsafe function, non-blocking and throttled;
//! the final `{ done: total, total }` is called on the JS thread while the
//! call settles, before its Promise resolves.
//!
//! Raw N-API rather than napi-rs's `ThreadsafeFunction`: its call leaves an
//! exception thrown by the callback pending (Node reports it as uncaught);
//! here it is cleared and becomes this call's rejection, `E_INVALID_ARG`
//! naming `onProgress`, and the call's remaining work is cancelled.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cuda_engine_core::embedder::Progress;
use cuda_engine_core::{err, CoreError, Result};
use napi::bindgen_prelude::*;
use napi::sys;
use tokio_util::sync::CancellationToken;

use crate::convert::{take_exception, JsVal};

/// Least time between two progress calls before the final one.
const MIN_INTERVAL_MS: u64 = 100;
/// Reports queued for the JS thread at most; more are dropped (the next
/// one carries a larger `done` anyway).
const MAX_QUEUED: usize = 2;

/// What the JS thread and the reporting threads share.
struct Shared {
    /// The call settled (or the callback threw): queued reports are dropped.
    finished: AtomicBool,
    /// Largest `done` delivered, so calls are monotonic.
    delivered: AtomicUsize,
    /// What the callback threw.
    threw: Mutex<Option<String>>,
    /// The call's token: a throwing callback stops the call's work.
    cancel: CancellationToken,
}

impl Shared {
    fn threw(&self) -> Option<String> {
        self.threw.lock().map_or(None, |t| t.clone())
    }
}

/// Call `onProgress({ done, total })` on the JS thread. An exception is
/// cleared and returned as its message.
fn call_progress(
    env: sys::napi_env,
    func: sys::napi_value,
    done: usize,
    total: usize,
) -> std::result::Result<(), String> {
    let mut obj = ptr::null_mut();
    let (mut d, mut t, mut recv, mut out) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: JS thread (call_js callback or settle); `func` is a live
    // function value of this env; every status is checked.
    let ok = unsafe {
        sys::napi_create_object(env, &mut obj) == sys::Status::napi_ok
            && sys::napi_create_double(env, done as f64, &mut d) == sys::Status::napi_ok
            && sys::napi_create_double(env, total as f64, &mut t) == sys::Status::napi_ok
            && sys::napi_set_named_property(env, obj, c"done".as_ptr(), d) == sys::Status::napi_ok
            && sys::napi_set_named_property(env, obj, c"total".as_ptr(), t) == sys::Status::napi_ok
            && sys::napi_get_undefined(env, &mut recv) == sys::Status::napi_ok
            && sys::napi_call_function(env, recv, func, 1, &obj, &mut out) == sys::Status::napi_ok
    };
    if ok {
        return Ok(());
    }
    Err(take_exception(env).unwrap_or_else(|| "the call failed".into()))
}

/// Runs on the JS thread for each queued report.
unsafe extern "C" fn call_js(env: sys::napi_env, func: sys::napi_value, context: *mut c_void, data: *mut c_void) {
    // SAFETY: `data` is the Box made in `Reporter::report`, taken once here.
    let (done, total) = *unsafe { Box::from_raw(data as *mut (usize, usize)) };
    if env.is_null() || func.is_null() {
        return; // torn down
    }
    // SAFETY: `context` is the Arc<Shared> leaked at creation, released in `finalize`.
    let shared = unsafe { &*(context as *const Shared) };
    if shared.finished.load(Ordering::Acquire) || shared.delivered.fetch_max(done, Ordering::AcqRel) >= done {
        return;
    }
    if let Err(msg) = call_progress(env, func, done, total) {
        if let Ok(mut t) = shared.threw.lock() {
            t.get_or_insert(msg);
        }
        shared.finished.store(true, Ordering::Release);
        shared.cancel.cancel();
    }
}

unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: the Arc leaked in `ProgressJs::new`, released once here.
    drop(unsafe { Arc::from_raw(data as *const Shared) });
}

/// The core's side: holds the threadsafe function's one thread count
/// (released on drop, from whichever thread drops it last).
struct Reporter {
    tsfn: sys::napi_threadsafe_function,
    start: Instant,
    /// ms since `start` of the last queued report (u64::MAX: none yet).
    last_ms: AtomicU64,
}

// SAFETY: N-API threadsafe functions may be called and released from any
// thread; the handle is only used through those calls.
unsafe impl Send for Reporter {}
// SAFETY: as above; the other fields are atomics.
unsafe impl Sync for Reporter {}

impl Reporter {
    fn report(&self, done: usize, total: usize) {
        if done >= total {
            return; // the final call is made when the call settles
        }
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Acquire);
        if last != u64::MAX && now < last.saturating_add(MIN_INTERVAL_MS) {
            return;
        }
        if self.last_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let data = Box::into_raw(Box::new((done, total)));
        // SAFETY: this thread count is held until drop; nonblocking never
        // waits: a full queue (or a closing env) refuses, and then the
        // report is dropped here.
        let status = unsafe {
            sys::napi_call_threadsafe_function(self.tsfn, data.cast(), sys::ThreadsafeFunctionCallMode::nonblocking)
        };
        if status != sys::Status::napi_ok {
            // SAFETY: not queued, so still ours.
            drop(unsafe { Box::from_raw(data) });
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // SAFETY: releases the thread count acquired at creation, once.
        unsafe { sys::napi_release_threadsafe_function(self.tsfn, sys::ThreadsafeFunctionReleaseMode::release) };
    }
}

/// The JS side of one call's `onProgress`, kept by its settle step.
pub struct ProgressJs {
    env: sys::napi_env,
    func: sys::napi_ref,
    total: usize,
    shared: Arc<Shared>,
    reporter: Option<Progress>,
}

impl ProgressJs {
    /// Hook `func` (checked to be a function) for a call of `total` texts
    /// whose work `cancel` stops. On the JS thread.
    pub fn new(env: &Env, func: JsVal, total: usize, cancel: CancellationToken) -> Result<ProgressJs> {
        let raw = env.raw();
        let shared = Arc::new(Shared {
            finished: AtomicBool::new(false),
            delivered: AtomicUsize::new(0),
            threw: Mutex::new(None),
            cancel,
        });
        let context = Arc::into_raw(shared.clone()) as *mut c_void;
        let (mut name, mut tsfn, mut func_ref) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        // SAFETY: JS thread; the function owns one Arc (released in
        // `finalize`), `context` points at it; max queue MAX_QUEUED, one
        // thread (the Reporter).
        let status = unsafe {
            sys::napi_create_string_utf8(raw, c"cuda-engine-progress".as_ptr(), 20, &mut name);
            sys::napi_create_threadsafe_function(
                raw,
                func.raw(),
                ptr::null_mut(),
                name,
                MAX_QUEUED,
                1,
                context,
                Some(finalize),
                context,
                Some(call_js),
                &mut tsfn,
            )
        };
        if status != sys::Status::napi_ok {
            // SAFETY: creation failed, `finalize` will never run: reclaim the Arc.
            drop(unsafe { Arc::from_raw(context as *const Shared) });
            return Err(CoreError::internal("cannot create the onProgress threadsafe function"));
        }
        // SAFETY: JS thread. Unref'd: the pending call keeps Node alive,
        // not its progress reports. The reference is for the final call.
        let referenced = unsafe {
            sys::napi_unref_threadsafe_function(raw, tsfn);
            sys::napi_create_reference(raw, func.raw(), 1, &mut func_ref) == sys::Status::napi_ok
        };
        let reporter = Reporter { tsfn, start: Instant::now(), last_ms: AtomicU64::new(u64::MAX) };
        if !referenced {
            return Err(CoreError::internal("cannot keep a reference to onProgress"));
        }
        let reporter: Progress = Arc::new(move |done, total| reporter.report(done, total));
        Ok(ProgressJs { env: raw, func: func_ref, total, shared, reporter: Some(reporter) })
    }

    /// The callback the core calls from the batcher thread (taken once).
    pub fn reporter(&mut self) -> Option<Progress> {
        self.reporter.take()
    }

    /// On the JS thread, as the call settles: queued reports are dropped,
    /// a successful call makes the final `{ done: total, total }` call, and
    /// a callback that threw (now or before) turns the outcome into
    /// `E_INVALID_ARG` naming `onProgress`.
    pub fn settle<T>(self, outcome: Result<T>) -> Result<T> {
        let earlier = self.shared.threw();
        self.shared.finished.store(true, Ordering::Release);
        let threw = match (&outcome, earlier) {
            (_, Some(msg)) => Some(msg),
            (Ok(_), None) => {
                let mut func = ptr::null_mut();
                // SAFETY: JS thread; the reference was made on this env.
                let got = unsafe { sys::napi_get_reference_value(self.env, self.func, &mut func) };
                if got == sys::Status::napi_ok && !func.is_null() {
                    call_progress(self.env, func, self.total, self.total).err()
                } else {
                    None
                }
            }
            (Err(_), None) => None,
        };
        // SAFETY: JS thread; deleted once, here.
        unsafe { sys::napi_delete_reference(self.env, self.func) };
        match threw {
            Some(msg) => Err(err!(InvalidArg, "`options.onProgress` threw: {msg}")),
            None => outcome,
        }
    }
}
