//! Running core futures as JS Promises: AbortSignal wiring, panic capture,
//! and conversion of the outcome on the JS thread.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::task::{Context, Poll};

use cuda_engine_core::engine::CallOptions;
use cuda_engine_core::CoreError;
use napi::bindgen_prelude::*;
use napi::sys;
use tokio_util::sync::CancellationToken;

use crate::convert::{JsVal, ParsedCall};
use crate::error::to_napi;

/// Polls the inner future inside `catch_unwind`, so a panic in a job becomes
/// `E_INTERNAL` for that job instead of a lost Promise or an abort.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<T, F: Future<Output = std::result::Result<T, CoreError>>> Future for CatchUnwind<F> {
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

fn call_method(env: sys::napi_env, this: sys::napi_value, name: &std::ffi::CStr, args: &[sys::napi_value]) -> bool {
    let mut func = ptr::null_mut();
    let mut out = ptr::null_mut();
    // SAFETY: `this` is a live object on the JS thread; we look the method up
    // and call it with `this` as receiver.
    unsafe {
        sys::napi_get_named_property(env, this, name.as_ptr(), &mut func) == sys::Status::napi_ok
            && sys::napi_call_function(env, this, func, args.len(), args.as_ptr(), &mut out) == sys::Status::napi_ok
    }
}

impl SignalHook {
    fn install(env: &Env, signal: JsVal, token: CancellationToken) -> napi::Result<SignalHook> {
        let listener = env.create_function_from_closure::<(), (), _>("cudaEngineAbort", move |_| {
            token.cancel();
            Ok(())
        })?;
        let listener_raw = listener.value().value;
        let raw_env = env.raw();
        let mut event = ptr::null_mut();
        // SAFETY: JS thread, valid env.
        unsafe { sys::napi_create_string_utf8(raw_env, c"abort".as_ptr(), 5, &mut event) };
        if !call_method(raw_env, signal.raw(), c"addEventListener", &[event, listener_raw]) {
            return Err(napi::Error::new(Status::InvalidArg, "options.signal.addEventListener failed: is it an AbortSignal?"));
        }
        let mut signal_ref = ptr::null_mut();
        let mut listener_ref = ptr::null_mut();
        // SAFETY: references keep both values alive until `remove`.
        unsafe {
            sys::napi_create_reference(raw_env, signal.raw(), 1, &mut signal_ref);
            sys::napi_create_reference(raw_env, listener_raw, 1, &mut listener_ref);
        }
        Ok(SignalHook { env: raw_env, signal: signal_ref, listener: listener_ref })
    }

    /// Must run on the JS thread (the settle callback does).
    fn remove(self) {
        let mut signal = ptr::null_mut();
        let mut listener = ptr::null_mut();
        let mut event = ptr::null_mut();
        // SAFETY: JS thread; the refs were created in `install` and are deleted once here.
        unsafe {
            sys::napi_get_reference_value(self.env, self.signal, &mut signal);
            sys::napi_get_reference_value(self.env, self.listener, &mut listener);
            sys::napi_create_string_utf8(self.env, c"abort".as_ptr(), 5, &mut event);
            if !signal.is_null() && !listener.is_null() {
                call_method(self.env, signal, c"removeEventListener", &[event, listener]);
            }
            sys::napi_delete_reference(self.env, self.signal);
            sys::napi_delete_reference(self.env, self.listener);
        }
    }
}

/// Run `job` on the tokio runtime and return a Promise. `to_js` builds the
/// resolved value on the JS thread; core errors reject with coded errors.
pub fn spawn_job<'e, T, Fut, Make, ToJs>(
    env: &'e Env,
    parsed: ParsedCall,
    make: Make,
    to_js: ToJs,
) -> napi::Result<PromiseRaw<'e, Unknown<'e>>>
where
    T: Send + 'static,
    Fut: Future<Output = std::result::Result<T, CoreError>> + Send + 'static,
    Make: FnOnce(CallOptions) -> Fut,
    ToJs: for<'a> FnOnce(&'a Env, T) -> napi::Result<Unknown<'a>> + 'static,
{
    let ParsedCall { call, signal, already_aborted } = parsed;
    if already_aborted {
        call.cancel.cancel();
    }
    let hook = match signal {
        Some(s) if !already_aborted => Some(SignalHook::install(env, s, call.cancel.clone())?),
        _ => None,
    };
    let fut = CatchUnwind(Box::pin(make(call)));
    env.spawn_future_with_callback(async move { Ok::<_, napi::Error>(fut.await) }, move |env, outcome| {
        if let Some(hook) = hook {
            hook.remove();
        }
        match outcome {
            Ok(value) => to_js(env, value),
            Err(e) => Err(to_napi(env, e)),
        }
    })
}
