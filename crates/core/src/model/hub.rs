//! Hugging Face Hub repository ids: telling an id from a path, the standard
//! cache layout (`HF_HUB_CACHE` / `HF_HOME`), and a downloader that writes
//! that layout the way `huggingface_hub` does. Part of the `model` leaf: it
//! knows files and HTTP, nothing of the engine.
//!
//! Cache (`<root>/models--{org}--{name}/`, docs/model.md "The cache"):
//! - `blobs/<etag>`: file contents, named by the hub's ETag (sha256 for LFS
//!   files, the git blob id otherwise); written as `blobs/<etag>.incomplete`
//!   (resumed with `Range` after an interruption) and renamed into place only
//!   once its size (and for LFS files its sha256) is checked;
//! - `snapshots/<commit>/<file>`: relative symlinks to blobs, made (atomically,
//!   by rename) only for complete blobs;
//! - `refs/<revision>`: the commit the revision names, written last;
//! - `.no_exist/<commit>/<file>`: marks a file the repository does not have;
//! - `<root>/.locks/models--{org}--{name}/<etag>.lock`: `flock`ed while a blob
//!   is written (the same lock files huggingface_hub uses).
//!
//! Network rules: `HF_HUB_OFFLINE=1` never connects; a complete snapshot in
//! the cache is used without a request; everything is bounded (file sizes,
//! connect/read timeouts, a minimum transfer rate, redirects: http(s) only,
//! at most [`MAX_REDIRECTS`], never https → http).

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::err;
use crate::error::{CoreError, Result};

/// The hub the downloader talks to when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";
/// Files the loader reads (crates/core/src/model: config, tokenizer,
/// weights), fetched for an id. The pooling module's `config.json` is added
/// from `modules.json`.
pub const MODEL_FILES: &[&str] =
    &["config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json", "model.safetensors"];
/// Of [`MODEL_FILES`], those the repository must have: without them no
/// model can load, so their absence is an error before any large download.
pub const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
/// Largest weights file accepted, bytes.
pub const MAX_WEIGHTS_BYTES: u64 = 32 << 30;
/// Largest other file (JSON configs, tokenizer), bytes.
pub const MAX_SMALL_FILE_BYTES: u64 = 256 << 20;
/// Largest API answer (repository info), bytes.
pub const MAX_API_BYTES: u64 = 32 << 20;
/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;
/// Connecting to a host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A read that gets no byte for this long fails the attempt (it is resumed).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per file when the connection fails or is cut (each resumes).
pub const ATTEMPTS: usize = 4;
/// A file's transfer must average at least this rate (after a fixed
/// allowance of [`TRANSFER_ALLOWANCE`]); slower is a failed attempt.
const MIN_RATE_BYTES_PER_S: u64 = 32 * 1024;
const TRANSFER_ALLOWANCE: Duration = Duration::from_secs(300);

/// A Hugging Face model repository id, `org/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    pub org: String,
    pub name: String,
}

impl RepoId {
    /// `org/name` when `s` is one by the hub's rules (huggingface_hub
    /// `validate_repo_id`): two parts of ASCII letters, digits, `-`, `_`,
    /// `.`; each part starts and ends with a letter, digit or `_`; no `--`
    /// or `..`; at most 96 characters. Anything else is not an id.
    pub fn parse(s: &str) -> Option<RepoId> {
        if s.is_empty() || s.len() > 96 || s.contains("--") || s.contains("..") {
            return None;
        }
        let (org, name) = s.split_once('/')?;
        let part_ok = |p: &str| {
            let edge = |c: char| c.is_ascii_alphanumeric() || c == '_';
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && p.starts_with(edge)
                && p.ends_with(edge)
        };
        (part_ok(org) && part_ok(name)).then(|| RepoId { org: org.to_string(), name: name.to_string() })
    }

    /// The cache folder's name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

/// What a `model` value (option or `CUDA_ENGINE_MODEL`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A directory (it may not exist: then `E_MODEL`, never a download).
    Path(PathBuf),
    /// A Hugging Face repository id (resolved from the cache, else downloaded).
    Repo(RepoId),
}

/// Classify a `model` value: an existing directory always wins; a value that
/// starts with `/`, `./`, `../`, `~` (or `.\`, `..\`, has a `\` or a drive
/// letter) or is not of the form `org/name` is a path; otherwise a repo id.
pub fn classify(value: &str) -> ModelSpec {
    let path = PathBuf::from(value);
    if path.is_dir() || looks_like_path(value) {
        return ModelSpec::Path(path);
    }
    match RepoId::parse(value) {
        Some(id) => ModelSpec::Repo(id),
        None => ModelSpec::Path(path),
    }
}

