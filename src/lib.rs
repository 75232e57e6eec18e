//! N-API surface of cuda-engine: argument conversion, error mapping and the
//! `Engine` class. All logic lives in `cuda-engine-core`.

mod convert;
mod embed;
mod error;
mod hub;
mod infer;
mod progress;
mod task;
mod vector;

use std::sync::Arc;

use cuda_engine_core::discovery::{self, DiscoveryEnv};
use cuda_engine_core::engine::{Engine as CoreEngine, EngineConfig, OwnedAdmission};
use cuda_engine_core::envelope::{json_kind, Limits};
use cuda_engine_core::metrics::{self, CallType, MetricsReport};
use cuda_engine_core::options::{self, EngineOptions, RemoteOptions, WorkerOptions};
use cuda_engine_core::CoreError;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use tokio::sync::OnceCell;

use crate::convert::{
    call_options, envelope_input, job_result_to_js, json_to_js, options_json, options_object, JsVal, ParsedCall,
};
use crate::error::to_napi;
use crate::task::spawn_job;

/// Threads the runtime may start for blocking work (engine open, large
/// envelope decoding, tokenizing, health probes) at once; more such tasks
/// queue. tokio's default of 512 let 20,000 concurrent `health()` calls
/// start 512 threads.
const MAX_BLOCKING_THREADS: usize = 64;

/// When this `.node` is loaded: record its directory, where the npm platform
/// package ships `cuda-worker` (discovery's bundled step, docs/discovery.md),
/// and give napi a runtime with a bounded blocking pool.
#[napi_derive::module_init]
fn init_module() {
    if let Some(dir) = discovery::dir_of_loaded_object(init_module as *const () as usize) {
        discovery::set_bundled_dir(dir);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cuda-engine-rt")
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build();
    // On failure napi builds its default runtime when first needed.
    if let Ok(rt) = rt {
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}

/// The engine behind the module-level functions, opened on first use from
/// the environment (CUDA_ENGINE_MODEL, CUDA_WORKER_PATH, ...).
static DEFAULT_ENGINE: OnceCell<Arc<CoreEngine>> = OnceCell::const_new();

async fn open_engine(config: EngineConfig) -> std::result::Result<Arc<CoreEngine>, CoreError> {
    tokio::task::spawn_blocking(move || CoreEngine::open(config))
        .await
        .map_err(|e| CoreError::internal(format!("opening the engine failed: {e}")))?
}

async fn default_engine() -> std::result::Result<Arc<CoreEngine>, CoreError> {
    DEFAULT_ENGINE.get_or_try_init(|| open_engine(EngineConfig::default())).await.cloned()
}

fn default_config<T>(read: impl Fn(&EngineConfig) -> T) -> T {
    match DEFAULT_ENGINE.get() {
        Some(e) => read(e.config()),
        None => read(&EngineConfig::default()),
    }
}

/// Where a call goes: a specific engine, or the lazily opened default.
#[derive(Clone)]
enum EngineRef {
    Default,
    Open(Arc<CoreEngine>),
}

impl EngineRef {
    async fn get(self) -> std::result::Result<Arc<CoreEngine>, CoreError> {
        match self {
            EngineRef::Default => default_engine().await,
            EngineRef::Open(e) => Ok(e),
        }
    }

    /// Admit the call now, on the JS thread, when the engine is open (the
    /// default engine before it opened: None, admitted once it has), so
    /// that a call made before `close()` is drained and one made after it
    /// is `E_CLOSED` (docs/design.md "Close").
    fn admit(&self) -> Option<std::result::Result<OwnedAdmission, CoreError>> {
        match self {
            EngineRef::Default => DEFAULT_ENGINE.get().map(CoreEngine::admit_owned),
            EngineRef::Open(e) => Some(e.admit_owned()),
        }
    }

    fn limits(&self) -> Limits {
        match self {
            EngineRef::Default => default_config(|c| c.limits),
            EngineRef::Open(e) => *e.limits(),
        }
    }

    fn max_texts_per_call(&self) -> usize {
        match self {
            EngineRef::Default => default_config(|c| c.embedder.max_texts_per_call),
            EngineRef::Open(e) => e.config().embedder.max_texts_per_call,
        }
    }
}

fn submit_impl<'e>(
    env: &'e Env,
    engine: EngineRef,
    envelope: Unknown<'e>,
    options: Option<Unknown<'e>>,
) -> Result<PromiseRaw<'e, Unknown<'e>>> {
    let raw_env = env.raw();
    let parsed = call_options(options.map(|o| JsVal::new(raw_env, o.value().value)), options::CALL_OPTIONS);
    let input = envelope_input(JsVal::new(raw_env, envelope.value().value), &engine.limits());
    spawn_job(
        env,
        parsed,
        move |call| {
            let admission = engine.admit();
            async move {
                let engine = engine.get().await?;
                let input = counted(&engine, CallType::Unknown, &call, input.and_then(|i| i.finish()))?;
                engine.submit_admitted(admitted(&engine, admission), input, call).await
            }
        },
        job_result_to_js,
    )
}

fn embed_impl<'e>(
    env: &'e Env,
    engine: EngineRef,
    input: Unknown<'e>,
    options: Option<Unknown<'e>>,
) -> Result<PromiseRaw<'e, Unknown<'e>>> {
    let raw_env = env.raw();
    let parsed = call_options(options.map(|o| JsVal::new(raw_env, o.value().value)), options::EMBED_OPTIONS);
    let request = embed::embed_bytes(
        JsVal::new(raw_env, input.value().value),
        engine.max_texts_per_call(),
        engine.limits().max_envelope_bytes,
    );
    let opts = parsed.as_ref().map(embed::embed_options).unwrap_or_default();
    let single = request.as_ref().is_ok_and(|i| i.single);
    // `onProgress`: hooked only for a call that will run.
    let (parsed, mut progress) = match (parsed, &request) {
        (Ok(p), Ok(r)) if p.progress.is_some() => {
            let hooked = p.progress.map(|f| progress::ProgressJs::new(env, f, r.count(), p.call.cancel.clone()));
            match hooked {
                Some(Ok(h)) => (Ok(p), Some(h)),
                Some(Err(e)) => (Err(e), None),
                None => (Ok(p), None),
            }
        }
        (parsed, _) => (parsed, None),
    };
    let reporter = progress.as_mut().and_then(|p| p.reporter());
    spawn_job(
        env,
        parsed,
        // The texts are split into strings here, on the runtime. The
        // outcome is settled by `to_js`, so that `onProgress` sees it first.
        move |call| {
            let admission = engine.admit();
            async move {
                let run = async {
                    let engine = engine.get().await?;
                    let input = counted(&engine, CallType::Embed, &call, request.and_then(|r| r.into_input()))?;
                    engine.embed_admitted(admitted(&engine, admission), input.texts, opts, call, reporter).await
                };
                Ok(run.await)
            }
        },
        move |env, outcome: std::result::Result<Vec<Vec<f32>>, CoreError>| {
            let outcome = match progress {
                Some(p) => p.settle(outcome),
                None => outcome,
            };
            match outcome {
                Ok(vectors) => embed::vectors_to_js(env, vectors, single),
                Err(e) => Err(to_napi(env, e)),
            }
        },
    )
}

