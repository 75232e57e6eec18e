//! The gRPC message handlers (crates/core/src/grpc/tensor.rs): protobuf
//! bytes as a server or the remote client receives them → prost decoding →
//! `request_from_proto` / `response_from_proto` (raw contents, typed
//! contents, BYTES length prefixes, shapes, parameters); the engine's own
//! service messages decode without panicking. The first byte picks the
//! message, the rest is the wire bytes.
//!
//! Properties:
//! - conversion errors are E_INVALID_ARG with a message, never anything
//!   else, and never a panic or an allocation a length field asked for;
//! - a converted request's tensors all pass `check_shape`, and
//!   `request_to_proto` → `request_from_proto` gives the same tensors back
//!   (raw form); a converted response round-trips through both the raw and
//!   the typed form (unless a float is NaN, which never compares equal).
#![no_main]

use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::grpc::proto::{engine as epb, inference as pb};
use cuda_engine_core::grpc::tensor;
use cuda_engine_core::infer::{InferTensor, TensorData};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[path = "common.rs"]
mod common;

fn has_nan(ts: &[InferTensor]) -> bool {
    ts.iter().any(|t| match &t.data {
        TensorData::Fp16(v) => v.iter().any(|&x| half::f16::from_bits(x).is_nan()),
        TensorData::Fp32(v) => v.iter().any(|x| x.is_nan()),
        TensorData::Fp64(v) => v.iter().any(|x| x.is_nan()),
        _ => false,
    })
}

fn request(bytes: &[u8]) {
    let Ok(msg) = pb::ModelInferRequest::decode(bytes) else { return };
    match tensor::request_from_proto(&msg) {
        Err(e) => common::check_error(&e, &[ErrorCode::InvalidArg], "request_from_proto"),
        Ok(req) => {
            assert_eq!(req.inputs.len(), msg.inputs.len());
            for t in &req.inputs {
                t.check_shape("input").expect("a converted request's shapes hold");
            }
            if has_nan(&req.inputs) {
                return;
            }
            let back = tensor::request_from_proto(&tensor::request_to_proto(&req))
                .unwrap_or_else(|e| panic!("request_to_proto of a converted request does not convert: {}", e.message));
            assert_eq!(back.inputs, req.inputs, "tensors changed in a round trip");
            assert_eq!(back.id, req.id);
            assert_eq!(back.model_name, req.model_name);
        }
    }
}

fn response(bytes: &[u8]) {
    let Ok(msg) = pb::ModelInferResponse::decode(bytes) else { return };
    match tensor::response_from_proto(&msg) {
        Err(e) => common::check_error(&e, &[ErrorCode::InvalidArg], "response_from_proto"),
        Ok(resp) => {
            for t in &resp.outputs {
                t.check_shape("output").expect("a converted response's shapes hold");
            }
            if has_nan(&resp.outputs) {
                return;
            }
            for raw in [true, false] {
                let back = tensor::response_from_proto(&tensor::response_to_proto(&resp, raw))
                    .unwrap_or_else(|e| panic!("response_to_proto(raw: {raw}) does not convert back: {}", e.message));
                assert_eq!(back.outputs, resp.outputs, "outputs changed in a round trip (raw: {raw})");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 6 {
        0 => request(bytes),
        1 => response(bytes),
        2 => {
            if let Ok(m) = pb::ModelMetadataRequest::decode(bytes) {
                let _ = m.encoded_len();
            }
        }
        3 => {
            if let Ok(m) = epb::EmbedRequest::decode(bytes) {
                let _ = m.encode_to_vec();
            }
        }
        4 => {
            if let Ok(m) = epb::SubmitRequest::decode(bytes) {
                let _ = m.encode_to_vec();
            }
        }
        _ => {
            if let Ok(m) = epb::VectorSearchRequest::decode(bytes) {
                let _ = m.encode_to_vec();
            }
        }
    }
});
