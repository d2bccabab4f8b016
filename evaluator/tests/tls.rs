//! TLS on the one listener: gRPC (ALPN h2) and Connect (HTTP/1.1) over TLS, certificate reload when
//! the files change (atomic rename, as the kubelet does), the previous pair kept when a new one does
//! not load, and clear configuration errors for bad pairs.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use pbflags_proto::v1::{EvaluateRequest, EvaluationSource};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

#[path = "support/tls.rs"]
mod ca;
#[path = "support/server.rs"]
mod server;
use ca::{Ca, files};
use server::{Running, wait_until};

/// Writes `contents` to `path` the way the kubelet updates a mounted Secret: a new file renamed
/// over the old one, so readers never see half a file.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Arguments of a TLS evaluator over `cert` and `key`, proxying an upstream nobody listens on
/// (evaluations fall back to compiled defaults), checking its files every 100 ms.
fn tls_args<'a>(cert: &'a Path, key: &'a Path) -> [&'a str; 8] {
    [
        "--server",
        "http://127.0.0.1:9",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-poll-interval",
        "100ms",
    ]
}

async fn start(cert: &Path, key: &Path) -> Running {
    Running::start(&tls_args(cert, key)).await
}

/// A TLS connection to `server`.
async fn tls_stream(
    server: &Running,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// The leaf certificate a new handshake is served.
async fn served_leaf(server: &Running, connector: &TlsConnector) -> CertificateDer<'static> {
    let s = tls_stream(server, connector).await;
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn connect_json_health(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> (u16, String) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/pbflags.v1.FlagEvaluatorService/Health")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn grpc_and_connect_are_served_over_tls_on_the_one_port() {
    let ca = Ca::new();
    let (cert, key, der) = ca.leaf();
    let f = files(&cert, &key);
    let server = start(&f.cert, &f.key).await;

    // Connect JSON over HTTP/1.1 (ALPN http/1.1).
    let stream = tls_stream(&server, &ca.connector(&[b"http/1.1"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0], der);
    let (status, body) = connect_json_health(stream).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("status"), "{body}");

    // gRPC over HTTP/2 (ALPN h2), through a stock tonic client on a TLS stream.
    let connector = ca.connector(&[b"h2"]);
    let addr = server.addr;
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let ev = FlagEvaluatorServiceClient::new(channel)
        .evaluate(EvaluateRequest {
            flag_id: "notifications/1".into(),
            entity_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ev.flag_id, "notifications/1");
    assert_eq!(ev.source, EvaluationSource::Default as i32);

    // Cleartext to a TLS port is not served.
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>()
        .get(format!("http://{}/healthz", server.addr).parse().unwrap())
        .await;
    assert!(
        plain.is_err(),
        "cleartext request answered on a TLS port: {plain:?}"
    );

    server.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let ca = Ca::new();
    let connector = ca.connector(&[b"h2", b"http/1.1"]);
    let (cert_a, key_a, der_a) = ca.leaf();
    let f = files(&cert_a, &key_a);
    let server = start(&f.cert, &f.key).await;
    assert_eq!(served_leaf(&server, &connector).await, der_a);
    // A connection opened before the renewal keeps working after it.
    let before = tls_stream(&server, &ca.connector(&[b"http/1.1"])).await;

    let (cert_b, key_b, der_b) = ca.leaf();
    replace(&f.key, &key_b);
    replace(&f.cert, &cert_b);
    wait_until("the renewed certificate", async || {
        served_leaf(&server, &connector).await == der_b
    })
    .await;
    wait_until("the reload to be counted", async || {
        server.metrics.tls_reloads(true) >= 1
    })
    .await;
    let (status, _) = connect_json_health(before).await;
    assert_eq!(status, 200);

    // A key that does not fit the certificate: counted as a failure, B keeps serving.
    let (_, key_c, _) = ca.leaf();
    replace(&f.key, &key_c);
    wait_until("the failed reload to be counted", async || {
        server.metrics.tls_reloads(false) == 1
    })
    .await;
    assert_eq!(served_leaf(&server, &connector).await, der_b);
    // Garbage is refused the same way, and reported once, not on every check.
    replace(&f.cert, "not a certificate");
    wait_until("the second failed reload", async || {
        server.metrics.tls_reloads(false) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.metrics.tls_reloads(false), 2);
    assert_eq!(served_leaf(&server, &connector).await, der_b);

    // Fixing the files brings the new pair in.
    let (cert_d, key_d, der_d) = ca.leaf();
    replace(&f.key, &key_d);
    replace(&f.cert, &cert_d);
    wait_until("the fixed certificate", async || {
        served_leaf(&server, &connector).await == der_d
    })
    .await;
    assert!(
        server
            .metrics
            .render()
            .contains("pbflags_tls_reloads_total{result=\"failure\"} 2")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_renewal_is_seen_from_file_events_without_waiting_for_the_poll() {
    let ca = Ca::new();
    let connector = ca.connector(&[b"h2", b"http/1.1"]);
    let (cert_a, key_a, der_a) = ca.leaf();
    let f = files(&cert_a, &key_a);
    let mut args = tls_args(&f.cert, &f.key);
    args[7] = "1h"; // the poll never fires during the test: only a file event can bring B in
    let server = Running::start(&args).await;
    assert_eq!(served_leaf(&server, &connector).await, der_a);
    let (cert_b, key_b, der_b) = ca.leaf();
    replace(&f.key, &key_b);
    replace(&f.cert, &cert_b);
    wait_until(
        "the renewed certificate, from file events alone",
        async || served_leaf(&server, &connector).await == der_b,
    )
    .await;
    server.stop().await;
}

fn config_error(cert: &Path, key: &Path) -> String {
    server::resolve(&tls_args(cert, key))
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_certificate_files_are_configuration_errors_naming_the_file() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let (_, other_key, _) = ca.leaf();

    let f = files(&cert, &other_key);
    let e = config_error(&f.cert, &f.key);
    assert!(e.contains("tls") && e.contains("does not fit"), "{e}");

    let f = files("-----BEGIN NOTHING-----\n", &key);
    let e = config_error(&f.cert, &f.key);
    assert!(e.contains("tls.crt"), "{e}");

    let f = files(&cert, "garbage");
    let e = config_error(&f.cert, &f.key);
    assert!(e.contains("tls.key") && e.contains("private key"), "{e}");

    let e = config_error(Path::new("/nonexistent/tls.crt"), &f.key);
    assert!(e.contains("/nonexistent/tls.crt"), "{e}");

    let cert = f.cert.display().to_string();
    let e = server::resolve(&["--server", "http://h:1", "--tls-cert", &cert])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls_key"), "{e}");
}
