//! The protocol edges, on each of Connect, gRPC and gRPC-Web, driven by raw HTTP so every byte on
//! the wire is the test's: JSON codecs (unknown fields ignored), malformed bodies, over-size
//! requests, gzip both ways, and every response counted with its code.

#![allow(clippy::unwrap_used)]

#[path = "support/engine.rs"]
mod harness;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pbflags_evaluator::server::service::{Evaluator, IdLimits};
use pbflags_evaluator::server::{self, AppParts, Readiness};
use pbflags_proto::v1::{BulkEvaluateRequest, BulkEvaluateResponse, EvaluateRequest, FlagValue};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

const MAX_REQUEST_BYTES: usize = 1024;

/// An evaluator over in-memory flags `p/1`..`p/40`, served on a loopback port.
struct Served {
    base: String,
    harness: harness::Harness,
    stop: CancellationToken,
}

impl Served {
    async fn start() -> Self {
        let flags = (1..=40)
            .map(|i| {
                harness::def(
                    &format!("p/{i}"),
                    "",
                    Some(FlagValue::string(format!("default value of flag {i}"))),
                )
            })
            .collect();
        let harness = harness::Harness::new(flags);
        let evaluator = Evaluator::new(harness.engine.clone(), 100, IdLimits::default());
        let readiness = Readiness::default();
        readiness.set(true);
        let app = server::router(AppParts {
            evaluator,
            readiness,
            grpc_routes: tonic::service::Routes::default(),
            max_request_bytes: MAX_REQUEST_BYTES,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let (metrics, token) = (harness.metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let limits = server::conn::Limits::default();
            server::serve(
                listener,
                app,
                None,
                &limits,
                metrics,
                token,
                Duration::from_secs(1),
            )
            .await
        });
        Self {
            base,
            harness,
            stop,
        }
    }

    fn url(&self, method: &str) -> String {
        format!("{}/pbflags.v1.FlagEvaluatorService/{method}", self.base)
    }

    /// `pbflags_rpc_requests_total{code, method}`.
    fn counted(&self, method: &str, code: &str) -> u64 {
        let text = self.harness.metrics.render();
        let needle = format!("pbflags_rpc_requests_total{{code=\"{code}\",method=\"{method}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Connect,
    Grpc,
    GrpcWeb,
}

const ALL: [Protocol; 3] = [Protocol::Connect, Protocol::Grpc, Protocol::GrpcWeb];

/// What came back, whatever the protocol: the code name (`ok` or Connect's error name), the
/// message, the response message bytes, and the response headers.
#[derive(Debug)]
struct Reply {
    code: String,
    message: String,
    body: Bytes,
    headers: HeaderMap,
    /// Whether the response message arrived gzip-compressed.
    compressed: bool,
}

fn frame(flags: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Splits length-prefixed frames: (flags, payload) each.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn grpc_code_name(code: &str) -> String {
    let n: i32 = code.parse().unwrap();
    pbflags_evaluator::protocol::status::connect_name(tonic::Code::from(n)).to_owned()
}

/// Options of one call.
#[derive(Clone, Copy, Default)]
struct Options {
    json: bool,
    gzip_request: bool,
    accept_gzip: bool,
}

async fn call(proto: Protocol, url: &str, msg: &[u8], o: Options) -> Reply {
    let codec = if o.json { "json" } else { "proto" };
    let mut req = http::Request::post(url);
    let body = match proto {
        Protocol::Connect => {
            req = req.header(
                "content-type",
                if o.json {
                    "application/json"
                } else {
                    "application/proto"
                },
            );
            if o.gzip_request {
                req = req.header("content-encoding", "gzip");
            }
            if o.accept_gzip {
                req = req.header("accept-encoding", "gzip");
            }
            if o.gzip_request {
                gzip(msg)
            } else {
                msg.to_vec()
            }
        }
        Protocol::Grpc | Protocol::GrpcWeb => {
            let ct = if proto == Protocol::Grpc {
                format!("application/grpc+{codec}")
            } else {
                format!("application/grpc-web+{codec}")
            };
            req = req.header("content-type", ct).header("te", "trailers");
            if o.gzip_request {
                req = req.header("grpc-encoding", "gzip");
            }
            if o.accept_gzip {
                req = req.header("grpc-accept-encoding", "gzip");
            }
            if o.gzip_request {
                frame(1, &gzip(msg))
            } else {
                frame(0, msg)
            }
        }
    };
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let mut builder = Client::builder(TokioExecutor::new());
    if proto == Protocol::Grpc {
        builder.http2_only(true);
    }
    let client: Client<_, Full<Bytes>> = builder.build_http();
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let bytes = collected.to_bytes();
    match proto {
        Protocol::Connect => {
            if parts.status == StatusCode::OK {
                let compressed = parts
                    .headers
                    .get("content-encoding")
                    .is_some_and(|v| v == "gzip");
                let body = if compressed {
                    Bytes::from(gunzip(&bytes))
                } else {
                    bytes
                };
                return Reply {
                    code: "ok".into(),
                    message: String::new(),
                    body,
                    headers: parts.headers,
                    compressed,
                };
            }
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{} with a non-JSON body {bytes:?}", parts.status));
            Reply {
                code: v["code"].as_str().unwrap().to_owned(),
                message: v["message"].as_str().unwrap_or("").to_owned(),
                body: Bytes::new(),
                headers: parts.headers,
                compressed: false,
            }
        }
        Protocol::Grpc | Protocol::GrpcWeb => {
            assert_eq!(parts.status, StatusCode::OK, "{proto:?}: {parts:?}");
            let mut status: HeaderMap = parts.headers.clone();
            status.extend(trailers);
            let mut message = Bytes::new();
            let mut compressed = false;
            for (flags, payload) in frames(&bytes) {
                match flags {
                    0 => message = Bytes::from(payload),
                    1 => {
                        message = Bytes::from(gunzip(&payload));
                        compressed = true;
                    }
                    0x80 => {
                        for line in String::from_utf8(payload).unwrap().split("\r\n") {
                            if let Some((k, v)) = line.split_once(':') {
                                status.insert(
                                    http::HeaderName::try_from(k.trim()).unwrap(),
                                    v.trim().parse().unwrap(),
                                );
                            }
                        }
                    }
                    other => panic!("unexpected frame flags {other}"),
                }
            }
            let code = status
                .get("grpc-status")
                .unwrap_or_else(|| panic!("{proto:?}: no grpc-status in {status:?}"))
                .to_str()
                .unwrap();
            Reply {
                code: grpc_code_name(code),
                message: status
                    .get("grpc-message")
                    .map(|m| percent_decode(m.to_str().unwrap()))
                    .unwrap_or_default(),
                body: message,
                headers: parts.headers,
                compressed,
            }
        }
    }
}

fn evaluate(flag_id: &str) -> Vec<u8> {
    EvaluateRequest {
        flag_id: flag_id.into(),
        entity_id: String::new(),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_works_on_every_protocol_and_unknown_fields_are_ignored() {
    let s = Served::start().await;
    let json = Options {
        json: true,
        ..Options::default()
    };
    for proto in ALL {
        let r = call(
            proto,
            &s.url("Evaluate"),
            br#"{"flagId":"p/3","entityId":"u1","context":{"plan":"pro"},"extra":1}"#,
            json,
        )
        .await;
        assert_eq!(r.code, "ok", "{proto:?}: {r:?}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["flagId"], "p/3", "{proto:?}: {v}");
        assert_eq!(
            v["value"]["stringValue"], "default value of flag 3",
            "{proto:?}: {v}"
        );
        let ct = r.headers["content-type"].to_str().unwrap();
        let want = match proto {
            Protocol::Connect => "application/json",
            Protocol::Grpc => "application/grpc+json",
            Protocol::GrpcWeb => "application/grpc-web+json",
        };
        assert_eq!(ct, want, "{proto:?}");
        // Binary protobuf with an unknown field (number 99) is fine too.
        let mut with_unknown = evaluate("p/3");
        with_unknown.extend_from_slice(&[0x98, 0x06, 0x01]);
        let r = call(proto, &s.url("Evaluate"), &with_unknown, Options::default()).await;
        assert_eq!(r.code, "ok", "{proto:?}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_invalid_argument_on_every_protocol() {
    let s = Served::start().await;
    for proto in ALL {
        let r = call(
            proto,
            &s.url("Evaluate"),
            &[0xff, 0xff, 0xff],
            Options::default(),
        )
        .await;
        assert_eq!(r.code, "invalid_argument", "{proto:?}: {r:?}");
        assert!(r.message.contains("EvaluateRequest"), "{proto:?}: {r:?}");
        let json = Options {
            json: true,
            ..Options::default()
        };
        let r = call(proto, &s.url("Evaluate"), b"{not json", json).await;
        assert_eq!(r.code, "invalid_argument", "{proto:?}: {r:?}");
        let r = call(proto, &s.url("Evaluate"), br#"{"flagId":7}"#, json).await;
        assert_eq!(r.code, "invalid_argument", "{proto:?}: {r:?}");
    }
    assert_eq!(s.counted("Evaluate", "invalid_argument"), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_are_resource_exhausted_on_every_protocol() {
    let s = Served::start().await;
    let big = evaluate(&"x".repeat(2 * MAX_REQUEST_BYTES));
    // Small on the wire, too large once inflated.
    let bomb = evaluate(&"y".repeat(64 * MAX_REQUEST_BYTES));
    for proto in ALL {
        let r = call(proto, &s.url("Evaluate"), &big, Options::default()).await;
        assert_eq!(r.code, "resource_exhausted", "{proto:?}: {r:?}");
        assert!(r.message.contains("1024 bytes"), "{proto:?}: {r:?}");
        let gz = Options {
            gzip_request: true,
            ..Options::default()
        };
        assert!(gzip(&bomb).len() < MAX_REQUEST_BYTES);
        let r = call(proto, &s.url("Evaluate"), &bomb, gz).await;
        assert_eq!(r.code, "resource_exhausted", "{proto:?}: {r:?}");
    }
    assert_eq!(s.counted("Evaluate", "resource_exhausted"), 6);
    // The server still answers.
    let r = call(
        Protocol::Grpc,
        &s.url("Evaluate"),
        &evaluate("p/1"),
        Options::default(),
    )
    .await;
    assert_eq!(r.code, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_works_both_ways_on_every_protocol() {
    let s = Served::start().await;
    let bulk = BulkEvaluateRequest {
        flag_ids: (1..=40).map(|i| format!("p/{i}")).collect(),
        entity_id: "u1".into(),
    }
    .encode_to_vec();
    let o = Options {
        gzip_request: true,
        accept_gzip: true,
        json: false,
    };
    for proto in ALL {
        let r = call(proto, &s.url("BulkEvaluate"), &bulk, o).await;
        assert_eq!(r.code, "ok", "{proto:?}: {r:?}");
        let resp = BulkEvaluateResponse::decode(r.body).unwrap();
        assert_eq!(resp.evaluations.len(), 40, "{proto:?}");
        let encoding = match proto {
            Protocol::Connect => "content-encoding",
            _ => "grpc-encoding",
        };
        assert_eq!(r.headers[encoding], "gzip", "{proto:?}: {:?}", r.headers);
        assert!(r.compressed, "{proto:?}: a large answer is compressed");
    }
    // Small answers are never compressed, on any protocol.
    for proto in ALL {
        let r = call(proto, &s.url("Evaluate"), &evaluate("p/1"), o).await;
        assert_eq!(r.code, "ok", "{proto:?}: {r:?}");
        assert!(!r.compressed, "{proto:?}: {r:?}");
    }
    // Not accepted: not compressed. Unknown request encodings are refused.
    let r = call(
        Protocol::Connect,
        &s.url("BulkEvaluate"),
        &bulk,
        Options::default(),
    )
    .await;
    assert!(!r.headers.contains_key("content-encoding"));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(s.url("Evaluate"))
        .header("content-type", "application/proto")
        .header("content-encoding", "br")
        .body(Full::new(Bytes::from(evaluate("p/1"))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_is_counted_with_its_code() {
    let s = Served::start().await;
    for proto in ALL {
        let r = call(
            proto,
            &s.url("Evaluate"),
            &evaluate("p/1"),
            Options::default(),
        )
        .await;
        assert_eq!(r.code, "ok");
        let r = call(
            proto,
            &s.url("NoSuchMethod"),
            &evaluate("p/1"),
            Options::default(),
        )
        .await;
        assert_eq!(r.code, "unimplemented", "{proto:?}: {r:?}");
        let r = call(proto, &s.url("GetFlagState"), &[], Options::default()).await;
        assert_eq!(r.code, "invalid_argument", "{proto:?}: {r:?}");
    }
    // A content type no protocol serves.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(s.url("Evaluate"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(
        client.request(req).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(s.counted("Evaluate", "ok"), 3);
    assert_eq!(s.counted("unknown", "unimplemented"), 3);
    assert_eq!(s.counted("GetFlagState", "invalid_argument"), 3);
    assert_eq!(s.counted("Evaluate", "invalid_argument"), 1);
    let text = s.harness.metrics.render();
    assert!(
        text.contains("pbflags_rpc_duration_seconds_count{code=\"ok\",method=\"Evaluate\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_read_from_both_headers_and_malformed_ones_refused() {
    let s = Served::start().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(s.url("Evaluate"))
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "soon")
        .body(Full::new(Bytes::from(frame(0, &evaluate("p/1")))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "3");
    let req = http::Request::post(s.url("Evaluate"))
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "5S")
        .body(Full::new(Bytes::from(frame(0, &evaluate("p/1")))))
        .unwrap();
    let collected = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
}
