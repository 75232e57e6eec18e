//! Exact (brute-force) vector search: [`VectorIndex`], on the GPU next to
//! the model or on the CPU, with the same results.
//!
//! # Model
//! An index holds vectors of `dims` values under caller ids (all strings or
//! all 64-bit integers, fixed by the first upsert), each with an optional
//! namespace (a tenant: a search can be restricted to one). Vectors live in
//! a [`store::Store`] (`cpu::CpuStore` or `cuda::CudaStore`) in slots that
//! follow insertion order; an upsert of an existing id replaces its vector
//! in its slot (it keeps its place in the order), a remove leaves a
//! tombstone that searches skip, and tombstones are compacted away (order
//! kept) once they are more than half of the slots.
//!
//! # Concurrency
//! One `RwLock` per index: searches share it and run in parallel, upserts
//! and removes take it alone. So each search sees one consistent state (no
//! half-applied upsert) and results are never mixed between calls. All
//! methods block (a GPU call waits for the device): call them from a
//! blocking thread.
//!
//! # Failures
//! Every method validates all its input before changing anything: a bad id,
//! a dimension mismatch, NaN/Inf, `k` out of `1..=MAX_K` are `E_INVALID_ARG`
//! naming the field, and the index is unchanged. Growth that the device
//! cannot hold is `E_GPU_OOM` with the index still usable at its old size;
//! over `maxBytes` is `E_TOO_LARGE`.
//!
//! Exactness rules, limits and the file format: docs/vector-search.md.

mod cpu;
#[doc(hidden)]
pub mod cuda;
mod file;
pub mod request;
pub(crate) mod store;

pub use file::SavedIndex;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::device::DevicePreference;
use crate::err;
use crate::error::Result;
use store::{Filter, Hit, Store, NO_NAMESPACE, TOMBSTONE};

/// Largest `k` a search accepts.
pub const MAX_K: usize = 2048;
/// Largest `dims`.
pub const MAX_DIMS: usize = 4096;
/// Most queries in one search call.
pub const MAX_QUERIES: usize = 65_536;
/// Most vectors in one upsert / ids in one remove or get.
pub const MAX_BATCH: usize = 1 << 20;
/// Longest namespace, bytes.
pub const MAX_NAMESPACE_BYTES: usize = 256;
/// Longest string id, bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Largest magnitude of a vector component (fp32 storage): keeps every dot
/// product finite for `dims ≤ MAX_DIMS`.
pub const MAX_ABS_F32: f32 = 1e15;
/// Largest magnitude of a component in fp16 storage (fp16's largest finite
/// value).
pub const MAX_ABS_F16: f32 = 65504.0;

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity: vectors and queries normalized, score = dot.
    Cosine,
    /// Inner product.
    Ip,
    /// Squared Euclidean distance (lower first).
    L2,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "cosine" => Some(Metric::Cosine),
            "ip" => Some(Metric::Ip),
            "l2" => Some(Metric::L2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Ip => "ip",
            Metric::L2 => "l2",
        }
    }
}

/// Storage dtype of the vectors (scores are always computed in fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    F32,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "fp16" => Some(Dtype::F16),
            "fp32" => Some(Dtype::F32),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F16 => "fp16",
            Dtype::F32 => "fp32",
        }
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// An index's settings (from `IndexOptions::into_config` in `options`).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexConfig {
    pub dims: usize,
    pub metric: Metric,
    pub dtype: Dtype,
    pub device: DevicePreference,
    /// Rows reserved at creation (grown by doubling after).
    pub capacity: usize,
    /// Most bytes of vector storage (rows + tags + norms).
    pub max_bytes: u64,
}

/// Where an index lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda(usize),
}

impl Placement {
    /// `"cpu"` or `"cuda:N"` (health, `info()`).
    pub fn label(self) -> String {
        match self {
            Placement::Cpu => "cpu".to_string(),
            Placement::Cuda(i) => format!("cuda:{i}"),
        }
    }
}

/// A caller's vector id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VectorId {
    Str(String),
    U64(u64),
}

impl VectorId {
    fn kind(&self) -> IdKind {
        match self {
            VectorId::Str(_) => IdKind::Str,
            VectorId::U64(_) => IdKind::U64,
        }
    }
}

/// Whether an index's ids are strings or integers (fixed by the first
/// upsert; loaded from a file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Str,
    U64,
}

