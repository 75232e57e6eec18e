//! The tensor API: Open Inference Protocol (KServe v2) requests and
//! responses, validated and run on the engine's encoder.
//!
//! Shapes follow the protocol's REST/JSON form (see `docs/infer.md`):
//!
//! - request `{id?, model_name?, parameters?, inputs: [{name, shape, datatype,
//!   data, parameters?}], outputs?: [{name, parameters?}]}`
//! - response `{model_name, model_version?, id, outputs: [{name, shape,
//!   datatype, data}]}`
//! - model metadata `{name, versions, platform, inputs, outputs}` with
//!   `{name, datatype, shape}` tensors, `-1` for variable dimensions.
//!
//! Tensor data is held as a typed enum ([`TensorData`]), never as
//! `serde_json::Value`s, so a `[32, 256, 384]` FP32 output is one `Vec<f32>`.
//! JSON only appears at the edges (`submit` payloads and worker replies).
//!
//! The encoder served as a model (named after its directory):
//! - inputs: `input_ids` + optional `attention_mask`, `token_type_ids`
//!   (INT64 or INT32, `[batch, seq]`), or `text` (BYTES, `[batch]`) which the
//!   engine tokenizes like `embed()` does;
//! - outputs: `last_hidden_state` (FP32 `[batch, seq, hidden]`),
//!   `sentence_embedding` (FP32 `[batch, hidden]`, pooled and normalized as
//!   the model says), and for `text` inputs `input_ids` / `attention_mask`
//!   (INT64 `[batch, seq]`, the tokenization that was run).
//!
//! Padded `[batch, seq]` inputs are unpacked with `attention_mask` into the
//! backend's packed batch (so padding costs nothing and cannot change the
//! numbers), and outputs are re-padded. Padded positions of
//! `last_hidden_state` are **0.0**: a padded encoder (HF, sentence-transformers)
//! writes values there that depend on the padding length and mean nothing,
//! so callers must mask them either way; zeros make that explicit.
//!
//! Validation runs completely before anything is queued: every failure is
//! `E_INVALID_ARG` naming the input (or output) and the rule it broke.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Number, Value};
use tokio_util::sync::CancellationToken;

use crate::envelope::json_kind;
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::model::{l2_normalize, Embedder, Encoded, TextTokenizer};

/// Tensor element types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// The protocol's names are upper case; nothing else is accepted (a
    /// lower-case `fp32` is a client bug worth reporting, not guessing).
    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.iter().copied().find(|d| d.as_str() == s)
    }

    /// Bytes per element; `None` for BYTES (variable length).
    pub const fn size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    fn parse_named(s: &str, what: &str) -> Result<DataType> {
        DataType::parse(s).ok_or_else(|| {
            let all: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
            err!(InvalidArg, "{what}: datatype `{s}` is not one of {}", all.join(", "))
        })
    }
}

