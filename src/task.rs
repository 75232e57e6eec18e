//! Running core futures as JS Promises: AbortSignal wiring, panic capture,
//! and conversion of the outcome on the JS thread.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use cuda_engine_core::engine::CallOptions;
use cuda_engine_core::CoreError;
use napi::bindgen_prelude::*;
use napi::sys;
use napi::JsError;
use tokio_util::sync::CancellationToken;

use crate::convert::{take_exception, JsVal, ParsedCall};
use crate::error::to_napi;
use cuda_engine_core::err;

/// Polls the inner future inside `catch_unwind`, so a panic in a job becomes
/// `E_INTERNAL` for that job instead of a lost Promise or an abort.
struct CatchUnwind<F: ?Sized>(Pin<Box<F>>);

impl<T, F: Future<Output = std::result::Result<T, CoreError>> + ?Sized> Future for CatchUnwind<F> {
    type Output = std::result::Result<T, CoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(p) => p,
            Err(payload) => Poll::Ready(Err(CoreError::from_panic(payload, "an async job"))),
        }
    }
}

/// An `abort` listener added to the caller's AbortSignal; removed again on
/// the JS thread when the job settles so long-lived signals don't pile up
/// listeners.
struct SignalHook {
    env: sys::napi_env,
    signal: sys::napi_ref,
    listener: sys::napi_ref,
}

/// Call `this[name](...args)`. Whatever the caller's object does (no such
/// method, a throwing getter, a throwing method, a Proxy), the pending
/// exception is cleared here so it never leaks into another call; the
/// error names the method and what it threw.
fn call_method(
    env: sys::napi_env,
    this: sys::napi_value,
    name: &std::ffi::CStr,
    args: &[sys::napi_value],
) -> std::result::Result<(), CoreError> {
    let mut func = ptr::null_mut();
    let mut out = ptr::null_mut();
    let mut kind = 0;
    // SAFETY: `this` is a live object on the JS thread; we look the method up
    // and call it with `this` as receiver.
    let ok = unsafe {
        sys::napi_get_named_property(env, this, name.as_ptr(), &mut func) == sys::Status::napi_ok
            && sys::napi_typeof(env, func, &mut kind) == sys::Status::napi_ok
            && kind == sys::ValueType::napi_function
            && sys::napi_call_function(env, this, func, args.len(), args.as_ptr(), &mut out) == sys::Status::napi_ok
    };
    if ok {
        return Ok(());
    }
    let what = name.to_string_lossy();
    Err(match take_exception(env) {
        Some(msg) => err!(InvalidArg, "`options.signal.{what}` threw: {msg}"),
        None => err!(InvalidArg, "`options.signal.{what}` is not a function: is it an AbortSignal?"),
    })
}

fn js_string(env: sys::napi_env, s: &std::ffi::CStr) -> sys::napi_value {
    let mut out = ptr::null_mut();
    // SAFETY: JS thread; a NUL-terminated constant. On failure `out` stays
    // null and the call using it fails with a checked status.
    unsafe { sys::napi_create_string_utf8(env, s.as_ptr(), s.count_bytes() as isize, &mut out) };
    out
}

impl SignalHook {
    fn install(env: &Env, signal: JsVal, token: CancellationToken) -> std::result::Result<SignalHook, CoreError> {
        let listener = env
            .create_function_from_closure::<(), (), _>("cudaEngineAbort", move |_| {
                token.cancel();
                Ok(())
            })
            .map_err(|e| CoreError::internal(format!("cannot create the abort listener: {e}")))?;
        let listener_raw = listener.value().value;
        let raw_env = env.raw();
        call_method(raw_env, signal.raw(), c"addEventListener", &[js_string(raw_env, c"abort"), listener_raw])?;
        let mut signal_ref = ptr::null_mut();
        let mut listener_ref = ptr::null_mut();
        // SAFETY: references keep both values alive until `remove`.
        let ok = unsafe {
            sys::napi_create_reference(raw_env, signal.raw(), 1, &mut signal_ref) == sys::Status::napi_ok
                && sys::napi_create_reference(raw_env, listener_raw, 1, &mut listener_ref) == sys::Status::napi_ok
        };
        if !ok {
            return Err(CoreError::internal("cannot keep a reference to the AbortSignal"));
        }
        Ok(SignalHook { env: raw_env, signal: signal_ref, listener: listener_ref })
    }

    /// Must run on the JS thread (the settle callback does). A throwing
    /// `removeEventListener` is the caller's problem: it is cleared and
    /// ignored, never stopping the other settlements of the batch.
    fn remove(self) {
        let mut signal = ptr::null_mut();
        let mut listener = ptr::null_mut();
        // SAFETY: JS thread; the refs were created in `install` and are deleted once here.
        unsafe {
            sys::napi_get_reference_value(self.env, self.signal, &mut signal);
            sys::napi_get_reference_value(self.env, self.listener, &mut listener);
            if !signal.is_null() && !listener.is_null() {
                let _ =
                    call_method(self.env, signal, c"removeEventListener", &[js_string(self.env, c"abort"), listener]);
            }
            sys::napi_delete_reference(self.env, self.signal);
            sys::napi_delete_reference(self.env, self.listener);
        }
    }
}

