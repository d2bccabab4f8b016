//! Connect clients' route: `POST /pbflags.v1.FlagEvaluatorService/<Method>`, decoded with
//! [`crate::protocol::connect`] and handed to the same [`Evaluator`] methods gRPC uses.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use pbflags_proto::v1::flag_evaluator_service_server::FlagEvaluatorService as _;
use tonic::{Code, Status};

use super::service::Evaluator;
use crate::protocol::connect::{Codec, codec_of, decode, encode, error_response, timeout_of};

/// Shared state of the Connect handler.
#[derive(Clone)]
pub struct ConnectState {
    /// The service.
    pub evaluator: Evaluator,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
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
        Err(e) => return error_response(&body_error(&e, state.max_request_bytes)),
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

/// The status for a request body that could not be read: too large, too slow, or broken off.
fn body_error(e: &axum::Error, max_request_bytes: usize) -> Status {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return Status::resource_exhausted(format!(
                "request body exceeds {max_request_bytes} bytes"
            ));
        }
        if let Some(t) = c.downcast_ref::<super::conn::BodyTimeout>() {
            return Status::deadline_exceeded(t.to_string());
        }
        cause = c.source();
    }
    Status::invalid_argument(format!("request body could not be read: {e}"))
}
