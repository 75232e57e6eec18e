//! A search as the engine runs it: `engine.search(texts, { index, k })` and
//! `submit({ type: 'vector_search', payload })` both become a
//! [`SearchRequest`].

use serde_json::{json, Map, Value};

use super::{SearchHits, VectorId, MAX_K, MAX_QUERIES};
use crate::err;
use crate::error::Result;

/// What to search with: vectors (`n × dims` values) or texts to embed.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchQuery {
    Vectors { values: Vec<f32>, count: usize },
    Texts(Vec<String>),
}

/// One search call on a named index.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub index: String,
    pub k: usize,
    pub namespace: Option<String>,
    pub query: SearchQuery,
}

/// The keys of a `vector_search` payload.
pub const SEARCH_PAYLOAD_KEYS: &[&str] = &["index", "k", "namespace", "vector", "vectors", "text", "texts"];

/// Default `k` when a payload leaves it out.
pub const DEFAULT_K: usize = 10;

impl SearchRequest {
    /// Read a `vector_search` payload: `{ index, k?, namespace?, vector |
    /// vectors | text | texts }` (exactly one query field). `max_texts`
    /// bounds `texts` (maxTextsPerCall).
    pub fn from_json(payload: &Value, max_texts: usize) -> Result<SearchRequest> {
        let obj = payload.as_object().ok_or_else(|| {
            err!(
                InvalidArg,
                "a vector_search payload must be an object {{ index, k, vector | vectors | text | texts }}, got {}",
                crate::envelope::json_kind(payload)
            )
        })?;
        crate::keys::check_keys(obj.keys().map(String::as_str), SEARCH_PAYLOAD_KEYS, "payload")?;
        let index = match obj.get("index") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            other => return Err(err!(InvalidArg, "`payload.index` must be an index name, got {}", kind(other))),
        };
        let k = match obj.get("k") {
            None | Some(Value::Null) => DEFAULT_K,
            Some(v) => match v.as_u64() {
                Some(k) if (1..=MAX_K as u64).contains(&k) => k as usize,
                _ => return Err(err!(InvalidArg, "`payload.k` must be an integer in 1..={MAX_K}, got {v}")),
            },
        };
        let namespace = match obj.get("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            other => return Err(err!(InvalidArg, "`payload.namespace` must be a string, got {}", kind(other))),
        };
        let given: Vec<&str> = ["vector", "vectors", "text", "texts"]
            .into_iter()
            .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        if given.len() != 1 {
            return Err(err!(
                InvalidArg,
                "a vector_search payload needs exactly one of `vector`, `vectors`, `text`, `texts` (got {})",
                if given.is_empty() { "none".to_string() } else { given.join(", ") }
            ));
        }
        let query = match given[0] {
            "vector" => {
                let values = numbers(&obj["vector"], "payload.vector")?;
                SearchQuery::Vectors { values, count: 1 }
            }
            "vectors" => {
                let rows = obj["vectors"]
                    .as_array()
                    .ok_or_else(|| err!(InvalidArg, "`payload.vectors` must be an array of arrays of numbers"))?;
                if rows.is_empty() || rows.len() > MAX_QUERIES {
                    return Err(err!(InvalidArg, "`payload.vectors` must have 1..={MAX_QUERIES} vectors"));
                }
                let mut values = Vec::new();
                let mut width = None;
                for (i, r) in rows.iter().enumerate() {
                    let row = numbers(r, &format!("payload.vectors[{i}]"))?;
                    if *width.get_or_insert(row.len()) != row.len() {
                        return Err(err!(
                            InvalidArg,
                            "`payload.vectors[{i}]` has {} values, the first has {width:?}",
                            row.len()
                        ));
                    }
                    values.extend(row);
                }
                SearchQuery::Vectors { values, count: rows.len() }
            }
            "text" => match &obj["text"] {
                Value::String(s) => SearchQuery::Texts(vec![s.clone()]),
                other => return Err(err!(InvalidArg, "`payload.text` must be a string, got {}", kind(Some(other)))),
            },
            _ => {
                let arr = obj["texts"]
                    .as_array()
                    .ok_or_else(|| err!(InvalidArg, "`payload.texts` must be an array of strings"))?;
                if arr.is_empty() || arr.len() > max_texts.min(MAX_QUERIES) {
                    return Err(err!(InvalidArg, "`payload.texts` must have 1..={} texts", max_texts.min(MAX_QUERIES)));
                }
                let mut texts = Vec::with_capacity(arr.len());
                for (i, t) in arr.iter().enumerate() {
                    match t {
                        Value::String(s) => texts.push(s.clone()),
                        other => {
                            return Err(err!(
                                InvalidArg,
                                "`payload.texts[{i}]` must be a string, got {}",
                                kind(Some(other))
                            ))
                        }
                    }
                }
                SearchQuery::Texts(texts)
            }
        };
        Ok(SearchRequest { index, k, namespace, query })
    }
}

fn kind(v: Option<&Value>) -> &'static str {
    v.map_or("nothing", crate::envelope::json_kind)
}

fn numbers(v: &Value, field: &str) -> Result<Vec<f32>> {
    let arr = v.as_array().ok_or_else(|| err!(InvalidArg, "`{field}` must be an array of numbers"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64().map(|f| f as f32).ok_or_else(|| {
                err!(InvalidArg, "`{field}[{i}]` must be a number, got {}", crate::envelope::json_kind(x))
            })
        })
        .collect()
}

/// An id as JSON: strings as strings, integer ids as JSON numbers (exact in
/// the JSON text; JS's `JSON.parse` rounds those above 2^53).
pub fn id_to_json(id: &VectorId) -> Value {
    match id {
        VectorId::Str(s) => Value::String(s.clone()),
        VectorId::U64(n) => json!(n),
    }
}

/// `vector_search` job output: `{ index, k, results: [{ ids, scores }] }`.
pub fn results_to_json(index: &str, k: usize, hits: &[SearchHits]) -> Value {
    let results: Vec<Value> = hits
        .iter()
        .map(|h| {
            let mut m = Map::new();
            m.insert("ids".into(), Value::Array(h.ids.iter().map(id_to_json).collect()));
            m.insert("scores".into(), json!(h.scores));
            Value::Object(m)
        })
        .collect();
    json!({ "index": index, "k": k, "results": results })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_bad_ones_name_the_field() {
        let r = SearchRequest::from_json(&json!({ "index": "docs", "k": 3, "vector": [1, 2] }), 10).unwrap();
        assert_eq!(r.query, SearchQuery::Vectors { values: vec![1.0, 2.0], count: 1 });
        let r =
            SearchRequest::from_json(&json!({ "index": "docs", "texts": ["a", "b"], "namespace": "t" }), 10).unwrap();
        assert_eq!((r.k, r.namespace.as_deref()), (DEFAULT_K, Some("t")));
        let e = |v: Value| SearchRequest::from_json(&v, 10).unwrap_err().message;
        assert!(e(json!({ "index": "d", "vector": [1], "text": "x" })).contains("exactly one"));
        assert!(e(json!({ "index": "d" })).contains("exactly one"));
        assert!(e(json!({ "vector": [1] })).contains("`payload.index`"));
        assert!(e(json!({ "index": "d", "vector": [1], "k": 0 })).contains("`payload.k`"));
        assert!(e(json!({ "index": "d", "vector": ["x"] })).contains("`payload.vector[0]`"));
        assert!(e(json!({ "index": "d", "vectors": [[1, 2], [1]] })).contains("`payload.vectors[1]`"));
        assert!(e(json!({ "index": "d", "vector": [1], "kk": 1 })).contains("`payload.kk`"));
    }
}
