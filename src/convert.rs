//! JS values in and out: envelopes (object, string or bytes) into core
//! inputs under the engine's limits, call options, job results into JS.
//!
//! The JS→JSON walk is our own rather than serde's so that depth and size
//! limits apply while walking: a 10,000-deep or cyclic object must give
//! `E_TOO_DEEP`, never a stack overflow.

use std::ptr;
use std::time::Duration;

use cuda_engine_core::engine::{CallOptions, EnvelopeInput};
use cuda_engine_core::envelope::{Limits, RawEnvelope};
use cuda_engine_core::err;
use cuda_engine_core::jobs::{JobOutput, JobResult, Target};
use cuda_engine_core::{CoreError, Result};
use napi::bindgen_prelude::*;
use napi::sys;
use serde_json::{Map, Number, Value};

fn status(s: sys::napi_status, what: &str) -> Result<()> {
    if s == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(CoreError::internal(format!("N-API call failed while reading {what} (status {s})")))
    }
}

/// One JS value, borrowed for the duration of a call.
#[derive(Clone, Copy)]
pub struct JsVal {
    env: sys::napi_env,
    raw: sys::napi_value,
}

impl JsVal {
    pub fn new(env: sys::napi_env, raw: sys::napi_value) -> JsVal {
        JsVal { env, raw }
    }

    pub fn raw(&self) -> sys::napi_value {
        self.raw
    }

    pub fn type_of(&self) -> Result<sys::napi_valuetype> {
        let mut t = 0;
        // SAFETY: env and raw come from the current N-API callback.
        status(unsafe { sys::napi_typeof(self.env, self.raw, &mut t) }, "a value's type")?;
        Ok(t)
    }

    fn check(&self, f: unsafe extern "C" fn(sys::napi_env, sys::napi_value, *mut bool) -> sys::napi_status) -> bool {
        let mut out = false;
        // SAFETY: as above; the predicate only inspects the value.
        unsafe { f(self.env, self.raw, &mut out) == sys::Status::napi_ok && out }
    }

    pub fn is_array(&self) -> bool {
        self.check(sys::napi_is_array)
    }

    /// The bytes of a Uint8Array / Buffer / other typed array view, copied.
    pub fn typed_bytes(&self) -> Result<Option<Vec<u8>>> {
        if !self.check(sys::napi_is_typedarray) {
            return Ok(None);
        }
        let mut kind = 0;
        let mut len = 0usize;
        let mut data = ptr::null_mut();
        let mut ab = ptr::null_mut();
        let mut offset = 0usize;
        // SAFETY: the value is a typed array (checked above); `data` points at
        // `len` elements that stay alive for this synchronous call.
        status(
            unsafe {
                sys::napi_get_typedarray_info(self.env, self.raw, &mut kind, &mut len, &mut data, &mut ab, &mut offset)
            },
            "a typed array",
        )?;
        if kind != sys::TypedarrayType::uint8_array && kind != sys::TypedarrayType::uint8_clamped_array {
            return Err(err!(InvalidArg, "bytes must be a Uint8Array or Buffer (got another typed array)"));
        }
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        // SAFETY: see above.
        Ok(Some(unsafe { std::slice::from_raw_parts(data as *const u8, len) }.to_vec()))
    }

