//! Base64 (`envelope::decode_base64`).
//!
//! The first input byte picks the mode:
//! - even: the rest, as text (lossy UTF-8), is decoded. Properties: errors
//!   are E_BAD_BASE64 only; an offset in a message points into the original
//!   text at a non-whitespace byte; a result never has more bytes than the
//!   non-whitespace characters can carry (3/4); whitespace never changes the
//!   outcome (the text with its whitespace stripped decodes the same);
//!   the result re-encodes (standard, padded) to a text that decodes back.
//! - odd: a property over generated data: random bytes encoded with each
//!   alphabet, padded or not, with ASCII whitespace inserted anywhere, decode
//!   back to the same bytes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use cuda_engine_core::envelope::decode_base64;
use cuda_engine_core::error::ErrorCode;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

#[derive(Arbitrary, Debug)]
struct RoundTrip {
    bytes: Vec<u8>,
    url_safe: bool,
    padded: bool,
    /// (position, which whitespace) pairs inserted into the encoded text.
    whitespace: Vec<(u16, u8)>,
}

const WS: [u8; 5] = [b' ', b'\t', b'\n', b'\r', 0x0c];

fn offset_in(message: &str) -> Option<usize> {
    let i = message.find(" at offset ")?;
    message[i + 11..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn decode_text(text: &str) {
    let raw = text.as_bytes();
    let out = decode_base64(text, "payload_b64");
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let out2 = decode_base64(&compact, "payload_b64");
    match &out {
        Ok(bytes) => {
            let n = common::non_ws(raw);
            assert!(bytes.len() <= common::b64_bound(n), "{} bytes from {n} characters", bytes.len());
            assert_eq!(out2.as_ref().ok(), Some(bytes), "whitespace changed the bytes");
            let re = base64::engine::general_purpose::STANDARD.encode(bytes);
            assert_eq!(&decode_base64(&re, "x").expect("re-encoded bytes decode"), bytes);
        }
        Err(e) => {
            common::check_error(e, &[ErrorCode::BadBase64], "decode_base64");
            assert!(e.message.contains("`payload_b64`"), "the message does not name the field: {}", e.message);
            let e2 = out2.as_ref().expect_err("whitespace turned an error into bytes");
            assert_eq!(e2.code, e.code);
            if let Some(at) = offset_in(&e.message) {
                assert!(at < raw.len(), "offset {at} outside a text of {} bytes: {}", raw.len(), e.message);
                assert!(!raw[at].is_ascii_whitespace(), "offset {at} points at whitespace: {}", e.message);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        decode_text(&String::from_utf8_lossy(rest));
        return;
    }
    let Ok(rt) = RoundTrip::arbitrary_take_rest(Unstructured::new(rest)) else { return };
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let engine = match (rt.url_safe, rt.padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    let mut text = engine.encode(&rt.bytes).into_bytes();
    for (pos, w) in rt.whitespace.iter().take(256) {
        let at = *pos as usize % (text.len() + 1);
        text.insert(at, WS[*w as usize % WS.len()]);
    }
    let text = String::from_utf8(text).unwrap();
    let back = decode_base64(&text, "payload_b64").unwrap_or_else(|e| {
        panic!("{text:?} (url_safe {}, padded {}) does not decode: {}", rt.url_safe, rt.padded, e.message)
    });
    assert_eq!(back, rt.bytes, "round trip through {text:?}");
    decode_text(&text);
});
