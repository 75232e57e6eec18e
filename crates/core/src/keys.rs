//! Option keys: the unknown-key rule every options object and payload
//! follows (`E_INVALID_ARG` naming the key and the nearest valid name). A
//! leaf, so that `options` and the modules it configures can both use it.

use crate::err;
use crate::error::Result;

/// Reject the first key not in `known`, naming it, the nearest valid name
/// when one is close, and the valid names.
pub fn check_keys<'a, S: AsRef<str>>(keys: impl IntoIterator<Item = &'a str>, known: &[S], what: &str) -> Result<()> {
    for key in keys {
        if known.iter().any(|k| k.as_ref() == key) {
            continue;
        }
        let hint = nearest(key, known).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default();
        let all: Vec<&str> = known.iter().map(|k| k.as_ref()).collect();
        return Err(err!(InvalidArg, "`{what}.{key}` is not an option{hint}; valid keys: {}", all.join(", ")));
    }
    Ok(())
}

/// The valid name closest to `key` by edit distance (case-insensitive), if
/// within a third of its length (at least 2 edits).
pub fn nearest<'k, S: AsRef<str>>(key: &str, known: &'k [S]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    let budget = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(&key, &k.as_ref().to_ascii_lowercase()), k.as_ref()))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
