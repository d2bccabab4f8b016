//! One listener for everything: gRPC (HTTP/2 cleartext), gRPC-Web, Connect (HTTP/1.1 and HTTP/2),
//! `grpc.health.v1`, `/metrics`, `/healthz` and `/readyz`.
//!
//! Requests whose content type is `application/grpc*` go to the tonic services (gRPC-Web translated
//! by tonic-web); everything else goes to the HTTP router (Connect handlers, metrics, health).

pub mod connect;
pub mod service;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use pbflags_proto::v1::EvaluatorStatus;
use pbflags_proto::v1::flag_evaluator_service_server::FlagEvaluatorServiceServer;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use connect::ConnectState;
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

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The complete router.
pub fn router(parts: AppParts) -> Router {
    let grpc_service = FlagEvaluatorServiceServer::new(parts.evaluator.clone())
        .max_decoding_message_size(parts.max_request_bytes)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let grpc: Router = parts
        .grpc_routes
        .add_service(grpc_service)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());

    let connect_state = ConnectState {
        evaluator: parts.evaluator.clone(),
        max_request_bytes: parts.max_request_bytes,
    };
    let http_state = HttpState {
        evaluator: parts.evaluator,
        readiness: parts.readiness,
    };
    let http: Router = Router::new()
        .route(
            "/pbflags.v1.FlagEvaluatorService/{method}",
            post(connect::handle).with_state(connect_state),
        )
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics))
                .with_state(http_state),
        );

    Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
        let target = if is_grpc(&req) {
            grpc.clone()
        } else {
            http.clone()
        };
        async move { Ok::<_, Infallible>(target.oneshot(req).await.into_response()) }
    }))
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish for
/// at most `drain`. Returns whether draining finished in time.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> bool {
    use axum::serve::ListenerExt as _;
    // Small responses must not wait for the client's delayed ACK (Nagle's algorithm): that costs
    // tens of milliseconds on multi-frame gRPC responses.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = server => {
            if let Err(e) = r {
                tracing::error!(error = %e, "server error");
            }
            true
        }
        () = deadline => {
            tracing::warn!(drain_seconds = drain.as_secs_f64(), "drain deadline reached; closing remaining connections");
            false
        }
    }
}