/// Spelled as a path whatever the rest says.
fn looks_like_path(v: &str) -> bool {
    v.starts_with('/')
        || v.starts_with("./")
        || v.starts_with("../")
        || v.starts_with('~')
        || v.starts_with(".\\")
        || v.starts_with("..\\")
        || v == "."
        || v == ".."
        || v.contains('\\')
        || v.as_bytes().get(1) == Some(&b':')
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// `HF_HUB_OFFLINE` is true (`1`, `ON`, `YES`, `TRUE`, as huggingface_hub reads it).
pub fn offline() -> bool {
    env_nonempty("HF_HUB_OFFLINE")
        .is_some_and(|v| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

/// The hub cache root, as huggingface_hub picks it: `HF_HUB_CACHE`
/// (`HUGGINGFACE_HUB_CACHE`, its old name), else `HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_root() -> PathBuf {
    if let Some(v) = env_nonempty("HF_HUB_CACHE").or_else(|| env_nonempty("HUGGINGFACE_HUB_CACHE")) {
        return PathBuf::from(v);
    }
    if let Some(v) = env_nonempty("HF_HOME") {
        return PathBuf::from(v).join("hub");
    }
    if let Some(v) = env_nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(v).join("huggingface/hub");
    }
    let home = env_nonempty("HOME").or_else(|| env_nonempty("USERPROFILE")).unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

/// The hub endpoint: `HF_ENDPOINT`, else `https://huggingface.co`.
pub fn endpoint() -> String {
    env_nonempty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// A commit hash as the hub writes them (40 lowercase hex digits).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A revision (branch, tag or commit) that is safe as a `refs/` file name.
fn check_revision(rev: &str) -> Result<()> {
    let ok = !rev.is_empty()
        && rev.len() <= 256
        && !rev.starts_with('/')
        && !rev.ends_with('/')
        && !rev.contains("..")
        && !rev.contains("//")
        && rev.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(err!(InvalidArg, "revision {rev:?} is not a branch, tag or commit name"))
    }
}

/// A repository file name that stays inside the snapshot folder.
fn check_rel_path(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty() && !rel.contains('\\') && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Where the cache keeps one repository.
#[derive(Debug, Clone)]
pub struct RepoCache {
    /// `<root>/models--org--name`.
    pub folder: PathBuf,
    /// `<root>/.locks/models--org--name`.
    pub locks: PathBuf,
}

impl RepoCache {
    pub fn new(root: &Path, repo: &RepoId) -> RepoCache {
        RepoCache { folder: root.join(repo.folder_name()), locks: root.join(".locks").join(repo.folder_name()) }
    }

    /// The commit `revision` names: itself for a commit hash, else `refs/<revision>`.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let c = fs::read_to_string(self.folder.join("refs").join(revision)).ok()?;
        let c = c.trim();
        is_commit_hash(c).then(|| c.to_string())
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.folder.join("snapshots").join(commit)
    }

    fn no_exist(&self, commit: &str, rel: &str) -> PathBuf {
        self.folder.join(".no_exist").join(commit).join(rel)
    }

    /// The snapshot of `revision` when it holds every file the loader reads
    /// (each present, or marked absent under `.no_exist`), else `None`.
    pub fn complete_snapshot(&self, revision: &str) -> Option<PathBuf> {
        let commit = self.commit_of(revision)?;
        let snap = self.snapshot(&commit);
        let have = |rel: &str| snap.join(rel).is_file() || self.no_exist(&commit, rel).is_file();
        if !REQUIRED_FILES.iter().all(|f| snap.join(f).is_file()) || !MODEL_FILES.iter().all(|f| have(f)) {
            return None;
        }
        let modules = fs::read(snap.join("modules.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(m) = modules {
            if !pooling_configs(&m).iter().all(|rel| have(rel)) {
                return None;
            }
        }
        Some(snap)
    }
}

/// `<path>/config.json` of every `Pooling` module of a `modules.json`, when
/// the path stays inside the repository.
fn pooling_configs(modules: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in modules.as_array().map(Vec::as_slice).unwrap_or_default() {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        if ty.rsplit('.').next() != Some("Pooling") {
            continue;
        }
        if let Some(p) = m.get("path").and_then(Value::as_str) {
            let rel = format!("{}/config.json", p.trim_end_matches('/'));
            if check_rel_path(&rel) {
                out.push(rel);
            }
        }
    }
    out
}

/// `fetch` settings; `None` fields come from the environment.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Cache root (default [`cache_root`]).
    pub cache_dir: Option<PathBuf>,
    /// Hub endpoint (default [`endpoint`]).
    pub endpoint: Option<String>,
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// Print a progress line on stderr (default: when stderr is a terminal).
    pub progress: Option<bool>,
}

/// What [`fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The snapshot directory (what the loader reads).
    pub path: PathBuf,
    /// The files downloaded now (repository paths), in order.
    pub downloaded: Vec<String>,
    /// Served from the cache without any request.
    pub cached: bool,
}

/// The cached snapshot of `repo`, else download it (unless offline).
/// Blocking; call it from a blocking thread.
pub fn fetch(repo: &RepoId, opts: &FetchOptions) -> Result<Fetched> {
    let root = opts.cache_dir.clone().unwrap_or_else(cache_root);
    let revision = opts.revision.clone().unwrap_or_else(|| DEFAULT_REVISION.to_string());
    check_revision(&revision)?;
    let cache = RepoCache::new(&root, repo);
    if let Some(path) = cache.complete_snapshot(&revision) {
        return Ok(Fetched { path, downloaded: Vec::new(), cached: true });
    }
    if offline() {
        return Err(err!(
            Model,
            "HF_HUB_OFFLINE is set and {repo} (revision {revision}) is not in the Hugging Face cache at {} \
             (HF_HUB_CACHE / HF_HOME); no download was tried. Run `npx cuda-engine fetch-model {repo}` on a \
             machine online, or unset HF_HUB_OFFLINE",
            cache.folder.display()
        ));
    }
    let endpoint = opts.endpoint.clone().unwrap_or_else(endpoint);
    let progress = opts.progress.unwrap_or_else(|| std::io::stderr().is_terminal());
    let client = Client::new(&endpoint)?;
    Download { client, repo, cache: &cache, progress }.run(&revision)
}

/// Settings of one hub: the endpoint and the two agents.
struct Client {
    endpoint: url::Url,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    fn new(endpoint: &str) -> Result<Client> {
        let url = url::Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| err!(InvalidArg, "hub endpoint {endpoint:?} (HF_ENDPOINT / endpoint) is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(err!(InvalidArg, "hub endpoint {endpoint:?} must be an http:// or https:// URL"));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .timeout_write(READ_TIMEOUT)
            .redirects(0)
            .try_proxy_from_env(!no_proxy(&host))
            .user_agent(concat!("cuda-engine/", env!("CARGO_PKG_VERSION"), " (model download)"))
            .build();
        Ok(Client { endpoint: url, agent, token: env_nonempty("HF_TOKEN") })
    }

    fn base(&self) -> String {
        self.endpoint.as_str().trim_end_matches('/').to_string()
    }

    /// One request with redirects followed by hand: only http(s), never
    /// https → http, at most [`MAX_REDIRECTS`]; the token only goes to the
    /// hub's host. `stop_off_host`: return a redirect to another host as is
    /// (the hub's LFS redirect carries the file's metadata, as
    /// huggingface_hub reads it).
    fn request(&self, method: &str, url: &str, range: Option<u64>, stop_off_host: bool) -> Result<Reply> {
        let mut url = url::Url::parse(url).map_err(|e| err!(Model, "bad URL {url}: {e}"))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.request_url(method, &url).set("Accept-Encoding", "identity");
            if let Some(start) = range {
                req = req.set("Range", &format!("bytes={start}-"));
            }
            if let Some(t) = &self.token {
                if url.host_str() == self.endpoint.host_str() {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    return Err(
                        err!(Model, "cannot reach {}: {t}", url.host_str().unwrap_or("the hub")).with_cause(Transient)
                    )
                }
            };
            let status = resp.status();
            if !(300..400).contains(&status) || status == 304 {
                return Ok(Reply { resp, url });
            }
            let Some(loc) = resp.header("Location") else {
                return Ok(Reply { resp, url });
            };
            let next = url.join(loc).map_err(|e| err!(Model, "the hub redirected {url} to a bad URL {loc:?}: {e}"))?;
            if !matches!(next.scheme(), "http" | "https") || (url.scheme() == "https" && next.scheme() == "http") {
                return Err(err!(
                    Model,
                    "refusing the redirect from {url} to {next} (only http(s), never https → http)"
                ));
            }
            if stop_off_host && next.host_str() != url.host_str() {
                return Ok(Reply { resp, url });
            }
            url = next;
        }
        Err(err!(Model, "more than {MAX_REDIRECTS} redirects from {url}"))
    }
}

/// Marks an error worth another attempt (connection failed or cut).
#[derive(Debug)]
struct Transient;
impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("transient network failure")
    }
}
impl std::error::Error for Transient {}

