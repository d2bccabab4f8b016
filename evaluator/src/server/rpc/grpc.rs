//! gRPC (and gRPC-Web, once tonic-web has translated it): tonic frames, decompresses and limits the
//! request; the service decodes the message bytes with the request's codec.
//!
//! Beyond tonic's own handling: `grpc-timeout` is enforced; a request over the size limit gets
//! `RESOURCE_EXHAUSTED` (tonic says `OUT_OF_RANGE`), as connect-go and grpc-go do; and every
//! response is observed with its code, including those tonic refuses before the service runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::{Buf as _, BufMut as _, Bytes};
#[cfg(test)]
use http::HeaderValue;
use http::{HeaderMap, Request};
use tonic::codec::{
    CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder, SingleMessageCompressionOverride,
};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::{COMPRESS_MIN_BYTES, Call, Codec, Shared, UNKNOWN_METHOD, UnaryService};

/// Passes message bytes through: decoding is the service's, by the call's codec.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn timeout_of(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(v) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument(format!("grpc-timeout {v:?} is malformed"));
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(d))
}

/// tonic's refusal of a message over the decoding limit.
fn is_too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

/// The status of a trailers-only response (tonic's refusals carry it in the headers).
fn status_in_headers(headers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(headers)
}

/// How many complete length-prefixed messages `body` holds (`None`: it ends mid-message).
fn message_count(mut body: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !body.is_empty() {
        if body.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body = body.get(5 + len..)?;
        n += 1;
    }
    Some(n)
}

/// Checks a buffered unary request body: exactly one message.
fn one_message(body: &[u8]) -> Result<(), Status> {
    match message_count(body) {
        None => Err(Status::invalid_argument(
            "request body ends in the middle of a message",
        )),
        Some(0) => Err(Status::unimplemented("unary request has no message")),
        Some(1) => Ok(()),
        Some(n) => Err(Status::unimplemented(format!(
            "unary request has {n} messages; a unary call takes one"
        ))),
    }
}

/// Adds `extra` to the trailers frame of a response body (tonic sends none of its own for a
/// successful unary call besides `grpc-status`).
fn with_trailers(body: tonic::body::Body, extra: HeaderMap) -> Body {
    use http_body_util::BodyExt as _;
    let mut extra = Some(extra);
    Body::new(body.map_frame(move |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            if let Some(extra) = extra.take() {
                for (name, value) in &extra {
                    trailers.append(name, value.clone());
                }
            }
            hyper::body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }))
}

