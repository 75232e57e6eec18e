//! `cuda_engine.v1.Engine`: the engine's own calls (embeddings as packed
//! f32, vector search, job envelopes, the health document).

use std::sync::Arc;

use bytes::Bytes;
use cuda_engine_core::embedder::EmbedOptions;
use cuda_engine_core::engine::{CallOptions, EnvelopeInput};
use cuda_engine_core::err;
use cuda_engine_core::error::Result;
use cuda_engine_core::grpc::proto::engine as pb;
use cuda_engine_core::grpc::proto::engine::engine_server::Engine;
use cuda_engine_core::jobs::Target;
use cuda_engine_core::vector::request::{SearchQuery, SearchRequest, DEFAULT_K};
use cuda_engine_core::vector::{SearchHits, VectorId, MAX_QUERIES};
use tonic::{Request, Response, Status};

use super::{run_stream, status, Call, Responses, State};

pub(crate) struct EngineService(pub Arc<State>);

type Reply<T> = std::result::Result<Response<T>, Status>;

fn wire_error(e: &cuda_engine_core::error::CoreError) -> pb::Error {
    pb::Error { code: e.code.as_str().to_string(), message: e.clone_flat().message }
}

/// The hidden size the model reports in its metadata parameters.
fn model_dims(m: &cuda_engine_core::infer::ModelMetadata) -> usize {
    m.parameters.get("hidden_size").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize
}

async fn embed(state: &State, req: pb::EmbedRequest, call: CallOptions) -> Result<pb::EmbedResponse> {
    let model = state.model().await?;
    if !req.model.is_empty() && req.model != model.name {
        return Err(err!(
            UnknownModel,
            "model {:?} is not served here (this server serves {:?})",
            req.model,
            model.name
        ));
    }
    let opts = EmbedOptions { normalize: req.normalize, truncate: req.truncate.unwrap_or(true) };
    let vectors = state.engine.embed(req.texts, opts, call).await?;
    let dims = vectors.first().map_or_else(|| model_dims(model), Vec::len);
    let mut packed = Vec::with_capacity(vectors.len() * dims * 4);
    for v in &vectors {
        for x in v {
            packed.extend_from_slice(&x.to_le_bytes());
        }
    }
    let out = pb::EmbedResponse {
        id: req.id,
        model: model.name.clone(),
        count: vectors.len() as u32,
        dims: dims as u32,
        embeddings: Bytes::from(packed),
    };
    state.check_size(&out)?;
    Ok(out)
}

fn hits_to_proto(h: SearchHits) -> pb::SearchHits {
    let mut out = pb::SearchHits { scores: h.scores, ..Default::default() };
    for id in h.ids {
        match id {
            VectorId::Str(s) => out.ids.push(s),
            VectorId::U64(n) => out.u64_ids.push(n),
        }
    }
    out
}

async fn search(state: &State, req: pb::VectorSearchRequest, call: CallOptions) -> Result<pb::VectorSearchResponse> {
    if req.index.is_empty() {
        return Err(err!(InvalidArg, "`index` must name a vector index of this server (--index NAME=PATH)"));
    }
    let k = if req.k == 0 { DEFAULT_K } else { req.k as usize };
    let query = match (req.vectors.is_empty(), req.texts.is_empty()) {
        (false, true) => {
            if !req.vectors.len().is_multiple_of(4) {
                return Err(err!(
                    InvalidArg,
                    "`vectors` holds {} bytes: packed little-endian float32 needs a multiple of 4",
                    req.vectors.len()
                ));
            }
            let values: Vec<f32> =
                req.vectors.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            // The count follows from the index's dims; a wrong length is the
            // index's E_INVALID_ARG.
            let dims = state.engine.index(&req.index).map_or(0, |i| i.config().dims);
            let count = values.len().checked_div(dims).unwrap_or(0);
            if count > MAX_QUERIES {
                return Err(err!(InvalidArg, "`vectors` holds {count} queries; at most {MAX_QUERIES}"));
            }
            SearchQuery::Vectors { values, count }
        }
        (true, false) => {
            let max = state.engine.config().embedder.max_texts_per_call.min(MAX_QUERIES);
            if req.texts.len() > max {
                return Err(err!(InvalidArg, "`texts` has {} texts; at most {max}", req.texts.len()));
            }
            SearchQuery::Texts(req.texts)
        }
        _ => return Err(err!(InvalidArg, "a search needs exactly one of `vectors` and `texts`")),
    };
    let hits =
        state.engine.search(SearchRequest { index: req.index, k, namespace: req.namespace, query }, call).await?;
    let out = pb::VectorSearchResponse { id: req.id, results: hits.into_iter().map(hits_to_proto).collect() };
    state.check_size(&out)?;
    Ok(out)
}