fn is_transient(e: &CoreError) -> bool {
    e.cause.as_deref().is_some_and(|c| c.is::<Transient>())
}

/// `NO_PROXY` / loopback: no proxy for this host.
fn no_proxy(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host == "localhost" || host == "::1" || host.starts_with("127.") {
        return true;
    }
    let list = env_nonempty("NO_PROXY").or_else(|| env_nonempty("no_proxy")).unwrap_or_default();
    list.split(',')
        .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
        .any(|d| !d.is_empty() && (d == "*" || host == d || host.ends_with(&format!(".{d}"))))
}

struct Reply {
    resp: ureq::Response,
    url: url::Url,
}

impl Reply {
    fn status(&self) -> u16 {
        self.resp.status()
    }
    fn header(&self, k: &str) -> Option<&str> {
        self.resp.header(k)
    }
}

/// Percent-encode `s` for a URL path (`/` kept when `keep_slash`).
fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `"abc"`, `W/"abc"` → `abc`.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// What the repository info says about one file.
#[derive(Debug, Default, Clone)]
struct Sibling {
    size: Option<u64>,
    lfs_sha256: Option<String>,
}

struct Download<'a> {
    client: Client,
    repo: &'a RepoId,
    cache: &'a RepoCache,
    progress: bool,
}

