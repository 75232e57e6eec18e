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
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_envelope_bytes: 64 * 1024 * 1024, max_json_depth: 64 }
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