impl IdKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Str => "string",
            IdKind::U64 => "bigint",
        }
    }
}

/// One query's results, best first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchHits {
    pub ids: Vec<VectorId>,
    /// ip / cosine: the dot product; l2: the squared distance.
    pub scores: Vec<f32>,
}

/// One stored vector as `get` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVector {
    /// The vector as stored (normalized for cosine; rounded for fp16).
    pub vector: Vec<f32>,
    pub namespace: Option<String>,
}

/// Rows read back by [`VectorIndex::export_rows`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowChunk {
    pub ids: Vec<VectorId>,
    /// `ids.len() × dims` values, as stored.
    pub vectors: Vec<f32>,
    /// One per id; None when no row of the chunk has a namespace.
    pub namespaces: Option<Vec<Option<String>>>,
    /// The slot to continue from; None when this was the last chunk.
    pub next: Option<usize>,
}

/// Counts and sizes for health and `info()`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IndexInfo {
    pub dims: usize,
    pub metric: &'static str,
    pub dtype: &'static str,
    pub device: String,
    pub count: usize,
    pub capacity: usize,
    pub bytes: u64,
    pub namespaces: usize,
}

/// How a GPU store reaches its device.
pub enum GpuPlacement {
    /// Through this executor (the model backend's, or a standalone one).
    Tasks(crate::backend::cuda::GpuTasks),
}

pub(crate) struct State {
    store: Box<dyn Store>,
    /// The id of each slot in `0..len` (None: removed).
    ids: Vec<Option<VectorId>>,
    /// The namespace tag of each slot (mirrors the store's tags).
    tags: Vec<u32>,
    slot_of: HashMap<VectorId, u32>,
    /// Namespace names by tag; tag 0 is "no namespace".
    namespaces: Vec<String>,
    tag_of: HashMap<String, u32>,
    id_kind: Option<IdKind>,
    live: usize,
}

impl State {
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// An exact vector index (see the module docs).
pub struct VectorIndex {
    config: IndexConfig,
    placement: Placement,
    state: RwLock<State>,
}

fn lock_err() -> crate::error::CoreError {
    err!(Internal, "the vector index lock was poisoned by a panic")
}

impl VectorIndex {
    /// Create an empty index. `gpu` is the executor to use when the index
    /// goes on a GPU (`None`: a standalone executor for that device).
    /// Blocking.
    pub fn create(config: IndexConfig, gpu: Option<GpuPlacement>) -> Result<Arc<VectorIndex>> {
        if config.dims == 0 || config.dims > MAX_DIMS {
            return Err(err!(InvalidArg, "`dims` must be an integer in 1..={MAX_DIMS}, got {}", config.dims));
        }
        let row_bytes = Self::row_bytes(&config);
        if (config.capacity as u64).saturating_mul(row_bytes) > config.max_bytes {
            return Err(err!(
                TooLarge,
                "`capacity` {} × {row_bytes} bytes a row is over `maxBytes` ({})",
                config.capacity,
                config.max_bytes
            ));
        }
        let (store, placement) = Self::make_store(&config, gpu)?;
        Ok(Arc::new(VectorIndex {
            placement,
            state: RwLock::new(State {
                store,
                ids: Vec::new(),
                tags: Vec::new(),
                slot_of: HashMap::new(),
                namespaces: vec![String::new()],
                tag_of: HashMap::new(),
                id_kind: None,
                live: 0,
            }),
            config,
        }))
    }

    fn row_bytes(config: &IndexConfig) -> u64 {
        (config.dims * config.dtype.size() + 4 + if config.metric == Metric::L2 { 4 } else { 0 }) as u64
    }

    fn make_store(config: &IndexConfig, gpu: Option<GpuPlacement>) -> Result<(Box<dyn Store>, Placement)> {
        let cpu = || -> Result<(Box<dyn Store>, Placement)> {
            Ok((
                Box::new(cpu::CpuStore::new(config.dims, config.metric, config.dtype, config.capacity)?),
                Placement::Cpu,
            ))
        };
        match config.device {
            DevicePreference::Cpu => cpu(),
            DevicePreference::Auto | DevicePreference::Cuda(_) => {
                let gpu_store = Self::make_gpu_store(config, gpu);
                match (gpu_store, config.device) {
                    (Ok(s), _) => Ok(s),
                    (Err(e), DevicePreference::Cuda(_)) => Err(e),
                    (Err(e), _) if e.code == crate::ErrorCode::CudaUnavailable => cpu(),
                    (Err(e), _) => Err(e),
                }
            }
        }
    }

