//! The worker protocol reader (docs/worker-protocol.md): frame headers
//! (`parse_frame_header`), supervisor-side `parse_json_response` /
//! `parse_frame_response`, worker-side `parse_json_request` /
//! `parse_frame_request`, and `decode_body`, over a byte stream consumed the
//! way `worker::persistent`'s reader (and `cuda-worker --serve`'s) consumes
//! stdout/stdin: skip ASCII whitespace; `0xC1` starts a 6-byte header then
//! `len` body bytes (over the limit: the stream is dropped); anything else
//! is a line up to `\n` (over the limit: dropped); EOF inside a message ends
//! the stream. The one-shot reader (all of stdout as one response) too.
//!
//! The first input byte picks the reader's limit (64..=1024 bytes, so the
//! over-limit paths are reached); the rest is the stream. Properties:
//! - the reader always progresses and ends; no message is over the limit; a
//!   line holds no `\n`; what it consumed never passes the input's end;
//! - `parse_frame_header` accepts exactly tag 0xC1 with format 1 or 2 and
//!   returns the big-endian length;
//! - a parsed response: a worker error's code is in the table, and a table
//!   code is passed on unchanged; a success re-encoded with
//!   `encode_response` (JSON, CBOR and MessagePack) parses back to the same
//!   id and output;
//! - a parsed request re-encoded with `encode_request` (both formats) parses
//!   back to the same id, type, job id, payload (and encoding for bytes);
//! - `decode_body` agrees with the response/request parsers (a body they
//!   accept decodes), and decoded bodies re-encode with `encode_frame` and
//!   decode back equal.
#![no_main]

use cuda_engine_core::envelope::{Envelope, Payload};
use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::worker::protocol::{self, BinaryFormat, WireValue, FRAME_HEADER_LEN, FRAME_TAG};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "common.rs"]
mod common;