/// Tensor elements, row-major, one variant per datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    /// IEEE 754 binary16 bit patterns (JS: a `Uint16Array`).
    Fp16(Vec<u16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

macro_rules! le_vec {
    ($bytes:expr, $t:ty) => {
        $bytes.chunks_exact(std::mem::size_of::<$t>()).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect()
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Uint16(v) | TensorData::Fp16(v) => v.len(),
            TensorData::Uint32(v) => v.len(),
            TensorData::Uint64(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements from raw little-endian bytes (the protocol's binary tensor
    /// layout; JS passes a Uint8Array/Buffer this way). The byte length must
    /// be a multiple of the element size; BOOL bytes must be 0 or 1. `what`
    /// names the tensor in errors.
    pub fn from_le_bytes(dt: DataType, bytes: &[u8], what: &str) -> Result<TensorData> {
        let Some(size) = dt.size() else {
            return Err(err!(
                InvalidArg,
                "{what}: BYTES data must be an array of strings (or of Uint8Arrays), not one byte buffer"
            ));
        };
        if !bytes.len().is_multiple_of(size) {
            return Err(err!(
                InvalidArg,
                "{what}: {} data is {} bytes, not a multiple of {size} (bytes per {} element)",
                dt.as_str(),
                bytes.len(),
                dt.as_str()
            ));
        }
        Ok(match dt {
            DataType::Bool => {
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(err!(InvalidArg, "{what}: BOOL byte {i} is {}, must be 0 or 1", bytes[i]));
                }
                TensorData::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
            DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
            DataType::Uint16 => TensorData::Uint16(le_vec!(bytes, u16)),
            DataType::Fp16 => TensorData::Fp16(le_vec!(bytes, u16)),
            DataType::Int16 => TensorData::Int16(le_vec!(bytes, i16)),
            DataType::Uint32 => TensorData::Uint32(le_vec!(bytes, u32)),
            DataType::Int32 => TensorData::Int32(le_vec!(bytes, i32)),
            DataType::Fp32 => TensorData::Fp32(le_vec!(bytes, f32)),
            DataType::Uint64 => TensorData::Uint64(le_vec!(bytes, u64)),
            DataType::Int64 => TensorData::Int64(le_vec!(bytes, i64)),
            DataType::Fp64 => TensorData::Fp64(le_vec!(bytes, f64)),
            DataType::Bytes => unreachable!("handled above"),
        })
    }

    /// Elements from JSON `data`: a flat or nested array (row-major). Numbers
    /// must be integers in range for integer types; BOOL takes booleans;
    /// FP16 takes numbers (rounded to the nearest binary16); BYTES takes
    /// strings (UTF-8).
    pub fn from_json(dt: DataType, data: &Value, what: &str) -> Result<TensorData> {
        let Value::Array(_) = data else {
            return Err(err!(InvalidArg, "{what}: `data` must be an array (flat or nested), got {}", json_kind(data)));
        };
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let mut b = ElemBuilder::new(dt, flat.len());
        for (i, v) in flat.into_iter().enumerate() {
            let elem = match v {
                Value::Bool(x) => Elem::Bool(*x),
                Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(x), _) => Elem::Int(x as i128),
                    (None, Some(x)) => Elem::Int(x as i128),
                    _ => Elem::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => Elem::Bytes(s.as_bytes().to_vec()),
                other => {
                    return Err(err!(
                        InvalidArg,
                        "{what}: data[{i}] is {}, not a {} element",
                        json_kind(other),
                        dt.as_str()
                    ))
                }
            };
            b.push(elem, i, what)?;
        }
        Ok(b.finish())
    }

    /// Flat JSON array (what `submit` returns). Non-finite floats become
    /// `null` (JSON has no NaN); BYTES become strings (invalid UTF-8 is
    /// replaced by U+FFFD).
    pub fn to_json(&self) -> Value {
        fn nums<T: Copy>(v: &[T], f: impl Fn(T) -> Value) -> Value {
            Value::Array(v.iter().map(|&x| f(x)).collect())
        }
        let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
        match self {
            TensorData::Bool(v) => nums(v, Value::Bool),
            TensorData::Uint8(v) => nums(v, Value::from),
            TensorData::Uint16(v) => nums(v, Value::from),
            TensorData::Uint32(v) => nums(v, Value::from),
            TensorData::Uint64(v) => nums(v, Value::from),
            TensorData::Int8(v) => nums(v, Value::from),
            TensorData::Int16(v) => nums(v, Value::from),
            TensorData::Int32(v) => nums(v, Value::from),
            TensorData::Int64(v) => nums(v, Value::from),
            TensorData::Fp16(v) => nums(v, |x| float(half::f16::from_bits(x).to_f64())),
            TensorData::Fp32(v) => nums(v, |x| float(x as f64)),
            TensorData::Fp64(v) => nums(v, float),
            TensorData::Bytes(v) => {
                Value::Array(v.iter().map(|b| Value::String(String::from_utf8_lossy(b).into_owned())).collect())
            }
        }
    }
}

/// One element of a plain (JSON or JS) array, before it is checked against
/// the tensor's datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum Elem {
    Bool(bool),
    /// An integer (JSON integer, JS BigInt, or a JS number with no fraction).
    Int(i128),
    Float(f64),
    Bytes(Vec<u8>),
}

impl Elem {
    fn kind(&self) -> &'static str {
        match self {
            Elem::Bool(_) => "a boolean",
            Elem::Int(_) => "an integer",
            Elem::Float(_) => "a number",
            Elem::Bytes(_) => "a string",
        }
    }
}

/// Builds [`TensorData`] of one datatype from plain array elements, checking
/// each one (range, integrality, kind). Shared by the JSON path here and the
/// JS-array path of the N-API layer, so both accept exactly the same data.
pub struct ElemBuilder {
    data: TensorData,
}

impl ElemBuilder {
    pub fn new(dt: DataType, capacity: usize) -> ElemBuilder {
        let c = capacity;
        let data = match dt {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(c)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(c)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(c)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(c)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(c)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(c)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(c)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(c)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(c)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(c)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(c)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(c)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(c)),
        };
        ElemBuilder { data }
    }

    /// Append element `i` (its flat index, for messages).
    pub fn push(&mut self, e: Elem, i: usize, what: &str) -> Result<()> {
        let dt = self.data.datatype();
        let bad = |e: &Elem| err!(InvalidArg, "{what}: data[{i}] is {}, not a {} element", e.kind(), dt.as_str());
        // Integers: exact values only, in the type's range.
        macro_rules! int {
            ($v:expr, $t:ty) => {{
                let x: i128 = match e {
                    Elem::Int(x) => x,
                    Elem::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.8e19 => f as i128,
                    ref other => return Err(bad(other)),
                };
                let x = <$t>::try_from(x).map_err(|_| {
                    err!(
                        InvalidArg,
                        "{what}: data[{i}] = {x} is out of range for {} ({}..={})",
                        dt.as_str(),
                        <$t>::MIN,
                        <$t>::MAX
                    )
                })?;
                $v.push(x)
            }};
        }
        macro_rules! float {
            ($v:expr, $conv:expr) => {{
                let x: f64 = match e {
                    Elem::Float(f) => f,
                    Elem::Int(x) => x as f64,
                    ref other => return Err(bad(other)),
                };
                $v.push($conv(x))
            }};
        }
        match &mut self.data {
            TensorData::Bool(v) => match e {
                Elem::Bool(b) => v.push(b),
                ref other => return Err(bad(other)),
            },
            TensorData::Uint8(v) => int!(v, u8),
            TensorData::Uint16(v) => int!(v, u16),
            TensorData::Uint32(v) => int!(v, u32),
            TensorData::Uint64(v) => int!(v, u64),
            TensorData::Int8(v) => int!(v, i8),
            TensorData::Int16(v) => int!(v, i16),
            TensorData::Int32(v) => int!(v, i32),
            TensorData::Int64(v) => int!(v, i64),
            TensorData::Fp16(v) => float!(v, |x: f64| half::f16::from_f64(x).to_bits()),
            TensorData::Fp32(v) => float!(v, |x: f64| x as f32),
            TensorData::Fp64(v) => float!(v, |x: f64| x),
            TensorData::Bytes(v) => match e {
                Elem::Bytes(b) => v.push(b),
                ref other => return Err(bad(other)),
            },
        }
        Ok(())
    }

    /// Append a whole chunk of the same datatype (a typed array nested in a
    /// plain array). The caller has already matched its datatype.
    pub fn extend(&mut self, chunk: TensorData, what: &str) -> Result<()> {
        macro_rules! cat {
            ($($v:ident),*) => {
                match (&mut self.data, chunk) {
                    $((TensorData::$v(a), TensorData::$v(b)) => a.extend(b),)*
                    (a, b) => {
                        return Err(err!(InvalidArg, "{what}: a {} chunk inside {} data", b.datatype().as_str(), a.datatype().as_str()))
                    }
                }
            };
        }
        cat!(Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes);
        Ok(())
    }

    /// Elements pushed so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn finish(self) -> TensorData {
        self.data
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// A named tensor (request input or response output).
#[derive(Debug, Clone, PartialEq)]
pub struct InferTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// The tensor's `parameters` object, passed through (not interpreted).
    pub parameters: Option<Map<String, Value>>,
}