impl Download<'_> {
    fn run(&self, revision: &str) -> Result<Fetched> {
        let (commit, siblings) = self.repo_info(revision)?;
        for f in REQUIRED_FILES {
            if !siblings.contains_key(*f) {
                let hint = if *f == "model.safetensors" {
                    " (only safetensors weights are supported; a repository with pytorch_model.bin alone cannot load)"
                } else {
                    ""
                };
                return Err(err!(
                    Model,
                    "{} (revision {commit}) on {} has no {f}{hint}",
                    self.repo,
                    self.client.base()
                ));
            }
        }
        let mut downloaded = Vec::new();
        let mut plan: Vec<String> = MODEL_FILES.iter().map(|s| s.to_string()).collect();
        // Small files first; the weights last, after modules.json named the pooling folder.
        plan.retain(|f| f != "model.safetensors");
        let mut i = 0;
        while i < plan.len() {
            let rel = plan[i].clone();
            i += 1;
            match siblings.get(&rel) {
                Some(info) => {
                    if self.file(&commit, &rel, info)? {
                        downloaded.push(rel.clone());
                    }
                }
                None => self.mark_absent(&commit, &rel)?,
            }
            if rel == "modules.json" {
                let snap = self.cache.snapshot(&commit);
                if let Some(m) = fs::read(snap.join(&rel)).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
                    for p in pooling_configs(&m) {
                        if !plan.contains(&p) {
                            plan.push(p);
                        }
                    }
                }
            }
        }
        if self.file(&commit, "model.safetensors", &siblings["model.safetensors"])? {
            downloaded.push("model.safetensors".to_string());
        }
        if revision != commit {
            write_atomic(&self.cache.folder.join("refs").join(revision), commit.as_bytes())?;
        }
        let path = self.cache.complete_snapshot(&commit).ok_or_else(|| {
            err!(Model, "the snapshot {} is incomplete after the download", self.cache.snapshot(&commit).display())
        })?;
        Ok(Fetched { path, downloaded, cached: false })
    }

    /// `GET /api/models/{repo}/revision/{rev}?blobs=true`: the commit and
    /// the files (sizes, LFS sha256).
    fn repo_info(&self, revision: &str) -> Result<(String, std::collections::HashMap<String, Sibling>)> {
        let url = format!(
            "{}/api/models/{}/{}/revision/{}?blobs=true",
            self.client.base(),
            quote(&self.repo.org, false),
            quote(&self.repo.name, false),
            quote(revision, false)
        );
        let reply = self.client.request("GET", &url, None, false)?;
        let status = reply.status();
        if status != 200 {
            return Err(self.http_error(&reply, "repository info"));
        }
        let mut body = Vec::new();
        reply.resp.into_reader().take(MAX_API_BYTES + 1).read_to_end(&mut body).map_err(|e| {
            err!(Model, "reading the repository info of {} failed: {e}", self.repo).with_cause(Transient)
        })?;
        if body.len() as u64 > MAX_API_BYTES {
            return Err(err!(Model, "the repository info of {} is over {MAX_API_BYTES} bytes", self.repo));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| err!(Model, "the repository info of {} from {url} is not JSON: {e}", self.repo))?;
        let commit = v.get("sha").and_then(Value::as_str).unwrap_or_default().to_string();
        if !is_commit_hash(&commit) {
            return Err(err!(
                Model,
                "the repository info of {} names no commit (`sha`: {:?})",
                self.repo,
                v.get("sha")
            ));
        }
        let mut siblings = std::collections::HashMap::new();
        for s in v.get("siblings").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let Some(name) = s.get("rfilename").and_then(Value::as_str) else { continue };
            let lfs = s.get("lfs");
            siblings.insert(
                name.to_string(),
                Sibling {
                    size: s.get("size").and_then(Value::as_u64).or_else(|| lfs?.get("size")?.as_u64()),
                    lfs_sha256: lfs
                        .and_then(|l| l.get("sha256").or_else(|| l.get("oid")))
                        .and_then(Value::as_str)
                        .map(str::to_ascii_lowercase),
                },
            );
        }
        Ok((commit, siblings))
    }

    fn http_error(&self, reply: &Reply, what: &str) -> CoreError {
        let status = reply.status();
        let code = reply.header("X-Error-Code").unwrap_or_default();
        let msg = reply.header("X-Error-Message").map(|m| format!(": {m}")).unwrap_or_default();
        let hint = match status {
            401 | 403 => " (a private or gated repository: set HF_TOKEN to a token that has access)",
            404 if code == "RevisionNotFound" => " (no such revision)",
            404 => " (no such repository: check the id, or give a model directory that exists)",
            429 => " (rate limited: try again later)",
            _ => "",
        };
        let e = err!(Model, "{what} of {} from {}: HTTP {status} {code}{msg}{hint}", self.repo, reply.url);
        if status >= 500 || status == 429 {
            e.with_cause(Transient)
        } else {
            e
        }
    }

    fn mark_absent(&self, commit: &str, rel: &str) -> Result<()> {
        write_atomic(&self.cache.no_exist(commit, rel), b"")
    }

    /// Make `snapshots/<commit>/<rel>` hold the file; true when it was
    /// downloaded now (false: its blob was already in the cache).
    fn file(&self, commit: &str, rel: &str, info: &Sibling) -> Result<bool> {
        if !check_rel_path(rel) {
            return Err(err!(Model, "{}: file name {rel:?} leaves the repository", self.repo));
        }
        let link = self.cache.snapshot(commit).join(rel);
        if link.is_file() {
            return Ok(false);
        }
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
            }
            match self.try_file(commit, rel, info, &link) {
                Err(e) if is_transient(&e) => last = Some(e),
                other => return other,
            }
        }
        let e = last.unwrap_or_else(|| err!(Model, "{rel}: download failed"));
        Err(err!(
            Model,
            "downloading {rel} of {} failed {ATTEMPTS} times: {}; what arrived is kept and the next run resumes it",
            self.repo,
            e.message
        ))
    }

    fn try_file(&self, commit: &str, rel: &str, info: &Sibling, link: &Path) -> Result<bool> {
        let url = format!(
            "{}/{}/{}/resolve/{commit}/{}",
            self.client.base(),
            quote(&self.repo.org, false),
            quote(&self.repo.name, false),
            quote(rel, true)
        );
        // HEAD, following redirects on the hub's host, stopping at one to a
        // CDN: its X-Linked-Etag / X-Linked-Size describe the file.
        let head = self.client.request("HEAD", &url, None, true)?;
        let status = head.status();
        let redirected = (300..400).contains(&status);
        if !(status == 200 || redirected) {
            return Err(self.http_error(&head, &format!("HEAD {rel}")));
        }
        let linked = head.header("X-Linked-Etag").map(normalize_etag);
        let etag = linked.clone().or_else(|| head.header("ETag").map(normalize_etag)).unwrap_or_default();
        if etag.is_empty()
            || etag.len() > 128
            || !etag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err!(Model, "{rel}: the hub sent no usable ETag ({etag:?}) at {url}"));
        }
        let header_size = head
            .header("X-Linked-Size")
            .or(if redirected { None } else { head.header("Content-Length") })
            .and_then(|s| s.trim().parse::<u64>().ok());
        let size = match (header_size, info.size) {
            (Some(h), Some(a)) if h != a => {
                return Err(err!(Model, "{rel}: the hub announces {h} bytes, the repository info {a}"));
            }
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => return Err(err!(Model, "{rel}: the hub announces no size at {url}")),
        };
        // LFS files are checked by sha256: the linked etag, or the API's lfs.sha256.
        let sha = match (&linked, &info.lfs_sha256) {
            (Some(l), Some(a)) if l.len() == 64 && l != a => {
                return Err(err!(Model, "{rel}: X-Linked-Etag {l} differs from the repository info's lfs.sha256 {a}"));
            }
            (_, Some(a)) => Some(a.clone()),
            (Some(l), None) if l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()) => Some(l.clone()),
            _ => None,
        };
        let cap = if rel.ends_with(".safetensors") { MAX_WEIGHTS_BYTES } else { MAX_SMALL_FILE_BYTES };
        if size > cap {
            return Err(err!(Model, "{rel} is {size} bytes, over the limit of {cap}"));
        }
        let location = match head.header("Location") {
            Some(l) if redirected => head.url.join(l).map_err(|e| err!(Model, "{rel}: bad redirect {l:?}: {e}"))?,
            _ => head.url.clone(),
        };
        drop(head);

        let blobs = self.cache.folder.join("blobs");
        let blob = blobs.join(&etag);
        let mut downloaded = false;
        if !blob_ok(&blob, size) {
            fs::create_dir_all(&blobs).map_err(|e| io_err(&blobs, e))?;
            let _lock = Lock::acquire(&self.cache.locks.join(format!("{etag}.lock")))?;
            if !blob_ok(&blob, size) {
                self.transfer(rel, location.as_str(), &blob, size, sha.as_deref())?;
                downloaded = true;
            }
        }
        link_blob(&blob, link, &self.cache.folder)?;
        Ok(downloaded)
    }

    /// Download into `<blob>.incomplete` (continuing what is there), check
    /// size and sha256, rename to `blob`.
    fn transfer(&self, rel: &str, url: &str, blob: &Path, size: u64, sha: Option<&str>) -> Result<()> {
        let partial = blob.with_file_name(format!(
            "{}.incomplete",
            blob.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let mut file =
            OpenOptions::new().create(true).append(true).read(true).open(&partial).map_err(|e| io_err(&partial, e))?;
        let mut have = file.metadata().map_err(|e| io_err(&partial, e))?.len();
        if have > size {
            file.set_len(0).map_err(|e| io_err(&partial, e))?;
            have = 0;
        }
        let mut hasher = Sha256::new();
        if sha.is_some() && have > 0 {
            hash_prefix(&mut file, have, &mut hasher).map_err(|e| io_err(&partial, e))?;
        }
        if have < size {
            let reply = self.client.request("GET", url, (have > 0).then_some(have), false)?;
            let status = reply.status();
            match status {
                206 => {
                    let start = reply
                        .header("Content-Range")
                        .and_then(|r| r.trim().strip_prefix("bytes "))
                        .and_then(|r| r.split('-').next())
                        .and_then(|s| s.parse::<u64>().ok());
                    if start != Some(have) {
                        file.set_len(0).map_err(|e| io_err(&partial, e))?;
                        return Err(err!(Model, "{rel}: the server answered a range that does not start at {have}")
                            .with_cause(Transient));
                    }
                }
                200 => {
                    if have > 0 {
                        // The server ignored the Range: start over.
                        file.set_len(0).map_err(|e| io_err(&partial, e))?;
                        hasher = Sha256::new();
                        have = 0;
                    }
                }
                _ => return Err(self.http_error(&reply, &format!("GET {rel}"))),
            }
            let started = Instant::now();
            let deadline = TRANSFER_ALLOWANCE + Duration::from_secs((size - have) / MIN_RATE_BYTES_PER_S);
            let mut reader = reply.resp.into_reader().take(size - have + 1);
            let mut buf = vec![0u8; 256 * 1024];
            let mut progress = Progress::new(self.progress && size >= 1 << 20, rel, size, have);
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        progress.finish();
                        let _ = file.sync_data();
                        return Err(err!(Model, "{rel}: the connection failed after {have} of {size} bytes: {e}")
                            .with_cause(Transient));
                    }
                };
                if have + n as u64 > size {
                    progress.finish();
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    return Err(err!(Model, "{rel}: the server sent more than the {size} bytes announced"));
                }
                file.write_all(&buf[..n]).map_err(|e| io_err(&partial, e))?;
                if sha.is_some() {
                    hasher.update(&buf[..n]);
                }
                have += n as u64;
                progress.update(have);
                if started.elapsed() > deadline {
                    progress.finish();
                    let _ = file.sync_data();
                    return Err(err!(Model, "{rel}: the transfer is slower than {MIN_RATE_BYTES_PER_S} B/s")
                        .with_cause(Transient));
                }
            }
            progress.finish();
            if have < size {
                let _ = file.sync_data();
                return Err(
                    err!(Model, "{rel}: the connection closed after {have} of {size} bytes").with_cause(Transient)
                );
            }
        }
        file.sync_all().map_err(|e| io_err(&partial, e))?;
        drop(file);
        if let Some(want) = sha {
            let got = hex(&hasher.finalize());
            if got != want {
                let _ = fs::remove_file(&partial);
                return Err(err!(
                    Model,
                    "{rel} of {}: sha256 mismatch (expected {want}, got {got}); the download was deleted, nothing was \
                     added to the cache",
                    self.repo
                ));
            }
        }
        fs::rename(&partial, blob).map_err(|e| io_err(blob, e))?;
        Ok(())
    }
}

