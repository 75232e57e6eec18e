//! `embed(text | texts, options)`: strings in, Float32Array(s) out, with no
//! copy through JS arrays.

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::err;
use cuda_engine_core::Result;
use napi::bindgen_prelude::*;
use napi::sys;

use crate::convert::{JsVal, ParsedCall};

/// What `embed` was given: one text (resolve to one vector) or many.
pub struct EmbedInput {
    pub texts: Vec<String>,
    pub single: bool,
}

/// Read `embed`'s first argument. The length is checked against
/// `max_texts` before anything is allocated, and the texts' UTF-8 bytes
/// together against `max_bytes` (`maxEnvelopeBytes`) before each is copied
/// (`E_TOO_LARGE`): that bounds the copy on the JS thread.
pub fn embed_input(v: JsVal, max_texts: usize, max_bytes: usize) -> Result<EmbedInput> {
    let mut left = max_bytes;
    let mut take = |s: JsVal, what: &dyn Fn() -> String| -> Result<String> {
        let n = s.string_len()?;
        if n > left {
            return Err(err!(
                TooLarge,
                "{}: the texts of one call are over {max_bytes} bytes of UTF-8 (EngineOptions.maxEnvelopeBytes)",
                what()
            ));
        }
        left -= n;
        s.string_of_len(n)
    };
    match v.type_of()? {
        sys::ValueType::napi_string => Ok(EmbedInput { texts: vec![take(v, &|| "text".to_string())?], single: true }),
        sys::ValueType::napi_object if v.is_array() => {
            let n = v.array_len()? as usize;
            if n > max_texts {
                return Err(err!(TooLarge, "texts has {n} entries, max {max_texts} per call (maxTextsPerCall)"));
            }
            let mut texts = Vec::with_capacity(n);
            for i in 0..n as u32 {
                let item = v.element(i)?;
                if item.type_of()? != sys::ValueType::napi_string {
                    return Err(err!(InvalidArg, "texts[{i}] must be a string, got {}", item.kind_name()));
                }
                texts.push(take(item, &|| format!("texts[{i}]"))?);
            }
            Ok(EmbedInput { texts, single: false })
        }
        _ => Err(err!(InvalidArg, "embed() takes a string or an array of strings, got {}", v.kind_name())),
    }
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