impl InferTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> InferTensor {
        InferTensor { name: name.into(), shape, data, parameters: None }
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// The product of `shape` must equal the number of elements.
    pub fn check_shape(&self, what: &str) -> Result<()> {
        let product = self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        match product {
            Some(p) if p == self.data.len() => Ok(()),
            Some(p) => Err(err!(
                InvalidArg,
                "{what}: shape {:?} holds {p} elements but data has {}",
                self.shape,
                self.data.len()
            )),
            None => Err(err!(InvalidArg, "{what}: shape {:?} overflows", self.shape)),
        }
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), Value::String(self.name.clone()));
        o.insert("shape".into(), Value::Array(self.shape.iter().map(|&d| Value::from(d)).collect()));
        o.insert("datatype".into(), Value::String(self.datatype().as_str().into()));
        if let Some(p) = &self.parameters {
            o.insert("parameters".into(), Value::Object(p.clone()));
        }
        o.insert("data".into(), self.data.to_json());
        Value::Object(o)
    }

    /// Read `{name, shape, datatype, data, parameters?}`; `field` is where it
    /// sits (`inputs[0]`), used until the name is known.
    fn from_json(v: &Value, field: &str, kind: &str) -> Result<InferTensor> {
        let Value::Object(o) = v else {
            return Err(err!(
                InvalidArg,
                "`{field}` must be an object {{name, shape, datatype, data}}, got {}",
                json_kind(v)
            ));
        };
        let name = match o.get("name") {
            Some(Value::String(s)) => s.clone(),
            other => {
                return Err(err!(
                    InvalidArg,
                    "`{field}.name` must be a string, got {}",
                    other.map_or("nothing", json_kind)
                ))
            }
        };
        let what = format!("{kind} `{name}`");
        let dt = match o.get("datatype") {
            Some(Value::String(s)) => DataType::parse_named(s, &what)?,
            other => {
                return Err(err!(
                    InvalidArg,
                    "{what}: `datatype` must be a string, got {}",
                    other.map_or("nothing", json_kind)
                ))
            }
        };
        let shape = match o.get("shape") {
            Some(Value::Array(dims)) => dims
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    err!(
                        InvalidArg,
                        "{what}: `shape` must be an array of non-negative integers, got {}",
                        Value::Array(dims.clone())
                    )
                })?,
            other => {
                return Err(err!(
                    InvalidArg,
                    "{what}: `shape` must be an array, got {}",
                    other.map_or("nothing", json_kind)
                ))
            }
        };
        let data = match o.get("data") {
            Some(d) => TensorData::from_json(dt, d, &what)?,
            None => return Err(err!(InvalidArg, "{what}: `data` is missing")),
        };
        let parameters = match o.get("parameters") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p.clone()),
            Some(other) => {
                return Err(err!(InvalidArg, "{what}: `parameters` must be an object, got {}", json_kind(other)))
            }
        };
        Ok(InferTensor { name, shape, data, parameters })
    }
}

