//! Model configuration read from a sentence-transformers directory:
//! `config.json` (the BERT encoder), `modules.json` + `1_Pooling/config.json`
//! (pooling and normalization), `sentence_bert_config.json` (max tokens).
//!
//! Every missing or malformed file is `E_MODEL` naming the file and field.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::err;
use crate::error::Result;

/// The feed-forward activation of the encoder (`hidden_act` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `"gelu"`: exact GELU, `0.5·x·(1 + erf(x/√2))` (BERT, MiniLM).
    GeluErf,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`: the tanh approximation.
    GeluTanh,
    /// `"relu"`.
    Relu,
}

/// The BERT encoder hyper-parameters (`config.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub hidden_act: Activation,
}

impl BertConfig {
    /// `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How token states become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of all token states of the sequence (special tokens included, as
    /// sentence-transformers does: its attention mask covers them).
    Mean,
    /// The state of the first token (`[CLS]`).
    Cls,
    /// Element-wise max over the sequence's tokens.
    Max,
    /// Sum divided by √(token count) (`pooling_mode_mean_sqrt_len_tokens`).
    MeanSqrtLen,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// Everything about the model except the weights and the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub bert: BertConfig,
    pub pooling: Pooling,
    /// The model ends with a `Normalize` module: embeddings are L2-normalized
    /// unless a call asks otherwise.
    pub normalize: bool,
    /// Tokens per sequence, `[CLS]`/`[SEP]` included (`max_seq_length`).
    pub max_seq_length: usize,
}

pub(crate) fn read_json(dir: &Path, rel: &str) -> Result<Value> {
    let path: PathBuf = dir.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| err!(Model, "cannot read {}: {e}", path.display()).with_cause(e))?;
    serde_json::from_slice(&bytes).map_err(|e| err!(Model, "{} is not valid JSON: {e}", path.display()))
}

fn field<'a>(v: &'a Value, file: &str, key: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| err!(Model, "{file}: missing field `{key}`"))
}

fn usize_field(v: &Value, file: &str, key: &str) -> Result<usize> {
    let f = field(v, file, key)?;
    f.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| err!(Model, "{file}: field `{key}` must be a positive integer, got {f}"))
}

fn bool_field(v: &Value, file: &str, key: &str) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(err!(Model, "{file}: field `{key}` must be a boolean, got {other}")),
    }
}

impl BertConfig {
    /// Parse `config.json` (already read as JSON). Only BERT-family encoders
    /// with absolute positions are supported; anything else is `E_MODEL`
    /// saying so.
    pub fn from_json(v: &Value) -> Result<BertConfig> {
        const F: &str = "config.json";
        if !v.is_object() {
            return Err(err!(Model, "{F}: expected a JSON object"));
        }
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = v
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_bert = model_type == "bert" || (model_type.is_empty() && archs.iter().any(|a| a.starts_with("Bert")));
        if !is_bert {
            let what = if model_type.is_empty() { archs.join(",") } else { model_type.to_string() };
            return Err(err!(
                Model,
                "{F}: unsupported architecture `{what}` (field `model_type`): only BERT encoders (model_type \"bert\") are supported"
            ));
        }
        if let Some(p) = v.get("position_embedding_type").and_then(Value::as_str) {
            if p != "absolute" {
                return Err(err!(Model, "{F}: unsupported `position_embedding_type` \"{p}\" (only \"absolute\")"));
            }
        }
        let act = match field(v, F, "hidden_act")?.as_str() {
            Some("gelu") => Activation::GeluErf,
            Some("gelu_new") | Some("gelu_pytorch_tanh") | Some("gelu_fast") => Activation::GeluTanh,
            Some("relu") => Activation::Relu,
            other => {
                return Err(err!(
                    Model,
                    "{F}: unsupported `hidden_act` {other:?} (gelu, gelu_new, gelu_pytorch_tanh, relu)"
                ))
            }
        };
        let eps = match v.get("layer_norm_eps") {
            None => 1e-12,
            Some(x) => x
                .as_f64()
                .filter(|e| *e > 0.0 && e.is_finite())
                .ok_or_else(|| err!(Model, "{F}: field `layer_norm_eps` must be a positive number, got {x}"))?,
        } as f32;
        let cfg = BertConfig {
            vocab_size: usize_field(v, F, "vocab_size")?,
            hidden_size: usize_field(v, F, "hidden_size")?,
            num_hidden_layers: usize_field(v, F, "num_hidden_layers")?,
            num_attention_heads: usize_field(v, F, "num_attention_heads")?,
            intermediate_size: usize_field(v, F, "intermediate_size")?,
            max_position_embeddings: usize_field(v, F, "max_position_embeddings")?,
            type_vocab_size: match v.get("type_vocab_size") {
                None => 2,
                Some(_) => usize_field(v, F, "type_vocab_size")?,
            },
            layer_norm_eps: eps,
            hidden_act: act,
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(err!(
                Model,
                "{F}: `hidden_size` {} is not a multiple of `num_attention_heads` {}",
                cfg.hidden_size,
                cfg.num_attention_heads
            ));
        }
        Ok(cfg)
    }
}

