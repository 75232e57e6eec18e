//! One error type for the whole engine. Every failure carries a stable
//! [`ErrorCode`] (the `.code` JS sees), a message that names the field or file
//! at fault, and optionally the underlying cause. The N-API layer converts it
//! in exactly one place (`src/error.rs`).

use std::fmt;

/// The error-code table (DESIGN.md "Error codes"): every code's string, its
/// meaning and its HTTP status, defined once. The JS binding exports it as
/// `errorCodes`, `docs/error-codes.json` is generated from it (a test keeps
/// them equal) and the README table, the HTTP service and the Go package read
/// it from there. The string form is the public contract: never rename one.
macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $http:literal, $meaning:literal; )*) => {
        /// Stable error codes; see the table in [`error_codes!`]'s invocation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable string (`E_…`), what JS sees as `err.code`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status a service answers with for this code.
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $http,)* }
            }

            /// One line saying when the code is used.
            pub const fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning,)* }
            }
        }
    };
}

error_codes! {
    InvalidArg = "E_INVALID_ARG", 400, "an argument or option has the wrong type or value, or an unknown key (names it)";
    Envelope = "E_ENVELOPE", 400, "envelope shape: both/neither payload, missing `type`, not an object";
    BadBase64 = "E_BAD_BASE64", 400, "`payload_b64` is not base64 (names the offset)";
    BadJson = "E_BAD_JSON", 400, "text that must be JSON is not (line, column)";
    Decode = "E_DECODE", 400, "CBOR / MessagePack payload does not decode";
    TooLarge = "E_TOO_LARGE", 413, "over a size limit (envelope, texts per call, elements per array)";
    TooDeep = "E_TOO_DEEP", 400, "JSON (or a JS object) nested deeper than the limit, or cyclic";
    TooLong = "E_TOO_LONG", 400, "a text over the model's tokens with `truncate: false` (names its index)";
    UnknownType = "E_UNKNOWN_TYPE", 404, "no local runner and no worker for this job type";
    UnknownModel = "E_UNKNOWN_MODEL", 404, "the requested model is not loaded and no worker is configured";
    Model = "E_MODEL", 503, "no model, or model files missing or malformed (names file and field)";
    /// `VectorIndex::save` / `VectorIndex::load` (docs/vector-search-format.md).
    Index = "E_INDEX", 422, "a vector index file cannot be read or written, or is truncated, corrupted or of an unsupported version (names the file and what is wrong)";
    WorkerNotFound = "E_WORKER_NOT_FOUND", 503, "no worker binary (names `CUDA_WORKER_PATH` or where it looked)";
    WorkerSpawn = "E_WORKER_SPAWN", 503, "the worker could not be started";
    WorkerTimeout = "E_WORKER_TIMEOUT", 504, "the worker did not answer in time (its process group is killed)";
    WorkerExit = "E_WORKER_EXIT", 502, "the worker died or exited non-zero (with its stderr tail)";
    WorkerProtocol = "E_WORKER_PROTOCOL", 502, "the worker's output is not valid protocol";
    OutputLimit = "E_OUTPUT_LIMIT", 502, "the worker wrote more than `maxOutputBytes`";
    Cancelled = "E_CANCELLED", 499, "the call's AbortSignal fired, or a closing engine cancelled it";
    /// A local job ran past its `timeoutMs` (worker jobs use `WorkerTimeout`).
    Timeout = "E_TIMEOUT", 504, "a local job ran past `timeoutMs`";
    Overloaded = "E_OVERLOADED", 503, "admission limit reached (`maxInFlight`, `maxQueuedTexts`)";
    /// The engine was closed (or is closing): no new calls are admitted.
    Closed = "E_CLOSED", 503, "the engine is closed or closing; open a new one";
    /// HTTP service: a bearer token is configured and the request has none or another.
    Unauthorized = "E_UNAUTHORIZED", 401, "the service needs a bearer token and the request has none or a wrong one";
    /// HTTP service: an `Origin` or `Host` that is not allowed.
    Forbidden = "E_FORBIDDEN", 403, "the request's `Origin` or `Host` is not allowed (cross-site or DNS-rebinding protection)";
    /// HTTP service: a POST body that is not JSON.
    UnsupportedMediaType = "E_UNSUPPORTED_MEDIA_TYPE", 415, "a POST body whose content type is not `application/json`";
    /// HTTP service: the request body stopped arriving.
    RequestTimeout = "E_REQUEST_TIMEOUT", 408, "the request's body did not arrive within the body timeout";
    /// The remote client (`EngineOptions.remote`, docs/grpc.md).
    Remote = "E_REMOTE", 502, "a remote gRPC server (`EngineOptions.remote`) was unreachable or answered a non-OK status (names the endpoint, the gRPC status and message)";
    CudaUnavailable = "E_CUDA_UNAVAILABLE", 503, "`device: 'cuda'` but no usable CUDA device";
    GpuOom = "E_GPU_OOM", 503, "out of GPU memory for this request";
    CudaFault = "E_CUDA_FAULT", 503, "a sticky CUDA error poisoned the context";
    Internal = "E_INTERNAL", 500, "a bug (a caught panic); the process keeps running";
}

