//! The tensor API: Open Inference Protocol (KServe v2) requests and
//! responses, validated and run on the engine's encoder.
//!
//! Shapes follow the protocol's REST/JSON form (see `docs/infer.md`):
//!
//! - request `{id?, model_name?, parameters?, inputs: [{name, shape, datatype,
//!   data, parameters?}], outputs?: [{name, parameters?}]}`
//! - response `{model_name, model_version?, id, outputs: [{name, shape,
//!   datatype, data}]}`
//! - model metadata `{name, versions, platform, inputs, outputs}` with
//!   `{name, datatype, shape}` tensors, `-1` for variable dimensions.
//!
//! Tensor data is held as a typed enum ([`TensorData`]), never as
//! `serde_json::Value`s, so a `[32, 256, 384]` FP32 output is one `Vec<f32>`.
//! JSON only appears at the edges (`submit` payloads and worker replies).
//!
//! The encoder served as a model (named after its directory):
//! - inputs: `input_ids` + optional `attention_mask`, `token_type_ids`
//!   (INT64 or INT32, `[batch, seq]`), or `text` (BYTES, `[batch]`) which the
//!   engine tokenizes like `embed()` does;
//! - outputs: `last_hidden_state` (FP32 `[batch, seq, hidden]`),
//!   `sentence_embedding` (FP32 `[batch, hidden]`, pooled and normalized as
//!   the model says), and for `text` inputs `input_ids` / `attention_mask`
//!   (INT64 `[batch, seq]`, the tokenization that was run).
//!
//! Padded `[batch, seq]` inputs are unpacked with `attention_mask` into the
//! backend's packed batch (so padding costs nothing and cannot change the
//! numbers), and outputs are re-padded. Padded positions of
//! `last_hidden_state` are **0.0**: a padded encoder (HF, sentence-transformers)
//! writes values there that depend on the padding length and mean nothing,
//! so callers must mask them either way; zeros make that explicit.
//!
//! Validation runs completely before anything is queued: every failure is
//! `E_INVALID_ARG` naming the input (or output) and the rule it broke.

mod protocol;
mod run;

pub use protocol::*;
pub use run::*;
