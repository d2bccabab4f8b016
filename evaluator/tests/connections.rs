//! Connection hygiene against a served evaluator: slow headers and bodies are cut off, idle
//! connections (HTTP/1.1 and HTTP/2, and ones that never send a byte) are closed, the connection
//! cap refuses extra connections, a client that leaves in the middle of its request is counted as
//! canceled (not as a bad request), and valid requests are served throughout.
//!
//! The timeouts are set small; every wait here is bounded by a hang guard, not a performance claim.

#![allow(clippy::unwrap_used)]

#[path = "support/server.rs"]
mod server;

use std::time::Duration;

use pbflags_proto::v1::EvaluateRequest;
use server::{Running, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A proxy of an upstream that refuses connections (answers come from compiled defaults), with
/// `extra` arguments.
async fn start(extra: &[&str]) -> Running {
    Running::start(&[&["--server", "http://127.0.0.1:9"][..], extra].concat()).await
}

/// Reads until the server closes the connection (hang guard: 10 s); returns what was read.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    out
}

async fn evaluate_ok(server: &Running) {
    let resp = server
        .client()
        .await
        .evaluate(EvaluateRequest {
            flag_id: "notifications/1".into(),
            entity_id: "u1".into(),
        })
        .await;
    assert!(resp.is_ok(), "{resp:?}");
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_valid_requests_are_served() {
    let server = start(&["--header-read-timeout", "300ms"]).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"POST /pbflags.v1.FlagEvaluatorService/Evaluate HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    evaluate_ok(&server).await;
    for mut s in slow {
        let answer = read_to_close(&mut s).await;
        // hyper answers a header timeout by closing; whatever it wrote is not a 200.
        assert!(!String::from_utf8_lossy(&answer).contains(" 200 "));
    }
    evaluate_ok(&server).await;
    server.stop().await;
}

/// A connection that has sent a Connect Evaluate's headers and 10 of its 100 body bytes.
async fn half_sent_request(server: &Running) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"POST /pbflags.v1.FlagEvaluatorService/Evaluate HTTP/1.1\r\nHost: a\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"flagId\":",
    )
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_deadline_exceeded_and_closed() {
    let server = start(&["--body-read-timeout", "300ms"]).await;
    let mut s = half_sent_request(&server).await;
    let answer = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("deadline_exceeded"), "{answer}");
    assert!(
        answer.contains("request body not received within 300ms"),
        "{answer}"
    );
    evaluate_ok(&server).await;
    server.stop().await;
}

/// The server's count of Evaluate calls answered with `code`.
fn evaluate_calls(server: &Running, code: &str) -> f64 {
    let prefix = format!("pbflags_rpc_requests_total{{code=\"{code}\",method=\"Evaluate\"}} ");
    server
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_is_counted_canceled() {
    let server = start(&[]).await;
    // HTTP/1.1 (Connect): part of the announced body, then the connection closes.
    drop(half_sent_request(&server).await);
    wait_until("the HTTP/1.1 call counted canceled", async || {
        evaluate_calls(&server, "canceled") == 1.0
    })
    .await;

    // HTTP/2 (gRPC): the first bytes of a message, then RST_STREAM(CANCEL).
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post(format!(
        "{}/pbflags.v1.FlagEvaluatorService/Evaluate",
        server.url()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (_answer, mut stream) = client.send_request(req, false).unwrap();
    stream
        .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 40, 10]), false)
        .unwrap();
    // Let the server start reading the body before the reset.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.send_reset(h2::Reason::CANCEL);
    wait_until("the gRPC call counted canceled", async || {
        evaluate_calls(&server, "canceled") == 2.0
    })
    .await;
    assert_eq!(evaluate_calls(&server, "invalid_argument"), 0.0);
    evaluate_ok(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_whatever_their_protocol() {
    // The PING interval is well above the idle timeout: the GOAWAY comes from the idle timer, and
    // the unanswered PING then disconnects the raw HTTP/2 peer below, which acknowledges nothing.
    let server = start(&[
        "--idle-timeout",
        "300ms",
        "--http2-keepalive-interval",
        "1s",
        "--http2-keepalive-timeout",
        "1s",
    ])
    .await;

    // Never sends a byte.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());

    // HTTP/1.1 keep-alive after one request.
    let mut h1 = TcpStream::connect(server.addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut h1).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // HTTP/2 (prior knowledge): the preface and an empty SETTINGS frame, then nothing. The
    // server sends a GOAWAY (type 7), then closes once its PING goes unanswered.
    let mut h2 = TcpStream::connect(server.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let frames = read_to_close(&mut h2).await;
    assert!(frame_types(&frames).contains(&7), "no GOAWAY in {frames:?}");

    assert!(server.metrics.connections_idle_closed.get() >= 3);
    evaluate_ok(&server).await;
    server.stop().await;
}

/// The types of the HTTP/2 frames in `bytes`.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_on_accept() {
    let server = start(&["--max-connections", "2"]).await;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(server.addr).await.unwrap(),
        TcpStream::connect(server.addr).await.unwrap(),
    ];
    wait_until("two connections open", async || {
        server.metrics.connections_open.get() == 2
    })
    .await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_to_close(&mut extra).await.is_empty());
    assert_eq!(server.metrics.connections_rejected.get(), 1);

    drop(held);
    wait_until("the held connections closed", async || {
        server.metrics.connections_open.get() == 0
    })
    .await;
    evaluate_ok(&server).await;
    server.stop().await;
}
