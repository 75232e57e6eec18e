//! `infer(request, options)` and `models()`: Open Inference Protocol
//! tensors between JS and the core (docs/infer.md).
//!
//! Tensor `data` is read straight from typed arrays (one copy, no JSON) or
//! walked from plain (flat or nested) arrays; outputs come back as typed
//! arrays that own the Rust buffers. Everything is copied on the JS thread;
//! validation against the model runs in the core before any compute.

use cuda_engine_core::err;
use cuda_engine_core::infer::{
    DataType, Elem, ElemBuilder, InferRequest, InferResponse, InferTensor, RequestedOutput, TensorData,
};
use cuda_engine_core::Result;
use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use serde_json::{Map, Value};

use crate::convert::{call_options, json_to_js, JsVal, JsonWalker, ParsedCall, TypedView, MAX_ARRAY_ELEMENTS};
use crate::task::spawn_job;
use crate::{Engine, EngineRef};
use cuda_engine_core::metrics::CallType;
use cuda_engine_core::options::CALL_OPTIONS;

/// Nesting accepted in a plain `data` array ([batch, seq, hidden] is 3).
const MAX_DATA_DEPTH: usize = 32;

/// The tensor data this typed array carries for `dt`: the matching
/// typed array (Uint16Array carries FP16 bits), or a Uint8Array/Buffer of
/// little-endian bytes for any fixed-size type.
fn view_tensor(view: &TypedView, dt: DataType, what: &str) -> Result<TensorData> {
    use sys::TypedarrayType as T;
    let is_u8 = view.is_u8();
    Ok(match (dt, view.kind) {
        (DataType::Uint8, _) if is_u8 => TensorData::Uint8(view.bytes().to_vec()),
        (DataType::Bytes, _) => {
            return Err(err!(
                InvalidArg,
                "{what}: BYTES data must be an array of strings or Uint8Arrays, got {}",
                view.name()
            ))
        }
        (_, _) if is_u8 => TensorData::from_le_bytes(dt, view.bytes(), what)?,
        (DataType::Int8, T::int8_array) => TensorData::Int8(view.copy()),
        (DataType::Uint16, T::uint16_array) => TensorData::Uint16(view.copy()),
        (DataType::Fp16, T::uint16_array) => TensorData::Fp16(view.copy()),
        (DataType::Int16, T::int16_array) => TensorData::Int16(view.copy()),
        (DataType::Uint32, T::uint32_array) => TensorData::Uint32(view.copy()),
        (DataType::Int32, T::int32_array) => TensorData::Int32(view.copy()),
        (DataType::Fp32, T::float32_array) => TensorData::Fp32(view.copy()),
        (DataType::Fp64, T::float64_array) => TensorData::Fp64(view.copy()),
        (DataType::Int64, T::bigint64_array) => TensorData::Int64(view.copy()),
        (DataType::Uint64, T::biguint64_array) => TensorData::Uint64(view.copy()),
        _ => {
            return Err(err!(
                InvalidArg,
                "{what}: datatype {} does not match {} (use {}, a plain array, or a Uint8Array of little-endian bytes)",
                dt.as_str(),
                view.name(),
                typed_array_for(dt)
            ))
        }
    })
}

/// The typed array that carries `dt` (for messages and typings).
fn typed_array_for(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool | DataType::Uint8 => "a Uint8Array",
        DataType::Int8 => "an Int8Array",
        DataType::Uint16 => "a Uint16Array",
        DataType::Fp16 => "a Uint16Array of FP16 bits",
        DataType::Int16 => "an Int16Array",
        DataType::Uint32 => "a Uint32Array",
        DataType::Int32 => "an Int32Array",
        DataType::Fp32 => "a Float32Array",
        DataType::Fp64 => "a Float64Array",
        DataType::Int64 => "a BigInt64Array",
        DataType::Uint64 => "a BigUint64Array",
        DataType::Bytes => "an array of strings",
    }
}

