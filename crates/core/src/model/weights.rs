//! Encoder weights read from `model.safetensors` (memory-mapped).
//!
//! Tensors are stored in the file as fp32, fp16 or bf16; they are converted
//! to fp32 host memory here, in PyTorch's layout. Backends take what they
//! need from [`BertWeights`] (the CPU backend fuses Q/K/V; a CUDA backend
//! converts to fp16 and uploads) and may drop it afterwards.
//!
//! Names are accepted with or without the `bert.` prefix (`BertModel` vs
//! `BertForXxx` checkpoints).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::err;
use crate::error::Result;
use crate::model::config::BertConfig;

/// A dense fp32 host tensor, row-major (last dimension contiguous).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// A `torch.nn.Linear`: `y = x · weightᵀ + bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out_features, in_features]` (PyTorch layout).
    pub weight: Tensor,
    /// `[out_features]`.
    pub bias: Tensor,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape[1]
    }
}

/// A LayerNorm's affine parameters, each `[hidden]`.
#[derive(Debug, Clone)]
pub struct LayerNormWeights {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// One transformer layer (`encoder.layer.{i}`).
#[derive(Debug, Clone)]
pub struct BertLayerWeights {
    /// `attention.self.query`, `[hidden, hidden]`.
    pub query: Linear,
    /// `attention.self.key`.
    pub key: Linear,
    /// `attention.self.value`.
    pub value: Linear,
    /// `attention.output.dense`.
    pub attention_output: Linear,
    /// `attention.output.LayerNorm` (after the attention residual).
    pub attention_layer_norm: LayerNormWeights,
    /// `intermediate.dense`, `[intermediate, hidden]`.
    pub intermediate: Linear,
    /// `output.dense`, `[hidden, intermediate]`.
    pub output: Linear,
    /// `output.LayerNorm` (after the FFN residual).
    pub output_layer_norm: LayerNormWeights,
}

/// All weights of a BERT encoder (the pooler head, if present, is unused:
/// sentence-transformers pools the last hidden state itself).
#[derive(Debug, Clone)]
pub struct BertWeights {
    pub config: BertConfig,
    /// `embeddings.word_embeddings`, `[vocab, hidden]`.
    pub word_embeddings: Tensor,
    /// `embeddings.position_embeddings`, `[max_positions, hidden]`.
    pub position_embeddings: Tensor,
    /// `embeddings.token_type_embeddings`, `[type_vocab, hidden]`.
    pub token_type_embeddings: Tensor,
    /// `embeddings.LayerNorm`.
    pub embeddings_layer_norm: LayerNormWeights,
    /// `encoder.layer.*`, in order.
    pub layers: Vec<BertLayerWeights>,
}

struct Reader<'a> {
    st: SafeTensors<'a>,
    file: String,
}

impl Reader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let prefixed = format!("bert.{name}");
        let view = match self.st.tensor(name) {
            Ok(v) => v,
            Err(_) => self
                .st
                .tensor(&prefixed)
                .map_err(|_| err!(Model, "{}: missing tensor `{name}` (also tried `{prefixed}`)", self.file))?,
        };
        if view.shape() != shape {
            return Err(err!(
                Model,
                "{}: tensor `{name}` has shape {:?}, config.json implies {:?}",
                self.file,
                view.shape(),
                shape
            ));
        }
        let bytes = view.data();
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(err!(
                    Model,
                    "{}: tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are supported",
                    self.file
                ))
            }
        };
        if data.len() != n {
            return Err(err!(Model, "{}: tensor `{name}` holds {} values, expected {n}", self.file, data.len()));
        }
        Ok(Tensor { shape: shape.to_vec(), data })
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.get(&format!("{prefix}.weight"), &[out, inp])?,
            bias: self.get(&format!("{prefix}.bias"), &[out])?,
        })
    }

    fn layer_norm(&self, prefix: &str, h: usize) -> Result<LayerNormWeights> {
        // Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
        let w = self
            .get(&format!("{prefix}.weight"), &[h])
            .or_else(|e| self.get(&format!("{prefix}.gamma"), &[h]).map_err(|_| e))?;
        let b = self
            .get(&format!("{prefix}.bias"), &[h])
            .or_else(|e| self.get(&format!("{prefix}.beta"), &[h]).map_err(|_| e))?;
        Ok(LayerNormWeights { weight: w, bias: b })
    }
}

impl BertWeights {
    /// Memory-map `path` and read every encoder tensor, checking shapes
    /// against `config`. Errors are `E_MODEL` naming the file and tensor.
    pub fn load(path: &Path, config: &BertConfig) -> Result<BertWeights> {
        let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file =
            std::fs::File::open(path).map_err(|e| err!(Model, "cannot open {}: {e}", path.display()).with_cause(e))?;
        // SAFETY: the file is opened read-only and only read while `mmap`
        // lives (inside this function); a concurrent truncation of the model
        // file by another process would be a SIGBUS, the accepted risk of
        // every mmap-based model loader (candle, TEI, safetensors' own docs).
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| err!(Model, "cannot memory-map {}: {e}", path.display()).with_cause(e))?;
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| err!(Model, "{}: not a valid safetensors file: {e}", path.display()))?;
        Self::from_safetensors(st, file_name, config)
    }

    fn from_safetensors(st: SafeTensors<'_>, file: String, c: &BertConfig) -> Result<BertWeights> {
        let r = Reader { st, file };
        let h = c.hidden_size;
        let i = c.intermediate_size;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(BertLayerWeights {
                query: r.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: r.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: r.linear(&format!("{p}.attention.self.value"), h, h)?,
                attention_output: r.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_layer_norm: r.layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: r.linear(&format!("{p}.intermediate.dense"), i, h)?,
                output: r.linear(&format!("{p}.output.dense"), h, i)?,
                output_layer_norm: r.layer_norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(BertWeights {
            config: c.clone(),
            word_embeddings: r.get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position_embeddings: r.get("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?,
            token_type_embeddings: r.get("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, h])?,
            embeddings_layer_norm: r.layer_norm("embeddings.LayerNorm", h)?,
            layers,
        })
    }
}
