//! The operator's own endpoints: `/healthz` (the process runs), `/readyz` (it can reach the API
//! server and is not shutting down) and `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the operator can do its work, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness {
    reachable: AtomicBool,
    stopping: AtomicBool,
    last_error: Mutex<String>,
}

impl Readiness {
    /// Ready: the last API server check succeeded and shutdown has not begun.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("shutting down".to_owned());
        }
        if self.reachable.load(Ordering::SeqCst) {
            return Ok(());
        }
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Err(if why.is_empty() {
            "the API server has not been reached yet".to_owned()
        } else {
            format!("the API server is unreachable: {why}")
        })
    }

    fn record(&self, result: Result<(), String>) {
        let ok = result.is_ok();
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = result.err().unwrap_or_default();
        self.reachable.store(ok, Ordering::SeqCst);
    }

    /// Checks the API server (its version endpoint, within `timeout`) every `every` until `stop`;
    /// on `stop` readiness turns false at once.
    pub fn spawn_api_check(
        self: &Arc<Self>,
        client: kube::Client,
        every: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            pbflags_runtime::periodic::repeat(&stop, || async {
                let r = match tokio::time::timeout(timeout, client.apiserver_version()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "API server check failed");
                }
                me.record(r);
                every
            })
            .await;
            me.stopping.store(true, Ordering::SeqCst);
        })
    }
}

/// The router of `/healthz`, `/readyz` and `/metrics`.
pub fn router(readiness: Arc<Readiness>, metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || async move {
                match readiness.ready() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move { metrics.render() }),
        )
}
