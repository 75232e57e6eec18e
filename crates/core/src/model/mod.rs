//! The embedding model: configuration, weights, tokenizer, and the
//! [`Embedder`] handle the engine uses.

pub mod config;
pub mod weights;

pub use config::{Activation, BertConfig, ModelConfig, Pooling};
pub use weights::{BertLayerWeights, BertWeights, LayerNormWeights, Linear, Tensor};
