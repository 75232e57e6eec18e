//! The worker wire protocol (docs/worker-protocol.md): JSON messages and
//! binary frames that carry raw bytes in CBOR or MessagePack.
//!
//! Used by both sides: the supervisor (`worker::oneshot`, `worker::persistent`)
//! and the `cuda-worker` binary, so the two cannot drift apart.
//!
//! A binary frame is `0xC1, fmt, len:u32be, body[len]`. 0xC1 can start
//! neither a JSON text (which starts with `{` or whitespace) nor valid UTF-8,
//! so a reader tells a frame from a JSON line by its first byte.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::envelope::{Encoding, Envelope, Payload};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::jobs::JobOutput;

/// First byte of a binary frame.
pub const FRAME_TAG: u8 = 0xC1;
/// Frame header length: tag, format, u32 length.
pub const FRAME_HEADER_LEN: usize = 6;

/// How binary frames encode their body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryFormat {
    Cbor,
    #[serde(rename = "msgpack")]
    MsgPack,
}

impl BinaryFormat {
    pub fn byte(self) -> u8 {
        match self {
            BinaryFormat::Cbor => 0x01,
            BinaryFormat::MsgPack => 0x02,
        }
    }

    pub fn from_byte(b: u8) -> Option<BinaryFormat> {
        match b {
            0x01 => Some(BinaryFormat::Cbor),
            0x02 => Some(BinaryFormat::MsgPack),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<BinaryFormat> {
        match s {
            "cbor" => Some(BinaryFormat::Cbor),
            "msgpack" => Some(BinaryFormat::MsgPack),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BinaryFormat::Cbor => "cbor",
            BinaryFormat::MsgPack => "msgpack",
        }
    }
}

/// A self-describing value as CBOR and MessagePack carry it: JSON's types
/// plus byte strings. Decoding goes through serde's `deserialize_any`, so
/// ciborium and rmp-serde both produce it without extra crates.
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Bytes(Vec<u8>),
    Array(Vec<WireValue>),
    Map(Vec<(WireValue, WireValue)>),
}

impl WireValue {
    pub fn get(&self, key: &str) -> Option<&WireValue> {
        match self {
            WireValue::Map(entries) => {
                entries.iter().find(|(k, _)| matches!(k, WireValue::Str(s) if s == key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            WireValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            WireValue::U64(n) => Some(*n),
            WireValue::I64(n) if *n >= 0 => Some(*n as u64),
            _ => None,
        }
    }

    /// JSON form. Byte strings nested inside a value become base64 strings
    /// (JSON has no bytes); non-string map keys are stringified.
    pub fn into_json(self) -> Value {
        use base64::Engine as _;
        match self {
            WireValue::Null => Value::Null,
            WireValue::Bool(b) => Value::Bool(b),
            WireValue::I64(n) => Value::from(n),
            WireValue::U64(n) => Value::from(n),
            WireValue::F64(f) => serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null),
            WireValue::Str(s) => Value::String(s),
            WireValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            WireValue::Array(a) => Value::Array(a.into_iter().map(WireValue::into_json).collect()),
            WireValue::Map(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let key = match k {
                            WireValue::Str(s) => s,
                            other => other.into_json().to_string(),
                        };
                        (key, v.into_json())
                    })
                    .collect(),
            ),
        }
    }

