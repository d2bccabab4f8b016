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

/// What a unary call sends besides its message.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The deadline: sent as `connect-timeout-ms` and enforced here too.
    pub timeout: Option<Duration>,
    /// Extra request headers.
    pub headers: HeaderMap,
    /// Largest response body accepted (`resource_exhausted` beyond).
    pub max_response_bytes: usize,
}

/// A successful unary call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Response headers (without the `trailer-` ones).
    pub headers: HeaderMap,
    /// Trailers (the `trailer-` headers, prefix removed).
    pub trailers: HeaderMap,
    /// The response message, binary protobuf.
    pub body: Bytes,
}

/// A failed unary call: the error the server sent, or one made from what went wrong.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The code.
    pub code: Code,
    /// The message.
    pub message: String,
    /// Error details.
    pub details: Vec<prost_types::Any>,
    /// Response headers, if a response came.
    pub headers: HeaderMap,
    /// Trailers, if a response came.
    pub trailers: HeaderMap,
}

impl CallError {
    /// An error with no response behind it.
    pub fn new(code: Code, message: impl Into<String>) -> Box<Self> {
        Box::new(Self {
            code,
            message: message.into(),
            details: Vec::new(),
            headers: HeaderMap::new(),
            trailers: HeaderMap::new(),
        })
    }
}

/// The code the Connect protocol gives an HTTP status that carries no Connect error.
pub fn code_of_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A unary Connect call (binary protobuf) of `url` (`<base>/<package.Service>/<Method>`) with
/// `client`, carrying the current trace context.
pub async fn call<C>(
    client: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
    url: &str,
    message: Vec<u8>,
    options: &CallOptions,
) -> Result<Reply, Box<CallError>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let exchange = async {
        let mut request = http::Request::post(url)
            .header(header::CONTENT_TYPE, "application/proto")
            .header(header::ACCEPT_ENCODING, "gzip")
            .header("connect-protocol-version", "1")
            .body(Full::new(Bytes::from(message)))
            .map_err(|e| CallError::new(Code::Internal, format!("build request: {e}")))?;
        let headers = request.headers_mut();
        for (name, value) in &options.headers {
            headers.append(name, value.clone());
        }
        if let Some(t) = options.timeout {
            headers.insert(
                "connect-timeout-ms",
                HeaderValue::from(t.as_millis().max(1) as u64),
            );
        }
        super::trace_context::inject_current(headers);
        let response = client
            .request(request)
            .await
            .map_err(|e| CallError::new(Code::Unavailable, e.to_string()))?;
        read_reply(response, options.max_response_bytes).await
    };
    match options.timeout {
        Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
            Err(CallError::new(
                Code::DeadlineExceeded,
                format!("no answer within {t:?}"),
            ))
        }),
        None => exchange.await,
    }
}

