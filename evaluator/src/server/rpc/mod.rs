//! Unary RPC services over every protocol the server speaks: Connect (HTTP/1.1 and HTTP/2), gRPC
//! and gRPC-Web, each with binary protobuf or JSON bodies, with gzip.
//!
//! A service implements [`UnaryService`]: it gets a method name, a [`Codec`] and the request body
//! bytes, and answers with response bytes (or a [`Status`]) plus headers and trailers. [`router`]
//! serves it at `/<package.Service>/<Method>`; the request's content type picks the protocol:
//!
//! | content type | protocol | codec |
//! |---|---|---|
//! | `application/proto`, `application/json` | Connect ([`connect`]) | proto, JSON |
//! | `application/grpc`, `application/grpc+proto`, `application/grpc+json` | gRPC ([`grpc`]) | proto, JSON |
//! | `application/grpc-web`, `application/grpc-web-text` (each also `+proto`, `+json`) | gRPC-Web (tonic-web, then [`grpc`]) | proto, JSON |
//!
//! Every response — answered by the service or refused before it (bad content type, malformed
//! body, too large, unknown method, deadline) — is reported to [`UnaryService::observe`] once, with
//! its code.

pub mod connect;
pub mod grpc;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse as _;
use bytes::Bytes;
use http::{HeaderMap, Request};
use tonic::{Code, Status};
use tower::{Layer as _, ServiceExt as _};

pub use crate::protocol::connect::Codec;

/// Answers shorter than this go uncompressed on every protocol, whatever the client accepts: gzip
/// costs far more than it saves on them (a typical Evaluate answer is under 100 bytes).
pub const COMPRESS_MIN_BYTES: usize = 1024;

/// The method label for requests naming no method the service has.
pub const UNKNOWN_METHOD: &str = "unknown";

/// One call as the service sees it, whatever protocol carried it.
#[derive(Debug)]
pub struct Call {
    /// The method, as returned by [`UnaryService::method`].
    pub method: &'static str,
    /// How `body` and the answer are encoded.
    pub codec: Codec,
    /// The request message, encoded with `codec` (uncompressed, unframed).
    pub body: Bytes,
    /// The request headers (protocol headers included).
    pub headers: HeaderMap,
    /// The caller's deadline, from `connect-timeout-ms` or `grpc-timeout`; the server enforces it.
    pub timeout: Option<Duration>,
}

/// A service's answer: the response message (encoded with the call's codec) or an error, and the
/// headers and trailers to send with either.
#[derive(Debug)]
pub struct Answer {
    /// Response headers.
    pub headers: HeaderMap,
    /// Response trailers (Connect unary sends them as `trailer-` headers; gRPC as trailers, or
    /// merged into the headers of an error).
    pub trailers: HeaderMap,
    /// The encoded response, or the error.
    pub result: Result<Vec<u8>, Status>,
}

impl From<Result<Vec<u8>, Status>> for Answer {
    fn from(result: Result<Vec<u8>, Status>) -> Self {
        Self {
            headers: HeaderMap::new(),
            trailers: HeaderMap::new(),
            result,
        }
    }
}

/// A unary RPC service served by [`router`].
pub trait UnaryService: Clone + Send + Sync + 'static {
    /// The fully qualified service name, e.g. `pbflags.v1.FlagEvaluatorService`.
    const NAME: &'static str;

    /// The static name of `method` if the service implements it.
    fn method(&self, method: &str) -> Option<&'static str>;

    /// Runs one call. Malformed bodies are the service's to refuse (`invalid_argument`).
    fn call(&self, call: Call) -> impl Future<Output = Answer> + Send + 'static;

    /// Told of every response once: its method ([`UNKNOWN_METHOD`] if none matched), code and
    /// handling time.
    fn observe(&self, _method: &'static str, _code: Code, _elapsed: Duration) {}
}

/// Request limits shared by the protocols.
#[derive(Debug, Clone, Copy)]
pub struct RpcLimits {
    /// Largest request message, in bytes, before and after decompression.
    pub max_request_bytes: usize,
}

struct Shared<S> {
    service: S,
    limits: RpcLimits,
}

/// How much of an over-size body is still read (and discarded) before the refusal is sent: an
/// HTTP/1.1 client still writing its body would otherwise see a broken connection instead of the
/// answer. Bounded in time by the connection's body read timeout.
const DRAIN_BYTES: usize = 1 << 20;

