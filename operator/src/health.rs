//! The operator's own endpoints: `/healthz` (the process runs), `/readyz` (it can reach the API
//! server and is not shutting down) and `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Errors further apart than this end a streak of watch errors.
const WATCH_ERROR_GAP: Duration = Duration::from_secs(60);
/// A streak of watch errors this long makes the operator unready.
const WATCH_FAILING_FOR: Duration = Duration::from_secs(30);

/// A streak of watch errors: when it began, the latest, and what it said.
#[derive(Debug, Clone)]
struct Streak {
    since: Instant,
    last: Instant,
    error: String,
}

/// Whether the operator can do its work, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness {
    reachable: AtomicBool,
    stopping: AtomicBool,
    last_error: Mutex<String>,
    watch_errors: Mutex<Option<Streak>>,
}

impl Readiness {
    /// A watch failed (`error`): kube's watchers retry with backoff, so a watch that keeps
    /// failing reports again within [`WATCH_ERROR_GAP`].
    pub fn watch_failed(&self, error: String) {
        self.watch_failed_at(error, Instant::now());
    }

    fn watch_failed_at(&self, error: String, now: Instant) {
        let mut streak = self
            .watch_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let since = match &*streak {
            Some(s) if now.saturating_duration_since(s.last) <= WATCH_ERROR_GAP => s.since,
            _ => now,
        };
        *streak = Some(Streak {
            since,
            last: now,
            error,
        });
    }

    /// Why the watches make the operator unready at `now`: they have failed without a break
    /// for [`WATCH_FAILING_FOR`].
    fn watches_failing(&self, now: Instant) -> Option<String> {
        let streak = self
            .watch_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let ongoing = now.saturating_duration_since(streak.last) <= WATCH_ERROR_GAP;
        let long = streak.last.saturating_duration_since(streak.since) >= WATCH_FAILING_FOR;
        (ongoing && long).then(|| {
            format!(
                "watches have been failing for {}s: {}",
                now.saturating_duration_since(streak.since).as_secs(),
                streak.error
            )
        })
    }

    /// Ready: the last API server check succeeded, the watches are not failing, and shutdown has
    /// not begun.
    pub fn ready(&self) -> Result<(), String> {
        self.ready_at(Instant::now())
    }

    fn ready_at(&self, now: Instant) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("shutting down".to_owned());
        }
        if let Some(why) = self.watches_failing(now) {
            return Err(why);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_failing_without_a_break_for_30s_make_the_operator_unready() {
        let r = Readiness::default();
        r.record(Ok(()));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // One error, or a short streak: still ready.
        r.watch_failed_at("forbidden".into(), at(0));
        assert!(r.ready_at(at(1)).is_ok());
        r.watch_failed_at("forbidden".into(), at(20));
        assert!(r.ready_at(at(21)).is_ok());
        // Failing for 30 s and more: not ready, saying why.
        r.watch_failed_at("secrets is forbidden".into(), at(35));
        let why = r.ready_at(at(36)).unwrap_err();
        assert!(
            why.contains("failing for 36s") && why.contains("secrets is forbidden"),
            "{why}"
        );
        // No error for longer than the gap: the watch recovered.
        assert!(r.ready_at(at(35 + 61)).is_ok());
        // A new error after a break starts a new streak.
        r.watch_failed_at("again".into(), at(200));
        assert!(r.ready_at(at(201)).is_ok());
    }
}
