//! Protobuf tensors (`inference.ModelInferRequest` / `ModelInferResponse`)
//! to and from the engine's `infer::InferRequest` / `InferResponse`.
//!
//! Raw contents (`raw_input_contents` / `raw_output_contents`) are the
//! row-major little-endian elements; BYTES elements there are
//! `<u32 LE length><bytes>`. Typed contents use the field of the element
//! kind (INT8/16/32 share `int_contents`, UINT8/16/32 `uint_contents`), and
//! FP16 only travels raw. Nothing is allocated from a length the peer wrote
//! before that many bytes are known to be there.

use bytes::Bytes;
use serde_json::{Map, Number, Value};

use super::proto::inference as pb;
use crate::err;
use crate::error::Result;
use crate::infer::{DataType, InferRequest, InferResponse, InferTensor, ModelMetadata, RequestedOutput, TensorData};

/// Protocol parameters to the JSON map `InferRequest` carries.
pub fn parameters_from_proto(p: &std::collections::HashMap<String, pb::InferParameter>) -> Map<String, Value> {
    use pb::infer_parameter::ParameterChoice as C;
    let mut keys: Vec<&String> = p.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = match &p[k].parameter_choice {
                Some(C::BoolParam(b)) => Value::Bool(*b),
                Some(C::Int64Param(i)) => Value::from(*i),
                Some(C::Uint64Param(u)) => Value::from(*u),
                Some(C::DoubleParam(d)) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
                Some(C::StringParam(s)) => Value::String(s.clone()),
                None => Value::Null,
            };
            (k.clone(), v)
        })
        .collect()
}

/// JSON parameters to protocol parameters. `null` is a parameter with no
/// value set (what `parameters_from_proto` reads as `null`); values the
/// protocol has no kind for (arrays, objects) travel as their JSON text.
pub fn parameters_to_proto(p: &Map<String, Value>) -> std::collections::HashMap<String, pb::InferParameter> {
    use pb::infer_parameter::ParameterChoice as C;
    p.iter()
        .map(|(k, v)| {
            let choice = match v {
                Value::Null => return (k.clone(), pb::InferParameter { parameter_choice: None }),
                Value::Bool(b) => C::BoolParam(*b),
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => C::Int64Param(i),
                    (None, Some(u), _) => C::Uint64Param(u),
                    (_, _, f) => C::DoubleParam(f.unwrap_or(f64::NAN)),
                },
                Value::String(s) => C::StringParam(s.clone()),
                other => C::StringParam(other.to_string()),
            };
            (k.clone(), pb::InferParameter { parameter_choice: Some(choice) })
        })
        .collect()
}

fn shape_from_proto(shape: &[i64], what: &str) -> Result<Vec<usize>> {
    shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err!(InvalidArg, "{what}: shape {shape:?} has a negative dimension")))
        .collect()
}

fn shape_to_proto(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// BYTES elements from their raw form: `<u32 LE length><bytes>` each.
pub fn bytes_elements_from_raw(raw: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(err!(
                InvalidArg,
                "{what}: BYTES raw contents end inside a length prefix ({} bytes left)",
                rest.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(err!(
                InvalidArg,
                "{what}: BYTES element {} claims {len} bytes but only {} remain",
                out.len(),
                tail.len()
            ));
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    Ok(out)
}

/// BYTES elements in their raw form.
pub fn bytes_elements_to_raw(elems: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elems.iter().map(|e| e.len() + 4).sum());
    for e in elems {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

fn raw_data(dt: DataType, raw: &[u8], what: &str) -> Result<TensorData> {
    match dt {
        DataType::Bytes => Ok(TensorData::Bytes(bytes_elements_from_raw(raw, what)?)),
        _ => TensorData::from_le_bytes(dt, raw, what),
    }
}

fn raw_bytes(data: &TensorData) -> Vec<u8> {
    match data {
        TensorData::Bytes(elems) => bytes_elements_to_raw(elems),
        other => other.to_le_bytes().unwrap_or_default(),
    }
}

fn narrow<T: TryFrom<i64>>(v: &[i32], dt: DataType, what: &str) -> Result<Vec<T>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            T::try_from(i64::from(x))
                .map_err(|_| err!(InvalidArg, "{what}: element {i} ({x}) is out of range for {}", dt.as_str()))
        })
        .collect()
}

fn narrow_u<T: TryFrom<u32>>(v: &[u32], dt: DataType, what: &str) -> Result<Vec<T>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            T::try_from(x)
                .map_err(|_| err!(InvalidArg, "{what}: element {i} ({x}) is out of range for {}", dt.as_str()))
        })
        .collect()
}