impl ModelConfig {
    /// Read `config.json`, `modules.json`, the pooling module's
    /// `config.json` and `sentence_bert_config.json` from `dir`.
    ///
    /// A `Normalize` module in `modules.json` means normalize, whether or not
    /// its folder exists (sentence-transformers does not need one).
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let bert = BertConfig::from_json(&read_json(dir, "config.json")?)?;

        let modules = read_json(dir, "modules.json")?;
        let list = modules.as_array().ok_or_else(|| err!(Model, "modules.json: expected a JSON array of modules"))?;
        let mut pooling_path: Option<String> = None;
        let mut normalize = false;
        let mut has_transformer = false;
        for (i, m) in list.iter().enumerate() {
            let ty = m
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| err!(Model, "modules.json: [{i}] missing string field `type`"))?;
            let short = ty.rsplit('.').next().unwrap_or(ty);
            match short {
                "Transformer" => has_transformer = true,
                "Pooling" => {
                    let p = m
                        .get("path")
                        .and_then(Value::as_str)
                        .ok_or_else(|| err!(Model, "modules.json: [{i}] (Pooling) missing string field `path`"))?;
                    pooling_path = Some(p.to_string());
                }
                "Normalize" => normalize = true,
                other => {
                    return Err(err!(
                        Model,
                        "modules.json: [{i}] unsupported module type `{other}` (Transformer, Pooling, Normalize)"
                    ))
                }
            }
        }
        if !has_transformer {
            return Err(err!(Model, "modules.json: no `sentence_transformers.models.Transformer` module"));
        }
        let pooling_path = pooling_path.ok_or_else(|| err!(Model, "modules.json: no `Pooling` module"))?;
        let pool_rel = format!("{}/config.json", pooling_path.trim_end_matches('/'));
        let pool = read_json(dir, &pool_rel)?;
        let modes = [
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_cls_token", Pooling::Cls),
            ("pooling_mode_max_tokens", Pooling::Max),
            ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ];
        let mut chosen = Vec::new();
        for (key, mode) in modes {
            if bool_field(&pool, &pool_rel, key)? {
                chosen.push((key, mode));
            }
        }
        for key in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
            if bool_field(&pool, &pool_rel, key)? {
                return Err(err!(Model, "{pool_rel}: unsupported pooling mode `{key}`"));
            }
        }
        let pooling = match chosen.as_slice() {
            [(_, m)] => *m,
            [] => return Err(err!(Model, "{pool_rel}: no pooling mode is enabled (pooling_mode_mean_tokens, ...)")),
            many => {
                let keys: Vec<&str> = many.iter().map(|(k, _)| *k).collect();
                return Err(err!(
                    Model,
                    "{pool_rel}: several pooling modes enabled ({}); only one is supported",
                    keys.join(", ")
                ));
            }
        };
        if let Some(dim) = pool.get("word_embedding_dimension") {
            if dim.as_u64() != Some(bert.hidden_size as u64) {
                return Err(err!(
                    Model,
                    "{pool_rel}: `word_embedding_dimension` {dim} differs from config.json `hidden_size` {}",
                    bert.hidden_size
                ));
            }
        }

        const SB: &str = "sentence_bert_config.json";
        let sb = read_json(dir, SB)?;
        let max_seq_length = usize_field(&sb, SB, "max_seq_length")?;
        if max_seq_length > bert.max_position_embeddings {
            return Err(err!(
                Model,
                "{SB}: `max_seq_length` {max_seq_length} exceeds config.json `max_position_embeddings` {}",
                bert.max_position_embeddings
            ));
        }
        if max_seq_length < 3 {
            return Err(err!(Model, "{SB}: `max_seq_length` {max_seq_length} is too small"));
        }
        Ok(ModelConfig { bert, pooling, normalize, max_seq_length })
    }
}
