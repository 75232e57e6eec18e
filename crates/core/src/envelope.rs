//! Envelope decoding: `payload` (JSON) or `payload_b64` (base64 of JSON or of
//! raw bytes), under limits checked before any parsing. Every rule is in
//! docs/envelope.md.

use serde_json::Value;

/// Limits applied while decoding (docs/envelope.md lists the defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest envelope accepted, in bytes (serialized form, or the sum of
    /// string and byte lengths for an envelope given as a JS object).
    pub max_envelope_bytes: usize,
    /// Deepest JSON nesting accepted (arrays + objects).
    pub max_json_depth: usize,
    /// Most JS values one call's arguments may hold when they are read on
    /// the JS thread value by value (object payloads: every value, key and
    /// container; `infer` data given as plain arrays: every element). It
    /// bounds how long one call blocks the event loop (~0.5 µs a value:
    /// the default measured 14–73 ms by value kind, docs/reliability.md). Strings, bytes and typed arrays are
    /// copied whole and do not count.
    pub max_payload_values: usize,
}

/// Default of [`Limits::max_payload_values`] (`maxPayloadValues`).
pub const DEFAULT_MAX_PAYLOAD_VALUES: usize = 50_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_envelope_bytes: 16 * 1024 * 1024,
            max_json_depth: 64,
            max_payload_values: DEFAULT_MAX_PAYLOAD_VALUES,
        }
    }
}

/// How a payload's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Raw,
    Cbor,
    MsgPack,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "json" => Some(Encoding::Json),
            "raw" => Some(Encoding::Raw),
            "cbor" => Some(Encoding::Cbor),
            "msgpack" => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Raw => "raw",
            Encoding::Cbor => "cbor",
            Encoding::MsgPack => "msgpack",
        }
    }
}

/// A decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// JSON (from `payload`, or `payload_b64` bytes that are JSON, or CBOR /
    /// MessagePack bytes decoded to a value).
    Json(Value),
    /// Bytes that are not JSON (or `encoding: "raw"`).
    Bytes(Vec<u8>),
}

/// A decoded, validated envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<String>,
    /// The `type` field as given (aliases are resolved by `jobs::JobType`).
    pub job_type: String,
    pub payload: Payload,
    /// How the payload arrived: `Json` for `payload` and JSON bytes; `Raw`,
    /// `Cbor` or `MsgPack` for bytes.
    pub encoding: Encoding,
}

use crate::err;
use crate::error::{CoreError, ErrorCode, Result};

/// The envelope's object form, before its payload is decoded. The N-API
/// layer builds this from a JS object; `decode_bytes` builds it from text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawEnvelope {
    pub id: Option<String>,
    pub job_type: Option<String>,
    pub payload: Option<Value>,
    pub payload_b64: Option<String>,
    /// `payload` given as bytes (a JS Uint8Array/Buffer): raw unless
    /// `encoding` says how to read it.
    pub payload_bytes: Option<Vec<u8>>,
    pub encoding: Option<String>,
}

