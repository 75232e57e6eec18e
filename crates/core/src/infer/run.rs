//! Running Open Inference Protocol requests on the engine's encoder:
//! validation against the model (names, datatypes, shapes, token ids,
//! lengths) before anything is queued, then the forward pass through the
//! embedder's batching queue and the response tensors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::protocol::*;
use crate::embedder::{l2_normalize, Embedder};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::model::{Encoded, TextTokenizer};

/// Input names of the encoder model.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
pub const TEXT: &str = "text";
/// Output names of the encoder model.
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";
pub const SENTENCE_EMBEDDING: &str = "sentence_embedding";

const INPUT_NAMES: [&str; 4] = [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS, TEXT];
const OUTPUT_NAMES: [&str; 4] = [LAST_HIDDEN_STATE, SENTENCE_EMBEDDING, INPUT_IDS, ATTENTION_MASK];

/// The metadata of the engine's encoder.
pub fn model_metadata(embedder: &Embedder) -> ModelMetadata {
    let info = embedder.info();
    let h = info.dims as i64;
    let t = |name: &str, dt: DataType, shape: &[i64]| TensorMetadata {
        name: name.into(),
        datatype: dt.as_str().into(),
        shape: shape.to_vec(),
    };
    let mut parameters = Map::new();
    parameters.insert("max_sequence_length".into(), Value::from(info.max_tokens));
    parameters.insert("vocab_size".into(), Value::from(embedder.config().bert.vocab_size));
    parameters.insert("hidden_size".into(), Value::from(info.dims));
    parameters.insert("pooling".into(), Value::from(info.pooling.clone()));
    parameters.insert("normalize".into(), Value::from(info.normalize));
    parameters.insert("backend".into(), Value::from(info.backend.clone()));
    // The protocol's metadata has one datatype per tensor; these inputs also
    // take INT32, and `text` replaces the id inputs.
    parameters.insert("input_ids_datatypes".into(), serde_json::json!(["INT64", "INT32"]));
    ModelMetadata {
        name: info.name,
        versions: vec!["1".into()],
        platform: "cuda-engine".into(),
        inputs: vec![
            t(INPUT_IDS, DataType::Int64, &[-1, -1]),
            t(ATTENTION_MASK, DataType::Int64, &[-1, -1]),
            t(TOKEN_TYPE_IDS, DataType::Int64, &[-1, -1]),
            t(TEXT, DataType::Bytes, &[-1]),
        ],
        outputs: vec![
            t(LAST_HIDDEN_STATE, DataType::Fp32, &[-1, -1, h]),
            t(SENTENCE_EMBEDDING, DataType::Fp32, &[-1, h]),
            t(INPUT_IDS, DataType::Int64, &[-1, -1]),
            t(ATTENTION_MASK, DataType::Int64, &[-1, -1]),
        ],
        parameters,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    LastHidden,
    SentenceEmbedding,
    InputIds,
    AttentionMask,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::LastHidden => LAST_HIDDEN_STATE,
            Output::SentenceEmbedding => SENTENCE_EMBEDDING,
            Output::InputIds => INPUT_IDS,
            Output::AttentionMask => ATTENTION_MASK,
        }
    }
}

/// A validated request, ready to queue.
#[derive(Debug)]
struct Plan {
    /// One packed sequence per batch row (padding removed).
    seqs: Vec<Encoded>,
    /// The `seq` dimension of `[batch, seq]` outputs: the input's padded
    /// length, or the longest tokenized text.
    seq_len: usize,
    outputs: Vec<Output>,
    normalize: bool,
}

/// What validation needs to know about the model.
struct ModelLimits<'a> {
    name: &'a str,
    vocab_size: usize,
    type_vocab_size: usize,
    max_tokens: usize,
    normalize: bool,
}

/// Integer ids of an INT64/INT32 tensor, after its datatype was checked.
fn int_values(t: &InferTensor) -> Vec<i64> {
    match &t.data {
        TensorData::Int64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|&x| x as i64).collect(),
        _ => Vec::new(),
    }
}