/// The admission a call took on the JS thread ([`EngineRef::admit`]), else
/// (the default engine opened after the call was made) one taken now.
pub(crate) fn admitted(
    engine: &Arc<CoreEngine>,
    taken: Option<std::result::Result<OwnedAdmission, CoreError>>,
) -> std::result::Result<OwnedAdmission, CoreError> {
    taken.unwrap_or_else(|| engine.admit_owned())
}

/// `r`, its error first counted as a call of `call` that failed before it
/// reached the engine (argument conversion), so that the engine's
/// `requests_total` counts every call.
pub(crate) fn counted<T>(
    engine: &CoreEngine,
    call: CallType<'_>,
    opts: &cuda_engine_core::engine::CallOptions,
    r: std::result::Result<T, CoreError>,
) -> std::result::Result<T, CoreError> {
    if let Err(e) = &r {
        engine.record_rejected(call, opts.issued, e.code);
    }
    r
}

/// Read `metrics()`'s options: true for `format: 'json'`. Unknown keys and
/// other formats are `E_INVALID_ARG` naming the key.
fn metrics_json(v: Option<JsVal>) -> std::result::Result<bool, CoreError> {
    let Some(v) = options_object(v, options::METRICS_OPTIONS)? else { return Ok(false) };
    let format = v.get(c"format")?;
    if format.is_nullish()? {
        return Ok(false);
    }
    let s = if format.type_of()? == napi::sys::ValueType::napi_string { Some(format.string()?) } else { None };
    match s.as_deref() {
        Some("prometheus") => Ok(false),
        Some("json") => Ok(true),
        _ => Err(cuda_engine_core::err!(
            InvalidArg,
            "`options.format` must be 'prometheus' or 'json', got {}",
            s.as_deref().map_or(format.kind_name().to_string(), |s| format!("{s:?}"))
        )),
    }
}