    pub fn get(&self, key: &std::ffi::CStr) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an object (callers check), key is NUL-terminated.
        status(unsafe { sys::napi_get_named_property(self.env, self.raw, key.as_ptr(), &mut out) }, "a property")?;
        Ok(JsVal::new(self.env, out))
    }

    pub fn string(&self) -> Result<String> {
        let mut len = 0usize;
        // SAFETY: a null buffer asks for the UTF-8 length only.
        status(
            unsafe { sys::napi_get_value_string_utf8(self.env, self.raw, ptr::null_mut(), 0, &mut len) },
            "a string",
        )?;
        let mut buf = vec![0u8; len + 1];
        let mut written = 0usize;
        // SAFETY: buf has room for len bytes + NUL.
        status(
            unsafe {
                sys::napi_get_value_string_utf8(self.env, self.raw, buf.as_mut_ptr().cast(), len + 1, &mut written)
            },
            "a string",
        )?;
        buf.truncate(written);
        // N-API writes valid UTF-8 (lone surrogates become U+FFFD).
        String::from_utf8(buf).map_err(|_| CoreError::internal("N-API returned invalid UTF-8"))
    }

    fn string_len(&self) -> Result<usize> {
        let mut len = 0usize;
        // SAFETY: length query only.
        status(
            unsafe { sys::napi_get_value_string_utf8(self.env, self.raw, ptr::null_mut(), 0, &mut len) },
            "a string",
        )?;
        Ok(len)
    }

    pub fn number(&self) -> Result<f64> {
        let mut out = 0f64;
        // SAFETY: raw is a number (callers check the type).
        status(unsafe { sys::napi_get_value_double(self.env, self.raw, &mut out) }, "a number")?;
        Ok(out)
    }

    pub fn boolean(&self) -> Result<bool> {
        let mut out = false;
        // SAFETY: raw is a boolean (callers check the type).
        status(unsafe { sys::napi_get_value_bool(self.env, self.raw, &mut out) }, "a boolean")?;
        Ok(out)
    }

    pub fn array_len(&self) -> Result<u32> {
        let mut n = 0u32;
        // SAFETY: raw is an array (checked by the caller).
        status(unsafe { sys::napi_get_array_length(self.env, self.raw, &mut n) }, "an array")?;
        Ok(n)
    }

    pub fn element(&self, i: u32) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an array/object.
        status(unsafe { sys::napi_get_element(self.env, self.raw, i, &mut out) }, "an array element")?;
        Ok(JsVal::new(self.env, out))
    }

    fn own_keys(&self) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an object. Own enumerable string keys only, like
        // JSON.stringify (napi_get_property_names also walks the prototype
        // chain, which costs more than the rest of a small envelope).
        status(
            unsafe {
                sys::napi_get_all_property_names(
                    self.env,
                    self.raw,
                    sys::KeyCollectionMode::own_only,
                    sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                    sys::KeyConversion::numbers_to_strings,
                    &mut out,
                )
            },
            "object keys",
        )?;
        Ok(JsVal::new(self.env, out))
    }

    fn property(&self, key: JsVal) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an object, key a string from own_keys.
        status(unsafe { sys::napi_get_property(self.env, self.raw, key.raw, &mut out) }, "a property")?;
        Ok(JsVal::new(self.env, out))
    }

    pub fn is_nullish(&self) -> Result<bool> {
        let t = self.type_of()?;
        Ok(t == sys::ValueType::napi_undefined || t == sys::ValueType::napi_null)
    }

    pub fn kind_name(&self) -> &'static str {
        match self.type_of() {
            Ok(sys::ValueType::napi_undefined) => "undefined",
            Ok(sys::ValueType::napi_null) => "null",
            Ok(sys::ValueType::napi_boolean) => "a boolean",
            Ok(sys::ValueType::napi_number) => "a number",
            Ok(sys::ValueType::napi_string) => "a string",
            Ok(sys::ValueType::napi_symbol) => "a symbol",
            Ok(sys::ValueType::napi_function) => "a function",
            Ok(sys::ValueType::napi_bigint) => "a bigint",
            Ok(sys::ValueType::napi_object) if self.is_array() => "an array",
            Ok(sys::ValueType::napi_object) => "an object",
            _ => "an unsupported value",
        }
    }
}

/// Converts JS values to JSON with a depth limit and a byte budget.
pub struct JsonWalker {
    max_depth: usize,
    budget: usize,
    max_bytes: usize,
}

impl JsonWalker {
    pub fn new(limits: &Limits) -> JsonWalker {
        JsonWalker {
            max_depth: limits.max_json_depth,
            budget: limits.max_envelope_bytes,
            max_bytes: limits.max_envelope_bytes,
        }
    }

    fn spend(&mut self, n: usize, path: &str) -> Result<()> {
        if n > self.budget {
            return Err(err!(
                TooLarge,
                "the envelope is over the size limit of {} bytes (while reading `{path}`; EngineOptions.maxEnvelopeBytes)",
                self.max_bytes
            ));
        }
        self.budget -= n;
        Ok(())
    }

