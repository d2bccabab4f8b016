//! The Connect protocol's unary calls: `POST /<package.Service>/<Method>` with an
//! `application/proto` or `application/json` body, optionally gzip-compressed
//! (`Content-Encoding: gzip`); the answer is gzip-compressed when the client accepts it and it is at
//! least [`COMPRESS_MIN_BYTES`]. Trailers travel as `trailer-` headers; errors as Connect's JSON error
//! body with its HTTP status.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use tonic::{Code, Status};

use super::{Answer, COMPRESS_MIN_BYTES, Call, Shared, UNKNOWN_METHOD, UnaryService};
use crate::protocol::connect::{codec_of, error_response, timeout_of};

/// How a request body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

fn request_encoding(headers: &HeaderMap) -> Result<Encoding, Status> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(Encoding::Identity),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => Ok(Encoding::Identity),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => Ok(Encoding::Gzip),
        Some(v) => Err(Status::unimplemented(format!(
            "content-encoding {v:?} is not supported; send gzip or identity"
        ))),
    }
}

/// Whether the client's `Accept-Encoding` takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// Inflates a gzip body, refusing one that inflates beyond `limit` bytes.
fn gunzip(body: &[u8], limit: usize) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Status::invalid_argument(format!("request body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(Status::resource_exhausted(format!(
            "request message exceeds {limit} bytes once decompressed"
        )));
    }
    Ok(Bytes::from(out))
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::fast(),
    );
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

/// The call a request makes, or the status refusing it.
fn prepare<S: UnaryService>(
    shared: &Shared<S>,
    method: Option<&'static str>,
    name: &str,
    headers: HeaderMap,
    body: Result<Bytes, Status>,
) -> Result<Call, Status> {
    let codec = codec_of(&headers).ok_or_else(|| {
        Status::invalid_argument("content-type must be application/proto or application/json")
    })?;
    let method = method
        .ok_or_else(|| Status::unimplemented(format!("{}/{name} does not exist", S::NAME)))?;
    if let Some(v) = headers.get("connect-protocol-version")
        && v != "1"
    {
        return Err(Status::invalid_argument(
            "connect-protocol-version must be 1",
        ));
    }
    let timeout = timeout_of(&headers)?;
    let encoding = request_encoding(&headers)?;
    let body = match encoding {
        Encoding::Identity => body?,
        Encoding::Gzip => gunzip(&body?, shared.limits.max_request_bytes)?,
    };
    Ok(Call {
        method,
        codec,
        body,
        headers,
        timeout,
    })
}

/// One Connect request. The body is read (bounded) before any answer, refusals included, so an
/// HTTP/1.1 client still sending it gets the answer rather than a broken connection.
pub(super) async fn handle<S: UnaryService>(
    shared: &Arc<Shared<S>>,
    req: Request<Body>,
) -> Response {
    let started = Instant::now();
    let service = &shared.service;
    let (parts, body) = req.into_parts();
    let body = super::read_body(body, shared.limits.max_request_bytes).await;
    let name = parts.uri.path().rsplit('/').next().unwrap_or("");
    let method = service.method(name);
    let label = method.unwrap_or(UNKNOWN_METHOD);
    if parts.method != Method::POST {
        service.observe(label, Code::Unimplemented, started.elapsed());
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    if codec_of(&parts.headers).is_none() {
        service.observe(label, Code::InvalidArgument, started.elapsed());
        let mut resp = StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
        resp.headers_mut().insert(
            HeaderName::from_static("accept-post"),
            HeaderValue::from_static("application/proto, application/json"),
        );
        return resp;
    }
    let accepts_gzip = accepts_gzip(&parts.headers);
    let call = match prepare(shared, method, name, parts.headers, body) {
        Ok(call) => call,
        Err(status) => {
            return respond(
                service,
                label,
                started,
                Answer::from(Err(status)),
                None,
                accepts_gzip,
            );
        }
    };
    let codec = call.codec;
    let answer = match call.timeout {
        Some(t) => tokio::time::timeout(t, service.call(call))
            .await
            .unwrap_or_else(|_| {
                Answer::from(Err(Status::deadline_exceeded("connect-timeout-ms elapsed")))
            }),
        None => service.call(call).await,
    };
    respond(service, label, started, answer, Some(codec), accepts_gzip)
}

fn respond<S: UnaryService>(
    service: &S,
    label: &'static str,
    started: Instant,
    answer: Answer,
    codec: Option<super::Codec>,
    accepts_gzip: bool,
) -> Response {
    let code = answer.result.as_ref().err().map_or(Code::Ok, Status::code);
    let mut resp = match (answer.result, codec) {
        (Ok(bytes), Some(codec)) => {
            let mut resp = match gzip_if_worth_it(&bytes, accepts_gzip) {
                Some(compressed) => {
                    let mut r = Response::new(Body::from(compressed));
                    r.headers_mut()
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    r
                }
                None => Response::new(Body::from(bytes)),
            };
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(codec.content_type()),
            );
            resp
        }
        (Ok(_), None) => error_response(&Status::internal("answer without a codec")),
        (Err(status), _) => error_response(&status),
    };
    let headers = resp.headers_mut();
    for (name, value) in answer.headers.iter() {
        headers.append(name, value.clone());
    }
    for (name, value) in answer.trailers.iter() {
        if let Ok(n) = HeaderName::try_from(format!("trailer-{name}")) {
            headers.append(n, value.clone());
        }
    }
    service.observe(label, code, started.elapsed());
    resp
}

fn gzip_if_worth_it(bytes: &[u8], accepts_gzip: bool) -> Option<Vec<u8>> {
    if accepts_gzip && bytes.len() >= COMPRESS_MIN_BYTES {
        gzip(bytes)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_with_its_quality_values() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("identity, GZIP;q=0.5"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br, deflate"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn gzip_bodies_inflate_within_the_limit_only() {
        let body = vec![b'a'; 10_000];
        let packed = gzip(&body).expect("compressed");
        assert!(packed.len() < 200);
        assert_eq!(gunzip(&packed, 10_000).expect("fits"), body);
        let e = gunzip(&packed, 9_999).expect_err("too large once inflated");
        assert_eq!(e.code(), Code::ResourceExhausted);
        let e = gunzip(b"not gzip", 100).expect_err("not gzip");
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