impl RawEnvelope {
    /// Read the envelope fields out of a parsed JSON object. Unknown fields
    /// are ignored (forward compatibility with newer clients).
    pub fn from_value(value: Value) -> Result<RawEnvelope> {
        let Value::Object(mut obj) = value else {
            return Err(err!(
                Envelope,
                "the envelope must be a JSON object with `type` and `payload` or `payload_b64`, got {}",
                json_kind(&value)
            ));
        };
        let id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => return Err(err!(Envelope, "`id` must be a string or a number, got {}", json_kind(&other))),
        };
        let job_type = match obj.remove("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => return Err(err!(Envelope, "`type` must be a string, got {}", json_kind(&other))),
        };
        let payload = match obj.remove("payload") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        let payload_b64 = match obj.remove("payload_b64") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(err!(Envelope, "`payload_b64` must be a base64 string, got {}", json_kind(&other)))
            }
        };
        let encoding = match obj.remove("encoding") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => return Err(err!(Envelope, "`encoding` must be a string, got {}", json_kind(&other))),
        };
        Ok(RawEnvelope { id, job_type, payload, payload_b64, payload_bytes: None, encoding })
    }

    /// Validate the fields and decode the payload.
    pub fn decode(self, limits: &Limits) -> Result<Envelope> {
        let job_type = match self.job_type {
            Some(t) if !t.trim().is_empty() => t,
            Some(_) => return Err(err!(Envelope, "`type` is empty: name the job type (e.g. \"embedding\", \"echo\")")),
            None => return Err(err!(Envelope, "`type` is missing: name the job type (e.g. \"embedding\", \"echo\")")),
        };
        let encoding = match self.encoding.as_deref() {
            None => None,
            Some(s) => Some(
                Encoding::parse(s)
                    .ok_or_else(|| err!(Envelope, "`encoding` must be one of json, raw, cbor, msgpack; got {s:?}"))?,
            ),
        };
        if let Some(bytes) = self.payload_bytes {
            if self.payload.is_some() || self.payload_b64.is_some() {
                return Err(err!(Envelope, "the envelope has both `payload` and `payload_b64`: send exactly one"));
            }
            if bytes.len() > limits.max_envelope_bytes {
                return Err(too_large("payload", bytes.len(), limits));
            }
            let (payload, encoding) =
                decode_payload_bytes(bytes, Some(encoding.unwrap_or(Encoding::Raw)), limits, "payload")?;
            return Ok(Envelope { id: self.id, job_type, payload, encoding });
        }
        let (payload, encoding) = match (self.payload, self.payload_b64) {
            (Some(_), Some(_)) => {
                return Err(err!(Envelope, "the envelope has both `payload` and `payload_b64`: send exactly one"))
            }
            (None, None) => {
                return Err(err!(Envelope, "the envelope has neither `payload` nor `payload_b64`: send exactly one"))
            }
            (Some(value), None) => {
                if let Some(enc) = encoding.filter(|e| *e != Encoding::Json) {
                    return Err(err!(
                        Envelope,
                        "`encoding: {}` applies to `payload_b64` only; `payload` is always JSON",
                        enc.as_str()
                    ));
                }
                let depth = value_depth(&value);
                if depth > limits.max_json_depth {
                    return Err(too_deep("payload", depth, limits));
                }
                (Payload::Json(value), Encoding::Json)
            }
            (None, Some(b64)) => {
                // Base64 is 4/3 of the bytes it carries: this bounds the
                // decoded size before a single byte is decoded.
                if b64.len() > limits.max_envelope_bytes {
                    return Err(too_large("payload_b64", b64.len(), limits));
                }
                let bytes = decode_base64(&b64, "payload_b64")?;
                decode_payload_bytes(bytes, encoding, limits, "payload_b64")?
            }
        };
        Ok(Envelope { id: self.id, job_type, payload, encoding })
    }
}

/// Decode an envelope given as JSON text or bytes (a JS string or
/// Uint8Array, an HTTP body, a worker line). The size limit is checked first.
pub fn decode_bytes(bytes: &[u8], limits: &Limits) -> Result<Envelope> {
    if bytes.len() > limits.max_envelope_bytes {
        return Err(too_large("envelope", bytes.len(), limits));
    }
    let value = parse_json(bytes, limits, "envelope")?;
    RawEnvelope::from_value(value)?.decode(limits)
}