    /// Convert with JSON.stringify semantics: `undefined`, functions and
    /// symbols are dropped from objects and become null in arrays.
    /// Returns None for values JSON would drop.
    pub fn to_json(&mut self, v: JsVal, path: &mut String, depth: usize) -> Result<Option<Value>> {
        let t = v.type_of()?;
        Ok(Some(match t {
            sys::ValueType::napi_undefined | sys::ValueType::napi_function | sys::ValueType::napi_symbol => {
                return Ok(None)
            }
            sys::ValueType::napi_null => {
                self.spend(4, path)?;
                Value::Null
            }
            sys::ValueType::napi_boolean => {
                self.spend(4, path)?;
                Value::Bool(v.boolean()?)
            }
            sys::ValueType::napi_number => {
                self.spend(8, path)?;
                let n = v.number()?;
                if !n.is_finite() {
                    return Err(err!(InvalidArg, "`{path}` is {n}, which JSON cannot carry"));
                }
                if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                    Value::Number(Number::from(n as i64))
                } else {
                    Value::Number(Number::from_f64(n).ok_or_else(|| err!(InvalidArg, "`{path}` is not a JSON number"))?)
                }
            }
            sys::ValueType::napi_string => {
                self.spend(v.string_len()? + 2, path)?;
                Value::String(v.string()?)
            }
            sys::ValueType::napi_bigint => {
                return Err(err!(InvalidArg, "`{path}` is a BigInt, which JSON cannot carry; send a string or number"))
            }
            sys::ValueType::napi_object => {
                if depth >= self.max_depth {
                    return Err(err!(
                        TooDeep,
                        "`{path}` is nested deeper than {} levels (or is a cyclic structure)",
                        self.max_depth
                    ));
                }
                let base = path.len();
                if v.is_array() {
                    let n = v.array_len()?;
                    self.spend(2 + n as usize, path)?;
                    let mut items = Vec::with_capacity(n as usize);
                    for i in 0..n {
                        use std::fmt::Write;
                        let _ = write!(path, "[{i}]");
                        let item = self.to_json(v.element(i)?, path, depth + 1)?;
                        path.truncate(base);
                        items.push(item.unwrap_or(Value::Null));
                    }
                    Value::Array(items)
                } else {
                    if let Some(bytes) = v.typed_bytes()? {
                        return Err(err!(
                            InvalidArg,
                            "`{path}` is binary ({} bytes); binary data goes in `payload` itself or `payload_b64`",
                            bytes.len()
                        ));
                    }
                    let keys = v.own_keys()?;
                    let n = keys.array_len()?;
                    self.spend(2, path)?;
                    let mut map = Map::new();
                    for i in 0..n {
                        let key = keys.element(i)?;
                        let name = key.string()?;
                        self.spend(name.len() + 3, path)?;
                        path.push('.');
                        path.push_str(&name);
                        let item = self.to_json(v.property(key)?, path, depth + 1)?;
                        path.truncate(base);
                        if let Some(item) = item {
                            map.insert(name, item);
                        }
                    }
                    Value::Object(map)
                }
            }
            _ => return Err(err!(InvalidArg, "`{path}` has an unsupported type")),
        }))
    }
}

fn optional_string(obj: JsVal, key: &std::ffi::CStr, field: &str) -> Result<Option<String>> {
    let v = obj.get(key)?;
    match v.type_of()? {
        sys::ValueType::napi_undefined | sys::ValueType::napi_null => Ok(None),
        sys::ValueType::napi_string => Ok(Some(v.string()?)),
        _ => Err(err!(Envelope, "`{field}` must be a string, got {}", v.kind_name())),
    }
}