/// Settles finished jobs on the JS thread in batches.
///
/// napi-rs's `spawn_future` creates one threadsafe function per Promise,
/// which costs more than an echo job itself. Here one threadsafe function per
/// JS environment is woken once per *batch*: workers push outcomes into a
/// queue and only the push that finds it empty schedules a drain. The
/// function is ref'd only while jobs are pending, so idle engines never keep
/// Node alive and pending jobs always do.
struct Completer {
    /// Set once, right after creation, before any job can push.
    tsfn: AtomicPtr<sys::napi_threadsafe_function__>,
    queue: Mutex<CompletionQueue>,
}

#[derive(Default)]
struct CompletionQueue {
    done: Vec<(u64, Box<dyn Any + Send>)>,
    /// A drain is scheduled and has not started yet.
    scheduled: bool,
    /// The environment is gone: drop outcomes instead of calling into it.
    closed: bool,
}

impl Completer {
    fn push(&self, id: u64, outcome: Box<dyn Any + Send>) {
        let Ok(mut q) = self.queue.lock() else { return };
        if q.closed {
            return;
        }
        q.done.push((id, outcome));
        if !q.scheduled {
            q.scheduled = true;
            // SAFETY: `closed` is false under the lock, so the function has
            // not been finalized; nonblocking never waits (unbounded queue).
            unsafe {
                sys::napi_call_threadsafe_function(
                    self.tsfn.load(Ordering::Acquire),
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            };
        }
    }
}

/// Builds a job's JS value (or its rejection) from its boxed outcome, on the JS thread.
type Settle = Box<dyn FnOnce(&Env, Box<dyn Any + Send>) -> napi::Result<sys::napi_value>>;

/// What the JS thread keeps for a job until it settles.
struct Pending {
    deferred: sys::napi_deferred,
    hook: Option<SignalHook>,
    settle: Settle,
}

/// Per-JS-thread state (each Node environment runs on its own thread).
struct JsState {
    completer: Arc<Completer>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

thread_local! {
    static JS_STATE: RefCell<Option<JsState>> = const { RefCell::new(None) };
}

unsafe extern "C" fn completer_finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the Arc<Completer> leaked in `init_state`.
    let completer = unsafe { Arc::from_raw(data as *const Completer) };
    if let Ok(mut q) = completer.queue.lock() {
        q.closed = true;
        q.done.clear();
    }
    JS_STATE.with(|s| s.borrow_mut().take());
}

/// Runs on the JS thread: settle every job that finished since the last drain.
unsafe extern "C" fn completer_drain(
    env: sys::napi_env,
    _js_cb: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() {
        return; // the function is being torn down
    }
    // SAFETY: `context` is the Completer, alive as long as the function.
    let completer = unsafe { &*(context as *const Completer) };
    let done = match completer.queue.lock() {
        Ok(mut q) => {
            q.scheduled = false;
            std::mem::take(&mut q.done)
        }
        Err(_) => return,
    };
    let js_env = Env::from_raw(env);
    for (id, outcome) in done {
        let Some(p) = JS_STATE.with(|s| s.borrow_mut().as_mut().and_then(|st| st.pending.remove(&id))) else {
            continue;
        };
        let mut scope = ptr::null_mut();
        // SAFETY: JS thread; a scope per job bounds handles in big batches.
        unsafe { sys::napi_open_handle_scope(env, &mut scope) };
        if let Some(hook) = p.hook {
            hook.remove();
        }
        let settled = catch_unwind(AssertUnwindSafe(|| (p.settle)(&js_env, outcome)))
            .unwrap_or_else(|payload| Err(to_napi(&js_env, CoreError::from_panic(payload, "building a result"))));
        // Building the value may have left an exception pending (a user's
        // getter during conversion): clear it so this and every later job of
        // the batch still settles.
        let _ = take_exception(env);
        // SAFETY: each deferred is settled exactly once, here.
        unsafe {
            let status = match settled {
                Ok(value) => sys::napi_resolve_deferred(env, p.deferred, value),
                Err(err) => sys::napi_reject_deferred(env, p.deferred, JsError::from(err).into_value(env)),
            };
            if status != sys::Status::napi_ok {
                // Settling cannot fail for a live deferred; if it ever does,
                // clear what it left and reject with the internal code so the
                // Promise still settles (a deferred is freed by settling).
                let _ = take_exception(env);
                let e = to_napi(&js_env, CoreError::internal(format!("settling a Promise failed (status {status})")));
                sys::napi_reject_deferred(env, p.deferred, JsError::from(e).into_value(env));
            }
            sys::napi_close_handle_scope(env, scope);
        }
    }
    JS_STATE.with(|s| {
        if let Some(st) = s.borrow().as_ref() {
            if st.pending.is_empty() {
                // SAFETY: JS thread; nothing pending, let Node exit if idle.
                unsafe { sys::napi_unref_threadsafe_function(env, st.completer.tsfn.load(Ordering::Acquire)) };
            }
        }
    });
}

fn init_state(env: &Env) -> napi::Result<()> {
    let raw = env.raw();
    let completer =
        Arc::new(Completer { tsfn: AtomicPtr::new(ptr::null_mut()), queue: Mutex::new(CompletionQueue::default()) });
    let leaked = Arc::into_raw(completer.clone()) as *mut c_void;
    let mut name = ptr::null_mut();
    let mut tsfn = ptr::null_mut();
    // SAFETY: JS thread; the function owns one Arc (released in finalize),
    // context points at the same Completer.
    let status = unsafe {
        sys::napi_create_string_utf8(raw, c"cuda-engine".as_ptr(), 11, &mut name);
        sys::napi_create_threadsafe_function(
            raw,
            ptr::null_mut(),
            ptr::null_mut(),
            name,
            0,
            1,
            leaked,
            Some(completer_finalize),
            leaked,
            Some(completer_drain),
            &mut tsfn,
        )
    };
    if status != sys::Status::napi_ok {
        // SAFETY: creation failed, so finalize will never run: reclaim the Arc.
        drop(unsafe { Arc::from_raw(leaked as *const Completer) });
        return Err(napi::Error::new(Status::GenericFailure, "cannot create the completion threadsafe function"));
    }
    completer.tsfn.store(tsfn, Ordering::Release);
    // SAFETY: JS thread; idle until a job is pending.
    unsafe { sys::napi_unref_threadsafe_function(raw, tsfn) };
    JS_STATE.with(|s| *s.borrow_mut() = Some(JsState { completer, pending: HashMap::new(), next_id: 0 }));
    Ok(())
}

/// Run `job` on the tokio runtime and return a Promise. `to_js` builds the
/// resolved value on the JS thread; core errors reject with coded errors.
///
/// `parsed` is the result of reading the call options: an error there
/// rejects the Promise (async functions never throw synchronously) and
/// `make` is not called.
pub fn spawn_job<'e, T, Fut, Make, ToJs>(
    env: &'e Env,
    parsed: std::result::Result<ParsedCall, CoreError>,
    make: Make,
    to_js: ToJs,
) -> napi::Result<PromiseRaw<'e, Unknown<'e>>>
where
    T: Send + 'static,
    Fut: Future<Output = std::result::Result<T, CoreError>> + Send + 'static,
    Make: FnOnce(CallOptions) -> Fut,
    ToJs: for<'a> FnOnce(&'a Env, T) -> napi::Result<Unknown<'a>> + 'static,
{
    if JS_STATE.with(|s| s.borrow().is_none()) {
        init_state(env)?;
    }
    let (parsed, bad_options) = match parsed {
        Ok(p) => (p, None),
        Err(e) => (ParsedCall::default(), Some(e)),
    };
    let ParsedCall { call, signal, already_aborted, .. } = parsed;
    if already_aborted {
        call.cancel.cancel();
    }
    // A signal that cannot be hooked fails this call alone (rejects).
    let (hook, bad_options) = match signal {
        Some(s) if !already_aborted && bad_options.is_none() => {
            match SignalHook::install(env, s, call.cancel.clone()) {
                Ok(h) => (Some(h), None),
                Err(e) => (None, Some(e)),
            }
        }
        _ => (None, bad_options),
    };
    let raw = env.raw();
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: JS thread.
    if unsafe { sys::napi_create_promise(raw, &mut deferred, &mut promise) } != sys::Status::napi_ok {
        if let Some(hook) = hook {
            hook.remove();
        }
        return Err(napi::Error::new(Status::GenericFailure, "cannot create a Promise"));
    }
    let settle = Box::new(move |env: &Env, outcome: Box<dyn Any + Send>| -> napi::Result<sys::napi_value> {
        let outcome = outcome
            .downcast::<std::result::Result<T, CoreError>>()
            .map_err(|_| napi::Error::new(Status::GenericFailure, "job outcome of the wrong type"))?;
        match *outcome {
            Ok(value) => Ok(to_js(env, value)?.value().value),
            Err(e) => Err(to_napi(env, e)),
        }
    });
    let (completer, id) = JS_STATE.with(|s| {
        let mut s = s.borrow_mut();
        let st = s.as_mut().unwrap_or_else(|| unreachable!("initialised above"));
        st.next_id += 1;
        let id = st.next_id;
        if st.pending.is_empty() {
            // SAFETY: JS thread; keep Node alive while jobs are pending.
            unsafe { sys::napi_ref_threadsafe_function(raw, st.completer.tsfn.load(Ordering::Acquire)) };
        }
        st.pending.insert(id, Pending { deferred, hook, settle });
        (st.completer.clone(), id)
    });
    let job: Pin<Box<dyn Future<Output = std::result::Result<T, CoreError>> + Send>> = match bad_options {
        None => Box::pin(make(call)),
        Some(e) => Box::pin(async move { Err(e) }),
    };
    let fut = CatchUnwind(job);
    napi::bindgen_prelude::spawn(async move {
        let outcome: std::result::Result<T, CoreError> = fut.await;
        completer.push(id, Box::new(outcome));
    });
    Ok(PromiseRaw::new(raw, promise))
}
