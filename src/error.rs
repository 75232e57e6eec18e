//! The one place where a core error becomes a JS error: an `Error` whose
//! `.code` is the stable code and whose `.cause` carries the cause chain.

use cuda_engine_core::CoreError;
use napi::bindgen_prelude::*;
use napi::JsError;

/// Build the JS error object for `err` and wrap it so napi throws/rejects
/// with exactly that object.
pub fn to_napi(env: &Env, err: CoreError) -> napi::Error {
    let causes = err.cause_messages();
    let mut js_err = napi::Error::new(err.code.as_str().to_string(), err.message);
    // Chain causes innermost-last as nested `cause` errors.
    let chain = causes.into_iter().rev().fold(None::<Box<napi::Error>>, |inner, msg| {
        let mut e = napi::Error::new(Status::GenericFailure, msg);
        e.cause = inner;
        Some(Box::new(e))
    });
    js_err.cause = chain;
    let value = JsError::from(js_err).into_unknown(*env);
    napi::Error::from(value)
}