    fn make_gpu_store(config: &IndexConfig, gpu: Option<GpuPlacement>) -> Result<(Box<dyn Store>, Placement)> {
        let device = match config.device {
            DevicePreference::Cuda(i) => i.unwrap_or(0),
            _ => {
                let probe = crate::device::probe();
                if !probe.available {
                    return Err(err!(
                        CudaUnavailable,
                        "CUDA is not available: {}",
                        probe.reason.as_deref().unwrap_or("no device")
                    ));
                }
                0
            }
        };
        let tasks = match gpu {
            Some(GpuPlacement::Tasks(t)) if t.device() == device => t,
            _ => crate::backend::cuda::GpuTasks::standalone(device)?,
        };
        let store = cuda::CudaStore::new(config.dims, config.metric, config.dtype, config.capacity, tasks)?;
        Ok((Box::new(store), Placement::Cuda(device)))
    }

    /// Dims, metric, dtype, device, count, capacity, bytes.
    pub fn info(&self) -> Result<IndexInfo> {
        let st = self.state.read().map_err(|_| lock_err())?;
        Ok(IndexInfo {
            dims: self.config.dims,
            metric: self.config.metric.as_str(),
            dtype: self.config.dtype.as_str(),
            device: self.placement.label(),
            count: st.live,
            capacity: st.store.capacity(),
            bytes: st.store.bytes(),
            namespaces: st.namespaces.len() - 1,
        })
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.live).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids' kind, once the first upsert fixed it.
    pub fn id_kind(&self) -> Option<IdKind> {
        self.state.read().ok().and_then(|s| s.id_kind)
    }

    /// Check `vectors` (`n × dims`, named `field`) and apply the metric's
    /// normalization. Errors name the vector and component.
    fn prepare_rows(&self, vectors: Vec<f32>, n: usize, field: &str) -> Result<Vec<f32>> {
        self.check_rows(vectors, n, field, self.config.metric == Metric::Cosine)
    }

    /// `prepare_rows`, with the cosine normalization optional (rows read
    /// back from a file are already normalized: normalizing again could
    /// change their last bits).
    pub(crate) fn check_rows(&self, mut vectors: Vec<f32>, n: usize, field: &str, normalize: bool) -> Result<Vec<f32>> {
        let d = self.config.dims;
        if vectors.len() != n * d {
            return Err(err!(
                InvalidArg,
                "`{field}` has {} values, expected {n} × {d} (dims) = {}",
                vectors.len(),
                n * d
            ));
        }
        let max_abs = match self.config.dtype {
            Dtype::F16 if self.config.metric != Metric::Cosine => MAX_ABS_F16,
            _ => MAX_ABS_F32,
        };
        for (i, row) in vectors.chunks_exact_mut(d).enumerate() {
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                return Err(err!(InvalidArg, "`{field}[{i}][{j}]` is {} (must be finite)", row[j]));
            }
            if normalize {
                let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
                if norm == 0.0 {
                    return Err(err!(InvalidArg, "`{field}[{i}]` is all zeros: cosine needs a non-zero vector"));
                }
                for v in row.iter_mut() {
                    *v = (*v as f64 / norm) as f32;
                }
            } else if let Some(j) = row.iter().position(|v| v.abs() > max_abs) {
                return Err(err!(
                    InvalidArg,
                    "`{field}[{i}][{j}]` is {} (at most {max_abs:e} in magnitude for {} storage)",
                    row[j],
                    self.config.dtype.as_str()
                ));
            }
        }
        Ok(vectors)
    }

    /// Insert or replace vectors. `vectors` is `ids.len() × dims` values;
    /// `namespaces` is none or one (optional) namespace per vector.
    pub fn upsert(&self, ids: Vec<VectorId>, vectors: Vec<f32>, namespaces: Option<Vec<Option<String>>>) -> Result<()> {
        self.upsert_rows(ids, vectors, namespaces, self.config.metric == Metric::Cosine)
    }

