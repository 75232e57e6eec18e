//! The envelope decoder: JSON text/bytes → `envelope::decode_bytes` with the
//! default limits, and `envelope::parse_json` (default and small depths).
//!
//! Properties:
//! - an error has a table code, one the decoder documents (docs/envelope.md:
//!   E_TOO_LARGE, E_TOO_DEEP, E_BAD_JSON, E_ENVELOPE, E_BAD_BASE64, E_DECODE);
//! - a decoded envelope has a non-blank `type`; its payload is never nested
//!   deeper than `max_json_depth`; payload bytes never exceed what the input
//!   can carry (base64 is 3/4 of its characters) nor `max_envelope_bytes`;
//!   bytes come with `encoding: raw`, values with json/cbor/msgpack;
//! - decoding is deterministic, and re-encoding the envelope (JSON payload
//!   as `payload`, bytes as `payload_b64` + `encoding: raw`) decodes to the
//!   same envelope;
//! - `parse_json` agrees with serde_json (after the lone-surrogate rewrite,
//!   which keeps the length and is idempotent) on what is JSON, and its
//!   `E_TOO_DEEP` is exactly "nested deeper than the limit".
#![no_main]

use base64::Engine as _;
use cuda_engine_core::envelope::{self, Encoding, Limits, Payload};
use cuda_engine_core::error::ErrorCode;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[path = "common.rs"]
mod common;

const DECODE_CODES: &[ErrorCode] = &[
    ErrorCode::TooLarge,
    ErrorCode::TooDeep,
    ErrorCode::BadJson,
    ErrorCode::Envelope,
    ErrorCode::BadBase64,
    ErrorCode::Decode,
];

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let first = envelope::decode_bytes(data, &limits);
    let again = envelope::decode_bytes(data, &limits);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode is not deterministic"),
        (Err(a), Err(b)) => assert_eq!((a.code, &a.message), (b.code, &b.message), "decode is not deterministic"),
        _ => panic!("decode is not deterministic"),
    }
    match first {
        Err(e) => common::check_error(&e, DECODE_CODES, "decode_bytes"),
        Ok(env) => {
            assert!(!env.job_type.trim().is_empty(), "a decoded envelope with a blank type");
            match &env.payload {
                Payload::Json(v) => {
                    assert!(envelope::value_depth(v) <= limits.max_json_depth, "payload deeper than the limit");
                    assert_ne!(env.encoding, Encoding::Raw, "a JSON value with encoding raw");
                }
                Payload::Bytes(b) => {
                    assert_eq!(env.encoding, Encoding::Raw, "bytes with encoding {:?}", env.encoding);
                    assert!(
                        b.len() <= common::b64_bound(data.len()),
                        "{} bytes out of {} input bytes",
                        b.len(),
                        data.len()
                    );
                    assert!(b.len() <= limits.max_envelope_bytes);
                }
            }
            // Re-encode and decode again: the same envelope.
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), Value::String(env.job_type.clone()));
            if let Some(id) = &env.id {
                obj.insert("id".into(), Value::String(id.clone()));
            }
            match &env.payload {
                // `payload: null` counts as absent; a null from bytes goes back as bytes.
                Payload::Json(Value::Null) => {
                    obj.insert("payload_b64".into(), json!("bnVsbA=="));
                    obj.insert("encoding".into(), json!("json"));
                }
                Payload::Json(v) => {
                    obj.insert("payload".into(), v.clone());
                }
                Payload::Bytes(b) => {
                    obj.insert("payload_b64".into(), json!(base64::engine::general_purpose::STANDARD.encode(b)));
                    obj.insert("encoding".into(), json!("raw"));
                }
            }
            let text = serde_json::to_vec(&Value::Object(obj)).unwrap();
            // A JSON payload may have come from CBOR/MessagePack bytes (one
            // level of nesting less than its envelope): it must still fit.
            let big = Limits { max_json_depth: limits.max_json_depth + 1, ..limits };
            let back = envelope::decode_bytes(&text, &big)
                .unwrap_or_else(|e| panic!("re-encoded envelope does not decode: {} {}", e.code.as_str(), e.message));
            assert_eq!(back.id, env.id);
            assert_eq!(back.job_type, env.job_type);
            assert_eq!(back.payload, env.payload, "payload changed in a round trip");
        }
    }

    // parse_json: with the default depth and with a small one picked by the input.
    // parse_json is serde_json over the text with lone-surrogate escapes
    // rewritten to U+FFFD (length-preserving, idempotent).
    let fixed = envelope::replace_lone_surrogate_escapes(data);
    assert_eq!(fixed.len(), data.len(), "surrogate rewrite changed the length");
    assert_eq!(envelope::replace_lone_surrogate_escapes(&fixed), fixed, "surrogate rewrite is not idempotent");
    let serde = serde_json::from_slice::<Value>(&fixed);
    let max = data.first().map_or(0, |b| (*b % 8) as usize);
    for lim in [limits, Limits { max_json_depth: max, ..limits }] {
        match envelope::parse_json(data, &lim, "envelope") {
            Ok(v) => {
                assert!(envelope::value_depth(&v) <= lim.max_json_depth);
                assert_eq!(serde.as_ref().ok(), Some(&v), "parse_json accepted what serde_json did not");
            }
            Err(e) => {
                common::check_error(&e, &[ErrorCode::TooDeep, ErrorCode::BadJson], "parse_json");
                if let Ok(v) = &serde {
                    // Valid JSON refused only for depth, and only when it is deeper.
                    assert_eq!(e.code, ErrorCode::TooDeep, "valid JSON refused: {}", e.message);
                    assert!(
                        envelope::value_depth(v) > lim.max_json_depth,
                        "refused at depth {}",
                        envelope::value_depth(v)
                    );
                }
            }
        }
    }
});
