//! `VectorIndex` (exact vector search, docs/vector-search.md) and the
//! engine's index methods: `createIndex`, `index`, `dropIndex`, `search`.
//! Arguments are read on the JS thread with their sizes checked before
//! anything is copied; the index work runs on a blocking thread.

use std::sync::Arc;

use cuda_engine_core::isolated_index::{blocking, EngineIndex};
use cuda_engine_core::metrics::CallType;
use cuda_engine_core::options::{self, IndexOptions};
use cuda_engine_core::vector::request::{SearchQuery, SearchRequest};
use cuda_engine_core::vector::{
    IdKind, SearchHits, StoredVector, VectorId, VectorIndex as CoreIndex, MAX_BATCH, MAX_K, MAX_QUERIES,
};
use cuda_engine_core::{err, Result};
use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use crate::convert::{call_options, options_json, options_object, JsVal, ParsedCall};
use crate::task::spawn_job;
use crate::Engine;

/// Most float32 values one call copies out of JS (256 MiB): about 25 ms of
/// memcpy on the JS thread.
pub const MAX_CALL_VALUES: usize = 64 << 20;

/// `upsert` options.
const UPSERT_OPTIONS: &[&str] = &["namespaces"];
/// `search` options.
const SEARCH_OPTIONS: &[&str] = &["k", "namespace"];
/// `engine.search` options: the search's and the call's.
const ENGINE_SEARCH_OPTIONS: &[&str] = &["index", "k", "namespace", "signal", "timeoutMs"];

/// An exact vector index on a GPU or the CPU (with `isolation: 'process'`,
/// a host copy here and the search copy in the isolated process).
#[napi]
pub struct VectorIndex {
    pub(crate) inner: EngineIndex,
}

fn index_to_js(env: &Env, inner: EngineIndex) -> napi::Result<Unknown<'_>> {
    Ok(VectorIndex { inner }.into_instance(env)?.as_object(env).to_unknown())
}

fn local_to_js(env: &Env, inner: Arc<CoreIndex>) -> napi::Result<Unknown<'_>> {
    index_to_js(env, EngineIndex::Local(inner))
}

fn raw(env: &Env, v: &Unknown<'_>) -> JsVal {
    JsVal::new(env.raw(), v.value().value)
}

