//! `inference.GRPCInferenceService`: the Open Inference Protocol (what
//! Triton, KServe and MLServer serve) over the engine's encoder model.

use std::sync::Arc;

use cuda_engine_core::err;
use cuda_engine_core::error::Result;
use cuda_engine_core::grpc::proto::inference as pb;
use cuda_engine_core::grpc::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use cuda_engine_core::grpc::tensor;
use cuda_engine_core::jobs::Target;
use tonic::{Request, Response, Status};

use super::{run_stream, status, Call, Responses, State};

pub(crate) struct Oip(pub Arc<State>);

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Versions the engine serves (it has one).
const VERSION: &str = "1";

fn version_ok(v: &str) -> bool {
    v.is_empty() || v == VERSION
}

/// One inference: the protocol's request to the engine and back, answering
/// raw contents when the request came raw.
async fn infer(
    state: &State,
    req: pb::ModelInferRequest,
    call: cuda_engine_core::engine::CallOptions,
) -> Result<pb::ModelInferResponse> {
    if !version_ok(&req.model_version) {
        return Err(err!(
            UnknownModel,
            "model {:?} has no version {:?} (it serves version {VERSION})",
            req.model_name,
            req.model_version
        ));
    }
    let raw = !req.raw_input_contents.is_empty();
    let parsed = tensor::request_from_proto(&req)?;
    drop(req);
    let resp = state.engine.infer(parsed, call).await?;
    let out = tensor::response_to_proto(&resp, raw);
    state.check_size(&out)?;
    Ok(out)
}

#[tonic::async_trait]
impl GrpcInferenceService for Oip {
    async fn server_live(&self, _req: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: !self.0.engine.is_closed() }))
    }

    async fn server_ready(&self, _req: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.0.ready() }))
    }

    async fn model_ready(&self, req: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let req = req.into_inner();
        let ready = self.0.ready()
            && self.0.model.get().is_some_and(|m| req.name.is_empty() || req.name == m.name)
            && version_ok(&req.version);
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _req: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "cuda-engine".into(),
            version: cuda_engine_core::VERSION.into(),
            extensions: vec!["model_stream_infer".into()],
        }))
    }

    async fn model_metadata(&self, req: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        let req = req.into_inner();
        let m = self.0.model().await.map_err(|e| status(&e))?;
        if !(req.name.is_empty() || req.name == m.name) || !version_ok(&req.version) {
            return Err(status(&err!(
                UnknownModel,
                "no model {:?} version {:?} here (this server serves {:?} version {VERSION})",
                req.name,
                req.version,
                m.name
            )));
        }
        Ok(Response::new(tensor::metadata_to_proto(m)))
    }

    async fn model_infer(&self, req: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let call = Call::new(&req, Target::Auto)?;
        let opts = call.remaining().map_err(|e| status(&e))?;
        let out = infer(&self.0, req.into_inner(), opts).await.map_err(|e| status(&e))?;
        drop(call);
        Ok(Response::new(out))
    }

    type ModelStreamInferStream = Responses<pb::ModelStreamInferResponse>;

    async fn model_stream_infer(
        &self,
        req: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        let call = Call::new(&req, Target::Auto)?;
        let state = self.0.clone();
        let responses = run_stream(&self.0, req.into_inner(), call, move |r: pb::ModelInferRequest, opts| {
            let state = state.clone();
            async move {
                // A failed request is an in-band error; the stream goes on.
                let (model_name, model_version, id) = (r.model_name.clone(), r.model_version.clone(), r.id.clone());
                let outcome = match opts {
                    Ok(opts) => infer(&state, r, opts).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(resp) => {
                        pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(resp) }
                    }
                    Err(e) => pb::ModelStreamInferResponse {
                        error_message: status(&e).message().to_string(),
                        // The request's names, so a client can tell which one failed.
                        infer_response: Some(pb::ModelInferResponse {
                            model_name,
                            model_version,
                            id,
                            ..Default::default()
                        }),
                    },
                }
            }
        });
        Ok(Response::new(responses))
    }
}