fn blob_ok(blob: &Path, size: u64) -> bool {
    fs::metadata(blob).is_ok_and(|m| m.is_file() && m.len() == size)
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut r = (&mut *file).take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    file.seek(SeekFrom::End(0))?;
    Ok(())
}

/// Lower-case hex of `bytes` (digests in file names and messages).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path, e: std::io::Error) -> CoreError {
    err!(Model, "{}: {e}", path.display()).with_cause(e)
}

/// Write `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Put `snapshots/<commit>/<rel>` in place: a relative symlink to the blob
/// (a copy where symlinks are not available), created under a temporary
/// name and renamed, so it appears whole or not at all.
fn link_blob(blob: &Path, link: &Path, repo_folder: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(repo_folder);
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.link",
        link.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<a>/<b>: one `..` per folder up to the repo folder.
        let depth = link.strip_prefix(repo_folder).map(|r| r.components().count() - 1).unwrap_or(2);
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| io_err(&tmp, e))?;
    }
    #[cfg(not(unix))]
    {
        let _ = repo_folder;
        fs::copy(blob, &tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs::rename(&tmp, link).map_err(|e| io_err(link, e))
}

/// An exclusive `flock` on a lock file, released on drop (and by the kernel
/// when the process dies).
struct Lock {
    _file: File,
}

impl Lock {
    fn acquire(path: &Path) -> Result<Lock> {
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
        }
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| io_err(path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            loop {
                // SAFETY: flock on a file descriptor we own; blocks until granted.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
                if rc == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(io_err(path, e));
                }
            }
        }
        Ok(Lock { _file: file })
    }
}