async fn submit(state: &State, req: pb::SubmitRequest, mut call: CallOptions) -> Result<pb::SubmitResponse> {
    call.target = match req.target.as_str() {
        "" => Target::Auto,
        t => Target::parse(t)
            .ok_or_else(|| err!(InvalidArg, "`target` must be 'auto', 'local' or 'worker', got {t:?}"))?,
    };
    let input = match req.envelope {
        Some(pb::submit_request::Envelope::Json(s)) => EnvelopeInput::Bytes(s.into_bytes()),
        Some(pb::submit_request::Envelope::Raw(b)) => EnvelopeInput::Bytes(b.to_vec()),
        None => return Err(err!(Envelope, "a SubmitRequest needs an envelope (`json` or `raw`)")),
    };
    let result = state.engine.submit(input, call).await?;
    let json = serde_json::to_string(&result.to_json())
        .map_err(|e| err!(Internal, "the job result could not be written as JSON: {e}"))?;
    let out = pb::SubmitResponse { json };
    state.check_size(&out)?;
    Ok(out)
}

#[tonic::async_trait]
impl Engine for EngineService {
    async fn embed(&self, req: Request<pb::EmbedRequest>) -> Reply<pb::EmbedResponse> {
        let call = Call::new(&req, Target::Auto)?;
        let opts = call.remaining().map_err(|e| status(&e))?;
        let out = embed(&self.0, req.into_inner(), opts).await.map_err(|e| status(&e))?;
        drop(call);
        Ok(Response::new(out))
    }

    type EmbedStreamStream = Responses<pb::EmbedStreamResponse>;

    async fn embed_stream(&self, req: Request<tonic::Streaming<pb::EmbedRequest>>) -> Reply<Self::EmbedStreamStream> {
        let call = Call::new(&req, Target::Auto)?;
        let state = self.0.clone();
        let responses = run_stream(&self.0, req.into_inner(), call, move |r: pb::EmbedRequest, opts| {
            let state = state.clone();
            async move {
                let id = r.id.clone();
                let outcome = match opts {
                    Ok(opts) => embed(&state, r, opts).await,
                    Err(e) => Err(e),
                };
                let result = match outcome {
                    Ok(e) => pb::embed_stream_response::Result::Embedding(e),
                    Err(e) => pb::embed_stream_response::Result::Error(wire_error(&e)),
                };
                pb::EmbedStreamResponse { id, result: Some(result) }
            }
        });
        Ok(Response::new(responses))
    }

    async fn vector_search(&self, req: Request<pb::VectorSearchRequest>) -> Reply<pb::VectorSearchResponse> {
        let call = Call::new(&req, Target::Auto)?;
        let opts = call.remaining().map_err(|e| status(&e))?;
        let out = search(&self.0, req.into_inner(), opts).await.map_err(|e| status(&e))?;
        drop(call);
        Ok(Response::new(out))
    }

    type VectorSearchStreamStream = Responses<pb::VectorSearchStreamResponse>;

    async fn vector_search_stream(
        &self,
        req: Request<tonic::Streaming<pb::VectorSearchRequest>>,
    ) -> Reply<Self::VectorSearchStreamStream> {
        let call = Call::new(&req, Target::Auto)?;
        let state = self.0.clone();
        let responses = run_stream(&self.0, req.into_inner(), call, move |r: pb::VectorSearchRequest, opts| {
            let state = state.clone();
            async move {
                let id = r.id.clone();
                let outcome = match opts {
                    Ok(opts) => search(&state, r, opts).await,
                    Err(e) => Err(e),
                };
                let result = match outcome {
                    Ok(h) => pb::vector_search_stream_response::Result::Hits(h),
                    Err(e) => pb::vector_search_stream_response::Result::Error(wire_error(&e)),
                };
                pb::VectorSearchStreamResponse { id, result: Some(result) }
            }
        });
        Ok(Response::new(responses))
    }

    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Reply<pb::SubmitResponse> {
        let call = Call::new(&req, Target::Auto)?;
        let opts = call.remaining().map_err(|e| status(&e))?;
        let out = submit(&self.0, req.into_inner(), opts).await.map_err(|e| status(&e))?;
        drop(call);
        Ok(Response::new(out))
    }

    async fn health(&self, _req: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        let engine = self.0.engine.clone();
        let doc = tokio::task::spawn_blocking(move || engine.health().to_json())
            .await
            .map_err(|e| status(&err!(Internal, "health check failed: {e}")))?;
        let json = serde_json::to_string(&doc)
            .map_err(|e| status(&err!(Internal, "the health document could not be written as JSON: {e}")))?;
        Ok(Response::new(pb::HealthResponse { json }))
    }
}