/// Read `submit`'s first argument: an envelope object, a JSON string, or a
/// Uint8Array/Buffer holding JSON. Only copies; decoding happens off-thread.
pub fn envelope_input(v: JsVal, limits: &Limits) -> Result<EnvelopeInput> {
    match v.type_of()? {
        sys::ValueType::napi_string => {
            let len = v.string_len()?;
            if len > limits.max_envelope_bytes {
                return Err(err!(
                    TooLarge,
                    "the envelope string is {len} bytes; the limit is {} bytes (EngineOptions.maxEnvelopeBytes)",
                    limits.max_envelope_bytes
                ));
            }
            Ok(EnvelopeInput::Bytes(v.string()?.into_bytes()))
        }
        sys::ValueType::napi_object if !v.is_array() => {
            if let Some(bytes) = v.typed_bytes()? {
                return Ok(EnvelopeInput::Bytes(bytes));
            }
            let mut raw = RawEnvelope::default();
            let id = v.get(c"id")?;
            raw.id = match id.type_of()? {
                sys::ValueType::napi_undefined | sys::ValueType::napi_null => None,
                sys::ValueType::napi_string => Some(id.string()?),
                sys::ValueType::napi_number => Some(Number::from_f64(id.number()?).map_or_else(String::new, |n| {
                    n.as_f64().filter(|f| f.fract() == 0.0).map_or(n.to_string(), |f| format!("{}", f as i64))
                })),
                _ => return Err(err!(Envelope, "`id` must be a string or a number, got {}", id.kind_name())),
            };
            raw.job_type = match v.get(c"type")? {
                t if t.type_of()? == sys::ValueType::napi_string => Some(t.string()?),
                t if t.is_nullish()? => None,
                t => return Err(err!(Envelope, "`type` must be a string, got {}", t.kind_name())),
            };
            raw.encoding = optional_string(v, c"encoding", "encoding")?;
            let b64 = v.get(c"payload_b64")?;
            match b64.type_of()? {
                sys::ValueType::napi_undefined | sys::ValueType::napi_null => {}
                sys::ValueType::napi_string => {
                    let len = b64.string_len()?;
                    if len > limits.max_envelope_bytes {
                        return Err(err!(
                            TooLarge,
                            "`payload_b64` is {len} bytes; the limit is {} bytes (EngineOptions.maxEnvelopeBytes)",
                            limits.max_envelope_bytes
                        ));
                    }
                    raw.payload_b64 = Some(b64.string()?);
                }
                _ => return Err(err!(Envelope, "`payload_b64` must be a base64 string, got {}", b64.kind_name())),
            }
            let payload = v.get(c"payload")?;
            if !payload.is_nullish()? {
                if let Some(bytes) = payload.typed_bytes()? {
                    raw.payload_bytes = Some(bytes);
                } else {
                    let mut walker = JsonWalker::new(limits);
                    let mut path = String::from("payload");
                    raw.payload = walker.to_json(payload, &mut path, 0)?;
                }
            }
            Ok(EnvelopeInput::Raw(raw))
        }
        _ => Err(err!(
            Envelope,
            "submit() takes an envelope object, a JSON string or a Uint8Array; got {}",
            v.kind_name()
        )),
    }
}

/// Call options read on the JS thread; the AbortSignal (if any) is returned
/// separately because hooking it needs the Env.
#[derive(Default)]
pub struct ParsedCall {
    pub call: CallOptions,
    pub signal: Option<JsVal>,
    pub already_aborted: bool,
}

pub fn call_options(v: Option<JsVal>) -> Result<ParsedCall> {
    let mut parsed = ParsedCall { call: CallOptions::default(), signal: None, already_aborted: false };
    let Some(v) = v else { return Ok(parsed) };
    if v.is_nullish()? {
        return Ok(parsed);
    }
    if v.type_of()? != sys::ValueType::napi_object {
        return Err(err!(InvalidArg, "`options` must be an object, got {}", v.kind_name()));
    }
    let timeout = v.get(c"timeoutMs")?;
    if !timeout.is_nullish()? {
        let ms = if timeout.type_of()? == sys::ValueType::napi_number { timeout.number()? } else { f64::NAN };
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(err!(
                InvalidArg,
                "`options.timeoutMs` must be a number of milliseconds >= 0, got {}",
                timeout.kind_name()
            ));
        }
        if ms > 0.0 {
            parsed.call.timeout = Some(Duration::from_secs_f64(ms / 1e3));
        }
    }
    let target = v.get(c"target")?;
    if !target.is_nullish()? {
        let s = if target.type_of()? == sys::ValueType::napi_string { Some(target.string()?) } else { None };
        parsed.call.target = s.as_deref().and_then(Target::parse).ok_or_else(|| {
            err!(
                InvalidArg,
                "`options.target` must be 'auto', 'local' or 'worker', got {}",
                s.as_deref().map_or(target.kind_name().to_string(), |s| format!("{s:?}"))
            )
        })?;
    }
    let signal = v.get(c"signal")?;
    if !signal.is_nullish()? {
        if signal.type_of()? != sys::ValueType::napi_object {
            return Err(err!(InvalidArg, "`options.signal` must be an AbortSignal, got {}", signal.kind_name()));
        }
        let aborted = signal.get(c"aborted")?;
        if aborted.type_of()? != sys::ValueType::napi_boolean {
            return Err(err!(InvalidArg, "`options.signal` must be an AbortSignal (it has no boolean `aborted`)"));
        }
        parsed.already_aborted = aborted.boolean()?;
        parsed.signal = Some(signal);
    }
    Ok(parsed)
}