/// The metrics report as Prometheus text or, with `format: 'json'`, an object.
fn metrics_impl<'e>(
    env: &'e Env,
    options: Option<Unknown<'e>>,
    report: impl FnOnce() -> MetricsReport,
) -> Result<Unknown<'e>> {
    let json = metrics_json(options.map(|o| JsVal::new(env.raw(), o.value().value))).map_err(|e| to_napi(env, e))?;
    let report = report();
    if json {
        json_to_js(env, &report.to_json())
    } else {
        report.to_prometheus().into_unknown(env)
    }
}

fn health_impl<'e>(env: &'e Env, engine: EngineRef) -> Result<PromiseRaw<'e, Unknown<'e>>> {
    spawn_job(
        env,
        Ok(ParsedCall::default()),
        move |_| async move {
            let engine = engine.get().await?;
            // `isolation: 'process'`: the isolated process's own report.
            engine.refresh_health().await;
            tokio::task::spawn_blocking(move || engine.health().to_json())
                .await
                .map_err(|e| CoreError::internal(format!("health check failed: {e}")))
        },
        |env, value| json_to_js(env, &value),
    )
}

/// Run a job envelope: `{type, payload}` or `{type, payload_b64}`, given as an
/// object, a JSON string or a Uint8Array. Resolves with a JobResult.
#[napi(
    catch_unwind,
    ts_args_type = "envelope: Envelope | string | Uint8Array, options?: CallOptions",
    ts_return_type = "Promise<JobResult>"
)]
pub fn submit<'e>(
    env: &'e Env,
    envelope: Unknown<'e>,
    options: Option<Unknown<'e>>,
) -> Result<PromiseRaw<'e, Unknown<'e>>> {
    submit_impl(env, EngineRef::Default, envelope, options)
}

/// Embed one text (resolves to a Float32Array) or many (Float32Array[], in
/// order) with the engine's model. The header (`types.d.ts.in`) declares
/// the two overloads first; this generated union signature comes after them
/// (and must exist: napi's generated `index.js` exports only functions it
/// declares).
#[napi(
    catch_unwind,
    ts_args_type = "input: string | string[], options?: EmbedOptions",
    ts_return_type = "Promise<Float32Array | Float32Array[]>"
)]
pub fn embed<'e>(
    env: &'e Env,
    input: Unknown<'e>,
    options: Option<Unknown<'e>>,
) -> Result<PromiseRaw<'e, Unknown<'e>>> {
    embed_impl(env, EngineRef::Default, input, options)
}

/// The worker that the shared discovery rules pick (docs/discovery.md), or
/// null when the search finds none. Throws `E_WORKER_NOT_FOUND` when
/// CUDA_WORKER_PATH is set but unusable (never a silent fallback), and
/// `E_INVALID_ARG` naming the field for bad options.
#[napi(catch_unwind, ts_args_type = "options?: { baseDir?: string }")]
pub fn find_cuda_worker_path<'e>(env: &'e Env, options: Option<Unknown<'e>>) -> Result<Option<String>> {
    let base = discovery_base(env, options).map_err(|e| to_napi(env, e))?;
    let denv = DiscoveryEnv::from_process();
    match discovery::find_worker(&base, &denv) {
        Ok((path, _)) => Ok(Some(path.display().to_string())),
        Err(_) if std::env::var_os("CUDA_WORKER_PATH").is_none_or(|v| v.is_empty()) => Ok(None),
        Err(e) => Err(to_napi(env, e)),
    }
}

/// Every candidate discovery checks, in order (what `health().cuda_path` shows).
#[napi(catch_unwind, ts_args_type = "options?: { baseDir?: string }")]
pub fn discovery_candidates<'e>(env: &'e Env, options: Option<Unknown<'e>>) -> Result<Vec<String>> {
    let base = discovery_base(env, options).map_err(|e| to_napi(env, e))?;
    Ok(discovery::candidates(&base, &DiscoveryEnv::from_process()).iter().map(|p| p.display().to_string()).collect())
}