/// Reads a whole request body of at most `limit` bytes. A longer one is refused with
/// `resource_exhausted` once up to [`DRAIN_BYTES`] more have been read and discarded; a body that
/// stalls past the connection's body read timeout gets `deadline_exceeded`.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Status> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&e))?;
        let Ok(data) = frame.into_data() else {
            continue; // request trailers carry nothing a unary call uses
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
    }
    if seen > limit {
        return Err(Status::resource_exhausted(format!(
            "request body exceeds {limit} bytes"
        )));
    }
    Ok(buf.freeze())
}

/// The status for a request body that could not be read: too slow, or broken off.
fn body_error(e: &axum::Error) -> Status {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<crate::server::conn::BodyTimeout>() {
            return Status::deadline_exceeded(t.to_string());
        }
        // The client reset the stream or closed the connection before its request was whole:
        // it gave up on the call (grpc-go and connect-go record these as canceled too).
        if c.downcast_ref::<h2::Error>()
            .is_some_and(|h| h.is_reset() || h.is_go_away() || h.is_io())
            || c.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
            || c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
                matches!(
                    io.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted
                )
            })
        {
            return Status::cancelled(format!("the client ended the request early: {e}"));
        }
        cause = c.source();
    }
    Status::invalid_argument(format!("request body could not be read: {e}"))
}

/// Where a request goes, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Connect,
    Grpc(Codec),
    /// gRPC-Web; the content type tonic-web is to see.
    GrpcWeb(Codec, &'static str),
    /// An `application/grpc*` subtype no codec serves.
    GrpcUnsupported,
}

fn route_of(headers: &HeaderMap) -> Route {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base.to_ascii_lowercase().as_str() {
        "application/grpc" | "application/grpc+proto" => Route::Grpc(Codec::Proto),
        "application/grpc+json" => Route::Grpc(Codec::Json),
        "application/grpc-web" | "application/grpc-web+proto" => {
            Route::GrpcWeb(Codec::Proto, "application/grpc-web")
        }
        "application/grpc-web+json" => Route::GrpcWeb(Codec::Json, "application/grpc-web"),
        "application/grpc-web-text" | "application/grpc-web-text+proto" => {
            Route::GrpcWeb(Codec::Proto, "application/grpc-web-text")
        }
        "application/grpc-web-text+json" => {
            Route::GrpcWeb(Codec::Json, "application/grpc-web-text")
        }
        b if b.starts_with("application/grpc") => Route::GrpcUnsupported,
        _ => Route::Connect,
    }
}

/// Whether a request is for some gRPC or gRPC-Web service (by its content type).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    !matches!(route_of(headers), Route::Connect)
}

/// The content type a JSON response carries instead of tonic's proto one.
fn json_content_type(ct: &str) -> Option<&'static str> {
    match ct {
        "application/grpc" | "application/grpc+proto" => Some("application/grpc+json"),
        "application/grpc-web+proto" | "application/grpc-web" => Some("application/grpc-web+json"),
        "application/grpc-web-text+proto" | "application/grpc-web-text" => {
            Some("application/grpc-web-text+json")
        }
        _ => None,
    }
}

/// The gRPC-Web side of an [`Endpoint`]: tonic-web translating to gRPC, then [`grpc::handle`].
type WebService =
    tower::util::BoxCloneSyncService<Request<Body>, axum::response::Response, Infallible>;

/// One service's RPCs, `/<S::NAME>/<method>`, over Connect, gRPC and gRPC-Web. Called directly by
/// the serving layer for the service's path prefix (no router between the connection and the
/// call), or through [`router`].
pub struct Endpoint<S> {
    shared: Arc<Shared<S>>,
    web: WebService,
}

impl<S: UnaryService> Endpoint<S> {
    /// An endpoint for `service` under `limits`.
    pub fn new(service: S, limits: RpcLimits) -> Arc<Self> {
        let shared = Arc::new(Shared { service, limits });
        let web = {
            let shared = shared.clone();
            let web =
                tonic_web::GrpcWebLayer::new().layer(tower::service_fn(
                    move |req: Request<tonic::body::Body>| {
                        let shared = shared.clone();
                        async move {
                            Ok::<_, Infallible>(grpc::handle(&shared, req.map(Body::new)).await)
                        }
                    },
                ));
            WebService::new(tower::ServiceExt::<Request<Body>>::map_response(web, |r| {
                r.map(Body::new)
            }))
        };
        Arc::new(Self { shared, web })
    }