/// Parse JSON text with the depth limit enforced before parsing (serde_json
/// recursion would otherwise decide, with its own fixed limit).
/// `\uD800`–`\uDFFF` escapes that do not form a surrogate pair rewritten
/// as `\uFFFD` (same length), so JSON text treats a lone surrogate the way
/// the JS-object and JS-string paths do (N-API turns it into U+FFFD) instead
/// of failing: `JSON.stringify` writes lone surrogates as such escapes.
/// Borrowed when there are none (one linear scan).
pub fn replace_lone_surrogate_escapes(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    fn hex4(b: &[u8]) -> Option<u16> {
        let s = std::str::from_utf8(b.get(..4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    }
    let surrogate_at = |i: usize| -> Option<u16> {
        // `\u` at i, four hex digits after.
        (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u'))
            .then(|| hex4(&bytes[i + 2..]))
            .flatten()
            .filter(|u| (0xD800..=0xDFFF).contains(u))
    };
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if let Some(u) = surrogate_at(i) {
                    let paired = (0xD800..=0xDBFF).contains(&u)
                        && surrogate_at(i + 6).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo));
                    if paired {
                        i += 12;
                        continue;
                    }
                    out.get_or_insert_with(|| bytes.to_vec())[i + 2..i + 6].copy_from_slice(b"FFFD");
                    i += 6;
                    continue;
                }
                i += 2; // any other escape: skip the escaped character
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    match out {
        Some(v) => std::borrow::Cow::Owned(v),
        None => std::borrow::Cow::Borrowed(bytes),
    }
}

pub fn parse_json(bytes: &[u8], limits: &Limits, field: &str) -> Result<Value> {
    if let Some(offset) = depth_exceeded_at(bytes, limits.max_json_depth) {
        return Err(err!(
            TooDeep,
            "`{field}` is nested deeper than {} levels (at byte offset {offset})",
            limits.max_json_depth
        ));
    }
    let text = replace_lone_surrogate_escapes(bytes);
    serde_json::from_slice(&text).map_err(|e| {
        err!(
            BadJson,
            "`{field}` is not valid JSON: {} at line {} column {}",
            describe_json_error(&e),
            e.line(),
            e.column()
        )
    })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    // serde_json's Display appends " at line L column C"; keep only the cause.
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Turn decoded payload bytes into a payload, honouring `encoding` or, when it
/// is absent, sniffing: bytes that parse as JSON are JSON, others are raw.
pub fn decode_payload_bytes(
    bytes: Vec<u8>,
    encoding: Option<Encoding>,
    limits: &Limits,
    field: &str,
) -> Result<(Payload, Encoding)> {
    match encoding {
        Some(Encoding::Json) => Ok((Payload::Json(parse_json(&bytes, limits, field)?), Encoding::Json)),
        Some(Encoding::Raw) => Ok((Payload::Bytes(bytes), Encoding::Raw)),
        Some(Encoding::Cbor) => {
            let value = crate::envelope::cbor_to_value(&bytes, field)?;
            check_depth(&value, limits, field)?;
            Ok((Payload::Json(value), Encoding::Cbor))
        }
        Some(Encoding::MsgPack) => {
            let value = crate::envelope::msgpack_to_value(&bytes, field)?;
            check_depth(&value, limits, field)?;
            Ok((Payload::Json(value), Encoding::MsgPack))
        }
        None => {
            if looks_like_json(&bytes) {
                match parse_json(&bytes, limits, field) {
                    Ok(value) => return Ok((Payload::Json(value), Encoding::Json)),
                    // JSON-shaped but too deep is an attack or a bug, not raw bytes.
                    Err(e) if e.code == ErrorCode::TooDeep => return Err(e),
                    Err(_) => {}
                }
            }
            Ok((Payload::Bytes(bytes), Encoding::Raw))
        }
    }
}

/// Cheap pre-check before trying to parse: valid UTF-8 whose first
/// non-whitespace byte can start a JSON value.
fn looks_like_json(bytes: &[u8]) -> bool {
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    matches!(first, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') && std::str::from_utf8(bytes).is_ok()
}

fn check_depth(value: &Value, limits: &Limits, field: &str) -> Result<()> {
    let depth = value_depth(value);
    if depth > limits.max_json_depth {
        return Err(too_deep(field, depth, limits));
    }
    Ok(())
}

fn too_deep(field: &str, depth: usize, limits: &Limits) -> CoreError {
    err!(TooDeep, "`{field}` is nested {depth} levels deep; the limit is {}", limits.max_json_depth)
}

fn too_large(field: &str, len: usize, limits: &Limits) -> CoreError {
    err!(
        TooLarge,
        "`{field}` is {len} bytes; the limit is {} bytes (EngineOptions.maxEnvelopeBytes)",
        limits.max_envelope_bytes
    )
}

/// The first byte offset at which JSON text nests deeper than `max`, scanning
/// brackets outside strings. Linear, no recursion.
pub fn depth_exceeded_at(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Nesting depth of a JSON value (a scalar is 0, `[]` is 1), iteratively.
pub fn value_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|x| (x, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Decode base64 in the standard or URL-safe alphabet, padded or not,
/// ignoring ASCII whitespace. Errors name the field and the offset in the
/// original string.
pub fn decode_base64(text: &str, field: &str) -> Result<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);

    let raw = text.as_bytes();
    let has_whitespace = raw.iter().any(|b| b.is_ascii_whitespace());
    let compact: std::borrow::Cow<[u8]> = if has_whitespace {
        raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect::<Vec<u8>>().into()
    } else {
        raw.into()
    };
    // Pick the alphabet from the characters present; mixing both is an error.
    let standard_at = compact.iter().position(|&b| b == b'+' || b == b'/');
    let url_at = compact.iter().position(|&b| b == b'-' || b == b'_');
    let engine = match (standard_at, url_at) {
        (Some(s), Some(u)) => {
            let at = s.max(u);
            return Err(err!(
                BadBase64,
                "`{field}` mixes the standard (+/) and URL-safe (-_) base64 alphabets at offset {}",
                original_offset(raw, at, has_whitespace)
            ));
        }
        (None, Some(_)) => &URL_SAFE,
        _ => &STANDARD,
    };
    engine.decode(&compact).map_err(|e| {
        use base64::DecodeError::*;
        let describe = |what: &str, at: usize| {
            err!(BadBase64, "`{field}` is not valid base64: {what} at offset {}", original_offset(raw, at, has_whitespace))
        };
        match e {
            InvalidByte(at, b'=') => describe("padding '=' in the middle of the data", at),
            InvalidByte(at, byte) => describe(&format!("invalid character {:?}", byte as char), at),
            InvalidLastSymbol(at, byte) => {
                describe(&format!("last character {:?} has non-zero trailing bits", byte as char), at)
            }
            InvalidLength(len) => err!(
                BadBase64,
                "`{field}` is not valid base64: {len} data characters is not a valid length (one character too many or too few)"
            ),
            InvalidPadding => describe("wrong padding", compact.len().saturating_sub(1)),
        }
    })
}

/// Map an offset in the whitespace-stripped text back to the original text.
fn original_offset(raw: &[u8], compact_offset: usize, has_whitespace: bool) -> usize {
    if !has_whitespace {
        return compact_offset;
    }
    raw.iter()
        .enumerate()
        .filter(|(_, b)| !b.is_ascii_whitespace())
        .nth(compact_offset)
        .map(|(i, _)| i)
        .unwrap_or(raw.len())
}

/// "a string", "an object", ...: for error messages about JSON values.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decode CBOR bytes into a JSON value (byte strings become arrays of
/// numbers; maps need text keys).
pub fn cbor_to_value(bytes: &[u8], field: &str) -> Result<Value> {
    ciborium::de::from_reader_with_recursion_limit::<Value, _>(bytes, 256)
        .map_err(|e| err!(Decode, "`{field}` is not valid CBOR: {e}"))
}

/// Decode MessagePack bytes into a JSON value.
pub fn msgpack_to_value(bytes: &[u8], field: &str) -> Result<Value> {
    rmp_serde::from_slice::<Value>(bytes).map_err(|e| err!(Decode, "`{field}` is not valid MessagePack: {e}"))
}

/// Encode a JSON value as CBOR (used to wrap payloads for workers).
pub fn value_to_cbor(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out)
        .map_err(|e| CoreError::internal(format!("CBOR encoding failed: {e}")))?;
    Ok(out)
}

/// Encode a JSON value as MessagePack (maps keep their string keys).
pub fn value_to_msgpack(value: &Value) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| CoreError::internal(format!("MessagePack encoding failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lone_surrogate_escapes_become_replacement_characters() {
        let fix = |s: &str| String::from_utf8(replace_lone_surrogate_escapes(s.as_bytes()).into_owned()).unwrap();
        assert_eq!(fix(r#"{"a":"\ud800"}"#), r#"{"a":"\uFFFD"}"#);
        assert_eq!(
            fix(r#"["\udc00x","\ud83d\ude00","\\ud800",  "\ud800\ud800"]"#),
            r#"["\uFFFDx","\ud83d\ude00","\\ud800",  "\uFFFD\uFFFD"]"#
        );
        // Outside strings nothing is touched (it is not valid JSON anyway).
        assert_eq!(fix(r#"\ud800"#), r#"\ud800"#);
        assert!(matches!(replace_lone_surrogate_escapes(br#"{"a":"\u00e9"}"#), std::borrow::Cow::Borrowed(_)));
        let v = parse_json(br#"{"a":"x\ud800y"}"#, &Limits::default(), "t").unwrap();
        assert_eq!(v["a"], "x\u{FFFD}y");
    }

    fn limits() -> Limits {
        Limits::default()
    }

    fn decode(text: &str) -> Result<Envelope> {
        decode_bytes(text.as_bytes(), &limits())
    }

    #[test]
    fn base64_flavours_decode_to_the_same_bytes() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        use base64::Engine as _;
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let wrapped: String =
            std.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\r\n");
        for text in [std.clone(), std.trim_end_matches('=').to_string(), url, wrapped, format!("  {std}\n")] {
            assert_eq!(decode_base64(&text, "payload_b64").unwrap(), bytes, "{text:.20}");
        }
    }

    #[test]
    fn base64_errors_name_field_and_original_offset() {
        let e = decode_base64("ab\n\ncd$f", "payload_b64").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadBase64);
        assert!(e.message.contains("`payload_b64`") && e.message.contains("offset 6"), "{}", e.message);
        let e = decode_base64("ab=c", "payload_b64").unwrap_err();
        assert!(e.message.contains("padding"), "{}", e.message);
        let e = decode_base64("abcde", "payload_b64").unwrap_err();
        assert!(e.message.contains("length"), "{}", e.message);
        let e = decode_base64("a+b-", "payload_b64").unwrap_err();
        assert!(e.message.contains("mixes"), "{}", e.message);
        assert_eq!(decode_base64("", "payload_b64").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn payload_or_payload_b64_exactly_one() {
        let both = decode(r#"{"type":"echo","payload":{},"payload_b64":"e30="}"#).unwrap_err();
        assert_eq!(both.code, ErrorCode::Envelope);
        assert!(both.message.contains("both"));
        let neither = decode(r#"{"type":"echo"}"#).unwrap_err();
        assert!(neither.message.contains("neither"));
        let no_type = decode(r#"{"payload":1}"#).unwrap_err();
        assert!(no_type.message.contains("`type` is missing"));
        let not_obj = decode("[1]").unwrap_err();
        assert_eq!(not_obj.code, ErrorCode::Envelope);
    }

    #[test]
    fn sniffing_json_vs_raw() {
        let env = decode(r#"{"id":"a","type":"echo","payload_b64":"eyJ0ZXh0IjoiaGVsbG8gd29ybGQifQ=="}"#).unwrap();
        assert_eq!(env.payload, Payload::Json(json!({"text": "hello world"})));
        assert_eq!(env.encoding, Encoding::Json);
        assert_eq!(env.id.as_deref(), Some("a"));
        // "{" followed by garbage is raw, not an error.
        let env = decode(r#"{"type":"echo","payload_b64":"e2dhcmJhZ2U="}"#).unwrap();
        assert_eq!(env.payload, Payload::Bytes(b"{garbage".to_vec()));
        assert_eq!(env.encoding, Encoding::Raw);
        // Forcing JSON on non-JSON is E_BAD_JSON.
        let e = decode(r#"{"type":"echo","encoding":"json","payload_b64":"e2dhcmJhZ2U="}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
    }

    #[test]
    fn cbor_and_msgpack_round_trip() {
        let value = json!({"a": 1, "b": [true, null, "x"], "c": {"d": 2.5}});
        let cbor = value_to_cbor(&value).unwrap();
        assert_eq!(cbor_to_value(&cbor, "p").unwrap(), value);
        let mp = value_to_msgpack(&value).unwrap();
        assert_eq!(msgpack_to_value(&mp, "p").unwrap(), value);
        let (p, enc) = decode_payload_bytes(cbor, Some(Encoding::Cbor), &limits(), "payload_b64").unwrap();
        assert_eq!((p, enc), (Payload::Json(value), Encoding::Cbor));
        assert_eq!(msgpack_to_value(&[0xc1], "p").unwrap_err().code, ErrorCode::Decode);
    }

    #[test]
    fn limits_apply_before_parsing() {
        let small = Limits { max_envelope_bytes: 16, max_json_depth: 4, ..Limits::default() };
        let e = decode_bytes(b"{ this is not even json ...", &small).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_json(deep.as_bytes(), &limits(), "envelope").unwrap_err();
        assert_eq!(e.code, ErrorCode::TooDeep);
        // Brackets inside strings do not count.
        let s = format!("[\"{}\"]", "[".repeat(1000));
        assert!(parse_json(s.as_bytes(), &limits(), "envelope").is_ok());
        assert_eq!(depth_exceeded_at(b"[[[[[1]]]]]", 4), Some(4));
        assert_eq!(value_depth(&json!([[1], {"a": [[]]}])), 4);
    }
}