#[napi]
impl VectorIndex {
    /// Create an empty index: `{ dims, metric?, dtype?, device?, capacity?,
    /// maxBytes? }`.
    #[napi(catch_unwind, ts_args_type = "options: IndexOptions", ts_return_type = "Promise<VectorIndex>")]
    pub fn create<'e>(env: &'e Env, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let config = options_json(options.map(|o| raw(env, &o)))
            .and_then(|v| IndexOptions::from_json(&v))
            .and_then(IndexOptions::into_config);
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| blocking(move || CoreIndex::create(config?, None)),
            local_to_js,
        )
    }

    /// Insert or replace vectors: `ids` (strings, or bigints / integers),
    /// `vectors` (one Float32Array of ids.length × dims, or an array of
    /// Float32Array), `{ namespaces }` (one string or null per id).
    #[napi(
        catch_unwind,
        ts_args_type = "ids: Array<string | bigint | number> | BigUint64Array, vectors: Float32Array | Float32Array[], options?: { namespaces?: Array<string | null | undefined> }",
        ts_return_type = "Promise<void>"
    )]
    pub fn upsert<'e>(
        &self,
        env: &'e Env,
        ids: Unknown<'e>,
        vectors: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let dims = self.inner.config().dims;
        let args = (|| -> Result<_> {
            let ids = read_ids(raw(env, &ids), "ids")?;
            let (values, rows) = read_vectors(raw(env, &vectors), dims, "vectors")?;
            if rows != ids.len() {
                return Err(err!(InvalidArg, "`vectors` holds {rows} vectors but `ids` has {} entries", ids.len()));
            }
            let mut namespaces = None;
            if let Some(o) = options_object(options.map(|o| raw(env, &o)), UPSERT_OPTIONS)? {
                let ns = o.get(c"namespaces")?;
                if !ns.is_nullish()? {
                    namespaces = Some(read_namespaces(ns, ids.len())?);
                }
            }
            Ok((ids, values, namespaces))
        })();
        let index = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| async move {
                let (ids, values, namespaces) = args?;
                index.upsert(ids, values, namespaces).await
            },
            |env, ()| ().into_unknown(env),
        )
    }

    /// Remove ids; resolves to how many were present.
    #[napi(
        catch_unwind,
        ts_args_type = "ids: Array<string | bigint | number> | BigUint64Array",
        ts_return_type = "Promise<number>"
    )]
    pub fn remove<'e>(&self, env: &'e Env, ids: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let ids = read_ids(raw(env, &ids), "ids");
        let index = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| async move { index.remove(ids?).await },
            |env, n| (n as f64).into_unknown(env),
        )
    }

    /// The stored vectors (normalized for cosine, rounded for fp16) with
    /// their namespaces; null for an absent id.
    #[napi(
        catch_unwind,
        ts_args_type = "ids: Array<string | bigint | number> | BigUint64Array",
        ts_return_type = "Promise<Array<{ vector: Float32Array; namespace: string | null } | null>>"
    )]
    pub fn get<'e>(&self, env: &'e Env, ids: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let ids = read_ids(raw(env, &ids), "ids");
        let index = self.inner.clone();
        spawn_job(env, Ok(ParsedCall::default()), move |_| async move { index.get(ids?).await }, stored_to_js)
    }

    /// The best `k` vectors for each query (`queries`: one Float32Array of
    /// n × dims, or an array of Float32Array), best first, within
    /// `namespace` when given. Resolves to one `{ ids, scores }` per query.
    #[napi(
        catch_unwind,
        ts_args_type = "queries: Float32Array | Float32Array[], options?: SearchOptions",
        ts_return_type = "Promise<SearchResult[]>"
    )]
    pub fn search<'e>(
        &self,
        env: &'e Env,
        queries: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let dims = self.inner.config().dims;
        let args = (|| -> Result<_> {
            let (values, _) = read_vectors(raw(env, &queries), dims, "queries")?;
            let o = options_object(options.map(|o| raw(env, &o)), SEARCH_OPTIONS)?;
            let (k, namespace) = search_fields(o)?;
            Ok((values, k, namespace))
        })();
        let index = self.inner.clone();
        let kind = self.inner.id_kind();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| async move {
                let (values, k, namespace) = args?;
                let count = values.len() / dims;
                index.search(SearchQuery::Vectors { values, count }, k, namespace, Default::default()).await
            },
            move |env, hits| hits_to_js(env, hits, kind, false),
        )
    }

    /// Write the index to `path` (docs/vector-search-format.md): a temporary
    /// file in the same directory, fsynced, then renamed over `path`, so a
    /// crash never leaves half an index there. Resolves to `{ path, bytes,
    /// count, sha256 }`.
    #[napi(
        catch_unwind,
        ts_args_type = "path: string",
        ts_return_type = "Promise<{ path: string; bytes: number; count: number; sha256: string }>"
    )]
    pub fn save<'e>(&self, env: &'e Env, path: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let path = read_path(raw(env, &path));
        let index = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| async move {
                let saved = index.save(path?).await?;
                Ok(serde_json::json!({
                    "path": saved.path.display().to_string(),
                    "bytes": saved.bytes,
                    "count": saved.count,
                    "sha256": saved.sha256,
                }))
            },
            |env, v| crate::convert::json_to_js(env, &v),
        )
    }

    /// Load an index saved by `save` onto `options.device` (default
    /// `'auto'`: CUDA device 0 when there is one, else the CPU). A truncated
    /// or corrupted file rejects with `E_INDEX`.
    #[napi(
        catch_unwind,
        ts_args_type = "path: string, options?: { device?: 'auto' | 'cuda' | 'cpu' | number }",
        ts_return_type = "Promise<VectorIndex>"
    )]
    pub fn load<'e>(
        env: &'e Env,
        path: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let path = read_path(raw(env, &path));
        let device = load_device(env, options);
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| blocking(move || CoreIndex::load(&path?, device?, None)),
            local_to_js,
        )
    }

    /// Live vectors.
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        self.inner.len().min(u32::MAX as usize) as u32
    }

    /// Values per vector.
    #[napi(getter)]
    pub fn dims(&self) -> u32 {
        self.inner.config().dims as u32
    }

    /// `'cosine'`, `'ip'` or `'l2'`.
    #[napi(getter)]
    pub fn metric(&self) -> &'static str {
        self.inner.config().metric.as_str()
    }

    /// `'fp16'` or `'fp32'`.
    #[napi(getter)]
    pub fn dtype(&self) -> &'static str {
        self.inner.config().dtype.as_str()
    }

    /// `'cpu'` or `'cuda:N'`: where searches run (with `isolation:
    /// 'process'`, the isolated process's copy).
    #[napi(getter)]
    pub fn device(&self) -> String {
        self.inner.device()
    }

    /// Counts and sizes: `{ dims, metric, dtype, device, count, capacity,
    /// bytes, namespaces }`.
    #[napi(catch_unwind, ts_return_type = "Promise<IndexInfo>")]
    pub fn info<'e>(&self, env: &'e Env) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let index = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| blocking(move || index.info().map(|i| serde_json::to_value(i).unwrap_or_default())),
            |env, v| crate::convert::json_to_js(env, &v),
        )
    }
}

