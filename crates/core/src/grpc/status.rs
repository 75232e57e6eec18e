//! The one mapping between the engine's error codes and gRPC status codes
//! (docs/grpc.md "Status mapping"), used by the server (`to_status`) and by
//! the remote client (`from_status`).
//!
//! The server puts the engine's code in the `x-cuda-engine-code` metadata of
//! every non-OK status, so a client that knows the engine gets the exact
//! code back and any other client still gets a standard gRPC code.

use crate::error::{CoreError, ErrorCode};

/// Response metadata key holding the engine's code (`E_…`) of a failed call.
pub const CODE_METADATA_KEY: &str = "x-cuda-engine-code";

/// The gRPC status code a server answers for an engine error.
///
/// UNAVAILABLE is kept for what a retry (on this or another replica) can
/// fix, since that is the code clients and load balancers retry.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    use tonic::Code;
    use ErrorCode as E;
    match code {
        E::InvalidArg
        | E::Envelope
        | E::BadBase64
        | E::BadJson
        | E::Decode
        | E::TooDeep
        | E::TooLong
        | E::UnsupportedMediaType => Code::InvalidArgument,
        E::TooLarge | E::OutputLimit | E::GpuOom => Code::ResourceExhausted,
        E::UnknownType => Code::Unimplemented,
        E::UnknownModel => Code::NotFound,
        E::Model | E::Index | E::WorkerNotFound => Code::FailedPrecondition,
        E::WorkerSpawn | E::WorkerExit | E::Overloaded | E::Closed | E::CudaUnavailable | E::CudaFault | E::Remote => {
            Code::Unavailable
        }
        E::WorkerTimeout | E::Timeout | E::RequestTimeout => Code::DeadlineExceeded,
        E::WorkerProtocol | E::Internal => Code::Internal,
        E::Cancelled => Code::Cancelled,
        E::Unauthorized => Code::Unauthenticated,
        E::Forbidden => Code::PermissionDenied,
    }
}

/// The status a server answers for `e`: the mapped code, the engine's
/// message (with its causes), and the engine's code in the metadata.
pub fn to_status(e: &CoreError) -> tonic::Status {
    let flat = e.clone_flat();
    let mut status = tonic::Status::new(grpc_code(e.code), format!("{}: {}", e.code, flat.message));
    status.metadata_mut().insert(CODE_METADATA_KEY, tonic::metadata::MetadataValue::from_static(e.code.as_str()));
    status
}

/// The engine code a server put in a status's metadata, if any.
pub fn engine_code(status: &tonic::Status) -> Option<ErrorCode> {
    status.metadata().get(CODE_METADATA_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::parse)
}

/// A failed remote call as the client reports it: `E_TIMEOUT` when the
/// deadline ended it, else `E_REMOTE` naming the endpoint, the gRPC code,
/// the remote engine's code when it sent one, and the message.
pub fn from_status(status: &tonic::Status, endpoint: &str) -> CoreError {
    let remote = engine_code(status).map(|c| format!(" ({c})")).unwrap_or_default();
    let code = if status.code() == tonic::Code::DeadlineExceeded { ErrorCode::Timeout } else { ErrorCode::Remote };
    let what = if status.code() == tonic::Code::Unavailable && remote.is_empty() {
        "is unreachable or unavailable"
    } else {
        "answered"
    };
    CoreError::new(code, format!("remote {endpoint} {what}: gRPC {:?}{remote}: {}", status.code(), status.message()))
}

/// The mapping as a Markdown table (docs/grpc.md carries it; a test keeps
/// the two equal).
pub fn table_markdown() -> String {
    let mut out = String::from("| engine code | gRPC status |\n|---|---|\n");
    for c in ErrorCode::ALL {
        out.push_str(&format!("| `{}` | `{}` |\n", c.as_str(), code_name(grpc_code(*c))));
    }
    out
}

/// The canonical upper-case name of a gRPC code (`RESOURCE_EXHAUSTED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_failure_and_round_trips_through_metadata() {
        for &c in ErrorCode::ALL {
            let status = to_status(&CoreError::new(c, "boom"));
            assert_ne!(status.code(), tonic::Code::Ok, "{c}");
            assert_eq!(status.code(), grpc_code(c));
            assert_eq!(engine_code(&status), Some(c));
            assert_eq!(status.message(), format!("{c}: boom"));
        }
    }

    #[test]
    fn retryable_codes_are_unavailable() {
        for c in [ErrorCode::Overloaded, ErrorCode::Closed, ErrorCode::WorkerExit, ErrorCode::CudaFault] {
            assert_eq!(grpc_code(c), tonic::Code::Unavailable, "{c}");
        }
        assert_eq!(grpc_code(ErrorCode::InvalidArg), tonic::Code::InvalidArgument);
        assert_eq!(grpc_code(ErrorCode::TooLarge), tonic::Code::ResourceExhausted);
        assert_eq!(grpc_code(ErrorCode::Timeout), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn client_side_codes() {
        let s = to_status(&CoreError::new(ErrorCode::Overloaded, "full"));
        let e = from_status(&s, "grpc://h:1");
        assert_eq!(e.code, ErrorCode::Remote);
        assert!(
            e.message.contains("grpc://h:1") && e.message.contains("E_OVERLOADED") && e.message.contains("full"),
            "{}",
            e.message
        );
        let e = from_status(&tonic::Status::deadline_exceeded("late"), "grpc://h:1");
        assert_eq!(e.code, ErrorCode::Timeout);
        let e = from_status(&tonic::Status::unavailable("tcp connect error"), "grpc://h:1");
        assert_eq!(e.code, ErrorCode::Remote);
        assert!(e.message.contains("unreachable"), "{}", e.message);
    }

    /// docs/grpc.md carries the table; regenerate it from here when a code is added.
    #[test]
    fn docs_table_is_current() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grpc.md")).unwrap_or_default();
        assert!(doc.contains(&table_markdown()), "docs/grpc.md's status table is stale; paste:\n{}", table_markdown());
    }
}
