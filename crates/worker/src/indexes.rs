//! The isolated process's side of `isolation: 'process'` vector indexes
//! (`cuda_engine_core::isolated_index`): the search copies, by key, next to
//! this process's model. Only the supervisor writes these requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::{CallOptions, Engine};
use cuda_engine_core::err;
use cuda_engine_core::error::{CoreError, Result};
use cuda_engine_core::isolated_index::{IndexOp, IndexReply};
use cuda_engine_core::jobs::Target;
use cuda_engine_core::vector::request::SearchQuery;
use cuda_engine_core::vector::{VectorId, VectorIndex};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Most copies held at once: the parent's index limit, twice (a copy being
/// rebuilt next to the one it replaces).
const MAX_COPIES: usize = 2 * cuda_engine_core::engine::MAX_INDEXES;

/// A mutation sent in several parts, applied whole with its last part.
#[derive(Default)]
struct Parts {
    remove: bool,
    stored: bool,
    ids: Vec<VectorId>,
    vectors: Vec<f32>,
    namespaces: Vec<Option<String>>,
    any_namespace: bool,
}

struct Copy {
    index: Arc<VectorIndex>,
    parts: Option<Parts>,
}

/// The copies of this process, by the supervisor's key.
#[derive(Default)]
pub struct Copies {
    map: Mutex<HashMap<u64, Copy>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CoreError::internal(format!("vector index task failed: {e}")))?
}

/// No copy under `key`: this process was started after it was built. The
/// supervisor rebuilds it (a protocol-level mismatch, not the caller's).
fn missing(key: u64) -> CoreError {
    err!(
        WorkerProtocol,
        "vector index copy {key} is not in this process (it was restarted); the supervisor rebuilds it"
    )
}

impl Copies {
    fn index(&self, key: u64) -> Result<Arc<VectorIndex>> {
        lock(&self.map).get(&key).map(|c| c.index.clone()).ok_or_else(|| missing(key))
    }

    /// Add a part of a mutation; Some(whole) with the last part.
    fn gather(&self, key: u64, first: bool, more: bool, part: Parts) -> Result<Option<(Arc<VectorIndex>, Parts)>> {
        let mut map = lock(&self.map);
        let copy = map.get_mut(&key).ok_or_else(|| missing(key))?;
        let mut whole = match (first, copy.parts.take()) {
            (true, _) | (false, None) => Parts { remove: part.remove, stored: part.stored, ..Parts::default() },
            (false, Some(p)) => p,
        };
        if whole.remove != part.remove {
            return Err(err!(WorkerProtocol, "a mutation of copy {key} mixes upsert and remove parts"));
        }
        whole.ids.extend(part.ids);
        whole.vectors.extend(part.vectors);
        whole.any_namespace |= part.any_namespace;
        whole.namespaces.extend(part.namespaces);
        if more {
            copy.parts = Some(whole);
            return Ok(None);
        }
        Ok(Some((copy.index.clone(), whole)))
    }

    /// Run one op with this process's engine (its model, its GPU).
    pub async fn run(&self, engine: &Arc<Engine>, op: IndexOp, cancel: CancellationToken) -> Result<IndexReply> {
        match op {
            IndexOp::Create { key, mut config } => {
                if lock(&self.map).len() >= MAX_COPIES {
                    return Err(err!(TooLarge, "this process holds {MAX_COPIES} vector index copies already"));
                }
                // Next to the model: `auto` is the model's GPU (its executor).
                let gpu = engine.index_placement(&mut config.device);
                let index = blocking(move || VectorIndex::create(config, gpu)).await?;
                let device = index.placement().label();
                lock(&self.map).insert(key, Copy { index, parts: None });
                Ok(IndexReply::Json(json!({ "device": device })))
            }
            IndexOp::Upsert { key, ids, vectors, namespaces, stored, first, more } => {
                let n = ids.len();
                let any_namespace = namespaces.is_some();
                let part = Parts {
                    remove: false,
                    stored,
                    ids,
                    vectors,
                    namespaces: namespaces.unwrap_or_else(|| vec![None; n]),
                    any_namespace,
                };
                let Some((index, whole)) = self.gather(key, first, more, part)? else {
                    return Ok(IndexReply::Json(json!({})));
                };
                let namespaces = whole.any_namespace.then_some(whole.namespaces);
                blocking(move || {
                    if whole.stored {
                        index.upsert_stored(whole.ids, whole.vectors, namespaces)
                    } else {
                        index.upsert(whole.ids, whole.vectors, namespaces)
                    }
                })
                .await?;
                Ok(IndexReply::Json(json!({})))
            }
            IndexOp::Remove { key, ids, first, more } => {
                let part = Parts { remove: true, ids, ..Parts::default() };
                let Some((index, whole)) = self.gather(key, first, more, part)? else {
                    return Ok(IndexReply::Json(json!({})));
                };
                let removed = blocking(move || index.remove(&whole.ids)).await?;
                Ok(IndexReply::Json(json!({ "removed": removed })))
            }
            IndexOp::Drop { key } => {
                let dropped = lock(&self.map).remove(&key).is_some();
                Ok(IndexReply::Json(json!({ "dropped": dropped })))
            }
            IndexOp::Search { key, k, namespace, query } => {
                let index = self.index(key)?;
                let values = match query {
                    SearchQuery::Vectors { values, .. } => values,
                    SearchQuery::Texts(texts) => {
                        let dims = index.config().dims;
                        let call = CallOptions { cancel, target: Target::Local, ..CallOptions::default() };
                        let vectors = engine.embed(texts, EmbedOptions::default(), call).await?;
                        if let Some(v) = vectors.first().filter(|v| v.len() != dims) {
                            return Err(err!(
                                InvalidArg,
                                "`index` holds {dims}-dimensional vectors but the model embeds {}",
                                v.len()
                            ));
                        }
                        vectors.concat()
                    }
                };
                let hits = blocking(move || index.search(values, k, namespace.as_deref())).await?;
                Ok(IndexReply::Hits(hits))
            }
        }
    }
}
