//! The kill-set poller: polls at start, then every `kill_ttl` × the health backoff multiplier
//! (1×, 2×, 4×, 8×). A failed poll keeps the last kill set ("sticky kills") and counts towards health.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::engine::Engine;

/// Polls once with `timeout`; returns whether it succeeded.
pub async fn poll_once(engine: &Engine, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, engine.poll_kill_set()).await {
        Ok(Ok(n)) => {
            tracing::debug!(killed_flags = n, "kill set updated");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(
                error = %e,
                consecutive_failures = engine.health().consecutive_failures(),
                "kill set poll failed, preserving last known kills"
            );
            false
        }
        Err(_) => {
            engine.kill_poll_timed_out();
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                consecutive_failures = engine.health().consecutive_failures(),
                "kill set poll timed out, preserving last known kills"
            );
            false
        }
    }
}

/// The wait before the next poll: `kill_ttl` × backoff multiplier, never below 10 ms (a zero
/// `kill_ttl` must not spin).
pub fn next_interval(kill_ttl: Duration, multiplier: u32) -> Duration {
    (kill_ttl * multiplier).max(Duration::from_millis(10))
}

/// Until the first successful poll the kill set is unknown, so a failed start-up poll (the source
/// not up yet) is retried every second rather than after the backed-off interval; never slower
/// than the regular interval.
pub fn startup_interval(kill_ttl: Duration) -> Duration {
    kill_ttl.min(Duration::from_secs(1))
}

/// Starts the poller; it stops when `shutdown` is cancelled.
pub fn spawn(engine: Arc<Engine>, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let config = engine.caches().config().clone();
        // Whether a poll has succeeded yet.
        let known = std::sync::atomic::AtomicBool::new(false);
        pbflags_runtime::periodic::repeat(&shutdown, || {
            let (engine, config, known) = (&engine, &config, &known);
            async move {
                if poll_once(engine, config.fetch_timeout).await {
                    known.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if known.load(std::sync::atomic::Ordering::Relaxed) {
                    next_interval(config.kill_ttl, engine.health().backoff_multiplier())
                } else {
                    startup_interval(config.kill_ttl)
                }
            }
        })
        .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_scales_with_backoff_and_never_spins() {
        let ttl = Duration::from_secs(30);
        assert_eq!(next_interval(ttl, 1), Duration::from_secs(30));
        assert_eq!(next_interval(ttl, 8), Duration::from_secs(240));
        assert_eq!(next_interval(Duration::ZERO, 1), Duration::from_millis(10));
    }

    #[test]
    fn before_the_first_success_retries_are_quick_but_never_slower_than_the_interval() {
        assert_eq!(
            startup_interval(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        assert_eq!(
            startup_interval(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }
}
