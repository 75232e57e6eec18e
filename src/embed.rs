//! `embed(text | texts, options)`: strings in, Float32Array(s) out, with no
//! copy through JS arrays.

use cuda_engine_core::err;
use cuda_engine_core::model::EmbedOptions;
use cuda_engine_core::Result;
use napi::bindgen_prelude::*;
use napi::sys;

use crate::convert::JsVal;

/// What `embed` was given: one text (resolve to one vector) or many.
pub struct EmbedInput {
    pub texts: Vec<String>,
    pub single: bool,
}

pub fn embed_input(v: JsVal) -> Result<EmbedInput> {
    match v.type_of()? {
        sys::ValueType::napi_string => Ok(EmbedInput { texts: vec![v.string()?], single: true }),
        sys::ValueType::napi_object if v.is_array() => {
            let n = v.array_len()?;
            let mut texts = Vec::with_capacity(n as usize);
            for i in 0..n {
                let item = v.element(i)?;
                if item.type_of()? != sys::ValueType::napi_string {
                    return Err(err!(InvalidArg, "texts[{i}] must be a string, got {}", item.kind_name()));
                }
                texts.push(item.string()?);
            }
            Ok(EmbedInput { texts, single: false })
        }
        _ => Err(err!(InvalidArg, "embed() takes a string or an array of strings, got {}", v.kind_name())),
    }
}

/// `normalize` and `truncate` from the options object (CallOptions fields
/// are read separately).
pub fn embed_options(v: Option<JsVal>) -> Result<EmbedOptions> {
    let mut opts = EmbedOptions::default();
    let Some(v) = v else { return Ok(opts) };
    if v.is_nullish()? || v.type_of()? != sys::ValueType::napi_object {
        return Ok(opts); // call_options() reports a non-object
    }
    let flag = |key: &std::ffi::CStr, name: &str| -> Result<Option<bool>> {
        let x = v.get(key)?;
        if x.is_nullish()? {
            return Ok(None);
        }
        if x.type_of()? != sys::ValueType::napi_boolean {
            return Err(err!(InvalidArg, "`options.{name}` must be a boolean, got {}", x.kind_name()));
        }
        Ok(Some(x.boolean()?))
    };
    opts.normalize = flag(c"normalize", "normalize")?;
    if let Some(t) = flag(c"truncate", "truncate")? {
        opts.truncate = t;
    }
    Ok(opts)
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
