//! The Connect protocol, unary, both ways: `POST <base>/pbflags.v1.<Service>/<Method>` with
//! `application/proto` or `application/json` bodies (HTTP/1.1 or HTTP/2), errors as
//! `{"code": "...", "message": "..."}` with the protocol's HTTP status. JSON uses the canonical
//! proto3 mapping, through prost-reflect and the compiled-in descriptors.
//!
//! The server side (decoding requests, encoding answers and errors) serves `server::rpc`; the
//! client side (building a call, reading an error) serves the proxy's upstream source. Status codes
//! and their Connect names are in [`super::status`].

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use http_body_util::Full;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::{Code, Status};

use super::status::{connect_http_status, connect_name, from_connect_name};

/// The body encoding of a Connect unary call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// `application/proto`: binary protobuf.
    Proto,
    /// `application/json`: the canonical proto3 JSON mapping.
    Json,
}

impl Codec {
    /// The content type this codec answers with.
    pub fn content_type(self) -> &'static str {
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

/// Decodes a request body of message `type_name`; a malformed one is InvalidArgument naming it.
pub fn decode<T: Message + Default>(
    codec: Codec,
    body: &[u8],
    type_name: &str,
) -> Result<T, Status> {
    match codec {
        Codec::Proto => T::decode(body)
            .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}"))),
        Codec::Json => {
            let desc = descriptor(type_name)?;
            let mut de = serde_json::Deserializer::from_slice(body);
            // Unknown fields are ignored, as connect-go and protojson with DiscardUnknown do:
            // a client built from a newer schema (e.g. with a `context` field) keeps working.
            let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
            let msg = DynamicMessage::deserialize_with_options(desc, &mut de, &options)
                .and_then(|m| de.end().map(|()| m))
                .map_err(|e| {
                    Status::invalid_argument(format!("malformed {type_name} JSON: {e}"))
                })?;
            msg.transcode_to::<T>()
                .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}")))
        }
    }
}

/// Encodes a response of message `type_name`.
pub fn encode<T: Message>(codec: Codec, msg: &T, type_name: &str) -> Result<Vec<u8>, Status> {
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

/// A Connect error response: `{"code", "message", "details"}` with the code's HTTP status. The
/// status's details (an encoded `google.rpc.Status`) become `details` entries (`type`, unpadded
/// base64 `value`); its metadata become response headers.
pub fn error_response(status: &Status) -> Response {
    let mut body = serde_json::json!({ "code": connect_name(status.code()) });
    if !status.message().is_empty() {
        body["message"] = status.message().into();
    }
    let details = super::status::details_of(status);
    if !details.is_empty() {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
        body["details"] = details
            .iter()
            .map(|any| {
                let type_name = any.type_url.rsplit('/').next().unwrap_or("");
                serde_json::json!({ "type": type_name, "value": engine.encode(&any.value) })
            })
            .collect();
    }
    let mut resp = (connect_http_status(status.code()), body.to_string()).into_response();
    let headers = resp.headers_mut();
    for (name, value) in status.metadata().clone().into_headers().iter() {
        headers.append(name, value.clone());
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The codec a request's content type asks for (`None`: not a Connect unary content type).
pub fn codec_of(headers: &HeaderMap) -> Option<Codec> {
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

/// The `connect-timeout-ms` deadline, if given; a malformed one is InvalidArgument.
pub fn timeout_of(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
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

/// A unary call of `method` on the evaluator service at `base` (binary protobuf), carrying the
/// caller's deadline and the current trace context.
pub fn request(
    base: &str,
    method: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let mut request =
        http::Request::post(format!("{base}/pbflags.v1.FlagEvaluatorService/{method}"))
            .header(header::CONTENT_TYPE, "application/proto")
            .header("connect-protocol-version", "1")
            .header("connect-timeout-ms", timeout.as_millis().to_string())
            .body(Full::new(Bytes::from(body)))?;
    super::trace_context::inject_current(request.headers_mut());
    Ok(request)
}

/// The code and message of a failed call's body: a Connect error `{"code", "message"}`, or, for
/// anything else, no code and an empty message (judge it by its HTTP status).
pub fn error_of(body: &[u8]) -> (Option<Code>, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v["code"].as_str())
        .map(from_connect_name);
    let message = parsed
        .as_ref()
        .and_then(|v| v["message"].as_str())
        .unwrap_or("")
        .to_owned();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_json_fields_are_ignored_and_known_ones_still_checked() {
        let req: pbflags_proto::v1::EvaluateRequest = decode(
            Codec::Json,
            br#"{"flagId":"notifications/2","context":{"plan":"pro"},"extra":1}"#,
            "EvaluateRequest",
        )
        .expect("unknown fields are ignored");
        assert_eq!(req.flag_id, "notifications/2");
        let err = decode::<pbflags_proto::v1::EvaluateRequest>(
            Codec::Json,
            br#"{"flagId":7,"extra":1}"#,
            "EvaluateRequest",
        )
        .expect_err("a known field of the wrong type is still refused");
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn an_error_body_round_trips_through_error_response_and_error_of() {
        let resp = error_response(&Status::not_found("no flag f/1"));
        assert_eq!(resp.status(), http::StatusCode::NOT_FOUND);
        let body =
            futures_util::FutureExt::now_or_never(axum::body::to_bytes(resp.into_body(), 1 << 16))
                .expect("in memory")
                .expect("body");
        assert_eq!(
            error_of(&body),
            (Some(Code::NotFound), "no flag f/1".to_owned())
        );
        assert_eq!(error_of(b"<html>bad gateway</html>"), (None, String::new()));
    }

    #[test]
    fn a_request_names_the_method_and_carries_the_deadline() {
        let r = request(
            "http://root:9201",
            "GetFlagState",
            vec![1, 2],
            Duration::from_millis(500),
        )
        .expect("valid");
        assert_eq!(
            r.uri(),
            "http://root:9201/pbflags.v1.FlagEvaluatorService/GetFlagState"
        );
        assert_eq!(r.headers()["connect-timeout-ms"], "500");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/proto");
        assert_eq!(codec_of(r.headers()), Some(Codec::Proto));
    }
}