/// An output the caller asked for (`outputs: [{name, parameters?}]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Option<Map<String, Value>>,
}

/// An inference request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    /// `None`: the engine's own model.
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    /// Request parameters. Read here: `normalize` (bool, overrides the
    /// model's default for `sentence_embedding`) and `truncate` (bool,
    /// default true: `text` over the model's max tokens is cut, as `embed()`
    /// does). Others are passed through to a worker untouched.
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferTensor>,
    /// `None`: every output the model produces for these inputs.
    pub outputs: Option<Vec<RequestedOutput>>,
}

fn opt_string(o: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Ids are often numbers in hand-written JSON; keep their text.
        Some(Value::Number(n)) if key == "id" => Ok(Some(n.to_string())),
        Some(other) => Err(err!(InvalidArg, "`{key}` must be a string, got {}", json_kind(other))),
    }
}

impl InferRequest {
    /// Read a request from its JSON form (a `submit` payload).
    pub fn from_json(v: &Value) -> Result<InferRequest> {
        let Value::Object(o) = v else {
            return Err(err!(
                InvalidArg,
                "an inference request must be an object {{inputs: [...]}}, got {}",
                json_kind(v)
            ));
        };
        let parameters = match o.get("parameters") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(other) => return Err(err!(InvalidArg, "`parameters` must be an object, got {}", json_kind(other))),
        };
        let inputs = match o.get("inputs") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, t)| InferTensor::from_json(t, &format!("inputs[{i}]"), "input"))
                .collect::<Result<Vec<_>>>()?,
            other => {
                return Err(err!(
                    InvalidArg,
                    "`inputs` must be an array of tensors, got {}",
                    other.map_or("nothing", json_kind)
                ))
            }
        };
        let outputs = match o.get("outputs") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match t {
                        Value::Object(t) => Ok(RequestedOutput {
                            name: match t.get("name") {
                                Some(Value::String(s)) => s.clone(),
                                _ => return Err(err!(InvalidArg, "`outputs[{i}].name` must be a string")),
                            },
                            parameters: t.get("parameters").and_then(Value::as_object).cloned(),
                        }),
                        other => {
                            Err(err!(InvalidArg, "`outputs[{i}]` must be an object {{name}}, got {}", json_kind(other)))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(other) => {
                return Err(err!(InvalidArg, "`outputs` must be an array of {{name}}, got {}", json_kind(other)))
            }
        };
        Ok(InferRequest {
            id: opt_string(o, "id")?,
            model_name: opt_string(o, "model_name")?,
            model_version: opt_string(o, "model_version")?,
            parameters,
            inputs,
            outputs,
        })
    }

    /// The JSON form (what a worker receives).
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        if let Some(id) = &self.id {
            o.insert("id".into(), Value::String(id.clone()));
        }
        if let Some(m) = &self.model_name {
            o.insert("model_name".into(), Value::String(m.clone()));
        }
        if let Some(m) = &self.model_version {
            o.insert("model_version".into(), Value::String(m.clone()));
        }
        if !self.parameters.is_empty() {
            o.insert("parameters".into(), Value::Object(self.parameters.clone()));
        }
        o.insert("inputs".into(), Value::Array(self.inputs.iter().map(InferTensor::to_json).collect()));
        if let Some(outs) = &self.outputs {
            let outs = outs
                .iter()
                .map(|r| {
                    let mut t = Map::new();
                    t.insert("name".into(), Value::String(r.name.clone()));
                    if let Some(p) = &r.parameters {
                        t.insert("parameters".into(), Value::Object(p.clone()));
                    }
                    Value::Object(t)
                })
                .collect();
            o.insert("outputs".into(), Value::Array(outs));
        }
        Value::Object(o)
    }

    fn bool_param(&self, key: &str) -> Result<Option<bool>> {
        match self.parameters.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(err!(InvalidArg, "`parameters.{key}` must be a boolean, got {}", json_kind(other))),
        }
    }
}

/// An inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: Option<String>,
    pub id: String,
    pub outputs: Vec<InferTensor>,
}

impl InferResponse {
    /// The JSON form (`submit`'s `result`): flat `data` arrays.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("model_name".into(), Value::String(self.model_name.clone()));
        if let Some(v) = &self.model_version {
            o.insert("model_version".into(), Value::String(v.clone()));
        }
        o.insert("id".into(), Value::String(self.id.clone()));
        o.insert("outputs".into(), Value::Array(self.outputs.iter().map(InferTensor::to_json).collect()));
        Value::Object(o)
    }

    /// Read a response (a worker's reply). A malformed reply is
    /// `E_WORKER_PROTOCOL`: the caller's request was fine.
    pub fn from_json(v: &Value) -> Result<InferResponse> {
        let bad = |e: CoreError| err!(WorkerProtocol, "the worker's inference reply is malformed: {}", e.message);
        let Value::Object(o) = v else {
            return Err(err!(
                WorkerProtocol,
                "the worker's inference reply must be an object {{model_name, outputs}}, got {}",
                json_kind(v)
            ));
        };
        let outputs = match o.get("outputs") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let t = InferTensor::from_json(t, &format!("outputs[{i}]"), "output")?;
                    t.check_shape(&format!("output `{}`", t.name))?;
                    Ok(t)
                })
                .collect::<Result<Vec<_>>>()
                .map_err(bad)?,
            _ => return Err(err!(WorkerProtocol, "the worker's inference reply has no `outputs` array")),
        };
        Ok(InferResponse {
            model_name: opt_string(o, "model_name").map_err(bad)?.unwrap_or_default(),
            model_version: opt_string(o, "model_version").map_err(bad)?,
            id: opt_string(o, "id").map_err(bad)?.unwrap_or_default(),
            outputs,
        })
    }
}

