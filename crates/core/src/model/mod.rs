//! The embedding model's files: configuration, weights, tokenizer, and
//! where the model directory is (the resolution order). A leaf: it knows
//! nothing of backends, batching or the engine (see docs/architecture.md).
//!
//! See `docs/model.md` for the resolution order, the files read, the limits
//! and the pooling/normalization behaviour.

pub mod config;
pub mod hub;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use crate::err;
use crate::error::Result;
pub use config::{Activation, BertConfig, ModelConfig, Pooling};
pub use tokenizer::{Encoded, TextTokenizer};
pub use weights::{BertLayerWeights, BertWeights, LayerNormWeights, Linear, Tensor};

/// Environment variable naming the model directory.
pub const MODEL_ENV: &str = "CUDA_ENGINE_MODEL";
/// Default model directory, relative to the process cwd.
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
/// Hugging Face repo looked up in the local HF cache as a last resort.
pub const DEFAULT_HF_REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Whether `CUDA_ENGINE_MODEL` names a model (then it is loaded at open).
pub fn model_named_by_env() -> bool {
    std::env::var_os(MODEL_ENV).is_some_and(|v| !v.is_empty())
}

/// The model directory to load, by the resolution order of `docs/model.md`:
/// `explicit`, else `$CUDA_ENGINE_MODEL`, else `./models/all-MiniLM-L6-v2`,
/// else the HF cache snapshot of sentence-transformers/all-MiniLM-L6-v2.
///
/// A named value (option or env) is an existing directory, else — when it is
/// spelled `org/name` and not like a path ([`hub::classify`]) — a Hugging
/// Face repository id, taken from the HF cache or downloaded into it
/// ([`hub::fetch`]; blocking). A named path that does not exist is `E_MODEL`
/// (no silent fallback, no network); nothing found is `E_MODEL` listing what
/// was tried and how to provide a model.
pub fn resolve_model_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return resolve_named(p, "option `model`");
    }
    if let Some(v) = std::env::var_os(MODEL_ENV).filter(|v| !v.is_empty()) {
        return resolve_named(Path::new(&v), &format!("from {MODEL_ENV}"));
    }
    let mut tried = Vec::new();
    let local = PathBuf::from(DEFAULT_MODEL_DIR);
    if local.join("config.json").is_file() {
        return Ok(local);
    }
    tried.push(std::env::current_dir().map(|c| c.join(&local)).unwrap_or(local).display().to_string());
    for hub in hf_hub_dirs() {
        let repo = hub.join(format!("models--{}", DEFAULT_HF_REPO.replace('/', "--")));
        if let Some(snap) = hf_snapshot(&repo) {
            return Ok(snap);
        }
        tried.push(repo.join("snapshots/*").display().to_string());
    }
    Err(err!(
        Model,
        "no model found (tried {}). To get one, run `npx cuda-engine fetch-model` (downloads {DEFAULT_HF_REPO} \
         into the Hugging Face cache, no Python needed), or set EngineOptions.model / {MODEL_ENV} to a model \
         directory or a Hugging Face repository id such as {DEFAULT_HF_REPO}. The cache is HF_HUB_CACHE, else \
         HF_HOME/hub, else ~/.cache/huggingface/hub; HF_ENDPOINT sets the hub to download from; \
         HF_HUB_OFFLINE=1 uses the cache only",
        tried.join(", ")
    ))
}

/// A model named by the option or the env: a directory, or a repo id.
fn resolve_named(p: &Path, origin: &str) -> Result<PathBuf> {
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let spec = match p.to_str() {
        Some(s) => hub::classify(s),
        None => hub::ModelSpec::Path(p.to_path_buf()),
    };
    match spec {
        hub::ModelSpec::Repo(id) => hub::fetch(&id, &hub::FetchOptions::default()).map(|f| f.path).map_err(|e| {
            err!(Model, "model {id} ({origin}, a Hugging Face repository id: no such directory): {}", e.message)
        }),
        hub::ModelSpec::Path(_) => Err(err!(
            Model,
            "model directory {} ({origin}) does not exist or is not a directory (not a Hugging Face repository \
             id either: those are `org/name`, e.g. {DEFAULT_HF_REPO}; `npx cuda-engine fetch-model` downloads one)",
            p.display()
        )),
    }
}

/// HF hub cache roots, in the order huggingface_hub uses them.
fn hf_hub_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v));
    }
    if let Some(v) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v).join("hub"));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    if let Some(h) = home.filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    out
}

/// The snapshot `refs/main` points to, else any snapshot that has the
/// config, tokenizer and weights (sorted, for determinism); a snapshot that
/// a download is still filling does not count.
fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snaps = repo.join("snapshots");
    let usable = |p: &Path| hub::REQUIRED_FILES.iter().all(|f| p.join(f).is_file());
    if let Ok(r) = std::fs::read_to_string(repo.join("refs/main")) {
        let p = snaps.join(r.trim());
        if usable(&p) {
            return Some(p);
        }
    }
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(&snaps).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| usable(p)).collect();
    all.sort();
    all.pop()
}

/// The model's name from its directory: the repo name for an HF cache
/// snapshot, else the directory's name as given.
pub fn model_name(dir: &Path) -> String {
    // HF cache: .../models--org--name/snapshots/<hash> → name
    let comps: Vec<String> = dir.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if comps.len() >= 3 && comps[comps.len() - 2] == "snapshots" {
        if let Some(repo) = comps[comps.len() - 3].strip_prefix("models--") {
            return repo.rsplit("--").next().unwrap_or(repo).to_string();
        }
    }
    // The name as the caller gave it (a symlink `models/x -> /data/y` is
    // named `x`); only `.`-like paths need the canonical form.
    let named = match dir.components().next_back() {
        Some(std::path::Component::Normal(_)) => dir.to_path_buf(),
        _ => dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
    };
    named.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}
