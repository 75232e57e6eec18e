//! One error type for the whole engine. Every failure carries a stable
//! [`ErrorCode`] (the `.code` JS sees), a message that names the field or file
//! at fault, and optionally the underlying cause. The N-API layer converts it
//! in exactly one place (`src/error.rs`).

use std::fmt;

/// Stable error codes (DESIGN.md "Error codes"). The string form is the
/// public contract: never rename a variant's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArg,
    Envelope,
    BadBase64,
    BadJson,
    Decode,
    TooLarge,
    TooDeep,
    TooLong,
    UnknownType,
    UnknownModel,
    Model,
    WorkerNotFound,
    WorkerSpawn,
    WorkerTimeout,
    WorkerExit,
    WorkerProtocol,
    OutputLimit,
    Cancelled,
    /// A local job ran past its `timeoutMs` (worker jobs use `WorkerTimeout`).
    Timeout,
    Overloaded,
    CudaUnavailable,
    GpuOom,
    CudaFault,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::InvalidArg,
        ErrorCode::Envelope,
        ErrorCode::BadBase64,
        ErrorCode::BadJson,
        ErrorCode::Decode,
        ErrorCode::TooLarge,
        ErrorCode::TooDeep,
        ErrorCode::TooLong,
        ErrorCode::UnknownType,
        ErrorCode::UnknownModel,
        ErrorCode::Model,
        ErrorCode::WorkerNotFound,
        ErrorCode::WorkerSpawn,
        ErrorCode::WorkerTimeout,
        ErrorCode::WorkerExit,
        ErrorCode::WorkerProtocol,
        ErrorCode::OutputLimit,
        ErrorCode::Cancelled,
        ErrorCode::Timeout,
        ErrorCode::Overloaded,
        ErrorCode::CudaUnavailable,
        ErrorCode::GpuOom,
        ErrorCode::CudaFault,
        ErrorCode::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArg => "E_INVALID_ARG",
            ErrorCode::Envelope => "E_ENVELOPE",
            ErrorCode::BadBase64 => "E_BAD_BASE64",
            ErrorCode::BadJson => "E_BAD_JSON",
            ErrorCode::Decode => "E_DECODE",
            ErrorCode::TooLarge => "E_TOO_LARGE",
            ErrorCode::TooDeep => "E_TOO_DEEP",
            ErrorCode::TooLong => "E_TOO_LONG",
            ErrorCode::UnknownType => "E_UNKNOWN_TYPE",
            ErrorCode::UnknownModel => "E_UNKNOWN_MODEL",
            ErrorCode::Model => "E_MODEL",
            ErrorCode::WorkerNotFound => "E_WORKER_NOT_FOUND",
            ErrorCode::WorkerSpawn => "E_WORKER_SPAWN",
            ErrorCode::WorkerTimeout => "E_WORKER_TIMEOUT",
            ErrorCode::WorkerExit => "E_WORKER_EXIT",
            ErrorCode::WorkerProtocol => "E_WORKER_PROTOCOL",
            ErrorCode::OutputLimit => "E_OUTPUT_LIMIT",
            ErrorCode::Cancelled => "E_CANCELLED",
            ErrorCode::Timeout => "E_TIMEOUT",
            ErrorCode::Overloaded => "E_OVERLOADED",
            ErrorCode::CudaUnavailable => "E_CUDA_UNAVAILABLE",
            ErrorCode::GpuOom => "E_GPU_OOM",
            ErrorCode::CudaFault => "E_CUDA_FAULT",
            ErrorCode::Internal => "E_INTERNAL",
        }
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code)
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
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(code.as_str().starts_with("E_"));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("E_NOPE"), None);
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