/// The keys of the discovery functions' options.
const DISCOVERY_OPTIONS: &[&str] = &["baseDir"];

/// The base directory from `{ baseDir? }` (default: the cwd). The argument
/// is read as an untyped JS value with the bounded options walker, so a
/// non-object, a Symbol, a throwing getter or a Proxy trap is `E_INVALID_ARG`
/// naming the field (napi's typed conversion threw `StringExpected` or let
/// the caller's exception through), and an unknown key names the nearest.
fn discovery_base(env: &Env, options: Option<Unknown<'_>>) -> std::result::Result<std::path::PathBuf, CoreError> {
    use serde_json::Value;
    let json = options_json(options.map(|o| JsVal::new(env.raw(), o.value().value)))?;
    let base = match &json {
        Value::Null => None,
        Value::Object(o) => {
            options::check_keys(o.keys().map(String::as_str), DISCOVERY_OPTIONS, "options")?;
            match o.get("baseDir") {
                None | Some(Value::Null) => None,
                Some(Value::String(b)) => Some(b.clone()),
                Some(other) => {
                    return Err(cuda_engine_core::err!(
                        InvalidArg,
                        "`options.baseDir` must be a string (a directory), got {}",
                        json_kind(other)
                    ))
                }
            }
        }
        other => {
            return Err(cuda_engine_core::err!(
                InvalidArg,
                "`options` must be an object {{ baseDir? }}, got {}",
                json_kind(other)
            ))
        }
    };
    if let Some(b) = base.as_deref().filter(|b| std::path::Path::new(b).is_absolute()) {
        return Ok(b.into());
    }
    let cwd =
        std::env::current_dir().map_err(|e| CoreError::internal(format!("cannot read the current directory: {e}")))?;
    Ok(match base {
        Some(b) => cwd.join(b),
        None => cwd,
    })
}

/// Engine state: CUDA availability, devices, worker candidates, model, queue.
#[napi(catch_unwind, ts_return_type = "Promise<Health>")]
pub fn health(env: &Env) -> Result<PromiseRaw<'_, Unknown<'_>>> {
    health_impl(env, EngineRef::Default)
}

/// The default engine's metrics (docs/metrics.md): Prometheus text
/// exposition format 0.0.4, or with `{ format: 'json' }` the same numbers as
/// an object. Synchronous. Before the default engine opened (no module-level
/// call yet), every count is 0.
#[napi(catch_unwind, ts_args_type = "options?: MetricsOptions", ts_return_type = "string | MetricsReport")]
pub fn metrics<'e>(env: &'e Env, options: Option<Unknown<'e>>) -> Result<Unknown<'e>> {
    metrics_impl(env, options, || match DEFAULT_ENGINE.get() {
        Some(e) => e.metrics(),
        None => metrics::unopened_report(),
    })
}

/// An engine with its own options (model, device, worker, limits).
/// The module-level functions use a default engine opened from the environment.
#[napi]
pub struct Engine {
    inner: Arc<CoreEngine>,
}