#[napi]
impl Engine {
    /// Create a vector index named `name` on this engine (`device: 'auto'`:
    /// on the model's GPU, through the executor that runs the model).
    #[napi(
        catch_unwind,
        js_name = "createIndex",
        ts_args_type = "name: string, options: IndexOptions",
        ts_return_type = "Promise<VectorIndex>"
    )]
    pub fn create_index<'e>(
        &self,
        env: &'e Env,
        name: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let name = read_name(raw(env, &name));
        let config = options_json(options.map(|o| raw(env, &o)))
            .and_then(|v| IndexOptions::from_json(&v))
            .and_then(IndexOptions::into_config);
        let engine = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| {
                // Admitted on the JS thread, so that close() waits for it
                // (docs/design.md "Close").
                let admission = engine.admit_owned();
                async move {
                    let _admitted = admission?;
                    engine.create_index(&name?, config?).await
                }
            },
            index_to_js,
        )
    }

    /// Load an index file as the index named `name` (placed as
    /// `createIndex` places one).
    #[napi(
        catch_unwind,
        js_name = "loadIndex",
        ts_args_type = "name: string, path: string, options?: { device?: 'auto' | 'cuda' | 'cpu' | number }",
        ts_return_type = "Promise<VectorIndex>"
    )]
    pub fn load_index<'e>(
        &self,
        env: &'e Env,
        name: Unknown<'e>,
        path: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let name = read_name(raw(env, &name));
        let path = read_path(raw(env, &path));
        let device = load_device(env, options);
        let engine = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| {
                let admission = engine.admit_owned();
                async move {
                    let _admitted = admission?;
                    engine.load_index(&name?, path?, device?).await
                }
            },
            index_to_js,
        )
    }

    /// The index named `name`, or null.
    #[napi(catch_unwind, ts_args_type = "name: string", ts_return_type = "VectorIndex | null")]
    pub fn index<'e>(&self, env: &'e Env, name: Unknown<'e>) -> napi::Result<Unknown<'e>> {
        let name = read_name(raw(env, &name)).map_err(|e| crate::error::to_napi(env, e))?;
        match self.inner.index(&name) {
            Some(i) => index_to_js(env, i),
            None => Null.into_unknown(env),
        }
    }

    /// Forget the index named `name`; true when there was one.
    #[napi(catch_unwind, js_name = "dropIndex", ts_args_type = "name: string")]
    pub fn drop_index(&self, env: &Env, name: Unknown<'_>) -> napi::Result<bool> {
        let name = read_name(raw(env, &name)).map_err(|e| crate::error::to_napi(env, e))?;
        Ok(self.inner.drop_index(&name))
    }

    /// Embed `text` (resolves to one `{ ids, scores }`) or `texts` (one per
    /// text) with this engine's model and search the index named
    /// `options.index`, without the vectors passing through JS.
    #[napi(catch_unwind, skip_typescript)]
    pub fn search<'e>(
        &self,
        env: &'e Env,
        input: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> napi::Result<PromiseRaw<'e, Unknown<'e>>> {
        let engine = self.inner.clone();
        let opts = options.map(|o| raw(env, &o));
        let parsed = call_options(opts, ENGINE_SEARCH_OPTIONS);
        let limits = *engine.limits();
        let request = (|| -> Result<_> {
            let texts = crate::embed::embed_input(
                raw(env, &input),
                engine.config().embedder.max_texts_per_call.min(MAX_QUERIES),
                limits.max_envelope_bytes,
            )?;
            let Some(o) = opts else {
                return Err(err!(InvalidArg, "`options.index` is required (the name of one of this engine's indexes)"));
            };
            if o.is_nullish()? {
                return Err(err!(InvalidArg, "`options.index` is required (the name of one of this engine's indexes)"));
            }
            let index = read_name(o.get(c"index")?).map_err(|e| err!(InvalidArg, "`options.index`: {}", e.message))?;
            let (k, namespace) = search_fields(Some(o))?;
            Ok((SearchRequest { index, k, namespace, query: SearchQuery::Texts(texts.texts) }, texts.single))
        })();
        let single = request.as_ref().is_ok_and(|r| r.1);
        let kind = request.as_ref().ok().and_then(|(r, _)| engine.index(&r.index)).and_then(|i| i.id_kind());
        spawn_job(
            env,
            parsed,
            move |call| {
                // Admitted here, on the JS thread (docs/design.md "Close").
                let admission = engine.admit_owned();
                async move {
                    let request = crate::counted(&engine, CallType::Search, &call, request)?;
                    engine.search_admitted(admission, request.0, call).await
                }
            },
            move |env, hits| hits_to_js(env, hits, kind, single),
        )
    }
}