enum Msg<'a> {
    Line(&'a [u8]),
    Frame(BinaryFormat, &'a [u8]),
}

enum Stop {
    Eof,
    TooBig(usize),
    BadHeader,
}

/// The persistent reader's `read_msg`, over a slice: the next message and
/// the position after it.
fn read_msg(s: &[u8], mut pos: usize, max: usize) -> Result<(Msg<'_>, usize), Stop> {
    while pos < s.len() && s[pos].is_ascii_whitespace() {
        pos += 1;
    }
    if pos >= s.len() {
        return Err(Stop::Eof);
    }
    if s[pos] == FRAME_TAG {
        let Some(h) = s.get(pos..pos + FRAME_HEADER_LEN) else { return Err(Stop::Eof) };
        let h: [u8; FRAME_HEADER_LEN] = h.try_into().unwrap();
        let parsed = protocol::parse_frame_header(&h);
        let expect_len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
        match (&parsed, BinaryFormat::from_byte(h[1])) {
            (Ok((f, n)), Some(g)) => assert!(*f == g && *n == expect_len, "header {h:02x?} parsed as {f:?} {n}"),
            (Err(_), None) => {}
            (p, g) => panic!("header {h:02x?}: parse {p:?}, format byte {g:?}"),
        }
        let (fmt, len) = parsed.map_err(|_| Stop::BadHeader)?;
        if len > max {
            return Err(Stop::TooBig(len));
        }
        let start = pos + FRAME_HEADER_LEN;
        let Some(body) = s.get(start..start + len) else { return Err(Stop::Eof) };
        return Ok((Msg::Frame(fmt, body), start + len));
    }
    let rest = &s[pos..];
    match rest.iter().position(|b| *b == b'\n') {
        Some(i) if i > max => Err(Stop::TooBig(i)),
        Some(i) => Ok((Msg::Line(&rest[..i]), pos + i + 1)),
        None if rest.len() > max => Err(Stop::TooBig(rest.len())),
        None => Err(Stop::Eof),
    }
}

fn frame_body(frame: &[u8]) -> (BinaryFormat, &[u8]) {
    let h: [u8; FRAME_HEADER_LEN] = frame[..FRAME_HEADER_LEN].try_into().unwrap();
    let (fmt, len) = protocol::parse_frame_header(&h).expect("an encoded frame's header parses");
    assert_eq!(len, frame.len() - FRAME_HEADER_LEN, "an encoded frame's length is wrong");
    (fmt, &frame[FRAME_HEADER_LEN..])
}

fn check_response(resp: protocol::Response, error_code: Option<&str>) {
    match resp.outcome {
        Err(e) => {
            assert!(ErrorCode::ALL.contains(&e.code));
            assert!(!e.message.is_empty());
            if let Some(code) = error_code.and_then(ErrorCode::parse) {
                assert_eq!(e.code, code, "a worker's table code was not passed on");
            }
        }
        Ok((out, enc)) => {
            assert!(["json", "raw", "cbor", "msgpack"].contains(&enc), "encoding {enc:?}");
            for fmt in [None, Some(BinaryFormat::Cbor), Some(BinaryFormat::MsgPack)] {
                let wire = protocol::encode_response(resp.id, &Ok((out.clone(), enc)), fmt);
                let back = if wire.first() == Some(&FRAME_TAG) {
                    let (f, body) = frame_body(&wire);
                    protocol::parse_frame_response(f, body)
                } else {
                    assert_eq!(wire.last(), Some(&b'\n'));
                    assert!(!wire[..wire.len() - 1].contains(&b'\n'), "a JSON reply line with a raw newline");
                    protocol::parse_json_response(&wire[..wire.len() - 1])
                }
                .unwrap_or_else(|e| panic!("re-encoded response ({fmt:?}) does not parse: {e}"));
                assert_eq!(back.id, resp.id);
                let (out2, _) = back.outcome.expect("a re-encoded success is a success");
                assert_eq!(out2, out, "response output changed in a round trip ({fmt:?})");
            }
        }
    }
}

fn check_request(req: protocol::Request) {
    if req.cancel {
        return;
    }
    let env = Envelope {
        id: req.job_id.clone(),
        job_type: req.job_type.clone(),
        payload: req.payload,
        encoding: req.encoding,
    };
    for fmt in [BinaryFormat::Cbor, BinaryFormat::MsgPack] {
        let wire = protocol::encode_request(&env, &env.job_type, req.id, fmt).expect("a small request encodes");
        let mut bytes = wire.head.clone();
        bytes.extend_from_slice(wire.body);
        let back = if bytes[0] == FRAME_TAG {
            let (f, body) = frame_body(&bytes);
            assert_eq!(f, fmt);
            protocol::parse_frame_request(f, body)
        } else {
            assert_eq!(bytes.last(), Some(&b'\n'));
            protocol::parse_json_request(&bytes[..bytes.len() - 1])
        }
        .unwrap_or_else(|e| panic!("re-encoded request does not parse: {e}"));
        assert!(!back.cancel);
        assert_eq!(back.id, req.id);
        assert_eq!(back.job_type, env.job_type);
        assert_eq!(back.job_id, env.id);
        assert_eq!(back.payload, env.payload, "request payload changed in a round trip");
        if matches!(env.payload, Payload::Bytes(_)) {
            assert_eq!(back.encoding, env.encoding);
        }
    }
}

fn json_error_code(line: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(line).ok()?;
    v.get("error")?.get("code")?.as_str().map(str::to_string)
}

fn frame(fmt: BinaryFormat, body: &[u8]) {
    let decoded = protocol::decode_body(fmt, body);
    let code =
        decoded.as_ref().ok().and_then(|v| v.get("error")).and_then(|e| e.get("code")).and_then(WireValue::as_str);
    if let Ok(resp) = protocol::parse_frame_response(fmt, body) {
        assert!(decoded.is_ok(), "a response parsed from a body that does not decode");
        check_response(resp, code);
    }
    if let Ok(req) = protocol::parse_frame_request(fmt, body) {
        assert!(decoded.is_ok(), "a request parsed from a body that does not decode");
        check_request(req);
    }
    if let Ok(v) = decoded {
        for f in [BinaryFormat::Cbor, BinaryFormat::MsgPack] {
            let wire = protocol::encode_frame(f, &v).expect("a decoded body re-encodes");
            let (g, b) = frame_body(&wire);
            assert_eq!(g, f);
            let back = protocol::decode_body(f, b).expect("a re-encoded body decodes");
            // A float that MessagePack/CBOR store narrower comes back as f64; NaN != NaN.
            if !has_nan(&v) {
                assert_eq!(normal(back), normal(v.clone()), "body changed in a round trip through {f:?}");
            }
        }
    }
}

/// Non-negative integers are one value whichever width or signedness the
/// wire used (MessagePack's int8 5 and uint8 5 are both 5).
fn normal(v: WireValue) -> WireValue {
    match v {
        WireValue::I64(n) if n >= 0 => WireValue::U64(n as u64),
        WireValue::Array(a) => WireValue::Array(a.into_iter().map(normal).collect()),
        WireValue::Map(m) => WireValue::Map(m.into_iter().map(|(k, v)| (normal(k), normal(v))).collect()),
        other => other,
    }
}

fn has_nan(v: &WireValue) -> bool {
    match v {
        WireValue::F64(f) => f.is_nan(),
        WireValue::Array(a) => a.iter().any(has_nan),
        WireValue::Map(m) => m.iter().any(|(k, v)| has_nan(k) || has_nan(v)),
        _ => false,
    }
}

fn line(l: &[u8]) {
    if let Ok(resp) = protocol::parse_json_response(l) {
        check_response(resp, json_error_code(l).as_deref());
    }
    if let Ok(req) = protocol::parse_json_request(l) {
        check_request(req);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, stream)) = data.split_first() else { return };
    let max = 64 * (1 + (m as usize % 16));
    // The persistent reader.
    let mut pos = 0;
    let mut messages = 0;
    loop {
        match read_msg(stream, pos, max) {
            Ok((msg, next)) => {
                assert!(next > pos && next <= stream.len(), "the reader did not progress ({pos} → {next})");
                pos = next;
                messages += 1;
                match msg {
                    Msg::Line(l) => {
                        assert!(l.len() <= max && !l.contains(&b'\n'));
                        line(l);
                    }
                    Msg::Frame(fmt, body) => {
                        assert!(body.len() <= max);
                        frame(fmt, body);
                    }
                }
            }
            Err(Stop::TooBig(n)) => {
                assert!(n > max);
                break;
            }
            Err(Stop::Eof) | Err(Stop::BadHeader) => break,
        }
    }
    assert!(messages <= stream.len());
    // The one-shot reader: all of stdout is one response.
    let start = stream.iter().position(|b| !b.is_ascii_whitespace());
    if let Some(start) = start {
        let d = &stream[start..];
        if d[0] == FRAME_TAG && d.len() >= FRAME_HEADER_LEN {
            if let Ok((fmt, len)) = protocol::parse_frame_header(d[..FRAME_HEADER_LEN].try_into().unwrap()) {
                if d.len() - FRAME_HEADER_LEN == len {
                    frame(fmt, &d[FRAME_HEADER_LEN..]);
                }
            }
        } else if d[0] != FRAME_TAG {
            let end = d.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
            line(&d[..end]);
        }
    }
});
