//! JS values in and out: envelopes (object, string or bytes) into core
//! inputs under the engine's limits, call options, job results into JS.
//!
//! The JS→JSON walk is our own rather than serde's so that depth and size
//! limits apply while walking: a 10,000-deep or cyclic object must give
//! `E_TOO_DEEP`, never a stack overflow.

use std::ptr;
use std::time::Instant;

use cuda_engine_core::engine::{CallOptions, EnvelopeInput};
use cuda_engine_core::envelope::{Limits, RawEnvelope};
use cuda_engine_core::err;
use cuda_engine_core::jobs::{JobOutput, JobResult, Target};
use cuda_engine_core::options;
use cuda_engine_core::{CoreError, Result};
use napi::bindgen_prelude::*;
use napi::sys;
use serde_json::{Map, Number, Value};

/// Most elements any JS array argument may have (texts, tensor data, JSON
/// arrays) before anything is allocated for it: `E_TOO_LARGE` above. The
/// envelope and per-call limits are usually tighter; this bounds the
/// allocation a single length can ask for (a sparse `new Array(2**32 - 1)`).
pub const MAX_ARRAY_ELEMENTS: u32 = 1 << 24;

/// Why the raw N-API calls stay (here and nowhere else): the JS→JSON walk
/// is the hot path of `submit` with object envelopes, and it must bound
/// depth and size while it walks and turn a throwing getter or Proxy trap
/// into a coded error of that call alone. napi-rs's `Unknown`/`Object`
/// wrappers make the same calls underneath but report failures as
/// `napi::Error` without clearing the pending exception, which would leave
/// the next call (another caller's) failing. Every status is checked in
/// [`JsVal::status`].
/// Strings whose UTF-8 fits in this many bytes (less 4) are read with one
/// write through a scratch buffer ([`JsVal::short_string`]).
pub const SHORT_STRING_BYTES: usize = 16 << 10;