/// `load`'s `{ device }`, read by the one schema's device rule.
fn load_device(env: &Env, options: Option<Unknown<'_>>) -> Result<cuda_engine_core::device::DevicePreference> {
    let v = options_json(options.map(|o| raw(env, &o)))?;
    match &v {
        serde_json::Value::Null => options::parse_device(None),
        serde_json::Value::Object(o) => {
            options::check_keys(o.keys().map(String::as_str), &["device"], "options")?;
            options::parse_device(o.get("device"))
        }
        other => {
            Err(err!(InvalidArg, "`options` must be an object, got {}", cuda_engine_core::envelope::json_kind(other)))
        }
    }
}

fn read_path(v: JsVal) -> Result<std::path::PathBuf> {
    if v.type_of()? != sys::ValueType::napi_string {
        return Err(err!(InvalidArg, "`path` must be a string, got {}", v.kind_name()));
    }
    Ok(std::path::PathBuf::from(bounded_string(v, 4096, "path")?))
}

/// `k` (default 10) and `namespace` from a search options object.
fn search_fields(o: Option<JsVal>) -> Result<(usize, Option<String>)> {
    let Some(o) = o else { return Ok((cuda_engine_core::vector::request::DEFAULT_K, None)) };
    let kv = o.get(c"k")?;
    let k = if kv.is_nullish()? {
        cuda_engine_core::vector::request::DEFAULT_K
    } else {
        if kv.type_of()? != sys::ValueType::napi_number {
            return Err(err!(InvalidArg, "`options.k` must be an integer in 1..={MAX_K}, got {}", kv.kind_name()));
        }
        let k = kv.number()?;
        if !(k.fract() == 0.0 && (1.0..=MAX_K as f64).contains(&k)) {
            return Err(err!(InvalidArg, "`options.k` must be an integer in 1..={MAX_K}, got {k}"));
        }
        k as usize
    };
    let ns = o.get(c"namespace")?;
    let namespace = if ns.is_nullish()? {
        None
    } else if ns.type_of()? == sys::ValueType::napi_string {
        Some(bounded_string(ns, cuda_engine_core::vector::MAX_NAMESPACE_BYTES, "options.namespace")?)
    } else {
        return Err(err!(InvalidArg, "`options.namespace` must be a string, got {}", ns.kind_name()));
    };
    Ok((k, namespace))
}

/// A string of at most `max` UTF-8 bytes (checked before copying).
fn bounded_string(v: JsVal, max: usize, field: &str) -> Result<String> {
    let n = v.string_len()?;
    if n == 0 || n > max {
        return Err(err!(InvalidArg, "`{field}` must be a non-empty string of at most {max} bytes (got {n})"));
    }
    v.string_of_len(n)
}