fn check_dtype(t: &InferTensor, allowed: &[DataType]) -> Result<()> {
    if allowed.contains(&t.datatype()) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|d| d.as_str()).collect();
    Err(err!(InvalidArg, "input `{}`: datatype must be {}, got {}", t.name, names.join(" or "), t.datatype().as_str()))
}

fn validate(req: &InferRequest, m: &ModelLimits, tok: &TextTokenizer) -> Result<Plan> {
    if req.inputs.is_empty() {
        return Err(err!(
            InvalidArg,
            "`inputs` is empty: give `input_ids` (INT64/INT32 [batch, seq]) or `text` (BYTES [batch])"
        ));
    }
    // Generic rules first (shape vs data), then the model's.
    let mut by_name: [Option<&InferTensor>; 4] = [None; 4];
    for t in &req.inputs {
        t.check_shape(&format!("input `{}`", t.name))?;
        let Some(slot) = INPUT_NAMES.iter().position(|&n| n == t.name) else {
            return Err(err!(
                InvalidArg,
                "input `{}` is not an input of model `{}` (inputs: {})",
                t.name,
                m.name,
                INPUT_NAMES.join(", ")
            ));
        };
        if by_name[slot].replace(t).is_some() {
            return Err(err!(InvalidArg, "input `{}` is given twice", t.name));
        }
    }
    let [ids, mask, types, text] = by_name;
    let truncate = req.bool_param("truncate")?.unwrap_or(true);
    let normalize = req.bool_param("normalize")?.unwrap_or(m.normalize);

    let (seqs, seq_len, from_text) = match (text, ids) {
        (Some(_), _) if ids.or(mask).or(types).is_some() => {
            let other = ids.or(mask).or(types).map_or("", |t| t.name.as_str());
            return Err(err!(InvalidArg, "input `text` cannot be combined with `{other}`: give text or token ids"));
        }
        (Some(text), _) => {
            check_dtype(text, &[DataType::Bytes])?;
            let batch = match text.shape[..] {
                [b] | [b, 1] => b,
                _ => {
                    return Err(err!(
                        InvalidArg,
                        "input `text`: shape must be [batch] (or [batch, 1]), got {:?}",
                        text.shape
                    ))
                }
            };
            if batch == 0 {
                return Err(err!(InvalidArg, "input `text`: the batch is empty (shape {:?})", text.shape));
            }
            let TensorData::Bytes(items) = &text.data else { unreachable!("dtype checked") };
            let encode = |(i, b): (usize, &Vec<u8>)| -> Result<Encoded> {
                let s = std::str::from_utf8(b)
                    .map_err(|e| err!(InvalidArg, "input `text`: element {i} is not valid UTF-8 ({e})"))?;
                tok.encode(s, i, truncate).map_err(|e| {
                    let why = if e.code == ErrorCode::TooLong { " (parameters.truncate is false)" } else { "" };
                    err!(InvalidArg, "input `text`: element {i}: {}{why}", e.message)
                })
            };
            // Many texts tokenize on every core, as `embed()`'s do (one
            // thread made a 512-text infer 4x slower than the same embed on
            // the H200); the first failing element in order is the error.
            let encoded: Vec<Result<Encoded>> = if items.len() < PAR_TOKENIZE_MIN {
                items.iter().enumerate().map(encode).collect()
            } else {
                use rayon::prelude::*;
                items.par_iter().enumerate().with_min_len(8).map(encode).collect()
            };
            let seqs = encoded.into_iter().collect::<Result<Vec<_>>>()?;
            let seq_len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
            (seqs, seq_len, true)
        }
        (None, None) => {
            let given = mask.or(types).map_or(String::new(), |t| format!(" (got `{}` alone)", t.name));
            return Err(err!(InvalidArg, "input `input_ids` is required unless `text` is given{given}"));
        }
        (None, Some(ids)) => {
            let int = [DataType::Int64, DataType::Int32];
            check_dtype(ids, &int)?;
            let (batch, seq) = match ids.shape[..] {
                [b, s] => (b, s),
                _ => {
                    return Err(err!(InvalidArg, "input `input_ids`: shape must be [batch, seq], got {:?}", ids.shape))
                }
            };
            if batch == 0 || seq == 0 {
                return Err(err!(InvalidArg, "input `input_ids`: shape {:?} is empty", ids.shape));
            }
            for t in [mask, types].into_iter().flatten() {
                check_dtype(t, &int)?;
                if t.shape != ids.shape {
                    return Err(err!(
                        InvalidArg,
                        "input `{}`: shape {:?} must equal input_ids' shape {:?}",
                        t.name,
                        t.shape,
                        ids.shape
                    ));
                }
            }
            let id_vals = int_values(ids);
            if let Some(i) = id_vals.iter().position(|&x| x < 0 || x as u64 >= m.vocab_size as u64) {
                return Err(err!(
                    InvalidArg,
                    "input `input_ids`: id {} at [{}, {}] is not in 0..{} (the vocabulary size)",
                    id_vals[i],
                    i / seq,
                    i % seq,
                    m.vocab_size
                ));
            }
            // Lengths from the mask: each row must be 1s then 0s (right
            // padding). Positions are 0..len in the packed batch, which
            // equals a padded encoder's only for right padding; a left-padded
            // row would silently get different numbers, so it is refused.
            let lens: Vec<usize> = match mask {
                None => vec![seq; batch],
                Some(mask) => {
                    let mv = int_values(mask);
                    let mut lens = Vec::with_capacity(batch);
                    for (b, row) in mv.chunks(seq).enumerate() {
                        if let Some(s) = row.iter().position(|&x| x != 0 && x != 1) {
                            return Err(err!(
                                InvalidArg,
                                "input `attention_mask`: value {} at [{b}, {s}] must be 0 or 1",
                                row[s]
                            ));
                        }
                        let len = row.iter().take_while(|&&x| x == 1).count();
                        if let Some(s) = row[len..].iter().position(|&x| x == 1) {
                            return Err(err!(
                                InvalidArg,
                                "input `attention_mask`: row {b} has a 1 at position {} after padding; rows must be 1s then 0s (right padding)",
                                len + s
                            ));
                        }
                        if len == 0 {
                            return Err(err!(InvalidArg, "input `attention_mask`: row {b} is all 0 (no tokens)"));
                        }
                        lens.push(len);
                    }
                    lens
                }
            };
            if let Some(b) = lens.iter().position(|&l| l > m.max_tokens) {
                return Err(err!(
                    InvalidArg,
                    "input `input_ids`: sequence {b} has {} tokens, over the model's limit of {} (max_sequence_length)",
                    lens[b],
                    m.max_tokens
                ));
            }
            let type_vals = types.map(int_values);
            if let Some(tv) = &type_vals {
                // Only real (unmasked) positions reach the model.
                for (b, &len) in lens.iter().enumerate() {
                    if let Some(s) =
                        tv[b * seq..b * seq + len].iter().position(|&x| x < 0 || x as u64 >= m.type_vocab_size as u64)
                    {
                        return Err(err!(
                            InvalidArg,
                            "input `token_type_ids`: value {} at [{b}, {s}] is not in 0..{} (type_vocab_size)",
                            tv[b * seq + s],
                            m.type_vocab_size
                        ));
                    }
                }
            }
            let seqs = lens
                .iter()
                .enumerate()
                .map(|(b, &len)| Encoded {
                    ids: id_vals[b * seq..b * seq + len].iter().map(|&x| x as u32).collect(),
                    type_ids: match &type_vals {
                        Some(tv) => tv[b * seq..b * seq + len].iter().map(|&x| x as u32).collect(),
                        None => vec![0; len],
                    },
                })
                .collect();
            (seqs, seq, false)
        }
    };

    let outputs = match &req.outputs {
        None => {
            let mut o = vec![Output::LastHidden, Output::SentenceEmbedding];
            if from_text {
                o.extend([Output::InputIds, Output::AttentionMask]);
            }
            o
        }
        Some(wanted) => {
            let mut o = Vec::with_capacity(wanted.len());
            for w in wanted {
                let out = match w.name.as_str() {
                    LAST_HIDDEN_STATE => Output::LastHidden,
                    SENTENCE_EMBEDDING => Output::SentenceEmbedding,
                    INPUT_IDS if from_text => Output::InputIds,
                    ATTENTION_MASK if from_text => Output::AttentionMask,
                    INPUT_IDS | ATTENTION_MASK => {
                        return Err(err!(
                            InvalidArg,
                            "output `{}` is only produced for `text` inputs (it would echo the input)",
                            w.name
                        ))
                    }
                    other => {
                        return Err(err!(
                            InvalidArg,
                            "output `{other}` is not an output of model `{}` (outputs: {})",
                            m.name,
                            OUTPUT_NAMES.join(", ")
                        ))
                    }
                };
                if o.contains(&out) {
                    return Err(err!(InvalidArg, "output `{}` is requested twice", w.name));
                }
                o.push(out);
            }
            o
        }
    };
    Ok(Plan { seqs, seq_len, outputs, normalize })
}