/// One progress line on stderr (only when it is a terminal), redrawn at
/// most 5 times a second.
struct Progress<'a> {
    on: bool,
    rel: &'a str,
    size: u64,
    start: Instant,
    first: u64,
    last: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(on: bool, rel: &'a str, size: u64, have: u64) -> Progress<'a> {
        Progress { on, rel, size, start: Instant::now(), first: have, last: None }
    }

    fn update(&mut self, have: u64) {
        if !self.on || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) && have < self.size {
            return;
        }
        self.last = Some(Instant::now());
        let mb = |b: u64| b as f64 / 1e6;
        let rate = mb(have - self.first) / self.start.elapsed().as_secs_f64().max(1e-3);
        let pct = (have * 100).checked_div(self.size).unwrap_or(100);
        eprint!(
            "\rcuda-engine: downloading {} {:.1}/{:.1} MB ({pct}%) {rate:.1} MB/s   ",
            self.rel,
            mb(have),
            mb(self.size)
        );
    }

    fn finish(&mut self) {
        if self.on && self.last.is_some() {
            eprintln!();
        }
        self.on = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        let id = RepoId::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap();
        assert_eq!((id.org.as_str(), id.name.as_str()), ("sentence-transformers", "all-MiniLM-L6-v2"));
        assert_eq!(id.folder_name(), "models--sentence-transformers--all-MiniLM-L6-v2");
        assert_eq!(id.to_string(), "sentence-transformers/all-MiniLM-L6-v2");
        for ok in ["a/b", "BAAI/bge-small-en-v1.5", "intfloat/e5_small.v2", "_x/y_"] {
            assert!(RepoId::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "all-MiniLM-L6-v2",
            "a/b/c",
            "/a/b",
            "a/",
            "/b",
            "a//b",
            "a--b/c",
            "a/b..c",
            "-a/b",
            "a/b-",
            ".a/b",
            "a/b.",
            "a b/c",
            "a/b@main",
            "ä/b",
            "a/b:c",
            &format!("a/{}", "x".repeat(95)),
        ] {
            assert!(RepoId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn classification_paths_win() {
        let repo = |s: &str| classify(s) == ModelSpec::Repo(RepoId::parse(s).unwrap());
        assert!(repo("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(repo("no-such-org-x9/no-such-model"));
        for p in [
            "/abs/path",
            "./org/name",
            "../org/name",
            "./name",
            "~/models/x",
            "models",
            "a/b/c",
            "C:/models/x",
            "org\\name",
            ".",
            "org/name@rev",
        ] {
            assert_eq!(classify(p), ModelSpec::Path(PathBuf::from(p)), "{p}");
        }
        // An existing directory always wins, even when spelled like an id
        // (cargo runs the tests in crates/core, which has src/model).
        assert!(RepoId::parse("src/model").is_some());
        assert_eq!(classify("src/model"), ModelSpec::Path(PathBuf::from("src/model")));
    }

    #[test]
    fn quoting_and_etags() {
        assert_eq!(quote("1_Pooling/config.json", true), "1_Pooling/config.json");
        assert_eq!(quote("a b/c", false), "a%20b%2Fc");
        assert_eq!(quote("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert!(
            check_revision("main").is_ok() && check_revision("refs/pr/1").is_ok() && check_revision("v1.0").is_ok()
        );
        assert!(check_revision("../x").is_err() && check_revision("/x").is_err() && check_revision("a b").is_err());
        assert!(check_rel_path("1_Pooling/config.json") && !check_rel_path("../x") && !check_rel_path("/etc/x"));
        assert!(no_proxy("127.0.0.1") && no_proxy("localhost") && no_proxy("[::1]"));
    }

    fn touch(p: &Path, bytes: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    #[test]
    fn cache_layout_and_completeness() {
        let root = tempfile::tempdir().unwrap();
        let repo = RepoId::parse("org/model").unwrap();
        let cache = RepoCache::new(root.path(), &repo);
        assert_eq!(cache.folder, root.path().join("models--org--model"));
        assert_eq!(cache.locks, root.path().join(".locks/models--org--model"));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(cache.commit_of(commit).as_deref(), Some(commit));
        assert_eq!(cache.commit_of("main"), None);
        touch(&cache.folder.join("refs/main"), format!("{commit}\n").as_bytes());
        assert_eq!(cache.commit_of("main").as_deref(), Some(commit));
        touch(&cache.folder.join("refs/bad"), b"../../etc");
        assert_eq!(cache.commit_of("bad"), None);

        let snap = cache.snapshot(commit);
        assert_eq!(snap, cache.folder.join("snapshots").join(commit));
        for f in ["config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json"] {
            touch(&snap.join(f), b"{}");
        }
        let modules = br#"[{"type":"sentence_transformers.models.Transformer","path":""},
                            {"type":"sentence_transformers.models.Pooling","path":"1_Pooling"}]"#;
        touch(&snap.join("modules.json"), modules);
        assert_eq!(cache.complete_snapshot("main"), None, "the pooling config is missing");
        touch(&cache.no_exist(commit, "1_Pooling/config.json"), b"");
        assert_eq!(cache.complete_snapshot("main"), Some(snap.clone()), "marked absent counts");
        fs::remove_file(cache.no_exist(commit, "1_Pooling/config.json")).unwrap();
        touch(&snap.join("1_Pooling/config.json"), b"{}");
        assert_eq!(cache.complete_snapshot("main"), Some(snap.clone()));
        assert_eq!(cache.complete_snapshot(commit), Some(snap.clone()));
        // A required file marked absent does not make a snapshot complete.
        fs::remove_file(snap.join("model.safetensors")).unwrap();
        touch(&cache.no_exist(commit, "model.safetensors"), b"");
        assert_eq!(cache.complete_snapshot("main"), None);
    }

    #[cfg(unix)]
    #[test]
    fn links_are_relative_and_atomic() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("models--o--m");
        let blob = folder.join("blobs/abc");
        touch(&blob, b"hello");
        let link = folder.join("snapshots/c0/1_Pooling/config.json");
        link_blob(&blob, &link, &folder).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("../../../blobs/abc"));
        assert_eq!(fs::read(&link).unwrap(), b"hello");
        let link2 = folder.join("snapshots/c0/config.json");
        link_blob(&blob, &link2, &folder).unwrap();
        assert_eq!(fs::read_link(&link2).unwrap(), PathBuf::from("../../blobs/abc"));
        // Nothing temporary is left next to the links.
        let names: Vec<_> =
            fs::read_dir(folder.join("snapshots/c0")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        write_atomic(&folder.join("refs/main"), b"c0").unwrap();
        assert_eq!(fs::read_dir(folder.join("refs")).unwrap().count(), 1);
    }

    #[test]
    fn offline_with_an_empty_cache_names_the_fix_and_never_connects() {
        // An endpoint nobody listens on: a connection attempt would fail with
        // another message; offline must not try.
        let root = tempfile::tempdir().unwrap();
        let repo = RepoId::parse("org/absent").unwrap();
        let opts = FetchOptions {
            cache_dir: Some(root.path().into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        // Only this test sets HF_HUB_OFFLINE.
        let was = std::env::var_os("HF_HUB_OFFLINE");
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let e = fetch(&repo, &opts).unwrap_err();
        match was {
            Some(v) => std::env::set_var("HF_HUB_OFFLINE", v),
            None => std::env::remove_var("HF_HUB_OFFLINE"),
        }
        assert_eq!(e.code, crate::error::ErrorCode::Model);
        assert!(e.message.contains("HF_HUB_OFFLINE") && e.message.contains("npx cuda-engine fetch-model"), "{e}");
        assert!(!root.path().join("models--org--absent").exists(), "offline writes nothing");
    }
}
