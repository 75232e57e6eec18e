//! `tokenizer.json` through the `tokenizers` crate, set up the way
//! sentence-transformers uses it: no padding (batches are packed), special
//! tokens added, truncation to `max_seq_length` (longest-first, from the
//! right), whatever truncation/padding the file itself declares (the test
//! model's file says "pad to 128", which sentence-transformers overrides).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::err;
use crate::error::Result;

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// The model's tokenizer with its sequence limit.
pub struct TextTokenizer {
    /// Truncates to `max_len` (the usual path: one encode).
    truncating: Tokenizer,
    /// No truncation: counts the full length for `E_TOO_LONG` messages.
    plain: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Load `path` (a `tokenizer.json`) for sequences of at most `max_len`
    /// tokens, special tokens included.
    pub fn load(path: &Path, max_len: usize) -> Result<TextTokenizer> {
        let mut plain =
            Tokenizer::from_file(path).map_err(|e| err!(Model, "{}: cannot load tokenizer: {e}", path.display()))?;
        plain.with_padding(None);
        plain.with_truncation(None).map_err(|e| err!(Model, "{}: cannot disable truncation: {e}", path.display()))?;
        let mut truncating = plain.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err!(Model, "{}: cannot set truncation to {max_len}: {e}", path.display()))?;
        Ok(TextTokenizer { truncating, plain, max_len })
    }

    /// Tokens per sequence, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenize `text` (`index` is its position in the call, for messages).
    /// Too long: truncated when `truncate`, else `E_TOO_LONG`.
    pub fn encode(&self, text: &str, index: usize, truncate: bool) -> Result<Encoded> {
        let enc = self
            .truncating
            .encode_fast(text, true)
            .map_err(|e| err!(InvalidArg, "texts[{index}]: tokenizer failed: {e}"))?;
        if !truncate && !enc.get_overflowing().is_empty() {
            let full = self
                .plain
                .encode_fast(text, true)
                .map(|e| e.get_ids().len())
                .map_err(|e| err!(InvalidArg, "texts[{index}]: tokenizer failed: {e}"))?;
            return Err(err!(TooLong, "texts[{index}] has {full} tokens, max {}", self.max_len));
        }
        Ok(Encoded { ids: enc.get_ids().to_vec(), type_ids: enc.get_type_ids().to_vec() })
    }

    /// Token count of `text` without truncation (special tokens included).
    pub fn count(&self, text: &str) -> Result<usize> {
        self.plain
            .encode_fast(text, true)
            .map(|e| e.get_ids().len())
            .map_err(|e| err!(InvalidArg, "tokenizer failed: {e}"))
    }
}
