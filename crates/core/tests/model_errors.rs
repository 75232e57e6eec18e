//! Model loading failures are E_MODEL naming the file and field; the
//! loader accepts fp16 weights with a `bert.` prefix; options parse.
//!
//! Needs the model (scripts/fetch-model.sh); fails if it is missing.

use std::path::Path;

use cuda_engine_core::embedder::{EmbedOptions, Embedder, EmbedderOptions};
use cuda_engine_core::model::{BertWeights, ModelConfig, Pooling};
use cuda_engine_core::{CoreError, ErrorCode};
use tokio_util::sync::CancellationToken;

mod common;
use common::model_dir;

/// A copy of the model directory in a temp dir; the weights are symlinked
/// (90 MB) unless a test replaces them.
fn copy_model() -> tempfile::TempDir {
    let src = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::create_dir(tmp.path().join("1_Pooling")).unwrap();
    std::fs::copy(src.join("1_Pooling/config.json"), tmp.path().join("1_Pooling/config.json")).unwrap();
    std::os::unix::fs::symlink(
        src.join("model.safetensors").canonicalize().unwrap(),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    tmp
}

fn open_err(dir: &Path) -> CoreError {
    match Embedder::open(EmbedderOptions { model_dir: Some(dir.to_path_buf()), threads: Some(1), ..Default::default() })
    {
        Ok(_) => panic!("open({}) should fail", dir.display()),
        Err(e) => e,
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn assert_model_err(e: &CoreError, needles: &[&str]) {
    assert_eq!(e.code, ErrorCode::Model, "{e}");
    for n in needles {
        assert!(e.message.contains(n), "message {:?} should mention {n:?}", e.message);
    }
}

#[test]
fn missing_model_dir() {
    let e = open_err(Path::new("/nonexistent/model-dir"));
    assert_model_err(&e, &["/nonexistent/model-dir", "option `model`"]);
}

#[test]
fn corrupt_safetensors() {
    let d = copy_model();
    let p = d.path().join("model.safetensors");
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    assert_model_err(&open_err(d.path()), &["model.safetensors", "not a valid safetensors"]);

    // A real header whose data section was cut off.
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_model_err(&open_err(d.path()), &["model.safetensors"]);
}

#[test]
fn missing_files_are_named() {
    for f in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "model.safetensors",
    ] {
        let d = copy_model();
        std::fs::remove_file(d.path().join(f)).unwrap();
        assert_model_err(&open_err(d.path()), &[f]);
    }
}

#[test]
fn wrong_config_json() {
    let d = copy_model();
    let cfg = d.path().join("config.json");
    let orig = std::fs::read(&cfg).unwrap();

    edit_json(&cfg, |v| v["model_type"] = "gpt2".into());
    assert_model_err(&open_err(d.path()), &["config.json", "unsupported architecture", "gpt2"]);

    std::fs::write(&cfg, &orig).unwrap();
    edit_json(&cfg, |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    assert_model_err(&open_err(d.path()), &["config.json", "hidden_size"]);

    std::fs::write(&cfg, &orig).unwrap();
    edit_json(&cfg, |v| v["num_attention_heads"] = "twelve".into());
    assert_model_err(&open_err(d.path()), &["config.json", "num_attention_heads"]);

    // Plausible but wrong: the weights do not have this shape.
    std::fs::write(&cfg, &orig).unwrap();
    edit_json(&cfg, |v| v["intermediate_size"] = 2048.into());
    assert_model_err(&open_err(d.path()), &["model.safetensors", "intermediate.dense.weight", "[1536, 384]"]);

    std::fs::write(&cfg, b"{ not json").unwrap();
    assert_model_err(&open_err(d.path()), &["config.json", "not valid JSON"]);
}

#[test]
fn pooling_and_normalize_config() {
    let d = copy_model();
    // The test model names a 2_Normalize module without a folder: normalize.
    assert!(!d.path().join("2_Normalize").exists());
    let c = ModelConfig::load(d.path()).unwrap();
    assert_eq!((c.pooling, c.normalize, c.max_seq_length), (Pooling::Mean, true, 256));

    edit_json(&d.path().join("modules.json"), |v| {
        v.as_array_mut().unwrap().truncate(2);
    });
    edit_json(&d.path().join("1_Pooling/config.json"), |v| {
        v["pooling_mode_mean_tokens"] = false.into();
        v["pooling_mode_cls_token"] = true.into();
    });
    let c = ModelConfig::load(d.path()).unwrap();
    assert_eq!((c.pooling, c.normalize), (Pooling::Cls, false));

    edit_json(&d.path().join("1_Pooling/config.json"), |v| v["pooling_mode_max_tokens"] = true.into());
    let e = ModelConfig::load(d.path()).unwrap_err();
    assert_model_err(&e, &["1_Pooling/config.json", "several pooling modes"]);

    edit_json(&d.path().join("sentence_bert_config.json"), |v| v["max_seq_length"] = 4096.into());
    edit_json(&d.path().join("1_Pooling/config.json"), |v| v["pooling_mode_max_tokens"] = false.into());
    let e = ModelConfig::load(d.path()).unwrap_err();
    assert_model_err(&e, &["sentence_bert_config.json", "max_seq_length"]);
}

/// fp16 weights named `bert.*` load, and give nearly the fp32 embeddings
/// (fp16 rounding of the weights is the only difference).
#[test]
fn fp16_prefixed_weights_load() {
    let src = model_dir();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (name, view) in st.tensors() {
        let (dtype, data) = if view.dtype() == safetensors::Dtype::F32 {
            let halves: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
                .collect();
            (safetensors::Dtype::F16, halves)
        } else {
            (view.dtype(), view.data().to_vec())
        };
        tensors.push((format!("bert.{name}"), data, view.shape().to_vec(), dtype));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, t)| (n.clone(), safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap()))
        .collect();
    let d = copy_model();
    let p = d.path().join("model.safetensors");
    std::fs::remove_file(&p).unwrap();
    safetensors::serialize_to_file(views, None, &p).unwrap();

    let cfg = ModelConfig::load(d.path()).unwrap();
    let w = BertWeights::load(&p, &cfg.bert).unwrap();
    assert_eq!(w.layers.len(), 6);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = vec!["The quick brown fox jumps over the lazy dog.".to_string()];
    let e16 = Embedder::open(EmbedderOptions { model_dir: Some(d.path().into()), ..Default::default() }).unwrap();
    let e32 = Embedder::open(EmbedderOptions { model_dir: Some(src), ..Default::default() }).unwrap();
    let a = rt.block_on(e16.embed(text.clone(), EmbedOptions::default(), CancellationToken::new())).unwrap();
    let b = rt.block_on(e32.embed(text, EmbedOptions::default(), CancellationToken::new())).unwrap();
    let dot: f32 = a[0].iter().zip(&b[0]).map(|(x, y)| x * y).sum();
    assert!(dot > 0.999, "fp16 vs fp32 cosine {dot}");
    assert!(dot < 1.0 - 1e-9 || a[0] != b[0], "fp16 weights should not be bit-identical to fp32");
}