/// Walk a plain (possibly nested) array into `out`, row-major.
fn walk_data(
    v: JsVal,
    out: &mut ElemBuilder,
    dt: DataType,
    what: &str,
    depth: usize,
    walker: &mut JsonWalker,
) -> Result<()> {
    if depth > MAX_DATA_DEPTH {
        return Err(err!(InvalidArg, "{what}: `data` is nested deeper than {MAX_DATA_DEPTH} levels"));
    }
    let n = v.array_len()?;
    if out.len() as u64 + n as u64 > MAX_ARRAY_ELEMENTS as u64 {
        return Err(err!(TooLarge, "{what}: `data` has more than {MAX_ARRAY_ELEMENTS} elements (send a typed array)"));
    }
    // Every element is read through N-API on the JS thread: they count
    // against `maxPayloadValues` (a typed array is one copy and does not).
    walker.count_values(n as usize, &format!("{what}: data"))?;
    for i in 0..n {
        let x = v.element(i)?;
        let idx = out.len();
        let elem = match x.type_of()? {
            sys::ValueType::napi_number => {
                let f = x.number()?;
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.8e19 {
                    Elem::Int(f as i128)
                } else {
                    Elem::Float(f)
                }
            }
            sys::ValueType::napi_bigint => Elem::Int(x.bigint()?),
            sys::ValueType::napi_boolean => Elem::Bool(x.boolean()?),
            sys::ValueType::napi_string => Elem::Bytes(x.string()?.into_bytes()),
            sys::ValueType::napi_object if x.is_array() => {
                walk_data(x, out, dt, what, depth + 1, walker)?;
                continue;
            }
            sys::ValueType::napi_object => match x.typed_view()? {
                // A Uint8Array inside BYTES data is one element.
                Some(t) if dt == DataType::Bytes && (t.kind == sys::TypedarrayType::uint8_array) => {
                    Elem::Bytes(t.bytes().to_vec())
                }
                // Rows given as typed arrays (e.g. embed()'s Float32Array[]).
                Some(t) => {
                    out.extend(view_tensor(&t, dt, what)?, what)?;
                    continue;
                }
                None => {
                    return Err(err!(InvalidArg, "{what}: data[{idx}] is an object, not a {} element", dt.as_str()))
                }
            },
            _ => {
                return Err(err!(InvalidArg, "{what}: data[{idx}] is {}, not a {} element", x.kind_name(), dt.as_str()))
            }
        };
        out.push(elem, idx, what)?;
    }
    Ok(())
}

fn read_data(v: JsVal, dt: DataType, what: &str, walker: &mut JsonWalker) -> Result<TensorData> {
    if let Some(t) = v.typed_view()? {
        return view_tensor(&t, dt, what);
    }
    if v.type_of()? != sys::ValueType::napi_object || !v.is_array() {
        return Err(err!(
            InvalidArg,
            "{what}: `data` must be {} or a plain (flat or nested) array, got {}",
            typed_array_for(dt),
            v.kind_name()
        ));
    }
    let n = v.array_len()?;
    if n > MAX_ARRAY_ELEMENTS {
        return Err(err!(
            TooLarge,
            "{what}: `data` has {n} elements, more than {MAX_ARRAY_ELEMENTS} (send a typed array)"
        ));
    }
    let mut b = ElemBuilder::new(dt, (n as usize).min(1 << 16));
    walk_data(v, &mut b, dt, what, 0, walker)?;
    Ok(b.finish())
}

fn opt_str(v: JsVal, key: &std::ffi::CStr, field: &str, numbers_too: bool) -> Result<Option<String>> {
    let x = v.get(key)?;
    match x.type_of()? {
        sys::ValueType::napi_undefined | sys::ValueType::napi_null => Ok(None),
        sys::ValueType::napi_string => Ok(Some(x.string()?)),
        sys::ValueType::napi_number if numbers_too => {
            let n = x.number()?;
            Ok(Some(if n.fract() == 0.0 && n.abs() < 9e15 { format!("{}", n as i64) } else { n.to_string() }))
        }
        _ => Err(err!(InvalidArg, "`{field}` must be a string, got {}", x.kind_name())),
    }
}

fn params(v: JsVal, field: &str, walker: &mut JsonWalker) -> Result<Option<Map<String, Value>>> {
    let p = v.get(c"parameters")?;
    if p.is_nullish()? {
        return Ok(None);
    }
    let mut path = format!("{field}parameters");
    match walker.walk(p, &mut path, 1)? {
        Some(Value::Object(m)) => Ok(Some(m)),
        _ => Err(err!(InvalidArg, "`{field}parameters` must be an object, got {}", p.kind_name())),
    }
}

