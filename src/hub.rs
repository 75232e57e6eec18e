//! `fetchModel(name?, { dir?, endpoint?, revision? })`: provision a model
//! from the Hugging Face Hub into the HF cache without Python (the
//! downloader is `cuda_engine_core::model::hub`). Runs on a blocking thread.

// `cargo test` builds compile the napi registration out and would see these
// as unused (as in src/infer.rs).
#![cfg_attr(test, allow(dead_code))]

use cuda_engine_core::envelope::json_kind;
use cuda_engine_core::model::hub::{self, FetchOptions, RepoId};
use cuda_engine_core::model::DEFAULT_HF_REPO;
use cuda_engine_core::options;
use cuda_engine_core::{err, CoreError};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::Value;

use crate::convert::{json_to_js, options_json, options_json_at, JsVal, ParsedCall};
use crate::task::spawn_job;

/// Read `name` and the options on the JS thread: unknown keys, wrong types
/// and a name that is not an `org/name` id are `E_INVALID_ARG`.
fn fetch_args(name: Option<JsVal>, options: Option<JsVal>) -> std::result::Result<(RepoId, FetchOptions), CoreError> {
    let name = match options_json_at(name, "name")? {
        Value::Null => DEFAULT_HF_REPO.to_string(),
        Value::String(s) => s,
        other => {
            return Err(err!(
                InvalidArg,
                "`name` must be a Hugging Face repository id string, got {}",
                json_kind(&other)
            ))
        }
    };
    let repo = RepoId::parse(&name).ok_or_else(|| {
        err!(InvalidArg, "`name` {name:?} is not a Hugging Face repository id (`org/name`, e.g. {DEFAULT_HF_REPO})")
    })?;
    let json = options_json(options)?;
    let obj = match &json {
        Value::Null => return Ok((repo, FetchOptions::default())),
        Value::Object(o) => o,
        other => {
            return Err(err!(
                InvalidArg,
                "`options` must be an object {{ dir?, endpoint?, revision? }}, got {}",
                json_kind(other)
            ))
        }
    };
    options::check_keys(obj.keys().map(String::as_str), options::FETCH_MODEL_OPTIONS, "options")?;
    let text = |key: &str| -> std::result::Result<Option<String>, CoreError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Err(err!(InvalidArg, "`options.{key}` is an empty string")),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(err!(InvalidArg, "`options.{key}` must be a string, got {}", json_kind(other))),
        }
    };
    let opts = FetchOptions {
        cache_dir: text("dir")?.map(Into::into),
        endpoint: text("endpoint")?,
        revision: text("revision")?,
        progress: None,
    };
    Ok((repo, opts))
}

/// Download a model (default sentence-transformers/all-MiniLM-L6-v2) from
/// the Hugging Face Hub (`endpoint`, else HF_ENDPOINT, else huggingface.co)
/// into the Hugging Face cache (`dir`, else HF_HUB_CACHE / HF_HOME/hub /
/// ~/.cache/huggingface/hub), only the files the engine reads; resolves to
/// the snapshot directory. A complete cached copy makes no request;
/// HF_HUB_OFFLINE=1 never connects. Errors: `E_INVALID_ARG` (arguments),
/// `E_MODEL` (not found, network, checksum: names the file).
#[napi(
    catch_unwind,
    ts_args_type = "name?: string | null, options?: FetchModelOptions",
    ts_return_type = "Promise<FetchedModel>"
)]
pub fn fetch_model<'e>(
    env: &'e Env,
    name: Option<Unknown<'e>>,
    options: Option<Unknown<'e>>,
) -> Result<PromiseRaw<'e, Unknown<'e>>> {
    let raw = env.raw();
    let args =
        fetch_args(name.map(|n| JsVal::new(raw, n.value().value)), options.map(|o| JsVal::new(raw, o.value().value)));
    spawn_job(
        env,
        Ok(ParsedCall::default()),
        move |_| async move {
            let (repo, opts) = args?;
            let fetched = tokio::task::spawn_blocking(move || hub::fetch(&repo, &opts))
                .await
                .map_err(|e| CoreError::internal(format!("the model download task failed: {e}")))??;
            Ok(serde_json::json!({
                "path": fetched.path.display().to_string(),
                "downloaded": fetched.downloaded,
                "cached": fetched.cached,
            }))
        },
        |env, value| json_to_js(env, &value),
    )
}