impl ErrorCode {
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// The whole table as JSON (`docs/error-codes.json`, JS `errorCodes`):
    /// `[{code, http_status, meaning}, …]` in table order.
    pub fn table_json() -> serde_json::Value {
        serde_json::Value::Array(
            ErrorCode::ALL
                .iter()
                .map(|c| serde_json::json!({ "code": c.as_str(), "http_status": c.http_status(), "meaning": c.meaning() }))
                .collect(),
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The engine's error: a code, a message naming what is at fault, a cause.
#[derive(Debug)]
pub struct CoreError {
    pub code: ErrorCode,
    pub message: String,
    pub cause: Option<Cause>,
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CoreError { code, message: message.into(), cause: None }
    }

    /// Attach the lower-level error this one was caused by (kept as a chain,
    /// shown as `err.cause` in JS).
    pub fn with_cause(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn invalid_arg(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArg, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "the call was cancelled by its AbortSignal")
    }

    /// Messages of the cause chain, outermost first (not including `self`).
    pub fn cause_messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static));
        while let Some(err) = next {
            out.push(err.to_string());
            next = err.source();
        }
        out
    }

    /// A copy without the (non-clonable) cause; its text is folded into the message.
    pub fn clone_flat(&self) -> CoreError {
        let mut message = self.message.clone();
        for cause in self.cause_messages() {
            message.push_str(": ");
            message.push_str(&cause);
        }
        CoreError::new(self.code, message)
    }

    /// Turn a panic payload (from `catch_unwind`) into `E_INTERNAL`.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>, what: &str) -> CoreError {
        let detail = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic payload".to_string()
        };
        CoreError::internal(format!("internal panic in {what}: {detail}"))
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for CoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// Shorthand: `err!(InvalidArg, "texts[{i}] is not a string")`.
#[macro_export]
macro_rules! err {
    ($code:ident, $($fmt:tt)*) => {
        $crate::error::CoreError::new($crate::error::ErrorCode::$code, format!($($fmt)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(code.as_str().starts_with("E_"));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("E_NOPE"), None);
    }

    /// `docs/error-codes.json` is generated from the table; regenerate it with
    /// `UPDATE_ERROR_CODES=1 cargo test -p cuda-engine-core error_codes_file`.
    #[test]
    fn error_codes_file_matches_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/error-codes.json");
        let want = serde_json::to_string_pretty(&ErrorCode::table_json()).unwrap() + "\n";
        if std::env::var_os("UPDATE_ERROR_CODES").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(have, want, "docs/error-codes.json is stale: run with UPDATE_ERROR_CODES=1");
    }

    #[test]
    fn cause_chain_is_kept_and_flattened() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "config.json missing");
        let e = CoreError::new(ErrorCode::Model, "cannot load model").with_cause(io);
        assert_eq!(e.cause_messages(), vec!["config.json missing".to_string()]);
        let flat = e.clone_flat();
        assert_eq!(flat.code, ErrorCode::Model);
        assert_eq!(flat.message, "cannot load model: config.json missing");
        assert_eq!(e.to_string(), "E_MODEL: cannot load model");
    }
}