/// Elements from typed contents: the field of `dt`'s kind, and no other.
fn typed_data(dt: DataType, c: &pb::InferTensorContents, what: &str) -> Result<TensorData> {
    let others = |own: usize| {
        let total = c.bool_contents.len()
            + c.int_contents.len()
            + c.int64_contents.len()
            + c.uint_contents.len()
            + c.uint64_contents.len()
            + c.fp32_contents.len()
            + c.fp64_contents.len()
            + c.bytes_contents.len();
        if total != own {
            Err(err!(InvalidArg, "{what}: {} contents are in a field of another element kind", dt.as_str()))
        } else {
            Ok(())
        }
    };
    let data = match dt {
        DataType::Bool => TensorData::Bool(c.bool_contents.clone()),
        DataType::Int8 => TensorData::Int8(narrow(&c.int_contents, dt, what)?),
        DataType::Int16 => TensorData::Int16(narrow(&c.int_contents, dt, what)?),
        DataType::Int32 => TensorData::Int32(c.int_contents.clone()),
        DataType::Int64 => TensorData::Int64(c.int64_contents.clone()),
        DataType::Uint8 => TensorData::Uint8(narrow_u(&c.uint_contents, dt, what)?),
        DataType::Uint16 => TensorData::Uint16(narrow_u(&c.uint_contents, dt, what)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents.clone()),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents.clone()),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents.clone()),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents.clone()),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents.iter().map(|b| b.to_vec()).collect()),
        DataType::Fp16 => {
            return Err(err!(InvalidArg, "{what}: FP16 data travels only as raw contents (raw_input_contents)"))
        }
    };
    others(data.len())?;
    Ok(data)
}

fn typed_contents(data: &TensorData) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int32(v) => c.int_contents = v.clone(),
        TensorData::Int64(v) => c.int64_contents = v.clone(),
        TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint32(v) => c.uint_contents = v.clone(),
        TensorData::Uint64(v) => c.uint64_contents = v.clone(),
        TensorData::Fp32(v) => c.fp32_contents = v.clone(),
        TensorData::Fp64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.iter().map(|b| Bytes::from(b.clone())).collect(),
        // Callers send FP16 raw (see `response_to_proto`).
        TensorData::Fp16(_) => {}
    }
    c
}

fn tensor(
    name: &str,
    datatype: &str,
    shape: &[i64],
    params: &std::collections::HashMap<String, pb::InferParameter>,
    contents: Option<&pb::InferTensorContents>,
    raw: Option<&Bytes>,
    what: &str,
) -> Result<InferTensor> {
    let dt = DataType::parse(datatype).ok_or_else(|| {
        let all: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
        err!(InvalidArg, "{what}: datatype `{datatype}` is not one of {}", all.join(", "))
    })?;
    let shape = shape_from_proto(shape, what)?;
    // MLServer 1.7.1 answers a raw request with the raw contents *and* an
    // empty `contents` message per output: an empty one counts as absent.
    let contents = contents.filter(|c| raw.is_none() || !contents_empty(c));
    let data = match (raw, contents) {
        (Some(_), Some(_)) => {
            return Err(err!(InvalidArg, "{what}: has both `contents` and raw contents; send one"));
        }
        (Some(raw), None) => raw_data(dt, raw, what)?,
        (None, Some(c)) => typed_data(dt, c, what)?,
        // Neither: an empty tensor (its shape must say 0 elements).
        (None, None) => raw_data(dt, &[], what)?,
    };
    let t = InferTensor {
        name: name.to_string(),
        shape,
        data,
        parameters: (!params.is_empty()).then(|| parameters_from_proto(params)),
    };
    t.check_shape(what)?;
    Ok(t)
}