thread_local! {
    /// [`JsVal::string`]'s scratch buffer (the JS thread's); the JSON walk
    /// keeps its own.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

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

    /// Check an N-API status. A JS exception raised by the call (a getter
    /// that throws, a Proxy trap) is cleared here, so it fails only this
    /// call, and becomes `E_INVALID_ARG` with its message.
    pub fn status(&self, s: sys::napi_status, what: &str) -> Result<()> {
        if s == sys::Status::napi_ok {
            return Ok(());
        }
        if let Some(msg) = take_exception(self.env) {
            return Err(err!(InvalidArg, "reading {what} threw: {msg}"));
        }
        Err(CoreError::internal(format!("N-API call failed while reading {what} (status {s})")))
    }

    pub fn type_of(&self) -> Result<sys::napi_valuetype> {
        let mut t = 0;
        // SAFETY: env and raw come from the current N-API callback.
        self.status(unsafe { sys::napi_typeof(self.env, self.raw, &mut t) }, "a value's type")?;
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

    /// The typed array behind this value, if it is one (the one typed-array
    /// reader: `submit` bytes, `infer` tensor data).
    pub fn typed_view(&self) -> Result<Option<TypedView>> {
        if !self.check(sys::napi_is_typedarray) {
            return Ok(None);
        }
        let (mut kind, mut len, mut data, mut ab, mut off) = (0, 0usize, ptr::null_mut(), ptr::null_mut(), 0usize);
        // SAFETY: the value is a typed array (checked above).
        self.status(
            unsafe {
                sys::napi_get_typedarray_info(self.env, self.raw, &mut kind, &mut len, &mut data, &mut ab, &mut off)
            },
            "a typed array",
        )?;
        Ok(Some(TypedView { kind, data: data as *const u8, len }))
    }

    /// The bytes of a Uint8Array / Buffer, copied; another typed array is
    /// `E_INVALID_ARG`.
    pub fn typed_bytes(&self) -> Result<Option<Vec<u8>>> {
        match self.typed_view()? {
            None => Ok(None),
            Some(t) if t.is_u8() => Ok(Some(t.bytes().to_vec())),
            Some(t) => Err(err!(InvalidArg, "bytes must be a Uint8Array or Buffer, got {}", t.name())),
        }
    }

    /// A BigInt's value, saturated to the i128 range.
    pub fn bigint(&self) -> Result<i128> {
        let (mut sign, mut count) = (0i32, 0usize);
        // SAFETY: null sign and buffer ask for the word count only (Node
        // rejects a sign pointer without a buffer).
        self.status(
            unsafe {
                sys::napi_get_value_bigint_words(self.env, self.raw, ptr::null_mut(), &mut count, ptr::null_mut())
            },
            "a BigInt",
        )?;
        let mut words = [0u64; 2];
        let mut n = words.len();
        if count > 2 {
            // Beyond any tensor type: only the sign matters (out of range).
            n = 0;
        }
        // SAFETY: `words` has room for `n` (>= count, or 0 to read the sign) words.
        self.status(
            unsafe { sys::napi_get_value_bigint_words(self.env, self.raw, &mut sign, &mut n, words.as_mut_ptr()) },
            "a BigInt",
        )?;
        if count > 2 {
            return Ok(if sign == 1 { i128::MIN } else { i128::MAX });
        }
        let mag = (words[0] as u128) | ((words[1] as u128) << 64);
        Ok(match (sign == 1, i128::try_from(mag)) {
            (false, Ok(x)) => x,
            (true, Ok(x)) => -x,
            (false, Err(_)) => i128::MAX,
            (true, Err(_)) => i128::MIN,
        })
    }

    pub fn get(&self, key: &std::ffi::CStr) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an object (callers check), key is NUL-terminated.
        let s = unsafe { sys::napi_get_named_property(self.env, self.raw, key.as_ptr(), &mut out) };
        if s != sys::Status::napi_ok {
            // A throwing getter or Proxy trap: the message names the key.
            return Err(self.status(s, &format!("`{}`", key.to_string_lossy())).unwrap_err());
        }
        Ok(JsVal::new(self.env, out))
    }

    pub fn string(&self) -> Result<String> {
        let short = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => self.short_string(&mut buf),
            // Not reentrant (no JS runs during a string read); a fresh
            // buffer if it ever were.
            Err(_) => self.short_string(&mut Vec::new()),
        })?;
        match short {
            Some(s) => Ok(s),
            None => {
                let len = self.string_len()?;
                self.string_of_len(len)
            }
        }
    }

    /// The string when its UTF-8 takes at most [`SHORT_STRING_BYTES`] - 4
    /// bytes, else `Ok(None)`: one N-API call, a UTF-8 write into `scratch`
    /// (reused: its pages stay in memory), then one allocation of exactly
    /// the string's length. A longer string is cut short by the write; the
    /// caller reads it with a length pass first (so that a limit is checked
    /// before its buffer is allocated).
    ///
    /// Complete when at least 4 bytes of room are left: V8 stops a write
    /// only before a character that does not fit, and none takes more than
    /// 4 bytes (a surrogate pair; a lone surrogate becomes U+FFFD's 3, as on
    /// every path). Before, each string took two N-API calls that each
    /// transcoded it (a UTF-8 length pass, then the write) into a zeroed
    /// buffer.
    pub fn short_string(&self, scratch: &mut Vec<u8>) -> Result<Option<String>> {
        let cap = SHORT_STRING_BYTES;
        scratch.clear();
        scratch.reserve(cap + 1);
        let written = self.write_utf8(scratch.spare_capacity_mut().as_mut_ptr().cast(), cap)?;
        if written + 4 > cap {
            return Ok(None);
        }
        // SAFETY: N-API initialised `written` bytes (and a NUL after them)
        // of the spare capacity, which has room for cap + 1.
        unsafe { scratch.set_len(written) };
        // N-API writes valid UTF-8; the check is a pass over bytes in cache.
        std::str::from_utf8(scratch)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| CoreError::internal("N-API returned invalid UTF-8"))
    }

    /// The string, when its UTF-8 length `len` is known (from
    /// [`JsVal::string_len`], checked against a limit): one pass less.
    pub fn string_of_len(&self, len: usize) -> Result<String> {
        let mut buf = Vec::<u8>::with_capacity(len + 1);
        let written = self.write_utf8(buf.spare_capacity_mut().as_mut_ptr().cast(), len)?;
        // SAFETY: N-API initialised `written` bytes (and a NUL after them)
        // of the spare capacity, which has room for len + 1.
        unsafe { buf.set_len(written.min(len)) };
        // N-API writes valid UTF-8 (lone surrogates become U+FFFD).
        String::from_utf8(buf).map_err(|_| CoreError::internal("N-API returned invalid UTF-8"))
    }

    /// The string's UTF-8 bytes when there are at most `max` of them, else
    /// `Ok(None)`. Not validated here: N-API writes valid UTF-8 (lone
    /// surrogates become U+FFFD) and the bytes are parsed, or checked with
    /// `String::from_utf8`, off the JS thread.
    ///
    /// No length pass: the UTF-16 length is O(1) and bounds the UTF-8
    /// length (1 to 3 bytes per code unit), so one write into a buffer of
    /// min(3 × units, max + 4) bytes either holds the whole string or, when
    /// V8 stops early for lack of room, has written over `max` bytes.
    /// Untouched capacity costs no page faults.
    pub fn string_utf8_capped(&self, max: usize) -> Result<Option<Vec<u8>>> {
        let units = self.string_units()?;
        if units > max {
            return Ok(None);
        }
        let cap = utf8_cap(units, max);
        let mut buf = Vec::<u8>::with_capacity(cap + 1);
        let written = self.write_utf8(buf.spare_capacity_mut().as_mut_ptr().cast(), cap)?;
        // SAFETY: N-API initialised `written` bytes (and a NUL after them).
        unsafe { buf.set_len(written) };
        Ok((written <= max && written >= units).then_some(buf))
    }

    /// Write the string as UTF-8 into `dst`, which has room for `cap` bytes
    /// and a NUL; the bytes written (without the NUL).
    pub fn write_utf8(&self, dst: *mut std::ffi::c_char, cap: usize) -> Result<usize> {
        let mut written = 0usize;
        // SAFETY: `dst` has room for cap + 1 bytes (callers); `cap` fits
        // the `int` that Node passes on to V8 (utf8_cap bounds it).
        self.status(
            unsafe { sys::napi_get_value_string_utf8(self.env, self.raw, dst, cap + 1, &mut written) },
            "a string",
        )?;
        Ok(written)
    }

    /// Length in UTF-16 code units (O(1): no pass over the string).
    pub fn string_units(&self) -> Result<usize> {
        let mut len = 0usize;
        // SAFETY: length query only.
        self.status(
            unsafe { sys::napi_get_value_string_utf16(self.env, self.raw, ptr::null_mut(), 0, &mut len) },
            "a string",
        )?;
        Ok(len)
    }

    /// UTF-8 length in bytes (a pass over the string).
    pub fn string_len(&self) -> Result<usize> {
        let mut len = 0usize;
        // SAFETY: length query only.
        self.status(
            unsafe { sys::napi_get_value_string_utf8(self.env, self.raw, ptr::null_mut(), 0, &mut len) },
            "a string",
        )?;
        Ok(len)
    }

    pub fn number(&self) -> Result<f64> {
        let mut out = 0f64;
        // SAFETY: raw is a number (callers check the type).
        self.status(unsafe { sys::napi_get_value_double(self.env, self.raw, &mut out) }, "a number")?;
        Ok(out)
    }

    pub fn boolean(&self) -> Result<bool> {
        let mut out = false;
        // SAFETY: raw is a boolean (callers check the type).
        self.status(unsafe { sys::napi_get_value_bool(self.env, self.raw, &mut out) }, "a boolean")?;
        Ok(out)
    }

    pub fn array_len(&self) -> Result<u32> {
        let mut n = 0u32;
        // SAFETY: raw is an array (checked by the caller).
        self.status(unsafe { sys::napi_get_array_length(self.env, self.raw, &mut n) }, "an array")?;
        Ok(n)
    }

    pub fn element(&self, i: u32) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an array/object.
        self.status(unsafe { sys::napi_get_element(self.env, self.raw, i, &mut out) }, "an array element")?;
        Ok(JsVal::new(self.env, out))
    }

    pub fn own_keys(&self) -> Result<JsVal> {
        let mut out = ptr::null_mut();
        // SAFETY: raw is an object. Own enumerable string keys only, like
        // JSON.stringify (napi_get_property_names also walks the prototype
        // chain, which costs more than the rest of a small envelope).
        self.status(
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
        self.status(unsafe { sys::napi_get_property(self.env, self.raw, key.raw, &mut out) }, "a property")?;
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

/// Bytes to reserve for the UTF-8 of `units` UTF-16 code units under a
/// limit of `max` bytes: all of it (3 per unit) when that is within
/// `max + 4`, else `max + 4`, so that a write V8 cuts short (it stops before
/// a character of up to 4 bytes that does not fit) has written over `max`.
/// Below `i32::MAX`: Node hands the size to V8 as an `int`.
pub fn utf8_cap(units: usize, max: usize) -> usize {
    units.saturating_mul(3).min(max.saturating_add(4)).min(i32::MAX as usize - 2)
}

/// Clear a pending JS exception (a getter or Proxy trap threw during an
/// N-API call) and return its message; None when nothing is pending.
pub fn take_exception(env: sys::napi_env) -> Option<String> {
    let mut pending = false;
    // SAFETY: JS thread; these calls are valid with an exception pending.
    if unsafe { sys::napi_is_exception_pending(env, &mut pending) } != sys::Status::napi_ok || !pending {
        return None;
    }
    let mut exc = ptr::null_mut();
    // SAFETY: as above; clears the exception.
    if unsafe { sys::napi_get_and_clear_last_exception(env, &mut exc) } != sys::Status::napi_ok || exc.is_null() {
        return Some("an exception".into());
    }
    // String(exc) may itself throw (a Symbol, a poisoned toString): then
    // say so without looking further.
    let mut text = ptr::null_mut();
    // SAFETY: JS thread; exc is a live value.
    if unsafe { sys::napi_coerce_to_string(env, exc, &mut text) } != sys::Status::napi_ok {
        let mut ignored = ptr::null_mut();
        // SAFETY: clear what the coercion threw.
        unsafe { sys::napi_get_and_clear_last_exception(env, &mut ignored) };
        return Some("an exception that cannot be shown as a string".into());
    }
    let v = JsVal::new(env, text);
    let mut msg = v.string().unwrap_or_else(|_| "an exception".into());
    if msg.len() > 200 {
        let cut = (0..=200).rev().find(|&i| msg.is_char_boundary(i)).unwrap_or(0);
        msg.truncate(cut);
        msg.push('…');
    }
    Some(msg)
}

/// A typed array's kind and contents, borrowed for one synchronous call.
pub struct TypedView {
    pub kind: sys::napi_typedarray_type,
    data: *const u8,
    pub len: usize,
}

impl TypedView {
    pub fn is_u8(&self) -> bool {
        self.kind == sys::TypedarrayType::uint8_array || self.kind == sys::TypedarrayType::uint8_clamped_array
    }

    pub fn name(&self) -> &'static str {
        use sys::TypedarrayType as T;
        match self.kind {
            T::int8_array => "an Int8Array",
            T::uint8_array => "a Uint8Array",
            T::uint8_clamped_array => "a Uint8ClampedArray",
            T::int16_array => "an Int16Array",
            T::uint16_array => "a Uint16Array",
            T::int32_array => "an Int32Array",
            T::uint32_array => "a Uint32Array",
            T::float32_array => "a Float32Array",
            T::float64_array => "a Float64Array",
            T::bigint64_array => "a BigInt64Array",
            T::biguint64_array => "a BigUint64Array",
            _ => "an unsupported typed array",
        }
    }

    /// Copy the elements as `T` (the caller matched `T` to the kind).
    pub fn copy<T: Copy>(&self) -> Vec<T> {
        if self.len == 0 {
            return Vec::new();
        }
        // SAFETY: a typed array's data pointer is aligned for its element
        // type and holds `len` elements, alive during this synchronous call.
        unsafe { std::slice::from_raw_parts(self.data as *const T, self.len) }.to_vec()
    }

    /// The bytes of a Uint8Array / Uint8ClampedArray.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 || !self.is_u8() {
            return &[];
        }
        // SAFETY: one byte per element, alive during this synchronous call.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

/// Converts JS values to JSON with a depth limit and a byte budget.
pub struct JsonWalker {
    max_depth: usize,
    budget: usize,
    max_bytes: usize,
    /// Options, not payloads: a function, Symbol or BigInt is an error
    /// instead of being dropped the way JSON.stringify drops it.
    strict: bool,
    /// Values (and keys) still allowed to be read one by one: bounds the
    /// event-loop block (`maxPayloadValues`).
    values_left: usize,
    max_values: usize,
    /// Where strings are written before their exact copy
    /// ([`JsVal::short_string`]).
    scratch: Vec<u8>,
}

impl JsonWalker {
    pub fn new(limits: &Limits) -> JsonWalker {
        JsonWalker {
            max_depth: limits.max_json_depth,
            budget: limits.max_envelope_bytes,
            max_bytes: limits.max_envelope_bytes,
            strict: false,
            values_left: limits.max_payload_values,
            max_values: limits.max_payload_values,
            scratch: Vec::new(),
        }
    }

    /// For option objects: small limits (depth 8, 1 MiB, 10,000 values)
    /// and strict types.
    pub fn for_options() -> JsonWalker {
        JsonWalker {
            max_depth: 8,
            budget: 1 << 20,
            max_bytes: 1 << 20,
            strict: true,
            values_left: 10_000,
            max_values: 10_000,
            scratch: Vec::new(),
        }
    }

    /// Take `n` values from the budget; `E_TOO_LARGE` naming `path` when it
    /// is spent. Called before anything is read or allocated for them.
    pub fn count_values(&mut self, n: usize, path: &str) -> Result<()> {
        self.check_values(n, path)?;
        self.values_left -= n;
        Ok(())
    }

    /// Whether `n` more values fit, without taking them (an array's length
    /// is checked before its elements are read, each counted as visited).
    fn check_values(&self, n: usize, path: &str) -> Result<()> {
        if n > self.values_left {
            return Err(err!(
                TooLarge,
                "`{path}`: the arguments hold more than {} values read one by one \
                 (EngineOptions.maxPayloadValues, which bounds how long a call blocks the event loop); \
                 send large data as a JSON string, bytes, or a typed array",
                self.max_values
            ));
        }
        Ok(())
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
    /// Returns None for values JSON would drop. `depth` is the level `v`
    /// sits at (its containers count against `max_depth`).
    ///
    /// Iterative: the containers being read are on a heap stack, never the
    /// native one, so no depth limit a user sets can overflow it (the limit
    /// itself has a hard ceiling, `options::MAX_JSON_DEPTH`).
    pub fn walk(&mut self, v: JsVal, path: &mut String, depth: usize) -> Result<Option<Value>> {
        let mut stack: Vec<Open> = Vec::new();
        let mut done = match self.visit(v, path, depth)? {
            Visited::Value(x) => return Ok(x),
            Visited::Open(frame) => {
                stack.push(frame);
                None
            }
        };
        loop {
            let top = stack.last_mut().expect("the loop returns when the stack empties");
            if let Some(item) = done.take() {
                top.accept(item, path);
            }
            match self.next_child(top, path)? {
                Some(child) => match self.visit(child, path, depth + stack.len())? {
                    Visited::Value(x) => done = Some(x),
                    Visited::Open(frame) => stack.push(frame),
                },
                None => {
                    let value = stack.pop().expect("top exists").finish();
                    if stack.is_empty() {
                        return Ok(Some(value));
                    }
                    done = Some(Some(value));
                }
            }
        }
    }

    /// A scalar's value, or an array/object opened for reading. A read
    /// that throws (a getter, a Proxy trap) is `E_INVALID_ARG` naming `path`.
    fn visit(&mut self, v: JsVal, path: &mut String, depth: usize) -> Result<Visited> {
        self.visit_inner(v, path, depth).map_err(|e| at_path(e, path))
    }

    fn visit_inner(&mut self, v: JsVal, path: &mut String, depth: usize) -> Result<Visited> {
        self.count_values(1, path)?;
        let t = v.type_of()?;
        Ok(Visited::Value(Some(match t {
            sys::ValueType::napi_undefined => return Ok(Visited::Value(None)),
            sys::ValueType::napi_function | sys::ValueType::napi_symbol if self.strict => {
                return Err(err!(InvalidArg, "`{path}` is {}, not a JSON value", v.kind_name()))
            }
            sys::ValueType::napi_function | sys::ValueType::napi_symbol => return Ok(Visited::Value(None)),
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
            sys::ValueType::napi_string => match v.short_string(&mut self.scratch)? {
                // Most strings: one write, then the budget.
                Some(s) => {
                    self.spend(s.len() + 2, path)?;
                    Value::String(s)
                }
                // A long one: its length is checked before its buffer is allocated.
                None => {
                    let len = v.string_len()?;
                    self.spend(len + 2, path)?;
                    Value::String(v.string_of_len(len)?)
                }
            },
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
                    self.check_values(n as usize, path)?;
                    self.spend(2 + n as usize, path)?;
                    let items = Vec::with_capacity((n as usize).min(4096));
                    return Ok(Visited::Open(Open { v, base, n, i: 0, kind: OpenKind::Array(items) }));
                }
                if let Some(t) = v.typed_view()? {
                    return Err(err!(
                        InvalidArg,
                        "`{path}` is binary ({}, {} elements), not a JSON value; binary data goes in `payload` \
                         itself (a Uint8Array) or `payload_b64`",
                        t.name(),
                        t.len
                    ));
                }
                let keys = v.own_keys()?;
                let n = keys.array_len()?;
                self.count_values(n as usize, path)?;
                self.spend(2, path)?;
                let kind = OpenKind::Object { keys, map: Map::new(), key: String::new() };
                return Ok(Visited::Open(Open { v, base, n, i: 0, kind }));
            }
            _ => return Err(err!(InvalidArg, "`{path}` has an unsupported type")),
        })))
    }

    /// The next element or property value of `f` (its path pushed), or
    /// None when all were read.
    fn next_child(&mut self, f: &mut Open, path: &mut String) -> Result<Option<JsVal>> {
        if f.i >= f.n {
            return Ok(None);
        }
        let i = f.i;
        f.i += 1;
        match &mut f.kind {
            OpenKind::Array(_) => {
                push_index(path, i);
                Ok(Some(f.v.element(i).map_err(|e| at_path(e, path))?))
            }
            OpenKind::Object { keys, key, .. } => {
                let k = keys.element(i).map_err(|e| at_path(e, path))?;
                *key = match k.short_string(&mut self.scratch).map_err(|e| at_path(e, path))? {
                    Some(s) => s,
                    None => k.string().map_err(|e| at_path(e, path))?,
                };
                self.spend(key.len() + 3, path)?;
                path.push('.');
                path.push_str(key);
                Ok(Some(f.v.property(k).map_err(|e| at_path(e, path))?))
            }
        }
    }
}

