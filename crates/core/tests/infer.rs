//! infer(): the Open Inference Protocol on the real model, locally, through
//! `submit`, and through a real `cuda-worker` process.
//!
//! Needs the model (`scripts/fetch-model.sh`) and the token fixtures
//! (`tests/fixtures/token_embeddings.json`, `scripts/make_token_fixtures.py`).
//! These tests FAIL, not skip, when either is missing. Run in release mode.

mod worker_support;

use std::path::PathBuf;
use std::sync::Arc;

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::{CallOptions, Engine, EnvelopeInput};
use cuda_engine_core::infer::{InferRequest, InferResponse, InferTensor, RequestedOutput, TensorData};
use cuda_engine_core::jobs::{JobOutput, Target};
use cuda_engine_core::options::EngineOptions;
use cuda_engine_core::{CoreError, ErrorCode};
use serde_json::{json, Value};

mod common;
use common::repo_root;

/// Canonical, so paths compare equal to what the engine reports.
fn model_dir() -> PathBuf {
    common::model_dir().canonicalize().unwrap()
}

struct Record {
    text: String,
    ids: Vec<i64>,
    tokens: Vec<Vec<f32>>,
    sentence: Vec<f32>,
}

fn fixtures() -> Vec<Record> {
    let p = repo_root().join("tests/fixtures/token_embeddings.json");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap();
    let f32s = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Record {
            text: r["text"].as_str().unwrap().to_string(),
            ids: r["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect(),
            tokens: r["token_embeddings"].as_array().unwrap().iter().map(f32s).collect(),
            sentence: f32s(&r["sentence_embedding"]),
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn open(extra: Value) -> Arc<Engine> {
    let mut opts = json!({ "model": model_dir(), "device": "cpu" });
    for (k, v) in extra.as_object().unwrap() {
        opts[k] = v.clone();
    }
    Engine::open(EngineOptions::from_json(&opts).and_then(EngineOptions::into_config).unwrap()).unwrap()
}

fn text_request(texts: &[&str]) -> InferRequest {
    InferRequest {
        inputs: vec![InferTensor::new(
            "text",
            vec![texts.len()],
            TensorData::Bytes(texts.iter().map(|t| t.as_bytes().to_vec()).collect()),
        )],
        ..Default::default()
    }
}

fn output<'a>(r: &'a InferResponse, name: &str) -> &'a InferTensor {
    r.outputs
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no output {name} in {:?}", r.outputs.iter().map(|t| &t.name).collect::<Vec<_>>()))
}

fn fp32(t: &InferTensor) -> &[f32] {
    match &t.data {
        TensorData::Fp32(v) => v,
        other => panic!("{} is {:?}, expected FP32", t.name, other.datatype()),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Every real token of a padded `last_hidden_state` against the unpadded
/// reference; padded positions must be exactly 0.
fn check_hidden(t: &InferTensor, recs: &[Record], tol: f32) -> f32 {
    let [batch, seq, h] = t.shape[..] else { panic!("last_hidden_state shape {:?}", t.shape) };
    assert_eq!(batch, recs.len());
    let data = fp32(t);
    let mut worst = 0f32;
    for (b, r) in recs.iter().enumerate() {
        for s in 0..seq {
            let row = &data[(b * seq + s) * h..][..h];
            if s < r.tokens.len() {
                let d = max_abs_diff(row, &r.tokens[s]);
                assert!(d <= tol, "text {b} ({:?}) token {s}: max |diff| {d} > {tol}", r.text);
                worst = worst.max(d);
            } else {
                assert!(row.iter().all(|&x| x == 0.0), "text {b} padded position {s} is not zero");
            }
        }
    }
    worst
}

#[test]
fn text_sentence_embedding_equals_embed() {
    let engine = open(json!({}));
    let rt = rt();
    let (a, b) =
        ("The quick brown fox jumps over the lazy dog.", "GPU workers replace the old cuda-worker.exe per job.");
    let mut req = text_request(&[a, b]);
    req.outputs = Some(vec![RequestedOutput { name: "sentence_embedding".into(), parameters: None }]);
    let r = rt.block_on(engine.infer(req, CallOptions::default())).unwrap();
    assert_eq!(r.model_name, "all-MiniLM-L6-v2");
    assert_eq!(r.outputs.len(), 1, "only the requested output comes back");
    let se = output(&r, "sentence_embedding");
    assert_eq!(se.shape, vec![2, 384]);
    let want =
        rt.block_on(engine.embed(vec![a.into(), b.into()], EmbedOptions::default(), CallOptions::default())).unwrap();
    let got = fp32(se);
    // Same sequences, same packed batch, same backend: the same numbers.
    assert_eq!(&got[..384], &want[0][..]);
    assert_eq!(&got[384..], &want[1][..]);
}

#[test]
fn text_last_hidden_state_matches_sentence_transformers() {
    let recs = fixtures();
    let engine = open(json!({}));
    let texts: Vec<&str> = recs.iter().map(|r| r.text.as_str()).collect();
    let r = rt().block_on(engine.infer(text_request(&texts), CallOptions::default())).unwrap();
    let names: Vec<&str> = r.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["last_hidden_state", "sentence_embedding", "input_ids", "attention_mask"]);
    let worst = check_hidden(output(&r, "last_hidden_state"), &recs, 1e-4);
    eprintln!("last_hidden_state vs sentence-transformers token_embeddings: max |diff| {worst:e}");
    let seq = recs.iter().map(|r| r.ids.len()).max().unwrap();
    let ids = output(&r, "input_ids");
    let mask = output(&r, "attention_mask");
    assert_eq!(ids.shape, vec![recs.len(), seq]);
    let (TensorData::Int64(ids), TensorData::Int64(mask)) = (&ids.data, &mask.data) else {
        panic!("ids/mask not INT64")
    };
    for (b, rec) in recs.iter().enumerate() {
        assert_eq!(&ids[b * seq..b * seq + rec.ids.len()], &rec.ids[..], "input_ids of text {b}");
        assert!(ids[b * seq + rec.ids.len()..(b + 1) * seq].iter().all(|&x| x == 0));
        let ones = mask[b * seq..(b + 1) * seq].iter().take_while(|&&x| x == 1).count();
        assert_eq!(ones, rec.ids.len());
        assert_eq!(mask[b * seq..(b + 1) * seq].iter().sum::<i64>(), rec.ids.len() as i64);
    }
    let se = fp32(output(&r, "sentence_embedding"));
    for (b, rec) in recs.iter().enumerate() {
        let d = max_abs_diff(&se[b * 384..(b + 1) * 384], &rec.sentence);
        assert!(d < 1e-5, "sentence_embedding of text {b}: {d}");
    }
}

/// Padded [batch, seq] ids with an attention mask, as INT64 and INT32.
fn padded_ids(recs: &[Record], extra_pad: usize, int32: bool) -> InferRequest {
    let seq = recs.iter().map(|r| r.ids.len()).max().unwrap() + extra_pad;
    let mut ids = vec![0i64; recs.len() * seq];
    let mut mask = vec![0i64; recs.len() * seq];
    for (b, r) in recs.iter().enumerate() {
        ids[b * seq..][..r.ids.len()].copy_from_slice(&r.ids);
        mask[b * seq..][..r.ids.len()].fill(1);
    }
    let data = |v: Vec<i64>| {
        if int32 {
            TensorData::Int32(v.iter().map(|&x| x as i32).collect())
        } else {
            TensorData::Int64(v)
        }
    };
    let shape = vec![recs.len(), seq];
    InferRequest {
        inputs: vec![
            InferTensor::new("input_ids", shape.clone(), data(ids)),
            InferTensor::new("attention_mask", shape, data(mask)),
        ],
        ..Default::default()
    }
}

#[test]
fn padded_ids_give_the_same_numbers_as_text() {
    let recs = fixtures();
    let engine = open(json!({}));
    let rt = rt();
    for int32 in [false, true] {
        let r = rt.block_on(engine.infer(padded_ids(&recs, 5, int32), CallOptions::default())).unwrap();
        let names: Vec<&str> = r.outputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["last_hidden_state", "sentence_embedding"], "no id outputs for id inputs");
        let lh = output(&r, "last_hidden_state");
        assert_eq!(
            lh.shape[1],
            recs.iter().map(|r| r.ids.len()).max().unwrap() + 5,
            "seq dim is the input's padded length"
        );
        check_hidden(lh, &recs, 1e-4);
    }
    // No attention_mask: every position is a token (one unpadded sequence).
    let one = &recs[1];
    let req = InferRequest {
        id: Some("req-1".into()),
        inputs: vec![InferTensor::new("input_ids", vec![1, one.ids.len()], TensorData::Int64(one.ids.clone()))],
        outputs: Some(vec![RequestedOutput { name: "last_hidden_state".into(), parameters: None }]),
        ..Default::default()
    };
    let r = rt.block_on(engine.infer(req, CallOptions::default())).unwrap();
    assert_eq!(r.id, "req-1");
    check_hidden(output(&r, "last_hidden_state"), std::slice::from_ref(one), 1e-4);
}

#[test]
fn submit_inference_gives_the_same_answer_as_json() {
    let recs = fixtures();
    let engine = open(json!({}));
    let rt = rt();
    let texts: Vec<&str> = recs.iter().map(|r| r.text.as_str()).collect();
    let direct = rt.block_on(engine.infer(text_request(&texts), CallOptions::default())).unwrap();
    let env = json!({ "id": "env-1", "type": "inference", "payload": {
        "inputs": [{ "name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts }]
    }});
    let res =
        rt.block_on(engine.submit(EnvelopeInput::Bytes(env.to_string().into_bytes()), CallOptions::default())).unwrap();
    assert_eq!(res.job_type, "inference");
    let JobOutput::Json(v) = res.output else { panic!("bytes result") };
    assert_eq!(v["id"], "env-1", "the envelope id stands in for a missing request id");
    let via_submit = InferResponse::from_json(&v).unwrap();
    assert_eq!(via_submit.outputs.len(), direct.outputs.len());
    for (a, b) in direct.outputs.iter().zip(&via_submit.outputs) {
        assert_eq!((&a.name, &a.shape, a.datatype()), (&b.name, &b.shape, b.datatype()));
        // JSON carries f32 exactly (as the f64 it widens to).
        assert_eq!(a.data, b.data, "output {}", a.name);
    }
    // Nested data through submit, INT32 ids.
    let r = &recs[0];
    let env = json!({ "type": "infer", "payload": {
        "model_name": "all-MiniLM-L6-v2",
        "inputs": [{ "name": "input_ids", "shape": [1, r.ids.len()], "datatype": "INT32", "data": [r.ids] }],
        "outputs": [{ "name": "last_hidden_state" }]
    }});
    let res =
        rt.block_on(engine.submit(EnvelopeInput::Bytes(env.to_string().into_bytes()), CallOptions::default())).unwrap();
    let JobOutput::Json(v) = res.output else { panic!() };
    check_hidden(output(&InferResponse::from_json(&v).unwrap(), "last_hidden_state"), std::slice::from_ref(r), 1e-4);
}

#[test]
fn metadata_locally_and_through_submit() {
    let engine = open(json!({}));
    let rt = rt();
    let models = rt.block_on(engine.models()).unwrap();
    assert_eq!(models.len(), 1);
    let m = models[0].to_json();
    assert_eq!(m["name"], "all-MiniLM-L6-v2");
    assert_eq!(m["platform"], "cuda-engine");
    assert_eq!(m["inputs"][0], json!({ "name": "input_ids", "datatype": "INT64", "shape": [-1, -1] }));
    assert_eq!(m["inputs"][3], json!({ "name": "text", "datatype": "BYTES", "shape": [-1] }));
    assert_eq!(m["outputs"][0], json!({ "name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, 384] }));
    assert_eq!(m["outputs"][1], json!({ "name": "sentence_embedding", "datatype": "FP32", "shape": [-1, 384] }));
    assert_eq!(m["parameters"]["max_sequence_length"], 256);
    let sub = |payload: Value| {
        let env = json!({ "type": "inference", "payload": payload });
        match rt
            .block_on(engine.submit(EnvelopeInput::Bytes(env.to_string().into_bytes()), CallOptions::default()))
            .unwrap()
            .output
        {
            JobOutput::Json(v) => v,
            JobOutput::Bytes(_) => panic!(),
        }
    };
    assert_eq!(sub(json!({})), json!({ "models": [m] }));
    assert_eq!(sub(json!({ "model_name": "all-MiniLM-L6-v2" })), m);
}

fn assert_invalid(e: CoreError, needle: &str) {
    assert_eq!(e.code, ErrorCode::InvalidArg, "{e}");
    assert!(e.message.contains(needle), "{e:?} should mention {needle:?}");
}

#[test]
fn malformed_requests_are_rejected_before_compute_and_the_engine_stays_usable() {
    let engine = open(json!({}));
    let rt = rt();
    let ids = |shape: Vec<usize>, v: Vec<i64>| InferTensor::new("input_ids", shape, TensorData::Int64(v));
    let req = |inputs: Vec<InferTensor>| InferRequest { inputs, ..Default::default() };
    let long: Vec<i64> = std::iter::once(101).chain(std::iter::repeat_n(1000, 300)).chain([102]).collect();
    let cases: Vec<(&str, InferRequest, &str)> = vec![
        ("shape/data mismatch", req(vec![ids(vec![2, 3], vec![101, 102, 0, 0, 0])]), "input `input_ids`: shape [2, 3] holds 6 elements but data has 5"),
        ("wrong datatype", req(vec![InferTensor::new("input_ids", vec![1, 2], TensorData::Fp32(vec![101.0, 102.0]))]), "input `input_ids`: datatype must be INT64 or INT32, got FP32"),
        ("unknown input", req(vec![ids(vec![1, 2], vec![101, 102]), InferTensor::new("pixels", vec![1], TensorData::Fp32(vec![0.0]))]), "input `pixels` is not an input of model `all-MiniLM-L6-v2`"),
        ("id out of range", req(vec![ids(vec![1, 3], vec![101, 30522, 102])]), "input `input_ids`: id 30522 at [0, 1] is not in 0..30522"),
        ("negative id", req(vec![ids(vec![1, 2], vec![-1, 102])]), "input `input_ids`: id -1 at [0, 0]"),
        ("over-long sequence", req(vec![ids(vec![1, long.len()], long.clone())]), "input `input_ids`: sequence 0 has 302 tokens, over the model's limit of 256"),
        ("mask shape", req(vec![ids(vec![1, 2], vec![101, 102]), InferTensor::new("attention_mask", vec![2, 1], TensorData::Int64(vec![1, 1]))]), "input `attention_mask`: shape [2, 1] must equal"),
        ("mask value", req(vec![ids(vec![1, 2], vec![101, 102]), InferTensor::new("attention_mask", vec![1, 2], TensorData::Int64(vec![1, 2]))]), "input `attention_mask`: value 2 at [0, 1] must be 0 or 1"),
        ("left padding", req(vec![ids(vec![1, 3], vec![0, 101, 102]), InferTensor::new("attention_mask", vec![1, 3], TensorData::Int64(vec![0, 1, 1]))]), "input `attention_mask`: row 0 has a 1 at position 1 after padding; rows must be 1s then 0s (right padding)"),
        ("all-zero mask row", req(vec![ids(vec![2, 2], vec![101, 102, 101, 102]), InferTensor::new("attention_mask", vec![2, 2], TensorData::Int64(vec![1, 1, 0, 0]))]), "input `attention_mask`: row 1 is all 0 (no tokens)"),
        ("hole in mask", req(vec![ids(vec![1, 3], vec![101, 0, 102]), InferTensor::new("attention_mask", vec![1, 3], TensorData::Int64(vec![1, 0, 1]))]), "input `attention_mask`: row 0 has a 1 at position 2 after padding"),
        ("type id", req(vec![ids(vec![1, 2], vec![101, 102]), InferTensor::new("token_type_ids", vec![1, 2], TensorData::Int64(vec![0, 2]))]), "input `token_type_ids`: value 2 at [0, 1] is not in 0..2"),
        ("text + ids", req(vec![ids(vec![1, 2], vec![101, 102]), InferTensor::new("text", vec![1], TensorData::Bytes(vec![b"hi".to_vec()]))]), "input `text` cannot be combined with `input_ids`"),
        ("text datatype", req(vec![InferTensor::new("text", vec![1], TensorData::Uint8(vec![1]))]), "input `text`: datatype must be BYTES, got UINT8"),
        ("text utf-8", req(vec![InferTensor::new("text", vec![1], TensorData::Bytes(vec![vec![0xff, 0xfe]]))]), "input `text`: element 0 is not valid UTF-8"),
        ("duplicate", req(vec![ids(vec![1, 2], vec![101, 102]), ids(vec![1, 2], vec![101, 102])]), "input `input_ids` is given twice"),
        ("mask alone", req(vec![InferTensor::new("attention_mask", vec![1, 2], TensorData::Int64(vec![1, 1]))]), "input `input_ids` is required"),
        ("rank", req(vec![ids(vec![2], vec![101, 102])]), "input `input_ids`: shape must be [batch, seq]"),
        ("empty inputs", req(vec![]), "`inputs` is empty"),
    ];
    for (what, r, needle) in cases {
        let e = rt.block_on(engine.infer(r, CallOptions::default())).expect_err(what);
        assert_invalid(e, needle);
    }
    // Output names and parameters.
    let mut r = req(vec![ids(vec![1, 2], vec![101, 102])]);
    r.outputs = Some(vec![RequestedOutput { name: "logits".into(), parameters: None }]);
    assert_invalid(
        rt.block_on(engine.infer(r.clone(), CallOptions::default())).unwrap_err(),
        "output `logits` is not an output",
    );
    r.outputs = Some(vec![RequestedOutput { name: "input_ids".into(), parameters: None }]);
    assert_invalid(
        rt.block_on(engine.infer(r.clone(), CallOptions::default())).unwrap_err(),
        "output `input_ids` is only produced for `text` inputs",
    );
    r.outputs = None;
    r.parameters.insert("normalize".into(), json!("yes"));
    assert_invalid(
        rt.block_on(engine.infer(r, CallOptions::default())).unwrap_err(),
        "`parameters.normalize` must be a boolean",
    );
    // Over-long text with truncation off.
    let mut r = text_request(&[&"word ".repeat(400)]);
    r.parameters.insert("truncate".into(), json!(false));
    assert_invalid(rt.block_on(engine.infer(r, CallOptions::default())).unwrap_err(), "input `text`: element 0");
    // Malformed JSON through submit (datatype, FP16 byte length n/a in JSON).
    let bad = json!({ "type": "inference", "payload": { "inputs": [{ "name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 1.5] }] } });
    let e = rt
        .block_on(engine.submit(EnvelopeInput::Bytes(bad.to_string().into_bytes()), CallOptions::default()))
        .unwrap_err();
    assert_invalid(e, "input `input_ids`: data[1] is a number, not a INT64 element");
    let bad = json!({ "type": "inference", "payload": { "inputs": [{ "name": "input_ids", "shape": [1, -1], "datatype": "INT64", "data": [101] }] } });
    let e = rt
        .block_on(engine.submit(EnvelopeInput::Bytes(bad.to_string().into_bytes()), CallOptions::default()))
        .unwrap_err();
    assert_invalid(e, "input `input_ids`: `shape` must be an array of non-negative integers");
    let bad = json!({ "type": "inference", "payload": { "inputs": [{ "name": "x", "shape": [1], "datatype": "FP8", "data": [1] }] } });
    let e = rt
        .block_on(engine.submit(EnvelopeInput::Bytes(bad.to_string().into_bytes()), CallOptions::default()))
        .unwrap_err();
    assert_invalid(e, "input `x`: datatype `FP8` is not one of");
    // Nothing was queued by any of the above, and the engine still answers.
    assert_eq!(engine.health().queue.depth, 0);
    let ok = rt.block_on(engine.infer(req(vec![ids(vec![1, 2], vec![101, 102])]), CallOptions::default())).unwrap();
    assert_eq!(output(&ok, "sentence_embedding").shape, vec![1, 384]);
}

#[test]
fn unknown_model_without_a_worker() {
    let engine = open(json!({}));
    let rt = rt();
    let mut r = text_request(&["hi"]);
    r.model_name = Some("resnet50".into());
    let e = rt.block_on(engine.infer(r.clone(), CallOptions::default())).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownModel, "{e}");
    assert!(e.message.contains("`resnet50`") && e.message.contains("all-MiniLM-L6-v2"), "{e}");
    let env = json!({ "type": "inference", "payload": r.to_json() });
    let e = rt
        .block_on(engine.submit(EnvelopeInput::Bytes(env.to_string().into_bytes()), CallOptions::default()))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownModel, "{e}");
    let local = CallOptions { target: Target::Local, ..Default::default() };
    assert_eq!(rt.block_on(engine.infer(r, local)).unwrap_err().code, ErrorCode::UnknownModel);
}

/// A model directory of a different name (symlinked files), so the engine
/// serves `other-minilm` and the worker serves `all-MiniLM-L6-v2`.
fn renamed_model(tmp: &std::path::Path) -> PathBuf {
    let dir = tmp.join("other-minilm");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

#[test]
fn other_models_go_to_the_worker() {
    let recs = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let worker = json!({
        "path": worker_support::cuda_worker_bin(),
        "mode": "persistent",
        "args": ["--serve", "--options", json!({ "model": model_dir(), "device": "cpu" }).to_string()],
        "timeoutMs": 60000,
        "reapOrphans": true,
    });
    let engine = open(json!({ "model": renamed_model(tmp.path()), "worker": worker }));
    let rt = rt();
    let models = rt.block_on(engine.models()).unwrap();
    assert_eq!(models[0].name, "other-minilm");
    let texts: Vec<&str> = recs.iter().map(|r| r.text.as_str()).collect();
    let mut req = text_request(&texts);
    req.model_name = Some("all-MiniLM-L6-v2".into());
    req.id = Some("w-1".into());
    let r = rt.block_on(engine.infer(req.clone(), CallOptions::default())).unwrap();
    assert_eq!(r.model_name, "all-MiniLM-L6-v2", "answered by the worker's model");
    assert_eq!(r.id, "w-1");
    check_hidden(output(&r, "last_hidden_state"), &recs, 1e-4);
    // The same through submit; and target 'local' refuses.
    let env = json!({ "type": "inference", "payload": req.to_json() });
    let res =
        rt.block_on(engine.submit(EnvelopeInput::Bytes(env.to_string().into_bytes()), CallOptions::default())).unwrap();
    assert_eq!(res.backend.as_str(), "worker");
    let JobOutput::Json(v) = res.output else { panic!() };
    assert_eq!(InferResponse::from_json(&v).unwrap().outputs, r.outputs);
    let local = CallOptions { target: Target::Local, ..Default::default() };
    assert_eq!(rt.block_on(engine.infer(req.clone(), local)).unwrap_err().code, ErrorCode::UnknownModel);
    // The worker's validation errors come back with their code.
    req.inputs[0].shape = vec![99];
    let e = rt.block_on(engine.infer(req, CallOptions::default())).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArg, "{e}");
    assert!(e.message.contains("input `text`"), "{e}");
    rt.block_on(engine.close(std::time::Duration::from_secs(5)));
}