/// A tensor in model metadata; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Model metadata (the protocol's `GET v2/models/{name}` body), plus a
/// `parameters` object with what a client needs to build valid requests.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    pub parameters: Map<String, Value>,
}

impl ModelMetadata {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Input names of the encoder model.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
pub const TEXT: &str = "text";
/// Output names of the encoder model.
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";
pub const SENTENCE_EMBEDDING: &str = "sentence_embedding";

const INPUT_NAMES: [&str; 4] = [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS, TEXT];
const OUTPUT_NAMES: [&str; 4] = [LAST_HIDDEN_STATE, SENTENCE_EMBEDDING, INPUT_IDS, ATTENTION_MASK];

/// The metadata of the engine's encoder.
pub fn model_metadata(embedder: &Embedder) -> ModelMetadata {
    let info = embedder.info();
    let h = info.dims as i64;
    let t = |name: &str, dt: DataType, shape: &[i64]| TensorMetadata {
        name: name.into(),
        datatype: dt.as_str().into(),
        shape: shape.to_vec(),
    };
    let mut parameters = Map::new();
    parameters.insert("max_sequence_length".into(), Value::from(info.max_tokens));
    parameters.insert("vocab_size".into(), Value::from(embedder.config().bert.vocab_size));
    parameters.insert("hidden_size".into(), Value::from(info.dims));
    parameters.insert("pooling".into(), Value::from(info.pooling.clone()));
    parameters.insert("normalize".into(), Value::from(info.normalize));
    parameters.insert("backend".into(), Value::from(info.backend.clone()));
    // The protocol's metadata has one datatype per tensor; these inputs also
    // take INT32, and `text` replaces the id inputs.
    parameters.insert("input_ids_datatypes".into(), serde_json::json!(["INT64", "INT32"]));
    ModelMetadata {
        name: info.name,
        versions: vec!["1".into()],
        platform: "cuda-engine".into(),
        inputs: vec![
            t(INPUT_IDS, DataType::Int64, &[-1, -1]),
            t(ATTENTION_MASK, DataType::Int64, &[-1, -1]),
            t(TOKEN_TYPE_IDS, DataType::Int64, &[-1, -1]),
            t(TEXT, DataType::Bytes, &[-1]),
        ],
        outputs: vec![
            t(LAST_HIDDEN_STATE, DataType::Fp32, &[-1, -1, h]),
            t(SENTENCE_EMBEDDING, DataType::Fp32, &[-1, h]),
            t(INPUT_IDS, DataType::Int64, &[-1, -1]),
            t(ATTENTION_MASK, DataType::Int64, &[-1, -1]),
        ],
        parameters,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    LastHidden,
    SentenceEmbedding,
    InputIds,
    AttentionMask,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::LastHidden => LAST_HIDDEN_STATE,
            Output::SentenceEmbedding => SENTENCE_EMBEDDING,
            Output::InputIds => INPUT_IDS,
            Output::AttentionMask => ATTENTION_MASK,
        }
    }
}

/// A validated request, ready to queue.
#[derive(Debug)]
struct Plan {
    /// One packed sequence per batch row (padding removed).
    seqs: Vec<Encoded>,
    /// The `seq` dimension of `[batch, seq]` outputs: the input's padded
    /// length, or the longest tokenized text.
    seq_len: usize,
    outputs: Vec<Output>,
    normalize: bool,
}

/// What validation needs to know about the model.
struct ModelLimits<'a> {
    name: &'a str,
    vocab_size: usize,
    type_vocab_size: usize,
    max_tokens: usize,
    normalize: bool,
}

/// Integer ids of an INT64/INT32 tensor, after its datatype was checked.
fn int_values(t: &InferTensor) -> Vec<i64> {
    match &t.data {
        TensorData::Int64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|&x| x as i64).collect(),
        _ => Vec::new(),
    }
}

fn check_dtype(t: &InferTensor, allowed: &[DataType]) -> Result<()> {
    if allowed.contains(&t.datatype()) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|d| d.as_str()).collect();
    Err(err!(InvalidArg, "input `{}`: datatype must be {}, got {}", t.name, names.join(" or "), t.datatype().as_str()))
}