/// Append `[i]` to `path` (once per array element read: no `fmt` machinery).
fn push_index(path: &mut String, i: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = i;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    path.push('[');
    path.extend(digits[at..].iter().map(|&d| d as char));
    path.push(']');
}

/// A read that threw (`reading … threw: …`) names the field it was reading.
fn at_path(mut e: CoreError, path: &str) -> CoreError {
    if e.message.starts_with("reading ") {
        e.message = format!("`{path}`: {}", e.message);
    }
    e
}

enum Visited {
    Value(Option<Value>),
    Open(Open),
}

/// An array or object being read by [`JsonWalker::walk`].
struct Open {
    v: JsVal,
    /// `path`'s length at this container.
    base: usize,
    n: u32,
    /// The next index to read.
    i: u32,
    kind: OpenKind,
}

enum OpenKind {
    Array(Vec<Value>),
    /// `key`: the property being read.
    Object {
        keys: JsVal,
        map: Map<String, Value>,
        key: String,
    },
}

impl Open {
    /// The value of the child just read (None: JSON drops it).
    fn accept(&mut self, item: Option<Value>, path: &mut String) {
        path.truncate(self.base);
        match &mut self.kind {
            OpenKind::Array(items) => items.push(item.unwrap_or(Value::Null)),
            OpenKind::Object { map, key, .. } => {
                if let Some(item) = item {
                    map.insert(std::mem::take(key), item);
                }
            }
        }
    }

