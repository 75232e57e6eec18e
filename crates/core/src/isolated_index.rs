//! Vector indexes of an `isolation: 'process'` engine (docs/vector-search.md
//! "With isolation: 'process'").
//!
//! The parent keeps the source of truth, a CPU [`VectorIndex`] (the host
//! copy) that validates every input and answers `get`, `info`, `size`,
//! `save` and `remove`'s count. The isolated process holds the copy that
//! searches run on, next to the model (on its GPU when it has one), under
//! a key that names one build of it. Mutations are serialised per index
//! (applied here, then forwarded), so the isolated copy sees the host's
//! order. After a restart of the isolated process its copies are gone: the
//! next search rebuilds the copy from the host's rows (under a fresh key,
//! published only once complete, so no search sees half of it).
//!
//! The requests are binary frames marked with [`INDEX_OP_KEY`], which only
//! this supervisor writes: an envelope cannot express them, so `submit`, the
//! HTTP service and gRPC cannot reach them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::device::DevicePreference;
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::isolation::Isolated;
use crate::jobs::{BackendKind, JobOutput};
use crate::metrics::RunBackend;
use crate::vector::request::SearchQuery;
use crate::vector::{
    Dtype, IdKind, IndexConfig, IndexInfo, Metric, Placement, SavedIndex, SearchHits, StoredVector, VectorId,
    VectorIndex,
};
use crate::worker::protocol::{self, BinaryFormat, WireValue};

/// Frame key marking a vector index request (its value names the op).
pub const INDEX_OP_KEY: &str = "index_op";
/// The reply `encoding` of a search: `result` is a CBOR blob of hits.
pub const HITS_ENCODING: &str = "hits";

