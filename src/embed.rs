//! `embed(text | texts, options)`: strings in, Float32Array(s) out, with no
//! copy through JS arrays.

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::err;
use cuda_engine_core::{CoreError, Result};
use napi::bindgen_prelude::*;
use napi::sys;

use crate::convert::{JsVal, ParsedCall};

/// What `embed` was given: one text (resolve to one vector) or many.
pub struct EmbedInput {
    pub texts: Vec<String>,
    pub single: bool,
}

/// `embed`'s texts as copied on the JS thread: their UTF-8, end to end in
/// one buffer (one allocation, not one per text), with each text's end.
/// [`EmbedBytes::into_input`] splits and checks them off the JS thread.
pub struct EmbedBytes {
    buf: Vec<u8>,
    ends: Vec<usize>,
    pub single: bool,
}

impl EmbedBytes {
    /// How many texts.
    pub fn count(&self) -> usize {
        self.ends.len()
    }

    /// The texts as strings (on the runtime: a copy and a UTF-8 check each).
    pub fn into_input(self) -> Result<EmbedInput> {
        let mut texts = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            let text = std::str::from_utf8(&self.buf[start..end])
                .map_err(|_| CoreError::internal("N-API returned invalid UTF-8"))?;
            texts.push(text.to_owned());
            start = end;
        }
        Ok(EmbedInput { texts, single: self.single })
    }
}

/// Read `embed`'s first argument into strings (on the JS thread; `embed`
/// itself uses [`embed_bytes`] and converts on the runtime).
pub fn embed_input(v: JsVal, max_texts: usize, max_bytes: usize) -> Result<EmbedInput> {
    embed_bytes(v, max_texts, max_bytes)?.into_input()
}

/// Read `embed`'s first argument. The length is checked against
/// `max_texts` before anything is allocated, every element is checked to be
/// a string, and the texts' UTF-8 bytes together against `max_bytes`
/// (`maxEnvelopeBytes`, `E_TOO_LARGE`): that bounds the copy on the JS
/// thread. The UTF-16 lengths (O(1)) size one buffer (see
/// [`crate::convert::utf8_cap`]); each text is written once, with no
/// separate length pass.
pub fn embed_bytes(v: JsVal, max_texts: usize, max_bytes: usize) -> Result<EmbedBytes> {
    let (items, single) = match v.type_of()? {
        sys::ValueType::napi_string => (vec![v], true),
        sys::ValueType::napi_object if v.is_array() => {
            let n = v.array_len()? as usize;
            if n > max_texts {
                return Err(err!(TooLarge, "texts has {n} entries, max {max_texts} per call (maxTextsPerCall)"));
            }
            let mut items = Vec::with_capacity(n);
            for i in 0..n as u32 {
                let item = v.element(i)?;
                if item.type_of()? != sys::ValueType::napi_string {
                    return Err(err!(InvalidArg, "texts[{i}] must be a string, got {}", item.kind_name()));
                }
                items.push(item);
            }
            (items, false)
        }
        _ => return Err(err!(InvalidArg, "embed() takes a string or an array of strings, got {}", v.kind_name())),
    };
    let what = |i: usize| if single { "text".to_string() } else { format!("texts[{i}]") };
    let too_large = |i: usize| {
        err!(
            TooLarge,
            "{}: the texts of one call are over {max_bytes} bytes of UTF-8 (EngineOptions.maxEnvelopeBytes)",
            what(i)
        )
    };
    let mut units = Vec::with_capacity(items.len());
    let mut total = 0usize;
    for (i, item) in items.iter().enumerate() {
        let u = item.string_units()?;
        total = total.saturating_add(u);
        if total > max_bytes {
            return Err(too_large(i)); // UTF-8 has at least one byte per unit
        }
        units.push(u);
    }
    let cap = crate::convert::utf8_cap(total, max_bytes);
    let mut buf = Vec::<u8>::with_capacity(cap + 1);
    let mut ends = Vec::with_capacity(items.len());
    let mut len = 0usize;
    for (i, (item, &u)) in items.iter().zip(&units).enumerate() {
        // SAFETY: `len <= cap`, so the write stays inside the capacity
        // (room for `cap - len` bytes and a NUL).
        let dst = unsafe { buf.as_mut_ptr().add(len) };
        let written = item.write_utf8(dst.cast(), cap - len)?;
        len += written;
        // SAFETY: N-API initialised the bytes up to `len` (each text's
        // bytes follow the previous ones; the NUL is overwritten).
        unsafe { buf.set_len(len) };
        // Cut short (no room left under the cap) or over the limit.
        if len > max_bytes || written < u {
            return Err(too_large(i));
        }
        ends.push(len);
    }
    Ok(EmbedBytes { buf, ends, single })
}

/// `normalize` / `truncate` as read with the call options.
pub fn embed_options(parsed: &ParsedCall) -> EmbedOptions {
    let mut opts = EmbedOptions { normalize: parsed.normalize, ..EmbedOptions::default() };
    if let Some(t) = parsed.truncate {
        opts.truncate = t;
    }
    opts
}

/// Vectors into Float32Arrays that own the Rust buffers (no copy).
pub fn vectors_to_js(env: &Env, vectors: Vec<Vec<f32>>, single: bool) -> napi::Result<Unknown<'_>> {
    if single {
        let v = vectors.into_iter().next().ok_or_else(|| napi::Error::from_reason("embed produced no vector"))?;
        return Float32Array::new(v).into_unknown(env);
    }
    let mut arr = env.create_array(vectors.len() as u32)?;
    for (i, v) in vectors.into_iter().enumerate() {
        arr.set(i as u32, Float32Array::new(v))?;
    }
    arr.into_unknown(env)
}
