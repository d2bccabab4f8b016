//! One place that maps failures to RPC status codes, and status codes to the Connect protocol's names
//! and HTTP statuses. Internal details go to logs; clients get a short message.

use tonic::{Code, Status};

use crate::core::source::{ErrorKind, SourceError};

/// `google.rpc.Status`: how gRPC carries error details (`grpc-status-details-bin`), and how tonic
/// keeps them in [`Status::details`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The code's number.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// The detail messages a status carries (none when it has no details or they do not decode).
pub fn details_of(status: &Status) -> Vec<prost_types::Any> {
    if status.details().is_empty() {
        return Vec::new();
    }
    <RpcStatus as prost::Message>::decode(status.details())
        .map_or_else(|_| Vec::new(), |s| s.details)
}

/// A status with `details` attached, as gRPC and Connect carry them.
pub fn with_details(code: Code, message: String, details: Vec<prost_types::Any>) -> Status {
    let encoded = prost::Message::encode_to_vec(&RpcStatus {
        code: code as i32,
        message: message.clone(),
        details,
    });
    Status::with_details(code, message, encoded.into())
}

/// The status a client sees for a state-source failure.
pub fn from_source(e: &SourceError) -> Status {
    let (code, what) = match e.kind {
        ErrorKind::Unavailable => (Code::Unavailable, "flag state source unavailable"),
        ErrorKind::Timeout => (Code::DeadlineExceeded, "flag state source timed out"),
        ErrorKind::InvalidArgument => return Status::invalid_argument(e.message.to_string()),
        ErrorKind::NotFound => return Status::not_found(e.message.to_string()),
        ErrorKind::Unauthenticated => (Code::Unauthenticated, "upstream refused credentials"),
        ErrorKind::PermissionDenied => (Code::PermissionDenied, "upstream refused the request"),
        ErrorKind::ResourceExhausted => (Code::ResourceExhausted, "upstream resource exhausted"),
        ErrorKind::Unimplemented => (Code::Unimplemented, "upstream does not implement this call"),
        ErrorKind::Internal => (Code::Internal, "flag state source error"),
    };
    tracing::warn!(error = %e, code = ?code, "state RPC failed");
    Status::new(code, what)
}

/// The Connect protocol's name for a code (`not_found`, ...).
pub fn connect_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The code a Connect error name stands for (`None` for a name the protocol does not define).
pub fn from_connect_name(name: &str) -> Option<Code> {
    Some(match name {
        "canceled" => Code::Cancelled,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        "unknown" => Code::Unknown,
        _ => return None,
    })
}

/// The HTTP status the Connect protocol gives a code.
pub fn connect_http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// The source error kind an upstream status code becomes (so codes survive a proxy hop).
pub fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Timeout,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ErrorKind::InvalidArgument
        }
        Code::NotFound => ErrorKind::NotFound,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Unimplemented => ErrorKind::Unimplemented,
        Code::Unavailable | Code::Unknown => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_names_round_trip_and_map_to_http() {
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert_eq!(from_connect_name(connect_name(code)), Some(code));
        }
        assert_eq!(
            connect_http_status(Code::NotFound),
            http::StatusCode::NOT_FOUND
        );
        assert_eq!(
            connect_http_status(Code::ResourceExhausted),
            http::StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn upstream_codes_survive_a_proxy_hop() {
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unavailable,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            let e = SourceError::new(kind_of(code), "x");
            assert_eq!(from_source(&e).code(), code);
        }
    }
}
