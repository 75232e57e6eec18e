//! CBOR and MessagePack payloads: `envelope::cbor_to_value`,
//! `envelope::msgpack_to_value`, `value_to_cbor`, `value_to_msgpack`, and
//! the envelope path that uses them (`decode_payload_bytes`).
//!
//! The first input byte picks the codec (even: CBOR, odd: MessagePack); the
//! rest is the payload. Properties:
//! - an error is E_DECODE (decoders) or E_DECODE / E_TOO_DEEP (the envelope
//!   path), never anything else;
//! - a decoded value round-trips: value → CBOR → value and value →
//!   MessagePack → value give it back exactly (both codecs, whichever it came
//!   from, within both decoders' recursion limits), and encoding never fails;
//! - CBOR values are never nested deeper than the decoder's recursion limit;
//! - through `decode_payload_bytes` the value is the same as the direct
//!   decode, or E_TOO_DEEP exactly when it is deeper than the limit.
#![no_main]

use cuda_engine_core::envelope::{self, Encoding, Limits, Payload};
use cuda_engine_core::error::ErrorCode;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let cbor = mode % 2 == 0;
    let decoded = if cbor {
        envelope::cbor_to_value(body, "payload_b64")
    } else {
        envelope::msgpack_to_value(body, "payload_b64")
    };
    let limits = Limits::default();
    let enc = if cbor { Encoding::Cbor } else { Encoding::MsgPack };
    let via_envelope = envelope::decode_payload_bytes(body.to_vec(), Some(enc), &limits, "payload_b64");
    match decoded {
        Err(e) => {
            common::check_error(&e, &[ErrorCode::Decode], "decode");
            let e2 = via_envelope.expect_err("the envelope path decoded what the decoder did not");
            assert_eq!(e2.code, ErrorCode::Decode);
        }
        Ok(v) => {
            let depth = envelope::value_depth(&v);
            if cbor {
                assert!(depth <= 257, "CBOR value {depth} deep, over the recursion limit");
            }
            let c = envelope::value_to_cbor(&v).expect("a decoded value encodes as CBOR");
            let m = envelope::value_to_msgpack(&v).expect("a decoded value encodes as MessagePack");
            // Each codec round-trips its own values; across codecs only within
            // both decoders' recursion limits (CBOR 256, rmp-serde 1024).
            if cbor || depth <= 256 {
                assert_eq!(envelope::cbor_to_value(&c, "x").expect("re-encoded CBOR decodes"), v, "CBOR round trip");
            }
            assert_eq!(
                envelope::msgpack_to_value(&m, "x").expect("re-encoded MessagePack decodes"),
                v,
                "MessagePack round trip"
            );
            match via_envelope {
                Ok((Payload::Json(w), e)) => {
                    assert_eq!(e, enc);
                    assert_eq!(w, v);
                    assert!(depth <= limits.max_json_depth);
                }
                Ok((Payload::Bytes(_), _)) => panic!("CBOR/MessagePack decoded to bytes"),
                Err(e) => {
                    common::check_error(&e, &[ErrorCode::TooDeep], "decode_payload_bytes");
                    assert!(depth > limits.max_json_depth, "E_TOO_DEEP at depth {depth}");
                }
            }
        }
    }
});