fn read_tensor(v: JsVal, field: &str, walker: &mut JsonWalker) -> Result<InferTensor> {
    if v.type_of()? != sys::ValueType::napi_object || v.is_array() {
        return Err(err!(
            InvalidArg,
            "`{field}` must be an object {{name, shape, datatype, data}}, got {}",
            v.kind_name()
        ));
    }
    let name = opt_str(v, c"name", &format!("{field}.name"), false)?
        .ok_or_else(|| err!(InvalidArg, "`{field}.name` must be a string"))?;
    let what = format!("input `{name}`");
    let dt = match opt_str(v, c"datatype", &format!("{what}: datatype"), false)? {
        Some(s) => DataType::parse(&s).ok_or_else(|| {
            let all: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
            err!(InvalidArg, "{what}: datatype `{s}` is not one of {}", all.join(", "))
        })?,
        None => return Err(err!(InvalidArg, "{what}: `datatype` is missing")),
    };
    let shape_v = v.get(c"shape")?;
    let bad_shape = || err!(InvalidArg, "{what}: `shape` must be an array of non-negative integers");
    if !shape_v.is_array() {
        return Err(bad_shape());
    }
    let mut shape = Vec::new();
    for i in 0..shape_v.array_len()? {
        let d = shape_v.element(i)?;
        let n = match d.type_of()? {
            sys::ValueType::napi_number => d.number()?,
            sys::ValueType::napi_bigint => d.bigint()? as f64,
            _ => return Err(bad_shape()),
        };
        if !(n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= usize::MAX as f64) {
            return Err(err!(
                InvalidArg,
                "{what}: `shape` must be an array of non-negative integers, got {n} at [{i}]"
            ));
        }
        shape.push(n as usize);
    }
    let data_v = v.get(c"data")?;
    if data_v.is_nullish()? {
        return Err(err!(InvalidArg, "{what}: `data` is missing"));
    }
    let data = read_data(data_v, dt, &what, walker)?;
    let parameters = params(v, &format!("{field}."), walker)?;
    Ok(InferTensor { name, shape, data, parameters })
}

/// Read `infer()`'s request object on the JS thread (copies only).
pub fn infer_request(v: JsVal, walker: &mut JsonWalker) -> Result<InferRequest> {
    if v.type_of()? != sys::ValueType::napi_object || v.is_array() {
        return Err(err!(InvalidArg, "infer() takes a request object {{inputs: [...]}}, got {}", v.kind_name()));
    }
    let inputs_v = v.get(c"inputs")?;
    if !inputs_v.is_array() {
        return Err(err!(
            InvalidArg,
            "`inputs` must be an array of tensors {{name, shape, datatype, data}}, got {}",
            inputs_v.kind_name()
        ));
    }
    let mut inputs = Vec::new();
    for i in 0..inputs_v.array_len()? {
        inputs.push(read_tensor(inputs_v.element(i)?, &format!("inputs[{i}]"), walker)?);
    }
    let outputs_v = v.get(c"outputs")?;
    let outputs = if outputs_v.is_nullish()? {
        None
    } else if outputs_v.is_array() {
        let mut outs = Vec::new();
        for i in 0..outputs_v.array_len()? {
            let o = outputs_v.element(i)?;
            if o.type_of()? != sys::ValueType::napi_object {
                return Err(err!(InvalidArg, "`outputs[{i}]` must be an object {{name}}, got {}", o.kind_name()));
            }
            let field = format!("outputs[{i}]");
            let name = opt_str(o, c"name", &format!("{field}.name"), false)?
                .ok_or_else(|| err!(InvalidArg, "`{field}.name` must be a string"))?;
            outs.push(RequestedOutput { name, parameters: params(o, &format!("{field}."), walker)? });
        }
        Some(outs)
    } else {
        return Err(err!(InvalidArg, "`outputs` must be an array of {{name}}, got {}", outputs_v.kind_name()));
    };
    Ok(InferRequest {
        id: opt_str(v, c"id", "id", true)?,
        model_name: opt_str(v, c"model_name", "model_name", false)?,
        model_version: opt_str(v, c"model_version", "model_version", false)?,
        parameters: params(v, "", walker)?.unwrap_or_default(),
        inputs,
        outputs,
    })
}

/// Tensor data as the typed array that carries its datatype; BYTES as an
/// array of strings (a Buffer for an element that is not UTF-8).
fn data_to_js(env: &Env, data: TensorData) -> napi::Result<Unknown<'_>> {
    match data {
        TensorData::Bool(v) => Uint8Array::new(v.into_iter().map(u8::from).collect()).into_unknown(env),
        TensorData::Uint8(v) => Uint8Array::new(v).into_unknown(env),
        TensorData::Int8(v) => Int8Array::new(v).into_unknown(env),
        TensorData::Uint16(v) | TensorData::Fp16(v) => Uint16Array::new(v).into_unknown(env),
        TensorData::Int16(v) => Int16Array::new(v).into_unknown(env),
        TensorData::Uint32(v) => Uint32Array::new(v).into_unknown(env),
        TensorData::Int32(v) => Int32Array::new(v).into_unknown(env),
        TensorData::Uint64(v) => BigUint64Array::new(v).into_unknown(env),
        TensorData::Int64(v) => BigInt64Array::new(v).into_unknown(env),
        TensorData::Fp32(v) => Float32Array::new(v).into_unknown(env),
        TensorData::Fp64(v) => Float64Array::new(v).into_unknown(env),
        TensorData::Bytes(items) => {
            let mut arr = env.create_array(items.len() as u32)?;
            for (i, b) in items.into_iter().enumerate() {
                match String::from_utf8(b) {
                    Ok(s) => arr.set(i as u32, s)?,
                    Err(e) => arr.set(i as u32, Buffer::from(e.into_bytes()))?,
                }
            }
            arr.into_unknown(env)
        }
    }
}

