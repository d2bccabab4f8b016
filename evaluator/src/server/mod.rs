//! One listener for everything: gRPC (HTTP/2 cleartext), gRPC-Web, Connect (HTTP/1.1 and HTTP/2),
//! `grpc.health.v1`, the change stream ([`changes`]), `/metrics`, `/healthz`, `/readyz` and
//! `/descriptors`.
//!
//! Requests for the evaluator service go to [`rpc::router`] (Connect, gRPC and gRPC-Web, proto and
//! JSON); other `application/grpc*` requests to the other tonic services (`grpc.health.v1`,
//! gRPC-Web translated by tonic-web); everything else to the HTTP routes (metrics, health).

pub mod admin;
pub mod changes;
pub mod conn;
pub mod rpc;
pub mod service;
pub mod tls;
pub mod tokens;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Request, StatusCode, header};
use pbflags_proto::v1::EvaluatorStatus;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::metrics::Metrics;
use rpc::UnaryService as _;
use service::Evaluator;

/// Whether the process should receive traffic: set once descriptors are loaded and cleared when
/// shutdown begins.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready (true) or draining (false).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Ready now.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct HttpState {
    evaluator: Evaluator,
    readiness: Readiness,
}

fn status_text(s: EvaluatorStatus) -> &'static str {
    s.as_str_name()
}

/// Liveness: 200 while the process runs; the body tells the source status honestly.
async fn healthz(State(s): State<HttpState>) -> Response {
    let status = s.evaluator.engine().health().status();
    (StatusCode::OK, format!("status={}\n", status_text(status))).into_response()
}

/// Readiness: 200 once descriptors are loaded, 503 while shutting down. A DEGRADED source does not
/// make the evaluator unready: it still answers (last-known values, compiled defaults), which beats
/// having no endpoints at all.
async fn readyz(State(s): State<HttpState>) -> Response {
    let status = status_text(s.evaluator.engine().health().status());
    if s.readiness.get() {
        (StatusCode::OK, format!("ready status={status}\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready status={status}\n"),
        )
            .into_response()
    }
}

/// The descriptor set this process serves: `{"sha256":"…","flags":N}`. The operator reads it to
/// count the pods that serve a published set (`status.descriptors`); the same hash is exported as
/// `pbflags_descriptor_info`.
async fn descriptors(State(s): State<HttpState>) -> Response {
    let snapshot = s.evaluator.engine().registry().load_full();
    let body =
        serde_json::json!({ "sha256": snapshot.hash().to_string(), "flags": snapshot.len() });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `WatchChanges` over Connect (gRPC and gRPC-Web reach the tonic service).
async fn watch_changes(State(s): State<HttpState>, request: Request<Body>) -> Response {
    changes::connect_watch(s.evaluator.engine().clone(), changes::HEARTBEAT, request).await
}

async fn metrics(State(s): State<HttpState>) -> Response {
    // Refresh the cache-size gauges before rendering.
    s.evaluator.engine().health_report();
    let body = s.evaluator.engine().metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Everything the router needs.
pub struct AppParts {
    /// The service.
    pub evaluator: Evaluator,
    /// Readiness flag.
    pub readiness: Readiness,
    /// Other gRPC services to serve beside the evaluator (e.g. `grpc.health.v1`).
    pub grpc_routes: tonic::service::Routes,
    /// Largest request body.
    pub max_request_bytes: usize,
}

/// The complete router.
pub fn router(parts: AppParts) -> Router {
    let grpc: Router = parts
        .grpc_routes
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
    let evaluator = rpc::Endpoint::new(
        parts.evaluator.clone(),
        rpc::RpcLimits {
            max_request_bytes: parts.max_request_bytes,
        },
    );
    let readiness = parts.readiness.clone();
    let http_state = HttpState {
        evaluator: parts.evaluator,
        readiness: parts.readiness,
    };
    let http: Router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/descriptors", get(descriptors))
        .route(changes::WATCH_PATH, axum::routing::post(watch_changes))
        .with_state(http_state);
    let prefix = format!("/{}/", Evaluator::NAME);

    Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
        // The evaluator's RPCs are called directly; the rest goes through its router.
        let target = if req.uri().path().starts_with(&prefix) {
            Either::Left(evaluator.clone())
        } else if rpc::is_grpc(req.headers()) {
            Either::Right(grpc.clone())
        } else {
            Either::Right(http.clone())
        };
        let http1 = req.version() < http::Version::HTTP_2;
        let readiness = readiness.clone();
        async move {
            let mut response = match target {
                Either::Left(evaluator) => evaluator.call(req).await,
                Either::Right(router) => router.oneshot(req).await.into_response(),
            };
            // Shutting down (not ready) but still serving: an HTTP/1.1 client is told to take its
            // next request elsewhere, so no keep-alive connection is left for the drain to close
            // under a request in flight.
            if http1 && !readiness.get() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    }))
}

/// Serves `app` on `listener` (over TLS when `tls` is given) under `limits` until `shutdown` is
/// cancelled, then lets in-flight requests finish for at most `drain`: HTTP/2 connections get
/// GOAWAY, HTTP/1.1 connections close after their current response. Returns whether draining
/// finished in time.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: &conn::Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
    drain: Duration,
) -> bool {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let builder = Arc::new(connection_builder(limits));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_rejected.inc();
            tracing::debug!(%peer, max_connections = limits.max_connections, "connection refused: at the connection cap");
            continue;
        };
        // Small responses must not wait for the client's delayed ACK (Nagle's algorithm): that
        // costs tens of milliseconds on multi-frame gRPC responses.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let (builder, acceptor, app) = (builder.clone(), acceptor.clone(), app.clone());
        let (shutdown, metrics, limits) = (shutdown.clone(), metrics.clone(), limits.clone());
        connections.spawn(async move {
            let _slot = slot;
            metrics.connections_open.inc();
            serve_connection(
                tcp, peer, acceptor, &builder, app, &limits, &metrics, &shutdown,
            )
            .await;
            metrics.connections_open.dec();
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        () = connections.wait() => true,
        () = tokio::time::sleep(drain) => {
            tracing::warn!(drain_seconds = drain.as_secs_f64(), "drain deadline reached; closing remaining connections");
            false
        }
    }
}

/// One connection, from the TLS handshake to its close.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    app: Router,
    limits: &conn::Limits,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let io = match acceptor {
        None => Either::Left(tcp),
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Either::Right(tls),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let activity = conn::Activity::new();
    let service = {
        let (activity, body_timeout) = (activity.clone(), limits.body_read_timeout);
        tower::service_fn(move |req: Request<hyper::body::Incoming>| {
            let in_flight = activity.begin();
            let req = req.map(|b| Body::new(conn::DeadlineBody::new(b, body_timeout)));
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await.into_response();
                Ok::<_, Infallible>(response.map(|b| conn::hold_until_sent(b, in_flight)))
            }
        })
    };
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => {}
        () = activity.idle(limits.idle_timeout) => {
            metrics.connections_idle_closed.inc();
            tracing::debug!(%peer, "closing idle connection");
        }
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Longest a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 and HTTP/2 (prior knowledge or ALPN), chosen per connection from its first bytes.
fn connection_builder(
    limits: &conn::Limits,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    conn::configure(&mut b, limits);
    b
}