/// Requests with more elements than this are validated (and tokenized) on a
/// blocking thread rather than the async task.
const INLINE_VALIDATE_ELEMS: usize = 16_384;
/// Text inputs with at least this many elements tokenize in parallel.
const PAR_TOKENIZE_MIN: usize = 32;
const INLINE_TEXTS: usize = 8;

/// A process-unique id for responses to requests that carried none.
fn next_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("infer-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Run `req` on the engine's encoder: validate everything, queue the
/// sequences through the batcher (with the last hidden state only when
/// asked for), then assemble the padded outputs. The caller (the engine)
/// has already checked that `req.model_name` names this model.
pub async fn run(embedder: &Arc<Embedder>, req: InferRequest, cancel: CancellationToken) -> Result<InferResponse> {
    let elems: usize = req.inputs.iter().map(|t| t.data.len()).sum();
    let texts = req.inputs.iter().find(|t| t.name == TEXT).map_or(0, |t| t.data.len());
    let (plan, req) = if elems <= INLINE_VALIDATE_ELEMS && texts <= INLINE_TEXTS {
        (plan_for(embedder, &req)?, req)
    } else {
        let e = embedder.clone();
        let job = tokio::task::spawn_blocking(move || plan_for(&e, &req).map(|p| (p, req)));
        tokio::select! {
            r = job => r.map_err(|e| err!(Internal, "inference validation task failed: {e}"))??,
            _ = cancel.cancelled() => return Err(CoreError::cancelled()),
        }
    };
    let want_hidden = plan.outputs.contains(&Output::LastHidden);
    let batch = plan.seqs.len();
    let lens: Vec<usize> = plan.seqs.iter().map(|s| s.ids.len()).collect();
    // Token ids are needed after the move into the queue only for text
    // inputs' `input_ids` output.
    let ids_out: Option<Vec<i64>> = plan.outputs.contains(&Output::InputIds).then(|| {
        let mut v = vec![0i64; batch * plan.seq_len];
        for (b, s) in plan.seqs.iter().enumerate() {
            for (j, &id) in s.ids.iter().enumerate() {
                v[b * plan.seq_len + j] = id as i64;
            }
        }
        v
    });
    let (mut pooled, hidden) = embedder.forward_tensors(plan.seqs, want_hidden, cancel).await?;
    let h = embedder.info().dims;
    let mut outputs = Vec::with_capacity(plan.outputs.len());
    for out in &plan.outputs {
        let (shape, data) = match out {
            Output::SentenceEmbedding => {
                let mut flat = Vec::with_capacity(batch * h);
                for v in &mut pooled {
                    if plan.normalize {
                        l2_normalize(v);
                    }
                    flat.extend_from_slice(v);
                }
                (vec![batch, h], TensorData::Fp32(flat))
            }
            Output::LastHidden => {
                // Re-pad: real tokens at 0..len of each row, zeros after.
                let mut flat = vec![0f32; batch * plan.seq_len * h];
                for (b, rows) in hidden.iter().enumerate() {
                    if rows.len() != lens[b] * h {
                        return Err(err!(
                            Internal,
                            "the backend returned {} hidden values for a {}-token sequence",
                            rows.len(),
                            lens[b]
                        ));
                    }
                    flat[b * plan.seq_len * h..][..rows.len()].copy_from_slice(rows);
                }
                (vec![batch, plan.seq_len, h], TensorData::Fp32(flat))
            }
            Output::InputIds => (vec![batch, plan.seq_len], TensorData::Int64(ids_out.clone().unwrap_or_default())),
            Output::AttentionMask => {
                let mut v = vec![0i64; batch * plan.seq_len];
                for (b, &len) in lens.iter().enumerate() {
                    v[b * plan.seq_len..][..len].fill(1);
                }
                (vec![batch, plan.seq_len], TensorData::Int64(v))
            }
        };
        outputs.push(InferTensor::new(out.name(), shape, data));
    }
    Ok(InferResponse {
        model_name: embedder.info().name,
        model_version: None,
        id: req.id.unwrap_or_else(next_id),
        outputs,
    })
}

fn plan_for(embedder: &Embedder, req: &InferRequest) -> Result<Plan> {
    let info = embedder.info();
    let limits = ModelLimits {
        name: &info.name,
        vocab_size: embedder.config().bert.vocab_size,
        type_vocab_size: embedder.config().bert.type_vocab_size,
        max_tokens: info.max_tokens,
        normalize: info.normalize,
    };
    validate(req, &limits, embedder.tokenizer())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatypes_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("fp32"), None);
    }

    #[test]
    fn json_data_nested_and_flat() {
        let nested = serde_json::json!([[1, 2], [3, 4]]);
        assert_eq!(TensorData::from_json(DataType::Int64, &nested, "x").unwrap(), TensorData::Int64(vec![1, 2, 3, 4]));
        let e = TensorData::from_json(DataType::Int8, &serde_json::json!([1, 300]), "input `x`").unwrap_err();
        assert!(e.message.contains("input `x`") && e.message.contains("out of range"), "{e}");
        let e = TensorData::from_json(DataType::Int32, &serde_json::json!([1.5]), "input `x`").unwrap_err();
        assert!(e.message.contains("data[0]"), "{e}");
        let f16 = TensorData::from_json(DataType::Fp16, &serde_json::json!([1.0, -2.0]), "x").unwrap();
        assert_eq!(f16, TensorData::Fp16(vec![0x3c00, 0xc000]));
        assert_eq!(f16.to_json(), serde_json::json!([1.0, -2.0]));
    }

    #[test]
    fn le_bytes_need_whole_elements() {
        let e = TensorData::from_le_bytes(DataType::Fp16, &[0, 60, 0], "input `h`").unwrap_err();
        assert!(e.message.contains("input `h`") && e.message.contains("multiple of 2"), "{e}");
        assert_eq!(TensorData::from_le_bytes(DataType::Fp16, &[0, 0x3c], "h").unwrap(), TensorData::Fp16(vec![0x3c00]));
        assert!(TensorData::from_le_bytes(DataType::Bool, &[0, 2], "b").is_err());
    }

    #[test]
    fn shape_must_match_data() {
        let t = InferTensor::new("x", vec![2, 3], TensorData::Int64(vec![0; 5]));
        let e = t.check_shape("input `x`").unwrap_err();
        assert!(e.message.contains("[2, 3] holds 6 elements but data has 5"), "{e}");
        let t = InferTensor::new("x", vec![usize::MAX, 2], TensorData::Int64(vec![]));
        assert!(t.check_shape("x").is_err());
    }
}
