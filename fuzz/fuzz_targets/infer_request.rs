//! The Open Inference Protocol parser (crates/core/src/infer/protocol.rs):
//! a `submit` inference payload as JSON text → `envelope::parse_json` (the
//! default limits, as the envelope decoder applies them) →
//! `InferRequest::from_json`; the same value as a worker's reply →
//! `InferResponse::from_json`; and raw tensor bytes →
//! `TensorData::from_le_bytes` for every datatype.
//!
//! Properties:
//! - request errors are E_INVALID_ARG, response errors E_WORKER_PROTOCOL
//!   (a bad reply is the worker's fault), never anything else;
//! - a parsed request's tensors hold exactly the elements of their `data`
//!   (flattened), with a datatype of the table; `to_json` → `from_json`
//!   gives the same request back (unless a float is out of its datatype's
//!   range: JSON has no ±Infinity);
//! - a parsed response's outputs all pass `check_shape`, and it round-trips
//!   through `to_json` the same way;
//! - `from_le_bytes` accepts exactly a multiple of the element size (BOOL: 0
//!   or 1 only), gives `len / size` elements, and writing them back gives
//!   the same bytes.
#![no_main]

use cuda_engine_core::envelope::{self, Limits};
use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::infer::{self, DataType, InferRequest, InferResponse, TensorData};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "common.rs"]
mod common;

fn count_leaves(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(count_leaves).sum(),
        _ => 1,
    }
}

fn has_non_finite(t: &TensorData) -> bool {
    match t {
        TensorData::Fp16(v) => v.iter().any(|&x| !half::f16::from_bits(x).is_finite()),
        TensorData::Fp32(v) => v.iter().any(|x| !x.is_finite()),
        TensorData::Fp64(v) => v.iter().any(|x| !x.is_finite()),
        _ => false,
    }
}

fn le_bytes(t: &TensorData) -> Vec<u8> {
    match t {
        TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        TensorData::Uint8(v) => v.clone(),
        TensorData::Int8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::Uint16(v) | TensorData::Fp16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Uint32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Uint64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bytes(_) => unreachable!(),
    }
}

fn raw_tensor(data: &[u8]) {
    let Some((&d, bytes)) = data.split_first() else { return };
    let dt = DataType::ALL[d as usize % DataType::ALL.len()];
    match TensorData::from_le_bytes(dt, bytes, "input `x`") {
        Ok(t) => {
            let size = dt.size().expect("BYTES has no fixed size and is refused");
            assert_eq!(t.datatype(), dt);
            assert_eq!(bytes.len() % size, 0);
            assert_eq!(t.len(), bytes.len() / size);
            assert_eq!(le_bytes(&t), bytes, "{dt:?} bytes changed");
        }
        Err(e) => {
            common::check_error(&e, &[ErrorCode::InvalidArg], "from_le_bytes");
            let legal = dt
                .size()
                .is_some_and(|s| bytes.len() % s == 0 && (dt != DataType::Bool || bytes.iter().all(|&b| b <= 1)));
            assert!(!legal, "{dt:?}: {} legal bytes refused: {}", bytes.len(), e.message);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    raw_tensor(data);
    let Ok(v) = envelope::parse_json(data, &Limits::default(), "payload") else { return };
    let _ = infer::is_metadata_query(&v);
    let _ = infer::requested_model(&v);
    match InferRequest::from_json(&v) {
        Err(e) => common::check_error(&e, &[ErrorCode::InvalidArg], "InferRequest::from_json"),
        Ok(req) => {
            let inputs = v["inputs"].as_array().expect("parsed inputs come from an array");
            assert_eq!(req.inputs.len(), inputs.len());
            for (t, j) in req.inputs.iter().zip(inputs) {
                assert_eq!(t.data.len(), count_leaves(&j["data"]), "input `{}` lost or gained elements", t.name);
                assert_eq!(DataType::parse(t.datatype().as_str()), Some(t.datatype()));
                let _ = t.check_shape("x");
            }
            let back = InferRequest::from_json(&req.to_json());
            if req.inputs.iter().any(|t| has_non_finite(&t.data)) {
                return;
            }
            let back = back.unwrap_or_else(|e| panic!("to_json of a parsed request does not parse: {}", e.message));
            assert_eq!(back, req, "request changed in a round trip");
        }
    }
    match InferResponse::from_json(&v) {
        Err(e) => common::check_error(&e, &[ErrorCode::WorkerProtocol], "InferResponse::from_json"),
        Ok(resp) => {
            for t in &resp.outputs {
                t.check_shape("output").expect("a parsed response's shapes hold");
            }
            if resp.outputs.iter().any(|t| has_non_finite(&t.data)) {
                return;
            }
            let back = InferResponse::from_json(&resp.to_json())
                .unwrap_or_else(|e| panic!("to_json of a parsed response does not parse: {}", e.message));
            assert_eq!(back, resp, "response changed in a round trip");
        }
    }
});