pub fn response_to_js(env: &Env, r: InferResponse) -> napi::Result<Unknown<'_>> {
    let mut obj = Object::new(env)?;
    obj.set_named_property("model_name", r.model_name)?;
    if let Some(v) = r.model_version {
        obj.set_named_property("model_version", v)?;
    }
    obj.set_named_property("id", r.id)?;
    let mut outs = env.create_array(r.outputs.len() as u32)?;
    for (i, t) in r.outputs.into_iter().enumerate() {
        let mut o = Object::new(env)?;
        o.set_named_property("name", t.name)?;
        o.set_named_property("shape", t.shape.iter().map(|&d| d as f64).collect::<Vec<f64>>())?;
        o.set_named_property("datatype", t.data.datatype().as_str())?;
        if let Some(p) = t.parameters {
            o.set_named_property("parameters", json_to_js(env, &Value::Object(p))?)?;
        }
        o.set_named_property("data", data_to_js(env, t.data)?)?;
        outs.set(i as u32, o)?;
    }
    obj.set_named_property("outputs", outs)?;
    obj.into_unknown(env)
}

pub fn infer_impl<'e>(
    env: &'e Env,
    engine: EngineRef,
    request: Unknown<'e>,
    options: Option<Unknown<'e>>,
) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
    let raw_env = env.raw();
    let parsed = call_options(options.map(|o| JsVal::new(raw_env, o.value().value)), CALL_OPTIONS);
    let mut walker = JsonWalker::new(&engine.limits());
    let request = infer_request(JsVal::new(raw_env, request.value().value), &mut walker);
    spawn_job(
        env,
        parsed,
        move |call| {
            let admission = engine.admit();
            async move {
                let engine = engine.get().await?;
                let request = crate::counted(&engine, CallType::Infer, &call, request)?;
                engine.infer_admitted(crate::admitted(&engine, admission), request, call).await
            }
        },
        response_to_js,
    )
}

pub fn models_impl(env: &Env, engine: EngineRef) -> napi::Result<PromiseRaw<'_, Unknown<'_>>> {
    spawn_job(
        env,
        Ok(ParsedCall::default()),
        move |_| {
            let admission = engine.admit();
            async move {
                let engine = engine.get().await?;
                let models = engine.models_admitted(crate::admitted(&engine, admission)).await?;
                Ok(Value::Array(models.iter().map(|m| m.to_json()).collect()))
            }
        },
        |env, v| json_to_js(env, &v),
    )
}

/// Open Inference Protocol (KServe v2) inference on the engine's model, or
/// on the worker for other models (docs/infer.md). Outputs are typed arrays.
#[napi(
    catch_unwind,
    ts_args_type = "request: InferRequest, options?: CallOptions",
    ts_return_type = "Promise<InferResponse>"
)]
// napi registers it at load; `cargo test` builds don't, so only they see it unused.
#[cfg_attr(test, allow(dead_code))]
pub fn infer<'e>(
    env: &'e Env,
    request: Unknown<'e>,
    options: Option<Unknown<'e>>,
) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
    infer_impl(env, EngineRef::Default, request, options)
}

/// Metadata of the models served locally, in the protocol's shape.
#[napi(catch_unwind, ts_return_type = "Promise<ModelMetadata[]>")]
// napi registers it at load; `cargo test` builds don't, so only they see it unused.
#[cfg_attr(test, allow(dead_code))]
pub fn models(env: &Env) -> napi::Result<PromiseRaw<'_, Unknown<'_>>> {
    models_impl(env, EngineRef::Default)
}

#[napi]
impl Engine {
    /// Open Inference Protocol inference (see the module-level `infer`).
    #[napi(
        catch_unwind,
        ts_args_type = "request: InferRequest, options?: CallOptions",
        ts_return_type = "Promise<InferResponse>"
    )]
    pub fn infer<'e>(
        &self,
        env: &'e Env,
        request: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        infer_impl(env, EngineRef::Open(self.inner.clone()), request, options)
    }

    /// Metadata of this engine's models.
    #[napi(catch_unwind, ts_return_type = "Promise<ModelMetadata[]>")]
    pub fn models<'e>(&self, env: &'e Env) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        models_impl(env, EngineRef::Open(self.inner.clone()))
    }
}