/// Tries of one search (the first and the retries on a rebuilt copy) when
/// the isolated process dies or restarts under it.
const SEARCH_ATTEMPTS: u32 = 4;
/// Pause before the n-th retry: n × this.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Keys of isolated copies: unique in this process, never reused, so a
/// late request for an old copy can never reach a newer one.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// One request to the isolated process about the copy `key`.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    /// Create an empty copy (`config.device` is resolved there).
    Create { key: u64, config: IndexConfig },
    /// Upsert rows. `stored`: rows read back from the host copy (not
    /// normalized again). A mutation bigger than one frame goes as several:
    /// `first` starts it, `more` says more parts follow; the isolated
    /// process applies it whole with the last part (one write lock), so a
    /// search never sees part of it.
    Upsert {
        key: u64,
        ids: Vec<VectorId>,
        vectors: Vec<f32>,
        namespaces: Option<Vec<Option<String>>>,
        stored: bool,
        first: bool,
        more: bool,
    },
    /// Remove ids (parts as for `Upsert`).
    Remove { key: u64, ids: Vec<VectorId>, first: bool, more: bool },
    /// Forget the copy.
    Drop { key: u64 },
    /// Search the copy with vectors, or with texts embedded there.
    Search { key: u64, k: usize, namespace: Option<String>, query: SearchQuery },
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn f32s(b: &[u8], field: &str) -> std::result::Result<Vec<f32>, String> {
    if !b.len().is_multiple_of(4) {
        return Err(format!("`{field}` holds {} bytes, not whole f32s", b.len()));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn ids_value(ids: &[VectorId]) -> WireValue {
    WireValue::Array(
        ids.iter()
            .map(|id| match id {
                VectorId::Str(s) => WireValue::Str(s.clone()),
                VectorId::U64(n) => WireValue::U64(*n),
            })
            .collect(),
    )
}

fn ids_from(v: Option<&WireValue>, field: &str) -> std::result::Result<Vec<VectorId>, String> {
    let Some(WireValue::Array(items)) = v else { return Err(format!("`{field}` is not an array")) };
    items
        .iter()
        .map(|x| match x {
            WireValue::Str(s) => Ok(VectorId::Str(s.clone())),
            other => other.as_u64().map(VectorId::U64).ok_or_else(|| format!("`{field}` holds a non-id")),
        })
        .collect()
}

fn device_value(d: DevicePreference) -> WireValue {
    match d {
        DevicePreference::Auto => WireValue::Str("auto".into()),
        DevicePreference::Cpu => WireValue::Str("cpu".into()),
        DevicePreference::Cuda(None) => WireValue::Str("cuda".into()),
        DevicePreference::Cuda(Some(i)) => WireValue::U64(i as u64),
    }
}

fn device_from(v: Option<&WireValue>) -> std::result::Result<DevicePreference, String> {
    match v {
        Some(WireValue::Str(s)) => DevicePreference::parse(s).ok_or_else(|| format!("unknown device {s:?}")),
        Some(x) => x.as_u64().map(|i| DevicePreference::Cuda(Some(i as usize))).ok_or("bad `device`".into()),
        None => Err("no `device`".into()),
    }
}

impl IndexOp {
    /// The op's name (the value of [`INDEX_OP_KEY`]).
    pub fn name(&self) -> &'static str {
        match self {
            IndexOp::Create { .. } => "create",
            IndexOp::Upsert { .. } => "upsert",
            IndexOp::Remove { .. } => "remove",
            IndexOp::Drop { .. } => "drop",
            IndexOp::Search { .. } => "search",
        }
    }

    pub fn key(&self) -> u64 {
        match self {
            IndexOp::Create { key, .. }
            | IndexOp::Upsert { key, .. }
            | IndexOp::Remove { key, .. }
            | IndexOp::Drop { key }
            | IndexOp::Search { key, .. } => *key,
        }
    }

    /// The request frame (CBOR), with wire id `id`.
    pub fn encode(&self, id: u64) -> Result<Vec<u8>> {
        let mut m = vec![
            ("id", WireValue::U64(id)),
            (INDEX_OP_KEY, WireValue::Str(self.name().into())),
            ("key", WireValue::U64(self.key())),
        ];
        match self {
            IndexOp::Create { config, .. } => {
                m.push(("dims", WireValue::U64(config.dims as u64)));
                m.push(("metric", WireValue::Str(config.metric.as_str().into())));
                m.push(("dtype", WireValue::Str(config.dtype.as_str().into())));
                m.push(("device", device_value(config.device)));
                m.push(("capacity", WireValue::U64(config.capacity as u64)));
                m.push(("max_bytes", WireValue::U64(config.max_bytes)));
            }
            IndexOp::Upsert { ids, vectors, namespaces, stored, first, more, .. } => {
                m.push(("ids", ids_value(ids)));
                m.push(("vectors", WireValue::Bytes(f32_bytes(vectors))));
                m.push((
                    "namespaces",
                    match namespaces {
                        None => WireValue::Null,
                        Some(ns) => WireValue::Array(
                            ns.iter().map(|n| n.clone().map_or(WireValue::Null, WireValue::Str)).collect(),
                        ),
                    },
                ));
                m.push(("stored", WireValue::Bool(*stored)));
                m.push(("first", WireValue::Bool(*first)));
                m.push(("more", WireValue::Bool(*more)));
            }
            IndexOp::Remove { ids, first, more, .. } => {
                m.push(("ids", ids_value(ids)));
                m.push(("first", WireValue::Bool(*first)));
                m.push(("more", WireValue::Bool(*more)));
            }
            IndexOp::Drop { .. } => {}
            IndexOp::Search { k, namespace, query, .. } => {
                m.push(("k", WireValue::U64(*k as u64)));
                m.push(("namespace", namespace.clone().map_or(WireValue::Null, WireValue::Str)));
                match query {
                    SearchQuery::Vectors { values, .. } => m.push(("queries", WireValue::Bytes(f32_bytes(values)))),
                    SearchQuery::Texts(t) => {
                        m.push(("texts", WireValue::Array(t.iter().cloned().map(WireValue::Str).collect())))
                    }
                }
            }
        }
        protocol::encode_frame(BinaryFormat::Cbor, &WireValue::map(m))
    }

    /// Worker side: the op of a frame body that has [`INDEX_OP_KEY`].
    pub fn decode(v: &WireValue) -> std::result::Result<IndexOp, String> {
        let op = v.get(INDEX_OP_KEY).and_then(WireValue::as_str).ok_or("`index_op` is not a string")?;
        let key = v.get("key").and_then(WireValue::as_u64).ok_or("`key` is missing")?;
        let uint = |k: &str| v.get(k).and_then(WireValue::as_u64).ok_or_else(|| format!("`{k}` is missing"));
        let flag = |k: &str| matches!(v.get(k), Some(WireValue::Bool(true)));
        let text = |k: &str| v.get(k).and_then(WireValue::as_str).ok_or_else(|| format!("`{k}` is missing"));
        Ok(match op {
            "create" => IndexOp::Create {
                key,
                config: IndexConfig {
                    dims: uint("dims")? as usize,
                    metric: Metric::parse(text("metric")?).ok_or("unknown `metric`")?,
                    dtype: Dtype::parse(text("dtype")?).ok_or("unknown `dtype`")?,
                    device: device_from(v.get("device"))?,
                    capacity: uint("capacity")? as usize,
                    max_bytes: uint("max_bytes")?,
                },
            },
            "upsert" => {
                let vectors = match v.get("vectors") {
                    Some(WireValue::Bytes(b)) => f32s(b, "vectors")?,
                    _ => return Err("`vectors` is not bytes".into()),
                };
                let namespaces = match v.get("namespaces") {
                    None | Some(WireValue::Null) => None,
                    Some(WireValue::Array(items)) => Some(
                        items
                            .iter()
                            .map(|x| match x {
                                WireValue::Null => Ok(None),
                                WireValue::Str(s) => Ok(Some(s.clone())),
                                _ => Err("`namespaces` holds a non-string".to_string()),
                            })
                            .collect::<std::result::Result<_, _>>()?,
                    ),
                    _ => return Err("`namespaces` is not an array".into()),
                };
                IndexOp::Upsert {
                    key,
                    ids: ids_from(v.get("ids"), "ids")?,
                    vectors,
                    namespaces,
                    stored: flag("stored"),
                    first: flag("first"),
                    more: flag("more"),
                }
            }
            "remove" => {
                IndexOp::Remove { key, ids: ids_from(v.get("ids"), "ids")?, first: flag("first"), more: flag("more") }
            }
            "drop" => IndexOp::Drop { key },
            "search" => {
                let query = match (v.get("queries"), v.get("texts")) {
                    (Some(WireValue::Bytes(b)), None) => {
                        let values = f32s(b, "queries")?;
                        SearchQuery::Vectors { count: 0, values }
                    }
                    (None, Some(WireValue::Array(t))) => SearchQuery::Texts(
                        t.iter()
                            .map(|x| x.as_str().map(str::to_string).ok_or("`texts` holds a non-string"))
                            .collect::<std::result::Result<_, _>>()?,
                    ),
                    _ => return Err("a search needs `queries` (bytes) or `texts`".into()),
                };
                let namespace = match v.get("namespace") {
                    None | Some(WireValue::Null) => None,
                    Some(WireValue::Str(s)) => Some(s.clone()),
                    _ => return Err("`namespace` is not a string".into()),
                };
                IndexOp::Search { key, k: uint("k")? as usize, namespace, query }
            }
            other => return Err(format!("unknown index op {other:?}")),
        })
    }
}

/// Worker side: what an index op answers.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexReply {
    /// A JSON result (`create`: `{device}`, `remove`: `{removed}`, …).
    Json(Value),
    /// A search's hits.
    Hits(Vec<SearchHits>),
}