fn validate(req: &InferRequest, m: &ModelLimits, tok: &TextTokenizer) -> Result<Plan> {
    if req.inputs.is_empty() {
        return Err(err!(
            InvalidArg,
            "`inputs` is empty: give `input_ids` (INT64/INT32 [batch, seq]) or `text` (BYTES [batch])"
        ));
    }
    // Generic rules first (shape vs data), then the model's.
    let mut by_name: [Option<&InferTensor>; 4] = [None; 4];
    for t in &req.inputs {
        t.check_shape(&format!("input `{}`", t.name))?;
        let Some(slot) = INPUT_NAMES.iter().position(|&n| n == t.name) else {
            return Err(err!(
                InvalidArg,
                "input `{}` is not an input of model `{}` (inputs: {})",
                t.name,
                m.name,
                INPUT_NAMES.join(", ")
            ));
        };
        if by_name[slot].replace(t).is_some() {
            return Err(err!(InvalidArg, "input `{}` is given twice", t.name));
        }
    }
    let [ids, mask, types, text] = by_name;
    let truncate = req.bool_param("truncate")?.unwrap_or(true);
    let normalize = req.bool_param("normalize")?.unwrap_or(m.normalize);

    let (seqs, seq_len, from_text) = match (text, ids) {
        (Some(_), _) if ids.or(mask).or(types).is_some() => {
            let other = ids.or(mask).or(types).map_or("", |t| t.name.as_str());
            return Err(err!(InvalidArg, "input `text` cannot be combined with `{other}`: give text or token ids"));
        }
        (Some(text), _) => {
            check_dtype(text, &[DataType::Bytes])?;
            let batch = match text.shape[..] {
                [b] | [b, 1] => b,
                _ => {
                    return Err(err!(
                        InvalidArg,
                        "input `text`: shape must be [batch] (or [batch, 1]), got {:?}",
                        text.shape
                    ))
                }
            };
            if batch == 0 {
                return Err(err!(InvalidArg, "input `text`: the batch is empty (shape {:?})", text.shape));
            }
            let TensorData::Bytes(items) = &text.data else { unreachable!("dtype checked") };
            let mut seqs = Vec::with_capacity(items.len());
            for (i, b) in items.iter().enumerate() {
                let s = std::str::from_utf8(b)
                    .map_err(|e| err!(InvalidArg, "input `text`: element {i} is not valid UTF-8 ({e})"))?;
                let enc = tok.encode(s, i, truncate).map_err(|e| {
                    let why = if e.code == ErrorCode::TooLong { " (parameters.truncate is false)" } else { "" };
                    err!(InvalidArg, "input `text`: element {i}: {}{why}", e.message)
                })?;
                seqs.push(enc);
            }
            let seq_len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
            (seqs, seq_len, true)
        }
        (None, None) => {
            let given = mask.or(types).map_or(String::new(), |t| format!(" (got `{}` alone)", t.name));
            return Err(err!(InvalidArg, "input `input_ids` is required unless `text` is given{given}"));
        }
        (None, Some(ids)) => {
            let int = [DataType::Int64, DataType::Int32];
            check_dtype(ids, &int)?;
            let (batch, seq) = match ids.shape[..] {
                [b, s] => (b, s),
                _ => {
                    return Err(err!(InvalidArg, "input `input_ids`: shape must be [batch, seq], got {:?}", ids.shape))
                }
            };
            if batch == 0 || seq == 0 {
                return Err(err!(InvalidArg, "input `input_ids`: shape {:?} is empty", ids.shape));
            }
            for t in [mask, types].into_iter().flatten() {
                check_dtype(t, &int)?;
                if t.shape != ids.shape {
                    return Err(err!(
                        InvalidArg,
                        "input `{}`: shape {:?} must equal input_ids' shape {:?}",
                        t.name,
                        t.shape,
                        ids.shape
                    ));
                }
            }
            let id_vals = int_values(ids);
            if let Some(i) = id_vals.iter().position(|&x| x < 0 || x as u64 >= m.vocab_size as u64) {
                return Err(err!(
                    InvalidArg,
                    "input `input_ids`: id {} at [{}, {}] is not in 0..{} (the vocabulary size)",
                    id_vals[i],
                    i / seq,
                    i % seq,
                    m.vocab_size
                ));
            }
            // Lengths from the mask: each row must be 1s then 0s (right
            // padding). Positions are 0..len in the packed batch, which
            // equals a padded encoder's only for right padding; a left-padded
            // row would silently get different numbers, so it is refused.
            let lens: Vec<usize> = match mask {
                None => vec![seq; batch],
                Some(mask) => {
                    let mv = int_values(mask);
                    let mut lens = Vec::with_capacity(batch);
                    for (b, row) in mv.chunks(seq).enumerate() {
                        if let Some(s) = row.iter().position(|&x| x != 0 && x != 1) {
                            return Err(err!(
                                InvalidArg,
                                "input `attention_mask`: value {} at [{b}, {s}] must be 0 or 1",
                                row[s]
                            ));
                        }
                        let len = row.iter().take_while(|&&x| x == 1).count();
                        if let Some(s) = row[len..].iter().position(|&x| x == 1) {
                            return Err(err!(
                                InvalidArg,
                                "input `attention_mask`: row {b} has a 1 at position {} after padding; rows must be 1s then 0s (right padding)",
                                len + s
                            ));
                        }
                        if len == 0 {
                            return Err(err!(InvalidArg, "input `attention_mask`: row {b} is all 0 (no tokens)"));
                        }
                        lens.push(len);
                    }
                    lens
                }
            };
            if let Some(b) = lens.iter().position(|&l| l > m.max_tokens) {
                return Err(err!(
                    InvalidArg,
                    "input `input_ids`: sequence {b} has {} tokens, over the model's limit of {} (max_sequence_length)",
                    lens[b],
                    m.max_tokens
                ));
            }
            let type_vals = types.map(int_values);
            if let Some(tv) = &type_vals {
                // Only real (unmasked) positions reach the model.
                for (b, &len) in lens.iter().enumerate() {
                    if let Some(s) =
                        tv[b * seq..b * seq + len].iter().position(|&x| x < 0 || x as u64 >= m.type_vocab_size as u64)
                    {
                        return Err(err!(
                            InvalidArg,
                            "input `token_type_ids`: value {} at [{b}, {s}] is not in 0..{} (type_vocab_size)",
                            tv[b * seq + s],
                            m.type_vocab_size
                        ));
                    }
                }
            }
            let seqs = lens
                .iter()
                .enumerate()
                .map(|(b, &len)| Encoded {
                    ids: id_vals[b * seq..b * seq + len].iter().map(|&x| x as u32).collect(),
                    type_ids: match &type_vals {
                        Some(tv) => tv[b * seq..b * seq + len].iter().map(|&x| x as u32).collect(),
                        None => vec![0; len],
                    },
                })
                .collect();
            (seqs, seq, false)
        }
    };

    let outputs = match &req.outputs {
        None => {
            let mut o = vec![Output::LastHidden, Output::SentenceEmbedding];
            if from_text {
                o.extend([Output::InputIds, Output::AttentionMask]);
            }
            o
        }
        Some(wanted) => {
            let mut o = Vec::with_capacity(wanted.len());
            for w in wanted {
                let out = match w.name.as_str() {
                    LAST_HIDDEN_STATE => Output::LastHidden,
                    SENTENCE_EMBEDDING => Output::SentenceEmbedding,
                    INPUT_IDS if from_text => Output::InputIds,
                    ATTENTION_MASK if from_text => Output::AttentionMask,
                    INPUT_IDS | ATTENTION_MASK => {
                        return Err(err!(
                            InvalidArg,
                            "output `{}` is only produced for `text` inputs (it would echo the input)",
                            w.name
                        ))
                    }
                    other => {
                        return Err(err!(
                            InvalidArg,
                            "output `{other}` is not an output of model `{}` (outputs: {})",
                            m.name,
                            OUTPUT_NAMES.join(", ")
                        ))
                    }
                };
                if o.contains(&out) {
                    return Err(err!(InvalidArg, "output `{}` is requested twice", w.name));
                }
                o.push(out);
            }
            o
        }
    };
    Ok(Plan { seqs, seq_len, outputs, normalize })
}

