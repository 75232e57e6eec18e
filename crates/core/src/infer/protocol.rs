//! Open Inference Protocol (KServe v2) messages: datatypes, typed tensor
//! data, requests, responses and model metadata, parsed and written as the
//! protocol's REST/JSON form. No model here: the runner (`super::run`)
//! validates a request against the encoder and runs it.

use serde_json::{Map, Number, Value};

use crate::envelope::json_kind;
use crate::err;
use crate::error::{CoreError, Result};

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

    /// The elements as raw little-endian bytes (the inverse of
    /// [`TensorData::from_le_bytes`]: BOOL as 0/1 bytes, FP16 as its bit
    /// patterns); `None` for BYTES, which has no single-buffer form.
    pub fn to_le_bytes(&self) -> Option<Vec<u8>> {
        fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * N);
            for &x in v {
                out.extend_from_slice(&f(x));
            }
            out
        }
        Some(match self {
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            TensorData::Uint8(v) => v.clone(),
            TensorData::Int8(v) => v.iter().map(|&b| b as u8).collect(),
            TensorData::Uint16(v) | TensorData::Fp16(v) => le(v, u16::to_le_bytes),
            TensorData::Int16(v) => le(v, i16::to_le_bytes),
            TensorData::Uint32(v) => le(v, u32::to_le_bytes),
            TensorData::Int32(v) => le(v, i32::to_le_bytes),
            TensorData::Fp32(v) => le(v, f32::to_le_bytes),
            TensorData::Uint64(v) => le(v, u64::to_le_bytes),
            TensorData::Int64(v) => le(v, i64::to_le_bytes),
            TensorData::Fp64(v) => le(v, f64::to_le_bytes),
            TensorData::Bytes(_) => return None,
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

    pub(crate) fn bool_param(&self, key: &str) -> Result<Option<bool>> {
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Model metadata (the protocol's `GET v2/models/{name}` body), plus a
/// `parameters` object with what a client needs to build valid requests.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