impl IndexReply {
    /// The reply for wire id `id`: a JSON line, or for hits a CBOR frame
    /// `{id, ok: true, encoding: "hits", result: <bytes>}` whose `result` is
    /// one CBOR value `[{ids: [...], scores: <f32 LE bytes>}]`.
    pub fn encode(&self, id: u64) -> Result<Vec<u8>> {
        match self {
            IndexReply::Json(v) => {
                Ok(protocol::encode_response(Some(id), &Ok((JobOutput::Json(v.clone()), "json")), None))
            }
            IndexReply::Hits(hits) => {
                let body = WireValue::Array(
                    hits.iter()
                        .map(|h| {
                            WireValue::map(vec![
                                ("ids", ids_value(&h.ids)),
                                ("scores", WireValue::Bytes(f32_bytes(&h.scores))),
                            ])
                        })
                        .collect(),
                );
                protocol::encode_blob_response(id, HITS_ENCODING, &body)
            }
        }
    }
}

/// Supervisor side: the hits of a search reply's `result`. Malformed is
/// `E_WORKER_PROTOCOL`.
pub fn decode_hits(blob: &[u8]) -> Result<Vec<SearchHits>> {
    let bad = |why: String| err!(WorkerProtocol, "the isolated process's search reply is malformed: {why}");
    let v = protocol::decode_body(BinaryFormat::Cbor, blob).map_err(bad)?;
    let WireValue::Array(items) = v else { return Err(bad("not an array".into())) };
    items
        .iter()
        .map(|h| {
            let ids = ids_from(h.get("ids"), "ids").map_err(bad)?;
            let scores = match h.get("scores") {
                Some(WireValue::Bytes(b)) => f32s(b, "scores").map_err(bad)?,
                _ => return Err(bad("no `scores` bytes".into())),
            };
            if scores.len() != ids.len() {
                return Err(bad(format!("{} ids but {} scores", ids.len(), scores.len())));
            }
            Ok(SearchHits { ids, scores })
        })
        .collect()
}