/// Requests with more elements than this are validated (and tokenized) on a
/// blocking thread rather than the async task.
const INLINE_VALIDATE_ELEMS: usize = 16_384;
const INLINE_TEXTS: usize = 8;

/// A process-unique id for responses to requests that carried none.
fn next_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("infer-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Run `req` on the engine's encoder: validate everything, queue the
/// sequences through the batcher (with the last hidden state only when
/// asked for), then assemble the padded outputs. The caller (the engine)
/// has already checked that `req.model_name` names this model.
pub async fn run(embedder: &Arc<Embedder>, req: InferRequest, cancel: CancellationToken) -> Result<InferResponse> {
    let elems: usize = req.inputs.iter().map(|t| t.data.len()).sum();
    let texts = req.inputs.iter().find(|t| t.name == TEXT).map_or(0, |t| t.data.len());
    let (plan, req) = if elems <= INLINE_VALIDATE_ELEMS && texts <= INLINE_TEXTS {
        (plan_for(embedder, &req)?, req)
    } else {
        let e = embedder.clone();
        let job = tokio::task::spawn_blocking(move || plan_for(&e, &req).map(|p| (p, req)));
        tokio::select! {
            r = job => r.map_err(|e| err!(Internal, "inference validation task failed: {e}"))??,
            _ = cancel.cancelled() => return Err(CoreError::cancelled()),
        }
    };
    let want_hidden = plan.outputs.contains(&Output::LastHidden);
    let batch = plan.seqs.len();
    let lens: Vec<usize> = plan.seqs.iter().map(|s| s.ids.len()).collect();
    // Token ids are needed after the move into the queue only for text
    // inputs' `input_ids` output.
    let ids_out: Option<Vec<i64>> = plan.outputs.contains(&Output::InputIds).then(|| {
        let mut v = vec![0i64; batch * plan.seq_len];
        for (b, s) in plan.seqs.iter().enumerate() {
            for (j, &id) in s.ids.iter().enumerate() {
                v[b * plan.seq_len + j] = id as i64;
            }
        }
        v
    });
    let (mut pooled, hidden) = embedder.forward_tensors(plan.seqs, want_hidden, cancel).await?;
    let h = embedder.info().dims;
    let mut outputs = Vec::with_capacity(plan.outputs.len());
    for out in &plan.outputs {
        let (shape, data) = match out {
            Output::SentenceEmbedding => {
                let mut flat = Vec::with_capacity(batch * h);
                for v in &mut pooled {
                    if plan.normalize {
                        l2_normalize(v);
                    }
                    flat.extend_from_slice(v);
                }
                (vec![batch, h], TensorData::Fp32(flat))
            }
            Output::LastHidden => {
                // Re-pad: real tokens at 0..len of each row, zeros after.
                let mut flat = vec![0f32; batch * plan.seq_len * h];
                for (b, rows) in hidden.iter().enumerate() {
                    if rows.len() != lens[b] * h {
                        return Err(err!(
                            Internal,
                            "the backend returned {} hidden values for a {}-token sequence",
                            rows.len(),
                            lens[b]
                        ));
                    }
                    flat[b * plan.seq_len * h..][..rows.len()].copy_from_slice(rows);
                }
                (vec![batch, plan.seq_len, h], TensorData::Fp32(flat))
            }
            Output::InputIds => (vec![batch, plan.seq_len], TensorData::Int64(ids_out.clone().unwrap_or_default())),
            Output::AttentionMask => {
                let mut v = vec![0i64; batch * plan.seq_len];
                for (b, &len) in lens.iter().enumerate() {
                    v[b * plan.seq_len..][..len].fill(1);
                }
                (vec![batch, plan.seq_len], TensorData::Int64(v))
            }
        };
        outputs.push(InferTensor::new(out.name(), shape, data));
    }
    Ok(InferResponse {
        model_name: embedder.info().name,
        model_version: None,
        id: req.id.unwrap_or_else(next_id),
        outputs,
    })
}

fn plan_for(embedder: &Embedder, req: &InferRequest) -> Result<Plan> {
    let info = embedder.info();
    let limits = ModelLimits {
        name: &info.name,
        vocab_size: embedder.config().bert.vocab_size,
        type_vocab_size: embedder.config().bert.type_vocab_size,
        max_tokens: info.max_tokens,
        normalize: info.normalize,
    };
    validate(req, &limits, embedder.tokenizer())
}

/// Whether a `submit` inference payload is a metadata query rather than an
/// inference: it has no `inputs` key (see docs/infer.md).
pub fn is_metadata_query(payload: &Value) -> bool {
    payload.as_object().is_some_and(|o| !o.contains_key("inputs"))
}

/// The `model_name` a payload asks for, if any (routing reads it before the
/// request is parsed).
pub fn requested_model(payload: &Value) -> Option<&str> {
    payload.get("model_name").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatypes_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("fp32"), None);
    }

    #[test]
    fn json_data_nested_and_flat() {
        let nested = serde_json::json!([[1, 2], [3, 4]]);
        assert_eq!(TensorData::from_json(DataType::Int64, &nested, "x").unwrap(), TensorData::Int64(vec![1, 2, 3, 4]));
        let e = TensorData::from_json(DataType::Int8, &serde_json::json!([1, 300]), "input `x`").unwrap_err();
        assert!(e.message.contains("input `x`") && e.message.contains("out of range"), "{e}");
        let e = TensorData::from_json(DataType::Int32, &serde_json::json!([1.5]), "input `x`").unwrap_err();
        assert!(e.message.contains("data[0]"), "{e}");
        let f16 = TensorData::from_json(DataType::Fp16, &serde_json::json!([1.0, -2.0]), "x").unwrap();
        assert_eq!(f16, TensorData::Fp16(vec![0x3c00, 0xc000]));
        assert_eq!(f16.to_json(), serde_json::json!([1.0, -2.0]));
    }

    #[test]
    fn le_bytes_need_whole_elements() {
        let e = TensorData::from_le_bytes(DataType::Fp16, &[0, 60, 0], "input `h`").unwrap_err();
        assert!(e.message.contains("input `h`") && e.message.contains("multiple of 2"), "{e}");
        assert_eq!(TensorData::from_le_bytes(DataType::Fp16, &[0, 0x3c], "h").unwrap(), TensorData::Fp16(vec![0x3c00]));
        assert!(TensorData::from_le_bytes(DataType::Bool, &[0, 2], "b").is_err());
    }

    #[test]
    fn shape_must_match_data() {
        let t = InferTensor::new("x", vec![2, 3], TensorData::Int64(vec![0; 5]));
        let e = t.check_shape("input `x`").unwrap_err();
        assert!(e.message.contains("[2, 3] holds 6 elements but data has 5"), "{e}");
        let t = InferTensor::new("x", vec![usize::MAX, 2], TensorData::Int64(vec![]));
        assert!(t.check_shape("x").is_err());
    }
}
