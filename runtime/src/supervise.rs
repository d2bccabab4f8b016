//! Supervision of background tasks: a task that panics, or returns before it was told to stop, is
//! logged at ERROR, reported to the caller (a metric), and started again after a backoff (1 s,
//! doubling to 30 s, back to 1 s once a run lasts a minute).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::periodic::sleep_or_stop;

/// First wait before a restart.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How a run of a supervised task ended, when it should not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It panicked, with this message.
    Panicked(String),
    /// It returned although `stop` was not cancelled.
    Returned,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::Returned => f.write_str("returned before shutdown"),
        }
    }
}

/// Runs the task `start` spawns until `stop` is cancelled and the task returns, restarting it
/// whenever it fails. `on_failure` is called once per failure (before the backoff).
pub async fn supervise<S, R>(
    name: &'static str,
    stop: CancellationToken,
    mut start: S,
    mut on_failure: R,
) where
    S: FnMut() -> JoinHandle<()>,
    R: FnMut(&Failure),
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        let failure = match start().await {
            Ok(()) if stop.is_cancelled() => return,
            Ok(()) => Failure::Returned,
            Err(e) if e.is_panic() => Failure::Panicked(panic_message(e.into_panic())),
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(task = name, failure = %failure, restart_in = ?backoff, "background task failed; restarting it");
        on_failure(&failure);
        if sleep_or_stop(&stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_or_returns_is_restarted_with_backoff_until_stopped() {
        let stop = CancellationToken::new();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let supervisor = {
            let (stop, runs, failures) = (stop.clone(), runs.clone(), failures.clone());
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                let mut n = 0;
                supervise(
                    "test",
                    stop.clone(),
                    || {
                        n += 1;
                        runs.lock().expect("lock").push(t0.elapsed());
                        let (n, stop) = (n, stop.clone());
                        tokio::spawn(async move {
                            match n {
                                1 => panic!("first run fails"),
                                2 => {} // returns early
                                _ => stop.cancelled().await,
                            }
                        })
                    },
                    |f| failures.lock().expect("lock").push(f.clone()),
                )
                .await;
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        supervisor.await.expect("supervisor ends once stopped");
        assert_eq!(
            *failures.lock().expect("lock"),
            vec![
                Failure::Panicked("first run fails".into()),
                Failure::Returned
            ]
        );
        // Started at 0, restarted after 1 s, then after 2 s more.
        assert_eq!(
            *runs.lock().expect("lock"),
            vec![
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(3)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_backoff_ends_supervision() {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let supervisor = tokio::spawn(async move {
            supervise("test", s, || tokio::spawn(async {}), |_| {}).await;
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        supervisor.await.expect("ends");
    }
}