    /// Answers one request. A path other than `/<S::NAME>/<method>` (one non-empty segment after
    /// the service name) is unknown: `unimplemented`, or 404 over Connect.
    pub async fn call(&self, req: Request<Body>) -> axum::response::Response {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            .and_then(|p| p.strip_prefix('/'));
        if !method.is_some_and(|m| !m.is_empty() && !m.contains('/')) {
            return unknown_path(&self.shared, req).await;
        }
        let shared = &self.shared;
        let route = route_of(req.headers());
        let mut response = match route {
            Route::Connect => connect::handle(shared, req).await,
            Route::Grpc(codec) => {
                let mut req = req;
                req.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                req.extensions_mut().insert(codec);
                grpc::handle(shared, req).await
            }
            Route::GrpcWeb(_, _) if req.method() != http::Method::POST => {
                // tonic-web would answer 405 without reading the body.
                let _ = read_body(req.into_body(), shared.limits.max_request_bytes).await;
                shared
                    .service
                    .observe(UNKNOWN_METHOD, Code::Unimplemented, Duration::ZERO);
                let mut resp = http::StatusCode::METHOD_NOT_ALLOWED.into_response();
                resp.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
                return resp;
            }
            Route::GrpcWeb(codec, ct) => {
                let mut req = req;
                req.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ct),
                );
                req.extensions_mut().insert(codec);
                match self.web.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(e) => match e {},
                }
            }
            Route::GrpcUnsupported => {
                let _ = read_body(req.into_body(), shared.limits.max_request_bytes).await;
                shared
                    .service
                    .observe(UNKNOWN_METHOD, Code::InvalidArgument, Duration::ZERO);
                return http::StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
            }
        };
        if matches!(
            route,
            Route::Grpc(Codec::Json) | Route::GrpcWeb(Codec::Json, _)
        ) {
            let ct = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(json_content_type);
            if let Some(ct) = ct {
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ct),
                );
            }
        }
        response
    }
}

/// Serves `service` on `POST /<S::NAME>/<method>` over Connect, gRPC and gRPC-Web, as a router
/// (every path is answered: others as unknown).
pub fn router<S: UnaryService>(service: S, limits: RpcLimits) -> Router {
    let endpoint = Endpoint::new(service, limits);
    Router::new().fallback(move |req: Request<Body>| {
        let endpoint = endpoint.clone();
        async move { endpoint.call(req).await }
    })
}

/// A request for some other service: `unimplemented` (gRPC, gRPC-Web) or 404 (Connect), once the
/// body is read.
async fn unknown_path<S: UnaryService>(
    shared: &Shared<S>,
    req: Request<Body>,
) -> axum::response::Response {
    let route = route_of(req.headers());
    let path = req.uri().path().to_owned();
    let _ = read_body(req.into_body(), shared.limits.max_request_bytes).await;
    shared
        .service
        .observe(UNKNOWN_METHOD, Code::Unimplemented, Duration::ZERO);
    let status = Status::unimplemented(format!("{path} does not exist"));
    match route {
        Route::Connect => http::StatusCode::NOT_FOUND.into_response(),
        Route::Grpc(_) | Route::GrpcUnsupported => status.into_http(),
        Route::GrpcWeb(_, ct) => {
            // A trailers-only gRPC-Web answer: the status in the headers.
            let mut resp: axum::response::Response = status.into_http();
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ct),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(v),
        );
        h
    }

    #[test]
    fn the_content_type_picks_protocol_and_codec() {
        assert_eq!(route_of(&ct("application/proto")), Route::Connect);
        assert_eq!(
            route_of(&ct("application/json; charset=utf-8")),
            Route::Connect
        );
        assert_eq!(route_of(&ct("application/grpc")), Route::Grpc(Codec::Proto));
        assert_eq!(
            route_of(&ct("application/grpc+json")),
            Route::Grpc(Codec::Json)
        );
        assert_eq!(
            route_of(&ct("application/grpc-web+json")),
            Route::GrpcWeb(Codec::Json, "application/grpc-web")
        );
        assert_eq!(
            route_of(&ct("application/grpc-web-text+proto")),
            Route::GrpcWeb(Codec::Proto, "application/grpc-web-text")
        );
        assert_eq!(
            route_of(&ct("application/grpc+thrift")),
            Route::GrpcUnsupported
        );
        assert_eq!(
            json_content_type("application/grpc-web+proto"),
            Some("application/grpc-web+json")
        );
    }
}