/// One gRPC request (content type already `application/grpc`, the codec in its extensions). The
/// body is read (bounded) before any answer.
pub(super) async fn handle<S: UnaryService>(
    shared: &Arc<Shared<S>>,
    req: Request<Body>,
) -> Response {
    let started = Instant::now();
    let service = &shared.service;
    let codec = req
        .extensions()
        .get::<Codec>()
        .copied()
        .unwrap_or(Codec::Proto);
    let name = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let method = service.method(&name);
    let label = method.unwrap_or(UNKNOWN_METHOD);
    let (parts, body) = req.into_parts();
    // One frame header beyond the message limit; tonic checks the (decompressed) message itself.
    let body = super::read_body(body, shared.limits.max_request_bytes + 5).await;
    let refuse = |status: Status| {
        service.observe(label, status.code(), started.elapsed());
        status.into_http()
    };
    if parts.method != http::Method::POST {
        return refuse(Status::unimplemented("gRPC calls are POST requests"));
    }
    let Some(method) = method else {
        return refuse(Status::unimplemented(format!(
            "{}/{name} does not exist",
            S::NAME
        )));
    };
    let timeout = match timeout_of(&parts.headers) {
        Ok(t) => t,
        Err(status) => return refuse(status),
    };
    let body = match body {
        Ok(b) => b,
        Err(status) if status.code() == Code::ResourceExhausted => {
            return refuse(Status::resource_exhausted(format!(
                "request message exceeds {} bytes",
                shared.limits.max_request_bytes
            )));
        }
        Err(status) => return refuse(status),
    };
    if let Err(status) = one_message(&body) {
        return refuse(status);
    }
    let reached = Arc::new(AtomicBool::new(false));
    let trailers = Arc::new(std::sync::Mutex::new(HeaderMap::new()));
    let adapter = {
        let (service, reached, trailers) = (service.clone(), reached.clone(), trailers.clone());
        tower::service_fn(move |req: tonic::Request<Bytes>| {
            let (service, reached, trailers) = (service.clone(), reached.clone(), trailers.clone());
            async move {
                reached.store(true, Ordering::Relaxed);
                let (metadata, _, body) = req.into_parts();
                let call = Call {
                    method,
                    codec,
                    body,
                    headers: metadata.into_headers(),
                    timeout,
                };
                let answer = match timeout {
                    Some(t) => tokio::time::timeout(t, service.call(call))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Status::deadline_exceeded("grpc-timeout elapsed")).into()
                        }),
                    None => service.call(call).await,
                };
                let code = answer.result.as_ref().err().map_or(Code::Ok, Status::code);
                service.observe(method, code, started.elapsed());
                match answer.result {
                    Ok(bytes) => {
                        let small = bytes.len() < COMPRESS_MIN_BYTES;
                        let mut r = tonic::Response::new(Bytes::from(bytes));
                        if small {
                            r.extensions_mut()
                                .insert(SingleMessageCompressionOverride::Disable);
                        }
                        *r.metadata_mut() = MetadataMap::from_headers(answer.headers);
                        if let Ok(mut t) = trailers.lock() {
                            *t = answer.trailers;
                        }
                        Ok(r)
                    }
                    Err(mut status) => {
                        // An error is a trailers-only response: headers and trailers merge.
                        let mut all = std::mem::take(status.metadata_mut()).into_headers();
                        all.extend(answer.headers);
                        all.extend(answer.trailers);
                        *status.metadata_mut() = MetadataMap::from_headers(all);
                        Err(status)
                    }
                }
            }
        })
    };
    let mut grpc = tonic::server::Grpc::new(Raw)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(shared.limits.max_request_bytes);
    let req = Request::from_parts(parts, http_body_util::Full::new(body));
    let response = grpc.unary(adapter, req).await;
    if !reached.load(Ordering::Relaxed) {
        // Refused by tonic before the service ran: compression or decompressed size.
        let status = status_in_headers(response.headers())
            .unwrap_or_else(|| Status::unknown("request refused"));
        if is_too_large(&status) {
            return refuse(Status::resource_exhausted(format!(
                "request message exceeds {} bytes once decompressed",
                shared.limits.max_request_bytes
            )));
        }
        service.observe(method, status.code(), started.elapsed());
        return response.map(Body::new);
    }
    let extra = trailers
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    if extra.is_empty() {
        response.map(Body::new)
    } else {
        response.map(|b| with_trailers(b, extra))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_refuse_junk() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout_of(&h)
        };
        assert_eq!(t("5S").expect("ok"), Some(Duration::from_secs(5)));
        assert_eq!(t("250m").expect("ok"), Some(Duration::from_millis(250)));
        assert_eq!(t("2H").expect("ok"), Some(Duration::from_secs(7200)));
        assert_eq!(
            t("99999999n").expect("ok"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["5", "S", "123456789S", "5s", "-5S", "5 S"] {
            let e = t(bad).expect_err(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(timeout_of(&HeaderMap::new()).expect("ok"), None);
    }

    #[test]
    fn a_unary_body_must_hold_exactly_one_whole_message() {
        let msg = |len: u8| {
            let mut m = vec![0, 0, 0, 0, len];
            m.extend(std::iter::repeat_n(7, usize::from(len)));
            m
        };
        assert_eq!(one_message(&msg(3)).map_err(|s| s.code()), Ok(()));
        assert_eq!(one_message(&msg(0)).map_err(|s| s.code()), Ok(()));
        assert_eq!(
            one_message(&[]).map_err(|s| s.code()),
            Err(Code::Unimplemented)
        );
        assert_eq!(
            one_message(&[msg(1), msg(2)].concat()).map_err(|s| s.code()),
            Err(Code::Unimplemented)
        );
        assert_eq!(
            one_message(&msg(3)[..6]).map_err(|s| s.code()),
            Err(Code::InvalidArgument)
        );
    }
}