/// Reads a unary response: the message, or the error.
async fn read_reply(
    response: http::Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<Reply, Box<CallError>> {
    use http_body_util::BodyExt as _;
    let (parts, body) = response.into_parts();
    let (headers, trailers) = split_trailers(parts.headers);
    let fail = |code: Code, message: String| {
        Box::new(CallError {
            code,
            message,
            details: Vec::new(),
            headers: headers.clone(),
            trailers: trailers.clone(),
        })
    };
    let body = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                fail(
                    Code::ResourceExhausted,
                    format!("response exceeds {limit} bytes"),
                )
            } else {
                fail(Code::Unavailable, format!("response body: {e}"))
            }
        })?
        .to_bytes();
    let body = match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"identity") => body,
        Some(b"gzip") => {
            let mut out = Vec::new();
            let read = std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    flate2::read::GzDecoder::new(body.as_ref()),
                    limit as u64 + 1,
                ),
                &mut out,
            );
            match read {
                Ok(n) if n > limit => {
                    return Err(fail(
                        Code::ResourceExhausted,
                        format!("response exceeds {limit} bytes"),
                    ));
                }
                Ok(_) => Bytes::from(out),
                Err(e) => {
                    return Err(fail(
                        Code::Internal,
                        format!("response is not valid gzip: {e}"),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(fail(
                Code::Internal,
                format!(
                    "response content-encoding {:?} was not asked for",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if parts.status == http::StatusCode::OK {
        return match content_type.as_str() {
            "application/proto" => Ok(Reply {
                headers,
                trailers,
                body,
            }),
            ct if ct.starts_with("application/") => Err(fail(
                Code::Internal,
                format!("response content-type {ct:?}; asked for application/proto"),
            )),
            ct => Err(fail(Code::Unknown, format!("response content-type {ct:?}"))),
        };
    }
    let error = (content_type == "application/json")
        .then(|| error_of(&body, parts.status))
        .flatten();
    Err(match error {
        Some(mut e) => {
            e.headers = headers;
            e.trailers = trailers;
            Box::new(e)
        }
        None => fail(code_of_http(parts.status), format!("HTTP {}", parts.status)),
    })
}

/// Moves the `trailer-` headers of a unary response into trailers.
fn split_trailers(all: HeaderMap) -> (HeaderMap, HeaderMap) {
    let (mut headers, mut trailers) = (HeaderMap::new(), HeaderMap::new());
    let mut current = None;
    for (name, value) in all {
        if let Some(n) = name {
            current = Some(n);
        }
        let Some(name) = current.clone() else {
            continue;
        };
        match name
            .as_str()
            .strip_prefix("trailer-")
            .map(http::HeaderName::try_from)
        {
            Some(Ok(t)) => {
                trailers.append(t, value);
            }
            _ => {
                headers.append(name, value);
            }
        }
    }
    (headers, trailers)
}

/// A Connect error body, `{"code", "message", "details"}`, that came with HTTP `status`; `None` if
/// the body is not a JSON object. A missing or unknown code is taken from the HTTP status.
pub fn error_of(body: &[u8], status: http::StatusCode) -> Option<CallError> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.as_object()?;
    let code = v["code"]
        .as_str()
        .and_then(from_connect_name)
        .unwrap_or_else(|| code_of_http(status));
    let message = v["message"].as_str().unwrap_or("").to_owned();
    let mut details = Vec::new();
    for d in v["details"].as_array().into_iter().flatten() {
        let (Some(t), Some(value)) = (d["type"].as_str(), d["value"].as_str()) else {
            continue;
        };
        let padded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(value.trim_end_matches('='))
            .ok();
        if let Some(value) = padded {
            details.push(prost_types::Any {
                type_url: format!("type.googleapis.com/{t}"),
                value,
            });
        }
    }
    Some(CallError {
        code,
        message,
        details,
        headers: HeaderMap::new(),
        trailers: HeaderMap::new(),
    })
}

/// Largest message accepted on a server stream.
const MAX_STREAM_MESSAGE: usize = 1 << 20;

/// The messages of a Connect server stream (binary protobuf), each as bytes; an error sent in the
/// end-of-stream message, or a broken stream, is the last item.
pub type MessageStream = futures_util::stream::BoxStream<'static, Result<Bytes, Box<CallError>>>;

/// Opens a Connect server-streaming call of `url` with `client`: one enveloped request `message`,
/// and (once the response headers came, within `open_timeout`) the stream of response messages.
/// A refusal before the stream starts (an HTTP error, e.g. 404 from a server without the method,
/// which is `unimplemented`) is the error.
pub async fn open_stream<C>(
    client: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
    url: &str,
    message: &[u8],
    open_timeout: Duration,
) -> Result<MessageStream, Box<CallError>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    use bytes::BufMut as _;
    use futures_util::StreamExt as _;
    use http_body_util::BodyExt as _;
    let mut envelope = bytes::BytesMut::with_capacity(5 + message.len());
    envelope.put_u8(0);
    envelope.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    envelope.put_slice(message);
    let mut request = http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/connect+proto")
        .header("connect-protocol-version", "1")
        .body(Full::new(envelope.freeze()))
        .map_err(|e| CallError::new(Code::Internal, format!("build request: {e}")))?;
    super::trace_context::inject_current(request.headers_mut());
    let response = tokio::time::timeout(open_timeout, client.request(request))
        .await
        .map_err(|_| {
            CallError::new(
                Code::DeadlineExceeded,
                format!("no answer within {open_timeout:?}"),
            )
        })?
        .map_err(|e| CallError::new(Code::Unavailable, e.to_string()))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        let body = http_body_util::Limited::new(response.into_body(), 64 << 10)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        return Err(Box::new(error_of(&body, status).unwrap_or_else(|| {
            *CallError::new(code_of_http(status), format!("HTTP {status}"))
        })));
    }
    struct Reading {
        body: hyper::body::Incoming,
        buf: bytes::BytesMut,
        done: bool,
    }
    let reading = Reading {
        body: response.into_body(),
        buf: bytes::BytesMut::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(reading, |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            if r.buf.len() >= 5 {
                let flags = r.buf[0];
                let len = u32::from_be_bytes([r.buf[1], r.buf[2], r.buf[3], r.buf[4]]) as usize;
                if len > MAX_STREAM_MESSAGE {
                    r.done = true;
                    let e = CallError::new(
                        Code::ResourceExhausted,
                        format!("stream message of {len} bytes exceeds {MAX_STREAM_MESSAGE}"),
                    );
                    return Some((Err(e), r));
                }
                if r.buf.len() >= 5 + len {
                    let frame = r.buf.split_to(5 + len).freeze().slice(5..);
                    if flags & 0x02 != 0 {
                        r.done = true;
                        let end: serde_json::Value =
                            serde_json::from_slice(&frame).unwrap_or_default();
                        if end.get("error").is_some_and(|e| !e.is_null()) {
                            let e = serde_json::to_vec(&end["error"]).unwrap_or_default();
                            let e = error_of(&e, http::StatusCode::OK).unwrap_or_else(|| {
                                *CallError::new(Code::Unknown, "malformed end-of-stream error")
                            });
                            return Some((Err(Box::new(e)), r));
                        }
                        return None;
                    }
                    if flags & 0x01 != 0 {
                        r.done = true;
                        let e = CallError::new(
                            Code::Internal,
                            "compressed stream message without an agreed encoding",
                        );
                        return Some((Err(e), r));
                    }
                    return Some((Ok(frame), r));
                }
            }
            match r.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        r.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    r.done = true;
                    return Some((Err(CallError::new(Code::Unavailable, e.to_string())), r));
                }
                None => {
                    r.done = true;
                    let e = CallError::new(
                        Code::Unavailable,
                        "stream ended without its end-of-stream message",
                    );
                    return Some((Err(e), r));
                }
            }
        }
    });
    Ok(stream.boxed())
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
        let status = crate::protocol::status::with_details(
            Code::NotFound,
            "no flag f/1".into(),
            vec![prost_types::Any {
                type_url: "type.googleapis.com/pbflags.v1.FlagState".into(),
                value: vec![10, 3, b'f', b'/', b'1'],
            }],
        );
        let resp = error_response(&status);
        assert_eq!(resp.status(), http::StatusCode::NOT_FOUND);
        let body =
            futures_util::FutureExt::now_or_never(axum::body::to_bytes(resp.into_body(), 1 << 16))
                .expect("in memory")
                .expect("body");
        let e = error_of(&body, http::StatusCode::NOT_FOUND).expect("a Connect error");
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::NotFound, "no flag f/1")
        );
        assert_eq!(e.details, crate::protocol::status::details_of(&status));
        let bad_gateway = http::StatusCode::BAD_GATEWAY;
        assert!(error_of(b"<html>bad gateway</html>", bad_gateway).is_none());
        for body in [
            &br#"{"message":"oops"}"#[..],
            br#"{"code":"nonsense","message":"oops"}"#,
        ] {
            let e = error_of(body, bad_gateway).expect("a Connect error");
            assert_eq!((e.code, e.message.as_str()), (Code::Unavailable, "oops"));
        }
    }

    #[test]
    fn http_statuses_without_a_connect_error_map_as_the_protocol_says() {
        use http::StatusCode as H;
        assert_eq!(code_of_http(H::BAD_REQUEST), Code::Internal);
        assert_eq!(code_of_http(H::NOT_FOUND), Code::Unimplemented);
        assert_eq!(code_of_http(H::TOO_MANY_REQUESTS), Code::Unavailable);
        assert_eq!(code_of_http(H::GATEWAY_TIMEOUT), Code::Unavailable);
        assert_eq!(code_of_http(H::CONFLICT), Code::Unknown);
    }

    #[test]
    fn trailer_headers_are_split_off() {
        let mut all = HeaderMap::new();
        all.append("x-a", HeaderValue::from_static("1"));
        all.append("trailer-x-b", HeaderValue::from_static("2"));
        all.append("trailer-x-b", HeaderValue::from_static("3"));
        let (h, t) = split_trailers(all);
        assert_eq!(h.len(), 1);
        assert_eq!(t.get_all("x-b").iter().count(), 2);
    }
}