/// Typed contents that hold no element.
fn contents_empty(c: &pb::InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

fn raw_for(raw: &[Bytes], n: usize, i: usize, field: &str) -> Result<Option<Bytes>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() != n {
        return Err(err!(InvalidArg, "`{field}` has {} entries but there are {n} tensors (one entry each)", raw.len()));
    }
    Ok(Some(raw[i].clone()))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A received `ModelInferRequest` as the engine's request.
pub fn request_from_proto(req: &pb::ModelInferRequest) -> Result<InferRequest> {
    let n = req.inputs.len();
    let inputs = req
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let raw = raw_for(&req.raw_input_contents, n, i, "raw_input_contents")?;
            tensor(
                &t.name,
                &t.datatype,
                &t.shape,
                &t.parameters,
                t.contents.as_ref(),
                raw.as_ref(),
                &format!("inputs[{i}] ({:?})", t.name),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = (!req.outputs.is_empty()).then(|| {
        req.outputs
            .iter()
            .map(|o| RequestedOutput {
                name: o.name.clone(),
                parameters: (!o.parameters.is_empty()).then(|| parameters_from_proto(&o.parameters)),
            })
            .collect()
    });
    Ok(InferRequest {
        id: non_empty(&req.id),
        model_name: non_empty(&req.model_name),
        model_version: non_empty(&req.model_version),
        parameters: parameters_from_proto(&req.parameters),
        inputs,
        outputs,
    })
}

/// The engine's request as a `ModelInferRequest` (the remote client sends
/// every tensor raw: one buffer per tensor, FP16 included).
pub fn request_to_proto(req: &InferRequest) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: req.model_name.clone().unwrap_or_default(),
        model_version: req.model_version.clone().unwrap_or_default(),
        id: req.id.clone().unwrap_or_default(),
        parameters: parameters_to_proto(&req.parameters),
        inputs: req
            .inputs
            .iter()
            .map(|t| pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype().as_str().to_string(),
                shape: shape_to_proto(&t.shape),
                parameters: t.parameters.as_ref().map(parameters_to_proto).unwrap_or_default(),
                contents: None,
            })
            .collect(),
        outputs: req
            .outputs
            .iter()
            .flatten()
            .map(|o| pb::model_infer_request::InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: o.parameters.as_ref().map(parameters_to_proto).unwrap_or_default(),
            })
            .collect(),
        raw_input_contents: req.inputs.iter().map(|t| Bytes::from(raw_bytes(&t.data))).collect(),
    }
}

/// The engine's response as a `ModelInferResponse`: raw contents when
/// `raw` (the request came raw, as tritonclient sends it) or when an output
/// is FP16 (which has no typed field), else typed contents.
pub fn response_to_proto(resp: &InferResponse, raw: bool) -> pb::ModelInferResponse {
    let raw = raw || resp.outputs.iter().any(|t| t.datatype() == DataType::Fp16);
    pb::ModelInferResponse {
        model_name: resp.model_name.clone(),
        model_version: resp.model_version.clone().unwrap_or_default(),
        id: resp.id.clone(),
        parameters: Default::default(),
        outputs: resp
            .outputs
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype().as_str().to_string(),
                shape: shape_to_proto(&t.shape),
                parameters: t.parameters.as_ref().map(parameters_to_proto).unwrap_or_default(),
                contents: (!raw).then(|| typed_contents(&t.data)),
            })
            .collect(),
        raw_output_contents: if raw {
            resp.outputs.iter().map(|t| Bytes::from(raw_bytes(&t.data))).collect()
        } else {
            Vec::new()
        },
    }
}

