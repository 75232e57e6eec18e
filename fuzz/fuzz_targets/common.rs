//! Shared checks for the fuzz targets (included with `#[path]`).
#![allow(dead_code)]

use cuda_engine_core::error::{CoreError, ErrorCode};

/// An error is a table code (one `errorCodes()` lists, whose string parses
/// back to itself), one of `allowed`, and carries a message.
pub fn check_error(e: &CoreError, allowed: &[ErrorCode], what: &str) {
    assert!(ErrorCode::ALL.contains(&e.code), "{what}: code {:?} is not in the table", e.code);
    assert_eq!(ErrorCode::parse(e.code.as_str()), Some(e.code), "{what}: code string does not parse back");
    assert!(allowed.contains(&e.code), "{what}: unexpected code {} ({})", e.code.as_str(), e.message);
    assert!(!e.message.is_empty(), "{what}: {} without a message", e.code.as_str());
    assert_ne!(e.code, ErrorCode::Internal, "{what}: E_INTERNAL is reserved for engine bugs: {}", e.message);
}

/// The largest number of bytes `n` base64 characters can carry.
pub fn b64_bound(n: usize) -> usize {
    n / 4 * 3 + (n % 4) * 3 / 4
}

/// Non-whitespace bytes of `s` (what base64 decoding sees).
pub fn non_ws(s: &[u8]) -> usize {
    s.iter().filter(|b| !b.is_ascii_whitespace()).count()
}