/// An engine's named index: in this process, or host copy + isolated copy.
#[derive(Clone)]
pub enum EngineIndex {
    Local(Arc<VectorIndex>),
    Isolated(Arc<IsolatedIndex>),
}

/// Run a (blocking) vector index operation on a blocking thread; a panic
/// there is `E_INTERNAL`. Also the binding's.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CoreError::internal(format!("vector index task failed: {e}")))?
}

impl EngineIndex {
    /// Dims, metric, dtype (and, in-process, the device asked for).
    pub fn config(&self) -> &IndexConfig {
        match self {
            EngineIndex::Local(i) => i.config(),
            EngineIndex::Isolated(i) => &i.child_config,
        }
    }

    pub fn id_kind(&self) -> Option<IdKind> {
        self.host().id_kind()
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.host().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The copy answering get/info/save (the index itself in-process).
    pub fn host(&self) -> &Arc<VectorIndex> {
        match self {
            EngineIndex::Local(i) => i,
            EngineIndex::Isolated(i) => &i.host,
        }
    }

    /// Where searches run: `cpu` or `cuda:N` (the isolated process's copy).
    pub fn device(&self) -> String {
        match self {
            EngineIndex::Local(i) => i.placement().label(),
            EngineIndex::Isolated(i) => i.device(),
        }
    }

    /// A job result's `backend`: where the search ran.
    pub fn backend(&self) -> BackendKind {
        if self.device() == "cpu" {
            BackendKind::Cpu
        } else {
            BackendKind::Cuda
        }
    }

    /// The metrics label of a search.
    pub fn run_backend(&self) -> RunBackend {
        match self {
            EngineIndex::Local(i) if i.placement() == Placement::Cpu => RunBackend::Cpu,
            EngineIndex::Local(_) => RunBackend::Cuda,
            EngineIndex::Isolated(_) => RunBackend::Process,
        }
    }

    /// Counts and sizes (the host copy's; `device` is where searches run).
    pub fn info(&self) -> Result<IndexInfo> {
        let mut info = self.host().info()?;
        if let EngineIndex::Isolated(i) = self {
            info.device = i.device();
        }
        Ok(info)
    }

    pub async fn upsert(
        &self,
        ids: Vec<VectorId>,
        vectors: Vec<f32>,
        namespaces: Option<Vec<Option<String>>>,
    ) -> Result<()> {
        match self {
            EngineIndex::Local(i) => {
                let i = i.clone();
                blocking(move || i.upsert(ids, vectors, namespaces)).await
            }
            EngineIndex::Isolated(i) => i.upsert(ids, vectors, namespaces).await,
        }
    }

    pub async fn remove(&self, ids: Vec<VectorId>) -> Result<usize> {
        match self {
            EngineIndex::Local(i) => {
                let i = i.clone();
                blocking(move || i.remove(&ids)).await
            }
            EngineIndex::Isolated(i) => i.remove(ids).await,
        }
    }

    pub async fn get(&self, ids: Vec<VectorId>) -> Result<Vec<Option<StoredVector>>> {
        let i = self.host().clone();
        blocking(move || i.get(&ids)).await
    }

    pub async fn save(&self, path: std::path::PathBuf) -> Result<SavedIndex> {
        let i = self.host().clone();
        blocking(move || i.save(&path)).await
    }

    /// Search with vectors (`n × dims` values), or (isolated only) texts
    /// the isolated process embeds.
    pub async fn search(
        &self,
        query: SearchQuery,
        k: usize,
        namespace: Option<String>,
        cancel: CancellationToken,
    ) -> Result<Vec<SearchHits>> {
        match (self, query) {
            (EngineIndex::Local(i), SearchQuery::Vectors { values, .. }) => {
                let i = i.clone();
                blocking(move || i.search(values, k, namespace.as_deref())).await
            }
            (EngineIndex::Local(_), SearchQuery::Texts(_)) => {
                Err(CoreError::internal("an in-process index is searched with vectors (the engine embeds texts)"))
            }
            (EngineIndex::Isolated(i), query) => i.search(query, k, namespace, cancel).await,
        }
    }
}

/// A `key`'s copy in the isolated process, and the restart count it was
/// built under.
#[derive(Default)]
struct Published {
    key: AtomicU64,
    gen: AtomicU64,
}

/// An index of an isolated engine: the host copy here, the search copy in
/// the isolated process (see the module docs).
pub struct IsolatedIndex {
    name: String,
    host: Arc<VectorIndex>,
    /// What the isolated process creates: the caller's config (`device` is
    /// resolved there, next to its model).
    child_config: IndexConfig,
    iso: Arc<Isolated>,
    /// Most bytes of rows in one request frame.
    chunk_bytes: usize,
    /// Where the isolated copy lives (`cpu`, `cuda:N`), from its creation.
    device: Mutex<String>,
    /// The complete copy searches use (key 0: none, rebuild first).
    published: Published,
    dropped: AtomicBool,
    /// Serialises mutations and rebuilds, so the isolated copy is changed
    /// in the host's order. Holds keys of copies to drop (abandoned
    /// rebuilds, replaced copies), dropped at the next rebuild.
    order: tokio::sync::Mutex<Vec<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the published copy stale unless disarmed: a forward that failed
/// or was dropped halfway leaves the isolated copy behind the host's.
struct StaleUnlessDone<'a> {
    index: &'a IsolatedIndex,
    key: u64,
    done: bool,
}

impl Drop for StaleUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.index.mark_stale(self.key);
        }
    }
}