/// A received `ModelInferResponse` (raw or typed contents, as the server
/// chose) as the engine's response.
pub fn response_from_proto(resp: &pb::ModelInferResponse) -> Result<InferResponse> {
    let n = resp.outputs.len();
    let outputs = resp
        .outputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let raw = raw_for(&resp.raw_output_contents, n, i, "raw_output_contents")?;
            tensor(
                &t.name,
                &t.datatype,
                &t.shape,
                &t.parameters,
                t.contents.as_ref(),
                raw.as_ref(),
                &format!("outputs[{i}] ({:?})", t.name),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(InferResponse {
        model_name: resp.model_name.clone(),
        model_version: non_empty(&resp.model_version),
        id: resp.id.clone(),
        outputs,
    })
}

/// Model metadata in the protocol's message.
pub fn metadata_to_proto(m: &ModelMetadata) -> pb::ModelMetadataResponse {
    let t = |v: &[crate::infer::TensorMetadata]| {
        v.iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name.clone(),
        versions: m.versions.clone(),
        platform: m.platform.clone(),
        inputs: t(&m.inputs),
        outputs: t(&m.outputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(inputs: Vec<InferTensor>) -> InferRequest {
        InferRequest {
            id: Some("r1".into()),
            model_name: Some("m".into()),
            model_version: None,
            parameters: serde_json::json!({"truncate": false, "n": 3, "x": 0.5, "s": "v"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            inputs,
            outputs: None,
        }
    }

    #[test]
    fn every_datatype_round_trips_raw_and_typed() {
        let all = vec![
            InferTensor::new("b", vec![2], TensorData::Bool(vec![true, false])),
            InferTensor::new("u8", vec![2], TensorData::Uint8(vec![0, 255])),
            InferTensor::new("u16", vec![1], TensorData::Uint16(vec![65535])),
            InferTensor::new("u32", vec![1], TensorData::Uint32(vec![u32::MAX])),
            InferTensor::new("u64", vec![1], TensorData::Uint64(vec![u64::MAX])),
            InferTensor::new("i8", vec![2], TensorData::Int8(vec![-128, 127])),
            InferTensor::new("i16", vec![1], TensorData::Int16(vec![-32768])),
            InferTensor::new("i32", vec![1], TensorData::Int32(vec![i32::MIN])),
            InferTensor::new("i64", vec![1, 2], TensorData::Int64(vec![i64::MIN, 7])),
            InferTensor::new("f32", vec![2, 1], TensorData::Fp32(vec![1.5, -0.0])),
            InferTensor::new("f64", vec![1], TensorData::Fp64(vec![1e300])),
            InferTensor::new("s", vec![3], TensorData::Bytes(vec![b"".to_vec(), b"hi".to_vec(), vec![0xff, 0]])),
        ];
        let r = req(all.clone());
        let p = request_to_proto(&r);
        assert_eq!(p.raw_input_contents.len(), all.len());
        assert_eq!(request_from_proto(&p).unwrap(), r);

        // Typed contents, as a non-raw client sends them.
        let resp = InferResponse { model_name: "m".into(), model_version: None, id: "r1".into(), outputs: all.clone() };
        let typed = response_to_proto(&resp, false);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(response_from_proto(&typed).unwrap(), resp);
        let raw = response_to_proto(&resp, true);
        assert_eq!(raw.raw_output_contents.len(), all.len());
        assert_eq!(response_from_proto(&raw).unwrap(), resp);
    }

    #[test]
    fn parameters_round_trip_null_included() {
        let p = serde_json::json!({"b": true, "i": -3, "u": u64::MAX, "d": 0.25, "s": "x", "n": null});
        let p = p.as_object().cloned().unwrap_or_default();
        assert_eq!(parameters_from_proto(&parameters_to_proto(&p)), p);
    }

    #[test]
    fn fp16_forces_raw() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: None,
            id: String::new(),
            outputs: vec![InferTensor::new("h", vec![1], TensorData::Fp16(vec![0x3c00]))],
        };
        let p = response_to_proto(&resp, false);
        assert_eq!(p.raw_output_contents.len(), 1);
        assert_eq!(response_from_proto(&p).unwrap(), resp);
    }

    #[test]
    fn malformed_tensors_are_named_errors() {
        let mut p = request_to_proto(&req(vec![InferTensor::new("x", vec![2], TensorData::Fp32(vec![1.0, 2.0]))]));
        let good = p.clone();
        p.inputs[0].shape = vec![3];
        let e = request_from_proto(&p).unwrap_err();
        assert!(e.message.contains("inputs[0]") && e.message.contains("shape"), "{}", e.message);
        let mut p = good.clone();
        p.inputs[0].shape = vec![-1];
        assert!(request_from_proto(&p).unwrap_err().message.contains("negative"));
        let mut p = good.clone();
        p.inputs[0].datatype = "fp32".into();
        assert!(request_from_proto(&p).unwrap_err().message.contains("datatype `fp32`"));
        let mut p = good.clone();
        p.raw_input_contents[0] = Bytes::from_static(&[0, 0, 0]);
        assert!(request_from_proto(&p).unwrap_err().message.contains("multiple of 4"));
        let mut p = good.clone();
        p.raw_input_contents.push(Bytes::new());
        assert!(request_from_proto(&p).unwrap_err().message.contains("raw_input_contents"));
        let mut p = good;
        p.inputs[0].contents = Some(pb::InferTensorContents { fp32_contents: vec![1.0, 2.0], ..Default::default() });
        assert!(request_from_proto(&p).unwrap_err().message.contains("both"));
        // An empty `contents` next to raw contents (MLServer 1.7.1 answers so) is absent.
        p.inputs[0].contents = Some(pb::InferTensorContents::default());
        assert_eq!(request_from_proto(&p).unwrap().inputs[0].data, TensorData::Fp32(vec![1.0, 2.0]));
        // Typed: wrong field, out of range.
        let mut p = request_to_proto(&req(vec![InferTensor::new("x", vec![1], TensorData::Int8(vec![1]))]));
        p.raw_input_contents.clear();
        p.inputs[0].contents = Some(pb::InferTensorContents { int_contents: vec![300], ..Default::default() });
        assert!(request_from_proto(&p).unwrap_err().message.contains("out of range for INT8"));
        p.inputs[0].contents = Some(pb::InferTensorContents { fp32_contents: vec![1.0], ..Default::default() });
        assert!(request_from_proto(&p).unwrap_err().message.contains("another element kind"));
    }

    #[test]
    fn bytes_raw_lengths_are_checked_before_allocating() {
        let e = bytes_elements_from_raw(&[0xff, 0xff, 0xff, 0xff, 1], "t").unwrap_err();
        assert!(e.message.contains("claims 4294967295 bytes but only 1 remain"), "{}", e.message);
        assert!(bytes_elements_from_raw(&[1, 0], "t").unwrap_err().message.contains("length prefix"));
        assert_eq!(
            bytes_elements_from_raw(&bytes_elements_to_raw(&[b"ab".to_vec()]), "t").unwrap(),
            vec![b"ab".to_vec()]
        );
    }
}
