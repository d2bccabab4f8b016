//! The descriptor probe against real listeners: cleartext and TLS (with a certificate the probe
//! cannot verify, as an evaluator's Service certificate is to a pod address).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;

use pbflags_operator::serving::Prober;
use tokio_rustls::rustls;

fn app() -> axum::Router {
    axum::Router::new().route(
        "/descriptors",
        axum::routing::get(|| async { r#"{"sha256":"abc","flags":4}"# }),
    )
}

/// Serves [`app`] over TLS with a self-signed `evaluator.example` certificate.
async fn tls_endpoint() -> SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["evaluator.example".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app());
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

async fn plain_endpoint() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });
    addr
}

#[tokio::test]
async fn the_probe_reads_the_served_hash_over_cleartext_and_over_tls() {
    let prober = Prober::new(0);
    let plain = plain_endpoint().await;
    assert_eq!(prober.served(plain, false).await.unwrap(), "abc");
    let tls = tls_endpoint().await;
    assert_eq!(prober.served(tls, true).await.unwrap(), "abc");
    // The wrong protocol for the listener is an error, not a hash.
    assert!(prober.served(tls, false).await.is_err());
    assert!(prober.served(plain, true).await.is_err());
}

#[tokio::test]
async fn an_answer_that_is_not_a_descriptors_answer_is_an_error_naming_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app =
        axum::Router::new().route("/descriptors", axum::routing::get(|| async { "not json" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let e = Prober::new(0).served(addr, false).await.unwrap_err();
    assert!(e.contains("not a descriptors answer"), "{e}");
}