    /// `upsert`, with the cosine normalization optional (see `check_rows`).
    pub(crate) fn upsert_rows(
        &self,
        ids: Vec<VectorId>,
        vectors: Vec<f32>,
        namespaces: Option<Vec<Option<String>>>,
        normalize: bool,
    ) -> Result<()> {
        let n = ids.len();
        if n > MAX_BATCH {
            return Err(err!(TooLarge, "`ids` has {n} entries, at most {MAX_BATCH} in one upsert"));
        }
        if let Some(ns) = &namespaces {
            if ns.len() != n {
                return Err(err!(InvalidArg, "`namespaces` has {} entries, expected one per id ({n})", ns.len()));
            }
            for (i, s) in ns.iter().enumerate() {
                if let Some(s) = s {
                    if s.is_empty() || s.len() > MAX_NAMESPACE_BYTES {
                        return Err(err!(
                            InvalidArg,
                            "`namespaces[{i}]` must be a non-empty string of at most {MAX_NAMESPACE_BYTES} bytes"
                        ));
                    }
                }
            }
        }
        check_ids(&ids, "ids")?;
        let rows = self.check_rows(vectors, n, "vectors", normalize)?;
        let mut st = self.state.write().map_err(|_| lock_err())?;
        if let Some(kind) = st.id_kind {
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| id.kind() != kind) {
                return Err(err!(
                    InvalidArg,
                    "`ids[{i}]` is a {} but this index's ids are {}s ({id:?})",
                    id.kind().as_str(),
                    kind.as_str()
                ));
            }
        }
        {
            let mut seen = std::collections::HashSet::with_capacity(n);
            for (i, id) in ids.iter().enumerate() {
                if !seen.insert(id) {
                    return Err(err!(InvalidArg, "`ids[{i}]` ({id:?}) appears twice in one upsert"));
                }
            }
        }
        // Slots: existing ids keep theirs, new ids append in order.
        let mut slots = Vec::with_capacity(n);
        let mut next = st.len();
        for id in &ids {
            match st.slot_of.get(id) {
                Some(&s) => slots.push(s),
                None => {
                    slots.push(next as u32);
                    next += 1;
                }
            }
        }
        if next > u32::MAX as usize - 1 {
            return Err(err!(TooLarge, "an index holds at most {} slots", u32::MAX - 1));
        }
        let row_bytes = Self::row_bytes(&self.config);
        let max_rows = (self.config.max_bytes / row_bytes) as usize;
        if next > max_rows {
            return Err(err!(
                TooLarge,
                "{next} vectors × {row_bytes} bytes is over this index's `maxBytes` ({}); remove vectors or create it with a larger maxBytes",
                self.config.max_bytes
            ));
        }
        // Namespace tags (new names are only recorded once the write worked).
        let mut new_names: Vec<String> = Vec::new();
        let mut tags = Vec::with_capacity(n);
        for i in 0..n {
            let name = namespaces.as_ref().and_then(|ns| ns[i].as_deref());
            let tag = match name {
                None => NO_NAMESPACE,
                Some(name) => match st.tag_of.get(name) {
                    Some(&t) => t,
                    None => match new_names.iter().position(|s| s == name) {
                        Some(p) => (st.namespaces.len() + p) as u32,
                        None => {
                            new_names.push(name.to_string());
                            (st.namespaces.len() + new_names.len() - 1) as u32
                        }
                    },
                },
            };
            if tag == TOMBSTONE {
                return Err(err!(TooLarge, "too many namespaces"));
            }
            tags.push(tag);
        }
        st.store.reserve(next, max_rows)?;
        st.store.write(&slots, &rows, &tags)?;
        for name in new_names {
            let t = st.namespaces.len() as u32;
            st.tag_of.insert(name.clone(), t);
            st.namespaces.push(name);
        }
        if st.id_kind.is_none() {
            st.id_kind = ids.first().map(VectorId::kind);
        }
        for ((id, slot), tag) in ids.into_iter().zip(slots).zip(tags) {
            let s = slot as usize;
            if s == st.ids.len() {
                st.ids.push(Some(id.clone()));
                st.tags.push(tag);
                st.slot_of.insert(id, slot);
                st.live += 1;
            } else {
                st.tags[s] = tag;
            }
        }
        Ok(())
    }

    /// Remove ids; returns how many were present.
    pub fn remove(&self, ids: &[VectorId]) -> Result<usize> {
        if ids.len() > MAX_BATCH {
            return Err(err!(TooLarge, "`ids` has {} entries, at most {MAX_BATCH} in one call", ids.len()));
        }
        check_ids(ids, "ids")?;
        let mut st = self.state.write().map_err(|_| lock_err())?;
        let slots: Vec<u32> = {
            let mut seen = std::collections::HashSet::new();
            ids.iter().filter_map(|id| st.slot_of.get(id).copied()).filter(|s| seen.insert(*s)).collect()
        };
        if slots.is_empty() {
            return Ok(0);
        }
        st.store.set_tags(&slots, TOMBSTONE)?;
        for &s in &slots {
            let s = s as usize;
            if let Some(id) = st.ids[s].take() {
                st.slot_of.remove(&id);
            }
            st.tags[s] = TOMBSTONE;
        }
        st.live -= slots.len();
        let dead = st.len() - st.live;
        if dead > 4096 && dead * 2 > st.len() {
            Self::compact(&mut st)?;
        }
        Ok(slots.len())
    }

    /// Move live rows down over the tombstones, keeping their order. A
    /// failed compaction leaves everything as it was (tombstones stay).
    fn compact(st: &mut State) -> Result<()> {
        let keep: Vec<u32> = (0..st.len() as u32).filter(|&s| st.ids[s as usize].is_some()).collect();
        st.store.compact(&keep)?;
        let ids: Vec<Option<VectorId>> = keep.iter().map(|&s| st.ids[s as usize].take()).collect();
        let tags: Vec<u32> = keep.iter().map(|&s| st.tags[s as usize]).collect();
        st.slot_of.clear();
        for (slot, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                st.slot_of.insert(id.clone(), slot as u32);
            }
        }
        st.ids = ids;
        st.tags = tags;
        Ok(())
    }

    /// The stored vectors of `ids` (None where absent).
    pub fn get(&self, ids: &[VectorId]) -> Result<Vec<Option<StoredVector>>> {
        if ids.len() > MAX_BATCH {
            return Err(err!(TooLarge, "`ids` has {} entries, at most {MAX_BATCH} in one call", ids.len()));
        }
        check_ids(ids, "ids")?;
        let st = self.state.read().map_err(|_| lock_err())?;
        let found: Vec<Option<u32>> = ids.iter().map(|id| st.slot_of.get(id).copied()).collect();
        let slots: Vec<u32> = found.iter().flatten().copied().collect();
        let rows = st.store.read(&slots)?;
        let d = self.config.dims;
        let mut rows = rows.chunks_exact(d);
        Ok(found
            .into_iter()
            .map(|f| {
                f.and_then(|s| {
                    let v = rows.next()?.to_vec();
                    let tag = st.tags[s as usize];
                    Some(StoredVector {
                        vector: v,
                        namespace: (tag != NO_NAMESPACE).then(|| st.namespaces[tag as usize].clone()),
                    })
                })
            })
            .collect())
    }

    /// Live rows in slot order from slot `from` on, as stored (normalized
    /// for cosine, rounded for fp16), until about `max_bytes` of vectors,
    /// ids and namespaces (at least one row): for copying this index into
    /// another with [`VectorIndex::upsert_stored`] (the isolated process's
    /// copy). `next` is the slot to continue from; None when done.
    pub fn export_rows(&self, from: usize, max_bytes: usize) -> Result<RowChunk> {
        let st = self.state.read().map_err(|_| lock_err())?;
        let mut slots = Vec::new();
        let mut bytes = 0usize;
        let mut next = None;
        for s in from..st.len() {
            let Some(id) = &st.ids[s] else { continue };
            let tag = st.tags[s];
            let ns_bytes = if tag == NO_NAMESPACE { 0 } else { st.namespaces[tag as usize].len() };
            let id_bytes = match id {
                VectorId::Str(x) => x.len(),
                VectorId::U64(_) => 8,
            };
            // Per row: the values, the id, the namespace and the framing.
            let row = self.config.dims * 4 + id_bytes + ns_bytes + 32;
            if !slots.is_empty() && bytes + row > max_bytes {
                next = Some(s);
                break;
            }
            bytes += row;
            slots.push(s as u32);
        }
        let vectors = st.store.read(&slots)?;
        let ids = slots.iter().filter_map(|&s| st.ids[s as usize].clone()).collect();
        let any_ns = slots.iter().any(|&s| st.tags[s as usize] != NO_NAMESPACE);
        let namespaces = any_ns.then(|| {
            slots
                .iter()
                .map(|&s| {
                    let tag = st.tags[s as usize];
                    (tag != NO_NAMESPACE).then(|| st.namespaces[tag as usize].clone())
                })
                .collect()
        });
        Ok(RowChunk { ids, vectors, namespaces, next })
    }

    /// `upsert` of rows read back with [`VectorIndex::export_rows`]: checked
    /// as usual but not normalized again (that could change their last
    /// bits), so the copy holds the same values as the original.
    pub fn upsert_stored(
        &self,
        ids: Vec<VectorId>,
        vectors: Vec<f32>,
        namespaces: Option<Vec<Option<String>>>,
    ) -> Result<()> {
        self.upsert_rows(ids, vectors, namespaces, false)
    }

    /// Every check `search` makes on its arguments, without searching: a
    /// caller that searches a copy elsewhere (the isolated process) answers
    /// bad arguments with the same errors.
    pub fn check_search(&self, queries: &[f32], k: usize, namespace: Option<&str>) -> Result<()> {
        self.prepare_search(queries.to_vec(), k, namespace).map(|_| ())
    }

    fn prepare_search(&self, queries: Vec<f32>, k: usize, namespace: Option<&str>) -> Result<(Vec<f32>, usize)> {
        if k == 0 || k > MAX_K {
            return Err(err!(InvalidArg, "`k` must be an integer in 1..={MAX_K}, got {k}"));
        }
        let d = self.config.dims;
        if queries.is_empty() || !queries.len().is_multiple_of(d) {
            return Err(err!(
                InvalidArg,
                "`queries` has {} values: expected a positive multiple of dims ({d})",
                queries.len()
            ));
        }
        let nq = queries.len() / d;
        if nq > MAX_QUERIES {
            return Err(err!(TooLarge, "{nq} queries in one search, at most {MAX_QUERIES}"));
        }
        if let Some(ns) = namespace {
            if ns.is_empty() || ns.len() > MAX_NAMESPACE_BYTES {
                return Err(err!(
                    InvalidArg,
                    "`namespace` must be a non-empty string of at most {MAX_NAMESPACE_BYTES} bytes"
                ));
            }
        }
        Ok((self.prepare_rows(queries, nq, "queries")?, nq))
    }

    /// The best `k` vectors for each of the `queries.len() / dims` queries,
    /// restricted to `namespace` when given (an unknown namespace has no
    /// vectors: empty results).
    pub fn search(&self, queries: Vec<f32>, k: usize, namespace: Option<&str>) -> Result<Vec<SearchHits>> {
        let d = self.config.dims;
        let (queries, nq) = self.prepare_search(queries, k, namespace)?;
        let st = self.state.read().map_err(|_| lock_err())?;
        let filter = match namespace {
            None => Filter::Live,
            Some(ns) => match st.tag_of.get(ns) {
                Some(&t) => Filter::Tag(t),
                None => return Ok(vec![SearchHits::default(); nq]),
            },
        };
        let hits = st.store.search(&queries, k, filter, st.len())?;
        let mut out = Vec::with_capacity(nq);
        for (qi, hits) in hits.into_iter().enumerate() {
            let q = &queries[qi * d..(qi + 1) * d];
            let qn = if self.config.metric == Metric::L2 { cpu::dot8(q, q) } else { 0.0 };
            let mut r = SearchHits { ids: Vec::with_capacity(hits.len()), scores: Vec::with_capacity(hits.len()) };
            for Hit { slot, key } in hits {
                let Some(Some(id)) = st.ids.get(slot as usize) else {
                    return Err(err!(Internal, "the vector store returned slot {slot}, which holds no vector"));
                };
                r.ids.push(id.clone());
                r.scores.push(match self.config.metric {
                    Metric::L2 => (qn - key).max(0.0),
                    Metric::Ip | Metric::Cosine => key,
                });
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// Ids must be non-empty strings of at most `MAX_ID_BYTES` bytes (or any u64).
fn check_ids(ids: &[VectorId], field: &str) -> Result<()> {
    for (i, id) in ids.iter().enumerate() {
        if let VectorId::Str(s) = id {
            if s.is_empty() || s.len() > MAX_ID_BYTES {
                return Err(err!(
                    InvalidArg,
                    "`{field}[{i}]` must be a non-empty string of at most {MAX_ID_BYTES} bytes"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