    pub fn from_json(v: &Value) -> WireValue {
        match v {
            Value::Null => WireValue::Null,
            Value::Bool(b) => WireValue::Bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    WireValue::U64(u)
                } else if let Some(i) = n.as_i64() {
                    WireValue::I64(i)
                } else {
                    WireValue::F64(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => WireValue::Str(s.clone()),
            Value::Array(a) => WireValue::Array(a.iter().map(WireValue::from_json).collect()),
            Value::Object(o) => {
                WireValue::Map(o.iter().map(|(k, v)| (WireValue::Str(k.clone()), WireValue::from_json(v))).collect())
            }
        }
    }

    pub fn map(entries: Vec<(&str, WireValue)>) -> WireValue {
        WireValue::Map(entries.into_iter().map(|(k, v)| (WireValue::Str(k.to_string()), v)).collect())
    }
}

impl<'de> Deserialize<'de> for WireValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CBOR or MessagePack value")
            }
            fn visit_unit<E>(self) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Null)
            }
            fn visit_none<E>(self) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<WireValue, D::Error> {
                WireValue::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<WireValue, E> {
                Ok(WireValue::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<WireValue, E> {
                Ok(WireValue::U64(v))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> std::result::Result<WireValue, E> {
                i64::try_from(v).map(WireValue::I64).map_err(|_| E::custom("integer out of range"))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> std::result::Result<WireValue, E> {
                u64::try_from(v).map(WireValue::U64).map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<WireValue, E> {
                Ok(WireValue::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Str(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<WireValue, E> {
                Ok(WireValue::Bytes(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<WireValue, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(WireValue::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<WireValue, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some((k, v)) = map.next_entry()? {
                    out.push((k, v));
                }
                Ok(WireValue::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for WireValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            WireValue::Null => s.serialize_unit(),
            WireValue::Bool(b) => s.serialize_bool(*b),
            WireValue::I64(n) => s.serialize_i64(*n),
            WireValue::U64(n) => s.serialize_u64(*n),
            WireValue::F64(f) => s.serialize_f64(*f),
            WireValue::Str(v) => s.serialize_str(v),
            WireValue::Bytes(b) => s.serialize_bytes(b),
            WireValue::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            WireValue::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Decode a frame body.
pub fn decode_body(format: BinaryFormat, body: &[u8]) -> std::result::Result<WireValue, String> {
    match format {
        BinaryFormat::Cbor => ciborium::from_reader(body).map_err(|e| format!("invalid CBOR: {e}")),
        BinaryFormat::MsgPack => rmp_serde::from_slice(body).map_err(|e| format!("invalid MessagePack: {e}")),
    }
}

/// A whole binary frame (header + body) holding `value`.
pub fn encode_frame(format: BinaryFormat, value: &WireValue) -> Result<Vec<u8>> {
    let mut out = vec![FRAME_TAG, format.byte(), 0, 0, 0, 0];
    match format {
        BinaryFormat::Cbor => ciborium::into_writer(value, &mut out)
            .map_err(|e| CoreError::internal(format!("CBOR encoding failed: {e}")))?,
        BinaryFormat::MsgPack => rmp_serde::encode::write(&mut out, value)
            .map_err(|e| CoreError::internal(format!("MessagePack encoding failed: {e}")))?,
    }
    let len = u32::try_from(out.len() - FRAME_HEADER_LEN)
        .map_err(|_| err!(TooLarge, "a worker frame is limited to 4 GiB"))?;
    out[2..6].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// A successful reply frame `{id, ok: true, encoding, result: <bytes>}`
/// whose `result` is `body` encoded as one CBOR value: the replies the
/// isolated process sends for `infer` (tensors) and index searches (hits).
pub fn encode_blob_response(id: u64, encoding: &str, body: &WireValue) -> Result<Vec<u8>> {
    let mut blob = encode_frame(BinaryFormat::Cbor, body)?;
    blob.drain(..FRAME_HEADER_LEN);
    encode_frame(
        BinaryFormat::Cbor,
        &WireValue::map(vec![
            ("id", WireValue::U64(id)),
            ("ok", WireValue::Bool(true)),
            ("encoding", WireValue::Str(encoding.into())),
            ("result", WireValue::Bytes(blob)),
        ]),
    )
}

/// Parse a frame header: the format and the body length.
pub fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> std::result::Result<(BinaryFormat, usize), String> {
    if h[0] != FRAME_TAG {
        return Err(format!("frame tag 0x{:02x} is not 0xC1", h[0]));
    }
    let fmt = BinaryFormat::from_byte(h[1]).ok_or_else(|| format!("unknown frame format byte 0x{:02x}", h[1]))?;
    Ok((fmt, u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize))
}

// ---- hand-written encoders for request heads --------------------------------
//
// A request frame's payload is the last map entry, so the supervisor writes
// the head (tag, length, map header, small fields, byte-string header) and
// then the payload bytes straight from the envelope: a 64 MiB payload is
// never copied into a second buffer.

struct HeadWriter {
    fmt: BinaryFormat,
    out: Vec<u8>,
}

impl HeadWriter {
    fn cbor_head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            self.out.push(m | n as u8);
        } else if n <= 0xff {
            self.out.extend_from_slice(&[m | 24, n as u8]);
        } else if n <= 0xffff {
            self.out.push(m | 25);
            self.out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= 0xffff_ffff {
            self.out.push(m | 26);
            self.out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.out.push(m | 27);
            self.out.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn map(&mut self, n: usize) {
        match self.fmt {
            BinaryFormat::Cbor => self.cbor_head(5, n as u64),
            BinaryFormat::MsgPack => {
                if n < 16 {
                    self.out.push(0x80 | n as u8);
                } else {
                    self.out.push(0xde);
                    self.out.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
        }
    }

    fn str(&mut self, s: &str) {
        let n = s.len();
        match self.fmt {
            BinaryFormat::Cbor => self.cbor_head(3, n as u64),
            BinaryFormat::MsgPack => {
                if n < 32 {
                    self.out.push(0xa0 | n as u8);
                } else if n <= 0xff {
                    self.out.extend_from_slice(&[0xd9, n as u8]);
                } else if n <= 0xffff {
                    self.out.push(0xda);
                    self.out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    self.out.push(0xdb);
                    self.out.extend_from_slice(&(n as u32).to_be_bytes());
                }
            }
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    fn uint(&mut self, n: u64) {
        match self.fmt {
            BinaryFormat::Cbor => self.cbor_head(0, n),
            BinaryFormat::MsgPack => {
                if n < 128 {
                    self.out.push(n as u8);
                } else if n <= 0xff {
                    self.out.extend_from_slice(&[0xcc, n as u8]);
                } else if n <= 0xffff {
                    self.out.push(0xcd);
                    self.out.extend_from_slice(&(n as u16).to_be_bytes());
                } else if n <= 0xffff_ffff {
                    self.out.push(0xce);
                    self.out.extend_from_slice(&(n as u32).to_be_bytes());
                } else {
                    self.out.push(0xcf);
                    self.out.extend_from_slice(&n.to_be_bytes());
                }
            }
        }
    }

    fn bytes_header(&mut self, n: usize) {
        match self.fmt {
            BinaryFormat::Cbor => self.cbor_head(2, n as u64),
            BinaryFormat::MsgPack => {
                if n <= 0xff {
                    self.out.extend_from_slice(&[0xc4, n as u8]);
                } else if n <= 0xffff {
                    self.out.push(0xc5);
                    self.out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    self.out.push(0xc6);
                    self.out.extend_from_slice(&(n as u32).to_be_bytes());
                }
            }
        }
    }
}

/// What the supervisor writes for one request: a head, then (for binary
/// frames) the payload bytes borrowed from the envelope.
pub struct RequestWire<'a> {
    pub head: Vec<u8>,
    pub body: &'a [u8],
}

impl RequestWire<'_> {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encode a request. `id` is the persistent-mode wire id (None in one-shot
/// mode). JSON payloads become one JSON line; byte payloads become a binary
/// frame in `format` whose last entry is the payload.
pub fn encode_request<'a>(
    env: &'a Envelope,
    job_type: &str,
    id: Option<u64>,
    format: BinaryFormat,
) -> Result<RequestWire<'a>> {
    match &env.payload {
        Payload::Json(value) => {
            let mut out = Vec::with_capacity(64);
            out.push(b'{');
            if let Some(id) = id {
                out.extend_from_slice(b"\"id\":");
                out.extend_from_slice(id.to_string().as_bytes());
                out.push(b',');
            }
            out.extend_from_slice(b"\"type\":");
            serde_json::to_writer(&mut out, job_type).map_err(json_err)?;
            if let Some(job_id) = &env.id {
                out.extend_from_slice(b",\"job_id\":");
                serde_json::to_writer(&mut out, job_id).map_err(json_err)?;
            }
            out.extend_from_slice(b",\"payload\":");
            // Serialized straight into the line buffer: the one copy.
            serde_json::to_writer(&mut out, value).map_err(json_err)?;
            out.extend_from_slice(b"}\n");
            Ok(RequestWire { head: out, body: &[] })
        }
        Payload::Bytes(bytes) => {
            let mut w = HeadWriter { fmt: format, out: vec![FRAME_TAG, format.byte(), 0, 0, 0, 0] };
            let n = 3 + id.is_some() as usize + env.id.is_some() as usize;
            w.map(n);
            if let Some(id) = id {
                w.str("id");
                w.uint(id);
            }
            w.str("type");
            w.str(job_type);
            if let Some(job_id) = &env.id {
                w.str("job_id");
                w.str(job_id);
            }
            w.str("encoding");
            w.str(env.encoding.as_str());
            w.str("payload");
            w.bytes_header(bytes.len());
            let total = w.out.len() - FRAME_HEADER_LEN + bytes.len();
            let total = u32::try_from(total).map_err(|_| err!(TooLarge, "a worker frame is limited to 4 GiB"))?;
            w.out[2..6].copy_from_slice(&total.to_be_bytes());
            Ok(RequestWire { head: w.out, body: bytes })
        }
    }
}

fn json_err(e: serde_json::Error) -> CoreError {
    CoreError::internal(format!("JSON encoding failed: {e}"))
}

/// A decoded worker response.
#[derive(Debug)]
pub struct Response {
    /// Wire id (persistent mode); None in one-shot replies.
    pub id: Option<u64>,
    pub outcome: Result<(JobOutput, &'static str)>,
}

fn static_encoding(s: Option<&str>, default: &'static str) -> &'static str {
    s.and_then(Encoding::parse).map(Encoding::as_str).unwrap_or(default)
}

/// A worker's `ok: false` reply. A code from the table passes through; any
/// other (or none) is `E_WORKER_PROTOCOL` naming it: `E_INTERNAL` is kept
/// for this engine's own bugs.
fn worker_error(code: Option<&str>, message: Option<&str>) -> CoreError {
    let message = message.unwrap_or("(no message)");
    match code.and_then(ErrorCode::parse) {
        Some(code) => CoreError::new(code, format!("worker: {message}")),
        None => CoreError::new(
            ErrorCode::WorkerProtocol,
            format!(
                "worker failed with {}, which is not a code of the table: {message}",
                code.map_or("no code".to_string(), |c| format!("code {c:?}"))
            ),
        ),
    }
}

/// Parse a JSON response (a line in persistent mode, all of stdout in
/// one-shot mode).
pub fn parse_json_response(text: &[u8]) -> std::result::Result<Response, String> {
    let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = v else { return Err("the response is not a JSON object".into()) };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("`id` is not an unsigned integer")?),
    };
    let ok = obj.get("ok").and_then(Value::as_bool).ok_or("`ok` is missing or not a boolean")?;
    if !ok {
        let e = obj.get("error");
        let code = e.and_then(|e| e.get("code")).and_then(Value::as_str);
        let msg = e.and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()));
        return Ok(Response { id, outcome: Err(worker_error(code, msg)) });
    }
    let encoding = obj.get("encoding").and_then(Value::as_str).map(str::to_string);
    if let Some(b64) = obj.get("result_b64") {
        let b64 = b64.as_str().ok_or("`result_b64` is not a string")?;
        let bytes = crate::envelope::decode_base64(b64, "result_b64").map_err(|e| e.message)?;
        return Ok(Response {
            id,
            outcome: Ok((JobOutput::Bytes(bytes), static_encoding(encoding.as_deref(), "raw"))),
        });
    }
    let result = obj.remove("result").ok_or("`ok: true` without `result` or `result_b64`")?;
    Ok(Response { id, outcome: Ok((JobOutput::Json(result), static_encoding(encoding.as_deref(), "json"))) })
}

/// Parse a binary-frame response body.
pub fn parse_frame_response(format: BinaryFormat, body: &[u8]) -> std::result::Result<Response, String> {
    let v = decode_body(format, body)?;
    if !matches!(v, WireValue::Map(_)) {
        return Err("the frame body is not a map".into());
    }
    let id = match v.get("id") {
        None | Some(WireValue::Null) => None,
        Some(x) => Some(x.as_u64().ok_or("`id` is not an unsigned integer")?),
    };
    let ok = match v.get("ok") {
        Some(WireValue::Bool(b)) => *b,
        _ => return Err("`ok` is missing or not a boolean".into()),
    };
    if !ok {
        let e = v.get("error");
        let code = e.and_then(|e| e.get("code")).and_then(WireValue::as_str);
        let msg = e.and_then(|e| e.get("message").and_then(WireValue::as_str).or_else(|| e.as_str()));
        return Ok(Response { id, outcome: Err(worker_error(code, msg)) });
    }
    let encoding = v.get("encoding").and_then(WireValue::as_str).map(str::to_string);
    let WireValue::Map(entries) = v else { unreachable!() };
    let result = entries
        .into_iter()
        .find(|(k, _)| matches!(k, WireValue::Str(s) if s == "result"))
        .map(|(_, v)| v)
        .ok_or("`ok: true` without `result`")?;
    let outcome = match result {
        WireValue::Bytes(b) => (JobOutput::Bytes(b), static_encoding(encoding.as_deref(), "raw")),
        other => (JobOutput::Json(other.into_json()), static_encoding(encoding.as_deref(), "json")),
    };
    Ok(Response { id, outcome: Ok(outcome) })
}

/// A request as the worker side reads it.
#[derive(Debug)]
pub struct Request {
    pub id: Option<u64>,
    pub job_type: String,
    pub job_id: Option<String>,
    pub payload: Payload,
    pub encoding: Encoding,
    /// `{"id":N,"cancel":true}`: stop job N (no reply is owed).
    pub cancel: bool,
}

/// Worker side: parse a JSON request.
pub fn parse_json_request(text: &[u8]) -> std::result::Result<Request, String> {
    let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = v else { return Err("the request is not a JSON object".into()) };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("`id` is not an unsigned integer")?),
    };
    if obj.get("cancel").and_then(Value::as_bool) == Some(true) {
        return Ok(Request {
            id,
            job_type: String::new(),
            job_id: None,
            payload: Payload::Json(Value::Null),
            encoding: Encoding::Json,
            cancel: true,
        });
    }
    let job_type = obj.get("type").and_then(Value::as_str).ok_or("`type` is missing or not a string")?.to_string();
    let job_id = obj.get("job_id").and_then(Value::as_str).map(str::to_string);
    let payload = obj.remove("payload").ok_or("`payload` is missing")?;
    Ok(Request { id, job_type, job_id, payload: Payload::Json(payload), encoding: Encoding::Json, cancel: false })
}

/// Worker side: parse a binary request frame body.
pub fn parse_frame_request(format: BinaryFormat, body: &[u8]) -> std::result::Result<Request, String> {
    request_from_value(decode_body(format, body)?)
}

/// Worker side: a request from a decoded frame body (a reader that looks at
/// the body first, for the supervisor's own requests, decodes it once).
pub fn request_from_value(v: WireValue) -> std::result::Result<Request, String> {
    let id = match v.get("id") {
        None | Some(WireValue::Null) => None,
        Some(x) => Some(x.as_u64().ok_or("`id` is not an unsigned integer")?),
    };
    let job_type = v.get("type").and_then(WireValue::as_str).ok_or("`type` is missing or not a string")?.to_string();
    let job_id = v.get("job_id").and_then(WireValue::as_str).map(str::to_string);
    let encoding = match v.get("encoding").and_then(WireValue::as_str) {
        None => Encoding::Raw,
        Some(s) => Encoding::parse(s).ok_or_else(|| format!("unknown encoding {s:?}"))?,
    };
    let WireValue::Map(entries) = v else { return Err("the frame body is not a map".into()) };
    let payload = entries
        .into_iter()
        .find(|(k, _)| matches!(k, WireValue::Str(s) if s == "payload"))
        .map(|(_, v)| v)
        .ok_or("`payload` is missing")?;
    let payload = match payload {
        WireValue::Bytes(b) => Payload::Bytes(b),
        other => Payload::Json(other.into_json()),
    };
    Ok(Request { id, job_type, job_id, payload, encoding, cancel: false })
}

/// Worker side: encode a reply in the request's format (JSON line when
/// `format` is None). Byte results force a binary frame (CBOR when the
/// request came as JSON).
pub fn encode_response(
    id: Option<u64>,
    outcome: &Result<(JobOutput, &'static str)>,
    format: Option<BinaryFormat>,
) -> Vec<u8> {
    let bytes_result = matches!(outcome, Ok((JobOutput::Bytes(_), _)));
    let format = if bytes_result { Some(format.unwrap_or(BinaryFormat::Cbor)) } else { format };
    match format {
        None => {
            let mut obj = serde_json::Map::new();
            if let Some(id) = id {
                obj.insert("id".into(), Value::from(id));
            }
            match outcome {
                Ok((JobOutput::Json(v), enc)) => {
                    obj.insert("ok".into(), Value::Bool(true));
                    obj.insert("encoding".into(), Value::from(*enc));
                    obj.insert("result".into(), v.clone());
                }
                Ok((JobOutput::Bytes(_), _)) => unreachable!("bytes use frames"),
                Err(e) => {
                    obj.insert("ok".into(), Value::Bool(false));
                    obj.insert(
                        "error".into(),
                        serde_json::json!({ "code": e.code.as_str(), "message": e.clone_flat().message }),
                    );
                }
            }
            let mut line = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
            line.push(b'\n');
            line
        }
        Some(fmt) => {
            let mut entries = Vec::new();
            if let Some(id) = id {
                entries.push(("id", WireValue::U64(id)));
            }
            match outcome {
                Ok((out, enc)) => {
                    entries.push(("ok", WireValue::Bool(true)));
                    entries.push(("encoding", WireValue::Str(enc.to_string())));
                    entries.push((
                        "result",
                        match out {
                            JobOutput::Bytes(b) => WireValue::Bytes(b.clone()),
                            JobOutput::Json(v) => WireValue::from_json(v),
                        },
                    ));
                }
                Err(e) => {
                    entries.push(("ok", WireValue::Bool(false)));
                    entries.push((
                        "error",
                        WireValue::map(vec![
                            ("code", WireValue::Str(e.code.as_str().into())),
                            ("message", WireValue::Str(e.clone_flat().message)),
                        ]),
                    ));
                }
            }
            encode_frame(fmt, &WireValue::map(entries)).unwrap_or_default()
        }
    }
}

// ---- the engine's isolated process (`isolation: 'process'`) ----------------
//
// Two requests only the engine's supervisor writes (an envelope cannot
// express them, so `submit` cannot produce them): an `embedding` job whose
// vectors come back as raw f32 bytes, and a health query.

/// Request key asking for an `embedding` job's vectors as raw f32 bytes.
pub const VECTORS_KEY: &str = "vectors";
/// The value of [`VECTORS_KEY`] (and the reply's `encoding`).
pub const VECTORS_F32: &str = "f32";

/// An `embedding` request whose reply carries the vectors as raw bytes:
/// `{"id":N,"type":"embedding","payload":{"texts":[…],"normalize":…,"truncate":…},"vectors":"f32"}`.
pub fn encode_embed_f32_request(id: u64, texts: &[String], normalize: Option<bool>, truncate: bool) -> Result<Vec<u8>> {
    let mut payload = serde_json::Map::new();
    payload.insert("texts".into(), serde_json::to_value(texts).map_err(json_err)?);
    if let Some(n) = normalize {
        payload.insert("normalize".into(), Value::Bool(n));
    }
    payload.insert("truncate".into(), Value::Bool(truncate));
    let line = serde_json::json!({
        "id": id,
        "type": "embedding",
        "payload": Value::Object(payload),
        VECTORS_KEY: VECTORS_F32,
    });
    let mut out = serde_json::to_vec(&line).map_err(json_err)?;
    out.push(b'\n');
    Ok(out)
}

/// `{"id":N,"health":true}`: the worker answers with its engine's health
/// report as `result`.
pub fn encode_health_request(id: u64) -> Vec<u8> {
    format!("{{\"id\":{id},\"health\":true}}\n").into_bytes()
}

/// Worker side: the reply to an f32 embedding request, a CBOR frame
/// `{id, ok: true, encoding: "f32", dims, result: bytes}` where `result`
/// holds the vectors row-major, each element a little-endian f32. Written
/// by hand, straight from the vectors (no intermediate value).
pub fn encode_vectors_response(id: u64, vectors: &[Vec<f32>]) -> Result<Vec<u8>> {
    let dims = vectors.first().map_or(0, Vec::len);
    if vectors.iter().any(|v| v.len() != dims) {
        return Err(CoreError::internal("embedding vectors of different lengths"));
    }
    let n = vectors.len() * dims * 4;
    let mut w = HeadWriter { fmt: BinaryFormat::Cbor, out: Vec::with_capacity(64 + n) };
    w.out.extend_from_slice(&[FRAME_TAG, BinaryFormat::Cbor.byte(), 0, 0, 0, 0]);
    w.map(5);
    w.str("id");
    w.uint(id);
    w.str("ok");
    w.out.push(0xf5); // CBOR true
    w.str("encoding");
    w.str(VECTORS_F32);
    w.str("dims");
    w.uint(dims as u64);
    w.str("result");
    w.bytes_header(n);
    for v in vectors {
        extend_le_f32(&mut w.out, v);
    }
    let total = u32::try_from(w.out.len() - FRAME_HEADER_LEN)
        .map_err(|_| err!(TooLarge, "a worker frame is limited to 4 GiB"))?;
    w.out[2..6].copy_from_slice(&total.to_be_bytes());
    Ok(w.out)
}

/// Supervisor side: `count` vectors from the raw f32 bytes of an f32
/// embedding reply. A length that does not split into `count` equal rows of
/// whole f32s is `E_WORKER_PROTOCOL`.
pub fn vectors_from_f32_bytes(bytes: &[u8], count: usize) -> Result<Vec<Vec<f32>>> {
    if count == 0 {
        return if bytes.is_empty() {
            Ok(Vec::new())
        } else {
            Err(err!(WorkerProtocol, "the worker sent {} bytes of vectors for 0 texts", bytes.len()))
        };
    }
    if !bytes.len().is_multiple_of(4 * count) {
        return Err(err!(
            WorkerProtocol,
            "the worker sent {} bytes of f32 vectors, not {count} equal rows of whole f32s",
            bytes.len()
        ));
    }
    let dims = bytes.len() / 4 / count;
    Ok(bytes.chunks_exact(dims * 4).map(f32s_from_le).collect())
}

/// Append `xs` as little-endian f32 bytes: one copy on little-endian hosts
/// (the per-float loop took 0.23 ms for a reply of 512 × 384).
fn extend_le_f32(out: &mut Vec<u8>, xs: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(xs));
    } else {
        for x in xs {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// Little-endian f32 bytes (a multiple of 4, any alignment) as f32s.
fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / 4];
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<f32, u8>(&mut out).copy_from_slice(bytes);
    } else {
        for (x, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    out
}

/// Write queued messages (lines or frames) to `w`, flushing once per burst:
/// everything already queued goes out with one flush (group commit), so many
/// jobs in flight cost few syscalls. Used on both ends of the pipe (the
/// adapter's stdin writer and `cuda-worker --serve`'s stdout writer).
/// Returns when the channel closes, or with the first write error.
pub async fn write_batched<W>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>, w: &mut W) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    while let Some(m) = rx.recv().await {
        w.write_all(&m).await?;
        while let Ok(m) = rx.try_recv() {
            w.write_all(&m).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_bytes(bytes: Vec<u8>) -> Envelope {
        Envelope {
            id: Some("j1".into()),
            job_type: "echo".into(),
            payload: Payload::Bytes(bytes),
            encoding: Encoding::Raw,
        }
    }

    #[test]
    fn hand_written_request_heads_decode_with_the_real_codecs() {
        // Sizes straddle every length-class boundary of both formats.
        for len in [0usize, 1, 23, 24, 31, 32, 255, 256, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let env = env_bytes(payload.clone());
            for fmt in [BinaryFormat::Cbor, BinaryFormat::MsgPack] {
                for id in [None, Some(5u64), Some(300), Some(u64::MAX)] {
                    let w = encode_request(&env, "echo", id, fmt).unwrap();
                    let mut frame = w.head.clone();
                    frame.extend_from_slice(w.body);
                    let header: [u8; 6] = frame[..6].try_into().unwrap();
                    let (f, n) = parse_frame_header(&header).unwrap();
                    assert_eq!((f, n), (fmt, frame.len() - 6));
                    let req = parse_frame_request(fmt, &frame[6..]).unwrap();
                    assert_eq!(req.id, id);
                    assert_eq!(req.job_type, "echo");
                    assert_eq!(req.job_id.as_deref(), Some("j1"));
                    assert_eq!(req.encoding, Encoding::Raw);
                    assert_eq!(req.payload, Payload::Bytes(payload.clone()), "{fmt:?} len {len}");
                }
            }
        }
    }

    #[test]
    fn responses_round_trip_in_every_form() {
        for fmt in [None, Some(BinaryFormat::Cbor), Some(BinaryFormat::MsgPack)] {
            for out in
                [JobOutput::Json(serde_json::json!({"a": [1, -2, 3.5, "x", null]})), JobOutput::Bytes(vec![0, 1, 255])]
            {
                let wire = encode_response(Some(9), &Ok((out.clone(), "raw")), fmt);
                let resp = if wire[0] == FRAME_TAG {
                    let (f, n) = parse_frame_header(wire[..6].try_into().unwrap()).unwrap();
                    assert_eq!(n, wire.len() - 6);
                    parse_frame_response(f, &wire[6..]).unwrap()
                } else {
                    assert_eq!(*wire.last().unwrap(), b'\n');
                    parse_json_response(&wire).unwrap()
                };
                assert_eq!(resp.id, Some(9));
                assert_eq!(resp.outcome.unwrap().0, out);
            }
            let e = err!(UnknownType, "nope");
            let wire = encode_response(Some(1), &Err(e), fmt);
            let resp = match fmt {
                None => parse_json_response(&wire).unwrap(),
                Some(f) => parse_frame_response(f, &wire[6..]).unwrap(),
            };
            assert_eq!(resp.outcome.unwrap_err().code, ErrorCode::UnknownType);
        }
    }

    #[test]
    fn f32_vectors_round_trip_bit_exactly() {
        let vectors = vec![vec![0.1f32, -2.5, f32::MIN_POSITIVE, 1e-40], vec![3.0, 4.0, -0.0, f32::MAX]];
        let wire = encode_vectors_response(7, &vectors).unwrap();
        let (f, n) = parse_frame_header(wire[..6].try_into().unwrap()).unwrap();
        assert_eq!((f, n), (BinaryFormat::Cbor, wire.len() - 6));
        let resp = parse_frame_response(f, &wire[6..]).unwrap();
        assert_eq!(resp.id, Some(7));
        let (out, _) = resp.outcome.unwrap();
        let JobOutput::Bytes(b) = out else { panic!("not bytes") };
        let back = vectors_from_f32_bytes(&b, 2).unwrap();
        for (a, b) in vectors.iter().flatten().zip(back.iter().flatten()) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(vectors_from_f32_bytes(&b, 3).unwrap_err().code, ErrorCode::WorkerProtocol);
        assert!(vectors_from_f32_bytes(&[], 0).unwrap().is_empty());
        let line = encode_embed_f32_request(3, &["a".into()], Some(false), true).unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["vectors"], "f32");
        assert_eq!(v["payload"]["texts"][0], "a");
        let v: Value = serde_json::from_slice(&encode_health_request(9)).unwrap();
        assert_eq!((v["id"].as_u64(), v["health"].as_bool()), (Some(9), Some(true)));
    }

    #[test]
    fn bad_responses_are_rejected() {
        assert!(parse_json_response(b"garbage").is_err());
        assert!(parse_json_response(b"[1]").is_err());
        assert!(parse_json_response(b"{\"result\":1}").is_err());
        assert!(parse_json_response(b"{\"ok\":true}").is_err());
        assert!(parse_frame_response(BinaryFormat::Cbor, &[0xff, 0x00]).is_err());
    }
}