/// Whether a failed request to the isolated copy is worth one more try on a
/// rebuilt copy: the process went away or was restarted, or no longer has
/// the copy (`E_WORKER_PROTOCOL` from the worker).
fn retryable(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::WorkerExit | ErrorCode::WorkerProtocol | ErrorCode::CudaFault)
}

impl IsolatedIndex {
    /// Create the index: an empty host copy, then the isolated copy.
    pub async fn create(
        name: &str,
        config: IndexConfig,
        iso: Arc<Isolated>,
        chunk_bytes: usize,
    ) -> Result<Arc<IsolatedIndex>> {
        let host_config = IndexConfig { device: DevicePreference::Cpu, ..config.clone() };
        let host = blocking(move || VectorIndex::create(host_config, None)).await?;
        Self::from_host(name, host, config, iso, chunk_bytes).await
    }

    /// Wrap a host copy (e.g. loaded from a file) and build its isolated
    /// copy from its rows; `child_config` is what the isolated process
    /// creates.
    pub async fn from_host(
        name: &str,
        host: Arc<VectorIndex>,
        child_config: IndexConfig,
        iso: Arc<Isolated>,
        chunk_bytes: usize,
    ) -> Result<Arc<IsolatedIndex>> {
        let index = Arc::new(IsolatedIndex {
            name: name.to_string(),
            host,
            child_config,
            iso,
            chunk_bytes: chunk_bytes.max(1),
            device: Mutex::new("cpu".into()),
            published: Published::default(),
            dropped: AtomicBool::new(false),
            order: tokio::sync::Mutex::new(Vec::new()),
        });
        let mut garbage = index.order.lock().await;
        if let Err(e) = index.rebuild(&mut garbage).await {
            // Not registered: what was built of it goes (best effort).
            for key in garbage.drain(..) {
                let _ = index.send(IndexOp::Drop { key }, CancellationToken::new()).await;
            }
            return Err(e);
        }
        drop(garbage);
        Ok(index)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn device(&self) -> String {
        lock(&self.device).clone()
    }

    fn mark_stale(&self, key: u64) {
        let _ = self.published.key.compare_exchange(key, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    fn usable(&self) -> Result<()> {
        if self.dropped.load(Ordering::Acquire) {
            return Err(err!(
                InvalidArg,
                "`index` {:?} was dropped from its engine (dropIndex): with isolation: 'process' its copy in the isolated process is gone; get/info/save still answer",
                self.name
            ));
        }
        if self.iso.is_shut_down() {
            return Err(err!(Closed, "this Engine is closed; open a new one"));
        }
        Ok(())
    }

    /// The published copy's key when it is current (built under the
    /// supervisor's restart count), else 0.
    fn current(&self) -> u64 {
        let key = self.published.key.load(Ordering::Acquire);
        let gen = self.published.gen.load(Ordering::Acquire);
        if key != 0 && gen == self.iso.restarts() {
            key
        } else {
            0
        }
    }

    /// The key of a complete, current isolated copy, rebuilding it first
    /// when the process was restarted (searches meanwhile wait here).
    async fn ready_key(&self) -> Result<u64> {
        self.usable()?;
        let key = self.current();
        if key != 0 {
            return Ok(key);
        }
        let mut garbage = self.order.lock().await;
        self.ready_key_locked(&mut garbage).await
    }

    async fn ready_key_locked(&self, garbage: &mut Vec<u64>) -> Result<u64> {
        self.usable()?;
        match self.current() {
            0 => self.rebuild(garbage).await,
            key => Ok(key),
        }
    }

    async fn send(&self, op: IndexOp, cancel: CancellationToken) -> Result<(JobOutput, &'static str)> {
        self.iso.call(|id| op.encode(id), None, cancel).await
    }

    /// Build a new isolated copy from the host's rows (called under
    /// `order`), publish it, and return its key.
    async fn rebuild(&self, garbage: &mut Vec<u64>) -> Result<u64> {
        // Copies left by an abandoned rebuild or replaced: best effort (in
        // a restarted process they are gone anyway).
        for key in std::mem::take(garbage) {
            let _ = self.send(IndexOp::Drop { key }, CancellationToken::new()).await;
        }
        // Read before building: a restart during the build leaves this
        // count behind, so the next search builds again.
        let gen = self.iso.restarts();
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        garbage.push(key);
        let reply =
            self.send(IndexOp::Create { key, config: self.child_config.clone() }, CancellationToken::new()).await;
        let device = match reply? {
            (JobOutput::Json(v), _) => v.get("device").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
        .ok_or_else(|| err!(WorkerProtocol, "the isolated process answered an index creation without `device`"))?;
        let mut from = 0;
        loop {
            let host = self.host.clone();
            let chunk_bytes = self.chunk_bytes;
            let chunk = blocking(move || host.export_rows(from, chunk_bytes)).await?;
            if !chunk.ids.is_empty() {
                let op = IndexOp::Upsert {
                    key,
                    ids: chunk.ids,
                    vectors: chunk.vectors,
                    namespaces: chunk.namespaces,
                    stored: true,
                    first: true,
                    more: false,
                };
                self.send(op, CancellationToken::new()).await?;
            }
            match chunk.next {
                Some(n) => from = n,
                None => break,
            }
        }
        garbage.retain(|&k| k != key);
        *lock(&self.device) = device;
        self.published.gen.store(gen, Ordering::Release);
        let old = self.published.key.swap(key, Ordering::AcqRel);
        if old != 0 && old != key {
            garbage.push(old);
        }
        Ok(key)
    }

    async fn upsert(
        &self,
        ids: Vec<VectorId>,
        vectors: Vec<f32>,
        namespaces: Option<Vec<Option<String>>>,
    ) -> Result<()> {
        self.usable()?;
        let _order = self.order.lock().await;
        let host = self.host.clone();
        let (fwd_ids, fwd_vectors, fwd_ns) = (ids.clone(), vectors.clone(), namespaces.clone());
        blocking(move || host.upsert(ids, vectors, namespaces)).await?;
        // The host copy has it: the isolated copy follows, or is rebuilt
        // from the host before the next search.
        let key = self.current();
        if key == 0 {
            return Ok(());
        }
        let mut guard = StaleUnlessDone { index: self, key, done: false };
        let dims = self.child_config.dims;
        let row = dims * 4 + 32;
        let mut parts = Vec::new();
        let (mut start, mut bytes) = (0usize, 0usize);
        for (i, id) in fwd_ids.iter().enumerate() {
            let id_bytes = match id {
                VectorId::Str(s) => s.len(),
                VectorId::U64(_) => 8,
            };
            let ns_bytes = fwd_ns.as_ref().and_then(|n| n[i].as_ref()).map_or(0, String::len);
            let b = row + id_bytes + ns_bytes;
            if i > start && bytes + b > self.chunk_bytes {
                parts.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += b;
        }
        parts.push(start..fwd_ids.len());
        let last = parts.len() - 1;
        for (p, r) in parts.into_iter().enumerate() {
            let op = IndexOp::Upsert {
                key,
                ids: fwd_ids[r.clone()].to_vec(),
                vectors: fwd_vectors[r.start * dims..r.end * dims].to_vec(),
                namespaces: fwd_ns.as_ref().map(|n| n[r.clone()].to_vec()),
                stored: false,
                first: p == 0,
                more: p != last,
            };
            if self.send(op, CancellationToken::new()).await.is_err() {
                return Ok(());
            }
        }
        guard.done = true;
        Ok(())
    }

    async fn remove(&self, ids: Vec<VectorId>) -> Result<usize> {
        self.usable()?;
        let _order = self.order.lock().await;
        let host = self.host.clone();
        let fwd = ids.clone();
        let removed = blocking(move || host.remove(&ids)).await?;
        let key = self.current();
        if removed == 0 || key == 0 {
            return Ok(removed);
        }
        let mut guard = StaleUnlessDone { index: self, key, done: false };
        let per = (self.chunk_bytes / (crate::vector::MAX_ID_BYTES + 16)).max(1);
        let n = fwd.len().div_ceil(per);
        for (p, part) in fwd.chunks(per).enumerate() {
            let op = IndexOp::Remove { key, ids: part.to_vec(), first: p == 0, more: p + 1 != n };
            if self.send(op, CancellationToken::new()).await.is_err() {
                return Ok(removed);
            }
        }
        guard.done = true;
        Ok(removed)
    }

    async fn search(
        &self,
        query: SearchQuery,
        k: usize,
        namespace: Option<String>,
        cancel: CancellationToken,
    ) -> Result<Vec<SearchHits>> {
        self.usable()?;
        let dims = self.child_config.dims;
        let parts: Vec<SearchQuery> = match query {
            SearchQuery::Vectors { values, .. } => {
                self.host.check_search(&values, k, namespace.as_deref())?;
                // Queries bigger than a frame go as several searches, under
                // `order` so that no mutation lands between them.
                let per = (self.chunk_bytes / (dims * 4)).max(1) * dims;
                values.chunks(per).map(|c| SearchQuery::Vectors { values: c.to_vec(), count: c.len() / dims }).collect()
            }
            texts => vec![texts],
        };
        let mut order = if parts.len() > 1 { Some(self.order.lock().await) } else { None };
        let mut out = Vec::new();
        for query in parts {
            let held = order.as_deref_mut();
            out.extend(self.search_part(query, k, namespace.clone(), &cancel, held).await?);
        }
        Ok(out)
    }

    /// One search request, tried again once on a rebuilt copy when the
    /// process was restarted under it.
    async fn search_part(
        &self,
        query: SearchQuery,
        k: usize,
        namespace: Option<String>,
        cancel: &CancellationToken,
        mut held: Option<&mut Vec<u64>>,
    ) -> Result<Vec<SearchHits>> {
        let mut attempt = 0;
        loop {
            let key = match held.as_deref_mut() {
                // Called with `order` held: rebuild without taking it again.
                Some(garbage) => self.ready_key_locked(garbage).await,
                None => self.ready_key().await,
            };
            let sent = match key {
                Ok(key) => {
                    let op = IndexOp::Search { key, k, namespace: namespace.clone(), query: query.clone() };
                    self.send(op, cancel.clone()).await.inspect_err(|_| self.mark_stale(key))
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok((JobOutput::Bytes(b), _)) => return decode_hits(&b),
                Ok((JobOutput::Json(v), _)) => {
                    return Err(err!(
                        WorkerProtocol,
                        "the isolated process answered a search with JSON ({}), not hits",
                        crate::envelope::json_kind(&v)
                    ))
                }
                // A process killed from outside may take a job or two more
                // before its death is seen: a short pause, then a rebuilt
                // copy in its replacement.
                Err(e) if retryable(e.code) && attempt + 1 < SEARCH_ATTEMPTS && !cancel.is_cancelled() => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `dropIndex`: no more searches or mutations; the isolated copy is
    /// dropped in the background.
    pub fn detach(&self) {
        self.dropped.store(true, Ordering::Release);
        let key = self.published.key.swap(0, Ordering::AcqRel);
        if key == 0 || self.iso.is_shut_down() {
            return;
        }
        let iso = self.iso.clone();
        self.iso.spawn_background(async move {
            let op = IndexOp::Drop { key };
            let _ = iso.call(|id| op.encode(id), None, CancellationToken::new()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(op: IndexOp) -> IndexOp {
        let wire = op.encode(7).unwrap();
        let (f, n) = protocol::parse_frame_header(wire[..6].try_into().unwrap()).unwrap();
        assert_eq!(n, wire.len() - 6);
        let v = protocol::decode_body(f, &wire[6..]).unwrap();
        assert_eq!(v.get("id").and_then(WireValue::as_u64), Some(7));
        IndexOp::decode(&v).unwrap()
    }

    #[test]
    fn index_ops_round_trip_bit_exactly() {
        let config = IndexConfig {
            dims: 3,
            metric: Metric::L2,
            dtype: Dtype::F16,
            device: DevicePreference::Cuda(Some(1)),
            capacity: 10,
            max_bytes: 1 << 40,
        };
        for op in [
            IndexOp::Create { key: 1, config: config.clone() },
            IndexOp::Create { key: 2, config: IndexConfig { device: DevicePreference::Auto, ..config } },
            IndexOp::Upsert {
                key: 3,
                ids: vec![VectorId::Str("a".into()), VectorId::Str("é".into())],
                vectors: vec![0.1, -0.0, f32::MAX, 1e-42, 5.0, -7.25],
                namespaces: Some(vec![None, Some("t".into())]),
                stored: true,
                first: true,
                more: false,
            },
            IndexOp::Upsert {
                key: 3,
                ids: vec![VectorId::U64(u64::MAX)],
                vectors: vec![1.0, 2.0, 3.0],
                namespaces: None,
                stored: false,
                first: false,
                more: true,
            },
            IndexOp::Remove { key: 4, ids: vec![VectorId::U64(0), VectorId::U64(1 << 60)], first: true, more: true },
            IndexOp::Drop { key: 5 },
            IndexOp::Search {
                key: 6,
                k: 5,
                namespace: Some("ns".into()),
                query: SearchQuery::Texts(vec!["x".into(), "".into()]),
            },
            IndexOp::Search { key: 6, k: 1, namespace: None, query: SearchQuery::Texts(vec![]) },
        ] {
            assert_eq!(round_trip(op.clone()), op);
        }
        // Vector queries: the values exactly (the count follows from dims there).
        let values = vec![0.5f32, f32::MIN_POSITIVE, -1e30];
        match round_trip(IndexOp::Search {
            key: 1,
            k: 2,
            namespace: None,
            query: SearchQuery::Vectors { values: values.clone(), count: 1 },
        }) {
            IndexOp::Search { query: SearchQuery::Vectors { values: back, .. }, .. } => {
                assert_eq!(
                    values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    back.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                )
            }
            other => panic!("{other:?}"),
        }
        let bad = WireValue::map(vec![(INDEX_OP_KEY, WireValue::Str("nope".into())), ("key", WireValue::U64(1))]);
        assert!(IndexOp::decode(&bad).unwrap_err().contains("nope"));
    }

    #[test]
    fn hits_replies_round_trip() {
        let hits = vec![
            SearchHits { ids: vec![VectorId::Str("a".into()), VectorId::Str("b".into())], scores: vec![0.9, -0.1] },
            SearchHits::default(),
            SearchHits { ids: vec![VectorId::U64(u64::MAX)], scores: vec![1e-40] },
        ];
        let wire = IndexReply::Hits(hits.clone()).encode(9).unwrap();
        let (f, _) = protocol::parse_frame_header(wire[..6].try_into().unwrap()).unwrap();
        let r = protocol::parse_frame_response(f, &wire[6..]).unwrap();
        assert_eq!(r.id, Some(9));
        let (JobOutput::Bytes(blob), _) = r.outcome.unwrap() else { panic!("not bytes") };
        assert_eq!(decode_hits(&blob).unwrap(), hits);
        assert_eq!(decode_hits(b"\xa0").unwrap_err().code, ErrorCode::WorkerProtocol);
    }

    #[test]
    fn exported_rows_rebuild_an_equal_index() {
        let config = IndexConfig {
            dims: 4,
            metric: Metric::Cosine,
            dtype: Dtype::F16,
            device: DevicePreference::Cpu,
            capacity: 0,
            max_bytes: 1 << 30,
        };
        let a = VectorIndex::create(config.clone(), None).unwrap();
        let n = 50;
        let ids: Vec<VectorId> = (0..n).map(|i| VectorId::Str(format!("id{i}"))).collect();
        let vectors: Vec<f32> = (0..n * 4).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 + 0.01).collect();
        let ns = (0..n).map(|i| (i % 3 == 0).then(|| format!("t{}", i % 2))).collect();
        a.upsert(ids.clone(), vectors, Some(ns)).unwrap();
        a.remove(&ids[5..9]).unwrap();
        let b = VectorIndex::create(config, None).unwrap();
        let mut from = 0;
        let mut chunks = 0;
        loop {
            let c = a.export_rows(from, 200).unwrap();
            chunks += 1;
            b.upsert_stored(c.ids, c.vectors, c.namespaces).unwrap();
            match c.next {
                Some(x) => from = x,
                None => break,
            }
        }
        assert!(chunks > 3, "{chunks} chunks");
        assert_eq!(b.len(), a.len());
        assert_eq!(b.get(&ids).unwrap(), a.get(&ids).unwrap());
        let q = vec![0.3, -0.2, 0.9, 0.1];
        assert_eq!(b.search(q.clone(), 10, None).unwrap(), a.search(q.clone(), 10, None).unwrap());
        assert_eq!(b.search(q.clone(), 10, Some("t0")).unwrap(), a.search(q, 10, Some("t0")).unwrap());
    }
}
