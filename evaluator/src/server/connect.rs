//! The Connect protocol, unary: `POST /pbflags.v1.FlagEvaluatorService/<Method>` with
//! `application/proto` or `application/json` bodies (HTTP/1.1 or HTTP/2), errors as
//! `{"code": "...", "message": "..."}` with the protocol's HTTP status. JSON uses the canonical
//! proto3 mapping, through prost-reflect and the compiled-in descriptors.
//!
//! Requests are decoded here and handed to the same [`Evaluator`] methods gRPC uses.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use pbflags_proto::v1::flag_evaluator_service_server::FlagEvaluatorService as _;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::{Code, Status};

use super::service::Evaluator;
use crate::protocol::status::{connect_http_status, connect_name};

/// Shared state of the Connect handler.
#[derive(Clone)]
pub struct ConnectState {
    /// The service.
    pub evaluator: Evaluator,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Proto,
    Json,
}

impl Codec {
    fn content_type(self) -> &'static str {
        match self {
            Codec::Proto => "application/proto",
            Codec::Json => "application/json",
        }
    }
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The set is compiled into the binary from our own protos; decoding it cannot fail.
        DescriptorPool::decode(pbflags_proto::FILE_DESCRIPTOR_SET).unwrap_or_default()
    })
}

fn descriptor(name: &str) -> Result<MessageDescriptor, Status> {
    pool()
        .get_message_by_name(&format!("pbflags.v1.{name}"))
        .ok_or_else(|| Status::internal("message descriptor missing"))
}

fn decode<T: Message + Default>(codec: Codec, body: &[u8], type_name: &str) -> Result<T, Status> {
    match codec {
        Codec::Proto => T::decode(body)
            .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}"))),
        Codec::Json => {
            let desc = descriptor(type_name)?;
            let mut de = serde_json::Deserializer::from_slice(body);
            let msg = DynamicMessage::deserialize(desc, &mut de)
                .and_then(|m| de.end().map(|()| m))
                .map_err(|e| {
                    Status::invalid_argument(format!("malformed {type_name} JSON: {e}"))
                })?;
            msg.transcode_to::<T>()
                .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}")))
        }
    }
}

fn encode<T: Message>(codec: Codec, msg: &T, type_name: &str) -> Result<Vec<u8>, Status> {
    match codec {
        Codec::Proto => Ok(msg.encode_to_vec()),
        Codec::Json => {
            let dynamic =
                DynamicMessage::decode(descriptor(type_name)?, msg.encode_to_vec().as_slice())
                    .map_err(|_| Status::internal("encode response"))?;
            serde_json::to_vec(&dynamic).map_err(|_| Status::internal("encode response"))
        }
    }
}

/// A Connect error response.
pub fn error_response(status: &Status) -> Response {
    let body =
        serde_json::json!({ "code": connect_name(status.code()), "message": status.message() });
    let mut resp = (connect_http_status(status.code()), body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn codec_of(headers: &HeaderMap) -> Option<Codec> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "application/proto" => Some(Codec::Proto),
        "application/json" => Some(Codec::Json),
        _ => None,
    }
}

fn timeout_of(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(v) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|ms| *ms > 0 && *ms < 10_000_000_000)
        .ok_or_else(|| {
            Status::invalid_argument(
                "connect-timeout-ms must be a positive integer of at most 10 digits",
            )
        })?;
    Ok(Some(Duration::from_millis(ms)))
}

macro_rules! unary {
    ($state:expr, $codec:expr, $body:expr, $trace:expr, $method:ident, $req:literal, $resp:literal) => {{
        let req = decode($codec, &$body, $req)?;
        let resp = $state
            .evaluator
            .$method(tonic::Request::from_parts(
                tonic::metadata::MetadataMap::from_headers($trace),
                tonic::Extensions::default(),
                req,
            ))
            .await?
            .into_inner();
        encode($codec, &resp, $resp)
    }};
}

async fn dispatch(
    state: &ConnectState,
    method: &str,
    codec: Codec,
    body: Bytes,
    trace: HeaderMap,
) -> Result<Vec<u8>, Status> {
    match method {
        "Evaluate" => unary!(
            state,
            codec,
            body,
            trace,
            evaluate,
            "EvaluateRequest",
            "EvaluateResponse"
        ),
        "BulkEvaluate" => unary!(
            state,
            codec,
            body,
            trace,
            bulk_evaluate,
            "BulkEvaluateRequest",
            "BulkEvaluateResponse"
        ),
        "Health" => unary!(
            state,
            codec,
            body,
            trace,
            health,
            "HealthRequest",
            "HealthResponse"
        ),
        "GetFlagState" => unary!(
            state,
            codec,
            body,
            trace,
            get_flag_state,
            "GetFlagStateRequest",
            "GetFlagStateResponse"
        ),
        "GetKilledFlags" => unary!(
            state,
            codec,
            body,
            trace,
            get_killed_flags,
            "GetKilledFlagsRequest",
            "GetKilledFlagsResponse"
        ),
        "GetOverrides" => unary!(
            state,
            codec,
            body,
            trace,
            get_overrides,
            "GetOverridesRequest",
            "GetOverridesResponse"
        ),
        other => Err(Status::unimplemented(format!(
            "pbflags.v1.FlagEvaluatorService/{other} does not exist"
        ))),
    }
}

/// `POST /pbflags.v1.FlagEvaluatorService/{method}` for Connect clients.
pub async fn handle(
    State(state): State<ConnectState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(codec) = codec_of(&headers) else {
        let mut resp = StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
        resp.headers_mut().insert(
            http::HeaderName::from_static("accept-post"),
            HeaderValue::from_static("application/proto, application/json"),
        );
        return resp;
    };
    if let Some(v) = headers.get("connect-protocol-version")
        && v != "1"
    {
        return error_response(&Status::invalid_argument(
            "connect-protocol-version must be 1",
        ));
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && enc != "identity"
    {
        return error_response(&Status::unimplemented(format!(
            "content-encoding {enc:?} is not supported; send identity"
        )));
    }
    let timeout = match timeout_of(&headers) {
        Ok(t) => t,
        Err(s) => return error_response(&s),
    };
    let body = match axum::body::to_bytes(body, state.max_request_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(&Status::resource_exhausted(format!(
                "request body exceeds {} bytes",
                state.max_request_bytes
            )));
        }
    };
    let trace = crate::protocol::trace_context::carried(&headers);
    let call = dispatch(&state, &method, codec, body, trace);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, call).await.unwrap_or_else(|_| {
            Err(Status::new(
                Code::DeadlineExceeded,
                "connect-timeout-ms elapsed",
            ))
        }),
        None => call.await,
    };
    match result {
        Ok(bytes) => {
            let mut resp = Response::new(Body::from(bytes));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(codec.content_type()),
            );
            resp
        }
        Err(s) => error_response(&s),
    }
}
