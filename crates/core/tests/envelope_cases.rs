//! Runs the language-neutral envelope cases (tests/envelope_cases.json at the
//! repo root) against `cuda_engine_core::envelope`: the same file the Go
//! package's tests read (go/cudaengine/envelope_test.go), so both decoders
//! give the same outcome and code for every input.

use base64::Engine as _;
use cuda_engine_core::envelope::{decode_base64, decode_bytes, Limits, Payload};
use serde_json::Value;

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/envelope_cases.json");

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(CASES).unwrap()).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The case's input bytes: `input`, `input_b64` or `input_parts`.
fn input(case: &Value) -> Vec<u8> {
    if let Some(s) = case["input"].as_str() {
        return s.as_bytes().to_vec();
    }
    if let Some(s) = case["input_b64"].as_str() {
        return b64(s);
    }
    let mut out = Vec::new();
    for part in case["input_parts"].as_array().expect("input, input_b64 or input_parts") {
        let text = part[0].as_str().unwrap();
        for _ in 0..part[1].as_u64().unwrap() {
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

fn limits(case: &Value) -> Limits {
    let mut l = Limits::default();
    if let Some(n) = case["limits"]["max_envelope_bytes"].as_u64() {
        l.max_envelope_bytes = n as usize;
    }
    if let Some(n) = case["limits"]["max_json_depth"].as_u64() {
        l.max_json_depth = n as usize;
    }
    l
}

/// Compare a failure with `{error, message_contains}`.
fn check_error(expect: &Value, code: &str, message: &str) -> Result<(), String> {
    let want = expect["error"].as_str().unwrap();
    if code != want {
        return Err(format!("got {code}: {message}, want {want}"));
    }
    for part in expect["message_contains"].as_array().unwrap() {
        let part = part.as_str().unwrap();
        if !message.contains(part) {
            return Err(format!("message {message:?} lacks {part:?}"));
        }
    }
    Ok(())
}

fn run_base64(case: &Value) -> Result<(), String> {
    let text = String::from_utf8(input(case)).unwrap();
    let field = case["field"].as_str().unwrap_or("payload_b64");
    let expect = &case["expect"];
    match (decode_base64(&text, field), expect.get("error")) {
        (Ok(bytes), None) => {
            let want = b64(expect["bytes_b64"].as_str().unwrap());
            if bytes != want {
                return Err(format!("decoded {} bytes, want {} bytes", bytes.len(), want.len()));
            }
            Ok(())
        }
        (Ok(bytes), Some(_)) => Err(format!("expected an error, decoded {} bytes", bytes.len())),
        (Err(e), None) => Err(format!("expected bytes, got {e}")),
        (Err(e), Some(_)) => check_error(expect, e.code.as_str(), &e.message),
    }
}

fn run_envelope(case: &Value) -> Result<(), String> {
    let expect = &case["expect"];
    match (decode_bytes(&input(case), &limits(case)), expect.get("error")) {
        (Ok(env), None) => {
            let want_id = expect["id"].as_str();
            if env.id.as_deref() != want_id {
                return Err(format!("id {:?}, want {want_id:?}", env.id));
            }
            if env.job_type != expect["type"].as_str().unwrap() {
                return Err(format!("type {:?}, want {}", env.job_type, expect["type"]));
            }
            if env.encoding.as_str() != expect["encoding"].as_str().unwrap() {
                return Err(format!("encoding {}, want {}", env.encoding.as_str(), expect["encoding"]));
            }
            match (&env.payload, expect.get("payload"), expect["bytes_b64"].as_str()) {
                (Payload::Json(v), Some(want), None) if v == want => Ok(()),
                (Payload::Bytes(b), None, Some(want)) if *b == b64(want) => Ok(()),
                (got, _, _) => Err(format!("payload {got:?}, want {expect}")),
            }
        }
        (Ok(env), Some(_)) => Err(format!("expected an error, decoded {env:?}")),
        (Err(e), None) => Err(format!("expected an envelope, got {e}")),
        (Err(e), Some(_)) => check_error(expect, e.code.as_str(), &e.message),
    }
}

fn run_all(kind: &str, run: fn(&Value) -> Result<(), String>) {
    let doc = cases();
    let list = doc[kind].as_array().unwrap();
    assert!(list.len() >= 20, "{kind} lost cases");
    let failures: Vec<String> =
        list.iter().filter_map(|c| run(c).err().map(|why| format!("{}: {why}", c["name"]))).collect();
    assert!(failures.is_empty(), "{} of {} {kind} failed:\n{}", failures.len(), list.len(), failures.join("\n"));
}

#[test]
fn shared_base64_cases() {
    run_all("base64_cases", run_base64);
}

#[test]
fn shared_envelope_cases() {
    run_all("envelope_cases", run_envelope);
}