fn read_name(v: JsVal) -> Result<String> {
    if v.type_of()? != sys::ValueType::napi_string {
        return Err(err!(InvalidArg, "`name` must be a string, got {}", v.kind_name()));
    }
    bounded_string(v, 128, "name")
}

/// Ids: an array of strings, bigints or non-negative safe integers (all of
/// one kind), or a BigUint64Array / BigInt64Array.
fn read_ids(v: JsVal, field: &str) -> Result<Vec<VectorId>> {
    if let Some(t) = v.typed_view()? {
        if t.len > MAX_BATCH {
            return Err(err!(TooLarge, "`{field}` has {} entries, at most {MAX_BATCH} in one call", t.len));
        }
        use sys::TypedarrayType as T;
        return match t.kind {
            T::biguint64_array => Ok(t.copy::<u64>().into_iter().map(VectorId::U64).collect()),
            T::bigint64_array => t
                .copy::<i64>()
                .into_iter()
                .enumerate()
                .map(|(i, x)| {
                    u64::try_from(x)
                        .map(VectorId::U64)
                        .map_err(|_| err!(InvalidArg, "`{field}[{i}]` is negative ({x}): ids are 0..2^64"))
                })
                .collect(),
            _ => Err(err!(InvalidArg, "`{field}` must be an array of ids or a BigUint64Array, got {}", t.name())),
        };
    }
    if v.type_of()? != sys::ValueType::napi_object || !v.is_array() {
        return Err(err!(InvalidArg, "`{field}` must be an array of ids (strings or bigints), got {}", v.kind_name()));
    }
    let n = v.array_len()? as usize;
    if n > MAX_BATCH {
        return Err(err!(TooLarge, "`{field}` has {n} entries, at most {MAX_BATCH} in one call"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let item = v.element(i)?;
        let id = match item.type_of()? {
            sys::ValueType::napi_string => {
                VectorId::Str(bounded_string(item, cuda_engine_core::vector::MAX_ID_BYTES, &format!("{field}[{i}]"))?)
            }
            sys::ValueType::napi_bigint => {
                let x = item.bigint()?;
                VectorId::U64(
                    u64::try_from(x)
                        .map_err(|_| err!(InvalidArg, "`{field}[{i}]` is {x}: integer ids must be in 0..2^64"))?,
                )
            }
            sys::ValueType::napi_number => {
                let x = item.number()?;
                if !(x.fract() == 0.0 && (0.0..=9_007_199_254_740_991.0).contains(&x)) {
                    return Err(err!(
                        InvalidArg,
                        "`{field}[{i}]` is {x}: a number id must be a non-negative safe integer (use a bigint or a string)"
                    ));
                }
                VectorId::U64(x as u64)
            }
            _ => return Err(err!(InvalidArg, "`{field}[{i}]` must be a string or a bigint, got {}", item.kind_name())),
        };
        out.push(id);
    }
    Ok(out)
}

/// Vectors: one Float32Array (a multiple of `dims` values) or an array of
/// Float32Array of `dims` values each. Returns the values and the count.
fn read_vectors(v: JsVal, dims: usize, field: &str) -> Result<(Vec<f32>, usize)> {
    let too_many = |n: usize| err!(TooLarge, "`{field}` has {n} values, at most {MAX_CALL_VALUES} in one call");
    if let Some(t) = v.typed_view()? {
        if t.kind != sys::TypedarrayType::float32_array {
            return Err(err!(InvalidArg, "`{field}` must be a Float32Array or an array of them, got {}", t.name()));
        }
        if t.len > MAX_CALL_VALUES {
            return Err(too_many(t.len));
        }
        if t.len == 0 || t.len % dims != 0 {
            return Err(err!(
                InvalidArg,
                "`{field}` has {} values: expected a positive multiple of dims ({dims})",
                t.len
            ));
        }
        return Ok((t.copy::<f32>(), t.len / dims));
    }
    if v.type_of()? != sys::ValueType::napi_object || !v.is_array() {
        return Err(err!(InvalidArg, "`{field}` must be a Float32Array or an array of them, got {}", v.kind_name()));
    }
    let n = v.array_len()? as usize;
    if n == 0 {
        return Err(err!(InvalidArg, "`{field}` is empty"));
    }
    if n.saturating_mul(dims) > MAX_CALL_VALUES {
        return Err(too_many(n.saturating_mul(dims)));
    }
    let mut out = Vec::with_capacity(n * dims);
    for i in 0..n as u32 {
        let item = v.element(i)?;
        match item.typed_view()? {
            Some(t) if t.kind == sys::TypedarrayType::float32_array && t.len == dims => out.extend(t.copy::<f32>()),
            Some(t) if t.kind == sys::TypedarrayType::float32_array => {
                return Err(err!(InvalidArg, "`{field}[{i}]` has {} values, expected dims = {dims}", t.len))
            }
            Some(t) => return Err(err!(InvalidArg, "`{field}[{i}]` must be a Float32Array, got {}", t.name())),
            None => return Err(err!(InvalidArg, "`{field}[{i}]` must be a Float32Array, got {}", item.kind_name())),
        }
    }
    Ok((out, n))
}

fn read_namespaces(v: JsVal, n: usize) -> Result<Vec<Option<String>>> {
    if v.type_of()? != sys::ValueType::napi_object || !v.is_array() {
        return Err(err!(
            InvalidArg,
            "`options.namespaces` must be an array (one string or null per id), got {}",
            v.kind_name()
        ));
    }
    let len = v.array_len()? as usize;
    if len != n {
        return Err(err!(InvalidArg, "`options.namespaces` has {len} entries, expected one per id ({n})"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let item = v.element(i)?;
        out.push(match item.type_of()? {
            sys::ValueType::napi_undefined | sys::ValueType::napi_null => None,
            sys::ValueType::napi_string => Some(bounded_string(
                item,
                cuda_engine_core::vector::MAX_NAMESPACE_BYTES,
                &format!("options.namespaces[{i}]"),
            )?),
            _ => {
                return Err(err!(
                    InvalidArg,
                    "`options.namespaces[{i}]` must be a string or null, got {}",
                    item.kind_name()
                ))
            }
        });
    }
    Ok(out)
}

/// Search results: `[{ ids, scores }]` (or the one result for a single
/// text); ids as an array of strings, or a BigUint64Array for integer ids.
fn hits_to_js(env: &Env, hits: Vec<SearchHits>, kind: Option<IdKind>, single: bool) -> napi::Result<Unknown<'_>> {
    let one = |env: &Env, h: SearchHits| -> napi::Result<Object<'_>> {
        let mut obj = Object::new(env)?;
        let ints = match kind {
            Some(k) => k == IdKind::U64,
            None => h.ids.first().is_some_and(|i| matches!(i, VectorId::U64(_))),
        };
        if ints {
            let ids: Vec<u64> = h.ids.iter().map(|i| if let VectorId::U64(x) = i { *x } else { 0 }).collect();
            obj.set_named_property("ids", BigUint64Array::new(ids))?;
        } else {
            let mut arr = env.create_array(h.ids.len() as u32)?;
            for (i, id) in h.ids.iter().enumerate() {
                match id {
                    VectorId::Str(s) => arr.set(i as u32, s.as_str())?,
                    VectorId::U64(x) => arr.set(i as u32, *x as f64)?,
                }
            }
            obj.set_named_property("ids", arr)?;
        }
        obj.set_named_property("scores", Float32Array::new(h.scores))?;
        Ok(obj)
    };
    if single {
        let h = hits.into_iter().next().unwrap_or_default();
        return one(env, h)?.into_unknown(env);
    }
    let mut arr = env.create_array(hits.len() as u32)?;
    for (i, h) in hits.into_iter().enumerate() {
        arr.set(i as u32, one(env, h)?)?;
    }
    arr.into_unknown(env)
}

fn stored_to_js(env: &Env, found: Vec<Option<StoredVector>>) -> napi::Result<Unknown<'_>> {
    let mut arr = env.create_array(found.len() as u32)?;
    for (i, f) in found.into_iter().enumerate() {
        match f {
            None => arr.set(i as u32, Null)?,
            Some(v) => {
                let mut obj = Object::new(env)?;
                obj.set_named_property("vector", Float32Array::new(v.vector))?;
                match v.namespace {
                    Some(ns) => obj.set_named_property("namespace", ns.as_str())?,
                    None => obj.set_named_property("namespace", Null)?,
                }
                arr.set(i as u32, obj)?;
            }
        }
    }
    arr.into_unknown(env)
}