#[napi]
impl Engine {
    /// Open an engine. Rejects with a coded error for bad options, a missing
    /// model, or `device: 'cuda'` where CUDA is unavailable.
    #[napi(catch_unwind, ts_args_type = "options?: EngineOptions", ts_return_type = "Promise<Engine>")]
    pub fn open<'e>(env: &'e Env, options: Option<Unknown<'e>>) -> Result<PromiseRaw<'e, Unknown<'e>>> {
        // The one schema (crates/core/src/options.rs): unknown keys and bad
        // values reject with E_INVALID_ARG naming the key.
        let config = options_json(options.map(|o| JsVal::new(env.raw(), o.value().value)))
            .and_then(|v| EngineOptions::from_json(&v))
            .and_then(EngineOptions::into_config);
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| async move { open_engine(config?).await },
            |env, inner| Ok(Engine { inner }.into_instance(env)?.as_object(env).to_unknown()),
        )
    }

    #[napi(
        catch_unwind,
        ts_args_type = "envelope: Envelope | string | Uint8Array, options?: CallOptions",
        ts_return_type = "Promise<JobResult>"
    )]
    pub fn submit<'e>(
        &self,
        env: &'e Env,
        envelope: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> Result<PromiseRaw<'e, Unknown<'e>>> {
        submit_impl(env, EngineRef::Open(self.inner.clone()), envelope, options)
    }

    #[napi(catch_unwind, skip_typescript)]
    pub fn embed<'e>(
        &self,
        env: &'e Env,
        input: Unknown<'e>,
        options: Option<Unknown<'e>>,
    ) -> Result<PromiseRaw<'e, Unknown<'e>>> {
        embed_impl(env, EngineRef::Open(self.inner.clone()), input, options)
    }

    #[napi(catch_unwind, ts_return_type = "Promise<Health>")]
    pub fn health<'e>(&self, env: &'e Env) -> Result<PromiseRaw<'e, Unknown<'e>>> {
        health_impl(env, EngineRef::Open(self.inner.clone()))
    }

    /// This engine's metrics: Prometheus text, or with `{ format: 'json' }`
    /// an object (docs/metrics.md). Synchronous; a closed engine reports its
    /// final counts.
    #[napi(catch_unwind, skip_typescript)]
    pub fn metrics<'e>(&self, env: &'e Env, options: Option<Unknown<'e>>) -> Result<Unknown<'e>> {
        metrics_impl(env, options, || self.inner.metrics())
    }

    /// Stop admitting calls (new ones reject with `E_CLOSED`), wait up to
    /// `drainMs` (default 30,000) for the calls in flight, cancel the rest
    /// (`E_CANCELLED`), then release the worker processes and the model.
    /// Idempotent.
    #[napi(catch_unwind, ts_args_type = "options?: CloseOptions", ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env, options: Option<Unknown<'e>>) -> Result<PromiseRaw<'e, Unknown<'e>>> {
        let drain = close_options(options.map(|o| JsVal::new(env.raw(), o.value().value)));
        if drain.is_ok() {
            self.inner.stop_admitting();
        }
        let inner = self.inner.clone();
        spawn_job(
            env,
            Ok(ParsedCall::default()),
            move |_| async move {
                inner.close(drain?).await;
                Ok(())
            },
            |env, ()| ().into_unknown(env),
        )
    }
}

/// Default drain time of `close()`.
const DEFAULT_DRAIN_MS: f64 = 30_000.0;

fn close_options(v: Option<JsVal>) -> std::result::Result<std::time::Duration, CoreError> {
    let json = options_json(v)?;
    let obj = match &json {
        serde_json::Value::Null => return options::millis(DEFAULT_DRAIN_MS, "options.drainMs"),
        serde_json::Value::Object(o) => o,
        _ => return Err(cuda_engine_core::err!(InvalidArg, "`options` must be an object {{ drainMs? }}")),
    };
    options::check_keys(obj.keys().map(String::as_str), options::CLOSE_OPTIONS, "options")?;
    match obj.get("drainMs") {
        None | Some(serde_json::Value::Null) => options::millis(DEFAULT_DRAIN_MS, "options.drainMs"),
        Some(v) => match v.as_f64() {
            Some(ms) => options::millis(ms, "options.drainMs"),
            None => Err(cuda_engine_core::err!(InvalidArg, "`options.drainMs` must be a number, got {v}")),
        },
    }
}

/// The option names of the one schema (crates/core/src/options.rs), for
/// tools and tests: `{ engine, worker, call, embed, close }`.
#[napi(
    catch_unwind,
    ts_return_type = "{ engine: string[]; worker: string[]; remote: string[]; call: string[]; embed: string[]; close: string[] }"
)]
pub fn option_names() -> serde_json::Value {
    serde_json::json!({
        "engine": EngineOptions::field_names(),
        "worker": WorkerOptions::field_names(),
        "remote": RemoteOptions::field_names(),
        "call": options::CALL_OPTIONS,
        "embed": options::EMBED_OPTIONS,
        "close": options::CLOSE_OPTIONS,
    })
}

/// The error-code table, defined once in core: `[{ code, http_status, meaning }]`
/// (the same as `docs/error-codes.json`). Services map codes to HTTP statuses
/// with it instead of keeping their own copy.
#[napi(catch_unwind, ts_return_type = "ErrorCodeInfo[]")]
pub fn error_codes() -> serde_json::Value {
    cuda_engine_core::ErrorCode::table_json()
}