    fn finish(self) -> Value {
        match self.kind {
            OpenKind::Array(items) => Value::Array(items),
            OpenKind::Object { map, .. } => Value::Object(map),
        }
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

/// `submit`'s envelope as copied on the JS thread; [`EnvelopeArg::finish`]
/// (on the runtime) turns the copied `payload_b64` bytes into its string.
pub struct EnvelopeArg {
    input: EnvelopeInput,
    payload_b64: Option<Vec<u8>>,
}

impl EnvelopeArg {
    /// Off the JS thread: the UTF-8 check of `payload_b64` (V8 wrote valid
    /// UTF-8, so this cannot fail in practice).
    pub fn finish(self) -> Result<EnvelopeInput> {
        let mut input = self.input;
        if let (EnvelopeInput::Raw(raw), Some(b)) = (&mut input, self.payload_b64) {
            raw.payload_b64 =
                Some(String::from_utf8(b).map_err(|_| CoreError::internal("N-API returned invalid UTF-8"))?);
        }
        Ok(input)
    }
}

/// Read `submit`'s first argument: an envelope object, a JSON string, or a
/// Uint8Array/Buffer holding JSON. Only copies; decoding (and the UTF-8
/// check of copied strings) happens off-thread.
pub fn envelope_input(v: JsVal, limits: &Limits) -> Result<EnvelopeArg> {
    let mut b64_bytes = None;
    let input = envelope_input_inner(v, limits, &mut b64_bytes)?;
    Ok(EnvelopeArg { input, payload_b64: b64_bytes })
}

fn envelope_input_inner(v: JsVal, limits: &Limits, b64_bytes: &mut Option<Vec<u8>>) -> Result<EnvelopeInput> {
    match v.type_of()? {
        sys::ValueType::napi_string => match v.string_utf8_capped(limits.max_envelope_bytes)? {
            // Bytes: the core's JSON parser checks the UTF-8 off this thread.
            Some(bytes) => Ok(EnvelopeInput::Bytes(bytes)),
            None => Err(err!(
                TooLarge,
                "the envelope string is at least {} bytes of UTF-8; the limit is {} bytes (EngineOptions.maxEnvelopeBytes)",
                v.string_units()?.max(limits.max_envelope_bytes + 1),
                limits.max_envelope_bytes
            )),
        },
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
                sys::ValueType::napi_string => match b64.string_utf8_capped(limits.max_envelope_bytes)? {
                    // Checked as UTF-8 on the runtime ([`EnvelopeArg::finish`]).
                    Some(bytes) => *b64_bytes = Some(bytes),
                    None => {
                        return Err(err!(
                            TooLarge,
                            "`payload_b64` is at least {} bytes; the limit is {} bytes (EngineOptions.maxEnvelopeBytes)",
                            b64.string_units()?.max(limits.max_envelope_bytes + 1),
                            limits.max_envelope_bytes
                        ))
                    }
                },
                _ => return Err(err!(Envelope, "`payload_b64` must be a base64 string, got {}", b64.kind_name())),
            }
            let payload = v.get(c"payload")?;
            if !payload.is_nullish()? {
                if let Some(bytes) = payload.typed_bytes()? {
                    raw.payload_bytes = Some(bytes);
                } else {
                    let mut walker = JsonWalker::new(limits);
                    let mut path = String::from("payload");
                    raw.payload = walker.walk(payload, &mut path, 0)?;
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
    /// `EmbedOptions.normalize` / `truncate` (embed calls only).
    pub normalize: Option<bool>,
    pub truncate: Option<bool>,
    /// `EmbedOptions.onProgress`, checked to be a function (embed calls only).
    pub progress: Option<JsVal>,
}

/// Read `CallOptions` (or, with `known = options::EMBED_OPTIONS`,
/// `EmbedOptions`). Unknown keys are `E_INVALID_ARG` naming the key and the
/// nearest valid one; so are wrong types and out-of-range values.
pub fn call_options(v: Option<JsVal>, known: &[&str]) -> Result<ParsedCall> {
    let issued = Some(Instant::now());
    let mut parsed = ParsedCall { call: CallOptions { issued, ..CallOptions::default() }, ..ParsedCall::default() };
    let Some(v) = options_object(v, known)? else { return Ok(parsed) };
    let timeout = v.get(c"timeoutMs")?;
    if !timeout.is_nullish()? {
        if timeout.type_of()? != sys::ValueType::napi_number {
            return Err(err!(
                InvalidArg,
                "`options.timeoutMs` must be a number of milliseconds, got {}",
                timeout.kind_name()
            ));
        }
        let d = options::millis(timeout.number()?, "options.timeoutMs")?;
        parsed.call.timeout = (!d.is_zero()).then_some(d);
    }
    let target = v.get(c"target")?;
    if !target.is_nullish()? {
        let s = if target.type_of()? == sys::ValueType::napi_string { Some(target.string()?) } else { None };
        parsed.call.target = s.as_deref().and_then(Target::parse).ok_or_else(|| {
            err!(
                InvalidArg,
                "`options.target` must be {}, got {}",
                Target::NAMES,
                s.as_deref().map_or(target.kind_name().to_string(), |s| format!("{s:?}"))
            )
        })?;
    }
    if known.contains(&"normalize") {
        parsed.normalize = flag(v, c"normalize", "normalize")?;
        parsed.truncate = flag(v, c"truncate", "truncate")?;
    }
    if known.contains(&"onProgress") {
        let f = v.get(c"onProgress")?;
        if !f.is_nullish()? {
            if f.type_of()? != sys::ValueType::napi_function {
                return Err(err!(
                    InvalidArg,
                    "`options.onProgress` must be a function ({{ done, total }}) => void, got {}",
                    f.kind_name()
                ));
            }
            parsed.progress = Some(f);
        }
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

/// An options object whose own keys are all in `known` (None when absent or
/// nullish). Not an object, too many keys, or an unknown key:
/// `E_INVALID_ARG` naming it and the nearest valid one.
pub fn options_object(v: Option<JsVal>, known: &[&str]) -> Result<Option<JsVal>> {
    let Some(v) = v else { return Ok(None) };
    if v.is_nullish()? {
        return Ok(None);
    }
    if v.type_of()? != sys::ValueType::napi_object || v.is_array() {
        return Err(err!(InvalidArg, "`options` must be an object, got {}", v.kind_name()));
    }
    let keys = v.own_keys()?;
    let n = keys.array_len()?;
    if n as usize > known.len() + 16 {
        return Err(err!(InvalidArg, "`options` has {n} keys; valid keys: {}", known.join(", ")));
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n {
        names.push(keys.element(i)?.string()?);
    }
    options::check_keys(names.iter().map(String::as_str), known, "options")?;
    Ok(Some(v))
}

/// An optional boolean option.
fn flag(v: JsVal, key: &std::ffi::CStr, name: &str) -> Result<Option<bool>> {
    let x = v.get(key)?;
    if x.is_nullish()? {
        return Ok(None);
    }
    if x.type_of()? != sys::ValueType::napi_boolean {
        return Err(err!(InvalidArg, "`options.{name}` must be a boolean, got {}", x.kind_name()));
    }
    Ok(Some(x.boolean()?))
}

/// An options object (`Engine.open`) as JSON, walked under small fixed
/// limits with strict types, for the core's schema.
pub fn options_json(v: Option<JsVal>) -> Result<Value> {
    options_json_at(v, "options")
}

/// [`options_json`] for the argument named `name` (errors name it).
pub fn options_json_at(v: Option<JsVal>, name: &str) -> Result<Value> {
    let Some(v) = v else { return Ok(Value::Null) };
    let mut path = String::from(name);
    Ok(JsonWalker::for_options().walk(v, &mut path, 0)?.unwrap_or(Value::Null))
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

/// JSON into a JS value, iteratively (a heap stack, like the walk in),
/// so no nesting can overflow the native stack.
pub fn json_to_js<'e>(env: &'e Env, v: &Value) -> napi::Result<Unknown<'e>> {
    enum Frame<'e, 'v> {
        Array(Array<'e>, std::iter::Enumerate<std::slice::Iter<'v, Value>>, u32),
        Object(Object<'e>, serde_json::map::Iter<'v>, &'v str),
    }
    enum Step<'e, 'v> {
        Leaf(Unknown<'e>),
        Open(Frame<'e, 'v>),
    }
    fn open<'e, 'v>(env: &'e Env, v: &'v Value) -> napi::Result<Step<'e, 'v>> {
        Ok(match v {
            Value::Null => Step::Leaf(Null.into_unknown(env)?),
            Value::Bool(b) => Step::Leaf(b.into_unknown(env)?),
            Value::Number(n) => Step::Leaf(n.as_f64().unwrap_or(f64::NAN).into_unknown(env)?),
            Value::String(s) => Step::Leaf(s.as_str().into_unknown(env)?),
            Value::Array(items) => {
                Step::Open(Frame::Array(env.create_array(items.len() as u32)?, items.iter().enumerate(), 0))
            }
            Value::Object(map) => Step::Open(Frame::Object(Object::new(env)?, map.iter(), "")),
        })
    }
    let mut stack = match open(env, v)? {
        Step::Leaf(u) => return Ok(u),
        Step::Open(f) => vec![f],
    };
    let mut done: Option<Unknown<'e>> = None;
    loop {
        let top = stack.last_mut().expect("the loop returns when the stack empties");
        if let Some(value) = done.take() {
            match top {
                Frame::Array(arr, _, i) => arr.set(*i, value)?,
                Frame::Object(obj, _, k) => {
                    if *k == "__proto__" || k.contains('\0') {
                        define_own_property(env, obj, k, value)?;
                    } else {
                        obj.set_named_property(k, value)?;
                    }
                }
            }
        }
        let child = match top {
            Frame::Array(_, items, i) => items.next().map(|(n, item)| {
                *i = n as u32;
                item
            }),
            Frame::Object(_, entries, k) => entries.next().map(|(key, item)| {
                *k = key.as_str();
                item
            }),
        };
        match child {
            Some(item) => match open(env, item)? {
                Step::Leaf(u) => done = Some(u),
                Step::Open(f) => stack.push(f),
            },
            None => {
                let u = match stack.pop().expect("top exists") {
                    Frame::Array(arr, ..) => arr.into_unknown(env)?,
                    Frame::Object(obj, ..) => obj.into_unknown(env)?,
                };
                if stack.is_empty() {
                    return Ok(u);
                }
                done = Some(u);
            }
        }
    }
}

/// `Object.defineProperty(obj, key, {value, writable, enumerable,
/// configurable})`, as `JSON.parse` creates keys: `__proto__` becomes an own
/// property (assignment would set the prototype: a pollution shape) and
/// keys with NUL characters work (named setters take C strings).
fn define_own_property(env: &Env, obj: &Object, key: &str, value: Unknown<'_>) -> napi::Result<()> {
    let raw = env.raw();
    let mut name = ptr::null_mut();
    // SAFETY: JS thread; `key` is valid UTF-8 of the given length.
    let status = unsafe { sys::napi_create_string_utf8(raw, key.as_ptr().cast(), key.len() as isize, &mut name) };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(Status::GenericFailure, "cannot create a property name"));
    }
    let desc = sys::napi_property_descriptor {
        utf8name: ptr::null(),
        name,
        method: None,
        getter: None,
        setter: None,
        value: value.value().value,
        attributes: sys::PropertyAttributes::writable
            | sys::PropertyAttributes::enumerable
            | sys::PropertyAttributes::configurable,
        data: ptr::null_mut(),
    };
    // SAFETY: JS thread; one valid descriptor for a live object.
    let status = unsafe { sys::napi_define_properties(raw, obj.raw(), 1, &desc) };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(Status::GenericFailure, "cannot define a property"));
    }
    Ok(())
}