/// Builds job-result objects with a JS object literal: V8 gives every result
/// the same hidden class and skips interning the eleven property names per
/// job, which made N-API property-by-property construction the largest cost
/// of an echo job. Created once per JS thread and kept by reference.
const RESULT_FACTORY_JS: &str = "(function (id, type, backend, encoding, result, decode, queue, run, total) {
  const timings_ms = { decode, queue, run, total };
  return id === undefined
    ? { type, ok: true, backend, encoding, result, timings_ms }
    : { id, type, ok: true, backend, encoding, result, timings_ms };
})";

thread_local! {
    static RESULT_FACTORY: std::cell::Cell<sys::napi_ref> = const { std::cell::Cell::new(ptr::null_mut()) };
}

fn result_factory(env: &Env) -> napi::Result<sys::napi_value> {
    let raw = env.raw();
    let mut func = ptr::null_mut();
    let cached = RESULT_FACTORY.with(|c| c.get());
    // SAFETY: JS thread; the reference was created on this thread and env.
    if !cached.is_null()
        && unsafe { sys::napi_get_reference_value(raw, cached, &mut func) } == sys::Status::napi_ok
        && !func.is_null()
    {
        return Ok(func);
    }
    let mut source = ptr::null_mut();
    let mut reference = ptr::null_mut();
    // SAFETY: JS thread; the script is a constant function expression.
    let ok = unsafe {
        sys::napi_create_string_utf8(
            raw,
            RESULT_FACTORY_JS.as_ptr().cast(),
            RESULT_FACTORY_JS.len() as isize,
            &mut source,
        ) == sys::Status::napi_ok
            && sys::napi_run_script(raw, source, &mut func) == sys::Status::napi_ok
            && sys::napi_create_reference(raw, func, 1, &mut reference) == sys::Status::napi_ok
    };
    if !ok {
        return Err(napi::Error::new(Status::GenericFailure, "cannot create the job-result factory"));
    }
    RESULT_FACTORY.with(|c| c.set(reference));
    Ok(func)
}

/// A job result as the JS object of DESIGN.md "Job result"; bytes become a Buffer.
pub fn job_result_to_js(env: &Env, r: JobResult) -> napi::Result<Unknown<'_>> {
    let factory = result_factory(env)?;
    let id = match r.id {
        Some(id) => id.into_unknown(env)?,
        None => ().into_unknown(env)?,
    };
    let result = match r.output {
        JobOutput::Json(v) => json_to_js(env, &v)?,
        JobOutput::Bytes(b) => Buffer::from(b).into_unknown(env)?,
    };
    let args = [
        id.value().value,
        r.job_type.into_unknown(env)?.value().value,
        r.backend.as_str().into_unknown(env)?.value().value,
        r.encoding.into_unknown(env)?.value().value,
        result.value().value,
        r.timings.decode.into_unknown(env)?.value().value,
        r.timings.queue.into_unknown(env)?.value().value,
        r.timings.run.into_unknown(env)?.value().value,
        r.timings.total.into_unknown(env)?.value().value,
    ];
    let raw = env.raw();
    let mut recv = ptr::null_mut();
    let mut out = ptr::null_mut();
    // SAFETY: JS thread; `factory` is a live function taking 9 arguments.
    let status = unsafe {
        sys::napi_get_undefined(raw, &mut recv);
        sys::napi_call_function(raw, recv, factory, args.len(), args.as_ptr(), &mut out)
    };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(Status::GenericFailure, "building the job result failed"));
    }
    // SAFETY: `out` is the object the factory returned, on this env.
    Ok(unsafe { Unknown::from_raw_unchecked(raw, out) })
}

/// JSON into a JS value. Iterative depth is bounded by the envelope's depth
/// limit, so plain recursion is safe here.
pub fn json_to_js<'e>(env: &'e Env, v: &Value) -> napi::Result<Unknown<'e>> {
    Ok(match v {
        Value::Null => Null.into_unknown(env)?,
        Value::Bool(b) => b.into_unknown(env)?,
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN).into_unknown(env)?,
        Value::String(s) => s.as_str().into_unknown(env)?,
        Value::Array(items) => {
            let mut arr = env.create_array(items.len() as u32)?;
            for (i, item) in items.iter().enumerate() {
                arr.set(i as u32, json_to_js(env, item)?)?;
            }
            arr.into_unknown(env)?
        }
        Value::Object(map) => {
            let mut obj = Object::new(env)?;
            for (k, item) in map {
                obj.set_named_property(k, json_to_js(env, item)?)?;
            }
            obj.into_unknown(env)?
        }
    })
}
